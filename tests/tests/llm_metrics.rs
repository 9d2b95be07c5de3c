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
use tokentap_tests::harness::{Agent, http_get, privileged_tests_enabled};
use tokentap_tests::mock_provider::MockProvider;
use tokentap_tests::prom;
use tokentap_tests::sdk::{check_against_mock, run_sdk_client, sdk_python};

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
