//! One exchange record → one OTLP span (the GenAI client span conventions) and the resource
//! of the process that made the call.

use std::time::{SystemTime, UNIX_EPOCH};

use super::proto::{
    FLAGS_CONTEXT_HAS_IS_REMOTE, FLAGS_CONTEXT_IS_REMOTE, KeyValue, SPAN_ATTRIBUTES, SPAN_END_TIME,
    SPAN_FLAGS, SPAN_KIND, SPAN_KIND_CLIENT, SPAN_KIND_SERVER, SPAN_NAME, SPAN_PARENT_SPAN_ID,
    SPAN_SPAN_ID, SPAN_START_TIME, SPAN_STATUS, SPAN_TRACE_ID, STATUS_CODE, STATUS_CODE_ERROR,
    STATUS_MESSAGE, Value, Writer,
};
use crate::llm::{ExchangeRecord, RoleName};

/// Attribute names, so tests and code cannot drift apart.
pub mod attr {
    pub const PROVIDER: &str = "gen_ai.provider.name";
    pub const OPERATION: &str = "gen_ai.operation.name";
    pub const REQUEST_MODEL: &str = "gen_ai.request.model";
    pub const RESPONSE_MODEL: &str = "gen_ai.response.model";
    pub const RESPONSE_ID: &str = "gen_ai.response.id";
    pub const FINISH_REASONS: &str = "gen_ai.response.finish_reasons";
    pub const INPUT_TOKENS: &str = "gen_ai.usage.input_tokens";
    pub const OUTPUT_TOKENS: &str = "gen_ai.usage.output_tokens";
    pub const CACHE_READ_TOKENS: &str = "gen_ai.usage.cache_read.input_tokens";
    pub const CACHE_CREATION_TOKENS: &str = "gen_ai.usage.cache_creation.input_tokens";
    pub const REASONING_TOKENS: &str = "gen_ai.usage.reasoning.output_tokens";
    pub const STREAM: &str = "gen_ai.request.stream";
    pub const TIME_TO_FIRST_CHUNK: &str = "gen_ai.response.time_to_first_chunk";
    pub const SERVER_ADDRESS: &str = "server.address";
    pub const SERVER_PORT: &str = "server.port";
    pub const HTTP_STATUS: &str = "http.response.status_code";
    pub const ERROR_TYPE: &str = "error.type";
    pub const COST_USD: &str = "tokentap.cost.usd";
    pub const TOKENS_ESTIMATED: &str = "tokentap.usage.estimated";
    pub const CAPTURE_GAPS: &str = "tokentap.capture_gaps";
    pub const ANOMALIES: &str = "tokentap.anomalies";
    pub const API: &str = "tokentap.api";

    pub const SERVICE_NAME: &str = "service.name";
    pub const PROCESS_PID: &str = "process.pid";
    pub const PROCESS_EXECUTABLE_NAME: &str = "process.executable.name";
    pub const CONTAINER_ID: &str = "container.id";
    pub const K8S_NAMESPACE_NAME: &str = "k8s.namespace.name";
    pub const K8S_POD_NAME: &str = "k8s.pod.name";
    pub const K8S_CONTAINER_NAME: &str = "k8s.container.name";
    pub const K8S_DEPLOYMENT_NAME: &str = "k8s.deployment.name";
    pub const K8S_REPLICASET_NAME: &str = "k8s.replicaset.name";
    pub const K8S_STATEFULSET_NAME: &str = "k8s.statefulset.name";
    pub const K8S_DAEMONSET_NAME: &str = "k8s.daemonset.name";
    pub const K8S_JOB_NAME: &str = "k8s.job.name";
    pub const K8S_CRONJOB_NAME: &str = "k8s.cronjob.name";
}

/// The OTel resource attribute naming a workload of `kind`, for the kinds the conventions
/// define.
pub fn workload_attribute(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "Deployment" => attr::K8S_DEPLOYMENT_NAME,
        "ReplicaSet" => attr::K8S_REPLICASET_NAME,
        "StatefulSet" => attr::K8S_STATEFULSET_NAME,
        "DaemonSet" => attr::K8S_DAEMONSET_NAME,
        "Job" => attr::K8S_JOB_NAME,
        "CronJob" => attr::K8S_CRONJOB_NAME,
        _ => return None,
    })
}

/// The workload a record came from, as resource attributes. The seam for richer workload
/// identity: a Kubernetes-aware implementation adds `k8s.*` and a better `service.name`.
pub trait WorkloadResource: Send {
    fn attributes(&mut self, record: &ExchangeRecord) -> Vec<KeyValue>;
}

/// The record's process and workload: `service.name` (the record's service name), the
/// process, the container, and the pod and workload (`k8s.*`) when known.
#[derive(Default)]
pub struct ProcessResource;

