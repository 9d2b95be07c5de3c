//! OpenAI: chat completions, legacy completions, embeddings and Responses, streamed and not,
//! and the error bodies.

use base64::Engine as _;
use serde_json::Value;

use super::json::{J, Style, arr, n, obj, opt_s, s};
use super::{Body, Ctx, Reply, StreamPlan, Tokens, text_chars, tokens_for_chars};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Api {
    Chat,
    Completions,
    Embeddings,
    Responses,
}

impl Api {
    fn name(self) -> &'static str {
        match self {
            Api::Chat => "openai.chat_completions",
            Api::Completions => "openai.completions",
            Api::Embeddings => "openai.embeddings",
            Api::Responses => "openai.responses",
        }
    }
}

/// The dated snapshot a model name resolves to.
fn snapshot(base: &str) -> String {
    match base {
        "gpt-4o-mini" => "gpt-4o-mini-2024-07-18".to_owned(),
        "gpt-4o" => "gpt-4o-2024-08-06".to_owned(),
        "gpt-4.1" => "gpt-4.1-2025-04-14".to_owned(),
        "gpt-4.1-mini" => "gpt-4.1-mini-2025-04-14".to_owned(),
        "o3-mini" => "o3-mini-2025-01-31".to_owned(),
        "gpt-3.5-turbo-instruct" => "gpt-3.5-turbo-instruct:20230824-v2".to_owned(),
        // Embedding models answer with their own name.
        m if m.starts_with("text-embedding-") => m.to_owned(),
        m => format!("{m}-2024-08-06"),
    }
}

fn headers(ctx: &Ctx<'_>, content_type: &str) -> Vec<(&'static str, String)> {
    vec![
        ("Content-Type", content_type.to_owned()),
        ("access-control-expose-headers", "X-Request-ID".to_owned()),
        ("openai-organization", "user-tokentap".to_owned()),
        ("openai-processing-ms", "27".to_owned()),
        ("openai-project", "proj_tokentapmock".to_owned()),
        ("openai-version", "2020-10-01".to_owned()),
        ("x-envoy-upstream-service-time", "31".to_owned()),
        ("x-ratelimit-limit-requests", "10000".to_owned()),
        ("x-ratelimit-limit-tokens", "10000000".to_owned()),
        ("x-ratelimit-remaining-requests", "9999".to_owned()),
        ("x-ratelimit-remaining-tokens", "9999990".to_owned()),
        ("x-ratelimit-reset-requests", "6ms".to_owned()),
        ("x-ratelimit-reset-tokens", "0s".to_owned()),
        ("x-request-id", ctx.id("req_", 32, 1)),
        (
            "strict-transport-security",
            "max-age=31536000; includeSubDomains; preload".to_owned(),
        ),
        ("cf-cache-status", "DYNAMIC".to_owned()),
        ("Server", "cloudflare".to_owned()),
        ("alt-svc", "h3=\":443\"; ma=86400".to_owned()),
    ]
}

/// Characters of the request text each API bills as input.
fn input_chars(api: Api, body: &Value) -> usize {
    match api {
        Api::Chat => body["messages"]
            .as_array()
            .map_or(0, |ms| ms.iter().map(|m| text_chars(&m["content"])).sum()),
        Api::Completions => text_chars(&body["prompt"]),
        Api::Embeddings => text_chars(&body["input"]),
        Api::Responses => {
            let input = match &body["input"] {
                Value::Array(items) => items
                    .iter()
                    .map(|item| match item {
                        Value::Object(o) => o.get("content").map_or(0, text_chars),
                        other => text_chars(other),
                    })
                    .sum(),
                other => text_chars(other),
            };
            input + text_chars(&body["instructions"])
        }
    }
}

