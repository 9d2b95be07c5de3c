//! Connections, roles and request/response pairing: the HTTP stage's entry point.
//!
//! Receives: [`StreamItem`]s of every connection in capture order. Emits: [`HttpEvent`]s, in
//! order per connection: `Request`, then its `ResponseHead`, `ResponseBody`/`ResponseGap`
//! pieces and `ResponseEnd`; or `Abandoned` when the connection ends first.
//!
//! Per connection: one [`DirParser`] per direction, the role (decided once, by the first
//! request or status line seen: requests written by the process make it the client), and a
//! FIFO of requests awaiting their response. Timing:
//!
//! - `Request.start_ktime_ns` / `end_ktime_ns`: capture times of the records holding the
//!   request's first and last bytes. A request is emitted when its body is fully framed, or
//!   earlier when its response starts first (a server answering 413 or 401 before the upload
//!   ends, or a final answer to `Expect: 100-continue`): then its body is what arrived so far,
//!   with the rest counted in `missing` when Content-Length tells how much.
//! - `ResponseHead.ktime_ns`: the record holding the status line's first byte.
//! - `ResponseBody.ktime_ns`: the record whose bytes produced the decoded data.
//! - `ResponseEnd.ktime_ns`: the record holding the last byte (after a trailing gap, the last
//!   record seen in that direction); for `ClosedDelimited` and `Interrupted`, the last record
//!   of the response.
//! - `Abandoned.ktime_ns`: the last record seen on the connection.
//!
//! Bodies: a request's body cut short (early response, close) keeps what arrived; with a
//! Content-Length its `total_len` is the declared length and the rest is `missing`,
//! otherwise (chunked, or content-coded) it is marked `undecodable` so it never passes for
//! complete. A response gap in an identity body is reported in place with its exact length.
//! A content-coded response that cannot be decoded to its end (unknown coding, corrupt, a
//! capture gap, the decompression cap) stops producing `ResponseBody` where decoding
//! stopped, and gets one `ResponseGap` just before its `ResponseEnd` whose `len` is the
//! body's whole coded size (after de-chunking): the decoded size is unknowable, and where
//! decoding stopped inside a record is not a stable position. Lost chunked framing ends the
//! response with a `ResponseGap` of the gap's length and `ResponseEnd::Interrupted`.
//!
//! Interim responses (1xx except 101) are skipped. A 101, or a 2xx to CONNECT, gets its head
//! and a `Complete` end, then the connection is no longer parsed. Responses with no request
//! to pair with (the request was missed) are consumed silently and counted.
//!
//! Memory per connection is bounded by the parsers' head and resync buffers, one request's
//! [`SparseBody`] limits, one decompressor, and at most [`MAX_PENDING`] queued requests. At
//! most `max_connections` are tracked; the least recently active one (approximately: a CLOCK
//! sweep) is evicted, with the same events as a close.

use std::collections::{HashMap, VecDeque};

use tokentap_common::Direction;

use super::{
    body::{RequestBody, ResponseBody},
    body_decoder::{Coding, DecodeError, coding_of},
    h2::{self, conn::H2Conn},
    parser::{BodyFraming, DirParser, Head, MessageSink, ParseError, ResponseContext, StartLine},
    types::{
        Headers, HttpEvent, HttpRequest, ResponseEnd, ResponseHead, Role, SparseBody, redact_query,
    },
};
use crate::stream::{ConnKey, StreamItem};

/// Requests queued for a response on one connection; beyond this the oldest is abandoned
/// (only a pipelining client or a lost response direction gets there).
pub(crate) const MAX_PENDING: usize = 64;
/// Output buffer of the decompressors, shared by all connections.
const SCRATCH_LEN: usize = 32 << 10;

