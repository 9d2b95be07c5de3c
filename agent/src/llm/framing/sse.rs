//! Incremental `text/event-stream` decoder (the WHATWG rules that LLM APIs rely on).
//!
//! Receives: body bytes split anywhere, and gaps. Emits: one [`SseEvent`] per dispatched
//! event, as soon as its terminating blank line arrives. Lines end with LF, CRLF or CR (a CRLF
//! may be split across two feeds); `:` lines are comments (keep-alives); leading blank lines
//! and a byte-order mark are ignored; several `data:` lines join with `\n`.
//!
//! Memory is bounded: an event's data beyond `max_event` bytes is dropped, and the event is
//! still dispatched, by name, without data.

/// One dispatched event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SseEvent<'a> {
    /// The `event:` field, when given.
    pub(crate) event: Option<&'a str>,
    /// The joined `data:` lines; `None` when they were longer than the decoder keeps.
    pub(crate) data: Option<&'a [u8]>,
}

#[derive(Debug)]
pub(crate) struct SseDecoder {
    max_event: usize,
    line: Vec<u8>,
    /// The current line is too long: its bytes are being dropped.
    line_overflow: bool,
    /// A CR ended the last line; a LF right after it belongs to it.
    after_cr: bool,
    /// Nothing was fed yet (a byte-order mark may come).
    at_start: bool,
    event: Option<String>,
    data: Vec<u8>,
    has_data: bool,
    data_overflow: bool,
    /// After a gap: drop lines up to the next blank one.
    resync: bool,
    /// Events whose data was too large.
    pub(crate) oversized: u64,
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

impl SseDecoder {
    pub(crate) fn new(max_event: usize) -> Self {
        Self {
            max_event,
            line: Vec::new(),
            line_overflow: false,
            after_cr: false,
            at_start: true,
            event: None,
            data: Vec::new(),
            has_data: false,
            data_overflow: false,
            resync: false,
            oversized: 0,
        }
    }