pub(crate) fn handle(ctx: &Ctx<'_>, api: Api, parsed: &Result<Value, serde_json::Error>) -> Reply {
    if let Err(e) = parsed {
        let msg = format!(
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON. If you have trouble figuring out how to fix this, please contact us through our help center at help.openai.com.) ({e})"
        );
        return error_reply(ctx, api.name(), 400, "invalid_request_error", None, &msg);
    }
    if ctx.request_model.is_empty() {
        return error_reply(
            ctx,
            api.name(),
            400,
            "invalid_request_error",
            None,
            "you must provide a model parameter",
        );
    }
    if let Some(status) = ctx.scenario.status {
        return error(ctx, api.name(), status);
    }
    let sc = ctx.scenario;
    let input = tokens_for_chars(input_chars(api, ctx.body)) + sc.cached;
    let output = u64::from(sc.chunks) + sc.reasoning;
    let tokens = Tokens {
        input: Some(input),
        output: (api != Api::Embeddings).then_some(output),
        cache_read: (api != Api::Embeddings).then_some(sc.cached),
        cache_write: None,
        reasoning: (api != Api::Embeddings).then_some(sc.reasoning),
    };
    match api {
        Api::Chat => chat(ctx, tokens),
        Api::Completions => completions(ctx, tokens),
        Api::Embeddings => embeddings(ctx, input),
        Api::Responses => responses(ctx, tokens),
    }
}

fn include_usage(ctx: &Ctx<'_>) -> bool {
    ctx.body["stream_options"]["include_usage"].as_bool() == Some(true)
}

fn chat_usage(t: &Tokens, style_full: bool) -> J {
    let input = t.input.unwrap_or(0);
    let output = t.output.unwrap_or(0);
    let mut prompt_details = vec![("cached_tokens", n(t.cache_read.unwrap_or(0)))];
    let mut completion_details = vec![("reasoning_tokens", n(t.reasoning.unwrap_or(0)))];
    if style_full {
        prompt_details.push(("audio_tokens", n(0)));
        completion_details.extend([
            ("audio_tokens", n(0)),
            ("accepted_prediction_tokens", n(0)),
            ("rejected_prediction_tokens", n(0)),
        ]);
    }
    obj(vec![
        ("prompt_tokens", n(input)),
        ("completion_tokens", n(output)),
        ("total_tokens", n(input + output)),
        ("prompt_tokens_details", obj(prompt_details)),
        ("completion_tokens_details", obj(completion_details)),
    ])
}

fn data(v: &J) -> String {
    format!("data: {}\n\n", v.render(Style::Compact))
}

fn chat(ctx: &Ctx<'_>, tokens: Tokens) -> Reply {
    let model = snapshot(&ctx.scenario.base_model);
    let id = ctx.id("chatcmpl-", 29, 2);
    let fingerprint = "fp_tokentap01";
    if !ctx.stream {
        let body = obj(vec![
            ("id", s(&id)),
            ("object", s("chat.completion")),
            ("created", n(ctx.created)),
            ("model", s(&model)),
            (
                "choices",
                arr(vec![obj(vec![
                    ("index", n(0)),
                    (
                        "message",
                        obj(vec![
                            ("role", s("assistant")),
                            ("content", s(ctx.full_text())),
                            ("refusal", J::Null),
                            ("annotations", arr(vec![])),
                        ]),
                    ),
                    ("logprobs", J::Null),
                    ("finish_reason", s("stop")),
                ])]),
            ),
            ("usage", chat_usage(&tokens, true)),
            ("service_tier", s("default")),
            ("system_fingerprint", s(fingerprint)),
        ]);
        return whole(ctx, Api::Chat, body, model, tokens);
    }
    let with_usage = include_usage(ctx);
    let mut seq = 0;
    let mut chunk = |delta: J, finish: Option<&str>| {
        seq += 1;
        let mut fields = vec![
            ("id", s(&id)),
            ("object", s("chat.completion.chunk")),
            ("created", n(ctx.created)),
            ("model", s(&model)),
            ("service_tier", s("default")),
            ("system_fingerprint", s(fingerprint)),
            (
                "choices",
                arr(vec![obj(vec![
                    ("index", n(0)),
                    ("delta", delta),
                    ("logprobs", J::Null),
                    ("finish_reason", opt_s(finish)),
                ])]),
            ),
        ];
        if with_usage {
            fields.push(("usage", J::Null));
        }
        fields.push(("obfuscation", s(ctx.id("", 3 + seq % 7, 100 + seq as u64))));
        data(&obj(fields))
    };
    let preamble = vec![chunk(
        obj(vec![
            ("role", s("assistant")),
            ("content", s("")),
            ("refusal", J::Null),
        ]),
        None,
    )];
    let chunks: Vec<String> = (0..ctx.scenario.chunks)
        .map(|i| chunk(obj(vec![("content", s(Ctx::word(i)))]), None))
        .collect();
    let mut finish = vec![chunk(obj(vec![]), Some("stop"))];
    if with_usage {
        finish.push(data(&obj(vec![
            ("id", s(&id)),
            ("object", s("chat.completion.chunk")),
            ("created", n(ctx.created)),
            ("model", s(&model)),
            ("service_tier", s("default")),
            ("system_fingerprint", s(fingerprint)),
            ("choices", arr(vec![])),
            ("usage", chat_usage(&tokens, true)),
            ("obfuscation", s(ctx.id("", 5, 99))),
        ])));
    }
    finish.push("data: [DONE]\n\n".to_owned());
    let error = ctx.scenario.midstream_error.then(|| {
        (
            data(&error_object(
                "The server had an error while processing your request. Sorry about that!",
                "server_error",
                None,
            )),
            "server_error".to_owned(),
        )
    });
    stream_reply(
        ctx,
        Api::Chat,
        model,
        tokens,
        with_usage,
        StreamPlan {
            preamble,
            chunks,
            finish,
            error,
            early_tokens: Tokens::default(),
        },
    )
}

