//! One HTTP/2 connection: frames and header blocks of both directions stitched into
//! exchanges, one per stream.
//!
//! Receives: both directions' bytes after the client's connection preface (data at exact
//! offsets, and gaps). Emits: the same [`HttpEvent`]s as the HTTP/1 stage, so the LLM stage
//! sees no difference: per stream, `Request` (when the request's END_STREAM arrives, or
//! earlier when the response starts first), `ResponseHead` (final `:status`; 1xx skipped),
//! `ResponseBody`/`ResponseGap` from its DATA frames through the shared body decoders, and
//! `ResponseEnd` (`Complete` at END_STREAM, `Interrupted` at RST_STREAM or the connection's
//! end), or `Abandoned` when the stream ends without a response. Events of concurrent streams
//! interleave; each carries its exchange number, assigned in the order requests start.
//!
//! Timing as for HTTP/1: a request's start and end are the records holding the first byte of
//! its HEADERS frame and the last byte of its END_STREAM frame; a response head's time is
//! that of its HEADERS frame's first byte; body pieces carry their record's time.
//!
//! Desynchronisation: each direction has its own HPACK dynamic table, so a header block lost
//! or unreadable (a gap over a frame header or a header-block frame, an HPACK error) makes
//! every later block of that direction unreadable. The connection is then given up: open
//! streams end as interrupted (or abandoned), it is counted in `h2_desynced`, and no further
//! exchanges are produced for it. A gap inside DATA is reported like an HTTP/1 body gap.
//!
//! Bounds: at most [`MAX_STREAMS`] open streams per connection (more are not tracked, but
//! their header blocks are still decoded to keep HPACK state), header lists up to
//! `max_head_bytes` (as RFC 9113 counts them: name, value and 32 per field; a longer list is
//! decoded and dropped), header blocks up to [`MAX_HEADER_BLOCK`] encoded bytes.

use std::collections::HashMap;

use tokentap_common::Direction;

use super::{
    frame::{
        self, CONTINUATION, END_HEADERS, END_STREAM, FrameDecoder, FrameHeader, FrameSink,
        FramingLost, HEADERS, PADDED, PRIORITY_FLAG, PUSH_PROMISE, RST_STREAM, SETTINGS,
    },
    hpack::{HpackDecoder, HpackError},
};
use crate::http::{
    body::{RequestBody, ResponseBody},
    body_decoder::{Coding, DecodeError, coding_of},
    tracker::Ctx,
    types::{
        Headers, HttpEvent, HttpRequest, ResponseEnd, ResponseHead, Role, SparseBody, redact_query,
    },
};

/// Open streams tracked per connection; more are counted in `h2_streams_over_limit`.
pub(crate) const MAX_STREAMS: usize = 128;
/// Longest header block (a HEADERS frame and its CONTINUATIONs), encoded.
pub(crate) const MAX_HEADER_BLOCK: usize = 256 << 10;
/// Per-field overhead in a header list's size (RFC 9113 §6.5.2).
const FIELD_OVERHEAD: usize = 32;

const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;
const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;

/// Why a connection was given up.
#[derive(Debug, thiserror::Error)]
enum Desync {
    #[error("framing lost: {0}")]
    Framing(FramingLost),
    #[error("HPACK: {0}")]
    Hpack(HpackError),
    #[error("header block longer than {MAX_HEADER_BLOCK} bytes")]
    HeaderBlockTooLarge,
    #[error("CONTINUATION frame out of place")]
    Continuation,
}

/// A header block being collected.
#[derive(Debug)]
struct HeaderBlock {
    stream: u32,
    /// HEADERS or PUSH_PROMISE.
    kind: u8,
    end_stream: bool,
    buf: Vec<u8>,
    start_ktime: u64,
    wire_len: u64,
}

