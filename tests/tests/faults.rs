//! End-to-end fault injection: what the agent reports when things break around it.
//!
//! - a client SIGKILLed mid-stream: the exchange is `stream_interrupted` with no output tokens
//!   (metrics count none), and the process's connection state is released;
//! - the server cutting a stream or a JSON body: interrupted, no made-up tokens;
//! - the agent killed and restarted while streams are in flight: the in-flight exchanges are
//!   not reported as successes, the next ones on the same and on new connections are exact;
//! - a process exiting with its connections open: their state is released and counted;
//! - `SSL*` addresses reused after `SSL_free` (a client that closes and reconnects, some
//!   connections abandoned mid-stream): exchanges never merge across connections;
//! - a libssl file replaced on disk (as a package upgrade does: write a new file, rename it
//!   over the old one) while a process still maps the old one: both inodes are hooked, both
//!   processes' calls are exact, the agent keeps running.
//!
//! The clients are `clients/fault_client.py` (standard library; see its docstring) against
//! the mock provider; ground truth is what the mock sent ([`RequestRecord`]).
//!
//! Needs root. Run with `cargo xtask test`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use tokentap_tests::fault::{Client, LoggedAgent, assert_exact, only_failed_record, record_for};
use tokentap_tests::harness::{Capture, privileged_tests_enabled};
use tokentap_tests::mock_provider::MockProvider;
use tokentap_tests::prom;
use tokentap_tests::soak::sum_of;

fn skip() -> bool {
    !privileged_tests_enabled()
}

#[test]
fn client_killed_mid_stream_is_interrupted_without_tokens() {
    if skip() {
        return;
    }
    let mock = MockProvider::start().expect("mock");
    let agent = LoggedAgent::start("kill", &[]);
    let model = "gpt-4o-mini-killed-chunks50-gap100";
    let mut client = Client::fault(&mock, "calls", &["--model", model], &[]);
    client.wait_for(
        |e| e["event"] == "chunk" && e["n"].as_u64() >= Some(3),
        "stream lines",
    );
    let pid = client.pid;
    client.kill();
    let records = agent.records_of(pid, 1);
    let r = only_failed_record(&records, model, "stream_interrupted");
    assert_eq!(r.http_status, Some(200));
    assert_eq!(
        r.tokens.input, None,
        "usage never arrived: no token count may be reported: {r:?}"
    );
    std::thread::sleep(Duration::from_millis(500));
    let m = agent.metrics();
    let tokens: Vec<&prom::Sample> = m
        .iter()
        .filter(|s| s.name == "tokentap_tokens_total" && s.label("gen_ai_request_model") == model)
        .collect();
    assert!(
        tokens.is_empty(),
        "tokens counted for a killed stream: {tokens:?}"
    );
    assert!(
        sum_of(
            &m,
            "tokentap_tls_connections_closed_total",
            Some(("reason", "process_exited"))
        ) >= 1.0,
        "the killed process's connection is released and counted"
    );
    agent.stop();
}

#[test]
fn server_cutting_a_stream_or_a_body_is_interrupted() {
    if skip() {
        return;
    }
    let mock = MockProvider::start().expect("mock");
    let agent = LoggedAgent::start("cut", &[]);
    let stream = "gpt-4o-mini-cut-chunks8-disconnect-after3";
    let body = "gpt-4o-cut-disconnect";
    let after = "gpt-4o-mini-after-cut-chunks4";
    // The read fails when the server cuts the connection: the client exits 1.
    let mut client = Client::fault(&mock, "calls", &["--model", stream], &[]);
    let pid = client.pid;
    let _ = client.wait_exit();
    let records = agent.records_of(pid, 1);
    only_failed_record(&records, stream, "stream_interrupted");

    let mut client = Client::fault(&mock, "calls", &["--model", body], &[]);
    let pid = client.pid;
    let _ = client.wait_exit();
    let records = agent.records_of(pid, 1);
    let r = only_failed_record(&records, body, "response_interrupted");
    assert_eq!(r.tokens.input, None, "{r:?}");

    // And the next call, on a new connection, is exact.
    let client = Client::fault(&mock, "calls", &["--model", after], &[]);
    let pid = client.pid;
    client.finish();
    assert_exact(&agent.records_of(pid, 1), &mock, after);
    assert!(agent.healthy());
    agent.stop();
}

