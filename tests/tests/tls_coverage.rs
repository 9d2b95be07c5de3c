//! End-to-end: the coverage view names the TLS stack of every process with connections and
//! says whether it is hooked. GnuTLS's `gnutls-cli` (a stack tokentap does not hook) connected
//! to the mock provider, named as an LLM endpoint with `--provider`, must be reported as
//! unsupported TLS to an LLM endpoint; a Python holding an OpenSSL connection as hooked.
//!
//! Needs root, `gnutls-cli` (gnutls-bin; `cargo xtask setup` installs it) and a `python3` whose
//! `ssl` module uses the system libssl. Run with `cargo xtask test`.

use std::{process::Command, time::Duration};

use serde_json::json;
use tokentap_tests::{
    harness::{Agent, privileged_tests_enabled, python},
    mock_provider::MockProvider,
    tls_stacks::{
        HeldChild, agent_addr, coverage_gauge, row_stacks, scrape, status_row, wait_for_log,
    },
};

const PYTHON_HOLDER: &str = "\
import socket, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[2])
s = ctx.wrap_socket(socket.create_connection(('127.0.0.1', int(sys.argv[1]))), server_hostname='api.openai.com')
print('connected', s.version(), flush=True)
sys.stdin.read()
";

#[test]
fn unhooked_gnutls_is_reported_and_openssl_is_hooked() {
    if !privileged_tests_enabled() {
        return;
    }
    let mock = MockProvider::start().expect("start the mock provider");
    let provider = format!("--provider=127.0.0.1:{}=mock", mock.port());
    let agent = Agent::start(&[
        "agent",
        "--listen",
        "127.0.0.1:0",
        "--rescan-interval",
        "1",
        &provider,
    ])
    .expect("start tokentap agent");
    let addr = agent_addr(&agent).expect("agent address");

    let mut gnutls = HeldChild::spawn(
        Command::new("gnutls-cli")
            .arg(format!("--x509cafile={}", mock.ca_file().display()))
            .arg(format!("--port={}", mock.port()))
            .arg("127.0.0.1"),
    )
    .expect("gnutls-cli not found: install gnutls-bin (`cargo xtask setup` does)");
    // gnutls-cli reports the handshake on stdout.
    loop {
        let line = gnutls.line().expect("gnutls-cli connects");
        if line.contains("Handshake was completed") {
            break;
        }
    }
    let mut py = HeldChild::spawn(
        Command::new(python())
            .args(["-c", PYTHON_HOLDER])
            .arg(mock.port().to_string())
            .arg(mock.ca_file()),
    )
    .expect("start python");
    let hello = py.line().expect("python connects");
    assert!(hello.starts_with("connected TLS"), "{hello}");

    let warning = format!(
        "pid {} (gnutls-cli) has a connection to {}",
        gnutls.pid(),
        mock.addr()
    );
    wait_for_log(&agent, &warning, Duration::from_secs(5))
        .expect("the agent warns about the unhooked LLM connection");
    let row = status_row(gnutls.pid(), &[&provider]).expect("status lists gnutls-cli");
    assert_eq!(
        row_stacks(&row),
        vec![("gnutls".to_owned(), "unsupported".to_owned())],
        "{row}"
    );
    assert_eq!(
        row["llm_endpoints"],
        json!([mock.addr().to_string()]),
        "{row}"
    );
    assert_eq!(row["tcp_established"], 1, "{row}");

    let row = status_row(py.pid(), &[]).expect("status lists python");
    assert!(
        row_stacks(&row).contains(&("openssl-shared".to_owned(), "hooked".to_owned())),
        "{row}"
    );

    let (text, samples) = scrape(&addr).expect("scrape /metrics");
    assert!(
        coverage_gauge(&samples, "unsupported", "gnutls") >= Some(1.0),
        "{text}"
    );
    assert!(
        coverage_gauge(&samples, "hooked", "openssl-shared") >= Some(1.0),
        "{text}"
    );
    assert!(
        coverage_gauge(&samples, "no_tls", "none").is_some(),
        "{text}"
    );
    drop(gnutls);
    drop(py);
    agent.stop().expect("the agent stops cleanly");
}

/// A Python whose OpenSSL is linked into a fully stripped libpython (Google Cloud SDK bundles
/// one: clang-built, OpenSSL 3.0.16 in `libpython3.12.so.1.0`, no `.symtab`), or the one named
/// by `TOKENTAP_STRIPPED_PYTHON`: `tokentap status` reports its OpenSSL as `openssl-static`,
/// unsupported (there is no debug file for it), rather than missing it.
#[test]
fn fully_stripped_bundled_python_is_reported_unsupported() {
    if !privileged_tests_enabled() {
        return;
    }
    let python = std::env::var("TOKENTAP_STRIPPED_PYTHON").unwrap_or_else(|_| {
        "/usr/lib/google-cloud-sdk/platform/bundledpythonunix/bin/python3".to_owned()
    });
    if !std::path::Path::new(&python).exists() {
        eprintln!(
            "SKIPPED: no Python with a stripped static OpenSSL here ({python}); set TOKENTAP_STRIPPED_PYTHON"
        );
        return;
    }
    let mock = MockProvider::start().expect("start the mock provider");
    let mut py = HeldChild::spawn(
        Command::new(&python)
            .args(["-c", PYTHON_HOLDER])
            .arg(mock.port().to_string())
            .arg(mock.ca_file()),
    )
    .expect("start the bundled python");
    let hello = py.line().expect("python connects");
    assert!(hello.starts_with("connected TLS"), "{hello}");
    let row = status_row(py.pid(), &[]).expect("status lists the bundled python");
    let stacks = row["stacks"].as_array().cloned().unwrap_or_default();
    assert!(
        stacks.iter().any(|s| s["stack"] == "openssl-static"
            && s["coverage"] == "unsupported"
            && s["file"].as_str().is_some_and(|f| f.contains("libpython"))),
        "{row}"
    );
    assert!(
        !row_stacks(&row).iter().any(|(_, c)| c == "hooked"),
        "nothing in it is hookable: {row}"
    );
}