fn completions(ctx: &Ctx<'_>, tokens: Tokens) -> Reply {
    let model = snapshot(&ctx.scenario.base_model);
    let id = ctx.id("cmpl-", 29, 3);
    let usage = |t: &Tokens| {
        let (i, o) = (t.input.unwrap_or(0), t.output.unwrap_or(0));
        obj(vec![
            ("prompt_tokens", n(i)),
            ("completion_tokens", n(o)),
            ("total_tokens", n(i + o)),
        ])
    };
    if !ctx.stream {
        let body = obj(vec![
            ("id", s(&id)),
            ("object", s("text_completion")),
            ("created", n(ctx.created)),
            ("model", s(&model)),
            (
                "choices",
                arr(vec![obj(vec![
                    ("text", s(ctx.full_text())),
                    ("index", n(0)),
                    ("logprobs", J::Null),
                    ("finish_reason", s("stop")),
                ])]),
            ),
            ("usage", usage(&tokens)),
        ]);
        return whole(ctx, Api::Completions, body, model, tokens);
    }
    let with_usage = include_usage(ctx);
    let chunk = |text: &str, finish: Option<&str>| {
        let mut fields = vec![
            ("id", s(&id)),
            ("object", s("text_completion")),
            ("created", n(ctx.created)),
            (
                "choices",
                arr(vec![obj(vec![
                    ("text", s(text)),
                    ("index", n(0)),
                    ("logprobs", J::Null),
                    ("finish_reason", opt_s(finish)),
                ])]),
            ),
            ("model", s(&model)),
        ];
        if with_usage {
            fields.push(("usage", J::Null));
        }
        data(&obj(fields))
    };
    let chunks = (0..ctx.scenario.chunks)
        .map(|i| chunk(Ctx::word(i), None))
        .collect();
    let mut finish = vec![chunk("", Some("stop"))];
    if with_usage {
        finish.push(data(&obj(vec![
            ("id", s(&id)),
            ("object", s("text_completion")),
            ("created", n(ctx.created)),
            ("choices", arr(vec![])),
            ("model", s(&model)),
            ("usage", usage(&tokens)),
        ])));
    }
    finish.push("data: [DONE]\n\n".to_owned());
    let error = ctx.scenario.midstream_error.then(|| {
        (
            data(&error_object(
                "The server had an error while processing your request. Sorry about that!",
                "server_error",
                None,
            )),
            "server_error".to_owned(),
        )
    });
    stream_reply(
        ctx,
        Api::Completions,
        model,
        tokens,
        with_usage,
        StreamPlan {
            preamble: Vec::new(),
            chunks,
            finish,
            error,
            early_tokens: Tokens::default(),
        },
    )
}