    pub(crate) fn feed(&mut self, mut bytes: &[u8], on_event: &mut dyn FnMut(SseEvent<'_>)) {
        if self.at_start {
            // The BOM may arrive split; hold back a prefix of it.
            let mut pending = std::mem::take(&mut self.line);
            pending.extend_from_slice(bytes);
            if pending.len() < BOM.len() && BOM.starts_with(&pending) {
                self.line = pending;
                return;
            }
            self.at_start = false;
            let start = if pending.starts_with(BOM) {
                BOM.len()
            } else {
                0
            };
            self.feed_lines(&pending[start..], on_event);
            return;
        }
        if self.after_cr {
            self.after_cr = false;
            if let Some(rest) = bytes.strip_prefix(b"\n") {
                bytes = rest;
            }
        }
        self.feed_lines(bytes, on_event);
    }

    fn feed_lines(&mut self, mut bytes: &[u8], on_event: &mut dyn FnMut(SseEvent<'_>)) {
        while let Some(pos) = bytes.iter().position(|&b| b == b'\n' || b == b'\r') {
            self.push_line_bytes(&bytes[..pos]);
            let mut next = pos + 1;
            if bytes[pos] == b'\r' {
                match bytes.get(next) {
                    Some(b'\n') => next += 1,
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            self.end_line(on_event);
            bytes = &bytes[next..];
        }
        self.push_line_bytes(bytes);
    }

    fn push_line_bytes(&mut self, bytes: &[u8]) {
        if self.line_overflow {
            return;
        }
        if self.line.len() + bytes.len() > self.max_event {
            self.line_overflow = true;
            self.line = Vec::new();
            return;
        }
        super::extend_within(&mut self.line, bytes, self.max_event);
    }

    fn end_line(&mut self, on_event: &mut dyn FnMut(SseEvent<'_>)) {
        let overflow = std::mem::replace(&mut self.line_overflow, false);
        let line = std::mem::take(&mut self.line);
        if self.resync {
            if line.is_empty() && !overflow {
                self.resync = false;
            }
            self.line = line;
            self.line.clear();
            return;
        }
        if overflow {
            // Only data lines get this long.
            self.has_data = true;
            self.data_overflow = true;
            self.data = Vec::new();
        } else if line.is_empty() {
            self.dispatch(on_event);
        } else if line[0] != b':' {
            let (field, value) = match line.iter().position(|&b| b == b':') {
                Some(colon) => {
                    let v = &line[colon + 1..];
                    (&line[..colon], v.strip_prefix(b" ").unwrap_or(v))
                }
                None => (&line[..], &b""[..]),
            };
            match field {
                b"event" => self.event = Some(String::from_utf8_lossy(value).into_owned()),
                b"data" => {
                    if !self.data_overflow {
                        let extra = usize::from(self.has_data) + value.len();
                        if self.data.len() + extra > self.max_event {
                            self.data_overflow = true;
                            self.data = Vec::new();
                        } else {
                            if self.has_data {
                                self.data.push(b'\n');
                            }
                            super::extend_within(&mut self.data, value, self.max_event);
                        }
                    }
                    self.has_data = true;
                }
                _ => {}
            }
        }
        // Keep the allocation for the next line.
        self.line = line;
        self.line.clear();
    }

    fn dispatch(&mut self, on_event: &mut dyn FnMut(SseEvent<'_>)) {
        if self.has_data {
            if self.data_overflow {
                self.oversized += 1;
            }
            on_event(SseEvent {
                event: self.event.as_deref(),
                data: (!self.data_overflow).then_some(&self.data[..]),
            });
        }
        self.event = None;
        self.data.clear();
        self.has_data = false;
        self.data_overflow = false;
    }

    /// Bytes are missing: the event in progress is lost; decoding resumes after the next
    /// blank line.
    pub(crate) fn gap(&mut self) {
        self.line.clear();
        self.line_overflow = false;
        self.after_cr = false;
        self.at_start = false;
        self.event = None;
        self.data.clear();
        self.has_data = false;
        self.data_overflow = false;
        self.resync = true;
    }

    /// The body ended cleanly: an unterminated last line and event are taken as if a blank
    /// line followed (servers that omit the final one).
    pub(crate) fn finish(&mut self, on_event: &mut dyn FnMut(SseEvent<'_>)) {
        if self.at_start {
            self.at_start = false;
            let pending = std::mem::take(&mut self.line);
            self.feed_lines(&pending, on_event);
        }
        if !self.line.is_empty() || self.line_overflow {
            self.end_line(on_event);
        }
        if !self.resync {
            self.dispatch(on_event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_oversized_line_never_holds_more_than_the_limit() {
        // Regression: `Vec` doubling let a line capped at 8 MiB hold 16 MiB once its first
        // piece was not a power of two (a 14 MB line behind a response head).
        let max = 1 << 20;
        let mut d = SseDecoder::new(max);
        d.feed(b"data: ", &mut |_| {});
        let mut held = 0;
        for piece in vec![b'x'; 3 * max].chunks(16384) {
            d.feed(piece, &mut |_| {});
            held = held.max(d.line.capacity());
        }
        assert!(held <= max, "{held} bytes held for a limit of {max}");
        let mut events = 0;
        d.feed(b"\n\ndata: {}\n\n", &mut |e| {
            events += 1;
            assert_eq!(e.data.is_some(), events == 2);
        });
        assert_eq!((events, d.oversized), (2, 1));
    }

    fn decode(chunks: &[&[u8]], max: usize) -> Vec<(Option<String>, Option<String>)> {
        let mut d = SseDecoder::new(max);
        let mut out = Vec::new();
        let mut push = |e: SseEvent<'_>| {
            out.push((
                e.event.map(str::to_owned),
                e.data.map(|d| String::from_utf8_lossy(d).into_owned()),
            ))
        };
        for c in chunks {
            d.feed(c, &mut push);
        }
        d.finish(&mut push);
        out
    }

    #[test]
    fn events_comments_and_line_endings() {
        let body = b"\xEF\xBB\xBF\n\n: keep-alive\r\nevent: a\r\ndata: 1\r\ndata:2\r\n\r\ndata: x\r\rdata: y\n\n";
        let want = vec![
            (Some("a".to_owned()), Some("1\n2".to_owned())),
            (None, Some("x".to_owned())),
            (None, Some("y".to_owned())),
        ];
        assert_eq!(decode(&[body], 1 << 20), want);
        for split in 0..=body.len() {
            let (a, b) = body.split_at(split);
            assert_eq!(decode(&[a, b], 1 << 20), want, "split at {split}");
        }
        let bytes: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(decode(&bytes, 1 << 20), want);
    }

    #[test]
    fn oversized_data_is_dropped_but_the_event_dispatched() {
        let body = b"event: big\ndata: 0123456789\n\nevent: small\ndata: 1\n\n";
        assert_eq!(
            decode(&[body], 12),
            vec![
                (Some("big".to_owned()), None),
                (Some("small".to_owned()), Some("1".to_owned()))
            ]
        );
    }

    #[test]
    fn gap_resyncs_at_the_next_blank_line() {
        let mut d = SseDecoder::new(1024);
        let mut out = Vec::new();
        let mut push = |e: SseEvent<'_>| out.push(e.data.map(<[u8]>::to_vec));
        d.feed(b"data: one\n\ndata: tw", &mut push);
        d.gap();
        d.feed(b"o\"}\n\ndata: three\n\n", &mut push);
        d.finish(&mut push);
        assert_eq!(out, vec![Some(b"one".to_vec()), Some(b"three".to_vec())]);
    }

    #[test]
    fn unterminated_last_event_is_taken_at_a_clean_end() {
        assert_eq!(
            decode(&[b"data: [DONE]"], 64),
            vec![(None, Some("[DONE]".to_owned()))]
        );
    }
}
