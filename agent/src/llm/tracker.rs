//! The exchange tracker: per-exchange state from request to response end.
//!
//! Receives: [`HttpEvent`]s of all connections. Emits: an [`ExchangeRecord`] when an LLM
//! exchange ends (response end, or the connection ending without a response).
//!
//! Policies:
//! - An exchange is an LLM call when its host is a known provider (built in or configured)
//!   or its request matches a known API shape. On an unknown host, a shape match also needs
//!   a model (from the path or the body) unless the body is only partly known: generic paths
//!   like `/api/chat` or `/…/responses` are otherwise too common. Other exchanges cost a
//!   host lookup and a few path comparisons, and are counted.
//! - At most [`TrackerLimits::max_in_flight`] exchanges are tracked; beyond, the oldest is
//!   dropped (counted, no record).
//! - Memory per exchange does not grow with the response: stream events are parsed as they
//!   arrive (one event buffered, up to [`TrackerLimits::max_event`]); a whole JSON body is
//!   kept up to [`TrackerLimits::max_json_body`] (and all of them together up to
//!   [`TrackerLimits::json_budget`]), beyond which only its head and tail are kept and
//!   scanned; chunk gaps are kept up to [`TrackerLimits::max_chunk_gaps`].

use std::collections::{HashMap, VecDeque};

use serde_json::Value;

use super::{
    LlmError,
    content::{ContentPolicy, prompt_text},
    framing::{
        BoundedBody, EventStreamDecoder, Framing, LineDecoder, Message, SseDecoder, body::BodyView,
    },
    hosts::{ProviderConfig, split_host_port},
    json::{Resolved, TopLevel, pick_top_level, scan_top_level},
    providers::{ApiShape, Observed, RequestLine, ResponseParser, Route, SHAPES, other},
    record::{Content, ExchangeRecord, RoleName, bounded_identifier},
};
use crate::{
    http::{HttpEvent, HttpRequest, ResponseEnd, ResponseHead, Role, SparseBody},
    stream::ConnKey,
};

/// Process facts the pipeline supplies for each connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessContext {
    pub pid: u32,
    pub executable: String,
    pub container_id: Option<String>,
    /// The process's `OTEL_SERVICE_NAME` (nothing else of its environment is kept).
    pub service_name_env: Option<String>,
    /// The systemd unit whose cgroup holds the process (`nginx` for `nginx.service`).
    pub systemd_unit: Option<String>,
}

/// Bounds on what the tracker keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackerLimits {
    /// Exchanges tracked at once; beyond, the oldest is dropped.
    pub max_in_flight: usize,
    /// A non-streamed response body is kept whole up to this many bytes.
    pub max_json_body: usize,
    /// Whole response bodies kept at once, across exchanges, in bytes.
    pub json_budget: usize,
    /// Bytes kept from each end of a response body that is kept partially.
    pub keep_bytes: usize,
    /// Largest stream event read (SSE event data, NDJSON line, eventstream message).
    pub max_event: usize,
    /// Complete request bodies up to this size are parsed whole (larger: scanned).
    pub max_request_parse: usize,
    /// Entries kept in `time_per_output_chunk_s`.
    pub max_chunk_gaps: usize,
}

impl Default for TrackerLimits {
    fn default() -> Self {
        Self {
            max_in_flight: 1024,
            max_json_body: 8 << 20,
            json_budget: 64 << 20,
            keep_bytes: 64 << 10,
            max_event: 8 << 20,
            max_request_parse: 16 << 20,
            max_chunk_gaps: 4096,
        }
    }
}

/// Exchanges dropped without a record, by reason.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DropCounts {
    /// The oldest in-flight exchange, to stay within `max_in_flight`.
    pub in_flight_cap: u64,
    /// A request arrived again for an exchange number still in flight.
    pub replaced: u64,
    /// Idle longer than [`ExchangeTracker::evict_idle`] allowed.
    pub idle: u64,
}

