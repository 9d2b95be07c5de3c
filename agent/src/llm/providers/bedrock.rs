//! What the Bedrock runtime shapes share: the `/model/{modelId}/{action}` path, the error
//! type in the `x-amzn-errortype` header, and exception messages in an eventstream.

use serde_json::Value;

use super::{Observed, RequestLine, Route, non_empty};
use crate::{http::ResponseHead, llm::framing::Frame};

/// The route for `/model/{modelId}/{action}` when `action` is one of `actions`
/// (`(action, streams)`). The model id is percent-decoded (`…-v2%3A0` is `…-v2:0`; an ARN's
/// `/` is `%2F`).
pub(crate) fn route(
    req: &RequestLine<'_>,
    actions: &[(&str, bool)],
    api: &'static str,
    operation: &'static str,
) -> Option<Route> {
    if !req.is_post() {
        return None;
    }
    let rest = req.path.strip_prefix("/model/")?;
    let (id, action) = rest.rsplit_once('/')?;
    let &(_, path_stream) = actions.iter().find(|(a, _)| *a == action)?;
    Some(Route {
        path_model: Some(super::percent_decode(id)).filter(|m| !m.is_empty()),
        path_stream,
        ..Route::new(api, operation)
    })
}

/// The error type of an error status: `x-amzn-errortype:
/// ThrottlingException:http://internal.amazon.com/...` is `ThrottlingException`.
pub(crate) fn head_error(head: &ResponseHead, obs: &mut Observed) {
    if head.status < 400 {
        return;
    }
    if let Some(t) = head.headers.get("x-amzn-errortype") {
        let t = t.split(':').next().unwrap_or("").trim();
        if !t.is_empty() {
            obs.error(Some(t.to_owned()));
        }
    }
}

/// A JSON error body's `__type` (`com.amazon.coral.service#ThrottlingException`), if any.
pub(crate) fn body_error(v: &Value, obs: &mut Observed) {
    if let Some(t) = non_empty(v.get("__type")) {
        let t = t.rsplit('#').next().unwrap_or(t);
        obs.error(Some(t.to_owned()));
    }
}

/// An exception or error message in an eventstream: `:exception-type: throttlingException`
/// is reported as `ThrottlingException`, the name the same error has outside a stream.
/// Returns whether the frame was one.
pub(crate) fn frame_error(f: &Frame<'_>, obs: &mut Observed) -> bool {
    match f.message_type {
        Some("exception") => {
            obs.error(f.exception_type.or(f.event_type).map(upper_first));
            true
        }
        Some("error") => {
            obs.error(f.error_code.map(str::to_owned));
            true
        }
        _ => false,
    }
}

fn upper_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(first) => first.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}
