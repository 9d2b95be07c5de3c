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

use std::time::Duration;

use serde_json::json;
use tokentap_tests::{
    harness::{Agent, privileged_tests_enabled},
    mock_provider::MockProvider,
    tls_stacks::{
        Totals, agent_addr, agent_counts_equal_c_client, check_mock_chain, coverage_gauge,
        row_stacks, run_c_client, scrape, static_tls_client, status_row,
    },
};

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
    let (held, calls) = run_c_client(
        &client.bin,
        "OpenSSL 3",
        &tag,
        "static_tls_client",
        &agent,
        &mock,
    );
    let (text, samples) =
        agent_counts_equal_c_client(&addr, &mock, &calls, &tag, "the static client");
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
    let (held, calls) = run_c_client(
        &client.stripped,
        "OpenSSL 3",
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
    check_mock_chain(&mock, &calls, &tag);
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