/// Everything of the connection but the frame decoders.
#[derive(Debug)]
struct State {
    client_dir: Direction,
    /// HPACK decoders by the direction of the blocks they decode.
    hpack: [HpackDecoder; 2],
    block: [Option<HeaderBlock>; 2],
    /// SETTINGS_MAX_FRAME_SIZE values to apply to a direction's frame decoder.
    frame_size: [Option<u32>; 2],
    streams: HashMap<u32, Stream>,
    next_exchange: u64,
    last_ktime: u64,
    desynced: bool,
}

#[derive(Debug)]
struct Stream {
    exchange: u64,
    request: RequestBuild,
    /// The request was emitted (at its end, or when the response started first).
    request_emitted: bool,
    response: Option<ResponseBuild>,
}

#[derive(Debug)]
struct RequestBuild {
    /// Taken when emitted.
    request: Option<HttpRequest>,
    body: RequestBody,
}

#[derive(Debug)]
struct ResponseBuild {
    body: ResponseBody,
    last_ktime: u64,
}

/// One HTTP/2 connection.
#[derive(Debug)]
pub(crate) struct H2Conn {
    frames: [FrameDecoder; 2],
    /// Stream offset of the next byte, per direction.
    pos: [u64; 2],
    state: State,
}

fn idx(dir: Direction) -> usize {
    match dir {
        Direction::Write => 0,
        Direction::Read => 1,
    }
}

fn other(dir: Direction) -> Direction {
    match dir {
        Direction::Write => Direction::Read,
        Direction::Read => Direction::Write,
    }
}

impl H2Conn {
    /// A connection whose client writes in `client_dir`; that direction's stream continues
    /// at `client_pos` (just after the preface), the other's at 0.
    pub(crate) fn new(client_dir: Direction, client_pos: u64) -> Self {
        let mut pos = [0; 2];
        pos[idx(client_dir)] = client_pos;
        Self {
            frames: [FrameDecoder::default(), FrameDecoder::default()],
            pos,
            state: State {
                client_dir,
                hpack: [HpackDecoder::default(), HpackDecoder::default()],
                block: [None, None],
                frame_size: [None, None],
                streams: HashMap::new(),
                next_exchange: 0,
                last_ktime: 0,
                desynced: false,
            },
        }
    }

    /// The connection was given up (see the module docs).
    pub(crate) fn is_desynced(&self) -> bool {
        self.state.desynced
    }

    /// The observed process's role.
    fn role(&self) -> Role {
        match self.state.client_dir {
            Direction::Write => Role::Client,
            Direction::Read => Role::Server,
        }
    }

    pub(crate) fn data(
        &mut self,
        dir: Direction,
        offset: u64,
        data: &[u8],
        ktime: u64,
        ctx: &mut Ctx<'_>,
    ) {
        let i = idx(dir);
        let mut data = data;
        if offset > self.pos[i] {
            self.gap(dir, self.pos[i], offset - self.pos[i], ctx);
        } else if offset < self.pos[i] {
            let seen = usize::try_from(self.pos[i] - offset).unwrap_or(usize::MAX);
            data = data.get(seen..).unwrap_or_default();
        }
        if data.is_empty() || self.state.desynced {
            return;
        }
        self.pos[i] += data.len() as u64;
        self.state.last_ktime = self.state.last_ktime.max(ktime);
        let role = self.role();
        let mut sink = Sink {
            state: &mut self.state,
            ctx,
            dir,
            role,
        };
        self.frames[i].data(data, ktime, &mut sink);
        self.apply_settings();
    }

    /// `len` bytes at `offset` of `dir` are missing.
    pub(crate) fn gap(&mut self, dir: Direction, offset: u64, len: u64, ctx: &mut Ctx<'_>) {
        let i = idx(dir);
        let end = offset.saturating_add(len);
        let missing = end.saturating_sub(self.pos[i]);
        if missing == 0 || self.state.desynced {
            return;
        }
        self.pos[i] = end;
        let role = self.role();
        let mut sink = Sink {
            state: &mut self.state,
            ctx,
            dir,
            role,
        };
        self.frames[i].gap(missing, &mut sink);
    }

