//! End-to-end: a process whose OpenSSL lives inside its own executable, not in `libssl.so`.
//!
//! How the client is made: `tests/clients/static_tls_client.c` is compiled on this machine with
//! `cc … -Wl,-Bstatic -lssl -lcrypto` against Debian's `libssl-dev` archives (`libssl.a`,
//! `libcrypto.a`) into `target/static-tls-client/` (a few seconds, once). The result maps no
//! libssl.so and exports nothing: `SSL_read`/`SSL_write` are only in its `.symtab`, so tokentap
//! must find them by ELF symbol scan and attach at their file offsets. This is the layout of
//! python-build-standalone's `_ssl`/libpython and other static builds, which cannot be
//! downloaded here.
//!
//! The client sends OpenAI- and Anthropic-shaped requests (JSON and SSE) to the mock provider,
//! one TLS connection each, and keeps the answers; the usage in those answers is the ground
//! truth that the agent's counters must equal. Then a stripped copy of the same binary (no
//! symbols at all, like Google Cloud SDK's bundled Python): `tokentap status` reports it as
//! `openssl-static`, *unsupported*, when no debug file is at hand, and the agent, pointed with
//! `--debug-dir` at the build's separate debug file (`objcopy --only-keep-debug`, found by build
//! id as distributions' dbgsym packages install them), hooks it and counts its calls exactly.
//!
//! Needs root, gcc, binutils and libssl-dev (`cargo xtask setup` installs them). Run with
//! `cargo xtask test`.

use std::{path::Path, process::Command, time::Duration};

use serde_json::{Value, json};
use tokentap_tests::{
    harness::{Agent, privileged_tests_enabled},
    mock_provider::MockProvider,
    tls_stacks::{
        CallTruth, HeldChild, Totals, agent_addr, coverage_gauge, parse_http_response, row_stacks,
        scrape, sse_events, static_tls_client, status_row, wait_for_log,
    },
};

/// (provider, path, model suffix, stream).
const CALLS: [(&str, &str, &str, bool); 4] = [
    ("openai", "/v1/chat/completions", "chunks3", false),
    ("openai", "/v1/chat/completions", "chunks5", true),
    ("anthropic", "/v1/messages", "chunks4", true),
    ("openai", "/v1/chat/completions", "err429", false),
];

fn request(provider: &str, path: &str, model: &str, stream: bool) -> Vec<u8> {
    let (host, auth, body) = if provider == "openai" {
        let mut body = json!({"model": model, "messages": [{"role": "user", "content": "Hello from a static OpenSSL."}], "stream": stream});
        if stream {
            body["stream_options"] = json!({"include_usage": true});
        }
        (
            "api.openai.com",
            "Authorization: Bearer sk-tokentap-test-not-a-real-key",
            body,
        )
    } else {
        (
            "api.anthropic.com",
            "x-api-key: sk-tokentap-test-not-a-real-key\r\nanthropic-version: 2023-06-01",
            json!({"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": "Hello, static."}], "stream": stream}),
        )
    };
    let body = body.to_string();
    format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\n{auth}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The tokens a response's usage reported, as the metrics count them (input includes cached).
