//! Cohere chat: `POST /v2/chat` (the v2 SDK, `ClientV2`; also vLLM's `/cohere/v2/chat`) and
//! the older `POST /v1/chat`. Cohere's OpenAI-compatible `/compatibility/v1/chat/completions`
//! is the OpenAI chat shape.
//!
//! Request: `model`, `stream`. Response (v2): `id`, `finish_reason` (`COMPLETE`,
//! `MAX_TOKENS`, `TOOL_CALL`, `ERROR`, ...), `usage` with `billed_units` and `tokens`, each
//! `{input_tokens, output_tokens}`; no model. v1 has `response_id`/`generation_id` and the
//! usage under `meta`.
//!
//! Tokens: `billed_units` (what is billed, and what Cohere's dashboards show), else `tokens`
//! (which also count the prompt template Cohere adds).
//!
//! Stream (v2): SSE events typed `message-start` (id), `content-delta`, `tool-plan-delta`,
//! `tool-call-start`, `tool-call-delta`, ..., `message-end` (terminal: `delta.finish_reason`,
//! `delta.usage`, `delta.error`). v1 streams NDJSON (`application/stream+json`) with
//! `event_type` `text-generation` and a final `stream-end` (`is_finished: true`).
//! Errors: `{"id":…,"message":…}` with no type: the HTTP status.

use serde_json::Value;

use super::{
    ApiShape, Observed, RequestLine, ResponseParser, Route, at, has_content, non_empty, parse_json,
};
use crate::{
    http::ResponseHead,
    llm::{LlmError, framing::Message, record::Tokens},
};

pub(crate) struct CohereChat;

impl ApiShape for CohereChat {
    fn route(&self, req: &RequestLine<'_>) -> Option<Route> {
        (req.is_post() && (req.path.ends_with("/v2/chat") || req.path == "/v1/chat"))
            .then(|| Route::new("cohere.chat", "chat"))
    }

    fn response_fields(&self) -> &'static [&'static str] {
        &[
            "id",
            "response_id",
            "generation_id",
            "finish_reason",
            "usage",
            "meta",
        ]
    }

    fn parser(&self, _route: &Route) -> Box<dyn ResponseParser> {
        Box::new(CohereParser::default())
    }
}

#[derive(Default)]
struct CohereParser {
    /// An error status: the body's `id` identifies the error, not a response.
    error_status: bool,
}

fn usage(u: &Value, obs: &mut Observed) {
    for part in ["billed_units", "tokens"] {
        let input = super::count(u, &[part, "input_tokens"]);
        let output = super::count(u, &[part, "output_tokens"]);
        if input.is_some() || output.is_some() {
            obs.tokens = Tokens {
                input,
                output,
                ..Tokens::default()
            };
            return;
        }
    }
}

/// A whole v2 response, or v1's response (also the `response` of its `stream-end` line).
fn response(v: &Value, obs: &mut Observed) {
    obs.id(v.get("id"));
    obs.id(v.get("response_id"));
    obs.id(v.get("generation_id"));
    obs.finish_reason(0, v.get("finish_reason"));
    if let Some(u) = v.get("usage").or_else(|| v.get("meta")) {
        usage(u, obs);
    }
}

fn event(v: &Value, kind: &str, obs: &mut Observed) -> bool {
    let msg = at(v, &["delta", "message"]).unwrap_or(&Value::Null);
    match kind {
        "message-start" => obs.id(v.get("id")),
        "content-delta" => return non_empty(at(msg, &["content", "text"])).is_some(),
        "tool-plan-delta" => return non_empty(msg.get("tool_plan")).is_some(),
        "tool-call-start" | "tool-call-delta" => return has_content(msg.get("tool_calls")),
        "message-end" => {
            let d = v.get("delta").unwrap_or(&Value::Null);
            obs.finish_reason(0, d.get("finish_reason"));
            if let Some(u) = d.get("usage") {
                usage(u, obs);
            }
            if non_empty(d.get("error")).is_some() {
                obs.error(None);
            }
            obs.terminal = true;
        }
        // v1
        "stream-start" => obs.id(v.get("generation_id")),
        "text-generation" => return non_empty(v.get("text")).is_some(),
        "stream-end" => {
            if let Some(r) = v.get("response") {
                response(r, obs);
            }
            obs.finish_reason(0, v.get("finish_reason"));
            obs.terminal = true;
        }
        _ => {}
    }
    false
}

impl ResponseParser for CohereParser {
    fn on_head(&mut self, head: &ResponseHead, _obs: &mut Observed) {
        self.error_status = head.status >= 400;
    }

    fn on_message(&mut self, msg: Message<'_>, obs: &mut Observed) -> Result<bool, LlmError> {
        match msg {
            Message::Body(v) => {
                if !self.error_status {
                    response(v, obs);
                }
                Ok(false)
            }
            Message::Sse(ev) => {
                let Some(data) = ev.data else {
                    return Ok(false);
                };
                if data.trim_ascii() == b"[DONE]" {
                    return Ok(false);
                }
                let v = parse_json(data)?;
                let kind = v.get("type").and_then(Value::as_str).or(ev.event);
                Ok(event(&v, kind.unwrap_or(""), obs))
            }
            Message::Line(line) => {
                let v = parse_json(line)?;
                let kind = v
                    .get("event_type")
                    .or_else(|| v.get("type"))
                    .and_then(Value::as_str);
                Ok(event(&v, kind.unwrap_or(""), obs))
            }
            Message::Frame(_) => Ok(false),
        }
    }
}
