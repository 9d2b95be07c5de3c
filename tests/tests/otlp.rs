//! End-to-end: `tokentap agent --otlp-endpoint` exports one span per LLM call to a real
//! OTLP/HTTP receiver ([`tokentap_tests::otlp_receiver`]) while the real Python SDKs call the
//! mock provider. The spans must carry what the SDKs themselves parsed, join the caller's
//! trace when the request has a W3C `traceparent`, lie within the calls' wall-clock windows,
//! survive a collector that answers 503, and a collector that is down must not hurt the agent.
//!
//! Needs root. Run with `cargo xtask test`.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use tokentap_tests::{
    harness::{Agent, http_get, metric, privileged_tests_enabled},
    mock_provider::MockProvider,
    otlp_receiver::{OtlpReceiver, ReceivedSpan},
    sdk::{SdkReport, run_sdk_client, sdk_python},
};

/// The caller's span context the traced call sends.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN_ID: &str = "00f067aa0ba902b7";
/// The traced call's model (the mock reads its behaviour from the name).
const TRACED_MODEL: &str = "gpt-4o-delay30";
/// Clock conversion and capture timing may put a span edge this far outside the client's own
/// measurement.
const SLACK_NS: u64 = 50_000_000;

const SPAN_KIND_CLIENT: u64 = 3;

fn now_unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn python() -> PathBuf {
    sdk_python().expect(
        "the SDK venv is missing: `cargo xtask setup` builds target/e2e-venv (or set TOKENTAP_SDK_PYTHON)",
    )
}

/// The agent's /metrics address, from its log.
fn listen_addr(agent: &Agent) -> String {
    agent
        .stderr()
        .lines()
        .find_map(|l| l.split("http://").nth(1))
        .map(|a| a.trim().to_owned())
        .expect("the agent logs its listen address")
}

/// One chat call with the openai SDK sending `traceparent`, with sdk_client.py's name
/// redirection and trust set-up (imported from it, so both stay the same).
const TRACED_CALL: &str = r#"
import json, os, sys, time
clients, port, cafile, traceparent, model = sys.argv[1:6]
sys.path.insert(0, clients)
import sdk_client
sdk_client.prepare_environment(cafile)
sdk_client.redirect_hosts(int(port))
import openai
client = openai.OpenAI(api_key=sdk_client.API_KEY, max_retries=0, timeout=30)
t0 = time.time_ns()
r = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "Say hello."}],
    extra_headers={"traceparent": traceparent},
)
t1 = time.time_ns()
json.dump({"pid": os.getpid(), "t0": t0, "t1": t1, "id": r.id, "model": r.model,
           "input": r.usage.prompt_tokens, "output": r.usage.completion_tokens}, sys.stdout)
"#;

struct TracedCall {
    pid: u64,
    t0: u64,
    t1: u64,
    id: String,
    model: String,
    input: i64,
    output: i64,
}

fn traced_call(python: &Path, mock: &MockProvider) -> TracedCall {
    let clients = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients");
    let traceparent = format!("00-{TRACE_ID}-{PARENT_SPAN_ID}-01");
    let out = Command::new(python)
        .arg("-c")
        .arg(TRACED_CALL)
        .arg(&clients)
        .arg(mock.port().to_string())
        .arg(mock.ca_file())
        .arg(&traceparent)
        .arg(TRACED_MODEL)
        .env("SSL_CERT_FILE", mock.ca_file())
        .output()
        .expect("run the traced call");
    assert!(
        out.status.success(),
        "the traced call failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("its report");
    let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"));
    TracedCall {
        pid: n("pid"),
        t0: n("t0"),
        t1: n("t1"),
        id: v["id"].as_str().expect("id").to_owned(),
        model: v["model"].as_str().expect("model").to_owned(),
        input: n("input") as i64,
        output: n("output") as i64,
    }
}

fn pid_of(span: &ReceivedSpan) -> Option<u64> {
    span.resource
        .get("process.pid")
        .and_then(|v| v.as_int())
        .map(|p| p as u64)
}

fn str_attr<'a>(span: &'a ReceivedSpan, key: &str) -> Option<&'a str> {
    span.attr(key).and_then(|v| v.as_str())
}

