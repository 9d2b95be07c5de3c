pub mod harness;
pub mod tls_server;