/// Totals since start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LlmStats {
    /// Exchange records emitted.
    pub exchanges: u64,
    /// Of those, requests that never got a response (`error_type` `no_response`).
    pub abandoned: u64,
    /// Exchanges that are not LLM API calls.
    pub ignored_non_llm: u64,
    /// Bodies, events or lines that should have been JSON and were not.
    pub json_errors: u64,
    /// Eventstream messages with a bad CRC, length or headers, and undecodable payloads.
    pub frame_errors: u64,
    /// Stream events larger than `max_event`, read without their data.
    pub oversized_events: u64,
    /// Requests whose body held several different candidate models (reported as unknown).
    pub ambiguous_models: u64,
    /// Response bodies known only partly (over the size limits, cut short, or with gaps).
    pub partial_bodies: u64,
    /// Gaps in response bodies.
    pub response_gaps: u64,
    /// Chunk gaps not kept in `time_per_output_chunk_s` (over `max_chunk_gaps`).
    pub chunk_gaps_capped: u64,
    pub dropped: DropCounts,
}

impl LlmStats {
    /// Every counter with a stable name, for export.
    pub fn counters(&self) -> [(&'static str, u64); 13] {
        let Self {
            exchanges,
            abandoned,
            ignored_non_llm,
            json_errors,
            frame_errors,
            oversized_events,
            ambiguous_models,
            partial_bodies,
            response_gaps,
            chunk_gaps_capped,
            dropped:
                DropCounts {
                    in_flight_cap,
                    replaced,
                    idle,
                },
        } = self;
        [
            ("exchanges", *exchanges),
            ("abandoned", *abandoned),
            ("ignored_non_llm", *ignored_non_llm),
            ("json_errors", *json_errors),
            ("frame_errors", *frame_errors),
            ("oversized_events", *oversized_events),
            ("ambiguous_models", *ambiguous_models),
            ("partial_bodies", *partial_bodies),
            ("response_gaps", *response_gaps),
            ("chunk_gaps_capped", *chunk_gaps_capped),
            ("dropped_in_flight_cap", *in_flight_cap),
            ("dropped_replaced", *replaced),
            ("dropped_idle", *idle),
        ]
    }
}

type Key = (ConnKey, u64);

/// Turns HTTP exchanges with LLM APIs into [`ExchangeRecord`]s.
pub struct ExchangeTracker {
    providers: ProviderConfig,
    limits: TrackerLimits,
    in_flight: HashMap<Key, Exchange>,
    /// Insertion order, for dropping the oldest; entries of finished exchanges are skipped.
    order: VecDeque<(u64, Key)>,
    next_seq: u64,
    /// Bytes held by whole JSON bodies.
    json_held: usize,
    stats: LlmStats,
    content: ContentPolicy,
}

struct Exchange {
    seq: u64,
    role: Role,
    shape: &'static dyn ApiShape,
    route: Route,
    provider: String,
    server_address: String,
    server_port: u16,
    request_model: Option<String>,
    request_stream: bool,
    start_ktime: u64,
    last_ktime: u64,
    request_bytes: u64,
    request_undecodable: bool,
    /// The request's W3C trace context, when it carried a valid one.
    traceparent: Option<String>,
    /// Content capture is on for this process; with it, the prompt text (redacted, cut) and
    /// whether it was cut.
    capture: Option<Option<(String, bool)>>,
    response: Option<Response>,
}

struct Response {
    status: u16,
    head_ktime: u64,
    framing: Framing,
    decoder: Decoder,
    parser: Box<dyn ResponseParser>,
    obs: Observed,
    chunks: ChunkTimes,
    bytes: u64,
    gaps: u64,
    /// The content type says JSON (or nothing): a body that does not parse is an error.
    json_expected: bool,
}

enum Decoder {
    Json(BoundedBody),
    Sse(SseDecoder),
    Lines(LineDecoder),
    EventStream(EventStreamDecoder),
}

#[derive(Default)]
struct ChunkTimes {
    count: u64,
    first: Option<u64>,
    last: Option<u64>,
    gaps: Vec<f64>,
}

fn secs(later: u64, earlier: u64) -> f64 {
    later.saturating_sub(earlier) as f64 / 1e9
}

/// Hands one message to the parser, and notes when output content arrived.
fn deliver(
    parser: &mut dyn ResponseParser,
    obs: &mut Observed,
    chunks: &mut ChunkTimes,
    stats: &mut LlmStats,
    limits: &TrackerLimits,
    msg: Message<'_>,
    ktime: u64,
) {
    match parser.on_message(msg, obs) {
        Ok(true) => {
            chunks.count += 1;
            if let Some(last) = chunks.last {
                if chunks.gaps.len() < limits.max_chunk_gaps {
                    chunks.gaps.push(secs(ktime, last));
                } else {
                    stats.chunk_gaps_capped += 1;
                }
            } else {
                chunks.first = Some(ktime);
            }
            chunks.last = Some(ktime);
        }
        Ok(false) => {}
        Err(LlmError::Json(_)) => stats.json_errors += 1,
        Err(LlmError::Payload(_)) => stats.frame_errors += 1,
    }
}

/// What the request body says: its top-level fields, and whether it was known whole.
fn request_fields(
    body: &SparseBody,
    fields: &'static [&'static str],
    limits: &TrackerLimits,
    stats: &mut LlmStats,
) -> (TopLevel, bool) {
    if fields.is_empty() {
        return (TopLevel::default(), true);
    }
    let keep = |k: &str| fields.contains(&k);
    if let Some(whole) = body.complete() {
        if whole.len() <= limits.max_request_parse {
            match pick_top_level(whole, &keep) {
                Ok(v) => return (TopLevel::from_value(v), true),
                Err(_) => {
                    if whole.trim_ascii_start().first() == Some(&b'{') {
                        stats.json_errors += 1;
                    }
                }
            }
        }
        return (scan_top_level(whole, b"", false, &keep), true);
    }
    let tail_at_end = !body.undecodable && !body.tail.is_empty();
    (
        scan_top_level(&body.head, &body.tail, tail_at_end, &keep),
        false,
    )
}

