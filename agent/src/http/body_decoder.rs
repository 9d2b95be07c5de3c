//! Content codings (gzip, deflate, br, zstd), decoded incrementally and within bounds.
//!
//! Receives: the body bytes of one message after de-chunking, in pieces as they arrive, and
//! gaps. Emits: decoded bytes through a callback as soon as the decompressor can produce them,
//! so a compressed event stream flushed per event (Anthropic's gzip SSE) comes out event by
//! event. Identity bodies pass through without a copy.
//!
//! Bounds: at most `cap` decoded bytes per body (a decompression bomb is cut there and the
//! body marked undecodable); zstd frames with a window above 8 MiB are refused (RFC 9659 lets
//! HTTP decoders do so) and brotli's large-window extension is off, so a decoder's own memory
//! stays within a few MiB. A gap in a compressed body ends decoding: the dictionary state is
//! lost.

use brotli_decompressor::{BrotliDecompressStream, BrotliResult, BrotliState, StandardAlloc};
use flate2::{Decompress, FlushDecompress, Status};
use ruzstd::decoding::FrameDecoder;
use thiserror::Error;

/// Largest zstd window accepted (RFC 9659 §3: decoders may refuse more than 8 MiB).
const MAX_ZSTD_WINDOW: u64 = 8 << 20;

/// A content coding this stage can decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Coding {
    Identity,
    Gzip,
    Deflate,
    Brotli,
    Zstd,
}

#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub(crate) enum DecodeError {
    #[error("unsupported content coding")]
    Unsupported,
    #[error("more than one content coding applied")]
    Stacked,
    #[error("corrupt {0} stream")]
    Corrupt(&'static str),
    #[error("compressed stream ends early")]
    Truncated,
    #[error("bytes missing from a compressed body")]
    Gap,
    #[error("decoded body exceeds {0} bytes")]
    Capped(u64),
    #[error("zstd window of {0} bytes exceeds {MAX_ZSTD_WINDOW}")]
    WindowTooLarge(u64),
}

/// The coding of a body from its `Content-Encoding` values (and any transfer codings other
/// than chunked, which are decoded the same way). Only one non-identity coding is supported.
pub(crate) fn coding_of<'a>(
    values: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Coding, DecodeError> {
    let mut found = Coding::Identity;
    for value in values {
        for token in value.split(|&b| b == b',') {
            let token = trim_ows(token);
            let coding = if token.is_empty() || token.eq_ignore_ascii_case(b"identity") {
                continue;
            } else if token.eq_ignore_ascii_case(b"gzip") || token.eq_ignore_ascii_case(b"x-gzip") {
                Coding::Gzip
            } else if token.eq_ignore_ascii_case(b"deflate") {
                Coding::Deflate
            } else if token.eq_ignore_ascii_case(b"br") {
                Coding::Brotli
            } else if token.eq_ignore_ascii_case(b"zstd") {
                Coding::Zstd
            } else {
                return Err(DecodeError::Unsupported);
            };
            if found != Coding::Identity {
                return Err(DecodeError::Stacked);
            }
            found = coding;
        }
    }
    Ok(found)
}

pub(crate) fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Decodes one body.
pub(crate) struct BodyDecoder {
    inner: Inner,
    /// Decoded bytes handed out (only counted for real codings).
    produced: u64,
    cap: u64,
    saw_input: bool,
}

enum Inner {
    Identity,
    Gzip(Box<Gzip>),
    Deflate(Box<Deflate>),
    Brotli(Box<Brotli>),
    Zstd(Box<Zstd>),
    Failed(DecodeError),
}

impl std::fmt::Debug for BodyDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.inner {
            Inner::Identity => "identity",
            Inner::Gzip(_) => "gzip",
            Inner::Deflate(_) => "deflate",
            Inner::Brotli(_) => "br",
            Inner::Zstd(_) => "zstd",
            Inner::Failed(_) => "failed",
        };
        f.debug_struct("BodyDecoder")
            .field("kind", &kind)
            .field("produced", &self.produced)
            .finish_non_exhaustive()
    }
}

/// The output side shared by every decompressor: counts bytes and enforces the cap.
struct Out<'a> {
    sink: &'a mut dyn FnMut(&[u8]),
    produced: &'a mut u64,
    cap: u64,
}

impl Out<'_> {
    fn put(&mut self, chunk: &[u8]) -> Result<(), DecodeError> {
        if chunk.is_empty() {
            return Ok(());
        }
        let room = self.cap.saturating_sub(*self.produced);
        if chunk.len() as u64 > room {
            let (allowed, _) = chunk.split_at(usize::try_from(room).unwrap_or(0));
            (self.sink)(allowed);
            *self.produced = self.cap;
            return Err(DecodeError::Capped(self.cap));
        }
        (self.sink)(chunk);
        *self.produced += chunk.len() as u64;
        Ok(())
    }
}

