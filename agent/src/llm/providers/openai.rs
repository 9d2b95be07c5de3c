//! What the OpenAI shapes share: the error object, the chat/completions usage object, Azure
//! deployment paths, and the parser for `choices`-style responses (chat completions and
//! legacy completions, whole or streamed).
//!
//! Also used by the many OpenAI-compatible servers (vLLM, OpenRouter, Groq, Mistral, DeepSeek,
//! Together, xAI, Ollama's `/v1`, ...): their quirks are handled here.

use serde_json::Value;

use super::{Observed, ResponseParser, at, count, non_empty, parse_json};
use crate::llm::{LlmError, framing::Message, record::Tokens};

/// `error.type` of an OpenAI-style error object: a string `code` (`rate_limit_exceeded`),
/// else `type` (`server_error`), else a numeric `code` (OpenRouter, vLLM).
pub(crate) fn error_type(err: &Value) -> Option<String> {
    if let Some(code) = non_empty(err.get("code")) {
        return Some(code.to_owned());
    }
    if let Some(t) = non_empty(err.get("type")) {
        return Some(t.to_owned());
    }
    err.get("code")
        .filter(|c| c.is_number())
        .map(Value::to_string)
}

/// The error a body or stream chunk reports, if any: `{"error":{...}}`, `{"error":"text"}`
/// or vLLM's `{"object":"error",...}`. `Some(None)` is an error without a type.
pub(crate) fn body_error(v: &Value) -> Option<Option<String>> {
    match v.get("error") {
        Some(e @ Value::Object(_)) => return Some(error_type(e)),
        Some(Value::String(s)) if !s.is_empty() => return Some(None),
        _ => {}
    }
    (v.get("object").and_then(Value::as_str) == Some("error")).then(|| error_type(v))
}

/// Tokens from a chat/completions `usage` object. `None` when it has no counts.
pub(crate) fn usage(u: &Value) -> Option<Tokens> {
    let input = count(u, &["prompt_tokens"]);
    let output = count(u, &["completion_tokens"]);
    if input.is_none() && output.is_none() {
        return None;
    }
    Some(Tokens {
        input,
        output,
        // DeepSeek reports cache hits as `prompt_cache_hit_tokens`.
        cache_read: count(u, &["prompt_tokens_details", "cached_tokens"])
            .or_else(|| count(u, &["prompt_cache_hit_tokens"])),
        cache_write: None,
        reasoning: count(u, &["completion_tokens_details", "reasoning_tokens"]),
        estimated: false,
    })
}

/// The deployment in an Azure path `/openai/deployments/{deployment}/...`.
pub(crate) fn azure_deployment(path: &str) -> Option<String> {
    let rest = path.split_once("/openai/deployments/")?.1;
    let dep = rest.split('/').next().filter(|d| !d.is_empty())?;
    Some(super::percent_decode(dep))
}

pub(crate) const CHOICES_RESPONSE_FIELDS: &[&str] = &[
    "id", "model", "choices", "usage", "error", "object", "type", "code",
];

/// Parser for `choices`-style responses.
pub(crate) struct ChoicesParser {
    /// Whether a streamed choice carries output content.
    content: fn(&Value) -> bool,
    /// Choice indexes seen in a stream.
    seen: Vec<u64>,
}

impl ChoicesParser {
    pub(crate) fn new(content: fn(&Value) -> bool) -> Self {
        Self {
            content,
            seen: Vec::new(),
        }
    }

    fn chunk(&mut self, v: &Value, obs: &mut Observed, streamed: bool) -> bool {
        if let Some(kind) = body_error(v) {
            obs.error(kind);
        }
        obs.model(v.get("model"));
        obs.id(v.get("id"));
        let mut content = false;
        for (n, c) in v
            .get("choices")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let index = count(c, &["index"]).unwrap_or(n as u64);
            if streamed && !self.seen.contains(&index) && self.seen.len() < 128 {
                self.seen.push(index);
            }
            obs.finish_reason(index, c.get("finish_reason"));
            // Chat: `message.content` whole, `delta.content` streamed; completions: `text`.
            let text = c
                .get(if streamed { "delta" } else { "message" })
                .and_then(|m| m.get("content"))
                .or_else(|| c.get("text"));
            obs.text(index, text);
            content |= streamed && (self.content)(c);
        }
        // Usage may come in every chunk (vLLM continuous usage, OpenRouter): the last wins.
        // Groq puts it in `x_groq.usage` of the last chunk.
        if let Some(t) = [v.get("usage"), at(v, &["x_groq", "usage"])]
            .into_iter()
            .flatten()
            .find_map(usage)
        {
            obs.tokens = t;
        }
        content
    }
}

