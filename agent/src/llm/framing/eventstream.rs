//! Incremental decoder for AWS `application/vnd.amazon.eventstream` framing (Bedrock's
//! streaming responses).
//!
//! A message is: total length (u32 BE), headers length (u32 BE), CRC32 of those 8 bytes,
//! headers, payload, CRC32 of everything before it. A header is a name (u8 length + bytes), a
//! type byte and a typed value.
//!
//! Receives: body bytes split anywhere, and gaps. Emits: each message whose CRCs check, or an
//! error for one that does not. After a gap or a bad message, decoding resumes at the next
//! offset whose prelude CRC checks (a 32-bit check: a false match is rare, and its message
//! CRC would then fail too).

use thiserror::Error;

/// Prelude (12 bytes) and message CRC (4 bytes).
const OVERHEAD: usize = 16;

#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventStreamError {
    #[error("prelude CRC mismatch")]
    PreludeCrc,
    #[error("message CRC mismatch")]
    MessageCrc,
    #[error("message length {0} out of bounds")]
    Length(u32),
    #[error("malformed headers")]
    Headers,
}

/// One decoded message: the headers the LLM stage reads, and the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Frame<'a> {
    /// `:message-type`: `event`, `exception` or `error`.
    pub(crate) message_type: Option<&'a str>,
    /// `:event-type`, e.g. `contentBlockDelta`, `chunk`.
    pub(crate) event_type: Option<&'a str>,
    /// `:exception-type`, e.g. `throttlingException`.
    pub(crate) exception_type: Option<&'a str>,
    /// `:error-code` of a protocol-level error message.
    pub(crate) error_code: Option<&'a str>,
    pub(crate) payload: &'a [u8],
}

#[derive(Debug)]
pub(crate) struct EventStreamDecoder {
    max_message: usize,
    buf: Vec<u8>,
    resync: bool,
}

impl EventStreamDecoder {
    pub(crate) fn new(max_message: usize) -> Self {
        Self {
            max_message,
            buf: Vec::new(),
            resync: false,
        }
    }