impl BodyDecoder {
    /// A decoder for `coding`; an unsupported coding gives a decoder that has already failed.
    pub(crate) fn new(coding: Result<Coding, DecodeError>, cap: u64) -> Self {
        let inner = match coding {
            Ok(Coding::Identity) => Inner::Identity,
            Ok(Coding::Gzip) => Inner::Gzip(Box::new(Gzip::new())),
            Ok(Coding::Deflate) => Inner::Deflate(Box::new(Deflate::Sniff(None))),
            Ok(Coding::Brotli) => Inner::Brotli(Box::new(Brotli::new())),
            Ok(Coding::Zstd) => Inner::Zstd(Box::new(Zstd::new())),
            Err(e) => Inner::Failed(e),
        };
        Self {
            inner,
            produced: 0,
            cap,
            saw_input: false,
        }
    }

    pub(crate) fn is_identity(&self) -> bool {
        matches!(self.inner, Inner::Identity)
    }

    /// Why decoding stopped, if it did.
    pub(crate) fn failure(&self) -> Option<&DecodeError> {
        match &self.inner {
            Inner::Failed(e) => Some(e),
            _ => None,
        }
    }

    /// Decoded bytes produced by a real (non-identity) coding so far.
    pub(crate) fn produced(&self) -> u64 {
        self.produced
    }