impl WorkloadResource for ProcessResource {
    fn attributes(&mut self, record: &ExchangeRecord) -> Vec<KeyValue> {
        let service = [&record.service_name, &record.executable]
            .into_iter()
            .find(|s| !s.is_empty())
            .cloned()
            .unwrap_or_else(|| "unknown_service".to_owned());
        let mut attrs = vec![
            KeyValue::new(attr::SERVICE_NAME, Value::String(service)),
            KeyValue::new(attr::PROCESS_PID, Value::Int(i64::from(record.pid))),
            KeyValue::new(
                attr::PROCESS_EXECUTABLE_NAME,
                Value::String(record.executable.clone()),
            ),
        ];
        if let Some(id) = &record.container_id {
            attrs.push(KeyValue::new(attr::CONTAINER_ID, Value::String(id.clone())));
        }
        if let Some(k8s) = &record.k8s {
            let mut put = |key: &'static str, value: &str| {
                if !value.is_empty() {
                    attrs.push(KeyValue::new(key, Value::String(value.to_owned())));
                }
            };
            put(attr::K8S_NAMESPACE_NAME, &k8s.namespace);
            put(attr::K8S_POD_NAME, &k8s.pod);
            put(attr::K8S_CONTAINER_NAME, &k8s.container);
            if let Some(key) = workload_attribute(&k8s.workload_kind) {
                put(key, &k8s.workload_name);
            }
        }
        attrs
    }
}

/// xorshift64*: span and trace ids need to be unique, not unpredictable.
pub struct IdGenerator {
    state: u64,
}

impl IdGenerator {
    pub fn new() -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Self::with_seed(nanos ^ (u64::from(std::process::id()) << 32))
    }

    pub fn with_seed(seed: u64) -> Self {
        // The state must never be zero.
        Self { state: seed | 1 }
    }

    fn next(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn nonzero(&mut self) -> u64 {
        loop {
            let v = self.next();
            if v != 0 {
                return v;
            }
        }
    }

    pub fn span_id(&mut self) -> [u8; 8] {
        self.nonzero().to_be_bytes()
    }

    pub fn trace_id(&mut self) -> [u8; 16] {
        let mut id = [0; 16];
        id[..8].copy_from_slice(&self.nonzero().to_be_bytes());
        id[8..].copy_from_slice(&self.next().to_be_bytes());
        id
    }
}

impl Default for IdGenerator {
    fn default() -> Self {
        Self::new()
    }
}

/// The parts of a W3C `traceparent` a child span needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParentContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub flags: u8,
}

