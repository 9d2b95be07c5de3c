//! Google Gemini API and Vertex AI `generateContent`.
//!
//! Paths: `…/models/{model}:generateContent` and `:streamGenerateContent` (SSE with
//! `?alt=sse`, else a JSON array of responses), on `generativelanguage.googleapis.com`
//! (`/v1beta/models/…`, `/v1beta/tunedModels/…`) and Vertex
//! (`/v1/projects/{p}/locations/{l}/publishers/google/models/{model}:…`, or
//! `/v1/publishers/google/models/…` in express mode, `…/endpoints/{id}:…` for tuned
//! endpoints). `:embedContent` and `:batchEmbedContents` are embeddings (no usage reported).
//! The model comes from the path; the body names none.
//!
//! Response (each streamed chunk is a whole response): `candidates[].finishReason`, `.content
//! .parts[]`, `usageMetadata` (`promptTokenCount`, which includes `cachedContentTokenCount`;
//! `candidatesTokenCount`; `thoughtsTokenCount`; `toolUsePromptTokenCount`), `modelVersion`,
//! `responseId`, `promptFeedback.blockReason`. Usage is on the last chunks: the last wins.
//!
//! Tokens: input = prompt + tool-use prompt; output = candidates + thoughts (both billed as
//! output, as OpenAI's `completion_tokens` include reasoning); reasoning = thoughts.
//! A stream is complete at the chunk with a `finishReason` (or a prompt block reason).
//! Errors: `{"error":{"code":429,"message":…,"status":"RESOURCE_EXHAUSTED"}}`: `status`.

use serde_json::Value;

use super::{
    ApiShape, Observed, RequestLine, ResponseParser, Route, count, has_content, non_empty,
    parse_json, sum_with,
};
use crate::llm::{LlmError, framing::Message, record::Tokens};

pub(crate) struct Gemini;

impl ApiShape for Gemini {
    fn route(&self, req: &RequestLine<'_>) -> Option<Route> {
        if !req.is_post() {
            return None;
        }
        let (parent, last) = req.path.rsplit_once('/')?;
        let (resource, method) = last.split_once(':')?;
        let (api, operation, path_stream) = match method {
            "generateContent" => ("gcp.gemini.generate_content", "generate_content", false),
            "streamGenerateContent" => ("gcp.gemini.generate_content", "generate_content", true),
            "embedContent" | "batchEmbedContents" => {
                ("gcp.gemini.embed_content", "embeddings", false)
            }
            _ => return None,
        };
        let collection = parent.rsplit('/').next().unwrap_or("");
        let path_model = match collection {
            "models" | "tunedModels" => Some(super::percent_decode(resource)),
            "endpoints" => None,
            _ => return None,
        };
        Some(Route {
            path_model: path_model.filter(|m| !m.is_empty()),
            path_stream,
            ..Route::new(api, operation)
        })
    }

    fn request_fields(&self) -> &'static [&'static str] {
        &[]
    }

    fn response_fields(&self) -> &'static [&'static str] {
        &[
            "candidates",
            "usageMetadata",
            "modelVersion",
            "responseId",
            "promptFeedback",
            "error",
        ]
    }

    fn parser(&self, _route: &Route) -> Box<dyn ResponseParser> {
        Box::new(GeminiParser)
    }
}

struct GeminiParser;

const CONTENT_PARTS: &[&str] = &[
    "functionCall",
    "inlineData",
    "executableCode",
    "codeExecutionResult",
];

fn chunk(v: &Value, obs: &mut Observed) -> bool {
    if let Some(e) = v.get("error").filter(|e| e.is_object()) {
        let kind = non_empty(e.get("status")).map(str::to_owned).or_else(|| {
            e.get("code")
                .filter(|c| c.is_number())
                .map(Value::to_string)
        });
        obs.error(kind);
    }
    obs.model(v.get("modelVersion"));
    obs.id(v.get("responseId"));
    let mut content = false;
    for (n, c) in v
        .get("candidates")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let index = count(c, &["index"]).unwrap_or(n as u64);
        if non_empty(c.get("finishReason")).is_some() {
            obs.finish_reason(index, c.get("finishReason"));
            obs.terminal = true;
        }
        let parts = c
            .get("content")
            .and_then(|c| c.get("parts"))
            .and_then(Value::as_array);
        // Thought summaries are not the answer.
        for p in parts.into_iter().flatten() {
            if p.get("thought").and_then(Value::as_bool) != Some(true) {
                obs.text(index, p.get("text"));
            }
        }
        content |= parts.into_iter().flatten().any(|p| {
            non_empty(p.get("text")).is_some()
                || CONTENT_PARTS.iter().any(|k| has_content(p.get(*k)))
        });
    }
    if let Some(reason) = v.get("promptFeedback").and_then(|f| f.get("blockReason"))
        && non_empty(Some(reason)).is_some()
    {
        obs.finish_reason(0, Some(reason));
        obs.terminal = true;
    }
    if let Some(u) = v.get("usageMetadata").filter(|u| u.is_object()) {
        let candidates = count(u, &["candidatesTokenCount"]);
        let thoughts = count(u, &["thoughtsTokenCount"]);
        obs.tokens = Tokens {
            input: sum_with(
                count(u, &["promptTokenCount"]),
                &[count(u, &["toolUsePromptTokenCount"])],
            ),
            output: sum_with(candidates.or(thoughts.map(|_| 0)), &[thoughts]),
            cache_read: count(u, &["cachedContentTokenCount"]),
            cache_write: None,
            reasoning: thoughts,
            estimated: false,
        };
    }
    content
}

impl ResponseParser for GeminiParser {
    fn on_message(&mut self, msg: Message<'_>, obs: &mut Observed) -> Result<bool, LlmError> {
        match msg {
            // `streamGenerateContent` without `alt=sse` answers with an array of responses.
            Message::Body(Value::Array(items)) => {
                for item in items {
                    chunk(item, obs);
                }
                Ok(false)
            }
            Message::Body(v) => {
                chunk(v, obs);
                Ok(false)
            }
            Message::Sse(ev) => match ev.data {
                Some(data) => Ok(chunk(&parse_json(data)?, obs)),
                None => Ok(false),
            },
            Message::Line(line) => Ok(chunk(&parse_json(line)?, obs)),
            Message::Frame(_) => Ok(false),
        }
    }
}
