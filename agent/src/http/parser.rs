//! HTTP/1.x message framing for one direction of a connection.
//!
//! Receives: that direction's stream: data at exact offsets (one call per captured record)
//! and gaps, in order. Emits, to a [`MessageSink`]: parsed heads with their body framing, body
//! bytes (de-chunked, still content-coded) with the capture time of the record that carried
//! them, body gaps, message ends, lost framing, and notices (resync, parse error, not HTTP).
//! Pairing requests with responses and content decoding belong to the tracker.
//!
//! States, after Pixie's parser contract: at a message boundary the next bytes must start a
//! request or status line (or the parser resynchronises); a head is collected until its empty
//! line (at most `max_head` bytes) and parsed with `httparse`; the body is framed by
//! Content-Length, chunked coding, or the connection's end (RFC 9112 §6.3).
//!
//! Resynchronisation (joining mid-connection, or after a lost head or framing): bytes are
//! skipped until a line that is a complete start line: `METHOD SP target SP HTTP/1.x` with a
//! known method, or `HTTP/1.x NNN`. A line starts after a LF, at the start of a record (a new
//! write or read call often starts a new message, and JSON bodies do not end in a newline), or
//! after a gap. Only a line that could still be a start line is buffered, at most
//! [`RESYNC_LINE_MAX`] bytes, so skipping costs one LF search per line.
//!
//! Non-HTTP: at the very start of a direction (offset 0, nothing lost before it), bytes that
//! are not HTTP are checked against a few signatures (the HTTP/2 preface, a PostgreSQL startup
//! packet, SMTP/IMAP/POP3 greetings and commands, a RESP array); a match means the connection
//! is not HTTP/1 and is dropped at once. Anything else may be the middle of a connection that
//! existed before the agent attached, so it is resynchronised instead; but a connection that
//! has never shown an HTTP message gives up after [`NON_HTTP_SCAN_BUDGET`] bytes of a direction
//! skipped without finding one.

use std::mem;

use thiserror::Error;

use super::{
    body_decoder::trim_ows,
    chunked::{ChunkedDecoder, ChunkedError},
};

/// Methods a request line may start with. Others (WebDAV, custom) are not recognised: they
/// would make resynchronisation match more text in bodies for little gain.
const METHODS: &[&[u8]] = &[
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
];
const STATUS_PREFIX: &[u8] = b"HTTP/1.";
/// Bytes looked at before deciding what the start of a direction is.
const SNIFF_LEN: usize = 16;
/// Longest start line resynchronisation will recognise.
pub(crate) const RESYNC_LINE_MAX: usize = 8 << 10;
/// Bytes of one direction skipped without a start line before a connection that never
/// showed HTTP is declared not HTTP.
pub(crate) const NON_HTTP_SCAN_BUDGET: u64 = 1 << 20;
/// Headers per head; more is a parse error.
const MAX_HEADERS: usize = 128;
/// A head buffer grown past this is released after use rather than kept per connection.
const KEEP_BUFFER: usize = 4 << 10;

/// How a message's body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BodyFraming {
    None,
    Length(u64),
    Chunked,
    /// Until the connection closes (a response without length).
    Close,
    /// No body, and no more HTTP on the connection (101 Switching Protocols, a CONNECT tunnel).
    Upgrade,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StartLine<'b> {
    Request { method: &'b str, target: &'b str },
    Response { status: u16 },
}

/// A parsed head, borrowed from the parser for the duration of [`MessageSink::head`].
#[derive(Debug)]
pub(crate) struct Head<'h, 'b> {
    pub(crate) start: StartLine<'b>,
    pub(crate) headers: &'h [httparse::Header<'b>],
    pub(crate) framing: BodyFraming,
    /// Transfer codings other than a final `chunked` (`gzip, chunked`): the body is coded.
    pub(crate) transfer_coded: bool,
    /// Stream offset of the start line's first byte.
    pub(crate) start_pos: u64,
    pub(crate) head_len: u64,
    /// Capture time of the record holding the first byte, and of the one holding the last.
    pub(crate) start_ktime: u64,
    pub(crate) end_ktime: u64,
}

