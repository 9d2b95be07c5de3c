//! Anthropic Messages, streamed (gzip with a flush per event when accepted) and not, and the
//! error bodies.

use serde_json::Value;

use super::json::{J, Style, arr, n, obj, s};
use super::{Body, Ctx, Reply, StreamPlan, Tokens, text_chars, tokens_for_chars};

const API: &str = "anthropic.messages";

/// The dated snapshot a model alias resolves to.
fn snapshot(base: &str) -> String {
    let dated = base
        .rsplit('-')
        .next()
        .is_some_and(|t| t.len() == 8 && t.bytes().all(|b| b.is_ascii_digit()));
    match base {
        _ if dated => base.to_owned(),
        "claude-sonnet-4-5" => "claude-sonnet-4-5-20250929".to_owned(),
        "claude-haiku-4-5" => "claude-haiku-4-5-20251001".to_owned(),
        "claude-opus-4-1" => "claude-opus-4-1-20250805".to_owned(),
        "claude-3-5-haiku-latest" => "claude-3-5-haiku-20241022".to_owned(),
        m => format!("{m}-20250929"),
    }
}

fn headers(ctx: &Ctx<'_>, content_type: &str) -> Vec<(&'static str, String)> {
    vec![
        ("Content-Type", content_type.to_owned()),
        (
            "anthropic-ratelimit-input-tokens-limit",
            "400000".to_owned(),
        ),
        (
            "anthropic-ratelimit-input-tokens-remaining",
            "400000".to_owned(),
        ),
        (
            "anthropic-ratelimit-input-tokens-reset",
            "2026-01-01T00:00:01Z".to_owned(),
        ),
        (
            "anthropic-ratelimit-output-tokens-limit",
            "80000".to_owned(),
        ),
        (
            "anthropic-ratelimit-output-tokens-remaining",
            "80000".to_owned(),
        ),
        (
            "anthropic-ratelimit-output-tokens-reset",
            "2026-01-01T00:00:01Z".to_owned(),
        ),
        ("anthropic-ratelimit-requests-limit", "4000".to_owned()),
        ("anthropic-ratelimit-requests-remaining", "3999".to_owned()),
        (
            "anthropic-ratelimit-requests-reset",
            "2026-01-01T00:00:01Z".to_owned(),
        ),
        ("request-id", ctx.id("req_011C", 20, 11)),
        (
            "strict-transport-security",
            "max-age=31536000; includeSubDomains; preload".to_owned(),
        ),
        (
            "anthropic-organization-id",
            "00000000-0000-4000-8000-746f6b656e74".to_owned(),
        ),
        ("via", "1.1 google".to_owned()),
        ("cf-cache-status", "DYNAMIC".to_owned()),
        ("X-Robots-Tag", "none".to_owned()),
        ("Server", "cloudflare".to_owned()),
    ]
}

fn input_chars(body: &Value) -> usize {
    let messages: usize = body["messages"]
        .as_array()
        .map_or(0, |ms| ms.iter().map(|m| text_chars(&m["content"])).sum());
    messages + text_chars(&body["system"])
}

/// The usage object: `input_tokens` excludes the cache counts.
fn usage(input: u64, cache_read: u64, cache_write: u64, output: u64) -> J {
    obj(vec![
        ("input_tokens", n(input)),
        ("cache_creation_input_tokens", n(cache_write)),
        ("cache_read_input_tokens", n(cache_read)),
        (
            "cache_creation",
            obj(vec![
                ("ephemeral_5m_input_tokens", n(cache_write)),
                ("ephemeral_1h_input_tokens", n(0)),
            ]),
        ),
        ("output_tokens", n(output)),
        ("service_tier", s("standard")),
    ])
}

fn event(kind: &str, data: &J, style: Style) -> String {
    format!("event: {kind}\ndata: {}\n\n", data.render(style))
}