    pub(crate) fn feed(
        &mut self,
        bytes: &[u8],
        on_frame: &mut dyn FnMut(Result<Frame<'_>, EventStreamError>),
    ) {
        self.buf.extend_from_slice(bytes);
        let mut at = 0;
        loop {
            let rest = &self.buf[at..];
            if self.resync {
                match self.find_prelude(rest) {
                    Some(off) => {
                        at += off;
                        self.resync = false;
                    }
                    None => {
                        // Keep what could still start a prelude.
                        at += rest.len().saturating_sub(11);
                        break;
                    }
                }
                continue;
            }
            if rest.len() < 12 {
                break;
            }
            let total = be32(rest, 0);
            if let Err(e) = self.check_prelude(rest) {
                on_frame(Err(e));
                self.resync = true;
                at += 1;
                continue;
            }
            let total = total as usize;
            if rest.len() < total {
                break;
            }
            let msg = &rest[..total];
            let result = if crc32(&msg[..total - 4]) == be32(msg, total - 4) {
                parse_message(msg)
            } else {
                Err(EventStreamError::MessageCrc)
            };
            let failed = result.is_err();
            on_frame(result);
            if failed {
                self.resync = true;
                at += 1;
            } else {
                at += total;
            }
        }
        self.buf.drain(..at);
    }

    fn check_prelude(&self, p: &[u8]) -> Result<(), EventStreamError> {
        if crc32(&p[..8]) != be32(p, 8) {
            return Err(EventStreamError::PreludeCrc);
        }
        let total = be32(p, 0);
        let headers = be32(p, 4) as usize;
        let t = total as usize;
        if t < OVERHEAD || t > self.max_message || headers > t - OVERHEAD {
            return Err(EventStreamError::Length(total));
        }
        Ok(())
    }

    fn find_prelude(&self, rest: &[u8]) -> Option<usize> {
        (0..rest.len().saturating_sub(11)).find(|&i| self.check_prelude(&rest[i..]).is_ok())
    }

    /// Bytes are missing: what is buffered is dropped, and decoding resyncs.
    pub(crate) fn gap(&mut self) {
        self.buf.clear();
        self.resync = true;
    }

    /// Bytes buffered towards an incomplete message.
    #[cfg(test)]
    pub(crate) fn pending(&self) -> usize {
        self.buf.len()
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn parse_message(msg: &[u8]) -> Result<Frame<'_>, EventStreamError> {
    let hlen = be32(msg, 4) as usize;
    let headers = &msg[12..12 + hlen];
    let mut frame = Frame {
        payload: &msg[12 + hlen..msg.len() - 4],
        ..Frame::default()
    };
    let mut i = 0;
    while i < headers.len() {
        let nlen = usize::from(headers[i]);
        let name = headers
            .get(i + 1..i + 1 + nlen)
            .ok_or(EventStreamError::Headers)?;
        i += 1 + nlen;
        let ty = *headers.get(i).ok_or(EventStreamError::Headers)?;
        i += 1;
        let fixed = match ty {
            0 | 1 => Some(0),
            2 => Some(1),
            3 => Some(2),
            4 => Some(4),
            5 | 8 => Some(8),
            9 => Some(16),
            6 | 7 => None,
            _ => return Err(EventStreamError::Headers),
        };
        match fixed {
            Some(n) => {
                if i + n > headers.len() {
                    return Err(EventStreamError::Headers);
                }
                i += n;
            }
            None => {
                let len = headers.get(i..i + 2).ok_or(EventStreamError::Headers)?;
                let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
                let value = headers
                    .get(i + 2..i + 2 + len)
                    .ok_or(EventStreamError::Headers)?;
                i += 2 + len;
                if ty == 7 {
                    let value =
                        std::str::from_utf8(value).map_err(|_| EventStreamError::Headers)?;
                    match name {
                        b":message-type" => frame.message_type = Some(value),
                        b":event-type" => frame.event_type = Some(value),
                        b":exception-type" => frame.exception_type = Some(value),
                        b":error-code" => frame.error_code = Some(value),
                        _ => {}
                    }
                }
            }
        }
    }
    Ok(frame)
}

const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut n = 0;
    while n < 256 {
        let mut c = n as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[n] = c;
        n += 1;
    }
    table
};

/// CRC-32 (IEEE 802.3), as the framing uses.
pub(crate) fn crc32(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in bytes {
        c = CRC_TABLE[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8);
    }
    !c
}

/// Encodes one message with string headers (for tests and fixtures).
#[cfg(test)]
pub(crate) fn encode(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    for (name, value) in headers {
        h.push(u8::try_from(name.len()).expect("short name"));
        h.extend_from_slice(name.as_bytes());
        h.push(7);
        h.extend_from_slice(
            &u16::try_from(value.len())
                .expect("short value")
                .to_be_bytes(),
        );
        h.extend_from_slice(value.as_bytes());
    }
    let total = u32::try_from(OVERHEAD + h.len() + payload.len()).expect("small message");
    let mut m = Vec::new();
    m.extend_from_slice(&total.to_be_bytes());
    m.extend_from_slice(&u32::try_from(h.len()).expect("small headers").to_be_bytes());
    m.extend_from_slice(&crc32(&m[..8]).to_be_bytes());
    m.extend_from_slice(&h);
    m.extend_from_slice(payload);
    m.extend_from_slice(&crc32(&m).to_be_bytes());
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    type Seen = Vec<Result<(Option<String>, Vec<u8>), EventStreamError>>;

    fn collect(d: &mut EventStreamDecoder, bytes: &[u8], out: &mut Seen) {
        d.feed(bytes, &mut |f| {
            out.push(f.map(|f| (f.event_type.map(str::to_owned), f.payload.to_vec())))
        });
    }

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn messages_split_anywhere() {
        let mut body = encode(
            &[(":event-type", "messageStart"), (":message-type", "event")],
            br#"{"role":"assistant"}"#,
        );
        body.extend(encode(
            &[(":event-type", "messageStop")],
            br#"{"stopReason":"end_turn"}"#,
        ));
        for split in 0..=body.len() {
            let mut d = EventStreamDecoder::new(1 << 20);
            let mut out = Vec::new();
            collect(&mut d, &body[..split], &mut out);
            collect(&mut d, &body[split..], &mut out);
            assert_eq!(out.len(), 2, "split at {split}");
            assert_eq!(
                out[1],
                Ok((
                    Some("messageStop".to_owned()),
                    br#"{"stopReason":"end_turn"}"#.to_vec()
                ))
            );
            assert_eq!(d.pending(), 0);
        }
    }

    #[test]
    fn resyncs_after_a_gap_and_after_corruption() {
        let a = encode(&[(":event-type", "a")], b"{}");
        let b = encode(&[(":event-type", "b")], b"{}");
        let mut d = EventStreamDecoder::new(1 << 20);
        let mut out = Vec::new();
        collect(&mut d, &a[..10], &mut out);
        d.gap();
        collect(&mut d, &a[20..], &mut out);
        collect(&mut d, &b, &mut out);
        assert_eq!(out, vec![Ok((Some("b".to_owned()), b"{}".to_vec()))]);

        let mut bad = a.clone();
        let last = bad.len() - 6;
        bad[last] ^= 1;
        let mut out = Vec::new();
        let mut d = EventStreamDecoder::new(1 << 20);
        collect(&mut d, &bad, &mut out);
        collect(&mut d, &b, &mut out);
        assert_eq!(
            out,
            vec![
                Err(EventStreamError::MessageCrc),
                Ok((Some("b".to_owned()), b"{}".to_vec()))
            ]
        );
    }
}