fn truth(provider: &str, stream: bool, model: String, raw: &[u8]) -> CallTruth {
    let (status, body) = parse_http_response(raw).expect("an HTTP response");
    let body = String::from_utf8_lossy(&body).into_owned();
    let mut call = CallTruth {
        model,
        status,
        input: None,
        output: None,
    };
    if status != 200 {
        return call;
    }
    let anthropic_input = |u: &Value| {
        [
            "input_tokens",
            "cache_read_input_tokens",
            "cache_creation_input_tokens",
        ]
        .iter()
        .filter_map(|k| u[*k].as_u64())
        .sum::<u64>()
    };
    match (provider, stream) {
        ("openai", false) => {
            let v: Value = serde_json::from_str(&body).expect("JSON body");
            call.input = v["usage"]["prompt_tokens"].as_u64();
            call.output = v["usage"]["completion_tokens"].as_u64();
        }
        ("openai", true) => {
            let usage = sse_events(&body)
                .into_iter()
                .rfind(|e| e["usage"].is_object())
                .expect("a usage chunk");
            call.input = usage["usage"]["prompt_tokens"].as_u64();
            call.output = usage["usage"]["completion_tokens"].as_u64();
        }
        (_, true) => {
            for e in sse_events(&body) {
                match e["type"].as_str() {
                    Some("message_start") => {
                        call.input = Some(anthropic_input(&e["message"]["usage"]))
                    }
                    Some("message_delta") => call.output = e["usage"]["output_tokens"].as_u64(),
                    _ => {}
                }
            }
        }
        (_, false) => {
            let v: Value = serde_json::from_str(&body).expect("JSON body");
            call.input = Some(anthropic_input(&v["usage"]));
            call.output = v["usage"]["output_tokens"].as_u64();
        }
    }
    call
}

/// Starts `bin` (holding its connections open), waits until the agent logs `hooked` for it,
/// runs [`CALLS`] with models tagged `tag`, and returns the client with what it saw.
fn run_static_client(
    bin: &Path,
    tag: &str,
    hooked: &str,
    agent: &Agent,
    mock: &MockProvider,
) -> (HeldChild, Vec<CallTruth>) {
    let work = bin.with_file_name(format!("run-{tag}"));
    std::fs::create_dir_all(&work).expect("work dir");
    let mut models = Vec::new();
    // One SNI for all connections: the certificate covers every provider host, and the agent
    // takes the provider from each request's Host header.
    let mut args = vec![
        mock.ca_file().display().to_string(),
        mock.port().to_string(),
        "api.openai.com".to_owned(),
        work.display().to_string(),
    ];
    for (i, (provider, path, suffix, stream)) in CALLS.iter().enumerate() {
        let base = if *provider == "openai" {
            "gpt-4o-mini"
        } else {
            "claude-sonnet-4-5"
        };
        let model = format!("{base}-{tag}-{suffix}");
        let file = work.join(format!("{i}.request"));
        std::fs::write(&file, request(provider, path, &model, *stream)).expect("write request");
        args.push(file.display().to_string());
        models.push(model);
    }
    let mut client = HeldChild::spawn(Command::new(bin).args(&args).env("HOLD", "1"))
        .expect("start the static client");
    let hello = client.line().expect("the client starts");
    assert!(
        hello.starts_with("pid ") && hello.contains("OpenSSL 3"),
        "{hello}"
    );
    // Discovery of a new process (exec event, ELF scan, attach) takes a moment; the client
    // starts once it is hooked, so no call is sent before (a real short-lived static binary
    // could lose its first call: see the README).
    wait_for_log(
        agent,
        &format!("{hooked} (pid {}", client.pid()),
        Duration::from_secs(5),
    )
    .expect("the agent hooks the static client when it starts");
    client.send_line("go").expect("start the client");
    assert_eq!(client.line().expect("the client finishes"), "done");
    let calls: Vec<CallTruth> = CALLS
        .iter()
        .zip(models)
        .enumerate()
        .map(|(i, ((provider, _, _, stream), model))| {
            let raw = std::fs::read(work.join(format!("{i}.response"))).expect("response file");
            truth(provider, *stream, model, &raw)
        })
        .collect();
    let _ = std::fs::remove_dir_all(&work);
    eprintln!("{} (pid {}): {calls:?}", bin.display(), client.pid());
    (client, calls)
}

/// The mock's records of the calls whose model carries `tag`, in order.
fn check_chain(mock: &MockProvider, calls: &[CallTruth], tag: &str) {
    let records: Vec<_> = mock
        .requests()
        .into_iter()
        .filter(|r| r.request_model.as_deref().is_some_and(|m| m.contains(tag)))
        .collect();
    assert_eq!(
        records.len(),
        calls.len(),
        "test infrastructure: {records:?}"
    );
    for (call, record) in calls.iter().zip(&records) {
        assert_eq!(
            (call.status, call.input, call.output),
            (record.status, record.tokens.input, record.tokens.output),
            "test infrastructure: the client's view differs from what the mock sent"
        );
    }
}