fn int_attr(span: &ReceivedSpan, key: &str) -> Option<i64> {
    span.attr(key).and_then(|v| v.as_int())
}

/// The spans of `pid` with request model `model`.
fn spans_for<'a>(spans: &'a [ReceivedSpan], pid: u64, model: &str) -> Vec<&'a ReceivedSpan> {
    spans
        .iter()
        .filter(|s| pid_of(s) == Some(pid) && str_attr(s, "gen_ai.request.model") == Some(model))
        .collect()
}

fn all_calls_exported(spans: &[ReceivedSpan], report: &SdkReport) -> bool {
    report
        .calls
        .iter()
        .all(|c| !spans_for(spans, u64::from(report.pid), &c.request_model).is_empty())
}

#[test]
fn spans_carry_the_sdk_ground_truth_and_join_the_callers_trace() {
    if !privileged_tests_enabled() {
        return;
    }
    let python = python();
    let receiver = OtlpReceiver::start().expect("start the OTLP receiver");
    let mock = MockProvider::start().expect("start the mock provider");
    let endpoint = receiver.endpoint();
    let agent = Agent::start(&[
        "agent",
        "--listen",
        "127.0.0.1:0",
        "--otlp-endpoint",
        &endpoint,
    ])
    .expect("start tokentap agent");

    let before = now_unix_ns();
    let (report, _) = run_sdk_client(&python, &mock, &["openai.chat", "openai.chat.stream"])
        .expect("the SDK client runs");
    let after = now_unix_ns();
    let traced = traced_call(&python, &mock);

    let spans = receiver.wait_for(Duration::from_secs(15), |spans| {
        all_calls_exported(spans, &report) && !spans_for(spans, traced.pid, TRACED_MODEL).is_empty()
    });
    let addr = listen_addr(&agent);
    let (_, metrics) = http_get(&addr, "/metrics").expect("scrape /metrics");
    let stopped = agent.stop();
    assert!(receiver.problems().is_empty(), "{:?}", receiver.problems());
    assert!(
        all_calls_exported(&spans, &report),
        "a span per SDK call; got {spans:#?}"
    );

    // Untraced calls: the SDK's own view, a fresh trace each, inside the run's window.
    let exe = Path::new(&report.executable)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .expect("executable name");
    let mut trace_ids = Vec::new();
    for call in &report.calls {
        let found = spans_for(&spans, u64::from(report.pid), &call.request_model);
        let expected = report
            .calls
            .iter()
            .filter(|c| c.request_model == call.request_model)
            .count();
        assert_eq!(found.len(), expected, "spans of {}", call.request_model);
        let s = found[0];
        let who = &call.scenario;
        assert_eq!(
            s.name,
            format!("{} {}", call.operation, call.request_model),
            "{who}"
        );
        assert_eq!(s.kind, SPAN_KIND_CLIENT, "{who}");
        assert_eq!(s.scope_name, "tokentap", "{who}");
        assert_eq!(
            str_attr(s, "gen_ai.provider.name"),
            Some(call.provider.as_str()),
            "{who}"
        );
        assert_eq!(
            str_attr(s, "gen_ai.operation.name"),
            Some(call.operation.as_str()),
            "{who}"
        );
        assert_eq!(
            str_attr(s, "gen_ai.response.model"),
            call.response_model.as_deref(),
            "{who}"
        );
        let tokens = call.tokens();
        assert_eq!(
            int_attr(s, "gen_ai.usage.input_tokens").map(|n| n as u64),
            tokens.input,
            "{who}"
        );
        assert_eq!(
            int_attr(s, "gen_ai.usage.output_tokens").map(|n| n as u64),
            tokens.output,
            "{who}"
        );
        assert_eq!(
            s.attr("gen_ai.request.stream").and_then(|v| v.as_bool()),
            Some(call.streaming),
            "{who}"
        );
        assert_eq!(
            str_attr(s, "server.address"),
            Some(call.server_address.as_str()),
            "{who}"
        );
        assert_eq!(int_attr(s, "server.port"), Some(443), "{who}");
        assert_eq!(
            int_attr(s, "http.response.status_code").map(|n| n as u16),
            call.status,
            "{who}"
        );
        assert!(s.attr("error.type").is_none(), "{who}");
        assert_eq!(s.status_code, 0, "{who}: success leaves the status unset");
        let duration_s = (s.end_unix_ns - s.start_unix_ns) as f64 / 1e9;
        if call.streaming {
            let ttfc = s
                .attr("gen_ai.response.time_to_first_chunk")
                .and_then(|v| v.as_f64())
                .unwrap_or_else(|| panic!("{who}: a streamed call has a time to first chunk"));
            assert!(ttfc > 0.0 && ttfc <= duration_s, "{who}: ttfc {ttfc}");
            if let Some(sdk_ttfc) = call.ttfc_s {
                // The agent starts at the request's first byte, the SDK before connecting.
                assert!(
                    ttfc <= sdk_ttfc + 0.05,
                    "{who}: ttfc {ttfc} > SDK's {sdk_ttfc}"
                );
            }
        } else {
            assert!(
                s.attr("gen_ai.response.time_to_first_chunk").is_none(),
                "{who}"
            );
        }
        assert_eq!(s.parent_span_id, None, "{who}: no traceparent, no parent");
        assert_ne!(s.trace_id, TRACE_ID, "{who}");
        assert_ne!(s.trace_id, "0".repeat(32), "{who}");
        trace_ids.push(s.trace_id.clone());
        assert!(
            s.start_unix_ns + SLACK_NS >= before && s.end_unix_ns <= after + SLACK_NS,
            "{who}: span [{}, {}] outside the SDK run [{before}, {after}]",
            s.start_unix_ns,
            s.end_unix_ns
        );
        assert!(
            duration_s <= call.duration_s + 0.05,
            "{who}: span {duration_s} s, SDK {} s",
            call.duration_s
        );
        assert_eq!(
            s.resource.get("service.name").and_then(|v| v.as_str()),
            Some(exe.as_str()),
            "{who}"
        );
        assert_eq!(
            s.resource
                .get("process.executable.name")
                .and_then(|v| v.as_str()),
            Some(exe.as_str()),
            "{who}"
        );
    }
    let mut unique = trace_ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), trace_ids.len(), "a fresh trace per call");

    // The traced call: a child of the caller's span, in the caller's trace.
    let found = spans_for(&spans, traced.pid, TRACED_MODEL);
    assert_eq!(found.len(), 1, "one span for the traced call");
    let s = found[0];
    assert_eq!(s.trace_id, TRACE_ID);
    assert_eq!(s.parent_span_id.as_deref(), Some(PARENT_SPAN_ID));
    assert_ne!(s.span_id, PARENT_SPAN_ID);
    assert_eq!(s.name, format!("chat {TRACED_MODEL}"));
    assert_eq!(s.kind, SPAN_KIND_CLIENT);
    assert_eq!(str_attr(s, "gen_ai.response.id"), Some(traced.id.as_str()));
    assert_eq!(
        str_attr(s, "gen_ai.response.model"),
        Some(traced.model.as_str())
    );
    assert_eq!(int_attr(s, "gen_ai.usage.input_tokens"), Some(traced.input));
    assert_eq!(
        int_attr(s, "gen_ai.usage.output_tokens"),
        Some(traced.output)
    );
    assert!(
        s.start_unix_ns + SLACK_NS >= traced.t0 && s.end_unix_ns <= traced.t1 + SLACK_NS,
        "traced span [{}, {}] outside the call [{}, {}]",
        s.start_unix_ns,
        s.end_unix_ns,
        traced.t0,
        traced.t1
    );
    assert!(s.end_unix_ns > s.start_unix_ns);

    let exported = metric(&metrics, "tokentap_otlp_spans_exported_total").unwrap_or(0.0);
    assert!(
        exported >= (report.calls.len() + 1) as f64,
        "exported counter {exported}"
    );
    assert_eq!(
        metric(
            &metrics,
            "tokentap_otlp_spans_dropped_total{reason=\"queue_full\"}"
        ),
        Some(0.0)
    );
    stopped.expect("the agent stops cleanly");
    eprintln!(
        "{} spans checked ({} untraced, 1 traced)",
        report.calls.len() + 1,
        report.calls.len()
    );
}