    fn apply_settings(&mut self) {
        for (frames, size) in self.frames.iter_mut().zip(&mut self.state.frame_size) {
            if let Some(size) = size.take() {
                frames.allow_frame_size(size);
            }
        }
        if self.state.desynced {
            // Nothing more is decoded; release the buffers.
            self.frames = [FrameDecoder::default(), FrameDecoder::default()];
            self.state.block = [None, None];
        }
    }

    /// The connection is over: ends every open stream.
    pub(crate) fn wind_up(&mut self, ctx: &mut Ctx<'_>) {
        let role = self.role();
        let mut sink = Sink {
            state: &mut self.state,
            ctx,
            dir: Direction::Write,
            role,
        };
        sink.end_all();
    }
}

/// A direction's frames talking to the connection's streams.
struct Sink<'s, 'c> {
    state: &'s mut State,
    ctx: &'s mut Ctx<'c>,
    /// The direction the frames travel in.
    dir: Direction,
    role: Role,
}

impl Sink<'_, '_> {
    fn is_request_dir(&self) -> bool {
        self.dir == self.state.client_dir
    }

    fn desync(&mut self, why: &Desync) {
        if self.state.desynced {
            return;
        }
        self.ctx.stats.h2_desynced += 1;
        log::debug!("http2: {:?} {:?}: {why}", self.ctx.key, self.dir);
        self.end_all();
        self.state.desynced = true;
    }

    /// Ends every open stream: responses interrupted, requests abandoned.
    fn end_all(&mut self) {
        let mut streams: Vec<(u32, Stream)> = self.state.streams.drain().collect();
        streams.sort_by_key(|(_, s)| s.exchange);
        for (_, stream) in streams {
            self.end_stream_early(stream);
        }
    }

    /// A stream that will not complete: interrupted if its response started, else abandoned.
    fn end_stream_early(&mut self, mut stream: Stream) {
        if let Some(response) = stream.response.take() {
            let ktime = response.last_ktime;
            self.finish_response(stream.exchange, response, ResponseEnd::Interrupted, ktime);
            return;
        }
        if !stream.request_emitted {
            self.emit_request(&mut stream, false);
        }
        self.ctx.stats.abandoned += 1;
        (self.ctx.emit)(HttpEvent::Abandoned {
            conn: self.ctx.key,
            exchange: stream.exchange,
            ktime_ns: self.state.last_ktime,
        });
    }