#[test]
fn static_openssl_client_equals_metrics_and_stripped_copy_is_reported() {
    if !privileged_tests_enabled() {
        return;
    }
    let client = static_tls_client().expect("build the static OpenSSL client");
    let mock = MockProvider::start().expect("start the mock provider");
    let debug_dir = format!("--debug-dir={}", client.debug_dir.display());
    let agent = Agent::start(&[
        "agent",
        "--listen",
        "127.0.0.1:0",
        "--rescan-interval",
        "1",
        &debug_dir,
    ])
    .expect("start tokentap agent");
    let addr = agent_addr(&agent).expect("agent address");

    // 1. Symbols in .symtab only.
    let tag = format!("static{}", std::process::id());
    let (held, calls) = run_static_client(&client.bin, &tag, "static_tls_client", &agent, &mock);
    mock.wait_requests(calls.len(), Duration::from_secs(10));
    check_chain(&mock, &calls, &tag);
    std::thread::sleep(Duration::from_millis(2500));
    let (text, samples) = scrape(&addr).expect("scrape /metrics");
    let expected = Totals::of_calls(&calls);
    assert!(expected.input_tokens > 0 && expected.output_tokens > 0 && expected.status_429 == 1);
    assert_eq!(
        Totals::of_metrics(&samples, &tag),
        expected,
        "the agent's counters differ from what the static client saw:\n{text}"
    );
    let row = status_row(held.pid(), &[]).expect("tokentap status lists the static client");
    assert_eq!(
        row_stacks(&row),
        vec![("openssl-static".to_owned(), "hooked".to_owned())],
        "{row}"
    );
    assert!(
        coverage_gauge(&samples, "hooked", "openssl-static") >= Some(1.0),
        "{text}"
    );
    drop(held);

    // 2. The stripped copy: no symbols at all. Without its debug file it is reported
    //    unsupported; the agent, given the debug-file directory, hooks it by build id.
    let tag = format!("stripped{}", std::process::id());
    let (held, calls) = run_static_client(
        &client.stripped,
        &tag,
        "static_tls_client_stripped",
        &agent,
        &mock,
    );
    assert!(
        agent.stderr().contains(&format!(
            "static_tls_client_stripped (pid {}, symbols from {}",
            held.pid(),
            client.debug_dir.display()
        )),
        "{}",
        agent.stderr()
    );
    mock.wait_requests(2 * calls.len(), Duration::from_secs(10));
    check_chain(&mock, &calls, &tag);
    std::thread::sleep(Duration::from_millis(2500));
    let (text, samples) = scrape(&addr).expect("scrape /metrics");
    assert_eq!(
        Totals::of_metrics(&samples, &tag),
        Totals::of_calls(&calls),
        "the agent's counters differ from what the stripped client saw:\n{text}"
    );
    let provider_arg = format!("--provider=127.0.0.1:{}=mock", mock.port());
    let no_debug = "--debug-dir=/nonexistent";
    let row = status_row(held.pid(), &[&provider_arg, no_debug]).expect("status lists it");
    assert_eq!(
        row_stacks(&row),
        vec![("openssl-static".to_owned(), "unsupported".to_owned())],
        "{row}"
    );
    assert_eq!(
        row["llm_endpoints"],
        json!([mock.addr().to_string()]),
        "the connection to the named provider endpoint is reported: {row}"
    );
    let row = status_row(held.pid(), &[&debug_dir]).expect("status lists it");
    assert_eq!(
        row_stacks(&row),
        vec![("openssl-static".to_owned(), "hooked".to_owned())],
        "{row}"
    );
    drop(held);
    agent.stop().expect("the agent stops cleanly");
}
