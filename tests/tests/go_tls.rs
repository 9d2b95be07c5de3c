//! End-to-end: a Go program (net/http and crypto/tls from Debian's Go toolchain, statically
//! linked, no libssl) calls the mock provider while `tokentap agent` runs; the agent hooks
//! `crypto/tls.(*Conn).Write`/`.Read` in the executable (return probes on the `RET`
//! instructions) and its exchange log and `/metrics` must equal what the Go client parsed:
//! exchange counts, token sums, time to first chunk present for streams, nothing lost.
//!
//! The client makes its calls from several goroutines over keep-alive connections, at the
//! bottom of deep recursions (stacks grown and copied around the probed calls), and reads
//! some answers into a buffer on its goroutine's stack while garbage collections shrink (move)
//! that stack: the Go program must not crash, and those bytes must be captured exactly.
//!
//! The same client linked with `-ldflags=-s -w` (no symbol table) is hooked through Go's own
//! function table, `.gopclntab`, and must be counted just as exactly; `tokentap status` must
//! show both builds as hooked.
//!
//! Needs root and Debian's golang-go. Run with `cargo xtask test`.

use std::{collections::BTreeMap, time::Duration};

use object::Object as _;
use serde_json::Value;
use tokentap_tests::{
    go_client::{GO_CLIENT_NAME, GoCall, GoClient, build_go_client},
    harness::{Agent, http_get, privileged_tests_enabled},
    mock_provider::MockProvider,
    prom,
    tls_stacks::{row_stacks, status_row},
};

fn listen_addr(agent: &Agent) -> String {
    agent
        .stderr()
        .lines()
        .find_map(|l| l.split("http://").nth(1))
        .map(|a| a.trim().to_owned())
        .expect("the agent logs its listen address")
}

/// Waits until the agent's log has a line with all of `needles`.
fn wait_for_log(agent: &Agent, needles: &[&str]) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let log = agent.stderr();
        if let Some(line) = log.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
            return line.to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the agent never logged {needles:?}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// (input, output, streaming, status) of each call, sorted: the multiset to compare.
fn truth_by_model(calls: &[GoCall]) -> BTreeMap<String, Vec<(u64, u64, bool, u16)>> {
    let mut out: BTreeMap<String, Vec<_>> = BTreeMap::new();
    for c in calls {
        out.entry(c.request_model.clone()).or_default().push((
            c.input,
            c.output,
            c.streaming,
            c.status,
        ));
    }
    out.values_mut().for_each(|v| v.sort_unstable());
    out
}

fn sum_series(samples: &[prom::Sample], name: &str, model: &str, extra: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| {
            s.name == name
                && s.label("gen_ai_request_model") == model
                && extra.iter().all(|(k, v)| s.label(k) == *v)
        })
        .map(|s| s.value)
        .sum()
}

#[test]
fn go_client_ground_truth_equals_exchange_log_and_metrics() {
    if !privileged_tests_enabled() {
        return;
    }
    ground_truth_equals_exchange_log_and_metrics(false);
}

/// The same client linked with `-ldflags=-s -w` (no `.symtab`, as container images usually
/// ship Go programs): hooked through `.gopclntab`, counted exactly the same.
#[test]
fn stripped_go_client_ground_truth_equals_exchange_log_and_metrics() {
    if !privileged_tests_enabled() {
        return;
    }
    ground_truth_equals_exchange_log_and_metrics(true);
}