#[test]
fn export_retries_when_the_collector_answers_503() {
    if !privileged_tests_enabled() {
        return;
    }
    let python = python();
    let receiver = OtlpReceiver::start_failing_first(2).expect("start the OTLP receiver");
    let mock = MockProvider::start().expect("start the mock provider");
    let endpoint = receiver.endpoint();
    let agent = Agent::start(&[
        "agent",
        "--listen",
        "127.0.0.1:0",
        "--otlp-endpoint",
        &endpoint,
    ])
    .expect("start tokentap agent");
    let (report, _) =
        run_sdk_client(&python, &mock, &["openai.chat"]).expect("the SDK client runs");
    let spans = receiver.wait_for(Duration::from_secs(15), |spans| {
        all_calls_exported(spans, &report)
    });
    let addr = listen_addr(&agent);
    let (_, metrics) = http_get(&addr, "/metrics").expect("scrape /metrics");
    let stopped = agent.stop();
    assert!(receiver.problems().is_empty(), "{:?}", receiver.problems());
    assert!(
        all_calls_exported(&spans, &report),
        "the spans arrive after the 503s: {spans:#?}"
    );
    assert_eq!(receiver.refused(), 2);
    assert!(receiver.requests() >= 3);
    assert!(
        metric(&metrics, "tokentap_otlp_export_errors_total").unwrap_or(0.0) >= 2.0,
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "tokentap_otlp_spans_dropped_total{reason=\"export_failed\"}"
        ),
        Some(0.0),
        "retried, not dropped"
    );
    stopped.expect("the agent stops cleanly");
}

