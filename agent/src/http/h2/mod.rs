//! HTTP/2 (RFC 9113) reconstruction for connections that open with the client preface.
//!
//! Receives, from the HTTP stage's tracker: both directions of a connection recognised as
//! HTTP/2 by its first bytes (ALPN is not visible to the capture). Emits: the HTTP stage's
//! [`crate::http::HttpEvent`]s, one exchange per stream, so the LLM stage is unchanged.
//!
//! Sub-stages: [`frame`] finds frame boundaries and streams DATA; [`hpack`] (with
//! [`huffman`]) decodes header blocks; [`conn`] stitches streams into exchanges and feeds
//! DATA to the shared body decoders.

pub(crate) mod conn;
pub(crate) mod frame;
pub(crate) mod hpack;
mod huffman;

/// The client connection preface (RFC 9113 §3.4).
pub(crate) const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the first bytes of a direction say about HTTP/2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Opening {
    /// The client preface, whole.
    Preface,
    /// Could still be the preface, or a server's first SETTINGS frame.
    Maybe,
    No,
}

/// Classifies the first bytes of a direction.
pub(crate) fn opening(bytes: &[u8]) -> Opening {
    if bytes.starts_with(PREFACE) {
        return Opening::Preface;
    }
    if PREFACE.starts_with(bytes) {
        return Opening::Maybe;
    }
    // A server's connection preface is a SETTINGS frame (not an ACK) on stream 0.
    let settings = [
        None,
        None,
        None,
        Some(frame::SETTINGS),
        Some(0),
        Some(0),
        Some(0),
        Some(0),
        Some(0),
    ];
    let fits = bytes
        .iter()
        .zip(settings)
        .all(|(&b, want)| want.is_none_or(|w| w == b));
    let len_ok = match bytes {
        [a, b, c, ..] => u32::from_be_bytes([0, *a, *b, *c]).is_multiple_of(6),
        _ => true,
    };
    if fits && len_ok {
        Opening::Maybe
    } else {
        Opening::No
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openings() {
        assert_eq!(opening(PREFACE), Opening::Preface);
        assert_eq!(
            opening(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0"),
            Opening::Preface
        );
        assert_eq!(opening(b"PRI * HT"), Opening::Maybe);
        assert_eq!(opening(b"P"), Opening::Maybe);
        assert_eq!(opening(b"POST /"), Opening::No);
        assert_eq!(opening(b"HTTP/1.1 200"), Opening::No);
        assert_eq!(opening(b"\0\0\x12\x04\0\0\0\0\0\0\x03"), Opening::Maybe);
        assert_eq!(opening(b"\0\0\x12\x04\x01"), Opening::No, "an ACK");
        assert_eq!(opening(b"\0\0\x11\x04"), Opening::No, "not whole settings");
    }
}
