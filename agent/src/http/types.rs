//! The types the HTTP stage hands to the LLM stage. This file is the boundary: the parser
//! behind it and the LLM semantics in front of it can change independently.

use crate::stream::ConnKey;

/// Header names whose values are credentials; they are dropped when a head is parsed.
/// [`is_credential_header`] also catches the many vendor-specific ones by shape.
pub const CREDENTIAL_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "api-key",
    "x-goog-api-key",
    "cookie",
    "set-cookie",
];

/// Whether a header (lowercase name) carries a credential: the list above, and any name that
/// looks like one (`ocp-apim-subscription-key`, `x-amz-security-token`, `helicone-auth`,
/// `x-litellm-api-key`, `x-functions-key`, `*-secret`, `*-password`, `*-signature`, ...). Counts
/// such as `x-amzn-bedrock-input-token-count` or rate-limit headers are not credentials.
pub fn is_credential_header(name: &str) -> bool {
    if CREDENTIAL_HEADERS.contains(&name) {
        return true;
    }
    let counts = name.ends_with("-count")
        || name.contains("ratelimit")
        || name.contains("rate-limit")
        || name.contains("-tokens");
    if counts {
        return false;
    }
    name.ends_with("-key")
        || name.ends_with("-token")
        || name.ends_with("_key")
        || name.ends_with("_token")
        || name.contains("apikey")
        || name.contains("api-key")
        || name.contains("auth")
        || name.contains("secret")
        || name.contains("password")
        || name.contains("signature")
        || name.contains("cookie")
        || name.contains("session")
}

/// Query parameters whose values are credentials (`?key=` for Gemini, SAS tokens, ...).
pub const CREDENTIAL_QUERY_PARAMS: &[&str] = &[
    "key",
    "api_key",
    "api-key",
    "apikey",
    "token",
    "access_token",
    "sig",
    "signature",
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
];

/// Headers of a request or response: names lowercased, credentials already removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    /// Builds a header list, dropping credential headers.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Self {
        let mut out = Vec::new();
        for (name, value) in pairs {
            let name = name.to_ascii_lowercase();
            if is_credential_header(&name) {
                continue;
            }
            out.push((name, String::from_utf8_lossy(value).into_owned()));
        }
        Self(out)
    }

    /// The first value of `name` (lowercase).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }
}

/// Removes the values of credential query parameters: `/v1/x?key=abc&alt=sse` becomes
/// `/v1/x?key=REDACTED&alt=sse`.
pub fn redact_query(target: &str) -> String {
    let Some((path, query)) = target.split_once('?') else {
        return target.to_owned();
    };
    let parts: Vec<String> = query
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if CREDENTIAL_QUERY_PARAMS.contains(&k.to_ascii_lowercase().as_str()) => {
                format!("{k}=REDACTED")
            }
            _ => kv.to_owned(),
        })
        .collect();
    format!("{path}?{}", parts.join("&"))
}

/// Which side of the exchange the observed process is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// It wrote the request and read the response.
    Client,
    /// It read the request and wrote the response (a gateway or model server terminating TLS).
    Server,
}

/// A body kept within bounds: its first bytes and its last bytes, and the exact total length.
/// A body that fits is entirely in `head` (then `tail` is empty and `missing` is 0).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SparseBody {
    /// Decoded bytes from the start of the body.
    pub head: Vec<u8>,
    /// Decoded bytes from the end of the body, when they do not follow `head` directly.
    pub tail: Vec<u8>,
    /// Bytes of the body (decoded, when the encoding could be decoded) in all.
    pub total_len: u64,
    /// Bytes between `head` and `tail` that are not available (not captured, or not kept).
    pub missing: u64,
    /// The body could not be decoded (unsupported or corrupt Content-Encoding, a gap in a
    /// compressed body, a decompression bomb cut short): `head`/`tail` hold what was decoded.
    pub undecodable: bool,
}

impl SparseBody {
    /// The whole body, when nothing is missing.
    pub fn complete(&self) -> Option<&[u8]> {
        (self.missing == 0 && self.tail.is_empty() && !self.undecodable).then_some(&self.head)
    }
}

/// A complete request as the HTTP stage saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpRequest {
    pub method: String,
    /// Path and query, credentials redacted ([`redact_query`]).
    pub target: String,
    pub headers: Headers,
    pub body: SparseBody,
    /// Bytes on the wire (head and body, before any decoding).
    pub wire_len: u64,
    /// Capture time of the first byte of the request.
    pub start_ktime_ns: u64,
    /// Capture time of the last byte of the request.
    pub end_ktime_ns: u64,
}

/// A response head (final, not 1xx).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub headers: Headers,
    /// Capture time of the first byte of the response head.
    pub ktime_ns: u64,
}

/// How a response ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseEnd {
    /// Framing said the body is complete (Content-Length reached, last chunk, no body).
    Complete,
    /// The body was delimited by the connection closing, and it closed.
    ClosedDelimited,
    /// The connection ended before the body did.
    Interrupted,
}

/// What the HTTP stage emits, in order, per connection. `exchange` numbers the exchanges of
/// a connection from 0.
#[derive(Debug)]
pub enum HttpEvent<'a> {
    Request {
        conn: ConnKey,
        exchange: u64,
        role: Role,
        request: &'a HttpRequest,
    },
    ResponseHead {
        conn: ConnKey,
        exchange: u64,
        head: &'a ResponseHead,
    },
    /// Decoded (de-chunked, decompressed) response body bytes, and when their last byte was
    /// captured.
    ResponseBody {
        conn: ConnKey,
        exchange: u64,
        data: &'a [u8],
        ktime_ns: u64,
    },
    /// `len` response body bytes are missing here (lost in capture, or undecodable).
    ResponseGap {
        conn: ConnKey,
        exchange: u64,
        len: u64,
    },
    ResponseEnd {
        conn: ConnKey,
        exchange: u64,
        end: ResponseEnd,
        ktime_ns: u64,
    },
    /// The connection ended with a request that never got a response.
    Abandoned {
        conn: ConnKey,
        exchange: u64,
        ktime_ns: u64,
    },
}

#[cfg(test)]
mod credential_tests {
    use super::is_credential_header;

    #[test]
    fn credential_headers_by_name_and_shape() {
        for h in [
            "authorization",
            "x-api-key",
            "api-key",
            "x-goog-api-key",
            "ocp-apim-subscription-key",
            "x-amz-security-token",
            "helicone-auth",
            "x-litellm-api-key",
            "x-functions-key",
            "x-client-secret",
            "cookie",
        ] {
            assert!(is_credential_header(h), "{h}");
        }
        for h in [
            "content-type",
            "x-amzn-bedrock-input-token-count",
            "x-ratelimit-remaining-tokens",
            "anthropic-ratelimit-input-tokens-remaining",
            "x-request-id",
            "host",
            "openai-processing-ms",
        ] {
            assert!(!is_credential_header(h), "{h}");
        }
    }
}
