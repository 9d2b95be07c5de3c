//! The chunked transfer coding (RFC 9112 §7.1), decoded incrementally.
//!
//! Receives: the wire bytes of one chunked body in pieces of any size, and gaps. Emits: the
//! chunk data as slices of the input (never copied), and where the body ends: after the last
//! chunk and its trailer section. Chunk extensions and trailer fields are skipped, never
//! buffered: the size line is parsed a byte at a time, so a peer cannot make the decoder hold
//! anything, and both are bounded so a stream that never ends its size line fails quickly.

use thiserror::Error;

/// Longest chunk extension tolerated on one size line.
const MAX_EXTENSION: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub(crate) enum ChunkedError {
    #[error("chunk size is not a hexadecimal number")]
    BadSize,
    #[error("chunk size does not fit in 64 bits")]
    SizeOverflow,
    #[error("chunk extension longer than {MAX_EXTENSION} bytes")]
    ExtensionTooLong,
    #[error("chunk data not followed by CRLF")]
    MissingCrlf,
    #[error("trailer section longer than {0} bytes")]
    TrailersTooLong(usize),
    #[error("a gap crosses a chunk boundary")]
    GapAcrossBoundary,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Hex digits of a chunk size.
    Size {
        value: u64,
        digits: u8,
    },
    /// After the digits: whitespace, then `;extension` or the line end.
    AfterSize {
        value: u64,
    },
    /// Inside chunk extensions, skipped to the end of the line.
    Extension {
        value: u64,
        len: usize,
    },
    /// Saw the CR ending a size line.
    SizeLf {
        value: u64,
    },
    Data {
        remaining: u64,
    },
    DataCr,
    DataLf,
    /// At the start of a trailer field line, or of the empty line ending the body.
    TrailerLineStart,
    /// Saw CR at the start of a trailer line.
    TrailerLineCr,
    /// Inside a trailer field line.
    TrailerLine,
    Done,
}

/// What one [`ChunkedDecoder::feed`] call did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Fed {
    /// Input bytes that belong to this body (all of them unless it ended or failed).
    pub(crate) consumed: usize,
    /// `Ok(true)` when the body ended; on error the framing is lost at `consumed`.
    pub(crate) outcome: Result<bool, ChunkedError>,
}

#[derive(Debug)]
pub(crate) struct ChunkedDecoder {
    state: State,
    trailer_len: usize,
    max_trailer: usize,
}

impl ChunkedDecoder {
    /// `max_trailer` bounds the trailer section (the same bound as a head).
    pub(crate) fn new(max_trailer: usize) -> Self {
        Self {
            state: State::Size {
                value: 0,
                digits: 0,
            },
            trailer_len: 0,
            max_trailer,
        }
    }

    /// Decodes from `input`, handing chunk data to `on_data`. Stops at the end of the input,
    /// at the end of the body, or at a syntax error.
    pub(crate) fn feed<'a>(&mut self, input: &'a [u8], on_data: &mut dyn FnMut(&'a [u8])) -> Fed {
        let mut i = 0;
        while let Some(rest) = input.get(i..).filter(|r| !r.is_empty()) {
            if self.state == State::Done {
                break;
            }
            if let State::Data { remaining } = self.state {
                let take = usize::try_from(remaining).map_or(rest.len(), |r| r.min(rest.len()));
                let (data, _) = rest.split_at(take);
                on_data(data);
                i += take;
                let remaining = remaining - take as u64;
                self.state = if remaining == 0 {
                    State::DataCr
                } else {
                    State::Data { remaining }
                };
                continue;
            }
            let Some(&b) = rest.first() else { break };
            i += 1;
            if let Err(e) = self.step(b) {
                return Fed {
                    consumed: i - 1,
                    outcome: Err(e),
                };
            }
        }
        Fed {
            consumed: i,
            outcome: Ok(self.state == State::Done),
        }
    }

    /// `len` body bytes are missing. Fine inside one chunk's data; anything else loses framing.
    pub(crate) fn gap(&mut self, len: u64) -> Result<(), ChunkedError> {
        match self.state {
            _ if len == 0 => Ok(()),
            State::Data { remaining } if len <= remaining => {
                let remaining = remaining - len;
                self.state = if remaining == 0 {
                    State::DataCr
                } else {
                    State::Data { remaining }
                };
                Ok(())
            }
            _ => Err(ChunkedError::GapAcrossBoundary),
        }
    }