    fn on_settings(&mut self, header: &FrameHeader, payload: &[u8], skipped: bool) {
        if header.has(frame::ACK) || header.stream != 0 {
            return;
        }
        if skipped {
            self.ctx.stats.h2_frames_skipped += 1;
            return;
        }
        // Settings the receiver of the other direction's frames advertises.
        let peer = idx(other(self.dir));
        for setting in payload.chunks_exact(6) {
            let id = u16::from_be_bytes([setting[0], setting[1]]);
            let value = u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]);
            match id {
                SETTINGS_HEADER_TABLE_SIZE => self.state.hpack[peer].allow_table_size(value),
                SETTINGS_MAX_FRAME_SIZE => {
                    let slot = &mut self.state.frame_size[peer];
                    *slot = Some(slot.map_or(value, |v| v.max(value)));
                }
                _ => {}
            }
        }
    }

    /// A HEADERS, PUSH_PROMISE or CONTINUATION frame.
    fn on_header_frame(&mut self, header: &FrameHeader, payload: &[u8], ktime: u64) {
        let i = idx(self.dir);
        let fragment = if header.kind == CONTINUATION {
            match &self.state.block[i] {
                Some(b) if b.stream == header.stream => payload,
                _ => return self.desync(&Desync::Continuation),
            }
        } else {
            if self.state.block[i].is_some() {
                return self.desync(&Desync::Continuation);
            }
            let Some(fragment) = header_fragment(header, payload) else {
                return self.desync(&Desync::Framing(FramingLost::BadPadding));
            };
            self.state.block[i] = Some(HeaderBlock {
                stream: header.stream,
                kind: header.kind,
                end_stream: header.kind == HEADERS && header.has(END_STREAM),
                buf: Vec::new(),
                start_ktime: header.start_ktime,
                wire_len: 0,
            });
            fragment
        };
        let Some(block) = self.state.block[i].as_mut() else {
            return;
        };
        if block.buf.len() + fragment.len() > MAX_HEADER_BLOCK {
            return self.desync(&Desync::HeaderBlockTooLarge);
        }
        block.buf.extend_from_slice(fragment);
        block.wire_len += 9 + u64::from(header.len);
        if !header.has(END_HEADERS) {
            return;
        }
        let Some(block) = self.state.block[i].take() else {
            return;
        };
        self.on_header_block(&block, ktime);
    }

    fn on_header_block(&mut self, block: &HeaderBlock, ktime: u64) {
        let limit = self.ctx.config.max_head_bytes;
        let mut fields = Fields::default();
        let result = self.state.hpack[idx(self.dir)].decode(&block.buf, &mut |name, value| {
            fields.add(name, value, limit);
        });
        if let Err(e) = result {
            return self.desync(&Desync::Hpack(e));
        }
        if block.kind == PUSH_PROMISE {
            // Decoded for the HPACK state; pushed responses are not followed.
            return;
        }
        if fields.too_large {
            self.ctx.stats.h2_header_lists_too_large += 1;
            if let Some(stream) = self.state.streams.remove(&block.stream) {
                self.end_stream_early(stream);
            }
            return;
        }
        if self.is_request_dir() {
            self.request_headers(block, fields, ktime);
        } else {
            self.response_headers(block, fields, ktime);
        }
    }

    fn request_headers(&mut self, block: &HeaderBlock, fields: Fields, ktime: u64) {
        if let Some(stream) = self.state.streams.get_mut(&block.stream) {
            // Trailers.
            stream.request_wire(block.wire_len);
            if block.end_stream {
                self.end_request(block.stream, ktime);
            }
            return;
        }
        let Some(method) = fields.pseudo(":method") else {
            self.ctx.stats.parse_errors += 1;
            return;
        };
        if self.state.streams.len() >= MAX_STREAMS {
            self.ctx.stats.h2_streams_over_limit += 1;
            return;
        }
        let exchange = self.state.next_exchange;
        self.state.next_exchange += 1;
        let target = fields.pseudo(":path").unwrap_or("/");
        let headers = fields.headers();
        let content_length = headers.get("content-length").and_then(|v| v.parse().ok());
        let body = RequestBody::new(
            body_coding(&headers),
            !block.end_stream,
            content_length,
            self.ctx,
        );
        let stream = Stream {
            exchange,
            request: RequestBuild {
                request: Some(HttpRequest {
                    method: method.to_owned(),
                    target: redact_query(target),
                    headers,
                    body: SparseBody::default(),
                    wire_len: block.wire_len,
                    start_ktime_ns: block.start_ktime,
                    end_ktime_ns: ktime,
                }),
                body,
            },
            request_emitted: false,
            response: None,
        };
        self.state.streams.insert(block.stream, stream);
        if block.end_stream {
            self.end_request(block.stream, ktime);
        }
    }

    fn response_headers(&mut self, block: &HeaderBlock, fields: Fields, ktime: u64) {
        let Some(stream) = self.state.streams.get_mut(&block.stream) else {
            if fields.pseudo(":status").is_some() {
                self.ctx.stats.orphan_responses += 1;
            }
            return;
        };
        if let Some(response) = stream.response.as_mut() {
            // Trailers.
            response.last_ktime = ktime;
            if block.end_stream {
                self.end_response(block.stream, ktime);
            }
            return;
        }
        let Some(status) = fields.pseudo(":status").and_then(|s| s.parse::<u16>().ok()) else {
            self.ctx.stats.parse_errors += 1;
            return;
        };
        if (100..200).contains(&status) {
            self.ctx.stats.interim_responses += 1;
            return;
        }
        let exchange = stream.exchange;
        // The response may start before its request ended: the request goes first.
        if !stream.request_emitted
            && let Some(mut stream) = self.state.streams.remove(&block.stream)
        {
            self.emit_request(&mut stream, false);
            self.state.streams.insert(block.stream, stream);
        }
        let headers = fields.headers();
        let body = ResponseBody::new(body_coding(&headers), !block.end_stream, self.ctx);
        self.ctx.stats.responses += 1;
        let head = ResponseHead {
            status,
            headers,
            ktime_ns: block.start_ktime,
        };
        (self.ctx.emit)(HttpEvent::ResponseHead {
            conn: self.ctx.key,
            exchange,
            head: &head,
        });
        if let Some(stream) = self.state.streams.get_mut(&block.stream) {
            stream.response = Some(ResponseBuild {
                body,
                last_ktime: ktime,
            });
        }
        if block.end_stream {
            self.end_response(block.stream, ktime);
        }
    }

    fn end_request(&mut self, id: u32, ktime: u64) {
        let Some(mut stream) = self.state.streams.remove(&id) else {
            return;
        };
        if !stream.request_emitted {
            if let Some(r) = stream.request.request.as_mut() {
                r.end_ktime_ns = ktime;
            }
            self.emit_request(&mut stream, true);
        }
        self.state.streams.insert(id, stream);
    }

    fn end_response(&mut self, id: u32, ktime: u64) {
        let Some(mut stream) = self.state.streams.remove(&id) else {
            return;
        };
        if let Some(response) = stream.response.take() {
            self.finish_response(stream.exchange, response, ResponseEnd::Complete, ktime);
        }
        // The stream is over for the observer; request DATA still in flight is ignored.
    }

    fn on_rst_stream(&mut self, id: u32) {
        if let Some(stream) = self.state.streams.remove(&id) {
            self.ctx.stats.h2_streams_reset += 1;
            self.end_stream_early(stream);
        }
    }

    /// Emits the stream's request; `complete` when its END_STREAM was seen.
    fn emit_request(&mut self, stream: &mut Stream, complete: bool) {
        let build = &mut stream.request;
        let Some(mut request) = build.request.take() else {
            return;
        };
        stream.request_emitted = true;
        request.body = build.body.finish(complete, self.ctx);
        self.ctx.stats.requests += 1;
        (self.ctx.emit)(HttpEvent::Request {
            conn: self.ctx.key,
            exchange: stream.exchange,
            role: self.role,
            request: &request,
        });
    }

    fn finish_response(
        &mut self,
        exchange: u64,
        mut build: ResponseBuild,
        end: ResponseEnd,
        ktime: u64,
    ) {
        // HTTP/2 frames carry their lengths: only an undecodable body leaves a gap.
        build.body.end(exchange, end, ktime, self.ctx);
    }
}

