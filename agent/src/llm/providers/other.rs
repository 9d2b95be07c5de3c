//! Requests to a known LLM host on a path no shape knows (a native API not modelled yet,
//! `count_tokens`, file uploads, ...): recorded with operation `other` and API `unknown`,
//! with the request model when the body names one and the error type of the common error
//! bodies. No tokens; a stream is never judged interrupted unless the connection said so.

use serde_json::Value;

use super::{Observed, RequestLine, ResponseParser, Route, non_empty, openai, parse_json};
use crate::llm::{LlmError, framing::Message};

pub(crate) const FIELDS: &[&str] = &["error", "object", "type", "code", "message", "status"];

pub(crate) fn route(req: &RequestLine<'_>) -> Option<Route> {
    // Inference calls are POSTs; listing models or polling health is not an LLM call.
    req.is_post().then(|| Route::new("unknown", "other"))
}

pub(crate) struct OtherParser;

fn error(v: &Value, obs: &mut Observed) {
    if let Some(e) = v.get("error").filter(|e| e.is_object()) {
        // OpenAI `code`/`type`, Anthropic `type`, Google `status` (before its numeric code).
        let kind = ["code", "type", "status"]
            .iter()
            .find_map(|k| non_empty(e.get(*k)))
            .map(str::to_owned)
            .or_else(|| openai::error_type(e));
        obs.error(kind);
    } else if let Some(kind) = openai::body_error(v) {
        obs.error(kind);
    }
}

impl ResponseParser for OtherParser {
    fn on_message(&mut self, msg: Message<'_>, obs: &mut Observed) -> Result<bool, LlmError> {
        match msg {
            Message::Body(v) => error(v, obs),
            Message::Sse(ev) => {
                if let Some(data) = ev.data
                    && let Ok(v) = parse_json(data)
                {
                    error(&v, obs);
                }
            }
            Message::Line(l) => {
                if let Ok(v) = parse_json(l) {
                    error(&v, obs);
                }
            }
            Message::Frame(_) => {}
        }
        Ok(false)
    }

    fn complete(&self, _obs: &Observed) -> bool {
        true
    }
}

/// The shape of requests to a known host on an unknown path.
pub(crate) struct Other;

impl super::ApiShape for Other {
    fn route(&self, req: &RequestLine<'_>) -> Option<Route> {
        route(req)
    }

    fn response_fields(&self) -> &'static [&'static str] {
        FIELDS
    }

    fn parser(&self, _route: &Route) -> Box<dyn ResponseParser> {
        Box::new(OtherParser)
    }
}