/// What the request a response answers was, as far as framing is concerned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ResponseContext {
    pub(crate) request_is_head: bool,
    pub(crate) request_is_connect: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub(crate) enum ParseError {
    #[error("bytes at a message boundary do not start a request or status line")]
    NotAStartLine,
    #[error("head longer than {0} bytes")]
    HeadTooLarge(usize),
    #[error("invalid head: {0}")]
    InvalidHead(httparse::Error),
    #[error("head incomplete where it should end")]
    IncompleteHead,
    #[error("invalid Content-Length")]
    InvalidContentLength,
    #[error("conflicting Content-Length values")]
    ConflictingContentLength,
    #[error("request Transfer-Encoding does not end in chunked")]
    UnframedRequest,
    #[error("a {0} in the direction that carries the other kind")]
    WrongDirection(&'static str),
    #[error("chunked body: {0}")]
    Chunked(#[from] ChunkedError),
}

/// The tracker's side of the parser.
pub(crate) trait MessageSink {
    /// Before a response's framing is decided: what its request was.
    fn response_context(&mut self) -> ResponseContext;
    /// A head was parsed. `false` rejects it (this direction carries the other kind of
    /// message): the parser counts a parse error and resynchronises.
    fn head(&mut self, head: &Head<'_, '_>) -> bool;
    fn body(&mut self, data: &[u8], ktime: u64);
    /// `len` bytes of the body are missing; framing is intact.
    fn body_gap(&mut self, len: u64);
    /// The message is complete.
    fn end(&mut self, ktime: u64, wire_len: u64);
    /// The body's framing is lost (a gap across chunks, bad chunk syntax): the message ends
    /// here, incomplete, after `gap` lost bytes.
    fn lost(&mut self, ktime: u64, wire_len: u64, gap: u64);
    /// The parser starts skipping bytes to find a message start.
    fn resync(&mut self);
    fn error(&mut self, error: ParseError);
    /// This direction is not HTTP/1: the connection should be dropped.
    fn not_http(&mut self);
    /// Whether the connection has shown an HTTP message in either direction.
    fn http_seen(&self) -> bool;
}

#[derive(Debug)]
enum State {
    /// At a message boundary.
    Start,
    /// Collecting a head.
    Head,
    Body(Body),
    Resync,
    /// Not (or no longer) HTTP: everything is ignored.
    Stopped,
}

#[derive(Debug)]
enum Body {
    Length(u64),
    Chunked(ChunkedDecoder),
    Close,
}

#[derive(Debug, Default)]
struct Resync {
    /// The current line is buffered in `buf` and could still be a start line.
    candidate: bool,
    /// The next byte starts a line.
    at_line_start: bool,
    /// A gap was just skipped: the next byte may start a message.
    after_gap: bool,
    line_start_pos: u64,
    line_start_ktime: u64,
}

/// One direction's framing state.
#[derive(Debug)]
pub(crate) struct DirParser {
    /// Stream offset of the next byte.
    pos: u64,
    /// Capture time of the latest data.
    last_ktime: u64,
    state: State,
    /// A head arriving in pieces, a start line being sniffed, or a resync candidate line.
    buf: Vec<u8>,
    /// Where the search for the head's end resumes in `buf`.
    scan_from: usize,
    msg_start: u64,
    msg_start_ktime: u64,
    /// Nothing of this direction has been seen or lost yet.
    fresh: bool,
    resync: Resync,
    scan_budget: u64,
    max_head: usize,
}

impl DirParser {
    pub(crate) fn new(max_head: usize) -> Self {
        Self {
            pos: 0,
            last_ktime: 0,
            state: State::Start,
            buf: Vec::new(),
            scan_from: 0,
            msg_start: 0,
            msg_start_ktime: 0,
            fresh: true,
            resync: Resync::default(),
            scan_budget: NON_HTTP_SCAN_BUDGET,
            max_head: max_head.max(SNIFF_LEN),
        }
    }

    /// Stream offset of the next byte.
    pub(crate) fn pos(&self) -> u64 {
        self.pos
    }

    pub(crate) fn stop(&mut self) {
        self.state = State::Stopped;
        self.buf = Vec::new();
    }

    /// `data` sits at `offset` of this direction's stream.
    pub(crate) fn data(
        &mut self,
        offset: u64,
        data: &[u8],
        ktime: u64,
        sink: &mut dyn MessageSink,
    ) {
        if matches!(self.state, State::Stopped) {
            return;
        }
        let mut data = data;
        if offset > self.pos {
            self.gap(offset - self.pos, sink);
        } else if offset < self.pos {
            // Overlap with what was already seen: the assembler never sends it, but offsets
            // must only move forward.
            let seen = usize::try_from(self.pos - offset).unwrap_or(usize::MAX);
            data = data.get(seen..).unwrap_or_default();
        }
        if data.is_empty() {
            return;
        }
        self.last_ktime = ktime;
        let item_start = offset >= self.pos;
        self.feed(data, ktime, item_start, sink);
    }

    /// `len` bytes at `offset` of the stream are missing.
    pub(crate) fn gap_at(&mut self, offset: u64, len: u64, sink: &mut dyn MessageSink) {
        let end = offset.saturating_add(len);
        if offset > self.pos {
            // Bytes between what was seen and the gap are missing too.
            self.gap(offset - self.pos, sink);
        }
        self.gap(end.saturating_sub(self.pos), sink);
    }

    /// `len` bytes at the current offset are missing.
    pub(crate) fn gap(&mut self, len: u64, sink: &mut dyn MessageSink) {
        if len == 0 {
            return;
        }
        self.fresh = false;
        let end_pos = self.pos.saturating_add(len);
        match &mut self.state {
            State::Stopped => {}
            State::Start | State::Head => {
                // The next message's start (or the rest of its head) is lost.
                self.enter_resync(sink);
            }
            State::Resync => {}
            State::Body(Body::Close) => sink.body_gap(len),
            State::Body(Body::Length(remaining)) => {
                if len < *remaining {
                    *remaining -= len;
                    sink.body_gap(len);
                } else {
                    let rest_of_body = *remaining;
                    sink.body_gap(rest_of_body);
                    let body_end = self.pos.saturating_add(rest_of_body);
                    sink.end(self.last_ktime, body_end.saturating_sub(self.msg_start));
                    self.state = State::Start;
                    if len > rest_of_body {
                        self.pos = body_end;
                        self.enter_resync(sink);
                    }
                }
            }
            State::Body(Body::Chunked(chunked)) => {
                if chunked.gap(len).is_ok() {
                    sink.body_gap(len);
                } else if chunked.in_trailers() {
                    // All the data is there; only trailers (and maybe what follows) are lost.
                    sink.end(self.last_ktime, end_pos.saturating_sub(self.msg_start));
                    self.enter_resync(sink);
                } else {
                    sink.lost(self.last_ktime, end_pos.saturating_sub(self.msg_start), len);
                    self.enter_resync(sink);
                }
            }
        }
        self.resync.after_gap = true;
        self.resync.candidate = false;
        self.resync.at_line_start = false;
        self.pos = end_pos;
    }

    fn enter_resync(&mut self, sink: &mut dyn MessageSink) {
        if !matches!(self.state, State::Resync | State::Stopped) {
            sink.resync();
            self.state = State::Resync;
        }
        self.buf.clear();
        self.resync.candidate = false;
        self.resync.at_line_start = false;
    }

    /// Processes `data` (at `self.pos`) through the state machine.
    fn feed(&mut self, data: &[u8], ktime: u64, item_start: bool, sink: &mut dyn MessageSink) {
        let mut rest = data;
        let mut item_start = item_start;
        // Every state either consumes input or hands over to another state that will; a few
        // hand-overs in a row without progress would be a bug, never a reason to spin.
        let mut idle_steps = 0;
        while !rest.is_empty() && idle_steps < 4 {
            let used = match self.state {
                State::Start => self.on_start(rest, ktime, sink),
                State::Head => self.on_head_bytes(rest, ktime, sink),
                State::Body(_) => self.on_body(rest, ktime, sink),
                State::Resync => self.on_resync(rest, ktime, item_start, sink),
                State::Stopped => return,
            };
            let used = used.min(rest.len());
            idle_steps = if used == 0 { idle_steps + 1 } else { 0 };
            if used > 0 {
                item_start = false;
                self.pos = self.pos.saturating_add(used as u64);
                rest = rest.get(used..).unwrap_or_default();
            }
        }
    }

    /// At a message boundary: skips blank lines, then decides whether a start line follows.
    /// Consumes nothing when it changes state.
    fn on_start(&mut self, rest: &[u8], ktime: u64, sink: &mut dyn MessageSink) -> usize {
        if self.buf.is_empty() {
            // RFC 9112 §2.2: empty lines before a start line are ignored.
            let blank = rest
                .iter()
                .position(|&b| b != b'\r' && b != b'\n')
                .unwrap_or(rest.len());
            if blank > 0 {
                return blank;
            }
            self.msg_start = self.pos;
            self.msg_start_ktime = ktime;
        }
        let mut probe = [0u8; SNIFF_LEN];
        let n = fill_probe(&mut probe, &self.buf, rest);
        let probe = probe.get(..n).unwrap_or_default();
        let fresh = self.fresh && !sink.http_seen();
        match sniff(probe, fresh) {
            Sniff::NeedMore => {
                // Fewer than SNIFF_LEN bytes in all, so `rest` fits.
                self.buf.extend_from_slice(rest);
                rest.len()
            }
            Sniff::Http => {
                self.fresh = false;
                self.state = State::Head;
                self.scan_from = 0;
                0
            }
            Sniff::NotHttp => {
                self.fresh = false;
                sink.not_http();
                self.stop();
                0
            }
            Sniff::Unknown => {
                if !self.fresh {
                    sink.error(ParseError::NotAStartLine);
                }
                // A fresh direction that does not start with HTTP was most likely joined in
                // the middle: resynchronise (counted) rather than call it an error.
                self.fresh = false;
                sink.resync();
                self.state = State::Resync;
                self.resync = Resync {
                    at_line_start: true,
                    after_gap: false,
                    ..Resync::default()
                };
                // The few sniffed bytes are scanned again as the start of the skipped data.
                let sniffed = mem::take(&mut self.buf);
                if !sniffed.is_empty() {
                    let resume = self.pos;
                    self.pos = self.pos.saturating_sub(sniffed.len() as u64);
                    let start_ktime = self.msg_start_ktime;
                    self.feed(&sniffed, start_ktime, false, sink);
                    self.pos = resume;
                }
                0
            }
        }
    }

    fn on_head_bytes(&mut self, rest: &[u8], ktime: u64, sink: &mut dyn MessageSink) -> usize {
        if self.buf.is_empty() {
            // Fast path: the whole head is in this record; parse it in place.
            match find_head_end(rest, 0) {
                Ok(end) => {
                    let head = rest.get(..end).unwrap_or_default();
                    let head_end = self.pos.saturating_add(end as u64);
                    self.finish_head(head, head_end, ktime, sink);
                    end
                }
                Err(resume) => {
                    if rest.len() >= self.max_head {
                        self.head_too_large(sink);
                        return rest.len();
                    }
                    self.buf.extend_from_slice(rest);
                    self.scan_from = resume;
                    rest.len()
                }
            }
        } else {
            let old_len = self.buf.len();
            let room = self.max_head.saturating_sub(old_len);
            let take = rest.len().min(room);
            self.buf
                .extend_from_slice(rest.get(..take).unwrap_or_default());
            match find_head_end(&self.buf, self.scan_from) {
                Ok(end) => {
                    self.buf.truncate(end);
                    let head = mem::take(&mut self.buf);
                    let used = end.saturating_sub(old_len);
                    let head_end = self.pos.saturating_add(used as u64);
                    self.finish_head(&head, head_end, ktime, sink);
                    self.reuse_buffer(head);
                    used
                }
                Err(resume) => {
                    if self.buf.len() >= self.max_head {
                        self.head_too_large(sink);
                        return rest.len();
                    }
                    self.scan_from = resume;
                    take
                }
            }
        }
    }

    fn head_too_large(&mut self, sink: &mut dyn MessageSink) {
        sink.error(ParseError::HeadTooLarge(self.max_head));
        self.enter_resync(sink);
        self.buf = Vec::new();
    }

    /// Keeps a small buffer's allocation for the next head; releases a big one.
    fn reuse_buffer(&mut self, mut buf: Vec<u8>) {
        if buf.capacity() <= KEEP_BUFFER && self.buf.is_empty() {
            buf.clear();
            self.buf = buf;
        }
    }

    /// `head` runs from the start line to the empty line, which ends at stream offset
    /// `head_end` in the record captured at `ktime`.
    fn finish_head(&mut self, head: &[u8], head_end: u64, ktime: u64, sink: &mut dyn MessageSink) {
        let head_len = head_end.saturating_sub(self.msg_start);
        match parse_head(
            head,
            self.msg_start,
            head_len,
            self.msg_start_ktime,
            ktime,
            sink,
        ) {
            Ok(framing) => {
                self.state = match framing {
                    BodyFraming::None | BodyFraming::Length(0) => {
                        sink.end(ktime, head_len);
                        State::Start
                    }
                    BodyFraming::Length(n) => State::Body(Body::Length(n)),
                    BodyFraming::Chunked => {
                        State::Body(Body::Chunked(ChunkedDecoder::new(self.max_head)))
                    }
                    BodyFraming::Close => State::Body(Body::Close),
                    BodyFraming::Upgrade => {
                        self.buf = Vec::new();
                        State::Stopped
                    }
                };
            }
            Err(e) => {
                sink.error(e);
                self.enter_resync(sink);
            }
        }
    }

    fn on_body(&mut self, rest: &[u8], ktime: u64, sink: &mut dyn MessageSink) -> usize {
        let wire_len = |used: usize| {
            self.pos
                .saturating_add(used as u64)
                .saturating_sub(self.msg_start)
        };
        match &mut self.state {
            State::Body(Body::Length(remaining)) => {
                let take = usize::try_from(*remaining).map_or(rest.len(), |r| r.min(rest.len()));
                sink.body(rest.get(..take).unwrap_or_default(), ktime);
                *remaining -= take as u64;
                if *remaining == 0 {
                    let len = wire_len(take);
                    self.state = State::Start;
                    sink.end(ktime, len);
                }
                take
            }
            State::Body(Body::Chunked(chunked)) => {
                let fed = chunked.feed(rest, &mut |data| sink.body(data, ktime));
                match fed.outcome {
                    Ok(false) => fed.consumed,
                    Ok(true) => {
                        let len = wire_len(fed.consumed);
                        self.state = State::Start;
                        sink.end(ktime, len);
                        fed.consumed
                    }
                    Err(e) => {
                        let len = wire_len(fed.consumed);
                        sink.error(e.into());
                        sink.lost(ktime, len, 0);
                        self.enter_resync(sink);
                        // The offending byte is skipped by resync like any other.
                        fed.consumed
                    }
                }
            }
            State::Body(Body::Close) => {
                sink.body(rest, ktime);
                rest.len()
            }
            _ => 0,
        }
    }

    fn on_resync(
        &mut self,
        rest: &[u8],
        ktime: u64,
        item_start: bool,
        sink: &mut dyn MessageSink,
    ) -> usize {
        let r = &mut self.resync;
        if (item_start || r.after_gap) && !r.candidate {
            // A new record or the end of a gap may start a message mid-line.
            let mut probe = [0u8; SNIFF_LEN];
            let n = fill_probe(&mut probe, &[], rest);
            if matches!(
                start_prefix(probe.get(..n).unwrap_or_default()),
                Prefix::Full | Prefix::Partial
            ) {
                r.at_line_start = true;
            }
        }
        r.after_gap = false;
        if r.at_line_start {
            r.at_line_start = false;
            r.candidate = true;
            r.line_start_pos = self.pos;
            r.line_start_ktime = ktime;
            self.buf.clear();
        }
        let newline = rest.iter().position(|&b| b == b'\n');
        let used = newline.map_or(rest.len(), |i| i + 1);
        if r.candidate {
            let piece = rest.get(..used).unwrap_or_default();
            if self.buf.len() + piece.len() > RESYNC_LINE_MAX || !printable(piece) {
                r.candidate = false;
                self.buf.clear();
            } else {
                self.buf.extend_from_slice(piece);
                if start_prefix(&self.buf) == Prefix::No {
                    r.candidate = false;
                    self.buf.clear();
                }
            }
        }
        if newline.is_some() {
            if r.candidate && is_start_line(&self.buf) {
                r.candidate = false;
                self.msg_start = r.line_start_pos;
                self.msg_start_ktime = r.line_start_ktime;
                // The line's LF may be the first of the head's empty line.
                self.scan_from = self.buf.len().saturating_sub(1);
                self.state = State::Head;
                return used;
            }
            r.candidate = false;
            r.at_line_start = true;
        }
        self.scan_budget = self.scan_budget.saturating_sub(used as u64);
        if self.scan_budget == 0 && !sink.http_seen() {
            sink.not_http();
            self.stop();
        }
        used
    }
}

/// Parses a complete head and decides its body's framing.
fn parse_head(
    head: &[u8],
    start_pos: u64,
    head_len: u64,
    start_ktime: u64,
    end_ktime: u64,
    sink: &mut dyn MessageSink,
) -> Result<BodyFraming, ParseError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut config = httparse::ParserConfig::default();
    // Lenient where servers are known to be sloppy: an observer must not drop what a real
    // client accepted.
    config
        .allow_spaces_after_header_name_in_responses(true)
        .allow_obsolete_multiline_headers_in_responses(true)
        .ignore_invalid_headers_in_responses(true)
        .ignore_invalid_headers_in_requests(true);
    if head.starts_with(STATUS_PREFIX) {
        let mut response = httparse::Response::new(&mut headers);
        match config.parse_response(&mut response, head) {
            Ok(httparse::Status::Complete(_)) => {}
            Ok(httparse::Status::Partial) => return Err(ParseError::IncompleteHead),
            Err(e) => return Err(ParseError::InvalidHead(e)),
        }
        let status = response.code.ok_or(ParseError::IncompleteHead)?;
        let context = sink.response_context();
        let te = TransferEncoding::of(response.headers);
        let framing = response_framing(status, response.headers, &te, context)?;
        let head = Head {
            start: StartLine::Response { status },
            headers: response.headers,
            framing,
            transfer_coded: te.other,
            start_pos,
            head_len,
            start_ktime,
            end_ktime,
        };
        if !sink.head(&head) {
            return Err(ParseError::WrongDirection("response"));
        }
        Ok(framing)
    } else {
        let mut request = httparse::Request::new(&mut headers);
        match config.parse_request(&mut request, head) {
            Ok(httparse::Status::Complete(_)) => {}
            Ok(httparse::Status::Partial) => return Err(ParseError::IncompleteHead),
            Err(e) => return Err(ParseError::InvalidHead(e)),
        }
        let (Some(method), Some(target)) = (request.method, request.path) else {
            return Err(ParseError::IncompleteHead);
        };
        let te = TransferEncoding::of(request.headers);
        let framing = if te.present {
            // RFC 9112 §6.3: Transfer-Encoding overrides Content-Length; without a final
            // chunked the request's length cannot be known.
            if !te.chunked_last {
                return Err(ParseError::UnframedRequest);
            }
            BodyFraming::Chunked
        } else {
            match content_length(request.headers)? {
                Some(n) => BodyFraming::Length(n),
                None => BodyFraming::None,
            }
        };
        let head = Head {
            start: StartLine::Request { method, target },
            headers: request.headers,
            framing,
            transfer_coded: te.other,
            start_pos,
            head_len,
            start_ktime,
            end_ktime,
        };
        if !sink.head(&head) {
            return Err(ParseError::WrongDirection("request"));
        }
        Ok(framing)
    }
}

/// RFC 9112 §6.3, for a response.
fn response_framing(
    status: u16,
    headers: &[httparse::Header<'_>],
    te: &TransferEncoding,
    context: ResponseContext,
) -> Result<BodyFraming, ParseError> {
    Ok(match status {
        101 => BodyFraming::Upgrade,
        100..=199 | 204 | 304 => BodyFraming::None,
        _ if context.request_is_head => BodyFraming::None,
        200..=299 if context.request_is_connect => BodyFraming::Upgrade,
        _ if te.present && te.chunked_last => BodyFraming::Chunked,
        // A response coded but not chunked runs to the connection's end.
        _ if te.present => BodyFraming::Close,
        _ => match content_length(headers)? {
            Some(n) => BodyFraming::Length(n),
            None => BodyFraming::Close,
        },
    })
}

#[derive(Debug, Default)]
struct TransferEncoding {
    present: bool,
    chunked_last: bool,
    /// A coding other than chunked is applied.
    other: bool,
}

impl TransferEncoding {
    fn of(headers: &[httparse::Header<'_>]) -> Self {
        let mut te = Self::default();
        for h in headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
        {
            for token in h.value.split(|&b| b == b',').map(trim_ows) {
                if token.is_empty() {
                    continue;
                }
                te.present = true;
                te.chunked_last = token.eq_ignore_ascii_case(b"chunked");
                te.other |= !te.chunked_last;
            }
        }
        te
    }
}

/// The Content-Length, if any. Repeated values (as a list or in several fields) must agree.
fn content_length(headers: &[httparse::Header<'_>]) -> Result<Option<u64>, ParseError> {
    let mut found = None;
    for h in headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
    {
        for token in h.value.split(|&b| b == b',').map(trim_ows) {
            if token.is_empty() {
                return Err(ParseError::InvalidContentLength);
            }
            let mut value: u64 = 0;
            for &b in token {
                if !b.is_ascii_digit() {
                    return Err(ParseError::InvalidContentLength);
                }
                value = value
                    .checked_mul(10)
                    .and_then(|v| v.checked_add(u64::from(b - b'0')))
                    .ok_or(ParseError::InvalidContentLength)?;
            }
            match found {
                Some(f) if f != value => return Err(ParseError::ConflictingContentLength),
                _ => found = Some(value),
            }
        }
    }
    Ok(found)
}

/// Finds the end of a head (just past its empty line) in `buf`, searching from `from`. On
/// failure returns where to resume once more bytes arrive.
fn find_head_end(buf: &[u8], from: usize) -> Result<usize, usize> {
    let mut i = from;
    while let Some(offset) = buf
        .get(i..)
        .and_then(|s| s.iter().position(|&b| b == b'\n'))
    {
        let lf = i + offset;
        match (buf.get(lf + 1), buf.get(lf + 2)) {
            (Some(b'\n'), _) => return Ok(lf + 2),
            (Some(b'\r'), Some(b'\n')) => return Ok(lf + 3),
            (None, _) | (Some(b'\r'), None) => return Err(lf),
            _ => {}
        }
        i = lf + 1;
    }
    Err(buf.len())
}

/// Copies the first bytes of `buf` followed by `rest` into `probe`; returns how many.
fn fill_probe(probe: &mut [u8; SNIFF_LEN], buf: &[u8], rest: &[u8]) -> usize {
    let mut n = 0;
    for (slot, &b) in probe.iter_mut().zip(buf.iter().chain(rest)) {
        *slot = b;
        n += 1;
    }
    n
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Prefix {
    /// A method and its space, or `HTTP/1.`.
    Full,
    /// Could become one with more bytes.
    Partial,
    No,
}

fn start_prefix(bytes: &[u8]) -> Prefix {
    let mut partial = false;
    for pattern in METHODS.iter().copied().chain([STATUS_PREFIX]) {
        if bytes.starts_with(pattern) {
            return Prefix::Full;
        }
        partial |= pattern.starts_with(bytes);
    }
    if partial { Prefix::Partial } else { Prefix::No }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sniff {
    NeedMore,
    Http,
    NotHttp,
    Unknown,
}

/// What the first bytes at a message boundary are; `fresh` when they are the very first bytes
/// of a connection that has shown no HTTP.
fn sniff(probe: &[u8], fresh: bool) -> Sniff {
    match start_prefix(probe) {
        Prefix::Full => return Sniff::Http,
        Prefix::Partial => return Sniff::NeedMore,
        Prefix::No => {}
    }
    if !fresh {
        return Sniff::Unknown;
    }
    match non_http_signature(probe) {
        Signature::Match => Sniff::NotHttp,
        Signature::Partial if probe.len() < SNIFF_LEN => Sniff::NeedMore,
        _ => Sniff::Unknown,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Signature {
    Match,
    Partial,
    No,
}

/// Openings of protocols seen inside TLS that are not HTTP/1.
fn non_http_signature(probe: &[u8]) -> Signature {
    // Text openings: the pattern must be seen whole.
    const TEXT: &[&[u8]] = &[
        b"PRI * HTTP/2.0\r\n", // HTTP/2 connection preface
        b"EHLO ",              // SMTP client
        b"HELO ",
        b"220 ", // SMTP/FTP server greeting
        b"220-",
        b"* OK ",      // IMAP server greeting
        b"* PREAUTH ", // IMAP
        b"+OK ",       // POP3 server greeting
        b"CAPA\r\n",   // POP3 client
    ];
    let mut partial = false;
    for pattern in TEXT {
        if probe.starts_with(pattern) {
            return Signature::Match;
        }
        partial |= pattern.starts_with(probe);
    }
    // A RESP (Redis) array: `*<digits>\r\n$`.
    if let [b'*', b'1'..=b'9', rest @ ..] = probe {
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        match rest.get(digits..) {
            Some([b'\r', b'\n', b'$', ..]) => return Signature::Match,
            Some([] | [b'\r'] | [b'\r', b'\n']) => partial = true,
            _ => {}
        }
    }
    // PostgreSQL: a big-endian length, then the protocol version 3.0 or a request code
    // (SSL, GSS encryption, cancel).
    if let Some(&[l0, l1, l2, l3, c0, c1, c2, c3]) = probe.first_chunk::<8>() {
        let len = u32::from_be_bytes([l0, l1, l2, l3]);
        let code = u32::from_be_bytes([c0, c1, c2, c3]);
        if (8..=10_000).contains(&len)
            && matches!(code, 0x0003_0000 | 80_877_102 | 80_877_103 | 80_877_104)
        {
            return Signature::Match;
        }
    } else if probe.first() == Some(&0) {
        partial = true;
    }
    if partial {
        Signature::Partial
    } else {
        Signature::No
    }
}

/// Whether a resync candidate piece can be part of a start line.
fn printable(piece: &[u8]) -> bool {
    piece
        .iter()
        .all(|&b| (0x20..0x7f).contains(&b) || b == b'\r' || b == b'\n' || b == b'\t')
}

/// Whether `line` (ending in LF) is a whole start line: `METHOD SP target SP HTTP/1.x` or
/// `HTTP/1.x NNN[ reason]`.
fn is_start_line(line: &[u8]) -> bool {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if let Some(after) = line.strip_prefix(STATUS_PREFIX) {
        return matches!(
            after,
            [b'0' | b'1', b' ', s0, s1, s2, rest @ ..]
                if [s0, s1, s2].iter().all(|b| b.is_ascii_digit())
                    && (rest.is_empty() || rest.first() == Some(&b' '))
        );
    }
    let Some(method) = METHODS.iter().find(|m| line.starts_with(m)) else {
        return false;
    };
    let after_method = line.get(method.len()..).unwrap_or_default();
    let Some(space) = after_method.iter().position(|&b| b == b' ') else {
        return false;
    };
    let (target, version) = after_method.split_at(space);
    !target.is_empty()
        && target.iter().all(|&b| (0x21..0x7f).contains(&b))
        && matches!(
            version,
            [b' ', b'H', b'T', b'T', b'P', b'/', b'1', b'.', b'0' | b'1']
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what the parser reports, as text.
    #[derive(Default)]
    struct Log {
        lines: Vec<String>,
        http_seen: bool,
        head_is_head_request: bool,
    }

    impl MessageSink for Log {
        fn response_context(&mut self) -> ResponseContext {
            ResponseContext {
                request_is_head: self.head_is_head_request,
                request_is_connect: false,
            }
        }
        fn head(&mut self, head: &Head<'_, '_>) -> bool {
            self.http_seen = true;
            self.lines.push(format!(
                "head {:?} {:?} at {} len {}",
                head.start, head.framing, head.start_pos, head.head_len
            ));
            true
        }
        fn body(&mut self, data: &[u8], _ktime: u64) {
            match self.lines.last_mut() {
                Some(last) if last.starts_with("body ") => {
                    last.push_str(&String::from_utf8_lossy(data))
                }
                _ => self
                    .lines
                    .push(format!("body {}", String::from_utf8_lossy(data))),
            }
        }
        fn body_gap(&mut self, len: u64) {
            self.lines.push(format!("gap {len}"));
        }
        fn end(&mut self, _ktime: u64, wire_len: u64) {
            self.lines.push(format!("end {wire_len}"));
        }
        fn lost(&mut self, _ktime: u64, wire_len: u64, gap: u64) {
            self.lines.push(format!("lost {wire_len} {gap}"));
        }
        fn resync(&mut self) {
            self.lines.push("resync".into());
        }
        fn error(&mut self, error: ParseError) {
            self.lines.push(format!("error {error}"));
        }
        fn not_http(&mut self) {
            self.lines.push("not http".into());
        }
        fn http_seen(&self) -> bool {
            self.http_seen
        }
    }

    fn run(pieces: &[&[u8]]) -> Vec<String> {
        let mut p = DirParser::new(1024);
        let mut log = Log::default();
        let mut offset = 0;
        for piece in pieces {
            p.data(offset, piece, 1, &mut log);
            offset += piece.len() as u64;
        }
        log.lines
    }

    /// Runs `wire` whole, split in two at every boundary, and byte by byte; all must agree.
    fn run_all_splits(wire: &[u8]) -> Vec<String> {
        let whole = run(&[wire]);
        for split in 0..=wire.len() {
            let (a, b) = wire.split_at(split);
            assert_eq!(run(&[a, b]), whole, "split at {split}");
        }
        let bytes: Vec<&[u8]> = wire.chunks(1).collect();
        assert_eq!(run(&bytes), whole, "byte by byte");
        whole
    }

    #[test]
    fn framings() {
        let got = run_all_splits(
            b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc\
              GET /b HTTP/1.1\r\n\r\n\
              \r\nPOST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 99\r\n\r\n\
              2;x=y\r\nhi\r\n0\r\nT: v\r\n\r\n",
        );
        assert_eq!(
            got,
            [
                "head Request { method: \"POST\", target: \"/a\" } Length(3) at 0 len 39",
                "body abc",
                "end 42",
                "head Request { method: \"GET\", target: \"/b\" } None at 42 len 19",
                "end 19",
                "head Request { method: \"POST\", target: \"/c\" } Chunked at 63 len 68",
                "body hi",
                "end 90",
            ]
        );
    }

    #[test]
    fn response_framings() {
        let got = run_all_splits(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n\
              HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.0 200 OK\r\n\r\nrest of it",
        );
        assert_eq!(
            got,
            [
                "head Response { status: 100 } None at 0 len 25",
                "end 25",
                "head Response { status: 204 } None at 25 len 46",
                "end 46",
                "head Response { status: 200 } Length(2) at 71 len 38",
                "body ok",
                "end 40",
                "head Response { status: 200 } Close at 111 len 19",
                "body rest of it",
            ]
        );
    }

    #[test]
    fn content_length_rules() {
        let h = |v: &'static [u8]| httparse::Header {
            name: "Content-Length",
            value: v,
        };
        assert_eq!(content_length(&[h(b"42")]), Ok(Some(42)));
        assert_eq!(content_length(&[h(b"42, 42"), h(b" 42 ")]), Ok(Some(42)));
        assert_eq!(content_length(&[h(b"1000000000")]), Ok(Some(1_000_000_000)));
        for bad in [
            &b"-1"[..],
            b"",
            b"1e3",
            b"+5",
            b"1 2",
            b"1000000000000000000000000000000",
        ] {
            assert_eq!(
                content_length(&[h(bad)]),
                Err(ParseError::InvalidContentLength),
                "{bad:?}"
            );
        }
        assert_eq!(
            content_length(&[h(b"1"), h(b"2")]),
            Err(ParseError::ConflictingContentLength)
        );
    }

    #[test]
    fn invalid_length_is_a_parse_error_then_resync() {
        let got = run_all_splits(
            b"POST /a HTTP/1.1\r\nContent-Length: 10000000000000000000000000000000\r\n\r\n\
              junk\r\nGET /b HTTP/1.1\r\n\r\n",
        );
        assert_eq!(
            got,
            [
                "error invalid Content-Length",
                "resync",
                "head Request { method: \"GET\", target: \"/b\" } None at 76 len 19",
                "end 19",
            ]
        );
    }

    #[test]
    fn start_lines() {
        for good in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"POST /v1/chat?x=1 HTTP/1.0\n",
            b"HTTP/1.1 200 OK\r\n",
            b"HTTP/1.1 404\r\n",
        ] {
            assert!(is_start_line(good), "{good:?}");
        }
        for bad in [
            &b"GET  / HTTP/1.1\r\n"[..],
            b"GET / HTTP/2.0\r\n",
            b"FETCH / HTTP/1.1\r\n",
            b"GET / HTTP/1.1 x\r\n",
            b"HTTP/1.1 20 OK\r\n",
            b"HTTP/1.1 200OK\r\n",
        ] {
            assert!(!is_start_line(bad), "{bad:?}");
        }
    }

    #[test]
    fn signatures() {
        assert_eq!(sniff(b"PRI * HTTP/2.0\r\n", true), Sniff::NotHttp);
        assert_eq!(sniff(b"PRI * HT", true), Sniff::NeedMore);
        assert_eq!(sniff(b"PRI * HTTP/2.0\r\n", false), Sniff::Unknown);
        assert_eq!(
            sniff(&[0, 0, 0, 0x29, 0, 3, 0, 0, b'u', b's'], true),
            Sniff::NotHttp
        );
        assert_eq!(sniff(&[0, 0, 0], true), Sniff::NeedMore);
        assert_eq!(sniff(b"*2\r\n$3\r\nGET", true), Sniff::NotHttp);
        assert_eq!(sniff(b"EHLO mail.example.com", true), Sniff::NotHttp);
        assert_eq!(sniff(b"{\"model\": \"x\"}", true), Sniff::Unknown);
        assert_eq!(sniff(b"GE", true), Sniff::NeedMore);
        assert_eq!(sniff(b"GET ", false), Sniff::Http);
        assert_eq!(sniff(b"HTTP/1.1 200", false), Sniff::Http);
    }

    #[test]
    fn resync_finds_a_request_after_a_body_tail_without_newline() {
        // Joined in the middle of a JSON body: its end and the next request arrive as two
        // records; the request starts at a record boundary, mid-line.
        let mut p = DirParser::new(1024);
        let mut log = Log::default();
        p.data(0, b"ssages\":[]}", 1, &mut log);
        p.data(
            11,
            b"POST /v1 HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
            2,
            &mut log,
        );
        assert_eq!(
            log.lines,
            [
                "resync",
                "head Request { method: \"POST\", target: \"/v1\" } Length(2) at 11 len 40",
                "body {}",
                "end 42",
            ]
        );
    }

    #[test]
    fn unknown_bytes_are_given_up_after_the_budget() {
        let mut p = DirParser::new(1024);
        let mut log = Log::default();
        let junk = vec![b'x'; 64 << 10];
        let mut offset = 0;
        while offset <= NON_HTTP_SCAN_BUDGET {
            p.data(offset, &junk, 1, &mut log);
            offset += junk.len() as u64;
        }
        assert_eq!(log.lines, ["resync", "not http"]);
        // Afterwards nothing is looked at.
        p.data(offset, b"GET / HTTP/1.1\r\n\r\n", 1, &mut log);
        assert_eq!(log.lines.len(), 2);
    }

    #[test]
    fn gaps() {
        let mut p = DirParser::new(1024);
        let mut log = Log::default();
        let head = b"POST /a HTTP/1.1\r\nContent-Length: 1000\r\n\r\nab";
        p.data(0, head, 1, &mut log);
        p.gap(996, &mut log);
        p.data(
            head.len() as u64 + 996,
            b"yzGET / HTTP/1.1\r\n\r\n",
            2,
            &mut log,
        );
        // A gap in a head loses it; the next start line is found again.
        p.data(1060, b"GET /x HT", 3, &mut log);
        p.gap(10, &mut log);
        p.data(1079, b"\r\n\r\nGET /y HTTP/1.1\r\n\r\n", 4, &mut log);
        assert_eq!(
            log.lines,
            [
                "head Request { method: \"POST\", target: \"/a\" } Length(1000) at 0 len 42",
                "body ab",
                "gap 996",
                "body yz",
                "end 1042",
                "head Request { method: \"GET\", target: \"/\" } None at 1042 len 18",
                "end 18",
                "resync",
                "head Request { method: \"GET\", target: \"/y\" } None at 1083 len 19",
                "end 19",
            ]
        );
    }

    #[test]
    fn random_bytes_never_panic_or_hang() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let alphabet: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\n",
            b"HTTP/1.1 200 OK\r\n",
            b"Content-Length: 5\r\n",
            b"Transfer-Encoding: chunked\r\n",
            b"\r\n",
            b"5\r\nhello\r\n",
            b"0\r\n\r\n",
            b"\n",
            b"x",
            b"\0\xff",
        ];
        for _ in 0..500 {
            let mut wire = Vec::new();
            for _ in 0..(next() % 40) {
                wire.extend_from_slice(alphabet[(next() % alphabet.len() as u64) as usize]);
            }
            let mut p = DirParser::new(64);
            let mut log = Log::default();
            let mut offset = 0u64;
            for piece in wire.chunks(1 + (next() % 9) as usize) {
                if next() % 7 == 0 {
                    let len = next() % 20;
                    p.gap(len, &mut log);
                    offset += len;
                }
                p.data(offset, piece, 1, &mut log);
                offset += piece.len() as u64;
            }
            assert_eq!(p.pos(), offset);
        }
    }
}
