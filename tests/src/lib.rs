pub mod genai_check;
pub mod harness;
pub mod mock_provider;
pub mod otlp_receiver;
pub mod prom;
pub mod sdk;
pub mod tls_server;
pub mod tls_stacks;