impl Stream {
    fn request_wire(&mut self, len: u64) {
        if let Some(r) = self.request.request.as_mut() {
            r.wire_len += len;
        }
    }
}

/// The content coding these headers declare.
fn body_coding(headers: &Headers) -> Result<Coding, DecodeError> {
    coding_of(
        headers
            .iter()
            .filter(|(n, _)| *n == "content-encoding")
            .map(|(_, v)| v.as_bytes()),
    )
}

/// The header block fragment of a HEADERS or PUSH_PROMISE payload: padding, priority and
/// the promised stream id removed. `None` when the padding is longer than the frame.
fn header_fragment<'p>(header: &FrameHeader, payload: &'p [u8]) -> Option<&'p [u8]> {
    let mut rest = payload;
    let mut pad = 0usize;
    if header.has(PADDED) {
        let (&p, r) = rest.split_first()?;
        pad = usize::from(p);
        rest = r;
    }
    let skip = match header.kind {
        HEADERS if header.has(PRIORITY_FLAG) => 5,
        PUSH_PROMISE => 4,
        _ => 0,
    };
    let rest = rest.get(skip..)?;
    rest.get(..rest.len().checked_sub(pad)?)
}

/// A decoded header list: pseudo-headers apart, credentials dropped, bounded.
#[derive(Default)]
struct Fields {
    pseudo: Vec<(String, String)>,
    regular: Vec<(String, Vec<u8>)>,
    size: usize,
    too_large: bool,
}

