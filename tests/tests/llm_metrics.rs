//! End-to-end: the real, unmodified Python SDKs (openai, anthropic, google-genai from PyPI, in
//! the venv `cargo xtask setup` builds) call the mock provider while `tokentap agent` runs, and
//! `/metrics` must equal what the SDKs themselves parsed.
//!
//! What is compared, and how, is in [`tokentap_tests::genai_check`]. Each scenario has its own
//! model name, so each label set holds the calls of one scenario and a histogram's `_sum` is
//! that scenario's own time.
//!
//! Needs root. Run with `cargo xtask test`.

use std::time::Duration;

use tokentap_tests::genai_check::compare;
use tokentap_tests::harness::{Agent, Capture, http_get, privileged_tests_enabled};
use tokentap_tests::mock_provider::MockProvider;
use tokentap_tests::prom;
use tokentap_tests::sdk::{check_against_mock, run_sdk_client, sdk_python};

/// The key `sdk_client.py` gives every SDK.
const SDK_API_KEY: &str = "sk-tokentap-test-not-a-real-key";

#[test]
fn sdk_ground_truth_equals_metrics() {
    if !privileged_tests_enabled() {
        return;
    }
    let python = sdk_python().expect(
        "the SDK venv is missing: `cargo xtask setup` builds target/e2e-venv (or set TOKENTAP_SDK_PYTHON)",
    );
    let mock = MockProvider::start().expect("start the mock provider");
    let agent = Agent::start(&["agent", "--listen", "127.0.0.1:0"]).expect("start tokentap agent");
    let addr = agent
        .stderr()
        .lines()
        .find_map(|l| l.split("http://").nth(1))
        .map(|a| a.trim().to_owned())
        .expect("the agent logs its listen address");

    let (report, wall) = run_sdk_client(&python, &mock, &[]).expect("the SDK client runs");
    let records = mock.wait_requests(report.calls.len(), Duration::from_secs(10));
    eprintln!(
        "sdk_client.py (pid {}, {}): {} calls in {wall:.2} s ({:.2} s start-up); SDKs {:?}",
        report.pid,
        report.executable,
        report.calls.len(),
        report.setup_s,
        report.sdk_versions
    );
    // The chain without the agent: if this fails, the test infrastructure is at fault.
    let chain = check_against_mock(&report, &records);
    assert!(
        chain.is_empty(),
        "test infrastructure: the SDKs' view differs from what the mock sent:\n{}",
        chain.join("\n")
    );
    assert!(
        report
            .libssl_mapped
            .iter()
            .any(|p| p.ends_with("/libssl.so.3")),
        "the SDK client must use the system libssl.so.3: {:?}",
        report.libssl_mapped
    );

    // The agent brings its metrics up to date four times a second.
    std::thread::sleep(Duration::from_secs(1));
    let (status, text) = http_get(&addr, "/metrics").expect("scrape /metrics");
    assert_eq!(status, 200);
    let samples = prom::parse(&text).expect("/metrics is Prometheus text");
    // The SDKs sent their key in Authorization, x-api-key and x-goog-api-key headers.
    assert!(
        !text.contains(SDK_API_KEY),
        "an API key leaked into /metrics"
    );
    // Checked after the comparison, so that a failed stop does not hide what /metrics said.
    let stopped = agent.stop();

    let comparison = compare(&report.calls, &samples);
    assert!(comparison.ok(), "{}", comparison.message(&text));
    stopped.expect("the agent stops cleanly");
    eprintln!(
        "{} checks over {} label sets: /metrics equals the SDKs' ground truth",
        comparison.checked, comparison.label_sets
    );
}