impl ExchangeTracker {
    pub fn new(providers: ProviderConfig) -> Self {
        Self::with_limits(providers, TrackerLimits::default())
    }

    pub fn with_limits(providers: ProviderConfig, limits: TrackerLimits) -> Self {
        Self {
            providers,
            limits,
            in_flight: HashMap::new(),
            order: VecDeque::new(),
            next_seq: 0,
            json_held: 0,
            stats: LlmStats::default(),
            content: ContentPolicy::default(),
        }
    }

    /// Other bounds; set before any traffic (exchanges in flight keep what they allocated).
    pub fn set_limits(&mut self, limits: TrackerLimits) {
        self.limits = limits;
    }

    /// Whose prompt and completion text goes into records.
    pub fn set_content_policy(&mut self, policy: ContentPolicy) {
        self.content = policy;
    }

    pub fn stats(&self) -> &LlmStats {
        &self.stats
    }

    /// Exchanges waiting for their response to end.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// `unix_ns_of` converts a capture ktime (CLOCK_MONOTONIC ns) to Unix ns.
    pub fn on_http_event(
        &mut self,
        ev: &HttpEvent<'_>,
        ctx: &ProcessContext,
        unix_ns_of: &dyn Fn(u64) -> i128,
        emit: &mut dyn FnMut(ExchangeRecord),
    ) {
        match *ev {
            HttpEvent::Request {
                conn,
                exchange,
                role,
                request,
            } => self.on_request((conn, exchange), role, request, ctx),
            HttpEvent::ResponseHead {
                conn,
                exchange,
                head,
            } => {
                if let Some(mut ex) = self.in_flight.remove(&(conn, exchange)) {
                    // A second final head for one exchange should not happen; if it does,
                    // the first response's buffers go.
                    self.release(&ex);
                    Self::on_head(&mut ex, head, &self.limits);
                    self.in_flight.insert((conn, exchange), ex);
                }
            }
            HttpEvent::ResponseBody {
                conn,
                exchange,
                data,
                ktime_ns,
            } => self.on_body((conn, exchange), data, ktime_ns),
            HttpEvent::ResponseGap {
                conn,
                exchange,
                len,
            } => self.on_gap((conn, exchange), len),
            HttpEvent::ResponseEnd {
                conn,
                exchange,
                end,
                ktime_ns,
            } => {
                if let Some(ex) = self.in_flight.remove(&(conn, exchange)) {
                    emit(self.finish(ex, Some(end), ktime_ns, ctx, unix_ns_of));
                }
            }
            HttpEvent::Abandoned {
                conn,
                exchange,
                ktime_ns,
            } => {
                if let Some(ex) = self.in_flight.remove(&(conn, exchange)) {
                    let end = ex.response.is_some().then_some(ResponseEnd::Interrupted);
                    emit(self.finish(ex, end, ktime_ns, ctx, unix_ns_of));
                }
            }
        }
        self.compact_order();
    }