/// Bounds of the HTTP stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpConfig {
    /// Decoded bytes kept from the start of a request body.
    pub body_head_limit: usize,
    /// Decoded bytes kept from the end of a request body bigger than the head limit.
    pub body_tail_limit: usize,
    /// Longest request or response head (and chunked trailer section).
    pub max_head_bytes: usize,
    /// Decoded bytes per body past which decompression stops (a decompression bomb).
    pub max_decoded_body: u64,
    /// Connections tracked at once.
    pub max_connections: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            body_head_limit: 256 << 10,
            body_tail_limit: 64 << 10,
            max_head_bytes: 64 << 10,
            max_decoded_body: 64 << 20,
            max_connections: 65536,
        }
    }
}

/// Counters of the HTTP stage.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HttpStats {
    /// `Request` events emitted.
    pub requests: u64,
    /// Final responses paired with a request (`ResponseHead` events).
    pub responses: u64,
    /// 1xx responses skipped (101 is counted in `upgrades` instead).
    pub interim_responses: u64,
    /// Final responses with no request to pair with, consumed silently.
    pub orphan_responses: u64,
    /// Requests that never got a response (`Abandoned` events).
    pub abandoned: u64,
    /// Responses cut short by the connection's end or lost framing.
    pub interrupted: u64,
    /// Connections that switched protocols (101) or became a CONNECT tunnel.
    pub upgrades: u64,
    /// Connections recognised as not HTTP (PostgreSQL, SMTP, ...; HTTP/2 is counted in
    /// `h2_connections`), or that showed no HTTP within the resynchronisation budget.
    pub non_http_connections: u64,
    /// Times a direction started skipping bytes to find a message start.
    pub resyncs: u64,
    /// Heads or chunked framing that could not be parsed.
    pub parse_errors: u64,
    /// Bodies whose chunked framing was lost (a gap across chunks, bad chunk syntax).
    pub framing_lost: u64,
    /// Body bytes missing from capture (gaps inside bodies).
    pub body_gap_bytes: u64,
    /// Bodies that could not be decoded (unknown coding, corrupt, a gap in compressed data,
    /// capped).
    pub bodies_undecodable: u64,
    /// Bodies cut at `max_decoded_body` (also counted in `bodies_undecodable`).
    pub decompression_capped: u64,
    /// Bytes produced by content decoding (identity bodies are not counted).
    pub decoded_bytes: u64,
    /// Connections evicted because `max_connections` were tracked.
    pub connections_evicted: u64,
    /// Connections recognised as HTTP/2 by the client preface.
    pub h2_connections: u64,
    /// HTTP/2 connections given up: a gap over a frame header or header block, an HPACK or
    /// framing error (their open streams end interrupted; no further exchanges).
    pub h2_desynced: u64,
    /// HTTP/2 streams ended by RST_STREAM.
    pub h2_streams_reset: u64,
    /// HTTP/2 streams not tracked: the connection had its maximum of open streams.
    pub h2_streams_over_limit: u64,
    /// HTTP/2 header lists over `max_head_bytes` (their stream is not tracked).
    pub h2_header_lists_too_large: u64,
    /// HTTP/2 frames skipped unread (a SETTINGS frame too long to parse).
    pub h2_frames_skipped: u64,
}

/// The HTTP stage: all connections' parsers and exchanges.
pub struct HttpTracker {
    config: HttpConfig,
    conns: HashMap<ConnKey, Conn>,
    /// Eviction order (CLOCK): connections in creation order, with their id so entries left
    /// by closed connections are recognised.
    clock: VecDeque<(ConnKey, u64)>,
    next_id: u64,
    stats: HttpStats,
    scratch: Vec<u8>,
}