    /// Whether the decoder is in the trailer section (all chunk data has been seen).
    pub(crate) fn in_trailers(&self) -> bool {
        matches!(
            self.state,
            State::TrailerLineStart | State::TrailerLineCr | State::TrailerLine
        )
    }

    fn step(&mut self, b: u8) -> Result<(), ChunkedError> {
        self.state = match self.state {
            State::Size { value, digits } => match hex_value(b) {
                Some(d) => {
                    // 16 hex digits fill 64 bits; leading zeros beyond that are still fine.
                    if value >> 60 != 0 {
                        return Err(ChunkedError::SizeOverflow);
                    }
                    State::Size {
                        value: value << 4 | u64::from(d),
                        digits: digits.saturating_add(1),
                    }
                }
                None if digits == 0 => return Err(ChunkedError::BadSize),
                None => {
                    self.state = State::AfterSize { value };
                    return self.step(b);
                }
            },
            State::AfterSize { value } => match b {
                b' ' | b'\t' => State::AfterSize { value },
                b';' => State::Extension { value, len: 0 },
                b'\r' => State::SizeLf { value },
                b'\n' => Self::size_line_done(value),
                _ => return Err(ChunkedError::BadSize),
            },
            State::Extension { value, len } => match b {
                b'\n' => Self::size_line_done(value),
                _ if len >= MAX_EXTENSION => return Err(ChunkedError::ExtensionTooLong),
                _ => State::Extension {
                    value,
                    len: len + 1,
                },
            },
            State::SizeLf { value } => match b {
                b'\n' => Self::size_line_done(value),
                _ => return Err(ChunkedError::BadSize),
            },
            State::DataCr => match b {
                b'\r' => State::DataLf,
                // A bare LF is tolerated, as most parsers do.
                b'\n' => State::Size {
                    value: 0,
                    digits: 0,
                },
                _ => return Err(ChunkedError::MissingCrlf),
            },
            State::DataLf => match b {
                b'\n' => State::Size {
                    value: 0,
                    digits: 0,
                },
                _ => return Err(ChunkedError::MissingCrlf),
            },
            State::TrailerLineStart => match b {
                b'\n' => State::Done,
                b'\r' => State::TrailerLineCr,
                _ => self.trailer_byte(b)?,
            },
            State::TrailerLineCr => match b {
                b'\n' => State::Done,
                _ => self.trailer_byte(b)?,
            },
            State::TrailerLine => self.trailer_byte(b)?,
            // Data and Done are handled by the caller.
            s @ (State::Data { .. } | State::Done) => s,
        };
        Ok(())
    }

    fn size_line_done(value: u64) -> State {
        if value == 0 {
            State::TrailerLineStart
        } else {
            State::Data { remaining: value }
        }
    }

