//! HTTP/2 framing (RFC 9113 §4) for one direction of a connection.
//!
//! Receives: the direction's bytes after the connection preface, in pieces split anywhere,
//! and gaps. Emits, to a [`FrameSink`]: DATA payloads streamed as they arrive (padding
//! removed, never buffered), with gaps inside them reported in place; other frames whole
//! once their payload is complete (header-block frames and SETTINGS; other types only by
//! their header, the payload skipped unread); and a loss of framing.
//!
//! Bounds: a frame longer than the receiver's advertised SETTINGS_MAX_FRAME_SIZE is a
//! protocol error; a header-block frame is buffered up to [`MAX_BUFFERED_FRAME`], SETTINGS
//! up to [`MAX_SETTINGS_FRAME`] (longer ones are skipped, counted by the caller).
//!
//! Gaps: a gap inside a DATA frame's data is survivable (the frame header gave its length);
//! a gap covering a frame header, a DATA padding length, or a buffered frame's payload loses
//! the framing (or the HPACK state) for good: the decoder reports it once and stops.

/// Frame types (RFC 9113 §6).
pub(crate) const DATA: u8 = 0x0;
pub(crate) const HEADERS: u8 = 0x1;
pub(crate) const RST_STREAM: u8 = 0x3;
pub(crate) const SETTINGS: u8 = 0x4;
pub(crate) const PUSH_PROMISE: u8 = 0x5;
pub(crate) const CONTINUATION: u8 = 0x9;

/// Flags.
pub(crate) const END_STREAM: u8 = 0x1;
pub(crate) const ACK: u8 = 0x1;
pub(crate) const END_HEADERS: u8 = 0x4;
pub(crate) const PADDED: u8 = 0x8;
pub(crate) const PRIORITY_FLAG: u8 = 0x20;

const HEADER_LEN: usize = 9;
/// SETTINGS_MAX_FRAME_SIZE before the receiver says otherwise (§6.5.2).
pub(crate) const DEFAULT_MAX_FRAME_SIZE: u32 = 1 << 14;
/// The largest SETTINGS_MAX_FRAME_SIZE allowed (§6.5.2).
const MAX_MAX_FRAME_SIZE: u32 = (1 << 24) - 1;
/// Longest header-block frame (HEADERS, PUSH_PROMISE, CONTINUATION) buffered.
pub(crate) const MAX_BUFFERED_FRAME: u32 = 256 << 10;
/// Longest SETTINGS frame parsed (a few dozen bytes in practice).
const MAX_SETTINGS_FRAME: u32 = 1 << 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    pub(crate) len: u32,
    pub(crate) kind: u8,
    pub(crate) flags: u8,
    pub(crate) stream: u32,
    /// Capture time of the record holding the header's first byte.
    pub(crate) start_ktime: u64,
}

impl FrameHeader {
    pub(crate) fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

/// Why a direction's framing was lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FramingLost {
    #[error("bytes missing where a frame header or a buffered payload was")]
    Gap,
    #[error("frame longer than the receiver's maximum frame size")]
    FrameTooLarge,
    #[error("header block frame longer than the buffering limit")]
    HeaderBlockTooLarge,
    #[error("padding longer than the frame")]
    BadPadding,
}

/// What the decoder reports.
pub(crate) trait FrameSink {
    /// A complete frame other than DATA. `payload` is empty when it was not read (types
    /// whose payload is not needed, or a SETTINGS frame too long to parse: `skipped`).
    fn frame(&mut self, header: &FrameHeader, payload: &[u8], skipped: bool, ktime: u64);
    /// Bytes of a DATA frame's data, in order.
    fn data(&mut self, header: &FrameHeader, data: &[u8], ktime: u64);
    /// `len` bytes of a DATA frame's data are missing.
    fn data_gap(&mut self, header: &FrameHeader, len: u64);
    /// A DATA frame ended; `ktime` is the capture time of its last byte (or of the latest
    /// record when its end was in a gap).
    fn data_end(&mut self, header: &FrameHeader, ktime: u64);
    /// The framing is lost: nothing more will be reported.
    fn lost(&mut self, why: FramingLost);
}

#[derive(Debug)]
enum State {
    Header,
    /// A padded DATA frame's padding length is next.
    DataPadLen(FrameHeader),
    Data {
        header: FrameHeader,
        data_left: u32,
        pad_left: u32,
    },
    Buffer(FrameHeader),
    Skip {
        header: FrameHeader,
        left: u32,
    },
    Lost,
}

