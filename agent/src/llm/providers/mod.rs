//! API shapes: one file per request/response shape an LLM API speaks.
//!
//! Each shape knows, and is the only place that knows:
//! - which request paths are its own ([`ApiShape::route`]), and what the path says (model,
//!   streaming, operation);
//! - which top-level request body fields it reads;
//! - how its responses report the model, id, finish reasons, token usage and errors, whole and
//!   streamed ([`ResponseParser`]), and what event ends a complete stream.
//!
//! Which provider a host belongs to is separate ([`crate::llm::hosts`]): many providers speak
//! the OpenAI shapes. Adding a shape: one file here, one line in [`SHAPES`], its fixtures
//! under `llm/fixtures/`.

use serde_json::Value;

use super::{
    LlmError,
    content::CompletionText,
    framing::{Framing, Message},
    record::Tokens,
};
use crate::http::ResponseHead;

pub(crate) mod anthropic_messages;
pub(crate) mod bedrock;
pub(crate) mod bedrock_converse;
pub(crate) mod bedrock_invoke;
pub(crate) mod cohere_chat;
pub(crate) mod gemini;
pub(crate) mod ollama;
pub(crate) mod openai;
pub(crate) mod openai_chat;
pub(crate) mod openai_completions;
pub(crate) mod openai_embeddings;
pub(crate) mod openai_responses;
pub(crate) mod other;

/// Every known shape, most specific paths first.
pub(crate) static SHAPES: &[&dyn ApiShape] = &[
    &anthropic_messages::AnthropicMessages,
    &openai_responses::OpenAiResponses,
    &openai_chat::OpenAiChat,
    &openai_completions::OpenAiCompletions,
    &openai_embeddings::OpenAiEmbeddings,
    &gemini::Gemini,
    &bedrock_converse::BedrockConverse,
    &bedrock_invoke::BedrockInvoke,
    &cohere_chat::CohereChat,
    &ollama::Ollama,
];

/// The request line, split.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RequestLine<'a> {
    pub(crate) method: &'a str,
    /// Without the query, without a trailing `/`.
    pub(crate) path: &'a str,
    /// The authority of an absolute-form target (`POST https://host/path`, as sent to a
    /// proxy).
    pub(crate) authority: Option<&'a str>,
}

impl<'a> RequestLine<'a> {
    pub(crate) fn new(method: &'a str, target: &'a str) -> Self {
        let (authority, target) = match target
            .strip_prefix("https://")
            .or_else(|| target.strip_prefix("http://"))
        {
            Some(rest) => {
                let at = rest.find(['/', '?']).unwrap_or(rest.len());
                (Some(&rest[..at]), &rest[at..])
            }
            None => (None, target),
        };
        let path = target.split_once('?').map_or(target, |(p, _)| p);
        let path = path
            .strip_suffix('/')
            .filter(|p| !p.is_empty())
            .unwrap_or(path);
        Self {
            method,
            path,
            authority,
        }
    }

    pub(crate) fn is_post(&self) -> bool {
        self.method.eq_ignore_ascii_case("POST")
    }
}

/// What a request path says about the call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Route {
    /// The shape's name, e.g. `openai.chat_completions`.
    pub(crate) api: &'static str,
    /// `gen_ai.operation.name`.
    pub(crate) operation: &'static str,
    /// The model the path names (Gemini, Vertex, Bedrock): it wins over the body.
    pub(crate) path_model: Option<String>,
    /// The model to report when the body names none (an Azure deployment name).
    pub(crate) fallback_model: Option<String>,
    /// The path asks for a stream (`:streamGenerateContent`, `converse-stream`).
    pub(crate) path_stream: bool,
    /// Whether a complete body without `stream` streams (Ollama streams by default).
    pub(crate) stream_default: bool,
}

impl Route {
    pub(crate) fn new(api: &'static str, operation: &'static str) -> Self {
        Self {
            api,
            operation,
            path_model: None,
            fallback_model: None,
            path_stream: false,
            stream_default: false,
        }
    }
}

