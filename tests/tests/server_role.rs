//! End-to-end: both ends of an LLM call on one node. A Python server on the system OpenSSL
//! terminates TLS for an OpenAI-shaped API (a self-hosted model server, or a gateway), and the
//! real `openai` SDK calls it. The server's side must appear in the `gen_ai_server_*` families
//! and the client's in `gen_ai_client_*`, each exactly once: the server side never inflates the
//! client metrics. The unknown host is named by `--provider`.
//!
//! Needs root. Run with `cargo xtask test`.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use tokentap_tests::{
    harness::{Agent, http_get, privileged_tests_enabled},
    prom,
    sdk::sdk_python,
};

/// The server process, killed however the test ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sum(samples: &[prom::Sample], name: &str, provider: &str, token_type: Option<&str>) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name && s.label("gen_ai_provider_name") == provider)
        .filter(|s| token_type.is_none_or(|t| s.label("gen_ai_token_type") == t))
        .map(|s| s.value)
        .sum()
}

#[test]
fn both_ends_on_one_node_are_counted_once_each() {
    if !privileged_tests_enabled() {
        return;
    }
    let python = sdk_python().expect(
        "the SDK venv is missing: `cargo xtask setup` builds target/e2e-venv (or set TOKENTAP_SDK_PYTHON)",
    );
    let dir = std::env::temp_dir().join(format!("tokentap-server-role-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_file, cert.pem()).expect("write cert");
    std::fs::write(&key_file, signing_key.serialize_pem()).expect("write key");

    let mut server = KillOnDrop(
        Command::new(&python)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/clients/openssl_llm_server.py"
            ))
            .arg("--cert")
            .arg(&cert_file)
            .arg("--key")
            .arg(&key_file)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the OpenSSL LLM server"),
    );
    let mut line = String::new();
    BufReader::new(server.0.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("server prints its port");
    let port: u64 = serde_json::from_str::<serde_json::Value>(&line).expect("json")["port"]
        .as_u64()
        .expect("port");

    let provider_flag = format!("localhost:{port}=selfhosted");
    let agent = Agent::start(&[
        "agent",
        "--listen",
        "127.0.0.1:0",
        "--provider",
        &provider_flag,
    ])
    .expect("start tokentap agent");
    let addr = agent
        .stderr()
        .lines()
        .find_map(|l| l.split("http://").nth(1))
        .map(|a| a.trim().to_owned())
        .expect("the agent logs its listen address");

    let script = format!(
        "import openai\n\
         c = openai.OpenAI(base_url='https://localhost:{port}/v1', api_key='sk-local', max_retries=0)\n\
         r = c.chat.completions.create(model='llama-3.1-8b', messages=[{{'role': 'user', 'content': 'ping'}}])\n\
         assert r.usage.prompt_tokens == 11 and r.usage.completion_tokens == 7, r\n"
    );
    let out = Command::new(&python)
        .args(["-c", &script])
        .env("SSL_CERT_FILE", &cert_file)
        .output()
        .expect("run the openai SDK");
    assert!(
        out.status.success(),
        "client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    std::thread::sleep(Duration::from_secs(1));
    let (status, text) = http_get(&addr, "/metrics").expect("scrape");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    agent.stop().expect("the agent stops cleanly");
    assert_eq!(status, 200);
    let samples = prom::parse(&text).expect("Prometheus text");

    let client_calls = sum(
        &samples,
        "gen_ai_client_operation_duration_seconds_count",
        "selfhosted",
        None,
    );
    let server_calls = sum(
        &samples,
        "gen_ai_server_request_duration_seconds_count",
        "selfhosted",
        None,
    );
    assert_eq!(client_calls, 1.0, "the client's call, once:\n{text}");
    assert_eq!(server_calls, 1.0, "the server's side, once:\n{text}");
    assert_eq!(
        sum(
            &samples,
            "tokentap_tokens_total",
            "selfhosted",
            Some("input")
        ),
        11.0
    );
    assert_eq!(
        sum(
            &samples,
            "tokentap_tokens_total",
            "selfhosted",
            Some("output")
        ),
        7.0
    );
    assert_eq!(
        sum(
            &samples,
            "tokentap_server_tokens_total",
            "selfhosted",
            Some("output")
        ),
        7.0
    );
    assert_eq!(
        sum(&samples, "tokentap_requests_total", "selfhosted", None),
        1.0
    );
    let model = samples
        .iter()
        .find(|s| s.name == "gen_ai_server_request_duration_seconds_count")
        .map(|s| {
            (
                s.label("gen_ai_request_model").to_owned(),
                s.label("gen_ai_response_model").to_owned(),
            )
        });
    assert_eq!(
        model,
        Some(("llama-3.1-8b".into(), "llama-3.1-8b-instruct".into()))
    );
}