/// One direction's frame decoder.
#[derive(Debug)]
pub(crate) struct FrameDecoder {
    state: State,
    head: [u8; HEADER_LEN],
    head_len: usize,
    head_ktime: u64,
    payload: Vec<u8>,
    /// The largest SETTINGS_MAX_FRAME_SIZE the receiver advertised.
    max_frame_size: u32,
    last_ktime: u64,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self {
            state: State::Header,
            head: [0; HEADER_LEN],
            head_len: 0,
            head_ktime: 0,
            payload: Vec::new(),
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            last_ktime: 0,
        }
    }
}

impl FrameDecoder {
    /// The receiver advertised SETTINGS_MAX_FRAME_SIZE `size`. The largest value seen is
    /// used: the observer cannot tell when the sender applied a change.
    pub(crate) fn allow_frame_size(&mut self, size: u32) {
        self.max_frame_size = self.max_frame_size.max(size.min(MAX_MAX_FRAME_SIZE));
    }

    #[cfg(test)]
    fn is_lost(&self) -> bool {
        matches!(self.state, State::Lost)
    }

    /// Whether the decoder sits between frames.
    #[cfg(test)]
    fn at_frame_boundary(&self) -> bool {
        matches!(self.state, State::Header) && self.head_len == 0
    }

    pub(crate) fn data(&mut self, mut input: &[u8], ktime: u64, sink: &mut dyn FrameSink) {
        self.last_ktime = ktime;
        while !input.is_empty() {
            let used = match &mut self.state {
                State::Lost => return,
                State::Header => self.on_header(input, ktime, sink),
                State::DataPadLen(header) => {
                    let header = *header;
                    let pad = u32::from(input[0]);
                    if pad >= header.len {
                        self.lose(FramingLost::BadPadding, sink);
                        return;
                    }
                    self.state = State::Data {
                        header,
                        data_left: header.len - 1 - pad,
                        pad_left: pad,
                    };
                    self.after_data_progress(ktime, sink);
                    1
                }
                State::Data {
                    header,
                    data_left,
                    pad_left,
                } => {
                    let header = *header;
                    let n = input.len().min(*data_left as usize);
                    let rest = input.len() - n;
                    let pad = rest.min(*pad_left as usize);
                    *data_left -= n as u32;
                    *pad_left -= pad as u32;
                    if n > 0 {
                        sink.data(&header, &input[..n], ktime);
                    }
                    self.after_data_progress(ktime, sink);
                    n + pad
                }
                State::Buffer(header) => {
                    let header = *header;
                    let want = header.len as usize - self.payload.len();
                    let n = want.min(input.len());
                    self.payload.extend_from_slice(&input[..n]);
                    if self.payload.len() == header.len as usize {
                        sink.frame(&header, &self.payload, false, ktime);
                        self.payload.clear();
                        self.state = State::Header;
                    }
                    n
                }
                State::Skip { header, left } => {
                    let n = input.len().min(*left as usize);
                    *left -= n as u32;
                    if *left == 0 {
                        let header = *header;
                        let skipped = header.kind == SETTINGS;
                        sink.frame(&header, &[], skipped, ktime);
                        self.state = State::Header;
                    }
                    n
                }
            };
            input = &input[used..];
        }
    }

    /// `len` bytes at the current position are missing.
    pub(crate) fn gap(&mut self, len: u64, sink: &mut dyn FrameSink) {
        if len == 0 {
            return;
        }
        match &mut self.state {
            State::Lost => {}
            State::Header | State::DataPadLen(_) | State::Buffer(_) => {
                self.lose(FramingLost::Gap, sink);
            }
            State::Data {
                header,
                data_left,
                pad_left,
            } => {
                let header = *header;
                let in_data = len.min(u64::from(*data_left));
                let in_pad = (len - in_data).min(u64::from(*pad_left));
                *data_left -= in_data as u32;
                *pad_left -= in_pad as u32;
                if in_data > 0 {
                    sink.data_gap(&header, in_data);
                }
                let ktime = self.last_ktime;
                self.after_data_progress(ktime, sink);
                if len > in_data + in_pad {
                    self.lose(FramingLost::Gap, sink);
                }
            }
            State::Skip { header, left } => {
                if len < u64::from(*left) {
                    *left -= len as u32;
                } else if len == u64::from(*left) && header.kind != SETTINGS {
                    let header = *header;
                    sink.frame(&header, &[], false, self.last_ktime);
                    self.state = State::Header;
                } else {
                    self.lose(FramingLost::Gap, sink);
                }
            }
        }
    }

