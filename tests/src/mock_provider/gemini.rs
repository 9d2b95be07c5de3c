//! Google Gemini `generateContent` and `streamGenerateContent?alt=sse`, and the error bodies.

use serde_json::Value;

use super::json::{J, Style, arr, n, obj, s};
use super::{Body, Ctx, Reply, StreamPlan, Tokens, text_chars, tokens_for_chars};

const API: &str = "gcp.gemini.generate_content";

/// `modelVersion` for a requested model.
fn model_version(base: &str) -> String {
    let versioned = base
        .rsplit('-')
        .next()
        .is_some_and(|t| t.len() == 3 && t.bytes().all(|b| b.is_ascii_digit()));
    if versioned {
        base.to_owned()
    } else {
        format!("{base}-001")
    }
}

fn headers(ctx: &Ctx<'_>, content_type: &str) -> Vec<(&'static str, String)> {
    vec![
        ("Content-Type", content_type.to_owned()),
        ("Vary", "Origin".to_owned()),
        ("Vary", "X-Origin".to_owned()),
        ("Vary", "Referer".to_owned()),
        ("Server", "scaffolding on HTTPServer2".to_owned()),
        ("X-XSS-Protection", "0".to_owned()),
        ("X-Frame-Options", "SAMEORIGIN".to_owned()),
        ("X-Content-Type-Options", "nosniff".to_owned()),
        (
            "Server-Timing",
            format!("gfet4t7; dur={}", 300 + ctx.seq % 100),
        ),
        (
            "Alt-Svc",
            "h3=\":443\"; ma=2592000,h3-29=\":443\"; ma=2592000".to_owned(),
        ),
    ]
}

fn input_chars(body: &Value) -> usize {
    let contents: usize = body["contents"]
        .as_array()
        .map_or(0, |cs| cs.iter().map(|c| text_chars(&c["parts"])).sum());
    contents + text_chars(&body["systemInstruction"]["parts"])
}

struct Counts {
    prompt: u64,
    cached: u64,
    candidates: u64,
    thoughts: u64,
}

fn modality(count: u64) -> J {
    arr(vec![obj(vec![
        ("modality", s("TEXT")),
        ("tokenCount", n(count)),
    ])])
}

/// `usageMetadata`; `final_` adds the candidate counts (the stream's earlier events carry
/// only the prompt's).
fn usage(c: &Counts, final_: bool) -> J {
    let mut fields = vec![("promptTokenCount", n(c.prompt))];
    if final_ {
        fields.push(("candidatesTokenCount", n(c.candidates)));
        fields.push(("totalTokenCount", n(c.prompt + c.candidates + c.thoughts)));
    } else {
        fields.push(("totalTokenCount", n(c.prompt)));
    }
    if c.cached > 0 {
        fields.push(("cachedContentTokenCount", n(c.cached)));
    }
    fields.push(("promptTokensDetails", modality(c.prompt)));
    if c.cached > 0 {
        fields.push(("cacheTokensDetails", modality(c.cached)));
    }
    if final_ {
        fields.push(("candidatesTokensDetails", modality(c.candidates)));
        if c.thoughts > 0 {
            fields.push(("thoughtsTokenCount", n(c.thoughts)));
        }
    }
    obj(fields)
}

fn response(ctx: &Ctx<'_>, text: &str, finish: bool, counts: &Counts, model: &str) -> J {
    let mut candidate = vec![(
        "content",
        obj(vec![
            ("parts", arr(vec![obj(vec![("text", s(text))])])),
            ("role", s("model")),
        ]),
    )];
    if finish {
        candidate.push(("finishReason", s("STOP")));
    }
    candidate.push(("index", n(0)));
    obj(vec![
        ("candidates", arr(vec![obj(candidate)])),
        ("usageMetadata", usage(counts, finish)),
        ("modelVersion", s(model)),
        ("responseId", s(ctx.id("", 22, 21))),
    ])
}