fn hex_bytes<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != N * 2 {
        return None;
    }
    let mut out = [0; N];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Parses `00-<trace id>-<span id>-<flags>` (the tracker validated it already; all-zero ids
/// are refused here too, as the spec says they are invalid).
pub fn parse_traceparent(value: &str) -> Option<ParentContext> {
    let mut parts = value.split('-');
    let _version = parts.next()?;
    let trace_id = hex_bytes::<16>(parts.next()?)?;
    let span_id = hex_bytes::<8>(parts.next()?)?;
    let [flags] = hex_bytes::<1>(parts.next()?)?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(ParentContext {
        trace_id,
        span_id,
        flags,
    })
}

/// A span before encoding (what the tests look at).
#[derive(Clone, Debug, PartialEq)]
pub struct Span {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub flags: u32,
    pub name: String,
    pub kind: u64,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    pub attributes: Vec<KeyValue>,
    /// `Some(message)`: status ERROR.
    pub error: Option<String>,
}

fn secs_to_ns(s: f64) -> u64 {
    if s.is_finite() && s > 0.0 {
        (s * 1e9).round() as u64
    } else {
        0
    }
}

/// The span of one exchange.
pub fn span_of(record: &ExchangeRecord, ids: &mut IdGenerator) -> Span {
    let ExchangeRecord {
        provider,
        operation,
        api,
        request_model,
        response_model,
        response_id,
        streaming,
        role,
        server_address,
        server_port,
        http_status,
        error_type,
        finish_reasons,
        tokens,
        start_unix_ns,
        time_to_first_byte_s: _,
        time_to_first_chunk_s,
        time_per_output_chunk_s: _,
        duration_s,
        request_bytes: _,
        response_bytes: _,
        output_chunks: _,
        capture_gaps,
        pid: _,
        executable: _,
        container_id: _,
        service_name: _,
        k8s: _,
        traceparent,
        cost,
        anomalies,
        content: _,
    } = record;
    let parent = traceparent.as_deref().and_then(parse_traceparent);
    let (trace_id, parent_span_id, flags) = match parent {
        Some(p) => (
            p.trace_id,
            Some(p.span_id),
            u32::from(p.flags) | FLAGS_CONTEXT_HAS_IS_REMOTE | FLAGS_CONTEXT_IS_REMOTE,
        ),
        // A new trace, sampled: tokentap records every call.
        None => (ids.trace_id(), None, 0x01 | FLAGS_CONTEXT_HAS_IS_REMOTE),
    };
    let model = request_model.as_deref().or(response_model.as_deref());
    let name = match model {
        Some(m) => format!("{operation} {m}"),
        None => operation.clone(),
    };
    let kind = match role {
        Some(RoleName::Server) => SPAN_KIND_SERVER,
        Some(RoleName::Client) | None => SPAN_KIND_CLIENT,
    };
    let start = u64::try_from(*start_unix_ns).unwrap_or(0);
    let end = start.saturating_add(duration_s.map(secs_to_ns).unwrap_or(0));

    let mut a = Vec::with_capacity(24);
    let s = |v: &str| Value::String(v.to_owned());
    let int = |v: u64| Value::Int(i64::try_from(v).unwrap_or(i64::MAX));
    a.push(KeyValue::new(attr::PROVIDER, s(provider)));
    a.push(KeyValue::new(attr::OPERATION, s(operation)));
    if let Some(m) = request_model {
        a.push(KeyValue::new(attr::REQUEST_MODEL, s(m)));
    }
    if let Some(m) = response_model {
        a.push(KeyValue::new(attr::RESPONSE_MODEL, s(m)));
    }
    if let Some(id) = response_id {
        a.push(KeyValue::new(attr::RESPONSE_ID, s(id)));
    }
    if !finish_reasons.is_empty() {
        a.push(KeyValue::new(
            attr::FINISH_REASONS,
            Value::StringArray(finish_reasons.clone()),
        ));
    }
    for (key, count) in [
        (attr::INPUT_TOKENS, tokens.input),
        (attr::OUTPUT_TOKENS, tokens.output),
        (attr::CACHE_READ_TOKENS, tokens.cache_read),
        (attr::CACHE_CREATION_TOKENS, tokens.cache_write),
        (attr::REASONING_TOKENS, tokens.reasoning),
    ] {
        if let Some(n) = count {
            a.push(KeyValue::new(key, int(n)));
        }
    }
    if tokens.estimated {
        a.push(KeyValue::new(attr::TOKENS_ESTIMATED, Value::Bool(true)));
    }
    a.push(KeyValue::new(attr::STREAM, Value::Bool(*streaming)));
    if let Some(t) = time_to_first_chunk_s {
        a.push(KeyValue::new(attr::TIME_TO_FIRST_CHUNK, Value::Double(*t)));
    }
    a.push(KeyValue::new(attr::SERVER_ADDRESS, s(server_address)));
    a.push(KeyValue::new(
        attr::SERVER_PORT,
        Value::Int(i64::from(*server_port)),
    ));
    if let Some(status) = http_status {
        a.push(KeyValue::new(
            attr::HTTP_STATUS,
            Value::Int(i64::from(*status)),
        ));
    }
    if let Some(e) = error_type {
        a.push(KeyValue::new(attr::ERROR_TYPE, s(e)));
    }
    if let Some(c) = cost {
        a.push(KeyValue::new(attr::COST_USD, Value::Double(c.total_usd)));
    }
    if !anomalies.is_empty() {
        a.push(KeyValue::new(
            attr::ANOMALIES,
            Value::StringArray(anomalies.clone()),
        ));
    }
    if *capture_gaps {
        a.push(KeyValue::new(attr::CAPTURE_GAPS, Value::Bool(true)));
    }
    a.push(KeyValue::new(attr::API, s(api)));

    Span {
        trace_id,
        span_id: ids.span_id(),
        parent_span_id,
        flags,
        name,
        kind,
        start_unix_ns: start,
        end_unix_ns: end,
        attributes: a,
        // HTTP semantic conventions: a server leaves the status unset for 4xx (the client's
        // fault); error.type still says what happened.
        error: error_type.clone().filter(|_| {
            !(kind == SPAN_KIND_SERVER && http_status.is_some_and(|s| (400..500).contains(&s)))
        }),
    }
}

impl Span {
    /// The encoded `Span` message (its contents, without the field tag).
    pub fn encode(&self) -> Vec<u8> {
        let Self {
            trace_id,
            span_id,
            parent_span_id,
            flags,
            name,
            kind,
            start_unix_ns,
            end_unix_ns,
            attributes,
            error,
        } = self;
        let mut w = Writer::new();
        w.bytes(SPAN_TRACE_ID, trace_id);
        w.bytes(SPAN_SPAN_ID, span_id);
        if let Some(p) = parent_span_id {
            w.bytes(SPAN_PARENT_SPAN_ID, p);
        }
        w.string(SPAN_NAME, name);
        w.uint(SPAN_KIND, *kind);
        w.fixed64(SPAN_START_TIME, *start_unix_ns);
        w.fixed64(SPAN_END_TIME, *end_unix_ns);
        for kv in attributes {
            w.key_value(SPAN_ATTRIBUTES, kv);
        }
        if let Some(message) = error {
            w.message(SPAN_STATUS, |w| {
                w.string(STATUS_MESSAGE, message);
                w.uint(STATUS_CODE, STATUS_CODE_ERROR);
            });
        }
        w.fixed32(SPAN_FLAGS, *flags);
        w.buf
    }
}