    /// Drops exchanges with no event for `max_idle_ns` (no record); returns how many.
    pub fn evict_idle(&mut self, now_ktime_ns: u64, max_idle_ns: u64) -> usize {
        let stale: Vec<Key> = self
            .in_flight
            .iter()
            .filter(|(_, ex)| now_ktime_ns.saturating_sub(ex.last_ktime) > max_idle_ns)
            .map(|(k, _)| *k)
            .collect();
        for k in &stale {
            if let Some(ex) = self.in_flight.remove(k) {
                self.release(&ex);
                self.stats.dropped.idle += 1;
            }
        }
        self.compact_order();
        stale.len()
    }

    fn on_request(&mut self, key: Key, role: Role, req: &HttpRequest, ctx: &ProcessContext) {
        let line = RequestLine::new(&req.method, &req.target);
        let (host, port) = req
            .headers
            .get("host")
            .or(line.authority)
            .and_then(|h| split_host_port(h).ok())
            .unwrap_or_default();
        let server_port = port.unwrap_or(443);
        let provider = self.providers.provider_for(&host, server_port);
        let matched = SHAPES.iter().find_map(|s| s.route(&line).map(|r| (*s, r)));
        let (shape, route): (&'static dyn ApiShape, Route) = match (matched, provider) {
            (Some(m), _) => m,
            (None, Some(_)) => match other::route(&line) {
                Some(r) => (&other::Other, r),
                None => {
                    self.stats.ignored_non_llm += 1;
                    return;
                }
            },
            (None, None) => {
                self.stats.ignored_non_llm += 1;
                return;
            }
        };
        let fields = shape.request_fields();
        let (top, complete) = request_fields(&req.body, fields, &self.limits, &mut self.stats);
        let body_model = match top.resolve("model", Value::is_string) {
            Resolved::Value(Value::String(m)) => Some(m),
            Resolved::Ambiguous if route.path_model.is_none() => {
                self.stats.ambiguous_models += 1;
                None
            }
            _ => None,
        };
        let request_model = route
            .path_model
            .clone()
            .or(body_model)
            .or_else(|| route.fallback_model.clone())
            .map(bounded_identifier);
        if provider.is_none()
            && request_model.is_none()
            && complete
            && top.resolve("model", Value::is_string) == Resolved::Absent
        {
            self.stats.ignored_non_llm += 1;
            return;
        }
        let body_stream = match top.resolve("stream", Value::is_boolean) {
            Resolved::Value(Value::Bool(b)) => b,
            Resolved::Absent if complete => route.stream_default,
            _ => false,
        };
        let provider = match provider {
            Some(p) => p.to_owned(),
            None if host.is_empty() => "unknown".to_owned(),
            None => host.clone(),
        };
        let ex = Exchange {
            seq: self.next_seq,
            role,
            shape,
            request_stream: route.path_stream || body_stream,
            route,
            provider,
            server_address: host,
            server_port,
            request_model,
            start_ktime: req.start_ktime_ns,
            last_ktime: req.end_ktime_ns,
            request_bytes: req.wire_len,
            request_undecodable: req.body.undecodable,
            traceparent: req.headers.get("traceparent").and_then(valid_traceparent),
            capture: self
                .content
                .captures(ctx)
                .then(|| prompt_text(&req.body, self.content.max_bytes)),
            response: None,
        };
        self.next_seq += 1;
        if let Some(old) = self.in_flight.remove(&key) {
            self.release(&old);
            self.stats.dropped.replaced += 1;
        }
        while self.in_flight.len() >= self.limits.max_in_flight.max(1) {
            let Some((seq, k)) = self.order.pop_front() else {
                break;
            };
            if self.in_flight.get(&k).is_some_and(|e| e.seq == seq)
                && let Some(old) = self.in_flight.remove(&k)
            {
                self.release(&old);
                self.stats.dropped.in_flight_cap += 1;
            }
        }
        self.order.push_back((ex.seq, key));
        self.in_flight.insert(key, ex);
    }