#[test]
fn a_collector_that_is_down_costs_the_agent_nothing() {
    if !privileged_tests_enabled() {
        return;
    }
    let python = python();
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mock = MockProvider::start().expect("start the mock provider");
    let endpoint = format!("http://127.0.0.1:{port}");
    let agent = Agent::start(&[
        "agent",
        "--listen",
        "127.0.0.1:0",
        "--otlp-endpoint",
        &endpoint,
    ])
    .expect("start tokentap agent");
    let (report, _) = run_sdk_client(&python, &mock, &["openai.chat", "openai.chat.stream"])
        .expect("the SDK client runs");
    let addr = listen_addr(&agent);
    // Export is tried (and fails) within a flush interval or two; metrics keep working.
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let (status, text) = http_get(&addr, "/metrics").expect("scrape /metrics");
        assert_eq!(status, 200);
        if metric(&text, "tokentap_otlp_export_errors_total").unwrap_or(0.0) >= 1.0
            || Instant::now() > deadline
        {
            break text;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        metric(&metrics, "tokentap_otlp_export_errors_total").unwrap_or(0.0) >= 1.0,
        "{metrics}"
    );
    // The LLM metrics are unaffected.
    let requests: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("gen_ai_client_operation_duration_seconds_count"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(
        requests >= report.calls.len() as f64,
        "LLM metrics still recorded:\n{metrics}"
    );
    let (status, _) = http_get(&addr, "/healthz").expect("healthz");
    assert_eq!(status, 200);
    // Shutdown does not wait on the dead collector beyond its flush deadline.
    let t = Instant::now();
    agent.stop().expect("the agent stops cleanly");
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "stopping took {:?}",
        t.elapsed()
    );
}
