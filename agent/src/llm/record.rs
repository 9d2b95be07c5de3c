//! The exchange record: everything tokentap knows about one LLM API call. Sinks (metrics,
//! watch, logs, spans) read only this.

use serde::Serialize;

use crate::http::Role;

/// Longest model name, response id, error type or finish reason a record keeps, in bytes.
/// These come from traffic; a longer one (a hostile or broken peer) is cut and marked `…`, so
/// exchange logs, spans and `/v1/stats` stay small whatever a client sends.
pub const MAX_IDENTIFIER_BYTES: usize = 256;

/// `s` cut to [`MAX_IDENTIFIER_BYTES`] at a character boundary.
pub(crate) fn bounded_identifier(mut s: String) -> String {
    if s.len() > MAX_IDENTIFIER_BYTES {
        let mut end = MAX_IDENTIFIER_BYTES;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

/// Token counts. `None` means unknown, never zero.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Tokens {
    /// Input tokens, including cached ones (Anthropic: input + cache read + cache creation).
    pub input: Option<u64>,
    pub output: Option<u64>,
    pub cache_read: Option<u64>,
    pub cache_write: Option<u64>,
    pub reasoning: Option<u64>,
    /// The counts are estimates (a stream that carried no usage), not what the provider said.
    pub estimated: bool,
}

/// One LLM API call.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ExchangeRecord {
    /// `gen_ai.provider.name`: openai, anthropic, gcp.gemini, ..., or the configured name, or
    /// the host for an unknown host speaking a known API shape.
    pub provider: String,
    /// `gen_ai.operation.name`: chat, text_completion, embeddings, generate_content; `other`
    /// for a POST to a known provider host on a path no API shape knows.
    pub operation: String,
    /// The API shape it came from: `openai.chat_completions`, `openai.completions`,
    /// `openai.embeddings`, `openai.responses`, `anthropic.messages`,
    /// `gcp.gemini.generate_content`, `gcp.gemini.embed_content`, `aws.bedrock.converse`,
    /// `aws.bedrock.invoke_model`, `cohere.chat`, `ollama.chat`, `ollama.generate`,
    /// `ollama.embed`; `unknown` with operation `other`.
    pub api: String,
    pub request_model: Option<String>,
    pub response_model: Option<String>,
    pub response_id: Option<String>,
    pub streaming: bool,
    pub role: Option<RoleName>,
    pub server_address: String,
    pub server_port: u16,
    /// HTTP status; `None` when no response arrived.
    pub http_status: Option<u16>,
    /// `error.type`: the provider's error code or type where given (`rate_limit_exceeded`,
    /// `server_error`, `overloaded_error`, `RESOURCE_EXHAUSTED`, `ThrottlingException`, ...),
    /// else the HTTP status code (`"503"`); `_OTHER` for an error reported after a success
    /// status without a type; `stream_interrupted` when a stream ended without its terminal
    /// event; `response_interrupted` when a non-streamed body was cut short; `no_response`
    /// when the connection ended before a response. `None` on success.
    pub error_type: Option<String>,
    pub finish_reasons: Vec<String>,
    pub tokens: Tokens,
    /// Unix time of the request's first byte, in nanoseconds.
    pub start_unix_ns: i128,
    /// Seconds from the request's first byte to the response's first byte.
    pub time_to_first_byte_s: Option<f64>,
    /// Seconds to the first content-bearing stream event (streamed responses only).
    pub time_to_first_chunk_s: Option<f64>,
    /// Seconds between content-bearing chunks after the first, one entry per gap.
    pub time_per_output_chunk_s: Vec<f64>,
    /// Seconds from the request's first byte to the response's last byte.
    pub duration_s: Option<f64>,
    /// Bytes of the request on the wire (head and body).
    pub request_bytes: u64,
    /// Decoded response body bytes (including bytes lost in capture).
    pub response_bytes: u64,
    /// Stream events that carried output content (`time_per_output_chunk_s` has one entry
    /// fewer, unless it was capped).
    pub output_chunks: u64,
    /// Response bytes were lost in capture or could not be decoded, or the request body could
    /// not be decoded: fields left unknown may be unknown for that reason.
    pub capture_gaps: bool,
    pub pid: u32,
    pub executable: String,
    pub container_id: Option<String>,
    /// `service.name`: the process's `OTEL_SERVICE_NAME`, else its Kubernetes workload's name,
    /// else its systemd unit, else its executable (set after the LLM stage).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub service_name: String,
    /// The pod and workload the process runs in; `None` off Kubernetes or when the pod is not
    /// (yet) known (the field is absent then).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub k8s: Option<K8sWorkload>,
    /// The request's W3C `traceparent` header (validated), so a span can join the caller's
    /// trace.
    pub traceparent: Option<String>,
    /// What the call cost, when its model has a price (set by the cost stage).
    pub cost: Option<Cost>,
    /// Anomalies flagged on this call: `repetition_loop`, `prompt_bloat`, `truncated`,
    /// `rate_limited`.
    pub anomalies: Vec<String>,
    /// Prompt and completion text, only with `--capture-content`, truncated and redacted.
    pub content: Option<Content>,
}

/// Where a process runs on Kubernetes: its pod, container and the workload that owns the pod.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub struct K8sWorkload {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    /// The owning workload's name: the Deployment, StatefulSet, DaemonSet, CronJob, Job, or
    /// the pod itself for a bare pod.
    pub workload_name: String,
    /// `Deployment`, `ReplicaSet`, `StatefulSet`, `DaemonSet`, `CronJob`, `Job`, `Pod`, or
    /// the kind of another controller.
    pub workload_kind: String,
}

/// Cost of one call in USD, by token type, and the price entry used.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Cost {
    pub total_usd: f64,
    pub input_usd: f64,
    pub output_usd: f64,
    pub cache_read_usd: f64,
    pub cache_write_usd: f64,
    pub reasoning_usd: f64,
    /// The price table entry that matched (`openai/gpt-4o`).
    pub priced_as: String,
    /// Priced from estimated token counts (see [`Tokens::estimated`]).
    pub estimated: bool,
}

/// Captured content (opt-in), truncated and with secrets redacted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Content {
    pub prompt: Option<String>,
    pub completion: Option<String>,
    /// Either text was cut at the configured size.
    pub truncated: bool,
}

/// Serializable role name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RoleName {
    Client,
    Server,
}

impl From<Role> for RoleName {
    fn from(r: Role) -> Self {
        match r {
            Role::Client => Self::Client,
            Role::Server => Self::Server,
        }
    }
}
