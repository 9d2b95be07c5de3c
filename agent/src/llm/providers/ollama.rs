//! Ollama's native API: `POST /api/chat`, `/api/generate`, `/api/embed` (its OpenAI-compatible
//! `/v1/...` paths are the OpenAI shapes).
//!
//! Request: `model`, `stream`, which **defaults to true** for chat and generate.
//! Response: NDJSON (`application/x-ndjson`) when streaming, one JSON object otherwise. Each
//! line has `model` and `message.content` (chat) or `response` (generate), possibly
//! `thinking` and `tool_calls`; the last has `done: true` (terminal), `done_reason`,
//! `prompt_eval_count` (input; absent when the whole prompt was cached), `eval_count`
//! (output). Errors: `{"error":"…"}` with no type, as the body or as a line mid-stream.
//!
//! These paths are generic, so on an unknown host a request counts only if its body names a
//! model (see the tracker).

use serde_json::Value;

use super::{
    ApiShape, Observed, RequestLine, ResponseParser, Route, at, count, has_content, non_empty,
    parse_json,
};
use crate::llm::{
    LlmError,
    framing::{Framing, Message},
    record::Tokens,
};

pub(crate) struct Ollama;

impl ApiShape for Ollama {
    fn route(&self, req: &RequestLine<'_>) -> Option<Route> {
        if !req.is_post() {
            return None;
        }
        let (api, operation, stream_default) = match req.path {
            "/api/chat" => ("ollama.chat", "chat", true),
            "/api/generate" => ("ollama.generate", "text_completion", true),
            "/api/embed" | "/api/embeddings" => ("ollama.embed", "embeddings", false),
            _ => return None,
        };
        Some(Route {
            stream_default,
            ..Route::new(api, operation)
        })
    }

    fn response_fields(&self) -> &'static [&'static str] {
        &[
            "model",
            "done",
            "done_reason",
            "prompt_eval_count",
            "eval_count",
            "error",
        ]
    }

    fn stream_framing(&self) -> Framing {
        Framing::Lines
    }

    fn parser(&self, _route: &Route) -> Box<dyn ResponseParser> {
        Box::new(OllamaParser)
    }
}

struct OllamaParser;

fn line(v: &Value, obs: &mut Observed, streamed: bool) -> bool {
    if v.get("error").is_some_and(|e| !e.is_null()) {
        obs.error(None);
    }
    obs.model(v.get("model"));
    if v.get("done").and_then(Value::as_bool) == Some(true) {
        obs.terminal = true;
        obs.finish_reason(0, v.get("done_reason"));
    }
    let input = count(v, &["prompt_eval_count"]);
    let output = count(v, &["eval_count"]);
    if input.is_some() || output.is_some() {
        obs.tokens = Tokens {
            input,
            output,
            ..Tokens::default()
        };
    }
    streamed
        && (["response", "thinking"]
            .iter()
            .any(|k| non_empty(v.get(*k)).is_some())
            || ["content", "thinking"]
                .iter()
                .any(|k| non_empty(at(v, &["message", k])).is_some())
            || has_content(at(v, &["message", "tool_calls"])))
}

impl ResponseParser for OllamaParser {
    fn on_message(&mut self, msg: Message<'_>, obs: &mut Observed) -> Result<bool, LlmError> {
        match msg {
            Message::Body(v) => {
                line(v, obs, false);
                Ok(false)
            }
            Message::Line(l) => Ok(line(&parse_json(l)?, obs, true)),
            Message::Sse(ev) => match ev.data {
                Some(d) => Ok(line(&parse_json(d)?, obs, true)),
                None => Ok(false),
            },
            Message::Frame(_) => Ok(false),
        }
    }
}