fn embeddings(ctx: &Ctx<'_>, input_tokens: u64) -> Reply {
    let model = snapshot(&ctx.scenario.base_model);
    let inputs = match &ctx.body["input"] {
        Value::Array(items) => items.len().max(1),
        _ => 1,
    };
    let dims = ctx.body["dimensions"]
        .as_u64()
        .and_then(|d| usize::try_from(d).ok())
        .unwrap_or(16)
        .clamp(1, 4096);
    let base64 = ctx.body["encoding_format"].as_str() == Some("base64");
    let data: Vec<J> = (0..inputs)
        .map(|i| {
            let values: Vec<f32> = (0..dims)
                .map(|d| (((i * 31 + d * 7) % 200) as f32 - 100.0) / 1000.0)
                .collect();
            let embedding = if base64 {
                let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                s(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                arr(values.iter().map(|v| J::Float(f64::from(*v))).collect())
            };
            obj(vec![
                ("object", s("embedding")),
                ("index", n(i as u64)),
                ("embedding", embedding),
            ])
        })
        .collect();
    let body = obj(vec![
        ("object", s("list")),
        ("data", arr(data)),
        ("model", s(&model)),
        (
            "usage",
            obj(vec![
                ("prompt_tokens", n(input_tokens)),
                ("total_tokens", n(input_tokens)),
            ]),
        ),
    ]);
    let tokens = Tokens {
        input: Some(input_tokens),
        ..Tokens::default()
    };
    whole(ctx, Api::Embeddings, body, model, tokens)
}

/// The Responses API `response` object.
fn response_object(
    ctx: &Ctx<'_>,
    model: &str,
    status: &str,
    output: Vec<J>,
    usage: J,
    error: J,
) -> J {
    obj(vec![
        ("id", s(ctx.id("resp_", 48, 4))),
        ("object", s("response")),
        ("created_at", n(ctx.created)),
        ("status", s(status)),
        ("background", J::Bool(false)),
        ("error", error),
        ("incomplete_details", J::Null),
        (
            "instructions",
            ctx.body["instructions"].as_str().map_or(J::Null, s),
        ),
        ("max_output_tokens", J::Null),
        ("max_tool_calls", J::Null),
        ("model", s(model)),
        ("output", arr(output)),
        ("parallel_tool_calls", J::Bool(true)),
        ("previous_response_id", J::Null),
        ("prompt_cache_key", J::Null),
        (
            "reasoning",
            obj(vec![("effort", J::Null), ("summary", J::Null)]),
        ),
        ("safety_identifier", J::Null),
        ("service_tier", s("default")),
        ("store", J::Bool(true)),
        ("temperature", J::Float(1.0)),
        (
            "text",
            obj(vec![
                ("format", obj(vec![("type", s("text"))])),
                ("verbosity", s("medium")),
            ]),
        ),
        ("tool_choice", s("auto")),
        ("tools", arr(vec![])),
        ("top_logprobs", n(0)),
        ("top_p", J::Float(1.0)),
        ("truncation", s("disabled")),
        ("usage", usage),
        ("user", J::Null),
        ("metadata", obj(vec![])),
    ])
}

fn responses_usage(t: &Tokens) -> J {
    let (i, o) = (t.input.unwrap_or(0), t.output.unwrap_or(0));
    obj(vec![
        ("input_tokens", n(i)),
        (
            "input_tokens_details",
            obj(vec![("cached_tokens", n(t.cache_read.unwrap_or(0)))]),
        ),
        ("output_tokens", n(o)),
        (
            "output_tokens_details",
            obj(vec![("reasoning_tokens", n(t.reasoning.unwrap_or(0)))]),
        ),
        ("total_tokens", n(i + o)),
    ])
}

fn output_text_part(text: &str) -> J {
    obj(vec![
        ("type", s("output_text")),
        ("annotations", arr(vec![])),
        ("logprobs", arr(vec![])),
        ("text", s(text)),
    ])
}

fn message_item(item_id: &str, status: &str, content: Vec<J>) -> J {
    obj(vec![
        ("id", s(item_id)),
        ("type", s("message")),
        ("status", s(status)),
        ("content", arr(content)),
        ("role", s("assistant")),
    ])
}

fn responses(ctx: &Ctx<'_>, tokens: Tokens) -> Reply {
    let model = snapshot(&ctx.scenario.base_model);
    let item_id = ctx.id("msg_", 48, 5);
    let text = ctx.full_text();
    if !ctx.stream {
        let item = message_item(&item_id, "completed", vec![output_text_part(&text)]);
        let body = response_object(
            ctx,
            &model,
            "completed",
            vec![item],
            responses_usage(&tokens),
            J::Null,
        );
        return whole(ctx, Api::Responses, body, model, tokens);
    }
    let mut seq = 0u64;
    let mut event = |kind: &'static str, fields: Vec<(&'static str, J)>| {
        let mut all = vec![("type", s(kind)), ("sequence_number", n(seq))];
        seq += 1;
        all.extend(fields);
        format!(
            "event: {kind}\ndata: {}\n\n",
            obj(all).render(Style::Compact)
        )
    };
    let in_progress =
        |ctx: &Ctx<'_>| response_object(ctx, &model, "in_progress", vec![], J::Null, J::Null);
    let preamble = vec![
        event("response.created", vec![("response", in_progress(ctx))]),
        event("response.in_progress", vec![("response", in_progress(ctx))]),
        event(
            "response.output_item.added",
            vec![
                ("output_index", n(0)),
                ("item", message_item(&item_id, "in_progress", vec![])),
            ],
        ),
        event(
            "response.content_part.added",
            vec![
                ("item_id", s(&item_id)),
                ("output_index", n(0)),
                ("content_index", n(0)),
                ("part", output_text_part("")),
            ],
        ),
    ];
    let chunks: Vec<String> = (0..ctx.scenario.chunks)
        .map(|i| {
            event(
                "response.output_text.delta",
                vec![
                    ("item_id", s(&item_id)),
                    ("output_index", n(0)),
                    ("content_index", n(0)),
                    ("delta", s(Ctx::word(i))),
                    ("logprobs", arr(vec![])),
                    (
                        "obfuscation",
                        s(ctx.id("", 4 + (i as usize % 9), 200 + u64::from(i))),
                    ),
                ],
            )
        })
        .collect();
    // The error events take the sequence number that follows the chunks sent before them.
    let cut = ctx.scenario.cut_after().unwrap_or(0);
    let error_seq = 4 + u64::from(cut);
    let item_done = message_item(&item_id, "completed", vec![output_text_part(&text)]);
    let finish = vec![
        event(
            "response.output_text.done",
            vec![
                ("item_id", s(&item_id)),
                ("output_index", n(0)),
                ("content_index", n(0)),
                ("text", s(&text)),
                ("logprobs", arr(vec![])),
            ],
        ),
        event(
            "response.content_part.done",
            vec![
                ("item_id", s(&item_id)),
                ("output_index", n(0)),
                ("content_index", n(0)),
                ("part", output_text_part(&text)),
            ],
        ),
        event(
            "response.output_item.done",
            vec![("output_index", n(0)), ("item", item_done.clone())],
        ),
        event(
            "response.completed",
            vec![(
                "response",
                response_object(
                    ctx,
                    &model,
                    "completed",
                    vec![item_done],
                    responses_usage(&tokens),
                    J::Null,
                ),
            )],
        ),
    ];
    let message = "An error occurred while processing your request. You can retry your request, or contact us through our help center at help.openai.com if the error persists.";
    let error = if ctx.scenario.error_event {
        let data = obj(vec![
            ("type", s("error")),
            ("sequence_number", n(error_seq)),
            ("code", s("server_error")),
            ("message", s(message)),
            ("param", J::Null),
        ]);
        Some((
            format!("event: error\ndata: {}\n\n", data.render(Style::Compact)),
            "server_error".to_owned(),
        ))
    } else if ctx.scenario.midstream_error {
        let partial: String = (0..cut).map(Ctx::word).collect();
        let failed = response_object(
            ctx,
            &model,
            "failed",
            vec![message_item(
                &item_id,
                "incomplete",
                vec![output_text_part(&partial)],
            )],
            J::Null,
            obj(vec![("code", s("server_error")), ("message", s(message))]),
        );
        let data = obj(vec![
            ("type", s("response.failed")),
            ("sequence_number", n(error_seq)),
            ("response", failed),
        ]);
        Some((
            format!(
                "event: response.failed\ndata: {}\n\n",
                data.render(Style::Compact)
            ),
            "server_error".to_owned(),
        ))
    } else {
        None
    };
    stream_reply(
        ctx,
        Api::Responses,
        model,
        tokens,
        true,
        StreamPlan {
            preamble,
            chunks,
            finish,
            error,
            early_tokens: Tokens::default(),
        },
    )
}

