//! tokentap: LLM API metrics from TLS plaintext captured with eBPF uprobes.
//!
//! Data flows one way: kernel records ([`tokentap_common::decode`]) → per-connection byte
//! streams ([`stream`]) → sinks (the capture view, metrics). The core stages are pure and
//! tested without a kernel; [`probes`], [`source`] and [`server`] are the thin edges.

pub mod anomalies;
pub mod capture;
pub mod cli;
pub mod clock;
pub mod config;
pub mod cost;
pub mod discovery;
pub mod endpoint_security;
pub mod exchange_log;
pub mod exchanges;
pub mod go_binary;
pub mod go_pclntab;
#[cfg(test)]
mod hostile_input_tests;
pub mod http;
pub mod llm;
pub mod metrics;
pub mod otlp;
pub mod overlay;
pub mod pipeline;
pub mod probes;
pub mod redact;
pub mod runtime;
pub mod self_metrics;
pub mod server;
pub mod source;
pub mod stage_metrics;
pub mod stats;
pub mod stream;
pub mod tls_client;
pub mod tls_stacks;
pub mod watch;
pub mod workload;