impl std::fmt::Debug for HttpTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpTracker")
            .field("config", &self.config)
            .field("connections", &self.conns.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

struct Conn {
    id: u64,
    /// Seen since the eviction sweep last passed.
    referenced: bool,
    mode: Mode,
}

enum Mode {
    Http(Box<HttpConn>),
    Http2(Box<H2Conn>),
    /// Not HTTP/1 (or no longer): items are dropped at the cost of a lookup.
    Ignored,
}

struct HttpConn {
    write: DirParser,
    read: DirParser,
    ex: Exchanges,
    /// The first bytes of each direction (write, read), held back from the parsers while
    /// they could be an HTTP/2 opening.
    openings: [Opening; 2],
}

/// The start of a direction while it could still open HTTP/2.
#[derive(Debug)]
enum Opening {
    /// Records from offset 0 (capture time, bytes), held back from the parser.
    Held(Vec<(u64, Vec<u8>)>),
    /// Decided: the direction goes to the HTTP/1 parser.
    Passed,
}

/// Bytes of a direction held back while deciding whether the connection is HTTP/2.
const MAX_OPENING: usize = 1 << 10;

/// The stitching state of one connection.
#[derive(Default)]
struct Exchanges {
    /// The observed process's role, and the direction its requests travel.
    role: Option<(Role, Direction)>,
    http_seen: bool,
    next_exchange: u64,
    /// Requests whose response has not started, oldest first.
    pending: VecDeque<Pending>,
    /// The request whose body is being received.
    request: Option<Box<RequestBuild>>,
    /// The response whose body is being received.
    response: Option<ResponseBuild>,
    /// Stop parsing this connection (not HTTP, or upgraded).
    stop: bool,
    last_ktime: u64,
}

#[derive(Clone, Copy, Debug)]
struct Pending {
    exchange: u64,
    is_head: bool,
    is_connect: bool,
}

struct RequestBuild {
    exchange: u64,
    /// Taken when the request is emitted; the rest of its body is then only counted.
    request: Option<HttpRequest>,
    body: RequestBody,
    /// Declared body length (for the wire length of a request cut short).
    content_length: Option<u64>,
    start_pos: u64,
    head_len: u64,
    last_ktime: u64,
}

struct ResponseBuild {
    /// `None` for an interim or orphan response: consumed without events.
    exchange: Option<u64>,
    body: ResponseBody,
    close_delimited: bool,
    last_ktime: u64,
}

impl ResponseBuild {
    fn silent(ktime: u64) -> Self {
        Self {
            exchange: None,
            body: ResponseBody::silent(),
            close_delimited: false,
            last_ktime: ktime,
        }
    }
}

/// Everything of the tracker an event handler needs besides the connection.
pub(super) struct Ctx<'a> {
    pub(super) key: ConnKey,
    pub(super) config: &'a HttpConfig,
    pub(super) stats: &'a mut HttpStats,
    pub(super) scratch: &'a mut [u8],
    pub(super) emit: &'a mut dyn FnMut(HttpEvent<'_>),
}

impl HttpTracker {
    pub fn new(config: HttpConfig) -> Self {
        Self {
            config,
            conns: HashMap::new(),
            clock: VecDeque::new(),
            next_id: 0,
            stats: HttpStats::default(),
            scratch: vec![0; SCRATCH_LEN],
        }
    }

    pub fn stats(&self) -> &HttpStats {
        &self.stats
    }

    pub fn open_connections(&self) -> usize {
        self.conns.len()
    }

