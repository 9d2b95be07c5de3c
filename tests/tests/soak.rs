//! End-to-end: the soak checker on a short run (about 45 s of traffic). Short-lived client
//! processes (standard-library clients and the real SDKs, some exiting without closing their
//! connections) make mixed LLM calls while `tokentap agent --log-exchanges` runs; every call
//! must be in the log exactly once with its process, models, status, error type and tokens,
//! and no loss counter may move. `cargo xtask soak` runs the same for 10 minutes and writes a
//! report.
//!
//! Needs root. Run with `cargo xtask test`.

use std::time::Duration;

use tokentap_tests::harness::privileged_tests_enabled;
use tokentap_tests::sdk::sdk_python;
use tokentap_tests::soak::{SoakConfig, run};

#[test]
fn short_soak_every_call_recorded_exactly_once() {
    if !privileged_tests_enabled() {
        return;
    }
    let python = sdk_python().expect(
        "the SDK venv is missing: `cargo xtask setup` builds target/e2e-venv (or set TOKENTAP_SDK_PYTHON)",
    );
    let config = SoakConfig {
        duration: Duration::from_secs(45),
        concurrency: 4,
        sdk_every: 8,
        hard_exit_every: 5,
        python,
        warm_up: Duration::from_secs(15),
        sample_every: Duration::from_secs(3),
        agent_args: Vec::new(),
    };
    let report = run(&config).expect("the soak runs");
    let v = &report.verdict;
    eprintln!(
        "soak: {} processes, {} calls in {:.0} s, {} exact; RSS after warm-up {:?}",
        report.processes, v.calls, report.duration_s, v.exact, report.rss
    );
    assert!(
        v.calls >= 100,
        "too few calls to mean anything: {}",
        v.calls
    );
    assert!(report.hard_exits > 0 && report.sdk_processes > 0);
    assert!(v.ok(), "{}", v.problems());
    for (name, n) in &report.losses {
        assert_eq!(*n, 0.0, "{name} moved");
    }
    assert_eq!(report.processes_failed, 0, "a soak client failed");
    // Bounded, not a leak: a short run cannot show a slope, but RSS must stay small.
    assert!(
        report.rss.max_kib < 256 * 1024,
        "agent RSS reached {} KiB",
        report.rss.max_kib
    );
}
