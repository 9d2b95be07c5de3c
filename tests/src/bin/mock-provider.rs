//! The mock LLM provider as a process, for trying the SDK clients by hand: prints
//! `{"port":…,"ca_file":…}` on stdout, then serves until killed.
//!
//! ```text
//! cargo run -p tokentap-tests --bin mock-provider
//! target/e2e-venv/bin/python tests/clients/sdk_client.py --port PORT --cafile CA_FILE
//! ```
//!
//! `mock-provider --plaintext` serves plain HTTP (`http://127.0.0.1:PORT`) instead, as
//! in-cluster model servers do.

use std::io::Write;

use tokentap_tests::mock_provider::MockProvider;

fn main() {
    let plaintext = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("--plaintext") => true,
        Some(other) => {
            eprintln!("mock-provider: unknown argument {other:?}; the only option is --plaintext");
            std::process::exit(2);
        }
    };
    let started = if plaintext {
        MockProvider::start_plaintext()
    } else {
        MockProvider::start()
    };
    let server = match started {
        Ok(s) => s,
        Err(e) => {
            eprintln!("mock-provider: error: {e:#}");
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