    /// Decodes `input`, handing decoded bytes to `sink` (possibly in several pieces). After an
    /// error the decoder stays failed and ignores further input.
    pub(crate) fn push(
        &mut self,
        input: &[u8],
        scratch: &mut [u8],
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<(), DecodeError> {
        if input.is_empty() {
            return self.failure().map_or(Ok(()), |e| Err(e.clone()));
        }
        self.saw_input = true;
        let mut out = Out {
            sink,
            produced: &mut self.produced,
            cap: self.cap,
        };
        let result = match &mut self.inner {
            Inner::Identity => {
                (out.sink)(input);
                Ok(())
            }
            Inner::Gzip(d) => d.push(input, scratch, &mut out),
            Inner::Deflate(d) => d.push(input, scratch, &mut out),
            Inner::Brotli(d) => d.push(input, scratch, &mut out),
            Inner::Zstd(d) => d.push(input, scratch, &mut out),
            Inner::Failed(e) => return Err(e.clone()),
        };
        self.fail_on(result)
    }

    /// Bytes of the body are missing: only an identity body survives that.
    pub(crate) fn gap(&mut self) -> Result<(), DecodeError> {
        match &self.inner {
            Inner::Identity => Ok(()),
            Inner::Failed(e) => Err(e.clone()),
            _ => self.fail_on(Err(DecodeError::Gap)),
        }
    }

    /// The body is complete: flushes what the decompressor still holds and checks that the
    /// compressed stream ended.
    pub(crate) fn finish(
        &mut self,
        scratch: &mut [u8],
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<(), DecodeError> {
        let saw_input = self.saw_input;
        let mut out = Out {
            sink,
            produced: &mut self.produced,
            cap: self.cap,
        };
        let result = match &mut self.inner {
            Inner::Identity => Ok(()),
            // An empty body with a coding header is common (and fine).
            _ if !saw_input => Ok(()),
            Inner::Gzip(d) => d.finish(),
            Inner::Deflate(d) => d.finish(),
            Inner::Brotli(d) => d.finish(),
            Inner::Zstd(d) => d.finish(scratch, &mut out),
            Inner::Failed(e) => return Err(e.clone()),
        };
        self.fail_on(result)
    }

    fn fail_on(&mut self, result: Result<(), DecodeError>) -> Result<(), DecodeError> {
        if let Err(e) = &result {
            // Drops the decompressor's buffers now rather than with the message.
            self.inner = Inner::Failed(e.clone());
        }
        result
    }
}

/// Runs a raw or zlib inflater over `input`; returns the bytes consumed and whether the deflate
/// stream ended.
fn inflate(
    d: &mut Decompress,
    input: &[u8],
    scratch: &mut [u8],
    out: &mut Out<'_>,
) -> Result<(usize, bool), DecodeError> {
    let mut consumed = 0;
    loop {
        let rest = input.get(consumed..).unwrap_or_default();
        let (in_before, out_before) = (d.total_in(), d.total_out());
        let status = d
            .decompress(rest, scratch, FlushDecompress::None)
            .map_err(|_| DecodeError::Corrupt("deflate"))?;
        let used = delta(d.total_in(), in_before).min(rest.len());
        let made = delta(d.total_out(), out_before).min(scratch.len());
        consumed += used;
        out.put(scratch.get(..made).unwrap_or_default())?;
        match status {
            Status::StreamEnd => return Ok((consumed, true)),
            Status::Ok | Status::BufError => {
                // A full output buffer may hide more output even with no input left.
                if (used == 0 && made == 0) || (consumed >= input.len() && made < scratch.len()) {
                    return Ok((consumed, false));
                }
            }
        }
    }
}

fn delta(after: u64, before: u64) -> usize {
    usize::try_from(after.saturating_sub(before)).unwrap_or(usize::MAX)
}

/// gzip (RFC 1952): header parsed here, deflate by flate2, trailer skipped (the CRC would
/// only tell a corrupt capture, and the decoded bytes are what they are). Concatenated
/// members are decoded in turn; bytes after the last member are ignored, as gunzip does.
struct Gzip {
    state: GzState,
    inflater: Decompress,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum GzState {
    /// The fixed 10-byte header; `seen` bytes of it so far, flags once known.
    Fixed {
        seen: u8,
        flags: u8,
    },
    ExtraLen {
        flags: u8,
        low: Option<u8>,
    },
    Extra {
        flags: u8,
        left: u16,
    },
    Name {
        flags: u8,
    },
    Comment {
        flags: u8,
    },
    HeaderCrc {
        flags: u8,
        left: u8,
    },
    Deflate,
    Trailer {
        left: u8,
    },
    /// Between members: another one may follow.
    MemberEnd,
    /// Garbage after the last member.
    Ignoring,
}

const GZ_FHCRC: u8 = 0x02;
const GZ_FEXTRA: u8 = 0x04;
const GZ_FNAME: u8 = 0x08;
const GZ_FCOMMENT: u8 = 0x10;
const GZ_RESERVED: u8 = 0xe0;

impl Gzip {
    fn new() -> Self {
        Self {
            state: GzState::Fixed { seen: 0, flags: 0 },
            inflater: Decompress::new(false),
        }
    }

    fn push(
        &mut self,
        mut input: &[u8],
        scratch: &mut [u8],
        out: &mut Out<'_>,
    ) -> Result<(), DecodeError> {
        while !input.is_empty() {
            if self.state == GzState::Deflate {
                let (used, ended) = inflate(&mut self.inflater, input, scratch, out)?;
                input = input.get(used..).unwrap_or_default();
                if ended {
                    self.state = GzState::Trailer { left: 8 };
                } else if used == 0 {
                    // The inflater wants more input than this piece holds.
                    return Ok(());
                }
                continue;
            }
            if self.state == GzState::Ignoring {
                return Ok(());
            }
            // Header and trailer: byte by byte, they are short (a file name is the longest).
            let Some((&b, rest)) = input.split_first() else {
                break;
            };
            input = rest;
            self.header_byte(b)?;
        }
        Ok(())
    }

    fn header_byte(&mut self, b: u8) -> Result<(), DecodeError> {
        const CORRUPT: DecodeError = DecodeError::Corrupt("gzip");
        self.state = match self.state {
            GzState::Fixed { seen, flags } => {
                let flags = match seen {
                    0 if b != 0x1f => return Err(CORRUPT),
                    1 if b != 0x8b => return Err(CORRUPT),
                    2 if b != 8 => return Err(CORRUPT),
                    3 if b & GZ_RESERVED != 0 => return Err(CORRUPT),
                    3 => b,
                    _ => flags,
                };
                if seen < 9 {
                    GzState::Fixed {
                        seen: seen + 1,
                        flags,
                    }
                } else {
                    Self::next_field(flags, 0)
                }
            }
            GzState::ExtraLen { flags, low: None } => GzState::ExtraLen {
                flags,
                low: Some(b),
            },
            GzState::ExtraLen {
                flags,
                low: Some(low),
            } => match u16::from_le_bytes([low, b]) {
                0 => Self::next_field(flags, 1),
                left => GzState::Extra { flags, left },
            },
            GzState::Extra { flags, left } => match left - 1 {
                0 => Self::next_field(flags, 1),
                left => GzState::Extra { flags, left },
            },
            GzState::Name { flags } if b == 0 => Self::next_field(flags, 2),
            GzState::Comment { flags } if b == 0 => Self::next_field(flags, 3),
            s @ (GzState::Name { .. } | GzState::Comment { .. }) => s,
            GzState::HeaderCrc { left: 1, .. } => GzState::Deflate,
            GzState::HeaderCrc { flags, left } => GzState::HeaderCrc {
                flags,
                left: left - 1,
            },
            GzState::Trailer { left: 1 } => GzState::MemberEnd,
            GzState::Trailer { left } => GzState::Trailer { left: left - 1 },
            GzState::MemberEnd if b == 0x1f => {
                self.inflater.reset(false);
                GzState::Fixed { seen: 1, flags: 0 }
            }
            GzState::MemberEnd | GzState::Ignoring => GzState::Ignoring,
            GzState::Deflate => GzState::Deflate,
        };
        Ok(())
    }

    /// The first optional header field present from field number `from` on (0: extra, 1: name,
    /// 2: comment, 3: header CRC), or the deflate data when none is.
    fn next_field(flags: u8, from: usize) -> GzState {
        let fields = [
            (GZ_FEXTRA, GzState::ExtraLen { flags, low: None }),
            (GZ_FNAME, GzState::Name { flags }),
            (GZ_FCOMMENT, GzState::Comment { flags }),
            (GZ_FHCRC, GzState::HeaderCrc { flags, left: 2 }),
        ];
        fields
            .into_iter()
            .skip(from)
            .find(|(bit, _)| flags & bit != 0)
            .map_or(GzState::Deflate, |(_, s)| s)
    }

    fn finish(&mut self) -> Result<(), DecodeError> {
        match self.state {
            // A missing trailer loses only the checksum.
            GzState::Trailer { .. } | GzState::MemberEnd | GzState::Ignoring => Ok(()),
            _ => Err(DecodeError::Truncated),
        }
    }
}

/// `deflate` is zlib-wrapped per RFC 9110, but servers have long sent raw deflate too: the
/// first two bytes tell (a zlib header is a multiple of 31 with method 8).
enum Deflate {
    Sniff(Option<u8>),
    Stream { inflater: Decompress, ended: bool },
}

impl Deflate {
    fn push(
        &mut self,
        input: &[u8],
        scratch: &mut [u8],
        out: &mut Out<'_>,
    ) -> Result<(), DecodeError> {
        if let Self::Sniff(first) = *self {
            let (a, b) = match (first, input) {
                (Some(a), [b, ..]) => (a, *b),
                (None, [a, b, ..]) => (*a, *b),
                (None, [a]) => {
                    *self = Self::Sniff(Some(*a));
                    return Ok(());
                }
                _ => return Ok(()),
            };
            let zlib = a & 0x0f == 8 && a >> 4 <= 7 && u16::from_be_bytes([a, b]) % 31 == 0;
            let mut inflater = Decompress::new(zlib);
            if let Some(a) = first {
                inflate(&mut inflater, &[a], scratch, out)?;
            }
            *self = Self::Stream {
                inflater,
                ended: false,
            };
        }
        if let Self::Stream { inflater, ended } = self
            && !*ended
        {
            *ended = inflate(inflater, input, scratch, out)?.1;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), DecodeError> {
        match self {
            Self::Stream { ended: true, .. } => Ok(()),
            _ => Err(DecodeError::Truncated),
        }
    }
}

struct Brotli {
    state: BrotliState<StandardAlloc, StandardAlloc, StandardAlloc>,
    total_out: usize,
    ended: bool,
}

impl Brotli {
    fn new() -> Self {
        Self {
            // Strict: no large-window extension, so the ring buffer stays within 16 MiB.
            state: BrotliState::new_strict(StandardAlloc {}, StandardAlloc {}, StandardAlloc {}),
            total_out: 0,
            ended: false,
        }
    }

    fn push(
        &mut self,
        input: &[u8],
        scratch: &mut [u8],
        out: &mut Out<'_>,
    ) -> Result<(), DecodeError> {
        if self.ended {
            return Ok(());
        }
        let mut available_in = input.len();
        let mut input_offset = 0;
        loop {
            let mut available_out = scratch.len();
            let mut output_offset = 0;
            let result = BrotliDecompressStream(
                &mut available_in,
                &mut input_offset,
                input,
                &mut available_out,
                &mut output_offset,
                scratch,
                &mut self.total_out,
                &mut self.state,
            );
            out.put(scratch.get(..output_offset).unwrap_or_default())?;
            match result {
                BrotliResult::NeedsMoreInput => return Ok(()),
                BrotliResult::NeedsMoreOutput => {}
                BrotliResult::ResultSuccess => {
                    self.ended = true;
                    return Ok(());
                }
                BrotliResult::ResultFailure => return Err(DecodeError::Corrupt("br")),
            }
        }
    }

    fn finish(&mut self) -> Result<(), DecodeError> {
        if self.ended {
            Ok(())
        } else {
            Err(DecodeError::Truncated)
        }
    }
}

/// zstd through ruzstd, which decodes whole blocks only: compressed bytes wait in `pending`
/// until a block is complete (a block is at most 128 KiB), and each block is decoded on its
/// own so one call never expands more than a block. ruzstd keeps the last window of decoded
/// bytes until the frame ends, so output of a frame lags its input by up to the window size.
struct Zstd {
    decoder: FrameDecoder,
    pending: Vec<u8>,
    frame: Option<ZstdFrame>,
    /// Bytes of a skippable frame still to skip.
    skip: u64,
}

#[derive(Clone, Copy, Debug)]
struct ZstdFrame {
    checksum: bool,
}

enum ZstdHeader {
    Frame {
        header_len: usize,
        window: u64,
        checksum: bool,
    },
    Skippable {
        len: u64,
    },
}

const ZSTD_MAGIC: u32 = 0xFD2F_B528;
const ZSTD_SKIPPABLE_MAGIC: u32 = 0x184D_2A50;
/// Largest block on the wire (128 KiB of content plus its 3-byte header).
const ZSTD_MAX_BLOCK: u32 = 128 << 10;

impl Zstd {
    fn new() -> Self {
        Self {
            decoder: FrameDecoder::new(),
            pending: Vec::new(),
            frame: None,
            skip: 0,
        }
    }

    fn push(
        &mut self,
        input: &[u8],
        scratch: &mut [u8],
        out: &mut Out<'_>,
    ) -> Result<(), DecodeError> {
        self.pending.extend_from_slice(input);
        let result = self.run(scratch, out);
        if self.pending.capacity() > 4 * (ZSTD_MAX_BLOCK as usize) && self.pending.len() < 1024 {
            self.pending.shrink_to(1024);
        }
        result
    }

    fn run(&mut self, scratch: &mut [u8], out: &mut Out<'_>) -> Result<(), DecodeError> {
        const CORRUPT: DecodeError = DecodeError::Corrupt("zstd");
        let mut at = 0;
        let result = loop {
            let rest = self.pending.get(at..).unwrap_or_default();
            if self.skip > 0 {
                let n = usize::try_from(self.skip).map_or(rest.len(), |s| s.min(rest.len()));
                self.skip -= n as u64;
                at += n;
                if self.skip > 0 {
                    break Ok(());
                }
                continue;
            }
            let Some(frame) = self.frame else {
                if rest.is_empty() {
                    break Ok(());
                }
                match zstd_header(rest) {
                    Err(e) => break Err(e),
                    Ok(None) => break Ok(()),
                    Ok(Some(ZstdHeader::Skippable { len })) => {
                        at += 8;
                        self.skip = len;
                    }
                    Ok(Some(ZstdHeader::Frame {
                        header_len,
                        window,
                        checksum,
                    })) => {
                        if window > MAX_ZSTD_WINDOW {
                            break Err(DecodeError::WindowTooLarge(window));
                        }
                        let header = rest.get(..header_len).unwrap_or_default();
                        if self.decoder.init(header).is_err() {
                            break Err(CORRUPT);
                        }
                        at += header_len;
                        self.frame = Some(ZstdFrame { checksum });
                    }
                }
                continue;
            };
            let [b0, b1, b2, ..] = *rest else {
                break Ok(());
            };
            let header = u32::from_le_bytes([b0, b1, b2, 0]);
            let last = header & 1 == 1;
            let size = header >> 3;
            let content = match (header >> 1) & 3 {
                0 | 2 if size > ZSTD_MAX_BLOCK => break Err(CORRUPT),
                0 | 2 => size as usize,
                1 => 1,
                _ => break Err(CORRUPT),
            };
            let need = 3 + content + if last && frame.checksum { 4 } else { 0 };
            let Some(block) = rest.get(..need) else {
                break Ok(());
            };
            match self.decoder.decode_from_to(block, &mut []) {
                Ok((read, _)) if read == need => {}
                _ => break Err(CORRUPT),
            }
            at += need;
            if let Err(e) = self.drain(scratch, out) {
                break Err(e);
            }
            if last {
                if !self.decoder.is_finished() {
                    break Err(CORRUPT);
                }
                self.frame = None;
            }
        };
        self.pending.drain(..at.min(self.pending.len()));
        result
    }

    fn drain(&mut self, scratch: &mut [u8], out: &mut Out<'_>) -> Result<(), DecodeError> {
        loop {
            let n = std::io::Read::read(&mut self.decoder, scratch)
                .map_err(|_| DecodeError::Corrupt("zstd"))?;
            if n == 0 {
                return Ok(());
            }
            out.put(scratch.get(..n).unwrap_or_default())?;
        }
    }

    fn finish(&mut self, scratch: &mut [u8], out: &mut Out<'_>) -> Result<(), DecodeError> {
        self.drain(scratch, out)?;
        if self.frame.is_some() || !self.pending.is_empty() || self.skip > 0 {
            return Err(DecodeError::Truncated);
        }
        Ok(())
    }
}

/// Parses a zstd frame header far enough to know its length and window, without trusting
/// the decoder to refuse a huge window before allocating it. `None`: more bytes needed.
fn zstd_header(buf: &[u8]) -> Result<Option<ZstdHeader>, DecodeError> {
    const CORRUPT: DecodeError = DecodeError::Corrupt("zstd");
    let Some(&[m0, m1, m2, m3]) = buf.first_chunk::<4>() else {
        return Ok(None);
    };
    let magic = u32::from_le_bytes([m0, m1, m2, m3]);
    if magic & 0xFFFF_FFF0 == ZSTD_SKIPPABLE_MAGIC {
        let Some(&[_, _, _, _, l0, l1, l2, l3]) = buf.first_chunk::<8>() else {
            return Ok(None);
        };
        return Ok(Some(ZstdHeader::Skippable {
            len: u64::from(u32::from_le_bytes([l0, l1, l2, l3])),
        }));
    }
    if magic != ZSTD_MAGIC {
        return Err(CORRUPT);
    }
    let Some(&descriptor) = buf.get(4) else {
        return Ok(None);
    };
    if descriptor & 0x08 != 0 {
        return Err(CORRUPT);
    }
    let single_segment = descriptor & 0x20 != 0;
    let fcs_len = match descriptor >> 6 {
        0 => usize::from(single_segment),
        1 => 2,
        2 => 4,
        _ => 8,
    };
    let dict_len = [0, 1, 2, 4][usize::from(descriptor & 3)];
    let window_len = usize::from(!single_segment);
    let header_len = 5 + window_len + dict_len + fcs_len;
    let Some(header) = buf.get(..header_len) else {
        return Ok(None);
    };
    let window = if single_segment {
        let fcs = header.get(5 + dict_len..).unwrap_or_default();
        let mut le = [0u8; 8];
        le.get_mut(..fcs.len()).ok_or(CORRUPT)?.copy_from_slice(fcs);
        let value = u64::from_le_bytes(le);
        if fcs_len == 2 { value + 256 } else { value }
    } else {
        let wd = header.get(5).copied().ok_or(CORRUPT)?;
        let base = 1u64 << (10 + (wd >> 3));
        base + (base / 8) * u64::from(wd & 7)
    };
    Ok(Some(ZstdHeader::Frame {
        header_len,
        window,
        checksum: descriptor & 0x04 != 0,
    }))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Write;

    use flate2::{
        Compression,
        write::{DeflateEncoder, GzEncoder, ZlibEncoder},
    };

    use super::*;

    /// "XXXXXXXXXXYYYYYYYYYY", brotli-compressed (the `10x10y` vector of the brotli test suite).
    pub(crate) const BROTLI_10X10Y: &[u8] = &[
        0x1b, 0x13, 0x00, 0x00, 0xa4, 0xb0, 0xb2, 0xea, 0x81, 0x47, 0x02, 0x8a,
    ];

    /// A brotli stream of uncompressed meta-blocks, one per piece: the shape a server flushing
    /// per event produces, built by hand (RFC 7932 §9.2) since only a decoder is available.
    pub(crate) fn brotli_stored(pieces: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, piece) in pieces.iter().enumerate() {
            assert!(!piece.is_empty() && piece.len() <= 1 << 16);
            let mlen = (piece.len() - 1) as u32;
            // Bit 0: WBITS=16 (first block only, a single 0 bit); then ISLAST=0, MNIBBLES=0
            // (4 nibbles), MLEN-1 (16 bits), ISUNCOMPRESSED=1; padded to a byte.
            let (bits, n) = if i == 0 {
                (mlen << 4 | 1 << 20, 24)
            } else {
                (mlen << 3 | 1 << 19, 24)
            };
            out.extend_from_slice(&bits.to_le_bytes()[..n / 8]);
            out.extend_from_slice(piece);
        }
        // ISLAST=1, ISLASTEMPTY=1.
        out.push(0x03);
        out
    }

    pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).expect("write to a Vec");
        e.finish().expect("write to a Vec")
    }

    pub(crate) fn zlib(data: &[u8]) -> Vec<u8> {
        let mut e = ZlibEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).expect("write to a Vec");
        e.finish().expect("write to a Vec")
    }

