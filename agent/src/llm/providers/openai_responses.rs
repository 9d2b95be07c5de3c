//! OpenAI Responses: `POST …/responses` (also Azure's `/openai/responses` and
//! `/openai/v1/responses`).
//!
//! Request: `model`, `stream`. Response: a response object with `id`, `model`, `status`,
//! `incomplete_details`, `error`, `usage` (`input_tokens` including
//! `input_tokens_details.cached_tokens`, `output_tokens` including
//! `output_tokens_details.reasoning_tokens`).
//!
//! Stream: typed SSE events (`event:` line and `type` field). `response.created` carries id
//! and model; `*.delta` events carry output; the terminal `response.completed`,
//! `response.incomplete` or `response.failed` carries the whole response with its usage. An
//! `error` event may arrive after HTTP 200, with its fields at the top level
//! (`{"type":"error","code":...}`) or nested (`{"type":"error","error":{...}}`).
//!
//! Finish reasons: the API has none per output; the record gets
//! `incomplete_details.reason` for an incomplete response (`max_output_tokens`,
//! `content_filter`), else the response `status` (`completed`, `failed`, `cancelled`).

use serde_json::Value;

use super::{
    ApiShape, Observed, RequestLine, ResponseParser, Route, count, has_content, non_empty,
    openai::{body_error, error_type},
    parse_json,
};
use crate::llm::{LlmError, framing::Message, record::Tokens};

pub(crate) struct OpenAiResponses;

impl ApiShape for OpenAiResponses {
    fn route(&self, req: &RequestLine<'_>) -> Option<Route> {
        (req.is_post() && req.path.ends_with("/responses"))
            .then(|| Route::new("openai.responses", "chat"))
    }

    fn response_fields(&self) -> &'static [&'static str] {
        &[
            "id",
            "model",
            "status",
            "usage",
            "error",
            "incomplete_details",
            "output",
            "object",
            "type",
            "code",
        ]
    }

    fn parser(&self, _route: &Route) -> Box<dyn ResponseParser> {
        Box::new(ResponsesParser)
    }
}

const TERMINAL: &[&str] = &[
    "response.completed",
    "response.incomplete",
    "response.failed",
    "response.cancelled",
];

struct ResponsesParser;

fn apply_response(r: &Value, obs: &mut Observed) {
    if let Some(kind) = body_error(r) {
        obs.error(kind);
    }
    obs.id(r.get("id"));
    obs.model(r.get("model"));
    if let Some(u) = r.get("usage").filter(|u| u.is_object()) {
        let input = count(u, &["input_tokens"]);
        let output = count(u, &["output_tokens"]);
        if input.is_some() || output.is_some() {
            obs.tokens = Tokens {
                input,
                output,
                cache_read: count(u, &["input_tokens_details", "cached_tokens"]),
                cache_write: None,
                reasoning: count(u, &["output_tokens_details", "reasoning_tokens"]),
                estimated: false,
            };
        }
    }
    match r.get("status").and_then(Value::as_str) {
        Some("incomplete") => {
            let reason = r
                .get("incomplete_details")
                .and_then(|d| d.get("reason"))
                .filter(|v| non_empty(Some(v)).is_some())
                .cloned()
                .unwrap_or_else(|| Value::from("incomplete"));
            obs.finish_reason(0, Some(&reason));
        }
        Some(s @ ("completed" | "failed" | "cancelled")) => {
            obs.finish_reason(0, Some(&Value::from(s)));
            if s == "failed" {
                obs.error(None);
            }
        }
        _ => {}
    }
}

impl ResponseParser for ResponsesParser {
    fn on_message(&mut self, msg: Message<'_>, obs: &mut Observed) -> Result<bool, LlmError> {
        let ev = match msg {
            Message::Body(v) => {
                apply_response(v, obs);
                // Whole responses only: a stream's terminal event repeats the output.
                for item in v
                    .get("output")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    for part in item
                        .get("content")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        if part.get("type").and_then(Value::as_str) == Some("output_text") {
                            obs.text(0, part.get("text"));
                        }
                    }
                }
                return Ok(false);
            }
            Message::Sse(ev) => ev,
            Message::Line(_) | Message::Frame(_) => return Ok(false),
        };
        let Some(data) = ev.data else {
            // Too large to keep (a terminal event with a long output): the name still ends
            // the stream; its usage is lost.
            if ev.event.is_some_and(|e| TERMINAL.contains(&e)) {
                obs.terminal = true;
            }
            return Ok(false);
        };
        let v = parse_json(data)?;
        let kind = v
            .get("type")
            .and_then(Value::as_str)
            .or(ev.event)
            .unwrap_or("");
        match kind {
            "response.created" | "response.in_progress" | "response.queued" => {
                if let Some(r) = v.get("response") {
                    apply_response(r, obs);
                }
            }
            k if TERMINAL.contains(&k) => {
                if let Some(r) = v.get("response") {
                    apply_response(r, obs);
                }
                if k == "response.failed" {
                    obs.error(None);
                }
                obs.terminal = true;
            }
            "error" => {
                let kind = match v.get("error").filter(|e| e.is_object()) {
                    Some(nested) => error_type(nested),
                    None => non_empty(v.get("code")).map(str::to_owned),
                };
                obs.error(kind);
            }
            k if k.ends_with(".delta") => {
                if k == "response.output_text.delta" {
                    obs.text(0, v.get("delta"));
                }
                return Ok(has_content(v.get("delta")));
            }
            _ => {}
        }
        Ok(false)
    }
}
