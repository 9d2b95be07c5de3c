//! End-to-end: Node.js's own `https` module (tests/clients/node_llm_client.js) calls the mock
//! provider while `tokentap agent` runs; the agent's token and request counters for those calls
//! must equal what the Node client parsed from the answers, and `tokentap status` must show the
//! Node process's OpenSSL as hooked.
//!
//! Which OpenSSL Node uses depends on the build: NodeSource's and nodejs.org's binaries link
//! OpenSSL statically and export its functions in `.dynsym` (tokentap finds them by ELF symbol
//! scan and attaches at their file offsets: stack `openssl-static`); Debian's own `nodejs`
//! package links the system `libssl.so.3` (`openssl-shared`). The test accepts either and
//! checks that `tokentap status` names the one `readelf -d` implies.
//!
//! Needs root and `node` (`cargo xtask setup` installs `nodejs`). Run with `cargo xtask test`.

use std::{path::Path, process::Command, time::Duration};

use serde_json::Value;
use tokentap_tests::{
    harness::{Agent, privileged_tests_enabled},
    mock_provider::MockProvider,
    tls_stacks::{
        CallTruth, HeldChild, Totals, agent_addr, coverage_gauge, row_stacks, scrape, status_row,
        wait_for_log,
    },
};

fn node_links_libssl(node: &Path) -> bool {
    let out = Command::new("readelf")
        .arg("-d")
        .arg(node)
        .output()
        .expect("readelf (binutils) runs");
    String::from_utf8_lossy(&out.stdout).contains("libssl.so")
}

#[test]
fn node_https_calls_equal_metrics() {
    if !privileged_tests_enabled() {
        return;
    }
    let node = ["/usr/bin/node", "/usr/local/bin/node"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .expect("node not found: install Node.js (`cargo xtask setup` installs Debian's nodejs)");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/node_llm_client.js");
    let mock = MockProvider::start().expect("start the mock provider");
    let agent = Agent::start(&["agent", "--listen", "127.0.0.1:0", "--rescan-interval", "1"])
        .expect("start tokentap agent");
    let addr = agent_addr(&agent).expect("agent address");

    let tag = format!("node{}", std::process::id());
    let mut client = HeldChild::spawn(
        Command::new(node)
            .arg(&script)
            .arg(mock.port().to_string())
            .arg(&tag)
            .env("NODE_EXTRA_CA_CERTS", mock.ca_file()),
    )
    .expect("start the Node client");
    client.line().expect("the Node client starts");
    let expected_stack = if node_links_libssl(node) {
        "openssl-shared"
    } else {
        // Hooked when the agent sees the exec; the client waits for that.
        wait_for_log(
            &agent,
            &format!("node (pid {})", client.pid()),
            Duration::from_secs(10),
        )
        .expect("the agent hooks the OpenSSL inside node when it starts");
        "openssl-static"
    };
    client.send_line("go").expect("start the calls");
    let report: Value =
        serde_json::from_str(&client.line().expect("the Node client reports")).expect("JSON");
    let calls: Vec<CallTruth> = report["calls"]
        .as_array()
        .expect("calls")
        .iter()
        .map(|c| CallTruth {
            model: c["model"].as_str().unwrap_or_default().to_owned(),
            status: c["status"].as_u64().unwrap_or_default() as u16,
            input: c["input"].as_u64(),
            output: c["output"].as_u64(),
        })
        .collect();
    eprintln!(
        "node {} (OpenSSL {}), pid {}: {calls:?}",
        report["node"], report["openssl"], report["pid"]
    );
    assert_eq!(calls.len(), 6);
    // The chain without the agent: every call was answered as the scenario asked.
    assert_eq!(
        calls.iter().filter(|c| c.status == 200).count(),
        5,
        "test infrastructure: {calls:?}"
    );
    let records = mock.wait_requests(calls.len(), Duration::from_secs(10));
    for (call, record) in calls.iter().zip(&records) {
        assert_eq!(
            (call.input, call.output),
            (record.tokens.input, record.tokens.output),
            "test infrastructure: the Node client's view differs from what the mock sent"
        );
    }

    // Metrics are synced four times a second; coverage at every rescan (1 s here).
    std::thread::sleep(Duration::from_millis(2500));
    let (text, samples) = scrape(&addr).expect("scrape /metrics");
    let expected = Totals::of_calls(&calls);
    assert!(expected.input_tokens > 0 && expected.output_tokens > 0);
    assert_eq!(
        Totals::of_metrics(&samples, &tag),
        expected,
        "the agent's counters for the Node calls differ from what Node saw:\n{text}"
    );

    let row = status_row(client.pid(), &[]).expect("tokentap status lists the Node process");
    let stacks = row_stacks(&row);
    assert!(
        stacks.contains(&(expected_stack.to_owned(), "hooked".to_owned())),
        "{row}"
    );
    assert!(row["tcp_established"].as_u64() >= Some(1), "{row}");
    assert!(
        coverage_gauge(&samples, "hooked", expected_stack) >= Some(1.0),
        "tokentap_process_tls_coverage{{coverage=\"hooked\",stack=\"{expected_stack}\"}}:\n{text}"
    );
    drop(client);
    agent.stop().expect("the agent stops cleanly");
}