    fn on_head(ex: &mut Exchange, head: &ResponseHead, limits: &TrackerLimits) {
        let ct = head.headers.get("content-type");
        let framing = match ct.and_then(Framing::from_content_type) {
            Some(f) => f,
            None if ex.request_stream && head.status < 400 => ex.shape.stream_framing(),
            None => Framing::Json,
        };
        let decoder = match framing {
            Framing::Json => Decoder::Json(BoundedBody::new(limits.keep_bytes)),
            Framing::Sse => Decoder::Sse(SseDecoder::new(limits.max_event)),
            Framing::Lines => Decoder::Lines(LineDecoder::new(limits.max_event)),
            Framing::EventStream => Decoder::EventStream(EventStreamDecoder::new(limits.max_event)),
        };
        let mut parser = ex.shape.parser(&ex.route);
        let mut obs = Observed::default();
        parser.on_head(head, &mut obs);
        ex.last_ktime = head.ktime_ns;
        ex.response = Some(Response {
            status: head.status,
            head_ktime: head.ktime_ns,
            framing,
            decoder,
            parser,
            obs,
            chunks: ChunkTimes::default(),
            bytes: 0,
            gaps: 0,
            json_expected: ct.is_none_or(|c| c.to_ascii_lowercase().contains("json")),
        });
    }

    fn on_body(&mut self, key: Key, data: &[u8], ktime: u64) {
        let Self {
            in_flight,
            limits,
            stats,
            json_held,
            ..
        } = self;
        let Some(ex) = in_flight.get_mut(&key) else {
            return;
        };
        ex.last_ktime = ktime;
        let Some(resp) = ex.response.as_mut() else {
            return;
        };
        let Response {
            decoder,
            parser,
            obs,
            chunks,
            bytes,
            ..
        } = resp;
        *bytes += data.len() as u64;
        let parser = parser.as_mut();
        match decoder {
            Decoder::Json(body) => {
                let before = body.held();
                let room = limits.json_budget.saturating_sub(*json_held) + before;
                body.push(data, limits.max_json_body.min(room));
                *json_held = json_held.saturating_sub(before) + body.held();
            }
            Decoder::Sse(d) => d.feed(data, &mut |ev| {
                deliver(parser, obs, chunks, stats, limits, Message::Sse(ev), ktime);
            }),
            Decoder::Lines(d) => d.feed(data, &mut |l| {
                deliver(parser, obs, chunks, stats, limits, Message::Line(l), ktime);
            }),
            Decoder::EventStream(d) => d.feed(data, &mut |f| match f {
                Ok(f) => deliver(parser, obs, chunks, stats, limits, Message::Frame(f), ktime),
                Err(_) => stats.frame_errors += 1,
            }),
        }
    }

    fn on_gap(&mut self, key: Key, len: u64) {
        let Some(resp) = self
            .in_flight
            .get_mut(&key)
            .and_then(|ex| ex.response.as_mut())
        else {
            return;
        };
        self.stats.response_gaps += 1;
        resp.gaps += 1;
        resp.bytes += len;
        match &mut resp.decoder {
            Decoder::Json(b) => b.gap(),
            Decoder::Sse(d) => d.gap(),
            Decoder::Lines(d) => d.gap(),
            Decoder::EventStream(d) => d.gap(),
        }
    }