/// `tokentap watch --json`, the one-script developer's view: one record per SDK call, with the
/// provider, models, tokens and status the SDK itself saw.
#[test]
fn watch_prints_one_record_per_sdk_call() {
    if !privileged_tests_enabled() {
        return;
    }
    let python = sdk_python().expect(
        "the SDK venv is missing: `cargo xtask setup` builds target/e2e-venv (or set TOKENTAP_SDK_PYTHON)",
    );
    let mock = MockProvider::start().expect("start the mock provider");
    let mut agent = Agent::start(&["watch", "--json"]).expect("start tokentap watch");
    let stdout = agent.collect_stdout();
    let scenarios = [
        "openai.chat",
        "openai.chat.stream",
        "anthropic.messages.stream",
        "openai.chat.429",
    ];
    let (report, _) = run_sdk_client(&python, &mock, &scenarios).expect("the SDK client runs");
    // Records of finished calls are printed within the agent's 20 ms poll.
    std::thread::sleep(Duration::from_millis(500));
    let agent_log = agent.stderr();
    agent.stop().expect("the agent stops cleanly");
    let out = stdout.join().expect("stdout reader");
    assert!(
        !out.contains(SDK_API_KEY),
        "an API key leaked into watch output"
    );
    assert!(
        !agent_log.contains(SDK_API_KEY),
        "an API key leaked into the agent's log"
    );
    let records: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("every watch --json line is JSON"))
        .filter(|r: &serde_json::Value| r["pid"].as_u64() == Some(u64::from(report.pid)))
        .collect();
    assert_eq!(
        records.len(),
        report.calls.len(),
        "one record per call:\n{out}"
    );
    for call in &report.calls {
        let found: Vec<_> = records
            .iter()
            .filter(|r| r["request_model"].as_str() == Some(call.request_model.as_str()))
            .collect();
        assert_eq!(found.len(), 1, "one record for {}", call.request_model);
        let r = found[0];
        assert_eq!(r["provider"].as_str(), Some(call.provider.as_str()), "{r}");
        assert_eq!(
            r["operation"].as_str(),
            Some(call.operation.as_str()),
            "{r}"
        );
        assert_eq!(
            r["response_model"].as_str(),
            call.response_model.as_deref(),
            "{r}"
        );
        assert_eq!(r["http_status"].as_u64(), call.status.map(u64::from), "{r}");
        assert_eq!(r["error_type"].as_str(), call.error_type.as_deref(), "{r}");
        assert_eq!(r["streaming"].as_bool(), Some(call.streaming), "{r}");
        if let Some(t) = call.tokens {
            assert_eq!(r["tokens"]["input"].as_u64(), t.input, "{r}");
            assert_eq!(r["tokens"]["output"].as_u64(), t.output, "{r}");
        }
        let text = r.to_string();
        assert!(
            !text.contains("sk-") && !text.to_lowercase().contains("authorization"),
            "no credentials: {text}"
        );
    }
}

/// `tokentap capture` shows raw plaintext, but never the SDKs' API keys: the credential
/// headers are there, masked.
#[test]
fn capture_masks_sdk_credentials() {
    if !privileged_tests_enabled() {
        return;
    }
    let python = sdk_python().expect(
        "the SDK venv is missing: `cargo xtask setup` builds target/e2e-venv (or set TOKENTAP_SDK_PYTHON)",
    );
    let mock = MockProvider::start().expect("start the mock provider");
    let capture = Capture::start(&[]).expect("start tokentap capture");
    let scenarios = ["openai.chat", "anthropic.messages", "gemini.generate"];
    let (report, _) = run_sdk_client(&python, &mock, &scenarios).expect("the SDK client runs");
    let log = capture.finish().expect("capture output");
    let mut headers_seen = Vec::new();
    for ((write, _read), _) in log
        .connections_of(u64::from(report.pid))
        .into_values()
        .map(|c| (c, ()))
    {
        let text: String = write
            .segments
            .iter()
            .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
            .collect();
        assert!(
            !text.contains(SDK_API_KEY),
            "an API key leaked into capture output"
        );
        for header in ["authorization:", "x-api-key:", "x-goog-api-key:"] {
            if let Some(at) = text.to_ascii_lowercase().find(header) {
                let value = &text[at + header.len()..];
                let value = value.split("\r\n").next().unwrap_or("");
                assert!(
                    value.chars().all(|c| c == '*'),
                    "{header} not masked: {value:?}"
                );
                headers_seen.push(header);
            }
        }
    }
    // (anthropic 2.x sends its key as a bearer token, not in x-api-key.)
    for header in ["authorization:", "x-goog-api-key:"] {
        assert!(
            headers_seen.contains(&header),
            "the SDKs sent {header} and the capture showed it masked"
        );
    }
}
