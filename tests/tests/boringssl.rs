//! End-to-end: a process whose TLS is BoringSSL, not OpenSSL.
//!
//! How the client is made: `tests/clients/static_tls_client.c` (the static OpenSSL client's
//! source, unchanged) is compiled on this machine against Debian's `android-libboringssl-dev`
//! (Android's BoringSSL as shared libraries, `/usr/lib/<arch>-linux-gnu/android/libssl.so.0`,
//! headers in `/usr/include/android`) into `target/boringssl-tls-client/`. That BoringSSL has
//! `SSL_read`/`SSL_write`/`SSL_free` but no `_ex` forms, and its `SSL` struct differs from
//! OpenSSL's; tokentap keys connections on the `SSL*` pointer alone, so neither matters. Debian
//! ships no static BoringSSL archive, so BoringSSL compiled into an executable (Chromium, Envoy)
//! is covered by the ELF-scan unit tests and the static OpenSSL test's offset attach, not here.
//!
//! The client sends OpenAI- and Anthropic-shaped requests (JSON and SSE, and one 429) to the
//! mock provider, one TLS connection each, and keeps the answers; the usage in those answers is
//! the ground truth that the agent's exchange log and counters must equal. `tokentap status`
//! and the coverage gauge must name the stack `boringssl`, hooked.
//!
//! Needs root, gcc and android-libboringssl-dev (`cargo xtask setup` installs them). Run with
//! `cargo xtask test`.

use std::collections::BTreeMap;

use serde_json::Value;
use tokentap_tests::{
    harness::{Agent, privileged_tests_enabled},
    mock_provider::MockProvider,
    tls_stacks::{
        CallTruth, agent_addr, agent_counts_equal_c_client, boringssl_lib_dir,
        boringssl_tls_client, coverage_gauge, row_stacks, run_c_client, status_row,
    },
};

/// (input, output, HTTP status) per request model, sorted: what the exchange log must hold.
type ByModel = BTreeMap<String, Vec<(u64, u64, u16)>>;

fn truth_by_model(calls: &[CallTruth]) -> ByModel {
    let mut out = ByModel::new();
    for c in calls {
        out.entry(c.model.clone()).or_default().push((
            c.input.unwrap_or(0),
            c.output.unwrap_or(0),
            c.status,
        ));
    }
    out.values_mut().for_each(|v| v.sort_unstable());
    out
}

#[test]
fn boringssl_client_equals_exchange_log_and_metrics() {
    if !privileged_tests_enabled() {
        return;
    }
    let bin = boringssl_tls_client().expect("build the BoringSSL client");
    let mock = MockProvider::start().expect("start the mock provider");
    let log_dir = std::env::temp_dir().join(format!("tokentap-boringssl-{}", std::process::id()));
    std::fs::create_dir_all(&log_dir).expect("log dir");
    let log_path = log_dir.join("exchanges.jsonl");
    let agent = Agent::start(&[
        "agent",
        "--listen",
        "127.0.0.1:0",
        "--rescan-interval",
        "1",
        "--log-exchanges",
        log_path.to_str().expect("utf-8 path"),
    ])
    .expect("start tokentap agent");
    let addr = agent_addr(&agent).expect("agent address");

    let libssl = boringssl_lib_dir().join("libssl.so.0");
    let tag = format!("boring{}", std::process::id());
    let (held, calls) = run_c_client(
        &bin,
        "BoringSSL",
        &tag,
        &libssl.display().to_string(),
        &agent,
        &mock,
    );
    // By name, without the `_ex` forms this BoringSSL lacks.
    let hooked = format!("hooked {} (pid {}): ", libssl.display(), held.pid());
    let agent_log = agent.stderr();
    let functions = agent_log
        .lines()
        .find_map(|l| l.split(&hooked).nth(1))
        .unwrap_or_else(|| panic!("no {hooked:?} in the agent's log:\n{agent_log}"));
    assert_eq!(functions.trim(), "SSL_read, SSL_write, SSL_free");

    let (text, samples) =
        agent_counts_equal_c_client(&addr, &mock, &calls, &tag, "the BoringSSL client");
    assert!(
        coverage_gauge(&samples, "hooked", "boringssl") >= Some(1.0),
        "{text}"
    );
    let row = status_row(held.pid(), &[]).expect("tokentap status lists the BoringSSL client");
    assert_eq!(
        row_stacks(&row),
        vec![("boringssl".to_owned(), "hooked".to_owned())],
        "{row}"
    );
    assert_eq!(
        row["stacks"][0]["file"],
        libssl.display().to_string(),
        "{row}"
    );
    let pid = held.pid();
    drop(held);
    agent.stop().expect("the agent stops cleanly");

    let log = std::fs::read_to_string(&log_path).expect("read the exchange log");
    let _ = std::fs::remove_dir_all(&log_dir);
    assert!(
        !log.contains("sk-tokentap-test-not-a-real-key") && !text.contains("sk-tokentap-test"),
        "an API key leaked"
    );
    let mut seen = ByModel::new();
    for line in log.lines() {
        let r: Value = serde_json::from_str(line).expect("one JSON record per line");
        if r["pid"] != pid {
            continue;
        }
        assert_eq!(r["executable"], "boringssl_tls_client", "{r}");
        assert_eq!(r["capture_gaps"], false, "{r}");
        seen.entry(r["request_model"].as_str().unwrap_or("?").to_owned())
            .or_default()
            .push((
                r["tokens"]["input"].as_u64().unwrap_or(0),
                r["tokens"]["output"].as_u64().unwrap_or(0),
                r["http_status"].as_u64().unwrap_or(0) as u16,
            ));
    }
    seen.values_mut().for_each(|v| v.sort_unstable());
    assert_eq!(
        seen,
        truth_by_model(&calls),
        "exchange log (left) != BoringSSL client's ground truth (right)"
    );
}