    /// Returns the bytes an exchange held to the shared budget.
    fn release(&mut self, ex: &Exchange) {
        if let Some(Response {
            decoder: Decoder::Json(b),
            ..
        }) = &ex.response
        {
            self.json_held = self.json_held.saturating_sub(b.held());
        }
    }

    /// Keeps the order queue from filling with entries of finished exchanges.
    fn compact_order(&mut self) {
        if self.order.len() > 2 * self.in_flight.len() + 64 {
            let in_flight = &self.in_flight;
            self.order
                .retain(|(seq, k)| in_flight.get(k).is_some_and(|e| e.seq == *seq));
        }
    }

    /// Reads what is left of the response and builds the record. `end` is `None` when no
    /// response arrived.
    fn finish(
        &mut self,
        mut ex: Exchange,
        end: Option<ResponseEnd>,
        ktime: u64,
        ctx: &ProcessContext,
        unix_ns_of: &dyn Fn(u64) -> i128,
    ) -> ExchangeRecord {
        self.release(&ex);
        let clean = matches!(
            end,
            Some(ResponseEnd::Complete | ResponseEnd::ClosedDelimited)
        );
        if let Some(resp) = ex.response.as_mut() {
            self.drain(resp, ex.shape, clean, ktime);
        }
        let Exchange {
            seq: _,
            role,
            shape: _,
            route,
            provider,
            server_address,
            server_port,
            request_model,
            request_stream,
            start_ktime,
            last_ktime: _,
            request_bytes,
            request_undecodable,
            traceparent,
            capture,
            response,
        } = ex;
        self.stats.exchanges += 1;
        let mut record = ExchangeRecord {
            provider,
            operation: route.operation.to_owned(),
            api: route.api.to_owned(),
            request_model,
            streaming: request_stream,
            role: Some(RoleName::from(role)),
            server_address,
            server_port,
            start_unix_ns: unix_ns_of(start_ktime),
            duration_s: Some(secs(ktime, start_ktime)),
            request_bytes,
            pid: ctx.pid,
            executable: ctx.executable.clone(),
            container_id: ctx.container_id.clone(),
            capture_gaps: request_undecodable,
            traceparent,
            ..ExchangeRecord::default()
        };
        if let Some(prompt) = &capture {
            record.content = Some(Content {
                truncated: prompt.as_ref().is_some_and(|(_, cut)| *cut),
                prompt: prompt.as_ref().map(|(p, _)| p.clone()),
                completion: None,
            });
        }
        let Some(resp) = response else {
            self.stats.abandoned += 1;
            record.error_type = Some("no_response".to_owned());
            return record;
        };
        let Response {
            status,
            head_ktime,
            framing,
            decoder: _,
            parser,
            obs,
            chunks,
            bytes,
            gaps,
            json_expected: _,
        } = resp;
        let stream = framing.is_stream();
        record.error_type = if status >= 400 {
            Some(obs.error_type.clone().unwrap_or_else(|| status.to_string()))
        } else if obs.error_seen {
            Some(
                obs.error_type
                    .clone()
                    .unwrap_or_else(|| "_OTHER".to_owned()),
            )
        } else if stream && !parser.complete(&obs) && (!clean || gaps == 0) {
            // A stream that delivered its terminal event is complete even if the connection
            // was then cut (the OpenAI SDK stops reading at `data: [DONE]` and closes before
            // the last HTTP chunk arrives); one that lost bytes in capture and ended cleanly
            // is not known to be cut short.
            Some("stream_interrupted".to_owned())
        } else if !stream && !clean {
            Some("response_interrupted".to_owned())
        } else {
            None
        };
        record.streaming |= stream;
        record.http_status = Some(status);
        record.error_type = record.error_type.map(bounded_identifier);
        record.finish_reasons = obs
            .finish_reasons()
            .into_iter()
            .map(bounded_identifier)
            .collect();
        record.tokens = obs.tokens;
        record.response_model = obs.response_model.map(bounded_identifier);
        record.response_id = obs.response_id.map(bounded_identifier);
        record.time_to_first_byte_s = Some(secs(head_ktime, start_ktime));
        record.time_to_first_chunk_s = chunks.first.map(|t| secs(t, start_ktime));
        record.time_per_output_chunk_s = chunks.gaps;
        record.output_chunks = chunks.count;
        record.response_bytes = bytes;
        record.capture_gaps |= gaps > 0;
        if obs.completion.repetition_loop() {
            record.anomalies.push("repetition_loop".to_owned());
        }
        if let Some(content) = record.content.as_mut()
            && !obs.completion.is_empty()
        {
            let (text, cut) = obs.completion.captured(self.content.max_bytes);
            content.completion = Some(text);
            content.truncated |= cut;
        }
        record
    }