impl Fields {
    fn add(&mut self, name: &[u8], value: &[u8], limit: usize) {
        self.size += name.len() + value.len() + FIELD_OVERHEAD;
        if self.size > limit {
            self.too_large = true;
        }
        if self.too_large {
            return;
        }
        let name = String::from_utf8_lossy(name).to_ascii_lowercase();
        if name.starts_with(':') {
            self.pseudo
                .push((name, String::from_utf8_lossy(value).into_owned()));
        } else {
            // Headers::from_pairs drops credentials; they are not copied here either.
            if crate::http::types::is_credential_header(&name) {
                return;
            }
            self.regular.push((name, value.to_vec()));
        }
    }

    fn pseudo(&self, name: &str) -> Option<&str> {
        self.pseudo
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The regular headers; `:authority` becomes `host` when there is none (the LLM stage
    /// finds the provider by host).
    fn headers(&self) -> Headers {
        let authority = self
            .pseudo(":authority")
            .filter(|_| !self.regular.iter().any(|(n, _)| n == "host"));
        Headers::from_pairs(
            authority
                .map(|a| ("host", a.as_bytes()))
                .into_iter()
                .chain(self.regular.iter().map(|(n, v)| (n.as_str(), &v[..]))),
        )
    }
}

impl FrameSink for Sink<'_, '_> {
    fn frame(&mut self, header: &FrameHeader, payload: &[u8], skipped: bool, ktime: u64) {
        match header.kind {
            HEADERS | PUSH_PROMISE | CONTINUATION => {
                self.on_header_frame(header, payload, ktime);
            }
            _ if self.state.block[idx(self.dir)].is_some() => {
                // Only CONTINUATION may follow a header block that has not ended (§6.10).
                self.desync(&Desync::Continuation);
            }
            SETTINGS => self.on_settings(header, payload, skipped),
            RST_STREAM => self.on_rst_stream(header.stream),
            _ => {}
        }
    }

    fn data(&mut self, header: &FrameHeader, data: &[u8], ktime: u64) {
        let request_dir = self.is_request_dir();
        let Some(stream) = self.state.streams.get_mut(&header.stream) else {
            return;
        };
        if request_dir {
            let keep = stream.request.request.is_some();
            stream.request.body.push(data, keep, self.ctx);
        } else if let Some(build) = stream.response.as_mut() {
            build.last_ktime = ktime;
            build
                .body
                .push(data, Some(stream.exchange), ktime, self.ctx);
        }
    }

    fn data_gap(&mut self, header: &FrameHeader, len: u64) {
        self.ctx.stats.body_gap_bytes = self.ctx.stats.body_gap_bytes.saturating_add(len);
        let request_dir = self.is_request_dir();
        let Some(stream) = self.state.streams.get_mut(&header.stream) else {
            return;
        };
        if request_dir {
            let keep = stream.request.request.is_some();
            stream.request.body.gap(len, keep, self.ctx.stats);
        } else if let Some(build) = stream.response.as_mut() {
            build.body.gap(len, Some(stream.exchange), self.ctx);
        }
    }

    fn data_end(&mut self, header: &FrameHeader, ktime: u64) {
        if self.state.block[idx(self.dir)].is_some() {
            return self.desync(&Desync::Continuation);
        }
        let request_dir = self.is_request_dir();
        let Some(stream) = self.state.streams.get_mut(&header.stream) else {
            return;
        };
        if request_dir {
            stream.request_wire(9 + u64::from(header.len));
            if header.has(END_STREAM) {
                self.end_request(header.stream, ktime);
            }
        } else if header.has(END_STREAM) {
            self.end_response(header.stream, ktime);
        }
    }

    fn lost(&mut self, why: FramingLost) {
        self.desync(&Desync::Framing(why));
    }
}
