//! AWS Bedrock Converse: `POST /model/{modelId}/converse` and `/converse-stream`.
//!
//! Request: the model is in the path; the body has no `model` or `stream`.
//! Response: `stopReason`, `usage` (`inputTokens` **excluding** `cacheReadInputTokens` and
//! `cacheWriteInputTokens`: input reported = the three summed), `metrics.latencyMs`. No id or
//! model in the body.
//!
//! Stream: `application/vnd.amazon.eventstream` messages whose `:event-type` is
//! `messageStart`, `contentBlockStart`, `contentBlockDelta` (text, tool input, reasoning
//! text), `contentBlockStop`, `messageStop` (`stopReason`; terminal) and `metadata` (usage).
//! Exceptions (`:message-type: exception`) carry their type in `:exception-type`.

use serde_json::Value;

use super::{
    ApiShape, Observed, RequestLine, ResponseParser, Route, at, bedrock, count, non_empty,
    parse_json, sum_with,
};
use crate::{
    http::ResponseHead,
    llm::{
        LlmError,
        framing::{Framing, Message},
        record::Tokens,
    },
};

pub(crate) struct BedrockConverse;

impl ApiShape for BedrockConverse {
    fn route(&self, req: &RequestLine<'_>) -> Option<Route> {
        bedrock::route(
            req,
            &[("converse", false), ("converse-stream", true)],
            "aws.bedrock.converse",
            "chat",
        )
    }

    fn request_fields(&self) -> &'static [&'static str] {
        &[]
    }

    fn response_fields(&self) -> &'static [&'static str] {
        &["stopReason", "usage", "__type"]
    }

    fn stream_framing(&self) -> Framing {
        Framing::EventStream
    }

    fn parser(&self, _route: &Route) -> Box<dyn ResponseParser> {
        Box::new(ConverseParser)
    }
}

struct ConverseParser;

fn usage(u: &Value, obs: &mut Observed) {
    let cache_read = count(u, &["cacheReadInputTokens"]);
    let cache_write = count(u, &["cacheWriteInputTokens"]);
    obs.tokens = Tokens {
        input: sum_with(count(u, &["inputTokens"]), &[cache_read, cache_write]),
        output: count(u, &["outputTokens"]),
        cache_read,
        cache_write,
        reasoning: None,
        estimated: false,
    };
}

impl ResponseParser for ConverseParser {
    fn on_head(&mut self, head: &ResponseHead, obs: &mut Observed) {
        bedrock::head_error(head, obs);
    }

    fn on_message(&mut self, msg: Message<'_>, obs: &mut Observed) -> Result<bool, LlmError> {
        match msg {
            Message::Body(v) => {
                bedrock::body_error(v, obs);
                obs.finish_reason(0, v.get("stopReason"));
                if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
                    usage(u, obs);
                }
                Ok(false)
            }
            Message::Frame(f) => {
                if bedrock::frame_error(&f, obs) {
                    return Ok(false);
                }
                let v = parse_json(f.payload)?;
                match f.event_type {
                    Some("contentBlockDelta") => {
                        let d = v.get("delta").unwrap_or(&Value::Null);
                        return Ok(non_empty(d.get("text")).is_some()
                            || non_empty(at(d, &["toolUse", "input"])).is_some()
                            || non_empty(at(d, &["reasoningContent", "text"])).is_some());
                    }
                    Some("messageStop") => {
                        obs.finish_reason(0, v.get("stopReason"));
                        obs.terminal = true;
                    }
                    Some("metadata") => {
                        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
                            usage(u, obs);
                        }
                    }
                    _ => {}
                }
                Ok(false)
            }
            Message::Sse(_) | Message::Line(_) => Ok(false),
        }
    }
}