    /// Reads the rest of a response at its end: the whole JSON body, or the last stream
    /// event when the stream ended without its blank line.
    fn drain(&mut self, resp: &mut Response, shape: &dyn ApiShape, clean: bool, ktime: u64) {
        let Self { limits, stats, .. } = self;
        let Response {
            decoder,
            parser,
            obs,
            chunks,
            json_expected,
            ..
        } = resp;
        let parser = parser.as_mut();
        match decoder {
            Decoder::Json(body) => {
                let fields = shape.response_fields();
                let keep = |k: &str| fields.contains(&k);
                let value = match body.view(clean) {
                    BodyView::Whole(bytes) if bytes.trim_ascii().is_empty() => None,
                    BodyView::Whole(bytes) => match pick_top_level(bytes, &keep) {
                        Ok(v) => Some(v),
                        Err(_) => {
                            if *json_expected {
                                stats.json_errors += 1;
                            }
                            None
                        }
                    },
                    BodyView::Partial { head, tail } => {
                        stats.partial_bodies += 1;
                        let top = scan_top_level(head, tail, clean, &keep);
                        (!top.exact.is_empty()).then(|| top.exact_object())
                    }
                };
                if let Some(v) = value {
                    deliver(parser, obs, chunks, stats, limits, Message::Body(&v), ktime);
                }
            }
            Decoder::Sse(d) => {
                if clean {
                    d.finish(&mut |ev| {
                        deliver(parser, obs, chunks, stats, limits, Message::Sse(ev), ktime);
                    });
                }
                stats.oversized_events += d.oversized;
            }
            Decoder::Lines(d) => {
                if clean {
                    d.finish(&mut |l| {
                        deliver(parser, obs, chunks, stats, limits, Message::Line(l), ktime);
                    });
                }
                stats.oversized_events += d.oversized;
            }
            Decoder::EventStream(_) => {}
        }
    }
}

/// A W3C `traceparent` (`00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`), lowercased, or
/// None when malformed or all-zero. It comes from traffic, so nothing else is accepted.
pub(crate) fn valid_traceparent(value: &str) -> Option<String> {
    let v = value.trim().to_ascii_lowercase();
    let parts: Vec<&str> = v.split('-').collect();
    let [version, trace, span, flags] = parts.as_slice() else {
        return None;
    };
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    let nonzero = |s: &str| s.bytes().any(|b| b != b'0');
    (hex(version, 2)
        && *version != "ff"
        && hex(trace, 32)
        && nonzero(trace)
        && hex(span, 16)
        && nonzero(span)
        && hex(flags, 2))
    .then_some(v)
}

#[cfg(test)]
mod traceparent_tests {
    use super::valid_traceparent;

    #[test]
    fn only_well_formed_trace_contexts_are_kept() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(valid_traceparent(good).as_deref(), Some(good));
        assert_eq!(
            valid_traceparent(&good.to_uppercase()).as_deref(),
            Some(good)
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert_eq!(valid_traceparent(bad), None, "{bad}");
        }
    }
}
