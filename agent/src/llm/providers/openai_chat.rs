//! OpenAI chat completions: `POST …/chat/completions`.
//!
//! Paths: `/v1/chat/completions` and the same under any prefix (`/openai/v1/` Groq,
//! `/api/v1/` OpenRouter, `/v1beta/openai/` Gemini, `/compatibility/v1/` Cohere, none at all
//! DeepSeek and Perplexity), and Azure's `/openai/deployments/{deployment}/chat/completions`,
//! where the deployment stands for the model when the body names none.
//!
//! Request: `model`, `stream` (usage in a stream only with `stream_options.include_usage`).
//! Response: `id`, `model` (a dated snapshot), `choices[].finish_reason`, `usage`. Stream:
//! `data:` chunks ending with `data: [DONE]`; see [`super::openai::ChoicesParser`].

use super::{
    ApiShape, RequestLine, ResponseParser, Route,
    openai::{CHOICES_RESPONSE_FIELDS, ChoicesParser, azure_deployment, chat_delta_has_content},
};

pub(crate) struct OpenAiChat;

impl ApiShape for OpenAiChat {
    fn route(&self, req: &RequestLine<'_>) -> Option<Route> {
        if !req.is_post() || !req.path.ends_with("/chat/completions") {
            return None;
        }
        Some(Route {
            fallback_model: azure_deployment(req.path),
            ..Route::new("openai.chat_completions", "chat")
        })
    }

    fn response_fields(&self) -> &'static [&'static str] {
        CHOICES_RESPONSE_FIELDS
    }

    fn parser(&self, _route: &Route) -> Box<dyn ResponseParser> {
        Box::new(ChoicesParser::new(chat_delta_has_content))
    }
}
