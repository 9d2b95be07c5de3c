//! The rustls test server as a process, for benchmarks: prints `{"port":…,"ca_file":…}` on
//! stdout, then serves until killed.

use std::io::Write;

use tokentap_tests::tls_server::TlsTestServer;

fn main() {
    let server = match TlsTestServer::start(&["localhost"]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tls-test-server: error: {e:#}");
            std::process::exit(1);
        }
    };
    let line = serde_json::json!({ "port": server.port(), "ca_file": server.ca_file() });
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
        std::process::exit(1);
    }
    drop(out);
    loop {
        std::thread::park();
    }
}
