//! LLM semantics: from HTTP exchanges to [`ExchangeRecord`]s.
//!
//! Receives: [`crate::http::HttpEvent`]s (requests with bounded bodies, response heads,
//! decoded response body chunks, gaps, ends). Emits: one [`ExchangeRecord`] per finished
//! exchange with an LLM API, through [`ExchangeTracker::on_http_event`].
//!
//! Layout:
//! - [`hosts`]: host → provider (built-in table, `--provider` overrides).
//! - `providers/`: one file per API shape (paths, request fields, responses whole and
//!   streamed, usage, errors, the event that ends a stream).
//! - `framing/`: SSE, NDJSON and AWS eventstream decoders, and the bounded JSON body.
//! - `json`: top-level fields of a body known whole or only by its head and tail.
//! - [`tracker`]: per-exchange state, limits, timing, and the record.
//!
//! What the record says, and does not:
//! - Unknown is `None`, never a guess and never zero. A stream without usage (OpenAI chat
//!   without `stream_options.include_usage`) keeps its latency figures and has no token
//!   counts: they are not estimated in this version (`Tokens::estimated` stays false).
//!   Counts a provider reports, zeros included, are recorded as reported.
//! - Input tokens include cached ones: where a provider reports them apart (Anthropic,
//!   Bedrock), input = input + cache read + cache write. Output includes reasoning (Gemini:
//!   candidates + thoughts).
//! - A request model that cannot be known from a partial body (several different candidate
//!   values at an unknown depth) is `None`, and counted.
//! - `error_type`: for HTTP status ≥ 400, the provider's error code or type (OpenAI
//!   `error.code`, else `error.type`; Anthropic `error.type`; Gemini `error.status`; Bedrock
//!   the `x-amzn-errortype` header) or else the status as a string; after a success status,
//!   an error reported in the body or mid-stream (its code or type, else `_OTHER`);
//!   `stream_interrupted` when a stream ended without its terminal event (the connection cut
//!   it, or the body ended before `[DONE]`, `message_stop`, `response.completed` /
//!   `.incomplete` / `.failed`, a Gemini `finishReason`, Ollama `done`, a Bedrock
//!   `messageStop` or invocation metrics, Cohere `message-end`; for OpenAI-style chunks, a
//!   finish reason on every choice also counts, for servers that omit `[DONE]`; not judged
//!   when bytes were lost in capture); `response_interrupted` when a non-streamed body was
//!   cut short; `no_response` when the connection ended before any response.
//! - Time to first chunk is the capture time of the first stream event with output content
//!   (text, tool call, refusal, reasoning text or tool plan; not a role-only or empty delta,
//!   a ping, or usage); time per output chunk, the gaps between such events (events
//!   delivered together have a gap of 0). Both only for streamed responses read as events
//!   (not Gemini's JSON-array streaming without `alt=sse`).
//! - Nothing from headers or bodies is copied into the record beyond its named fields;
//!   prompt and completion text only with content capture on for the process
//!   ([`content::ContentPolicy`]), cut and redacted. The completion text is always read (the
//!   first and last 32 KiB of choice 0) to flag a `repetition_loop`, and dropped with the
//!   exchange.

pub mod content;
mod framing;
pub mod hosts;
mod json;
mod providers;
pub mod record;
pub mod tracker;

#[cfg(test)]
mod tests;

pub use content::ContentPolicy;
pub use hosts::ProviderConfig;
pub use record::*;
pub use tracker::{DropCounts, ExchangeTracker, LlmStats, ProcessContext, TrackerLimits};

/// Why a message could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LlmError {
    #[error("invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("invalid payload: {0}")]
    Payload(&'static str),
}