#[test]
fn agent_restarted_with_streams_in_flight() {
    if skip() {
        return;
    }
    let mock = MockProvider::start().expect("mock");
    let mut agent = LoggedAgent::start("restart", &[]);
    let mut clients: Vec<(Client, String)> = (0..3)
        .map(|i| {
            let slow = format!("gpt-4o-mini-inflight{i}-chunks40-gap100");
            let next = format!("gpt-4o-mini-next{i}-chunks3");
            let c = Client::fault(&mock, "hold", &["--model", &slow, "--model", &next], &[]);
            (c, slow)
        })
        .collect();
    for (c, _) in &mut clients {
        c.wait_for(|e| e["event"] == "chunk", "the first stream line");
    }
    // Kill the agent mid-stream and start a new one while the streams go on (4 s each).
    agent.sigkill();
    agent.restart(&[]);
    for (c, _) in &mut clients {
        c.wait_for(|e| e["event"] == "ready", "the slow stream's end");
        c.proceed();
    }
    // The new agent joined three streams mid-body: it skipped to the next message start on
    // each, and says so (metrics sync every 250 ms).
    std::thread::sleep(Duration::from_millis(600));
    let resyncs = sum_of(
        &agent.metrics(),
        "tokentap_http_total",
        Some(("event", "resyncs")),
    );
    assert!(
        resyncs >= 3.0,
        "streams joined mid-body are counted as resyncs: {resyncs}"
    );
    for (i, (c, slow)) in clients.into_iter().enumerate() {
        let pid = c.pid;
        c.finish();
        let records = agent.records_of(pid, 3);
        // Whatever either agent said about the stream in flight, it is not a success with
        // tokens it could not have seen whole.
        for r in record_for(&records, &slow) {
            assert!(
                r.error_type.is_some() || r.tokens.output.is_none(),
                "an in-flight stream was reported as a success: {r:?}"
            );
        }
        // The next call on the same connection, and one on a new connection, are exact.
        let next = format!("gpt-4o-mini-next{i}-chunks3");
        assert_exact(&records, &mock, &next);
        assert_exact(&records, &mock, &format!("{next}-again"));
    }
    assert!(agent.healthy());
    agent.stop();
}

#[test]
fn process_exit_with_open_connections_releases_their_state() {
    if skip() {
        return;
    }
    let mock = MockProvider::start().expect("mock");
    let agent = LoggedAgent::start("exit", &[]);
    let before = sum_of(
        &agent.metrics(),
        "tokentap_tls_connections_closed_total",
        Some(("reason", "process_exited")),
    );
    let models = ["gpt-4o-mini-exit-open-a-chunks2", "gpt-4o-exit-open-b"];
    let mut pids = Vec::new();
    for _ in 0..5 {
        let client = Client::fault(
            &mock,
            "exit-open",
            &["--model", models[0], "--model", models[1]],
            &[],
        );
        pids.push(client.pid);
        client.finish();
    }
    std::thread::sleep(Duration::from_millis(800));
    let m = agent.metrics();
    let after = sum_of(
        &m,
        "tokentap_tls_connections_closed_total",
        Some(("reason", "process_exited")),
    );
    assert!(
        after - before >= 5.0,
        "each exited process's open connection is released and counted: {before} -> {after}"
    );
    for pid in pids {
        let records = agent.records_of(pid, 2);
        for model in models {
            assert_exact(&records, &mock, model);
        }
    }
    agent.stop();
}