pub(crate) fn handle(ctx: &Ctx<'_>, parsed: &Result<Value, serde_json::Error>) -> Reply {
    if let Err(e) = parsed {
        return error_reply(
            ctx,
            400,
            "invalid_request_error",
            &format!("There was an issue with the request body: {e}"),
        );
    }
    if ctx.request_model.is_empty() {
        return error_reply(ctx, 400, "invalid_request_error", "model: Field required");
    }
    if let Some(status) = ctx.scenario.status {
        return error(ctx, status);
    }
    let sc = ctx.scenario;
    let base_input = tokens_for_chars(input_chars(ctx.body));
    let output = u64::from(sc.chunks);
    let tokens = Tokens {
        input: Some(base_input + sc.cached + sc.cache_write),
        output: Some(output),
        cache_read: Some(sc.cached),
        cache_write: Some(sc.cache_write),
        reasoning: None,
    };
    let model = snapshot(&sc.base_model);
    let id = ctx.id("msg_01", 22, 12);
    let message = |content: Vec<J>, stop: Option<&str>, output: u64| {
        obj(vec![
            ("model", s(&model)),
            ("id", s(&id)),
            ("type", s("message")),
            ("role", s("assistant")),
            ("content", arr(content)),
            ("stop_reason", stop.map_or(J::Null, s)),
            ("stop_sequence", J::Null),
            (
                "usage",
                usage(base_input, sc.cached, sc.cache_write, output),
            ),
        ])
    };
    let text_block = |text: &str| obj(vec![("type", s("text")), ("text", s(text))]);
    if !ctx.stream {
        let body = message(vec![text_block(&ctx.full_text())], Some("end_turn"), output);
        return Reply {
            api: API,
            status: 200,
            headers: headers(ctx, "application/json"),
            gzip: true,
            body: Body::Whole(body.render(Style::Compact).into_bytes()),
            response_model: Some(model),
            error_type: None,
            tokens,
        };
    }
    let preamble = vec![
        event(
            "message_start",
            &obj(vec![
                ("type", s("message_start")),
                ("message", message(vec![], None, 1)),
            ]),
            Style::Compact,
        ),
        event(
            "content_block_start",
            &obj(vec![
                ("type", s("content_block_start")),
                ("index", n(0)),
                ("content_block", text_block("")),
            ]),
            Style::Compact,
        ),
        event("ping", &obj(vec![("type", s("ping"))]), Style::Spaced),
    ];
    let chunks = (0..sc.chunks)
        .map(|i| {
            event(
                "content_block_delta",
                &obj(vec![
                    ("type", s("content_block_delta")),
                    ("index", n(0)),
                    (
                        "delta",
                        obj(vec![("type", s("text_delta")), ("text", s(Ctx::word(i)))]),
                    ),
                ]),
                Style::Compact,
            )
        })
        .collect();
    let finish = vec![
        event(
            "content_block_stop",
            &obj(vec![("type", s("content_block_stop")), ("index", n(0))]),
            Style::Compact,
        ),
        event(
            "message_delta",
            &obj(vec![
                ("type", s("message_delta")),
                (
                    "delta",
                    obj(vec![
                        ("stop_reason", s("end_turn")),
                        ("stop_sequence", J::Null),
                    ]),
                ),
                (
                    "usage",
                    obj(vec![
                        ("input_tokens", n(base_input)),
                        ("cache_creation_input_tokens", n(sc.cache_write)),
                        ("cache_read_input_tokens", n(sc.cached)),
                        ("output_tokens", n(output)),
                    ]),
                ),
            ]),
            Style::Compact,
        ),
        event(
            "message_stop",
            &obj(vec![("type", s("message_stop"))]),
            Style::Compact,
        ),
    ];
    let error = sc.midstream_error.then(|| {
        (
            event(
                "error",
                &error_object(ctx, "overloaded_error", "Overloaded"),
                Style::Compact,
            ),
            "overloaded_error".to_owned(),
        )
    });
    // What a cut stream still told: message_start's input counts (its output_tokens is a
    // placeholder, not the answer's).
    let early_tokens = Tokens {
        output: None,
        ..tokens
    };
    Reply {
        api: API,
        status: 200,
        headers: {
            let mut h = headers(ctx, "text/event-stream; charset=utf-8");
            h.push(("Cache-Control", "no-cache".to_owned()));
            h
        },
        gzip: true,
        body: Body::Stream(StreamPlan {
            preamble,
            chunks,
            finish,
            error,
            early_tokens,
        }),
        response_model: Some(model),
        error_type: None,
        tokens,
    }
}

fn error_object(ctx: &Ctx<'_>, kind: &str, message: &str) -> J {
    obj(vec![
        ("type", s("error")),
        (
            "error",
            obj(vec![("type", s(kind)), ("message", s(message))]),
        ),
        ("request_id", s(ctx.id("req_011C", 20, 11))),
    ])
}

fn error_reply(ctx: &Ctx<'_>, status: u16, kind: &str, message: &str) -> Reply {
    let mut headers = headers(ctx, "application/json");
    match status {
        429 => headers.push(("retry-after", "17".to_owned())),
        529 => headers.push(("x-should-retry", "true".to_owned())),
        _ => {}
    }
    Reply {
        api: API,
        status,
        headers,
        gzip: false,
        body: Body::Whole(
            error_object(ctx, kind, message)
                .render(Style::Compact)
                .into_bytes(),
        ),
        response_model: None,
        error_type: Some(kind.to_owned()),
        tokens: Tokens::default(),
    }
}

/// The error answer for `err{STATUS}`.
pub(crate) fn error(ctx: &Ctx<'_>, status: u16) -> Reply {
    let (kind, message) = match status {
        400 => (
            "invalid_request_error",
            "messages: at least one message is required",
        ),
        401 => ("authentication_error", "invalid x-api-key"),
        403 => (
            "permission_error",
            "Your API key does not have permission to use the specified resource.",
        ),
        404 => (
            "not_found_error",
            "The requested resource could not be found.",
        ),
        413 => (
            "request_too_large",
            "Request exceeds the maximum allowed number of bytes.",
        ),
        429 => (
            "rate_limit_error",
            "This request would exceed the rate limit for your organization of 50 requests per minute. For details, refer to: https://docs.claude.com/en/api/rate-limits. You can see the response headers for current usage. Please reduce the prompt length or the maximum tokens requested, or try again later. You may also contact sales at https://www.anthropic.com/contact-sales to discuss your options for a rate limit increase.",
        ),
        529 => ("overloaded_error", "Overloaded"),
        s if s >= 500 => ("api_error", "Internal server error"),
        _ => (
            "invalid_request_error",
            "Invalid request (the mock provider was asked for this status).",
        ),
    };
    error_reply(ctx, status, kind, message)
}