impl ResponseParser for ChoicesParser {
    fn on_message(&mut self, msg: Message<'_>, obs: &mut Observed) -> Result<bool, LlmError> {
        match msg {
            Message::Body(v) => {
                self.chunk(v, obs, false);
                Ok(false)
            }
            Message::Sse(ev) => {
                let Some(data) = ev.data else {
                    return Ok(false);
                };
                if data.trim_ascii() == b"[DONE]" {
                    obs.terminal = true;
                    return Ok(false);
                }
                let v = parse_json(data)?;
                if ev.event == Some("error") && body_error(&v).is_none() {
                    obs.error(None);
                }
                Ok(self.chunk(&v, obs, true))
            }
            Message::Line(line) => Ok(self.chunk(&parse_json(line)?, obs, true)),
            Message::Frame(_) => Ok(false),
        }
    }

    /// `[DONE]`, or (servers that omit it) every choice seen has its finish reason, and the
    /// body ended where its framing said.
    fn complete(&self, obs: &Observed) -> bool {
        obs.terminal
            || (!self.seen.is_empty() && self.seen.iter().all(|i| obs.has_finish_reason(*i)))
    }
}

/// A chat delta with output: text, a tool or function call, a refusal, reasoning text.
pub(crate) fn chat_delta_has_content(choice: &Value) -> bool {
    let Some(d) = choice.get("delta") else {
        return false;
    };
    ["content", "refusal", "reasoning_content", "reasoning"]
        .iter()
        .any(|k| non_empty(d.get(*k)).is_some())
        || ["tool_calls", "function_call"]
            .iter()
            .any(|k| super::has_content(d.get(*k)))
        || non_empty(at(d, &["audio", "transcript"])).is_some()
}

/// A legacy completion choice with text.
pub(crate) fn completion_text(choice: &Value) -> bool {
    non_empty(choice.get("text")).is_some()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn error_types() {
        let e = json!({"message":"m","type":"tokens","param":null,"code":"rate_limit_exceeded"});
        assert_eq!(error_type(&e).as_deref(), Some("rate_limit_exceeded"));
        let e = json!({"message":"m","type":"server_error","param":null,"code":null});
        assert_eq!(error_type(&e).as_deref(), Some("server_error"));
        let e = json!({"message":"m","code":502});
        assert_eq!(error_type(&e).as_deref(), Some("502"));
        let v = json!({"object":"error","message":"m","type":"BadRequestError","param":null,"code":400});
        assert_eq!(body_error(&v), Some(Some("BadRequestError".into())));
        assert_eq!(body_error(&json!({"error":"model not found"})), Some(None));
        assert_eq!(body_error(&json!({"error":null,"id":"x"})), None);
    }

    #[test]
    fn azure_deployments() {
        assert_eq!(
            azure_deployment("/openai/deployments/gpt4o-prod/chat/completions").as_deref(),
            Some("gpt4o-prod")
        );
        assert_eq!(azure_deployment("/v1/chat/completions"), None);
    }

    #[test]
    fn deltas_with_and_without_content() {
        assert!(!chat_delta_has_content(
            &json!({"delta":{"role":"assistant","content":""}})
        ));
        assert!(!chat_delta_has_content(
            &json!({"delta":{},"finish_reason":"stop"})
        ));
        assert!(chat_delta_has_content(&json!({"delta":{"content":"Hi"}})));
        assert!(chat_delta_has_content(
            &json!({"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":""}}]}})
        ));
        assert!(chat_delta_has_content(
            &json!({"delta":{"reasoning_content":"Let me"}})
        ));
    }
}
