//! End-to-end: plaintext HTTP (`--plaintext-http`). The real openai SDK with
//! `base_url=http://127.0.0.1:PORT/v1`, and an Ollama-shaped NDJSON exchange (`POST /api/chat`),
//! talk to the mock provider in plaintext mode while `tokentap agent --plaintext-http` runs; the
//! same Ollama call also goes through `sendmsg`/`recvmsg` and `writev`/`readv`, and through
//! `write`/`read` on a descriptor number whose last read was not HTTP (a file's, replaced by
//! the socket with `dup2`): the in-kernel skip of such reads must end at the request. The
//! exchange log must hold exactly the client's calls, with the token counts the client parsed.
//! The mock runs in this test process, so the same exchanges are also seen from the server's
//! side (its `recvfrom`/`sendto`), and must match too. A TLS call made meanwhile must be
//! counted once: its ciphertext on the socket never looks like HTTP.
//!
//! Needs root. Run with `cargo xtask test`.

use std::{path::Path, process::Command, time::Duration};

use serde::Deserialize;
use serde_json::Value;
use tokentap_tests::{
    harness::{Agent, privileged_tests_enabled},
    mock_provider::MockProvider,
    sdk::{run_sdk_client, sdk_python},
};

#[derive(Debug, Deserialize)]
struct Report {
    pid: u64,
    calls: Vec<Call>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
struct Call {
    model: String,
    streaming: bool,
    status: u16,
    input: u64,
    output: u64,
}

fn run_plaintext_client(python: &Path, port: u16) -> Report {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/plaintext_client.py");
    let out = Command::new(python)
        .arg(&script)
        .args(["--port", &port.to_string()])
        .output()
        .expect("run plaintext_client.py");
    assert!(
        out.status.success(),
        "plaintext_client.py failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("plaintext_client.py prints one JSON report")
}

/// The exchange log's records of `pid` in `role`, as the client's [`Call`]s, sorted.
fn logged_calls(records: &[Value], pid: u64, role: &str) -> Vec<Call> {
    let mut calls: Vec<Call> = records
        .iter()
        .filter(|r| r["pid"] == pid && r["role"] == role)
        .map(|r| {
            assert_eq!(r["capture_gaps"], false, "{r}");
            Call {
                model: r["request_model"].as_str().unwrap_or("?").to_owned(),
                streaming: r["streaming"] == true,
                status: r["http_status"].as_u64().unwrap_or(0) as u16,
                input: r["tokens"]["input"].as_u64().unwrap_or(0),
                output: r["tokens"]["output"].as_u64().unwrap_or(0),
            }
        })
        .collect();
    calls.sort();
    calls
}

#[test]
fn plaintext_openai_sdk_and_ollama_ndjson_equal_ground_truth() {
    if !privileged_tests_enabled() {
        return;
    }
    let python = sdk_python().expect(
        "the SDK venv is missing: `cargo xtask setup` builds target/e2e-venv (or set TOKENTAP_SDK_PYTHON)",
    );
    let plain = MockProvider::start_plaintext().expect("start the plaintext mock provider");
    let tls = MockProvider::start().expect("start the TLS mock provider");
    let log_dir = std::env::temp_dir().join(format!("tokentap-plaintext-{}", std::process::id()));
    std::fs::create_dir_all(&log_dir).expect("log dir");
    let log_path = log_dir.join("exchanges.jsonl");
    let agent = Agent::start(&[
        "agent",
        "--plaintext-http",
        "--listen",
        "127.0.0.1:0",
        "--log-exchanges",
        log_path.to_str().expect("utf-8 path"),
    ])
    .expect("start tokentap agent --plaintext-http");

    let report = run_plaintext_client(&python, plain.port());
    let (tls_report, _) =
        run_sdk_client(&python, &tls, &["openai.chat"]).expect("the TLS SDK client runs");
    let mock_records = plain.wait_requests(report.calls.len(), Duration::from_secs(10));

    // The client's own view against the mock's: if this fails, the test is at fault.
    assert_eq!(report.calls.len(), 10, "{report:?}");
    assert_eq!(mock_records.len(), report.calls.len());
    for c in &report.calls {
        assert!(c.status == 200 && c.input > 0 && c.output > 0, "{c:?}");
    }
    let mut truth = report.calls.clone();
    truth.sort();

    // The agent logs an exchange within its 20 ms poll.
    std::thread::sleep(Duration::from_secs(1));
    let agent_log = agent.stderr();
    agent.stop().expect("the agent stops cleanly");
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&log_dir);
    let records: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON record per line"))
        .collect();
    assert!(
        !log.contains("sk-tokentap-test-not-a-real-key"),
        "an API key leaked into the exchange log"
    );

    let client_side = logged_calls(&records, report.pid, "client");
    assert_eq!(
        client_side, truth,
        "exchange log, client side (left) != plaintext client's ground truth (right)\nagent log:\n{agent_log}"
    );
    let api_of = |model_prefix: &str| -> Vec<&str> {
        records
            .iter()
            .filter(|r| r["pid"] == report.pid)
            .filter(|r| {
                r["request_model"]
                    .as_str()
                    .is_some_and(|m| m.starts_with(model_prefix))
            })
            .map(|r| r["api"].as_str().unwrap_or("?"))
            .collect()
    };
    assert!(
        api_of("gpt-4o-mini")
            .iter()
            .all(|a| *a == "openai.chat_completions")
    );
    assert_eq!(api_of("llama3.2"), ["ollama.chat"; 5]);

    // The mock (this process) answered the same exchanges: seen from the server's side.
    let server_side = logged_calls(&records, u64::from(std::process::id()), "server");
    assert_eq!(
        server_side, truth,
        "exchange log, server side (left) != ground truth (right)"
    );

    // TLS through OpenSSL with plaintext capture on: each call exactly once.
    let tls_records = records
        .iter()
        .filter(|r| r["pid"] == tls_report.pid)
        .count();
    assert_eq!(
        tls_records,
        tls_report.calls.len(),
        "a TLS call was not logged exactly once with --plaintext-http"
    );
}
