//! Anthropic Messages: `POST …/v1/messages` (also behind gateways and Azure AI Foundry's
//! `/anthropic/v1/messages`), and Claude on Vertex AI:
//! `…/publishers/anthropic/models/{model}:rawPredict` / `:streamRawPredict` (model from the
//! path; the body has none).
//!
//! Not `/v1/messages/count_tokens` or `/v1/messages/batches` (other paths).
//!
//! Request: `model`, `stream`. Response: `id`, `model`, `stop_reason`, `usage` with
//! `input_tokens` that **exclude** `cache_read_input_tokens` and
//! `cache_creation_input_tokens`: input reported = the three summed.
//!
//! Stream: `message_start` (id, model, input usage), `content_block_start`, `ping`,
//! `content_block_delta` (text, tool input JSON, thinking), `message_delta` (`stop_reason`,
//! **cumulative** `usage.output_tokens`, and in newer versions cumulative input counts),
//! `message_stop` (terminal), `error` (`{"type":"error","error":{"type":"overloaded_error"}}`)
//! even after HTTP 200. The output count in `message_start` is a placeholder and is not
//! taken: output stays unknown until `message_delta`.

use serde_json::Value;

use super::{
    ApiShape, Observed, RequestLine, ResponseParser, Route, count, non_empty, parse_json, sum_with,
};
use crate::llm::{LlmError, framing::Message, record::Tokens};

pub(crate) struct AnthropicMessages;

impl ApiShape for AnthropicMessages {
    fn route(&self, req: &RequestLine<'_>) -> Option<Route> {
        if !req.is_post() {
            return None;
        }
        if req.path.ends_with("/v1/messages") {
            return Some(Route::new("anthropic.messages", "chat"));
        }
        let (_, rest) = req.path.split_once("/publishers/anthropic/models/")?;
        let (model, method) = rest.rsplit_once(':')?;
        let path_stream = match method {
            "rawPredict" => false,
            "streamRawPredict" => true,
            _ => return None,
        };
        Some(Route {
            path_model: Some(super::percent_decode(model)).filter(|m| !m.is_empty()),
            path_stream,
            ..Route::new("anthropic.messages", "chat")
        })
    }

    fn response_fields(&self) -> &'static [&'static str] {
        &[
            "id",
            "model",
            "type",
            "stop_reason",
            "usage",
            "error",
            "content",
        ]
    }

    fn parser(&self, _route: &Route) -> Box<dyn ResponseParser> {
        Box::new(MessagesParser::default())
    }
}

#[derive(Default)]
struct MessagesParser {
    input: Option<u64>,
    cache_read: Option<u64>,
    cache_write: Option<u64>,
    output: Option<u64>,
}

impl MessagesParser {
    fn usage(&mut self, u: &Value, with_output: bool, obs: &mut Observed) {
        let set = |slot: &mut Option<u64>, key: &str| {
            if let Some(n) = count(u, &[key]) {
                *slot = Some(n);
            }
        };
        set(&mut self.input, "input_tokens");
        set(&mut self.cache_read, "cache_read_input_tokens");
        set(&mut self.cache_write, "cache_creation_input_tokens");
        if with_output {
            set(&mut self.output, "output_tokens");
        }
        obs.tokens = Tokens {
            input: sum_with(self.input, &[self.cache_read, self.cache_write]),
            output: self.output,
            cache_read: self.cache_read,
            cache_write: self.cache_write,
            reasoning: None,
            estimated: false,
        };
    }
}

fn error(v: &Value, obs: &mut Observed) {
    obs.error(
        v.get("error")
            .and_then(|e| non_empty(e.get("type")))
            .map(str::to_owned),
    );
}

impl ResponseParser for MessagesParser {
    fn on_message(&mut self, msg: Message<'_>, obs: &mut Observed) -> Result<bool, LlmError> {
        let ev = match msg {
            Message::Body(v) => {
                if v.get("type").and_then(Value::as_str) == Some("error")
                    || v.get("error").is_some_and(Value::is_object)
                {
                    error(v, obs);
                    return Ok(false);
                }
                obs.id(v.get("id"));
                obs.model(v.get("model"));
                obs.finish_reason(0, v.get("stop_reason"));
                for block in v
                    .get("content")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    obs.text(0, block.get("text"));
                }
                if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
                    self.usage(u, true, obs);
                }
                return Ok(false);
            }
            Message::Sse(ev) => ev,
            Message::Line(_) | Message::Frame(_) => return Ok(false),
        };
        let Some(data) = ev.data else {
            if ev.event == Some("message_stop") {
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
            "message_start" => {
                if let Some(m) = v.get("message") {
                    obs.id(m.get("id"));
                    obs.model(m.get("model"));
                    if let Some(u) = m.get("usage").filter(|u| u.is_object()) {
                        self.usage(u, false, obs);
                    }
                }
            }
            "content_block_start" => {
                let b = v.get("content_block").unwrap_or(&Value::Null);
                obs.text(0, b.get("text"));
                return Ok(["text", "thinking"]
                    .iter()
                    .any(|k| non_empty(b.get(*k)).is_some()));
            }
            "content_block_delta" => {
                let d = v.get("delta").unwrap_or(&Value::Null);
                obs.text(0, d.get("text"));
                return Ok(["text", "partial_json", "thinking"]
                    .iter()
                    .any(|k| non_empty(d.get(*k)).is_some()));
            }
            "message_delta" => {
                if let Some(d) = v.get("delta") {
                    obs.finish_reason(0, d.get("stop_reason"));
                }
                if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
                    self.usage(u, true, obs);
                }
            }
            "message_stop" => obs.terminal = true,
            "error" => error(&v, obs),
            _ => {}
        }
        Ok(false)
    }
}
