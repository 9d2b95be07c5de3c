//! End-to-end: the real eBPF programs observe real Python TLS clients (the system OpenSSL), and
//! every captured stream is checked byte for byte against what the rustls test server saw.
//!
//! Needs root. Run with `cargo xtask test`.

use std::{path::Path, time::Duration};

use tokentap_tests::{
    harness::{
        Agent, Capture, CaptureLog, Stream, http_get, metric, privileged_tests_enabled, run_client,
        tokentap_bin,
    },
    tls_server::{ConnectionRecord, TlsTestServer},
};

use tokentap_common::{DEFAULT_HEAD_BYTES as HEAD, DEFAULT_TAIL_BYTES as TAIL};

fn server() -> TlsTestServer {
    TlsTestServer::start(&["localhost"]).expect("start the TLS test server")
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The server connection whose requests carry `marker` (`m=...`).
fn record_with<'a>(records: &'a [ConnectionRecord], marker: &str) -> &'a ConnectionRecord {
    let needle = format!("m={marker}");
    let found: Vec<_> = records
        .iter()
        .filter(|r| contains(&r.received, needle.as_bytes()))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one server connection with {needle}"
    );
    found[0]
}

/// The captured connection of `pid` whose write stream carries `marker`.
fn captured_with(log: &CaptureLog, pid: u64, marker: &str) -> (String, Stream, Stream) {
    let needle = format!("m={marker}");
    let found: Vec<_> = log
        .connections_of(pid)
        .into_iter()
        .filter(|(_, (w, _))| {
            w.segments
                .iter()
                .any(|(_, b)| contains(b, needle.as_bytes()))
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one captured connection of pid {pid} with {needle}; have {:?}",
        log.connections_of(pid).keys().collect::<Vec<_>>()
    );
    let (conn, (w, r)) = found.into_iter().next().expect("one");
    (conn, w, r)
}

/// Write stream = what the server received, read stream = what it sent, exactly.
fn assert_exact(w: &Stream, r: &Stream, rec: &ConnectionRecord) {
    let written = w.contiguous().expect("write stream has no gaps");
    assert!(
        written == rec.received,
        "write stream ({} B) != server received ({} B)",
        written.len(),
        rec.received.len()
    );
    let read = r.contiguous().expect("read stream has no gaps");
    assert!(
        read == rec.sent,
        "read stream ({} B) != server sent ({} B)",
        read.len(),
        rec.sent.len()
    );
}

/// Runs one client mode under `tokentap capture`; returns the client's report, the server's
/// connections (after `connections` of them closed) and the capture, checked for losses.
fn run_scenario(
    mode: &str,
    extra: &[&str],
    env: &[(&str, &str)],
    connections: usize,
) -> (serde_json::Value, Vec<ConnectionRecord>, CaptureLog) {
    let server = server();
    let capture = Capture::start(&[]).expect("start tokentap capture");
    let report = run_client(mode, server.port(), server.ca_file(), extra, env).expect("client");
    let records = server.wait_closed(connections, Duration::from_secs(30));
    let log = capture.finish().expect("capture output");
    log.assert_nothing_lost();
    (report, records, log)
}

fn pid_of(report: &serde_json::Value) -> u64 {
    report["pid"].as_u64().expect("client reports its pid")
}

#[test]
fn keepalive_connection_is_captured_byte_for_byte() {
    if !privileged_tests_enabled() {
        return;
    }
    let (report, records, log) = run_scenario("keepalive", &[], &[], 1);

    let pid = pid_of(&report);
    let conns = log.connections_of(pid);
    assert_eq!(
        conns.len(),
        1,
        "one TLS connection for pid {pid}: {:?}",
        conns.keys()
    );
    let rec = record_with(&records, "ka");
    assert_eq!(rec.requests, 3);
    let (conn, w, r) = captured_with(&log, pid, "ka");
    assert_exact(&w, &r, rec);
    // CPython 3.10+ calls only the _ex forms.
    assert_eq!(w.functions, ["SSL_write_ex"]);
    assert_eq!(r.functions, ["SSL_read_ex"]);
    assert!(
        log.closes.iter().any(|(p, c, _)| *p == pid && *c == conn),
        "the connection's end (SSL_free or process exit) is reported"
    );
}

#[test]
fn asyncio_memory_bio_connection_is_captured() {
    if !privileged_tests_enabled() {
        return;
    }
    let (report, records, log) = run_scenario("asyncio", &[], &[], 1);

    let pid = pid_of(&report);
    assert_eq!(log.connections_of(pid).len(), 1);
    let rec = record_with(&records, "aio");
    assert_eq!(rec.requests, 2);
    let (_, w, r) = captured_with(&log, pid, "aio");
    assert_exact(&w, &r, rec);
}

#[test]
fn eight_threads_with_their_own_connections() {
    if !privileged_tests_enabled() {
        return;
    }
    let (report, records, log) = run_scenario("threads", &[], &[], 8);

    let pid = pid_of(&report);
    assert_eq!(log.connections_of(pid).len(), 8);
    let mut tids = Vec::new();
    for i in 0..8 {
        let marker = format!("th-{i}");
        let rec = record_with(&records, &marker);
        let (_, w, r) = captured_with(&log, pid, &marker);
        assert_exact(&w, &r, rec);
        assert_eq!(w.tids.len(), 1, "one thread per connection");
        tids.extend(w.tids.iter().copied());
    }
    tids.sort_unstable();
    tids.dedup();
    assert_eq!(tids.len(), 8, "eight distinct threads");
}

#[test]
fn forty_megabyte_body_keeps_head_tail_and_exact_gap() {
    if !privileged_tests_enabled() {
        return;
    }
    let (report, records, log) = run_scenario("large", &["--body-mb", "40"], &[], 1);

    let pid = pid_of(&report);
    let body_len = report["body_len"].as_u64().expect("body_len");
    assert_eq!(body_len, 40 * 1024 * 1024);
    let rec = record_with(&records, "large");
    let (_, w, r) = captured_with(&log, pid, "large");
    // Every captured byte is where the server saw it, and the stream has the exact length.
    w.check_against(&rec.received)
        .expect("write stream matches the server's bytes");
    // The body was one SSL_write_ex call: its head and tail are kept, the middle is one gap
    // of exactly the skipped length.
    assert_eq!(w.gaps.len(), 1, "gaps: {:?}", w.gaps);
    let (_, gap_len, cause) = &w.gaps[0];
    assert_eq!(cause, "truncated");
    assert_eq!(*gap_len, body_len - HEAD - TAIL);
    // The 1 MiB response arrives in record-sized reads, every byte kept.
    assert_exact_read(&r, rec);
    eprintln!(
        "write retries dropped: {}",
        log.summary["write_retries_dropped"]
    );
}

fn assert_exact_read(r: &Stream, rec: &ConnectionRecord) {
    let read = r.contiguous().expect("read stream has no gaps");
    assert!(
        read == rec.sent,
        "read stream ({} B) != server sent ({} B)",
        read.len(),
        rec.sent.len()
    );
}

#[test]
fn process_started_after_the_agent_with_its_own_libssl_is_captured_from_byte_zero() {
    if !privileged_tests_enabled() {
        return;
    }
    // A private copy of libssl: a file (inode) no process maps when the agent starts, so it
    // can only be hooked by noticing the process load it.
    let system = [
        "/usr/lib/x86_64-linux-gnu/libssl.so.3",
        "/lib/x86_64-linux-gnu/libssl.so.3",
    ]
    .into_iter()
    .map(Path::new)
    .find(|p| p.exists())
    .expect("the system libssl.so.3");
    let dir = std::env::temp_dir().join(format!("tokentap-late-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let private = dir.join("libssl.so.3");
    std::fs::copy(system, &private).expect("copy libssl");

    let server = server();
    let capture = Capture::start(&[]).expect("start tokentap capture");
    assert!(
        !capture
            .agent_log()
            .contains(private.to_str().expect("utf8")),
        "not hooked before"
    );
    let report = run_client(
        "late-start",
        server.port(),
        server.ca_file(),
        &["--delay-ms", "100"],
        &[("LD_LIBRARY_PATH", dir.to_str().expect("utf8"))],
    )
    .expect("client");
    let records = server.wait_closed(1, Duration::from_secs(10));
    let log = capture.finish().expect("capture output");
    let _ = std::fs::remove_dir_all(&dir);
    log.assert_nothing_lost();

    assert_eq!(report["libssl_mapped_before_import"], false);
    assert_eq!(report["libssl_mapped_after_import"], true);
    assert!(
        log.agent_log
            .contains(&format!("hooked {}", private.display())),
        "the private libssl was hooked after the process loaded it:\n{}",
        log.agent_log
    );
    let pid = pid_of(&report);
    let rec = record_with(&records, "late");
    let (_, w, r) = captured_with(&log, pid, "late");
    assert_eq!(w.segments[0].0, 0, "captured from the first byte");
    assert!(w.segments[0].1.starts_with(b"GET /bytes/500?seed=9&m=late"));
    assert_exact(&w, &r, rec);
}

#[test]
fn agent_serves_health_readiness_and_its_own_metrics() {
    if !privileged_tests_enabled() {
        return;
    }
    let server = server();
    let agent = Agent::start(&["agent", "--listen", "127.0.0.1:0"]).expect("start tokentap agent");
    let log = agent.stderr();
    let addr = log
        .lines()
        .find_map(|l| l.split("http://").nth(1))
        .map(|a| a.trim().to_owned())
        .expect("the agent logs its listen address");
    assert_eq!(http_get(&addr, "/healthz").expect("healthz").0, 200);
    assert_eq!(http_get(&addr, "/readyz").expect("readyz").0, 200);
    assert_eq!(http_get(&addr, "/nope").expect("404").0, 404);

    run_client("keepalive", server.port(), server.ca_file(), &[], &[]).expect("client");
    let records = server.wait_closed(1, Duration::from_secs(10));
    let rec = record_with(&records, "ka");
    // Metrics are brought up to date four times a second.
    std::thread::sleep(Duration::from_millis(600));
    let (status, text) = http_get(&addr, "/metrics").expect("metrics");
    assert_eq!(status, 200);
    let written =
        metric(&text, "tokentap_captured_bytes_total{direction=\"write\"}").expect("write bytes");
    let read =
        metric(&text, "tokentap_captured_bytes_total{direction=\"read\"}").expect("read bytes");
    assert!(
        written >= rec.received.len() as f64,
        "{written} < {}",
        rec.received.len()
    );
    assert!(read >= rec.sent.len() as f64, "{read} < {}", rec.sent.len());
    assert!(metric(&text, "tokentap_tls_libraries_attached").expect("libraries") >= 1.0);
    assert!(
        metric(&text, "tokentap_events_received_total{kind=\"tls_data\"}").expect("events") > 0.0
    );
    assert!(metric(&text, "tokentap_processes_seen_total").expect("processes") >= 1.0);
    for reason in [
        "ringbuf_full",
        "user_memory_unreadable",
        "call_args_full",
        "length_unreadable",
        "call_args_missing",
    ] {
        let series = format!("tokentap_events_lost_total{{reason=\"{reason}\"}}");
        assert_eq!(metric(&text, &series), Some(0.0), "{series}");
    }
    assert_eq!(metric(&text, "tokentap_bytes_lost_total"), Some(0.0));
    agent.stop().expect("clean stop");
}

#[test]
fn without_privileges_the_agent_says_what_is_missing_in_one_line() {
    if !privileged_tests_enabled() {
        return;
    }
    // Drop to nobody with no capabilities (util-linux setpriv).
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(tokentap_bin())
        .arg("capture")
        .output()
        .expect("setpriv (util-linux) runs");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(
        lines[0].starts_with("tokentap: error:") && lines[0].contains("root"),
        "{stderr}"
    );
}