fn ground_truth_equals_exchange_log_and_metrics(stripped: bool) {
    let exe = build_go_client(stripped).expect("build the Go client");
    if stripped {
        let bytes = std::fs::read(&exe).expect("read the stripped client");
        let elf = object::File::parse(&bytes[..]).expect("an ELF file");
        assert!(
            elf.symbol_table().is_none(),
            "-ldflags=-s kept the symbol table"
        );
    }
    let mock = MockProvider::start().expect("start the mock provider");
    let log_dir = std::env::temp_dir().join(format!("tokentap-go-{}", std::process::id()));
    std::fs::create_dir_all(&log_dir).expect("log dir");
    let log_path = log_dir.join("exchanges.jsonl");
    let log_arg = log_path.to_str().expect("utf-8 path");
    let agent = Agent::start(&[
        "agent",
        "--listen",
        "127.0.0.1:0",
        "--log-exchanges",
        log_arg,
    ])
    .expect("start tokentap agent");
    let addr = listen_addr(&agent);

    // The agent hooks the executable when the process starts (exec tracepoint); the client
    // waits for the go-ahead, so that no call races the attach.
    let client = GoClient::start_held(
        &exe,
        &mock,
        &["-goroutines", "4", "-rounds", "3", "-raw", "3"],
    )
    .expect("start the Go client");
    let hooked = wait_for_log(
        &agent,
        &["hooked", GO_CLIENT_NAME, "crypto/tls.(*Conn).Read"],
    );
    eprintln!("{hooked}");
    assert_eq!(
        hooked.contains(".gopclntab"),
        stripped,
        "where the functions were found: {hooked}"
    );
    let (report, held) = client
        .run_and_hold()
        .expect("the Go client runs to the end without crashing");
    // `tokentap status` (its own scan of the executable, no probes) agrees that it is hooked.
    let row = status_row(held.pid(), &[]).expect("tokentap status lists the Go client");
    assert_eq!(
        row_stacks(&row),
        vec![("go-crypto-tls".to_owned(), "hooked".to_owned())],
        "{row}"
    );
    held.release().expect("the Go client exits cleanly");
    eprintln!(
        "{GO_CLIENT_NAME} (pid {}, {}): {} calls; {} of {} stack-buffer reads saw the stack move",
        report.pid,
        report.go_version,
        report.calls.len(),
        report.stack_buffer_moves,
        report.raw_reads
    );

    // The client's own view first: if this fails, the test infrastructure is at fault.
    assert_eq!(report.calls.len(), 4 * 3 * 3 + 3);
    for c in &report.calls {
        assert!(c.error.is_none() && c.status == 200, "{c:?}");
        assert!(c.input > 0 && c.output > 0, "{c:?}");
        // The mock offers only http/1.1; Go's net/http (ForceAttemptHTTP2) asked for h2 too.
        assert_eq!(
            (c.proto.as_str(), c.alpn.as_str()),
            ("HTTP/1.1", "http/1.1"),
            "{c:?}"
        );
        assert!(!c.streaming || c.ttfc_s > 0.0, "{c:?}");
    }
    let mock_records = mock.wait_requests(report.calls.len(), Duration::from_secs(10));
    assert_eq!(mock_records.len(), report.calls.len());
    assert!(
        report.stack_buffer_moves > 0,
        "no read saw its stack buffer move: the stack-relocation path was not exercised"
    );

    // The agent logs an exchange within its 20 ms poll; metrics are synced 4 times a second.
    std::thread::sleep(Duration::from_secs(1));
    let (status, text) = http_get(&addr, "/metrics").expect("scrape /metrics");
    assert_eq!(status, 200);
    let samples = prom::parse(&text).expect("/metrics is Prometheus text");
    let agent_log = agent.stderr();
    let stopped = agent.stop();

    let log = std::fs::read_to_string(&log_path).expect("read the exchange log");
    let records: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON record per line"))
        .filter(|r: &Value| r["pid"] == report.pid)
        .collect();
    assert!(
        !log.contains("sk-tokentap-test-not-a-real-key") && !text.contains("sk-tokentap-test"),
        "an API key leaked"
    );
    let mut seen: BTreeMap<String, Vec<(u64, u64, bool, u16)>> = BTreeMap::new();
    for r in &records {
        assert_eq!(r["executable"], GO_CLIENT_NAME, "{r}");
        assert_eq!(r["capture_gaps"], false, "{r}");
        assert!(r["error_type"].is_null(), "{r}");
        if r["streaming"] == true {
            assert!(
                r["time_to_first_chunk_s"].as_f64().is_some_and(|t| t > 0.0),
                "{r}"
            );
        }
        seen.entry(r["request_model"].as_str().unwrap_or("?").to_owned())
            .or_default()
            .push((
                r["tokens"]["input"].as_u64().unwrap_or(0),
                r["tokens"]["output"].as_u64().unwrap_or(0),
                r["streaming"] == true,
                r["http_status"].as_u64().unwrap_or(0) as u16,
            ));
    }
    seen.values_mut().for_each(|v| v.sort_unstable());
    let truth = truth_by_model(&report.calls);
    assert_eq!(
        seen, truth,
        "exchange log (left) != Go client's ground truth (right)"
    );

    for (model, calls) in &truth {
        let n = calls.len() as f64;
        let input: u64 = calls.iter().map(|c| c.0).sum();
        let output: u64 = calls.iter().map(|c| c.1).sum();
        let streams = calls.iter().filter(|c| c.2).count() as f64;
        assert_eq!(
            sum_series(&samples, "tokentap_requests_total", model, &[]),
            n,
            "{model}"
        );
        assert_eq!(
            sum_series(
                &samples,
                "tokentap_tokens_total",
                model,
                &[("gen_ai_token_type", "input")]
            ),
            input as f64,
            "{model} input tokens"
        );
        assert_eq!(
            sum_series(
                &samples,
                "tokentap_tokens_total",
                model,
                &[("gen_ai_token_type", "output")]
            ),
            output as f64,
            "{model} output tokens"
        );
        assert_eq!(
            sum_series(
                &samples,
                "gen_ai_client_operation_time_to_first_chunk_seconds_count",
                model,
                &[]
            ),
            streams,
            "{model} streams with a time to first chunk"
        );
        assert!(
            samples
                .iter()
                .any(|s| s.label("gen_ai_request_model") == model
                    && s.label("process_executable_name") == GO_CLIENT_NAME),
            "{model}: no series for {GO_CLIENT_NAME}"
        );
    }
    // Nothing lost anywhere: kernel-side losses, gaps, calls lost whole, stale stashes.
    for name in [
        "tokentap_events_lost_total",
        "tokentap_stream_gaps_total",
        "tokentap_calls_lost_total",
        "tokentap_stream_offset_resets_total",
        "tokentap_records_out_of_order_total",
    ] {
        let found: Vec<_> = samples.iter().filter(|s| s.name == name).collect();
        assert!(!found.is_empty(), "{name} missing from /metrics");
        let total: f64 = found.iter().map(|s| s.value).sum();
        assert_eq!(total, 0.0, "{name}:\n{text}");
    }
    assert!(
        !agent_log
            .lines()
            .any(|l| l.contains("cannot hook") && l.contains(GO_CLIENT_NAME)),
        "the agent could not hook the Go client:\n{agent_log}"
    );
    stopped.expect("the agent stops cleanly");
    let _ = std::fs::remove_dir_all(&log_dir);
}