#[test]
fn reused_ssl_addresses_never_merge_exchanges() {
    if skip() {
        return;
    }
    let mock = MockProvider::start().expect("mock");
    let agent = LoggedAgent::start("reuse", &[]);
    // A capture alongside, to see the SSL* addresses.
    let capture = Capture::start(&[]).expect("start tokentap capture");
    let n = 30;
    let base = "gpt-4o-mini-reuse-chunks4-gap20";
    let client = Client::fault(
        &mock,
        "reuse",
        &["--model", base, "--n", &n.to_string(), "--abandon"],
        &[],
    );
    let pid = client.pid;
    client.finish();
    let records = agent.records_of(pid, n);
    std::thread::sleep(Duration::from_millis(300));
    let log = capture.finish().expect("capture");
    let connections = log.connections_of(u64::from(pid));
    let addresses: BTreeSet<&str> = connections
        .keys()
        .map(|c| c.split('#').next().unwrap_or(c))
        .collect();
    eprintln!(
        "{} connections used {} distinct SSL* addresses",
        connections.len(),
        addresses.len()
    );
    assert_eq!(
        connections.len(),
        n,
        "one captured connection per connection made"
    );
    assert!(
        addresses.len() < n,
        "OpenSSL did not reuse an SSL* address: the test proves nothing"
    );
    assert_eq!(records.len(), n, "one record per connection: {records:#?}");
    for i in 0..n {
        let model = format!("{base}-r{i}");
        if i % 2 == 0 {
            // Abandoned after the first line: interrupted, no output count.
            only_failed_record(&records, &model, "stream_interrupted");
        } else {
            assert_exact(&records, &mock, &model);
        }
    }
    agent.stop();
}

#[test]
fn libssl_replaced_on_disk_while_attached() {
    if skip() {
        return;
    }
    let system = [
        "/usr/lib/x86_64-linux-gnu/libssl.so.3",
        "/lib/x86_64-linux-gnu/libssl.so.3",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
    .expect("the system libssl.so.3");
    let dir = std::env::temp_dir().join(format!("tokentap-faults-lib-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let lib = dir.join("libssl.so.3");
    std::fs::copy(&system, &lib).expect("copy libssl");
    let ld = dir.to_string_lossy().into_owned();
    let env = [("LD_LIBRARY_PATH", ld.as_str())];

    let mock = MockProvider::start().expect("mock");
    let agent = LoggedAgent::start("lib", &[]);
    let mut old = Client::fault(
        &mock,
        "hold",
        &[
            "--settle-ms",
            "500",
            "--model",
            "gpt-4o-mini-oldlib-chunks2",
            "--model",
            "gpt-4o-oldlib-later",
        ],
        &env,
    );
    old.wait_for(|e| e["event"] == "ready", "the first call");
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", old.pid)).unwrap_or_default();
    assert!(
        maps.contains(&ld),
        "the client maps the copied libssl:\n{maps}"
    );

    // The upgrade: a new file renamed over the old one (a new inode; the old one lives on
    // in the running process).
    let staged = dir.join("libssl.so.3.dpkg-new");
    std::fs::copy(&system, &staged).expect("stage the new libssl");
    std::fs::rename(&staged, &lib).expect("rename over the old libssl");

    let new = Client::fault(
        &mock,
        "calls",
        &[
            "--settle-ms",
            "500",
            "--model",
            "gpt-4o-mini-newlib-chunks3",
            "--model",
            "gpt-4o-newlib",
        ],
        &env,
    );
    let new_pid = new.pid;
    new.finish();
    old.proceed();
    let old_pid = old.pid;
    old.finish();

    let hooked = agent
        .agent()
        .stderr()
        .lines()
        .filter(|l| l.contains("hooked") && l.contains(&ld))
        .count();
    assert!(
        hooked >= 2,
        "both inodes of {ld}/libssl.so.3 are hooked:\n{}",
        agent.agent().stderr()
    );
    let old_records = agent.records_of(old_pid, 3);
    for model in [
        "gpt-4o-mini-oldlib-chunks2",
        "gpt-4o-oldlib-later",
        "gpt-4o-oldlib-later-again",
    ] {
        assert_exact(&old_records, &mock, model);
    }
    let new_records = agent.records_of(new_pid, 2);
    for model in ["gpt-4o-mini-newlib-chunks3", "gpt-4o-newlib"] {
        assert_exact(&new_records, &mock, model);
    }
    assert!(agent.healthy());
    agent.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