    fn lose(&mut self, why: FramingLost, sink: &mut dyn FrameSink) {
        self.state = State::Lost;
        self.payload = Vec::new();
        sink.lost(why);
    }

    /// Ends the DATA frame when nothing of it is left.
    fn after_data_progress(&mut self, ktime: u64, sink: &mut dyn FrameSink) {
        if let State::Data {
            header,
            data_left: 0,
            pad_left: 0,
        } = self.state
        {
            sink.data_end(&header, ktime);
            self.state = State::Header;
        }
    }

    fn on_header(&mut self, input: &[u8], ktime: u64, sink: &mut dyn FrameSink) -> usize {
        if self.head_len == 0 {
            self.head_ktime = ktime;
        }
        let n = (HEADER_LEN - self.head_len).min(input.len());
        self.head[self.head_len..self.head_len + n].copy_from_slice(&input[..n]);
        self.head_len += n;
        if self.head_len < HEADER_LEN {
            return n;
        }
        self.head_len = 0;
        let h = &self.head;
        let header = FrameHeader {
            len: u32::from_be_bytes([0, h[0], h[1], h[2]]),
            kind: h[3],
            flags: h[4],
            stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
            start_ktime: self.head_ktime,
        };
        if header.len > self.max_frame_size {
            self.lose(FramingLost::FrameTooLarge, sink);
            return n;
        }
        self.state = match header.kind {
            DATA if header.has(PADDED) => {
                if header.len == 0 {
                    self.lose(FramingLost::BadPadding, sink);
                    return n;
                }
                State::DataPadLen(header)
            }
            DATA => State::Data {
                header,
                data_left: header.len,
                pad_left: 0,
            },
            HEADERS | PUSH_PROMISE | CONTINUATION => {
                if header.len > MAX_BUFFERED_FRAME {
                    self.lose(FramingLost::HeaderBlockTooLarge, sink);
                    return n;
                }
                State::Buffer(header)
            }
            SETTINGS if header.len <= MAX_SETTINGS_FRAME => State::Buffer(header),
            _ => State::Skip {
                header,
                left: header.len,
            },
        };
        // Frames with nothing to read end here.
        match self.state {
            State::Buffer(h) if h.len == 0 => {
                sink.frame(&h, &[], false, ktime);
                self.state = State::Header;
            }
            State::Skip { header: h, left: 0 } => {
                sink.frame(&h, &[], false, ktime);
                self.state = State::Header;
            }
            _ => self.after_data_progress(ktime, sink),
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRIORITY: u8 = 0x2;
    const PING: u8 = 0x6;
    const GOAWAY: u8 = 0x7;
    const WINDOW_UPDATE: u8 = 0x8;

    #[derive(Default)]
    struct Log(Vec<String>);

    impl FrameSink for Log {
        fn frame(&mut self, h: &FrameHeader, payload: &[u8], skipped: bool, _: u64) {
            self.0.push(format!(
                "frame t{} f{:#x} s{} {:?}{}",
                h.kind,
                h.flags,
                h.stream,
                payload,
                if skipped { " skipped" } else { "" }
            ));
        }
        fn data(&mut self, h: &FrameHeader, data: &[u8], _: u64) {
            // Merged with the previous piece so every split renders the same.
            if let Some(last) = self.0.last_mut()
                && let Some(prefix) = last.strip_prefix(&format!("data s{} ", h.stream))
            {
                *last = format!(
                    "data s{} {prefix}{}",
                    h.stream,
                    String::from_utf8_lossy(data)
                );
                return;
            }
            self.0.push(format!(
                "data s{} {}",
                h.stream,
                String::from_utf8_lossy(data)
            ));
        }
        fn data_gap(&mut self, h: &FrameHeader, len: u64) {
            self.0.push(format!("gap s{} {len}", h.stream));
        }
        fn data_end(&mut self, h: &FrameHeader, _: u64) {
            self.0.push(format!("end s{} f{:#x}", h.stream, h.flags));
        }
        fn lost(&mut self, why: FramingLost) {
            self.0.push(format!("lost {why:?}"));
        }
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = len.to_be_bytes()[1..].to_vec();
        f.push(kind);
        f.push(flags);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn run(input: &[u8], gap_at: Option<(usize, u64)>, split: &[usize]) -> Vec<String> {
        let mut d = FrameDecoder::default();
        let mut log = Log::default();
        let mut pieces = Vec::new();
        let mut from = 0;
        for &at in split {
            pieces.push(&input[from..at]);
            from = at;
        }
        pieces.push(&input[from..]);
        let mut pos = 0;
        for piece in pieces {
            if let Some((at, len)) = gap_at
                && at == pos
            {
                d.gap(len, &mut log);
            }
            d.data(piece, 1, &mut log);
            pos += piece.len();
        }
        log.0
    }

    fn sample() -> Vec<u8> {
        [
            frame(SETTINGS, 0, 0, &[0, 1, 0, 0, 0x10, 0]),
            frame(WINDOW_UPDATE, 0, 0, &[0, 0, 0, 100]),
            frame(HEADERS, END_HEADERS | PADDED, 1, &[2, 0x82, 0, 0]),
            frame(0xfa, 0, 0, b"unknown"),
            frame(DATA, PADDED | END_STREAM, 1, &[3, b'h', b'i', 0, 0, 0]),
            frame(DATA, 0, 3, b"hello"),
            frame(PING, 0, 0, &[0; 8]),
            frame(PRIORITY, 0, 3, &[0, 0, 0, 1, 16]),
            frame(GOAWAY, 0, 0, &[0, 0, 0, 3, 0, 0, 0, 0]),
            frame(DATA, END_STREAM, 3, b""),
            frame(RST_STREAM, 0, 5, &[0, 0, 0, 8]),
        ]
        .concat()
    }

    #[test]
    fn frames_split_anywhere() {
        let input = sample();
        let whole = run(&input, None, &[]);
        assert_eq!(
            whole,
            [
                "frame t4 f0x0 s0 [0, 1, 0, 0, 16, 0]",
                "frame t8 f0x0 s0 []",
                "frame t1 f0xc s1 [2, 130, 0, 0]",
                "frame t250 f0x0 s0 []",
                "data s1 hi",
                "end s1 f0x9",
                "data s3 hello",
                "end s3 f0x0",
                "frame t6 f0x0 s0 []",
                "frame t2 f0x0 s3 []",
                "frame t7 f0x0 s0 []",
                "end s3 f0x1",
                "frame t3 f0x0 s5 []",
            ]
        );
        for at in 1..input.len() {
            assert_eq!(run(&input, None, &[at]), whole, "split at {at}");
        }
        let bytes: Vec<usize> = (1..input.len()).collect();
        assert_eq!(run(&input, None, &bytes), whole, "byte by byte");
    }

    #[test]
    fn gap_inside_data_is_survivable() {
        let input = [
            frame(DATA, 0, 1, b"0123456789"),
            frame(DATA, END_STREAM, 1, b"ab"),
        ]
        .concat();
        // Bytes 12..16 of the stream (data bytes 3..7) are missing.
        let mut with_gap = input[..12].to_vec();
        with_gap.extend_from_slice(&input[16..]);
        assert_eq!(
            run(&with_gap, Some((12, 4)), &[12]),
            [
                "data s1 012",
                "gap s1 4",
                "data s1 789",
                "end s1 f0x0",
                "data s1 ab",
                "end s1 f0x1"
            ]
        );
    }

    #[test]
    fn gap_over_a_frame_header_loses_framing() {
        let input = [
            frame(DATA, 0, 1, b"0123"),
            frame(DATA, END_STREAM, 1, b"ab"),
        ]
        .concat();
        let cut = input[..11].to_vec();
        let mut d = FrameDecoder::default();
        let mut log = Log::default();
        d.data(&cut, 1, &mut log);
        d.gap(6, &mut log);
        d.data(b"ab", 1, &mut log);
        assert!(d.is_lost());
        assert_eq!(log.0, ["data s1 01", "gap s1 2", "end s1 f0x0", "lost Gap"]);
    }

    #[test]
    fn oversized_frames_lose_framing_unless_allowed() {
        let big = frame(DATA, 0, 1, &[b'x'; 20_000]);
        assert_eq!(run(&big, None, &[]), ["lost FrameTooLarge"]);
        let mut d = FrameDecoder::default();
        d.allow_frame_size(1 << 20);
        let mut log = Log::default();
        d.data(&big, 1, &mut log);
        assert_eq!(log.0.len(), 2);
        assert!(d.at_frame_boundary());
    }
}