fn whole(ctx: &Ctx<'_>, api: Api, body: J, model: String, tokens: Tokens) -> Reply {
    Reply {
        api: api.name(),
        status: 200,
        headers: headers(ctx, "application/json"),
        gzip: true,
        body: Body::Whole(body.render(Style::Pretty(2)).into_bytes()),
        response_model: Some(model),
        error_type: None,
        tokens,
    }
}

fn stream_reply(
    ctx: &Ctx<'_>,
    api: Api,
    model: String,
    tokens: Tokens,
    usage_sent: bool,
    plan: StreamPlan,
) -> Reply {
    Reply {
        api: api.name(),
        status: 200,
        headers: headers(ctx, "text/event-stream; charset=utf-8"),
        // OpenAI does not compress event streams.
        gzip: false,
        body: Body::Stream(plan),
        response_model: Some(model),
        error_type: None,
        tokens: if usage_sent {
            tokens
        } else {
            Tokens::default()
        },
    }
}

/// `{"error":{"message","type","param","code"}}`.
fn error_object(message: &str, kind: &str, code: Option<&str>) -> J {
    obj(vec![(
        "error",
        obj(vec![
            ("message", s(message)),
            ("type", s(kind)),
            ("param", J::Null),
            ("code", opt_s(code)),
        ]),
    )])
}

