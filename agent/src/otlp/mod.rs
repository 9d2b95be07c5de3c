//! Traces: one OTLP span per LLM exchange, exported over OTLP/HTTP (protobuf) to an
//! OpenTelemetry Collector.
//!
//! Receives: [`ExchangeRecord`](crate::llm::ExchangeRecord)s, as a
//! [`RecordSink`](crate::exchanges::RecordSink). Emits: `POST /v1/traces` requests. A span
//! follows the GenAI client span conventions ([`span`]); when the request carried a W3C
//! `traceparent`, it is a child of the caller's span. Export is batched, bounded and retried
//! ([`exporter`]): a collector that is down costs a fixed amount of memory and counted drops.
//! The collector is reached over plain http or https ([`Collector`]), with optional request
//! headers (a vendor's API key), which are never logged.

use std::{fmt, path::Path, sync::Arc};

pub mod exporter;
pub mod proto;
pub mod span;

pub use exporter::{ExporterConfig, OtlpExporter, OtlpSink, start};

/// Where spans go: an `http://` or `https://` collector URL, with or without the
/// `/v1/traces` path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub https: bool,
    pub host: String,
    pub port: u16,
    pub path: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EndpointError {
    #[error("{0:?} is not an http:// or https:// URL (e.g. http://127.0.0.1:4318)")]
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
    /// Parses `http[s]://HOST[:PORT][/PATH]`; no path (or `/`) means `/v1/traces`. The port
    /// defaults to 4318 (OTLP/HTTP's) for http, to 443 for https (vendors' endpoints).
    pub fn parse(url: &str) -> Result<Self, EndpointError> {
        let url = url.trim();
        let lower = url.to_ascii_lowercase();
        let (https, rest) = if lower.starts_with("https://") {
            (true, &url["https://".len()..])
        } else if lower.starts_with("http://") {
            (false, &url["http://".len()..])
        } else {
            return Err(EndpointError::NotHttp(url.to_owned()));
        };
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
            None if https => 443,
            None => 4318,
        };
        let path = match path.trim_end_matches('/') {
            "" => TRACES_PATH.to_owned(),
            p => p.to_owned(),
        };
        Ok(Self {
            https,
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

/// Where spans go and how: the endpoint, TLS for https, and request headers.
#[derive(Clone)]
pub struct Collector {
    pub endpoint: Endpoint,
    /// Set for https: the server's certificate is checked against these roots.
    tls: Option<Arc<rustls::ClientConfig>>,
    /// Sent with every export (often credentials: their values are never logged).
    headers: Vec<(String, String)>,
}

impl Collector {
    /// For https, the collector's certificate must be signed by a CA in `ca_file`, or in the
    /// system's bundle when none is given. The error is one line saying what to fix.
    pub fn new(
        endpoint: Endpoint,
        ca_file: Option<&Path>,
        headers: Vec<(String, String)>,
    ) -> Result<Self, String> {
        let tls = if endpoint.https {
            let ca = match ca_file {
                Some(f) => f.to_owned(),
                None => crate::tls_client::system_ca_bundle().ok_or_else(|| {
                    format!(
                        "no CA bundle to check the collector's certificate with (looked for {}): give --otlp-ca-file",
                        crate::tls_client::SYSTEM_CA_BUNDLES.join(", ")
                    )
                })?,
            };
            Some(crate::tls_client::client_config(&ca)?)
        } else {
            None
        };
        Ok(Self {
            endpoint,
            tls,
            headers,
        })
    }

    /// A plain-http collector without headers.
    pub fn plain(endpoint: Endpoint) -> Self {
        Self {
            endpoint,
            tls: None,
            headers: Vec::new(),
        }
    }

    pub(crate) fn tls(&self) -> Option<&Arc<rustls::ClientConfig>> {
        self.tls.as_ref()
    }

    pub(crate) fn headers(&self) -> &[(String, String)] {
        &self.headers
    }
}

impl fmt::Debug for Collector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Header names only: values may be credentials.
        f.debug_struct("Collector")
            .field("endpoint", &self.endpoint)
            .field("https", &self.tls.is_some())
            .field(
                "headers",
                &self.headers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Headers the exporter sets itself, which a configuration may not replace.
const OWN_HEADERS: &[&str] = &[
    "host",
    "content-type",
    "content-length",
    "connection",
    "transfer-encoding",
    "user-agent",
];

/// Export headers in `OTEL_EXPORTER_OTLP_HEADERS`'s format: `name=value` pairs separated by
/// commas (or lines, in a headers file; `#` starts a comment line), values percent-encoded.
/// Errors name the header, never its value.
pub fn parse_headers(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut headers = Vec::new();
    for item in text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| l.split(','))
    {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let Some((name, value)) = item.split_once('=') else {
            return Err(
                "an OTLP header without `=` (the format is name=value,name2=value2)".into(),
            );
        };
        let name = name.trim().to_ascii_lowercase();
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(format!("OTLP header name {name:?} is not an HTTP token"));
        }
        if OWN_HEADERS.contains(&name.as_str()) {
            return Err(format!("OTLP header {name:?} is set by tokentap itself"));
        }
        let value = percent_decode(value.trim())
            .filter(|v| !v.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0))
            .ok_or_else(|| {
                format!(
                    "OTLP header {name:?}: the value is not valid (bad %-escape, or a line break)"
                )
            })?;
        headers.retain(|(n, _): &(String, String)| *n != name);
        headers.push((name, value));
    }
    Ok(headers)
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// `%XX` escapes decoded; `None` when one is malformed or the result is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests;
