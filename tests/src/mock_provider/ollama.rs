//! Ollama's native chat API (`POST /api/chat`): NDJSON lines when streaming (the default), one
//! JSON object otherwise; the last object has `done: true` and the counts (`prompt_eval_count`
//! input, `eval_count` output). Served by the plaintext mock, as Ollama serves plain HTTP.

use serde_json::Value;

use super::json::{J, Style, n, obj, s};
use super::{Body, Ctx, Reply, StreamPlan, Tokens, text_chars, tokens_for_chars};

const API: &str = "ollama.chat";
const CREATED_AT: &str = "2026-01-01T00:00:00.000000000Z";

fn message(content: &str) -> J {
    obj(vec![("role", s("assistant")), ("content", s(content))])
}

fn line(v: &J) -> String {
    format!("{}\n", v.render(Style::Compact))
}

pub(crate) fn handle(ctx: &Ctx<'_>, parsed: &Result<Value, serde_json::Error>) -> Reply {
    let (status, body) = match parsed {
        Err(e) => (400, Some(format!("invalid JSON: {e}"))),
        Ok(_) => match ctx.scenario.status {
            Some(status) => (status, Some("mock error".to_owned())),
            None => (200, None),
        },
    };
    let model = ctx.scenario.base_model.clone();
    if let Some(error) = body {
        return Reply {
            api: API,
            status,
            headers: vec![("Content-Type", "application/json; charset=utf-8".to_owned())],
            gzip: false,
            body: Body::Whole(line(&obj(vec![("error", s(error))])).into_bytes()),
            response_model: None,
            error_type: None,
            tokens: Tokens::default(),
        };
    }
    let input_chars: usize = ctx.body["messages"]
        .as_array()
        .map_or(0, |ms| ms.iter().map(|m| text_chars(&m["content"])).sum());
    let input = tokens_for_chars(input_chars);
    let output = u64::from(ctx.scenario.chunks);
    let tokens = Tokens {
        input: Some(input),
        output: Some(output),
        ..Tokens::default()
    };
    let last = |content: &str| {
        obj(vec![
            ("model", s(model.clone())),
            ("created_at", s(CREATED_AT)),
            ("message", message(content)),
            ("done", J::Bool(true)),
            ("done_reason", s("stop")),
            ("total_duration", n(1_000_000)),
            ("prompt_eval_count", n(input)),
            ("eval_count", n(output)),
        ])
    };
    if !ctx.stream {
        return Reply {
            api: API,
            status: 200,
            headers: vec![("Content-Type", "application/json; charset=utf-8".to_owned())],
            gzip: false,
            body: Body::Whole(last(&ctx.full_text()).render(Style::Compact).into_bytes()),
            response_model: Some(model),
            error_type: None,
            tokens,
        };
    }
    let chunks = (0..ctx.scenario.chunks)
        .map(|i| {
            line(&obj(vec![
                ("model", s(model.clone())),
                ("created_at", s(CREATED_AT)),
                ("message", message(Ctx::word(i))),
                ("done", J::Bool(false)),
            ]))
        })
        .collect();
    Reply {
        api: API,
        status: 200,
        headers: vec![("Content-Type", "application/x-ndjson".to_owned())],
        gzip: false,
        body: Body::Stream(StreamPlan {
            preamble: Vec::new(),
            chunks,
            finish: vec![line(&last(""))],
            error: None,
            early_tokens: Tokens::default(),
        }),
        response_model: Some(model),
        error_type: None,
        tokens,
    }
}
