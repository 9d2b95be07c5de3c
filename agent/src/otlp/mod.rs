//! Traces: one OTLP span per LLM exchange, exported over OTLP/HTTP (protobuf) to an
//! OpenTelemetry Collector.
//!
//! Receives: [`ExchangeRecord`](crate::llm::ExchangeRecord)s, as a
//! [`RecordSink`](crate::exchanges::RecordSink). Emits: `POST /v1/traces` requests. A span
//! follows the GenAI client span conventions ([`span`]); when the request carried a W3C
//! `traceparent`, it is a child of the caller's span. Export is batched, bounded and retried
//! ([`exporter`]): a collector that is down costs a fixed amount of memory and counted drops.

pub mod exporter;
pub mod proto;
pub mod span;

pub use exporter::{ExporterConfig, OtlpExporter, OtlpSink, start};

/// Where spans go: an `http://` collector URL, with or without the `/v1/traces` path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub path: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EndpointError {
    #[error(
        "https is not supported yet: point it at a collector's plain http OTLP receiver (e.g. http://127.0.0.1:4318)"
    )]
    Https,
    #[error("{0:?} is not an http:// URL (e.g. http://127.0.0.1:4318)")]
    NotHttp(String),
    #[error("{0:?} has no host")]
    NoHost(String),
    #[error("{0:?} has a bad port")]
    BadPort(String),
    #[error(
        "credentials in the endpoint URL are not supported (they would be logged): remove the user:password@ part"
    )]
    Credentials,
}

/// The OTLP/HTTP traces path.
pub const TRACES_PATH: &str = "/v1/traces";

impl Endpoint {
    /// Parses `http://HOST[:PORT][/PATH]`; no path (or `/`) means `/v1/traces`; the port
    /// defaults to 4318, OTLP/HTTP's.
    pub fn parse(url: &str) -> Result<Self, EndpointError> {
        let url = url.trim();
        let lower = url.to_ascii_lowercase();
        if lower.starts_with("https://") {
            return Err(EndpointError::Https);
        }
        if !lower.starts_with("http://") {
            return Err(EndpointError::NotHttp(url.to_owned()));
        }
        let rest = &url["http://".len()..];
        let (authority, path) = match rest.find('/') {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(EndpointError::Credentials);
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            // [::1]:4318
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| EndpointError::NoHost(url.to_owned()))?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(EndpointError::NoHost(url.to_owned()));
        }
        let port = match port {
            Some(p) => p
                .parse()
                .map_err(|_| EndpointError::BadPort(url.to_owned()))?,
            None => 4318,
        };
        let path = match path.trim_end_matches('/') {
            "" => TRACES_PATH.to_owned(),
            p => p.to_owned(),
        };
        Ok(Self {
            host: host.to_owned(),
            port,
            path,
        })
    }

    /// `host:port` for the `Host` header (IPv6 hosts bracketed).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests;