    fn trailer_byte(&mut self, b: u8) -> Result<State, ChunkedError> {
        self.trailer_len += 1;
        if self.trailer_len > self.max_trailer {
            return Err(ChunkedError::TrailersTooLong(self.max_trailer));
        }
        Ok(if b == b'\n' {
            State::TrailerLineStart
        } else {
            State::TrailerLine
        })
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `piece` bytes; returns the data and the bytes consumed in all.
    fn decode(input: &[u8], piece: usize) -> (Vec<u8>, usize, Result<bool, ChunkedError>) {
        let mut d = ChunkedDecoder::new(1024);
        let mut data = Vec::new();
        let mut consumed = 0;
        for part in input.chunks(piece.max(1)) {
            let fed = d.feed(part, &mut |s| data.extend_from_slice(s));
            consumed += fed.consumed;
            match fed.outcome {
                Ok(true) => return (data, consumed, Ok(true)),
                Ok(false) => {}
                Err(e) => return (data, consumed, Err(e)),
            }
        }
        (data, consumed, Ok(false))
    }

    #[test]
    fn golden_bodies_at_every_piece_size() {
        struct Case {
            wire: &'static [u8],
            data: &'static [u8],
            /// Bytes of `wire` that belong to the body (the rest is the next message).
            body_len: usize,
        }
        let cases = [
            Case {
                wire: b"5\r\nhello\r\n0\r\n\r\n",
                data: b"hello",
                body_len: 15,
            },
            Case {
                wire: b"5;name=\"v;x\"\r\nhello\r\n6 ; ext\r\n world\r\n0\r\nX-Trailer: 1\r\nY: 2\r\n\r\nHTTP/1.1",
                data: b"hello world",
                body_len: 63,
            },
            Case {
                wire: b"A\r\n0123456789\r\n00\r\n\r\n",
                data: b"0123456789",
                body_len: 21,
            },
            Case {
                wire: b"3\n abc\n0\n\n",
                data: b" ab",
                body_len: 0,
            },
            Case {
                wire: b"0000000000000000003\r\nabc\r\n0\r\n\r\n",
                data: b"abc",
                body_len: 31,
            },
        ];
        for case in cases.iter().filter(|c| c.body_len > 0) {
            for piece in 1..=case.wire.len() {
                let (data, consumed, outcome) = decode(case.wire, piece);
                assert_eq!(outcome, Ok(true), "piece {piece}");
                assert_eq!(data, case.data, "piece {piece}");
                assert_eq!(consumed, case.body_len, "piece {piece}");
            }
        }
        // Bare LFs are tolerated, but "3\n abc" has 3 bytes of data " ab" and then "c" where
        // the CRLF should be.
        let (_, _, outcome) = decode(cases[3].wire, 100);
        assert_eq!(outcome, Err(ChunkedError::MissingCrlf));
    }

    #[test]
    fn bad_sizes_fail_without_panicking() {
        for (wire, err) in [
            (&b"x\r\n"[..], ChunkedError::BadSize),
            (b"\r\n", ChunkedError::BadSize),
            (b"-1\r\n", ChunkedError::BadSize),
            (b"5 x\r\n", ChunkedError::BadSize),
            (b"10000000000000000\r\n", ChunkedError::SizeOverflow),
            (b"5\rx", ChunkedError::BadSize),
            (b"1\r\nab", ChunkedError::MissingCrlf),
        ] {
            assert_eq!(decode(wire, 1).2, Err(err), "{wire:?}");
            assert_eq!(decode(wire, 64).2, Err(err), "{wire:?}");
        }
        let mut long_ext = b"1;".to_vec();
        long_ext.extend(std::iter::repeat_n(b'a', MAX_EXTENSION + 1));
        assert_eq!(decode(&long_ext, 7).2, Err(ChunkedError::ExtensionTooLong));
        let mut long_trailer = b"0\r\n".to_vec();
        long_trailer.extend(std::iter::repeat_n(b'a', 2000));
        assert_eq!(
            decode(&long_trailer, 7).2,
            Err(ChunkedError::TrailersTooLong(1024))
        );
    }

    #[test]
    fn huge_chunk_sizes_are_counted_not_allocated() {
        let mut d = ChunkedDecoder::new(1024);
        let fed = d.feed(b"ffffffffffffffff\r\nab", &mut |_| {});
        assert_eq!(fed.outcome, Ok(false));
        assert_eq!(d.gap(u64::MAX - 2), Ok(()));
        assert_eq!(d.gap(1), Err(ChunkedError::GapAcrossBoundary));
    }

    #[test]
    fn gaps_inside_one_chunk_keep_framing() {
        let mut d = ChunkedDecoder::new(1024);
        let mut data = Vec::new();
        d.feed(b"a\r\n01", &mut |s| data.extend_from_slice(s));
        assert_eq!(d.gap(6), Ok(()));
        let fed = d.feed(b"89\r\n0\r\n\r\n", &mut |s| data.extend_from_slice(s));
        assert_eq!(fed.outcome, Ok(true));
        assert_eq!(data, b"0189");
        // A gap that ends exactly at the end of a chunk's data is still inside it.
        let mut d = ChunkedDecoder::new(1024);
        d.feed(b"4\r\nab", &mut |_| {});
        assert_eq!(d.gap(2), Ok(()));
        assert_eq!(d.feed(b"\r\n0\r\n\r\n", &mut |_| {}).outcome, Ok(true));
        // Across the CRLF: framing is lost.
        let mut d = ChunkedDecoder::new(1024);
        d.feed(b"4\r\nab", &mut |_| {});
        assert_eq!(d.gap(3), Err(ChunkedError::GapAcrossBoundary));
        assert!(!d.in_trailers());
    }
}