fn error_reply(
    ctx: &Ctx<'_>,
    api: &'static str,
    status: u16,
    kind: &str,
    code: Option<&str>,
    message: &str,
) -> Reply {
    let mut headers = headers(ctx, "application/json; charset=utf-8");
    if status == 429 {
        headers.retain(|(n, _)| *n != "x-ratelimit-remaining-requests");
        headers.push(("x-ratelimit-remaining-requests", "0".to_owned()));
        headers.push(("retry-after", "20".to_owned()));
    }
    let mut body = error_object(message, kind, code).render(Style::Pretty(4));
    body.push('\n');
    Reply {
        api,
        status,
        headers,
        gzip: false,
        body: Body::Whole(body.into_bytes()),
        response_model: None,
        error_type: Some(code.unwrap_or(kind).to_owned()),
        tokens: Tokens::default(),
    }
}

/// The error answer for `err{STATUS}`.
pub(crate) fn error(ctx: &Ctx<'_>, api: &'static str, status: u16) -> Reply {
    let model = &ctx.scenario.base_model;
    match status {
        429 => error_reply(
            ctx,
            api,
            status,
            "requests",
            Some("rate_limit_exceeded"),
            &format!(
                "Rate limit reached for {model} in organization org-tokentap on requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again in 20s. Visit https://platform.openai.com/account/rate-limits to learn more."
            ),
        ),
        401 => error_reply(
            ctx,
            api,
            status,
            "invalid_request_error",
            Some("invalid_api_key"),
            "Incorrect API key provided: sk-tokent*********test. You can find your API key at https://platform.openai.com/account/api-keys.",
        ),
        404 => error_reply(
            ctx,
            api,
            status,
            "invalid_request_error",
            Some("model_not_found"),
            &format!("The model `{model}` does not exist or you do not have access to it."),
        ),
        503 => error_reply(
            ctx,
            api,
            status,
            "server_error",
            None,
            "The engine is currently overloaded, please try again later.",
        ),
        s if s >= 500 => error_reply(
            ctx,
            api,
            status,
            "server_error",
            None,
            "The server had an error while processing your request. Sorry about that!",
        ),
        _ => error_reply(
            ctx,
            api,
            status,
            "invalid_request_error",
            None,
            "Invalid request (the mock provider was asked for this status).",
        ),
    }
}

/// Any other method or path (OpenAI's own answer for unknown URLs).
pub(crate) fn unknown_url(ctx: &Ctx<'_>, method: &str, path: &str) -> Reply {
    error_reply(
        ctx,
        "",
        404,
        "invalid_request_error",
        Some("unknown_url"),
        &format!("Invalid URL ({method} {path})"),
    )
}