pub(crate) trait ApiShape: Sync {
    /// The route, when the request is this shape's.
    fn route(&self, req: &RequestLine<'_>) -> Option<Route>;

    /// Top-level request body fields read: `model` (a string) and `stream` (a bool).
    fn request_fields(&self) -> &'static [&'static str] {
        &["model", "stream"]
    }

    /// Top-level fields of a whole response body worth materialising (others are skipped).
    fn response_fields(&self) -> &'static [&'static str];

    /// The framing of a streamed response that names no content type.
    fn stream_framing(&self) -> Framing {
        Framing::Sse
    }

    /// A parser for one response to a request on `route`.
    fn parser(&self, route: &Route) -> Box<dyn ResponseParser>;
}

/// Reads one response, message by message, into an [`Observed`].
pub(crate) trait ResponseParser: Send {
    /// The response head (Bedrock reports usage and error types in headers).
    fn on_head(&mut self, _head: &ResponseHead, _obs: &mut Observed) {}

    /// One message; returns whether it carried output content (text, a tool call, reasoning
    /// text, ...) rather than only bookkeeping (a role, an empty delta, a ping, usage).
    fn on_message(&mut self, msg: Message<'_>, obs: &mut Observed) -> Result<bool, LlmError>;

    /// Whether a stream got as far as its API's end (`[DONE]`, `message_stop`, ...).
    fn complete(&self, obs: &Observed) -> bool {
        obs.terminal
    }
}

/// Most choices whose finish reasons are kept.
const MAX_CHOICES: usize = 128;

/// What a response said, as it is read.
#[derive(Debug, Default)]
pub(crate) struct Observed {
    pub(crate) response_model: Option<String>,
    pub(crate) response_id: Option<String>,
    /// Finish reasons by choice index.
    finish: Vec<(u64, String)>,
    pub(crate) tokens: Tokens,
    /// An error was reported (in the body, a stream event, or a header).
    pub(crate) error_seen: bool,
    /// Its type or code, when it had one.
    pub(crate) error_type: Option<String>,
    /// The stream's terminal event arrived.
    pub(crate) terminal: bool,
    /// Completion text of choice 0 (bounded).
    pub(crate) completion: CompletionText,
}

impl Observed {
    /// Sets the response model from a non-empty string, if not yet known.
    pub(crate) fn model(&mut self, v: Option<&Value>) {
        if self.response_model.is_none() {
            self.response_model = non_empty(v).map(str::to_owned);
        }
    }

    pub(crate) fn id(&mut self, v: Option<&Value>) {
        if self.response_id.is_none() {
            self.response_id = non_empty(v).map(str::to_owned);
        }
    }

    /// Records the finish reason of choice `index` (a later one for the same choice wins).
    pub(crate) fn finish_reason(&mut self, index: u64, v: Option<&Value>) {
        let Some(reason) = non_empty(v) else {
            return;
        };
        if let Some(slot) = self.finish.iter_mut().find(|(i, _)| *i == index) {
            reason.clone_into(&mut slot.1);
        } else if self.finish.len() < MAX_CHOICES {
            self.finish.push((index, reason.to_owned()));
        }
    }

    pub(crate) fn has_finish_reason(&self, index: u64) -> bool {
        self.finish.iter().any(|(i, _)| *i == index)
    }

    /// Finish reasons in choice order.
    pub(crate) fn finish_reasons(&self) -> Vec<String> {
        let mut f = self.finish.clone();
        f.sort_by_key(|(i, _)| *i);
        f.into_iter().map(|(_, r)| r).collect()
    }

    /// Completion text of choice `index` (only choice 0 is kept).
    pub(crate) fn text(&mut self, index: u64, v: Option<&Value>) {
        if index == 0
            && let Some(s) = non_empty(v)
        {
            self.completion.push(s);
        }
    }