pub(crate) fn handle(ctx: &Ctx<'_>, parsed: &Result<Value, serde_json::Error>) -> Reply {
    if let Err(e) = parsed {
        return error(ctx, 400, &format!("Invalid JSON payload received. {e}"));
    }
    let sc = ctx.scenario;
    if let Some(status) = sc.status {
        return error(ctx, status, "");
    }
    let counts = Counts {
        prompt: tokens_for_chars(input_chars(ctx.body)) + sc.cached,
        cached: sc.cached,
        candidates: u64::from(sc.chunks),
        thoughts: sc.reasoning,
    };
    let tokens = Tokens {
        input: Some(counts.prompt),
        // Thinking is billed as output: reasoning is a part of the output, as with OpenAI.
        output: Some(counts.candidates + counts.thoughts),
        cache_read: Some(counts.cached),
        cache_write: None,
        reasoning: Some(counts.thoughts),
    };
    let model = model_version(&sc.base_model);
    if !ctx.stream {
        let body = response(ctx, &ctx.full_text(), true, &counts, &model);
        return Reply {
            api: API,
            status: 200,
            headers: headers(ctx, "application/json; charset=UTF-8"),
            gzip: true,
            body: Body::Whole(format!("{}\n", body.render(Style::Pretty(2))).into_bytes()),
            response_model: Some(model),
            error_type: None,
            tokens,
        };
    }
    let data = |v: &J| format!("data: {}\r\n\r\n", v.render(Style::Google));
    let chunks: Vec<String> = (0..sc.chunks)
        .map(|i| {
            let last = i + 1 == sc.chunks;
            data(&response(ctx, Ctx::word(i), last, &counts, &model))
        })
        .collect();
    // With no content chunk at all, one event still ends the stream with its usage.
    let finish = if chunks.is_empty() {
        vec![data(&response(ctx, "", true, &counts, &model))]
    } else {
        Vec::new()
    };
    let error = sc.midstream_error.then(|| {
        (
            data(&error_object(
                500,
                "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
                "INTERNAL",
            )),
            "INTERNAL".to_owned(),
        )
    });
    Reply {
        api: API,
        status: 200,
        headers: headers(ctx, "text/event-stream"),
        gzip: false,
        body: Body::Stream(StreamPlan {
            preamble: Vec::new(),
            chunks,
            finish,
            error,
            early_tokens: Tokens::default(),
        }),
        response_model: Some(model),
        error_type: None,
        tokens,
    }
}

fn error_object(code: u16, message: &str, status: &str) -> J {
    obj(vec![(
        "error",
        obj(vec![
            ("code", n(u64::from(code))),
            ("message", s(message)),
            ("status", s(status)),
        ]),
    )])
}

/// An error answer; an empty `message` takes the usual one for the status.
pub(crate) fn error(ctx: &Ctx<'_>, code: u16, message: &str) -> Reply {
    let (status, default_message) = match code {
        400 => ("INVALID_ARGUMENT", "Request contains an invalid argument."),
        401 => (
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials.",
        ),
        403 => ("PERMISSION_DENIED", "The caller does not have permission"),
        404 => ("NOT_FOUND", "Requested entity was not found."),
        429 => (
            "RESOURCE_EXHAUSTED",
            "Resource has been exhausted (e.g. check quota).",
        ),
        503 => (
            "UNAVAILABLE",
            "The model is overloaded. Please try again later.",
        ),
        504 => (
            "DEADLINE_EXCEEDED",
            "Deadline expired before operation could complete.",
        ),
        c if c >= 500 => (
            "INTERNAL",
            "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
        ),
        _ => ("FAILED_PRECONDITION", "Precondition check failed."),
    };
    let message = if message.is_empty() {
        default_message
    } else {
        message
    };
    let body = format!(
        "{}\n",
        error_object(code, message, status).render(Style::Pretty(2))
    );
    Reply {
        api: API,
        status: code,
        headers: headers(ctx, "application/json; charset=UTF-8"),
        gzip: false,
        body: Body::Whole(body.into_bytes()),
        response_model: None,
        error_type: Some(status.to_owned()),
        tokens: Tokens::default(),
    }
}
