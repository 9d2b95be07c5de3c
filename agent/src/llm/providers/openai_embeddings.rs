//! OpenAI embeddings: `POST …/embeddings` (any prefix; Azure deployments).
//!
//! Request: `model`. Response: `{"object":"list","data":[...],"model":...,"usage":
//! {"prompt_tokens","total_tokens"}}`: only input tokens. The vectors (`data`, often
//! megabytes) are never materialised, and when the body is larger than the stage keeps,
//! `model` and `usage` are still found in its tail.

use super::{
    ApiShape, Observed, RequestLine, ResponseParser, Route, count,
    openai::{azure_deployment, body_error},
};
use crate::llm::{LlmError, framing::Message, record::Tokens};

pub(crate) struct OpenAiEmbeddings;

impl ApiShape for OpenAiEmbeddings {
    fn route(&self, req: &RequestLine<'_>) -> Option<Route> {
        // Ollama's native `/api/embeddings` is another shape (no usage); see `ollama`.
        if !req.is_post() || !req.path.ends_with("/embeddings") || req.path == "/api/embeddings" {
            return None;
        }
        Some(Route {
            fallback_model: azure_deployment(req.path),
            ..Route::new("openai.embeddings", "embeddings")
        })
    }

    fn request_fields(&self) -> &'static [&'static str] {
        &["model"]
    }

    fn response_fields(&self) -> &'static [&'static str] {
        &["model", "usage", "error", "object", "type", "code"]
    }

    fn parser(&self, _route: &Route) -> Box<dyn ResponseParser> {
        Box::new(EmbeddingsParser)
    }
}

struct EmbeddingsParser;

impl ResponseParser for EmbeddingsParser {
    fn on_message(&mut self, msg: Message<'_>, obs: &mut Observed) -> Result<bool, LlmError> {
        if let Message::Body(v) = msg {
            if let Some(kind) = body_error(v) {
                obs.error(kind);
            }
            obs.model(v.get("model"));
            if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
                let input = count(u, &["prompt_tokens"]);
                if input.is_some() {
                    obs.tokens = Tokens {
                        input,
                        ..Tokens::default()
                    };
                }
            }
        }
        Ok(false)
    }

    fn complete(&self, _obs: &Observed) -> bool {
        true
    }
}
