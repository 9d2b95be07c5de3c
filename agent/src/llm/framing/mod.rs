//! Response body framings: how a body splits into the messages an API shape reads.
//!
//! Receives: decoded response body bytes, gaps, the end. Emits: [`Message`]s: SSE events,
//! NDJSON lines, AWS eventstream frames, or one whole JSON body (kept within bounds).

pub(crate) mod body;
pub(crate) mod eventstream;
pub(crate) mod lines;
pub(crate) mod sse;

pub(crate) use body::BoundedBody;
pub(crate) use eventstream::{EventStreamDecoder, Frame};
pub(crate) use lines::LineDecoder;
pub(crate) use sse::{SseDecoder, SseEvent};

/// Appends `bytes` to `buf` without letting its allocation grow past `max` (the caller keeps
/// `buf.len() + bytes.len() <= max`). `Vec` doubles its capacity when it grows, so a buffer
/// capped by length alone could hold nearly twice its limit in memory (found feeding a 14 MB
/// SSE line: 16.7 MB held for an 8 MiB limit).
pub(crate) fn extend_within(buf: &mut Vec<u8>, bytes: &[u8], max: usize) {
    let needed = buf.len() + bytes.len();
    if needed > buf.capacity() {
        let target = buf
            .capacity()
            .saturating_mul(2)
            .max(needed)
            .min(max.max(needed));
        buf.reserve_exact(target - buf.len());
    }
    buf.extend_from_slice(bytes);
}

/// How a response body is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    /// One JSON document (or anything else: an HTML error page, nothing).
    Json,
    Sse,
    Lines,
    EventStream,
}

impl Framing {
    /// The framing a `Content-Type` names, if it names a streaming one.
    pub(crate) fn from_content_type(ct: &str) -> Option<Self> {
        let mime = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match mime.as_str() {
            "text/event-stream" => Some(Self::Sse),
            "application/stream+json"
            | "application/x-ndjson"
            | "application/ndjson"
            | "application/jsonl"
            | "application/x-jsonl"
            | "application/jsonlines"
            | "application/x-jsonlines" => Some(Self::Lines),
            "application/vnd.amazon.eventstream" => Some(Self::EventStream),
            "" => None,
            _ => Some(Self::Json),
        }
    }

    pub(crate) fn is_stream(self) -> bool {
        self != Self::Json
    }
}

/// One unit of a response an API shape interprets.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Message<'a> {
    /// A whole JSON body: the object's members the shape asked for, or any other value.
    Body(&'a serde_json::Value),
    Sse(SseEvent<'a>),
    Line(&'a [u8]),
    Frame(Frame<'a>),
}

#[cfg(test)]
mod tests {
    use super::extend_within;

    #[test]
    fn growth_stops_at_the_limit() {
        let max = 1000;
        let mut buf = Vec::new();
        // A first piece that is not a power of two, as after a response head.
        extend_within(&mut buf, &[0; 100], max);
        while buf.len() + 100 <= max {
            extend_within(&mut buf, &[0; 100], max);
        }
        assert_eq!(buf.len(), 1000);
        assert!(buf.capacity() <= max, "capacity {}", buf.capacity());
    }
}