    /// An error was reported, with its type or code if it had one. The first type wins.
    pub(crate) fn error(&mut self, kind: Option<String>) {
        self.error_seen = true;
        if self.error_type.is_none() {
            self.error_type = kind.filter(|k| !k.is_empty());
        }
    }
}

/// The string at `v`, if it is a non-empty one.
pub(crate) fn non_empty(v: Option<&Value>) -> Option<&str> {
    v.and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// Whether `v` is a non-empty string, array or object.
pub(crate) fn has_content(v: Option<&Value>) -> bool {
    match v {
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
        _ => false,
    }
}

/// The value at a path of object keys.
pub(crate) fn at<'v>(v: &'v Value, path: &[&str]) -> Option<&'v Value> {
    path.iter().try_fold(v, |v, k| v.get(k))
}

/// A token count at `path`: a non-negative integer (also written as `12.0`).
pub(crate) fn count(v: &Value, path: &[&str]) -> Option<u64> {
    let v = at(v, path)?;
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 9.0e15)
            .map(|f| f as u64)
    })
}

/// The sum of counts where at least the first is known (cache counts that are absent add 0).
pub(crate) fn sum_with(base: Option<u64>, extra: &[Option<u64>]) -> Option<u64> {
    base.map(|b| {
        extra
            .iter()
            .flatten()
            .fold(b, |acc, n| acc.saturating_add(*n))
    })
}

/// Parses a stream message's JSON; an empty message is `Null`.
pub(crate) fn parse_json(bytes: &[u8]) -> Result<Value, LlmError> {
    let trimmed = bytes.trim_ascii();
    if trimmed.is_empty() {
        return Ok(Value::Null);
    }
    Ok(serde_json::from_slice(trimmed)?)
}

/// The percent-decoded form of a path segment (Bedrock model ids are sent with `:` as `%3A`).
pub(crate) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(hex) = b.get(i + 1..i + 3)
            && let Ok(hex) = std::str::from_utf8(hex)
            && let Ok(byte) = u8::from_str_radix(hex, 16)
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn request_line_and_helpers() {
        let r = RequestLine::new("POST", "/v1/chat/completions/?x=1");
        assert_eq!((r.path, r.authority), ("/v1/chat/completions", None));
        let r = RequestLine::new("POST", "https://api.openai.com:443/v1/responses?x=1");
        assert_eq!(
            (r.path, r.authority),
            ("/v1/responses", Some("api.openai.com:443"))
        );
        assert_eq!(RequestLine::new("POST", "http://gw").path, "");
        assert_eq!(RequestLine::new("GET", "/").path, "/");
        assert_eq!(
            percent_decode("anthropic.claude-v2%3A1"),
            "anthropic.claude-v2:1"
        );
        assert_eq!(percent_decode("bad%zzend%4"), "bad%zzend%4");
        assert_eq!(count(&json!({"a":{"b":12.0}}), &["a", "b"]), Some(12));
        assert_eq!(count(&json!({"a":-1}), &["a"]), None);
        assert_eq!(sum_with(Some(1), &[Some(2), None]), Some(3));
        assert_eq!(sum_with(None, &[Some(2)]), None);
    }

    #[test]
    fn observed_keeps_first_model_and_error_type() {
        let mut o = Observed::default();
        o.model(Some(&json!("")));
        o.model(Some(&json!("m1")));
        o.model(Some(&json!("m2")));
        assert_eq!(o.response_model.as_deref(), Some("m1"));
        o.finish_reason(1, Some(&json!("length")));
        o.finish_reason(0, Some(&json!("stop")));
        o.finish_reason(0, Some(&Value::Null));
        assert_eq!(o.finish_reasons(), ["stop", "length"]);
        o.error(None);
        o.error(Some("server_error".into()));
        o.error(Some("later".into()));
        assert_eq!(o.error_type.as_deref(), Some("server_error"));
    }
}