    pub fn on_stream_item(
        &mut self,
        item: &StreamItem<'_, '_>,
        emit: &mut dyn FnMut(HttpEvent<'_>),
    ) {
        match *item {
            StreamItem::Data {
                key,
                offset,
                record,
            } => {
                let ktime = record.common.ktime_ns;
                self.with_conn(key, emit, |mode, ctx| match mode {
                    Mode::Http(http) => {
                        if let Some(client_dir) =
                            http.data(record.direction, offset, record.data, ktime, ctx)
                        {
                            *mode = Mode::Http2(Box::new(http.switch_to_http2(client_dir, ctx)));
                        }
                    }
                    Mode::Http2(h2) => h2.data(record.direction, offset, record.data, ktime, ctx),
                    Mode::Ignored => {}
                });
            }
            StreamItem::Gap {
                key,
                direction,
                offset,
                len,
                cause: _,
            } => {
                self.with_conn(key, emit, |mode, ctx| match mode {
                    Mode::Http(http) => http.gap(direction, offset, len, ctx),
                    Mode::Http2(h2) => h2.gap(direction, offset, len, ctx),
                    Mode::Ignored => {}
                });
            }
            StreamItem::Closed { key, reason: _ } => {
                if let Some(conn) = self.conns.remove(&key) {
                    self.close(key, conn, emit);
                }
                self.compact_clock();
            }
        }
    }

    /// Runs `f` on the connection's state, creating it (and evicting another) if new.
    fn with_conn(
        &mut self,
        key: ConnKey,
        emit: &mut dyn FnMut(HttpEvent<'_>),
        f: impl FnOnce(&mut Mode, &mut Ctx<'_>),
    ) {
        if !self.conns.contains_key(&key) {
            self.open(key, emit);
        }
        let Self {
            config,
            conns,
            clock: _,
            next_id: _,
            stats,
            scratch,
        } = self;
        let Some(conn) = conns.get_mut(&key) else {
            return;
        };
        conn.referenced = true;
        if matches!(conn.mode, Mode::Ignored) {
            return;
        }
        let mut ctx = Ctx {
            key,
            config,
            stats,
            scratch,
            emit,
        };
        f(&mut conn.mode, &mut ctx);
        let done = match &mut conn.mode {
            Mode::Http(http) if http.ex.stop => {
                http.wind_up(&mut ctx);
                true
            }
            // A desynchronised connection has already ended its streams.
            Mode::Http2(h2) => h2.is_desynced(),
            _ => false,
        };
        if done {
            conn.mode = Mode::Ignored;
        }
    }

    fn open(&mut self, key: ConnKey, emit: &mut dyn FnMut(HttpEvent<'_>)) {
        while self.conns.len() >= self.config.max_connections.max(1) {
            if !self.evict_one(emit) {
                break;
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        let conn = Conn {
            id,
            referenced: false,
            mode: Mode::Http(Box::new(HttpConn {
                write: DirParser::new(self.config.max_head_bytes),
                read: DirParser::new(self.config.max_head_bytes),
                ex: Exchanges::default(),
                openings: [Opening::Held(Vec::new()), Opening::Held(Vec::new())],
            })),
        };
        self.conns.insert(key, conn);
        self.clock.push_back((key, id));
        self.compact_clock();
    }

    /// Evicts the first connection the CLOCK hand finds not referenced since its last pass.
    fn evict_one(&mut self, emit: &mut dyn FnMut(HttpEvent<'_>)) -> bool {
        while let Some((key, id)) = self.clock.pop_front() {
            let Some(conn) = self.conns.get_mut(&key).filter(|c| c.id == id) else {
                continue;
            };
            if conn.referenced {
                conn.referenced = false;
                self.clock.push_back((key, id));
                continue;
            }
            if let Some(conn) = self.conns.remove(&key) {
                self.stats.connections_evicted += 1;
                self.close(key, conn, emit);
                return true;
            }
        }
        false
    }

    fn close(&mut self, key: ConnKey, conn: Conn, emit: &mut dyn FnMut(HttpEvent<'_>)) {
        let mut ctx = Ctx {
            key,
            config: &self.config,
            stats: &mut self.stats,
            scratch: &mut self.scratch,
            emit,
        };
        match conn.mode {
            Mode::Http(mut http) => {
                http.pass_openings(&mut ctx);
                http.wind_up(&mut ctx);
            }
            Mode::Http2(mut h2) => h2.wind_up(&mut ctx),
            Mode::Ignored => {}
        }
    }

    /// Drops eviction entries of closed connections once they outnumber live ones.
    fn compact_clock(&mut self) {
        if self.clock.len() > 2 * self.conns.len() + 1024 {
            let conns = &self.conns;
            self.clock
                .retain(|(key, id)| conns.get(key).is_some_and(|c| c.id == *id));
        }
    }
}

impl HttpConn {
    /// Data of `dir`. Returns the client's direction when the connection turns out to be
    /// HTTP/2 (the client preface was just completed).
    fn data(
        &mut self,
        dir: Direction,
        offset: u64,
        data: &[u8],
        ktime: u64,
        ctx: &mut Ctx<'_>,
    ) -> Option<Direction> {
        if let Opening::Held(records) = &mut self.openings[dir as usize] {
            let held: usize = records.iter().map(|(_, d)| d.len()).sum();
            if offset == held as u64 {
                // The direction's first bytes so far: enough to tell the preface.
                let mut first = Vec::with_capacity(h2::PREFACE.len());
                for d in records.iter().map(|(_, d)| &d[..]).chain([data]) {
                    let room = h2::PREFACE.len() - first.len();
                    first.extend_from_slice(d.get(..room.min(d.len())).unwrap_or_default());
                }
                match h2::opening(&first) {
                    h2::Opening::Preface => {
                        records.push((ktime, data.to_vec()));
                        return Some(dir);
                    }
                    h2::Opening::Maybe if held + data.len() <= MAX_OPENING => {
                        records.push((ktime, data.to_vec()));
                        return None;
                    }
                    _ => {}
                }
            }
            // Not an HTTP/2 opening: what was held goes to the parser first.
            self.pass_opening(dir, ctx);
        }
        self.parse(dir, offset, data, ktime, ctx);
        None
    }

    /// Hands the held start of `dir` to the HTTP/1 parser: the direction is not HTTP/2.
    fn pass_opening(&mut self, dir: Direction, ctx: &mut Ctx<'_>) {
        let held = std::mem::replace(&mut self.openings[dir as usize], Opening::Passed);
        if let Opening::Held(records) = held {
            let mut offset = 0;
            for (ktime, data) in records {
                self.parse(dir, offset, &data, ktime, ctx);
                offset += data.len() as u64;
            }
        }
    }

    fn pass_openings(&mut self, ctx: &mut Ctx<'_>) {
        self.pass_opening(Direction::Write, ctx);
        self.pass_opening(Direction::Read, ctx);
    }

    /// The connection is HTTP/2, its client writing in `client_dir`: the held bytes of both
    /// directions go to the HTTP/2 decoder, in capture order.
    fn switch_to_http2(&mut self, client_dir: Direction, ctx: &mut Ctx<'_>) -> H2Conn {
        ctx.stats.h2_connections += 1;
        self.write.stop();
        self.read.stop();
        let mut h2 = H2Conn::new(client_dir, h2::PREFACE.len() as u64);
        let mut records = Vec::new();
        for dir in [Direction::Write, Direction::Read] {
            let held = std::mem::replace(&mut self.openings[dir as usize], Opening::Passed);
            match held {
                Opening::Held(held) => {
                    let mut offset = 0;
                    for (ktime, data) in held {
                        let len = data.len() as u64;
                        records.push((ktime, dir, offset, data));
                        offset += len;
                    }
                }
                Opening::Passed => {
                    // Its start went to the HTTP/1 parser: HPACK cannot be followed.
                    let seen = match dir {
                        Direction::Write => self.write.pos(),
                        Direction::Read => self.read.pos(),
                    };
                    h2.gap(dir, 0, seen.max(1), ctx);
                }
            }
        }
        records.sort_by_key(|(ktime, ..)| *ktime);
        for (ktime, dir, offset, data) in records {
            h2.data(dir, offset, &data, ktime, ctx);
        }
        h2
    }

    fn parse(&mut self, dir: Direction, offset: u64, data: &[u8], ktime: u64, ctx: &mut Ctx<'_>) {
        let Self {
            write,
            read,
            ex,
            openings: _,
        } = self;
        let (parser, peer) = match dir {
            Direction::Write => (write, read),
            Direction::Read => (read, write),
        };
        ex.last_ktime = ex.last_ktime.max(ktime);
        let mut sink = Sink {
            ex,
            ctx,
            dir,
            peer_pos: peer.pos(),
        };
        parser.data(offset, data, ktime, &mut sink);
    }

    fn gap(&mut self, dir: Direction, offset: u64, len: u64, ctx: &mut Ctx<'_>) {
        self.pass_opening(dir, ctx);
        let Self {
            write,
            read,
            ex,
            openings: _,
        } = self;
        let (parser, peer) = match dir {
            Direction::Write => (write, read),
            Direction::Read => (read, write),
        };
        let mut sink = Sink {
            ex,
            ctx,
            dir,
            peer_pos: peer.pos(),
        };
        parser.gap_at(offset, len, &mut sink);
    }

    /// The connection is over (closed, evicted, or no longer parsed): ends what is open.
    fn wind_up(&mut self, ctx: &mut Ctx<'_>) {
        let Self {
            write,
            read,
            ex,
            openings: _,
        } = self;
        write.stop();
        read.stop();
        let Some((_, request_dir)) = ex.role else {
            return;
        };
        let request_pos = match request_dir {
            Direction::Write => write.pos(),
            Direction::Read => read.pos(),
        };
        let mut sink = Sink {
            ex,
            ctx,
            dir: other(request_dir),
            peer_pos: request_pos,
        };
        sink.wind_up();
    }
}

fn other(dir: Direction) -> Direction {
    match dir {
        Direction::Write => Direction::Read,
        Direction::Read => Direction::Write,
    }
}

/// The process's role when requests travel in `dir`.
fn role_of(request_dir: Direction) -> Role {
    match request_dir {
        Direction::Write => Role::Client,
        Direction::Read => Role::Server,
    }
}

/// The body's coding: `Content-Encoding`; a transfer coding other than chunked is not
/// supported (it is all but unused).
fn body_coding(head: &Head<'_, '_>) -> Result<Coding, DecodeError> {
    if head.transfer_coded {
        return Err(DecodeError::Unsupported);
    }
    coding_of(
        head.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("content-encoding"))
            .map(|h| h.value),
    )
}

fn has_body(framing: BodyFraming) -> bool {
    !matches!(
        framing,
        BodyFraming::None | BodyFraming::Length(0) | BodyFraming::Upgrade
    )
}

fn headers_of(head: &Head<'_, '_>) -> Headers {
    Headers::from_pairs(head.headers.iter().map(|h| (h.name, h.value)))
}

/// One direction's parser talking to the connection's exchanges.
struct Sink<'s, 'c> {
    ex: &'s mut Exchanges,
    ctx: &'s mut Ctx<'c>,
    dir: Direction,
    /// Stream offset the other direction has reached.
    peer_pos: u64,
}

impl Sink<'_, '_> {
    fn is_request_dir(&self) -> bool {
        self.ex.role.is_some_and(|(_, d)| d == self.dir)
    }

    fn request_head(&mut self, method: &str, target: &str, head: &Head<'_, '_>) -> bool {
        match self.ex.role {
            Some((_, d)) if d != self.dir => return false,
            Some(_) => {}
            None => self.ex.role = Some((role_of(self.dir), self.dir)),
        }
        self.ex.http_seen = true;
        // A request still open here never ended (cannot happen with a sane parser): emit it.
        if let Some(mut previous) = self.ex.request.take() {
            let wire_len = Self::partial_wire_len(&previous, head.start_pos);
            self.emit_request(&mut previous, wire_len, false);
        }
        let exchange = self.ex.next_exchange;
        self.ex.next_exchange += 1;
        let content_length = match head.framing {
            BodyFraming::Length(n) => Some(n),
            _ => None,
        };
        let body = RequestBody::new(
            body_coding(head),
            has_body(head.framing),
            content_length,
            self.ctx,
        );
        self.ex.request = Some(Box::new(RequestBuild {
            exchange,
            request: Some(HttpRequest {
                method: method.to_owned(),
                target: redact_query(target),
                headers: headers_of(head),
                body: SparseBody::default(),
                wire_len: head.head_len,
                start_ktime_ns: head.start_ktime,
                end_ktime_ns: head.end_ktime,
            }),
            body,
            content_length,
            start_pos: head.start_pos,
            head_len: head.head_len,
            last_ktime: head.end_ktime,
        }));
        self.ex.pending.push_back(Pending {
            exchange,
            is_head: method == "HEAD",
            is_connect: method == "CONNECT",
        });
        if self.ex.pending.len() > MAX_PENDING
            && let Some(oldest) = self.ex.pending.pop_front()
        {
            self.abandon(oldest);
        }
        true
    }

    fn response_head(&mut self, status: u16, head: &Head<'_, '_>) -> bool {
        match self.ex.role {
            Some((_, d)) if d == self.dir => return false,
            Some(_) => {}
            None => {
                let request_dir = other(self.dir);
                self.ex.role = Some((role_of(request_dir), request_dir));
            }
        }
        self.ex.http_seen = true;
        if let Some(previous) = self.ex.response.take() {
            self.finish_response(previous, ResponseEnd::Interrupted, head.start_ktime);
        }
        if (100..200).contains(&status) && status != 101 {
            self.ctx.stats.interim_responses += 1;
            self.ex.response = Some(ResponseBuild::silent(head.end_ktime));
            return true;
        }
        let Some(pending) = self.ex.pending.pop_front() else {
            self.ctx.stats.orphan_responses += 1;
            self.ex.response = Some(ResponseBuild::silent(head.end_ktime));
            return true;
        };
        let exchange = pending.exchange;
        // The response may start before its request is complete: the request goes first.
        if let Some(mut request) = self.ex.request.take() {
            if request.exchange == exchange && request.request.is_some() {
                let wire_len = Self::partial_wire_len(&request, self.peer_pos);
                self.emit_request(&mut request, wire_len, false);
            }
            self.ex.request = Some(request);
        }
        self.ctx.stats.responses += 1;
        let response_head = ResponseHead {
            status,
            headers: headers_of(head),
            ktime_ns: head.start_ktime,
        };
        let conn = self.ctx.key;
        (self.ctx.emit)(HttpEvent::ResponseHead {
            conn,
            exchange,
            head: &response_head,
        });
        if head.framing == BodyFraming::Upgrade {
            (self.ctx.emit)(HttpEvent::ResponseEnd {
                conn,
                exchange,
                end: ResponseEnd::Complete,
                ktime_ns: head.end_ktime,
            });
            self.ctx.stats.upgrades += 1;
            self.ex.stop = true;
            return true;
        }
        let body = ResponseBody::new(body_coding(head), has_body(head.framing), self.ctx);
        self.ex.response = Some(ResponseBuild {
            exchange: Some(exchange),
            body,
            close_delimited: head.framing == BodyFraming::Close,
            last_ktime: head.end_ktime,
        });
        true
    }

    /// Wire length of a request not complete yet, whose direction has reached `pos`.
    fn partial_wire_len(request: &RequestBuild, pos: u64) -> u64 {
        match request.content_length {
            Some(n) => request.head_len.saturating_add(n),
            None => pos.saturating_sub(request.start_pos),
        }
    }

    /// Emits the request; `complete` when its body was fully framed.
    fn emit_request(&mut self, build: &mut RequestBuild, wire_len: u64, complete: bool) {
        let Some(mut request) = build.request.take() else {
            return;
        };
        request.body = build.body.finish(complete, self.ctx);
        request.wire_len = wire_len;
        request.end_ktime_ns = build.last_ktime;
        self.ctx.stats.requests += 1;
        (self.ctx.emit)(HttpEvent::Request {
            conn: self.ctx.key,
            exchange: build.exchange,
            role: self.ex.role.map_or(Role::Client, |(r, _)| r),
            request: &request,
        });
    }

    /// A request that will get no response: emitted first if it was not yet.
    fn abandon(&mut self, pending: Pending) {
        if let Some(mut request) = self.ex.request.take() {
            if request.exchange == pending.exchange && request.request.is_some() {
                let wire_len = Self::partial_wire_len(&request, self.peer_pos);
                self.emit_request(&mut request, wire_len, false);
            }
            self.ex.request = Some(request);
        }
        self.ctx.stats.abandoned += 1;
        (self.ctx.emit)(HttpEvent::Abandoned {
            conn: self.ctx.key,
            exchange: pending.exchange,
            ktime_ns: self.ex.last_ktime,
        });
    }

    fn finish_response(&mut self, mut build: ResponseBuild, end: ResponseEnd, ktime: u64) {
        if let Some(exchange) = build.exchange {
            build.body.end(exchange, end, ktime, self.ctx);
        }
    }

    /// Ends whatever is open: the response (close-delimited or interrupted), the request in
    /// progress, and every request still waiting.
    fn wind_up(&mut self) {
        if let Some(response) = self.ex.response.take() {
            let end = if response.close_delimited {
                ResponseEnd::ClosedDelimited
            } else {
                ResponseEnd::Interrupted
            };
            let ktime = response.last_ktime;
            self.finish_response(response, end, ktime);
        }
        while let Some(pending) = self.ex.pending.pop_front() {
            self.abandon(pending);
        }
        self.ex.request = None;
    }
}

impl MessageSink for Sink<'_, '_> {
    fn response_context(&mut self) -> ResponseContext {
        self.ex
            .pending
            .front()
            .map(|p| ResponseContext {
                request_is_head: p.is_head,
                request_is_connect: p.is_connect,
            })
            .unwrap_or_default()
    }

    fn head(&mut self, head: &Head<'_, '_>) -> bool {
        match head.start {
            StartLine::Request { method, target } => self.request_head(method, target, head),
            StartLine::Response { status } => self.response_head(status, head),
        }
    }

    fn body(&mut self, data: &[u8], ktime: u64) {
        if self.is_request_dir() {
            if let Some(build) = self.ex.request.as_mut() {
                build.last_ktime = ktime;
                let keep = build.request.is_some();
                build.body.push(data, keep, self.ctx);
            }
        } else if let Some(build) = self.ex.response.as_mut() {
            build.last_ktime = ktime;
            build.body.push(data, build.exchange, ktime, self.ctx);
        }
    }

    fn body_gap(&mut self, len: u64) {
        self.ctx.stats.body_gap_bytes = self.ctx.stats.body_gap_bytes.saturating_add(len);
        if self.is_request_dir() {
            if let Some(build) = self.ex.request.as_mut() {
                let keep = build.request.is_some();
                build.body.gap(len, keep, self.ctx.stats);
            }
        } else if let Some(build) = self.ex.response.as_mut() {
            build.body.gap(len, build.exchange, self.ctx);
        }
    }

    fn end(&mut self, ktime: u64, wire_len: u64) {
        if self.is_request_dir() {
            if let Some(mut build) = self.ex.request.take() {
                build.last_ktime = ktime;
                self.emit_request(&mut build, wire_len, true);
            }
        } else if let Some(build) = self.ex.response.take() {
            self.finish_response(build, ResponseEnd::Complete, ktime);
        }
    }

    fn lost(&mut self, ktime: u64, wire_len: u64, gap: u64) {
        self.ctx.stats.framing_lost += 1;
        if self.is_request_dir() {
            if let Some(mut build) = self.ex.request.take() {
                let keep = build.request.is_some();
                build.body.lose(gap, keep, self.ctx.stats);
                self.emit_request(&mut build, wire_len, false);
            }
        } else if let Some(mut build) = self.ex.response.take() {
            build
                .body
                .lose(gap, build.exchange.is_some(), self.ctx.stats);
            let ktime = build.last_ktime.max(ktime);
            self.finish_response(build, ResponseEnd::Interrupted, ktime);
        }
    }

    fn resync(&mut self) {
        self.ctx.stats.resyncs += 1;
    }

    fn error(&mut self, error: ParseError) {
        self.ctx.stats.parse_errors += 1;
        // The error's text never holds header values.
        log::debug!("http: {:?} {:?}: {error}", self.ctx.key, self.dir);
    }

    fn not_http(&mut self) {
        if !self.ex.stop {
            self.ctx.stats.non_http_connections += 1;
            self.ex.stop = true;
        }
    }

    fn http_seen(&self) -> bool {
        self.ex.http_seen
    }
}

#[cfg(test)]
#[path = "tracker_tests.rs"]
mod tests;