    pub(crate) fn raw_deflate(data: &[u8]) -> Vec<u8> {
        let mut e = DeflateEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).expect("write to a Vec");
        e.finish().expect("write to a Vec")
    }

    pub(crate) fn zstd(data: &[u8]) -> Vec<u8> {
        ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
    }

    /// gzip flushed after every piece (Z_SYNC_FLUSH), as a streaming server sends it: returns
    /// the wire bytes written after each piece, then the finishing bytes.
    pub(crate) fn gzip_flushed(pieces: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        let mut out = Vec::new();
        let mut sent = 0;
        for piece in pieces {
            e.write_all(piece).expect("write to a Vec");
            e.flush().expect("flush to a Vec");
            let all = e.get_ref();
            out.push(all[sent..].to_vec());
            sent = all.len();
        }
        let all = e.finish().expect("write to a Vec");
        out.push(all[sent..].to_vec());
        out
    }

    fn decode_in_pieces(
        coding: Coding,
        wire: &[u8],
        piece: usize,
        cap: u64,
    ) -> (Vec<u8>, Result<(), DecodeError>) {
        let mut d = BodyDecoder::new(Ok(coding), cap);
        let mut scratch = vec![0u8; 4096];
        let mut out = Vec::new();
        for part in wire.chunks(piece.max(1)) {
            if let Err(e) = d.push(part, &mut scratch, &mut |s| out.extend_from_slice(s)) {
                return (out, Err(e));
            }
        }
        let r = d.finish(&mut scratch, &mut |s| out.extend_from_slice(s));
        (out, r)
    }

    fn sample() -> Vec<u8> {
        let mut s = Vec::new();
        for i in 0..2000 {
            s.extend_from_slice(
                format!("data: {{\"index\":{i},\"text\":\"hello\"}}\n\n").as_bytes(),
            );
        }
        s
    }

    #[test]
    fn every_coding_round_trips_at_several_piece_sizes() {
        let plain = sample();
        let cases: Vec<(Coding, Vec<u8>, Vec<u8>)> = vec![
            (Coding::Gzip, gzip(&plain), plain.clone()),
            (Coding::Deflate, zlib(&plain), plain.clone()),
            (Coding::Deflate, raw_deflate(&plain), plain.clone()),
            (Coding::Zstd, zstd(&plain), plain.clone()),
            (
                Coding::Brotli,
                BROTLI_10X10Y.to_vec(),
                b"XXXXXXXXXXYYYYYYYYYY".to_vec(),
            ),
            (
                Coding::Brotli,
                brotli_stored(&[b"hello ", b"brotli"]),
                b"hello brotli".to_vec(),
            ),
            (Coding::Identity, plain.clone(), plain.clone()),
        ];
        for (coding, wire, expect) in &cases {
            for piece in [1, 2, 3, 7, 100, 4096, usize::MAX] {
                let (out, r) = decode_in_pieces(*coding, wire, piece, u64::MAX);
                assert_eq!(r, Ok(()), "{coding:?} piece {piece}");
                assert!(out == *expect, "{coding:?} piece {piece}: output differs");
            }
        }
    }

    #[test]
    fn gzip_with_optional_header_fields_and_two_members() {
        // FLG = FEXTRA | FNAME | FCOMMENT | FHCRC, built around a raw deflate stream.
        let mut wire = vec![0x1f, 0x8b, 8, 0x1e, 0, 0, 0, 0, 0, 3];
        wire.extend_from_slice(&[3, 0, b'a', b'b', b'c']);
        wire.extend_from_slice(b"name\0comment\0");
        wire.extend_from_slice(&[0xaa, 0xbb]);
        wire.extend_from_slice(&raw_deflate(b"first "));
        wire.extend_from_slice(&[0; 8]);
        wire.extend_from_slice(&gzip(b"second"));
        wire.extend_from_slice(b"trailing junk");
        for piece in [1, 5, 1000] {
            let (out, r) = decode_in_pieces(Coding::Gzip, &wire, piece, u64::MAX);
            assert_eq!(r, Ok(()));
            assert_eq!(out, b"first second");
        }
    }

    #[test]
    fn gzip_flushed_pieces_come_out_as_they_arrive() {
        let events: [&[u8]; 3] = [
            b"event: message_start\ndata: {}\n\n",
            b"event: content_block_delta\ndata: {\"text\":\"Hi\"}\n\n",
            b"event: message_stop\ndata: {}\n\n",
        ];
        let wire = gzip_flushed(&events);
        let mut d = BodyDecoder::new(Ok(Coding::Gzip), u64::MAX);
        let mut scratch = vec![0u8; 4096];
        for (i, event) in events.iter().enumerate() {
            let mut out = Vec::new();
            d.push(&wire[i], &mut scratch, &mut |s| out.extend_from_slice(s))
                .expect("valid gzip");
            assert_eq!(out, *event, "event {i} must come out with its own flush");
        }
        let mut out = Vec::new();
        d.push(&wire[3], &mut scratch, &mut |s| out.extend_from_slice(s))
            .expect("valid gzip");
        d.finish(&mut scratch, &mut |s| out.extend_from_slice(s))
            .expect("complete gzip");
        assert!(out.is_empty());
    }

    #[test]
    fn bombs_are_capped() {
        let zeros = vec![0u8; 10 << 20];
        for (coding, wire) in [
            (Coding::Gzip, gzip(&zeros)),
            (Coding::Deflate, zlib(&zeros)),
            (Coding::Zstd, zstd(&zeros)),
        ] {
            assert!(wire.len() < 100 << 10, "{coding:?} compresses zeros well");
            let (out, r) = decode_in_pieces(coding, &wire, 1 << 20, 1 << 20);
            assert_eq!(r, Err(DecodeError::Capped(1 << 20)), "{coding:?}");
            assert_eq!(out.len(), 1 << 20, "{coding:?} emits exactly up to the cap");
        }
    }

    #[test]
    fn corrupt_truncated_and_gapped_streams_fail_cleanly() {
        let g = gzip(b"hello hello hello");
        let (_, r) = decode_in_pieces(Coding::Gzip, &g[..g.len() - 12], 3, u64::MAX);
        assert_eq!(r, Err(DecodeError::Truncated));
        let (_, r) = decode_in_pieces(Coding::Gzip, b"not gzip at all", 3, u64::MAX);
        assert_eq!(r, Err(DecodeError::Corrupt("gzip")));
        let (_, r) = decode_in_pieces(Coding::Zstd, b"not zstd at all", 3, u64::MAX);
        assert_eq!(r, Err(DecodeError::Corrupt("zstd")));
        let (_, r) = decode_in_pieces(Coding::Brotli, &[0xff; 64], 3, u64::MAX);
        assert!(r.is_err());
        let mut d = BodyDecoder::new(Ok(Coding::Gzip), u64::MAX);
        assert_eq!(d.gap(), Err(DecodeError::Gap));
        assert_eq!(d.failure(), Some(&DecodeError::Gap));
        let mut d = BodyDecoder::new(Ok(Coding::Identity), u64::MAX);
        assert_eq!(d.gap(), Ok(()));
        // A window descriptor asking for 2 GiB is refused before anything is allocated.
        let mut huge = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, 0xa8];
        huge.extend_from_slice(&[0; 16]);
        let (_, r) = decode_in_pieces(Coding::Zstd, &huge, 100, u64::MAX);
        assert_eq!(r, Err(DecodeError::WindowTooLarge(1 << 31)));
    }

    #[test]
    fn random_input_never_panics() {
        let mut x: u64 = 0x1234_5678_9abc_def0;
        for round in 0..300 {
            let len = (round * 7) % 600;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            for coding in [Coding::Gzip, Coding::Deflate, Coding::Brotli, Coding::Zstd] {
                let _ = decode_in_pieces(coding, &bytes, 1 + round % 13, 1 << 16);
            }
        }
    }

    #[test]
    fn codings_from_headers() {
        let ok = |v: &[&[u8]]| coding_of(v.iter().copied());
        assert_eq!(ok(&[]), Ok(Coding::Identity));
        assert_eq!(ok(&[b"identity"]), Ok(Coding::Identity));
        assert_eq!(ok(&[b" GZIP "]), Ok(Coding::Gzip));
        assert_eq!(ok(&[b"x-gzip"]), Ok(Coding::Gzip));
        assert_eq!(ok(&[b"deflate"]), Ok(Coding::Deflate));
        assert_eq!(ok(&[b"br"]), Ok(Coding::Brotli));
        assert_eq!(ok(&[b"zstd"]), Ok(Coding::Zstd));
        assert_eq!(ok(&[b"identity, br"]), Ok(Coding::Brotli));
        assert_eq!(ok(&[b"gzip", b"br"]), Err(DecodeError::Stacked));
        assert_eq!(ok(&[b"compress"]), Err(DecodeError::Unsupported));
    }
}
