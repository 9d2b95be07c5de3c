//! AWS Bedrock InvokeModel: `POST /model/{modelId}/invoke` and
//! `/invoke-with-response-stream`.
//!
//! The body is the model's native format (Anthropic Messages for Claude, Titan, Llama, Nova,
//! Mistral, Cohere, ...). The operation is reported as `chat`: the path does not say whether
//! a native body was a chat or a text completion, and nearly all current models are chat
//! models.
//!
//! Usage: headers `x-amzn-bedrock-input-token-count`, `-output-token-count`, and (prompt
//! caching) `-cache-read-input-token-count`, `-cache-write-input-token-count`; in a stream,
//! the last chunk's `amazon-bedrock-invocationMetrics` (`inputTokenCount`,
//! `outputTokenCount`, `cacheReadInputTokenCount`, `cacheWriteInputTokenCount`), which also
//! marks the stream complete. As with Converse, input reported = input + cache read + cache
//! write.
//!
//! Stream: eventstream `chunk` events whose payload is `{"bytes":"<base64 native JSON>"}`.
//! Finish reasons, id and model are read from the native JSON where the common model
//! families put them.

use serde_json::Value;

use super::{
    ApiShape, Observed, RequestLine, ResponseParser, Route, at, bedrock, count, has_content,
    non_empty, parse_json, sum_with,
};
use crate::{
    http::{Headers, ResponseHead},
    llm::{
        LlmError,
        framing::{Framing, Message},
        record::Tokens,
    },
};

pub(crate) struct BedrockInvoke;

impl ApiShape for BedrockInvoke {
    fn route(&self, req: &RequestLine<'_>) -> Option<Route> {
        bedrock::route(
            req,
            &[("invoke", false), ("invoke-with-response-stream", true)],
            "aws.bedrock.invoke_model",
            "chat",
        )
    }

    fn request_fields(&self) -> &'static [&'static str] {
        &[]
    }

    fn response_fields(&self) -> &'static [&'static str] {
        &[
            "id",
            "model",
            "stop_reason",
            "stopReason",
            "results",
            "outputs",
            "choices",
            "generations",
            "__type",
        ]
    }

    fn stream_framing(&self) -> Framing {
        Framing::EventStream
    }

    fn parser(&self, _route: &Route) -> Box<dyn ResponseParser> {
        Box::new(InvokeParser)
    }
}

struct InvokeParser;

fn header_count(h: &Headers, name: &str) -> Option<u64> {
    h.get(name)?.trim().parse().ok()
}

/// Finish reasons, id and model from a native response or stream chunk; returns whether the
/// chunk carried output.
fn native(v: &Value, obs: &mut Observed) -> bool {
    obs.id(v.get("id"));
    obs.model(v.get("model"));
    // Anthropic stream events.
    if let Some(m) = v.get("message").filter(|_| v.get("type").is_some()) {
        obs.id(m.get("id"));
        obs.model(m.get("model"));
    }
    for key in [
        "stop_reason",
        "stopReason",
        "completionReason",
        "finish_reason",
    ] {
        obs.finish_reason(0, v.get(key));
    }
    obs.finish_reason(0, at(v, &["delta", "stop_reason"]));
    obs.finish_reason(0, at(v, &["messageStop", "stopReason"]));
    for (list, key) in [
        ("results", "completionReason"),
        ("outputs", "stop_reason"),
        ("choices", "finish_reason"),
        ("generations", "finish_reason"),
    ] {
        for (n, item) in v
            .get(list)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            obs.finish_reason(n as u64, item.get(key));
        }
    }
    let d = v.get("delta").unwrap_or(&Value::Null);
    ["text", "partial_json", "thinking"]
        .iter()
        .any(|k| non_empty(d.get(*k)).is_some())
        || ["outputText", "generation", "completion"]
            .iter()
            .any(|k| non_empty(v.get(*k)).is_some())
        || non_empty(at(v, &["contentBlockDelta", "delta", "text"])).is_some()
        || ["outputs", "choices"].iter().any(|list| {
            v.get(*list)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .any(|c| {
                    non_empty(c.get("text")).is_some() || has_content(at(c, &["delta", "content"]))
                })
        })
}

impl ResponseParser for InvokeParser {
    fn on_head(&mut self, head: &ResponseHead, obs: &mut Observed) {
        bedrock::head_error(head, obs);
        let h = &head.headers;
        let input = header_count(h, "x-amzn-bedrock-input-token-count");
        let output = header_count(h, "x-amzn-bedrock-output-token-count");
        if input.is_some() || output.is_some() {
            let cache_read = header_count(h, "x-amzn-bedrock-cache-read-input-token-count");
            let cache_write = header_count(h, "x-amzn-bedrock-cache-write-input-token-count");
            obs.tokens = Tokens {
                input: sum_with(input, &[cache_read, cache_write]),
                output,
                cache_read,
                cache_write,
                reasoning: None,
                estimated: false,
            };
        }
    }

    fn on_message(&mut self, msg: Message<'_>, obs: &mut Observed) -> Result<bool, LlmError> {
        match msg {
            Message::Body(v) => {
                bedrock::body_error(v, obs);
                native(v, obs);
                Ok(false)
            }
            Message::Frame(f) => {
                if bedrock::frame_error(&f, obs) || f.event_type != Some("chunk") {
                    return Ok(false);
                }
                let outer = parse_json(f.payload)?;
                let Some(b64) = outer.get("bytes").and_then(Value::as_str) else {
                    return Ok(false);
                };
                let inner = base64_decode(b64).ok_or(LlmError::Payload("invalid base64"))?;
                let v = parse_json(&inner)?;
                if let Some(m) = v.get("amazon-bedrock-invocationMetrics") {
                    let cache_read = count(m, &["cacheReadInputTokenCount"]);
                    let cache_write = count(m, &["cacheWriteInputTokenCount"]);
                    obs.tokens = Tokens {
                        input: sum_with(count(m, &["inputTokenCount"]), &[cache_read, cache_write]),
                        output: count(m, &["outputTokenCount"]),
                        cache_read,
                        cache_write,
                        reasoning: None,
                        estimated: false,
                    };
                    obs.terminal = true;
                }
                Ok(native(&v, obs))
            }
            Message::Sse(_) | Message::Line(_) => Ok(false),
        }
    }
}

/// Standard base64 (with or without padding).
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for b in s.bytes() {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
pub(crate) fn base64_encode(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(char::from(A[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trip() {
        for s in ["", "a", "ab", "abc", "{\"type\":\"message_stop\"}"] {
            assert_eq!(
                base64_decode(&base64_encode(s.as_bytes())).as_deref(),
                Some(s.as_bytes())
            );
        }
        assert_eq!(base64_decode("aGk").as_deref(), Some(&b"hi"[..]));
        assert_eq!(base64_decode("a*"), None);
    }
}
