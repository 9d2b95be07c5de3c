//! OpenAI legacy completions: `POST …/completions` (not `…/chat/completions`), also Azure's
//! `/openai/deployments/{deployment}/completions` and fill-in-the-middle endpoints of the same
//! shape (`/v1/fim/completions`).
//!
//! Request: `model`, `stream`. Response: like chat, with `choices[].text`.

use super::{
    ApiShape, RequestLine, ResponseParser, Route,
    openai::{CHOICES_RESPONSE_FIELDS, ChoicesParser, azure_deployment, completion_text},
};

pub(crate) struct OpenAiCompletions;

impl ApiShape for OpenAiCompletions {
    fn route(&self, req: &RequestLine<'_>) -> Option<Route> {
        if !req.is_post()
            || !req.path.ends_with("/completions")
            || req.path.ends_with("/chat/completions")
        {
            return None;
        }
        Some(Route {
            fallback_model: azure_deployment(req.path),
            ..Route::new("openai.completions", "text_completion")
        })
    }

    fn response_fields(&self) -> &'static [&'static str] {
        CHOICES_RESPONSE_FIELDS
    }

    fn parser(&self, _route: &Route) -> Box<dyn ResponseParser> {
        Box::new(ChoicesParser::new(completion_text))
    }
}
