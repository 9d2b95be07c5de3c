//! Golden fixture tests: each `fixtures/*.fixture` is one exchange (request, response head,
//! body deliveries with capture times, gaps, end) and its `*.expected.json` is the full
//! record it must give. Every fixture is also replayed with the response body split at every
//! byte boundary (a seeded sample for large bodies) and one byte at a time: the record must
//! not change. Fixtures are replayed with content capture on (the expected records hold the
//! prompt and completion text), and once with it off (the same record without `content`).
//! `TOKENTAP_BLESS=1 cargo test -p tokentap --lib llm` rewrites the expected files (review
//! the diff).
//!
//! Fixture format, one directive per line (`#` comments):
//! - `provider HOST[:PORT]=NAME`: an override; `role server`: the observed process served it.
//! - `request METHOD TARGET`, then `header Name: value` lines, then `body [-n] [crlf]`: a
//!   block of lines up to a line holding only `.` (`-n`: no final newline; `crlf`: lines end
//!   with CRLF).
//! - `response STATUS at MS`, `header` lines.
//! - `chunk at MS [-n] [crlf]` + block: body bytes delivered at MS (ms after the request).
//! - `frame at MS [NAME=VALUE ...] [b64]` + block: an eventstream message whose payload is
//!   the block (trimmed), or with `b64`, `{"bytes":"<base64 of the block>"}`.
//! - `gap LEN`, `end complete|closed|interrupted at MS`, `abandoned at MS`.
//! - `expect json_errors=N frame_errors=N ignored=N ambiguous=N` (all default to 0).

use std::{fs, path::PathBuf};

use serde_json::Value;

use super::{
    ContentPolicy, ExchangeRecord, ExchangeTracker, LlmStats, ProcessContext, ProviderConfig,
    TrackerLimits, framing::eventstream::encode, providers::bedrock_invoke::base64_encode,
};
use crate::{
    http::{Headers, HttpEvent, HttpRequest, ResponseEnd, ResponseHead, Role, SparseBody},
    stream::ConnKey,
};

/// Request start, in capture ktime.
const T0: u64 = 5_000_000_000_000;
/// Its Unix time.
const UNIX0: i128 = 1_700_000_000_000_000_000;
const CONN: ConnKey = ConnKey {
    tgid: 4242,
    conn: 0x7f00_dead_beef,
};

fn ctx() -> ProcessContext {
    ProcessContext {
        pid: 4242,
        executable: "python3.12".into(),
        container_id: Some("3f0a1b2c4d5e".into()),
        ..ProcessContext::default()
    }
}

fn unix_ns_of(k: u64) -> i128 {
    i128::from(k) - i128::from(T0) + UNIX0
}

#[derive(Clone, Debug)]
enum Ev {
    Head(ResponseHead),
    Body(u64, Vec<u8>),
    Gap(u64),
    End(ResponseEnd, u64),
    Abandoned(u64),
}

#[derive(Debug, Default)]
struct Expect {
    json_errors: u64,
    frame_errors: u64,
    ignored: u64,
    ambiguous: u64,
}

#[derive(Debug)]
struct Fixture {
    overrides: Vec<String>,
    role: Role,
    request: HttpRequest,
    events: Vec<Ev>,
    expect: Expect,
}

fn ms(s: &str) -> u64 {
    let v: f64 = s.parse().unwrap_or_else(|_| panic!("bad time {s:?}"));
    T0 + (v * 1e6).round() as u64
}

/// The value after `at` in directive words.
fn at(words: &[&str]) -> u64 {
    let i = words
        .iter()
        .position(|w| *w == "at")
        .unwrap_or_else(|| panic!("no `at` in {words:?}"));
    ms(words[i + 1])
}

fn block<'a>(lines: &mut impl Iterator<Item = &'a str>, flags: &[&str]) -> Vec<u8> {
    let mut out = String::new();
    let eol = if flags.contains(&"crlf") {
        "\r\n"
    } else {
        "\n"
    };
    for line in lines.by_ref() {
        if line == "." {
            if flags.contains(&"-n") && out.ends_with(eol) {
                out.truncate(out.len() - eol.len());
            }
            return out.into_bytes();
        }
        out.push_str(line);
        out.push_str(eol);
    }
    panic!("unterminated block");
}

fn headers(list: &[(String, String)]) -> Headers {
    Headers::from_pairs(list.iter().map(|(n, v)| (n.as_str(), v.as_bytes())))
}

/// A response head being read: status, capture time, headers.
type PendingHead = Option<(u16, u64, Vec<(String, String)>)>;

fn parse_fixture(text: &str) -> Fixture {
    let mut overrides = Vec::new();
    let mut role = Role::Client;
    let mut method = String::new();
    let mut target = String::new();
    let mut req_headers: Vec<(String, String)> = Vec::new();
    let mut req_body = Vec::new();
    let mut resp: PendingHead = None;
    let mut events = Vec::new();
    let mut expect = Expect::default();
    let mut lines = text.lines();
    let flush_head = |resp: &mut PendingHead, events: &mut Vec<Ev>| {
        if let Some((status, ktime, h)) = resp.take() {
            events.push(Ev::Head(ResponseHead {
                status,
                headers: headers(&h),
                ktime_ns: ktime,
            }));
        }
    };
    while let Some(line) = lines.next() {
        let line = line.trim_end();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        match words[0] {
            "provider" => overrides.push(words[1].to_owned()),
            "role" => {
                role = match words[1] {
                    "client" => Role::Client,
                    "server" => Role::Server,
                    other => panic!("bad role {other:?}"),
                }
            }
            "request" => {
                method = words[1].to_owned();
                target = words[2].to_owned();
            }
            "header" => {
                let (n, v) = line["header ".len()..]
                    .split_once(':')
                    .unwrap_or_else(|| panic!("bad header line {line:?}"));
                let h = (n.trim().to_owned(), v.trim().to_owned());
                match resp.as_mut() {
                    Some((_, _, list)) => list.push(h),
                    None => req_headers.push(h),
                }
            }
            "body" => req_body = block(&mut lines, &words[1..]),
            "response" => {
                let status = words[1].parse().expect("status");
                resp = Some((status, at(&words), Vec::new()));
            }
            "chunk" => {
                flush_head(&mut resp, &mut events);
                let bytes = block(&mut lines, &words[1..]);
                events.push(Ev::Body(at(&words), bytes));
            }
            "frame" => {
                flush_head(&mut resp, &mut events);
                let payload = block(&mut lines, &[]);
                let payload = String::from_utf8(payload).expect("utf8");
                let payload = payload.trim();
                let payload = if words.contains(&"b64") {
                    format!(
                        r#"{{"bytes":"{}","p":"abcdefgh"}}"#,
                        base64_encode(payload.as_bytes())
                    )
                } else {
                    payload.to_owned()
                };
                let hdrs: Vec<(&str, &str)> =
                    words.iter().filter_map(|w| w.split_once('=')).collect();
                events.push(Ev::Body(at(&words), encode(&hdrs, payload.as_bytes())));
            }
            "gap" => {
                flush_head(&mut resp, &mut events);
                events.push(Ev::Gap(words[1].parse().expect("gap length")));
            }
            "end" => {
                flush_head(&mut resp, &mut events);
                let end = match words[1] {
                    "complete" => ResponseEnd::Complete,
                    "closed" => ResponseEnd::ClosedDelimited,
                    "interrupted" => ResponseEnd::Interrupted,
                    other => panic!("bad end {other:?}"),
                };
                events.push(Ev::End(end, at(&words)));
            }
            "abandoned" => {
                flush_head(&mut resp, &mut events);
                events.push(Ev::Abandoned(at(&words)));
            }
            "expect" => {
                for w in &words[1..] {
                    let (k, v) = w.split_once('=').expect("expect k=v");
                    let v = v.parse().expect("count");
                    match k {
                        "json_errors" => expect.json_errors = v,
                        "frame_errors" => expect.frame_errors = v,
                        "ignored" => expect.ignored = v,
                        "ambiguous" => expect.ambiguous = v,
                        other => panic!("unknown expectation {other:?}"),
                    }
                }
            }
            other => panic!("unknown directive {other:?}"),
        }
    }
    let mut wire = format!("{method} {target} HTTP/1.1\r\n");
    for (n, v) in &req_headers {
        wire.push_str(&format!("{n}: {v}\r\n"));
    }
    wire.push_str("\r\n");
    let request = HttpRequest {
        method,
        target,
        headers: headers(&req_headers),
        wire_len: (wire.len() + req_body.len()) as u64,
        body: SparseBody {
            total_len: req_body.len() as u64,
            head: req_body,
            ..SparseBody::default()
        },
        start_ktime_ns: T0,
        end_ktime_ns: T0 + 1_000_000,
    };
    Fixture {
        overrides,
        role,
        request,
        events,
        expect,
    }
}

fn replay(
    tracker: &mut ExchangeTracker,
    role: Role,
    request: &HttpRequest,
    events: &[Ev],
) -> Vec<ExchangeRecord> {
    let mut out = Vec::new();
    let mut emit = |r: ExchangeRecord| out.push(r);
    let ctx = ctx();
    let feed =
        |t: &mut ExchangeTracker, ev: HttpEvent<'_>, emit: &mut dyn FnMut(ExchangeRecord)| {
            t.on_http_event(&ev, &ctx, &unix_ns_of, emit);
        };
    let (conn, exchange) = (CONN, 3);
    feed(
        tracker,
        HttpEvent::Request {
            conn,
            exchange,
            role,
            request,
        },
        &mut emit,
    );
    for ev in events {
        let ev = match ev {
            Ev::Head(head) => HttpEvent::ResponseHead {
                conn,
                exchange,
                head,
            },
            Ev::Body(ktime, data) => HttpEvent::ResponseBody {
                conn,
                exchange,
                data,
                ktime_ns: *ktime,
            },
            Ev::Gap(len) => HttpEvent::ResponseGap {
                conn,
                exchange,
                len: *len,
            },
            Ev::End(end, ktime) => HttpEvent::ResponseEnd {
                conn,
                exchange,
                end: *end,
                ktime_ns: *ktime,
            },
            Ev::Abandoned(ktime) => HttpEvent::Abandoned {
                conn,
                exchange,
                ktime_ns: *ktime,
            },
        };
        feed(tracker, ev, &mut emit);
    }
    out
}

/// The events with the body piece holding body offset `at` split there.
fn split_at(events: &[Ev], at: usize) -> Vec<Ev> {
    let mut out = Vec::new();
    let mut offset = 0;
    for ev in events {
        if let Ev::Body(t, data) = ev {
            if offset < at && at < offset + data.len() {
                let (a, b) = data.split_at(at - offset);
                out.push(Ev::Body(*t, a.to_vec()));
                out.push(Ev::Body(*t, b.to_vec()));
            } else {
                out.push(ev.clone());
            }
            offset += data.len();
        } else {
            out.push(ev.clone());
        }
    }
    out
}

fn bytewise(events: &[Ev]) -> Vec<Ev> {
    let mut out = Vec::new();
    for ev in events {
        match ev {
            Ev::Body(t, data) => out.extend(data.chunks(1).map(|c| Ev::Body(*t, c.to_vec()))),
            other => out.push(other.clone()),
        }
    }
    out
}

/// A small deterministic generator (xorshift) for sampling split points.
fn sample(len: usize, n: usize, mut seed: u64) -> Vec<usize> {
    (0..n)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % len as u64) as usize
        })
        .collect()
}

fn run_one(f: &Fixture, events: &[Ev]) -> (Option<Value>, LlmStats) {
    run_with(f, events, true)
}

fn run_with(f: &Fixture, events: &[Ev], capture: bool) -> (Option<Value>, LlmStats) {
    let providers = ProviderConfig::from_specs(&f.overrides).expect("valid overrides");
    let mut tracker = ExchangeTracker::new(providers);
    tracker.set_content_policy(ContentPolicy {
        all: capture,
        ..ContentPolicy::default()
    });
    let records = replay(&mut tracker, f.role, &f.request, events);
    assert!(records.len() <= 1, "one exchange per fixture");
    assert_eq!(tracker.in_flight(), 0, "nothing left in flight");
    let record = records
        .first()
        .map(|r| serde_json::to_value(r).expect("serialize"));
    (record, tracker.stats().clone())
}

fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/llm/fixtures")
}

#[test]
fn golden_fixtures() {
    let bless = std::env::var_os("TOKENTAP_BLESS").is_some();
    let mut names: Vec<PathBuf> = fs::read_dir(fixtures_dir())
        .expect("fixtures dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "fixture"))
        .collect();
    names.sort();
    assert!(names.len() >= 40, "fixtures found: {}", names.len());
    let mut failures = Vec::new();
    for path in &names {
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("?")
            .to_owned();
        let text = fs::read_to_string(path).expect("read fixture");
        let f = parse_fixture(&text);
        let (record, stats) = run_one(&f, &f.events);
        let expected_path = path.with_extension("expected.json");
        let got = record.clone().unwrap_or(Value::Null);
        if bless {
            let text = serde_json::to_string_pretty(&got).expect("pretty") + "\n";
            fs::write(&expected_path, text).expect("write expected");
        }
        let expected: Value = fs::read_to_string(&expected_path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_else(|| panic!("{name}: no expected record (bless first)"));
        if got != expected {
            failures.push(format!(
                "{name}: record differs\n got: {}\nwant: {}",
                serde_json::to_string(&got).unwrap_or_default(),
                serde_json::to_string(&expected).unwrap_or_default()
            ));
            continue;
        }
        // Without content capture: the same record, without content.
        let (off, _) = run_with(&f, &f.events, false);
        let mut want_off = got.clone();
        if let Some(c) = want_off.get_mut("content") {
            *c = Value::Null;
        }
        if off.unwrap_or(Value::Null) != want_off {
            failures.push(format!("{name}: differs without content capture"));
            continue;
        }
        let e = &f.expect;
        let seen = (
            stats.json_errors,
            stats.frame_errors,
            stats.ignored_non_llm,
            stats.ambiguous_models,
        );
        if seen != (e.json_errors, e.frame_errors, e.ignored, e.ambiguous) {
            failures.push(format!(
                "{name}: stats (json, frame, ignored, ambiguous) = {seen:?}, expected {e:?}"
            ));
            continue;
        }
        // The same with the body split anywhere.
        let total: usize = f
            .events
            .iter()
            .map(|e| match e {
                Ev::Body(_, d) => d.len(),
                _ => 0,
            })
            .sum();
        let points: Vec<usize> = if total <= 6000 {
            (1..total).collect()
        } else {
            sample(total, 1500, 0x5eed_0000 + total as u64)
        };
        let mut variants: Vec<(String, Vec<Ev>)> = points
            .into_iter()
            .map(|p| (format!("split at {p}"), split_at(&f.events, p)))
            .collect();
        variants.push(("byte by byte".into(), bytewise(&f.events)));
        for (what, events) in variants {
            let (r, s) = run_one(&f, &events);
            if r.unwrap_or(Value::Null) != got || s.json_errors != stats.json_errors {
                failures.push(format!("{name}: differs when fed {what}"));
                break;
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

// ---- Exchanges built in code ----

fn request(host: &str, method: &str, target: &str, body: SparseBody) -> HttpRequest {
    HttpRequest {
        method: method.into(),
        target: target.into(),
        headers: Headers::from_pairs([
            ("Host", host.as_bytes()),
            ("Content-Type", &b"application/json"[..]),
            ("Authorization", &b"Bearer sk-secret"[..]),
        ]),
        wire_len: 300 + body.total_len,
        body,
        start_ktime_ns: T0,
        end_ktime_ns: T0 + 1_000_000,
    }
}

fn whole(body: &str) -> SparseBody {
    SparseBody {
        head: body.as_bytes().to_vec(),
        total_len: body.len() as u64,
        ..SparseBody::default()
    }
}

fn head(status: u16, content_type: &str, at_ms: u64) -> ResponseHead {
    ResponseHead {
        status,
        headers: Headers::from_pairs([("content-type", content_type.as_bytes())]),
        ktime_ns: T0 + at_ms * 1_000_000,
    }
}

fn body_events(head: ResponseHead, body: &[u8], end_ms: u64) -> Vec<Ev> {
    vec![
        Ev::Head(head),
        Ev::Body(T0 + end_ms * 1_000_000, body.to_vec()),
        Ev::End(ResponseEnd::Complete, T0 + end_ms * 1_000_000),
    ]
}

fn run(req: &HttpRequest, events: &[Ev]) -> (Vec<ExchangeRecord>, LlmStats) {
    let mut t = ExchangeTracker::new(ProviderConfig::default());
    let r = replay(&mut t, Role::Client, req, events);
    (r, t.stats().clone())
}

const CHAT_STREAM: &[u8] = b"data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-2024-08-06\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}]}\n\ndata: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-2024-08-06\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-2024-08-06\",\"choices\":[],\"usage\":{\"prompt_tokens\":1000012,\"completion_tokens\":1,\"total_tokens\":1000013}}\n\ndata: [DONE]\n\n";

/// A 40 MB prompt: the HTTP stage kept 64 KiB of head and tail. The OpenAI SDK writes
/// `messages` first, so `model` and `stream` are only in the tail, after a tool schema with a
/// nested `model` property.
#[test]
fn gapped_request_finds_model_and_stream_in_the_tail() {
    let filler =
        "All work and no play makes Jack a dull boy. \\\"model\\\": \\\"nope\\\" ".repeat(2000);
    let head_bytes = format!(r#"{{"messages":[{{"role":"system","content":"{filler}"#);
    let tail = format!(
        r#"{filler} end"}},{{"role":"user","content":"Summarise."}}],"model":"gpt-4o","stream":true,"stream_options":{{"include_usage":true}},"tools":[{{"type":"function","function":{{"name":"pick","parameters":{{"type":"object","properties":{{"model":{{"type":"string"}}}}}}}}}}]}}"#
    );
    let total = 40_000_000u64;
    let body = SparseBody {
        missing: total - head_bytes.len() as u64 - tail.len() as u64,
        head: head_bytes.into_bytes(),
        tail: tail.into_bytes(),
        total_len: total,
        undecodable: false,
    };
    let req = request("api.openai.com", "POST", "/v1/chat/completions", body);
    let (records, stats) = run(
        &req,
        &body_events(head(200, "text/event-stream", 900), CHAT_STREAM, 1200),
    );
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!(r.request_model.as_deref(), Some("gpt-4o"));
    assert!(r.streaming);
    assert_eq!(r.request_bytes, 300 + total);
    assert_eq!(r.tokens.input, Some(1_000_012));
    assert_eq!(r.error_type, None);
    assert_eq!(stats.ambiguous_models, 0);
    assert_eq!(stats.json_errors, 0);
}

/// When the tail cannot be anchored at the body's end (here: undecodable), keys are found at
/// an unknown depth; two different string values for `model` make it unknown, counted.
#[test]
fn ambiguous_model_is_unknown() {
    let tail = r#"x"}],"metadata":{"model":"router-v2"},"model":"gpt-4o","stream":true,"n"#;
    let body = SparseBody {
        head: br#"{"messages":[{"role":"user","content":"a"#.to_vec(),
        tail: tail.as_bytes().to_vec(),
        total_len: 10_000_000,
        missing: 9_000_000,
        undecodable: true,
    };
    let req = request("api.openai.com", "POST", "/v1/chat/completions", body);
    let (records, stats) = run(
        &req,
        &body_events(head(200, "text/event-stream", 500), CHAT_STREAM, 800),
    );
    assert_eq!(records[0].request_model, None);
    assert_eq!(
        records[0].response_model.as_deref(),
        Some("gpt-4o-2024-08-06")
    );
    assert!(records[0].capture_gaps);
    assert_eq!(stats.ambiguous_models, 1);

    // One distinct string candidate (the nested `model` is a schema object) is taken.
    let tail = r#"x"}],"tools":[{"properties":{"model":{"type":"string"}}}],"model":"gpt-4o","stream":true,"n"#;
    let body = SparseBody {
        head: b"{".to_vec(),
        tail: tail.as_bytes().to_vec(),
        total_len: 10_000_000,
        missing: 9_000_000,
        undecodable: true,
    };
    let req = request("api.openai.com", "POST", "/v1/chat/completions", body);
    let (records, stats) = run(
        &req,
        &body_events(head(200, "text/event-stream", 500), CHAT_STREAM, 800),
    );
    assert_eq!(records[0].request_model.as_deref(), Some("gpt-4o"));
    assert_eq!(stats.ambiguous_models, 0);
}

#[test]
fn non_llm_exchanges_are_ignored() {
    let cases = [
        ("example.com", "GET", "/index.html", ""),
        ("example.com", "POST", "/api/login", r#"{"user":"a"}"#),
        // Generic LLM-looking paths on an unknown host without a model.
        (
            "shop.example.com",
            "POST",
            "/api/chat",
            r#"{"message":"hello"}"#,
        ),
        (
            "forms.example.com",
            "POST",
            "/v2/surveys/7/responses",
            r#"{"answer":"yes"}"#,
        ),
        // A known host, but not an inference call.
        ("api.openai.com", "GET", "/v1/models", ""),
    ];
    for (host, method, target, body) in cases {
        let req = request(host, method, target, whole(body));
        let (records, stats) = run(
            &req,
            &body_events(head(200, "application/json", 50), b"{}", 60),
        );
        assert!(records.is_empty(), "{host} {method} {target}");
        assert_eq!(stats.ignored_non_llm, 1, "{host} {method} {target}");
        assert_eq!(stats.exchanges, 0);
    }
}

#[test]
fn in_flight_is_bounded_oldest_dropped() {
    let limits = TrackerLimits {
        max_in_flight: 2,
        ..TrackerLimits::default()
    };
    let mut t = ExchangeTracker::with_limits(ProviderConfig::default(), limits);
    let req = request(
        "api.openai.com",
        "POST",
        "/v1/chat/completions",
        whole(r#"{"model":"gpt-4o","messages":[]}"#),
    );
    let mut out = Vec::new();
    for exchange in 0..3 {
        let ev = HttpEvent::Request {
            conn: CONN,
            exchange,
            role: Role::Client,
            request: &req,
        };
        t.on_http_event(&ev, &ctx(), &unix_ns_of, &mut |r| out.push(r));
    }
    assert_eq!(t.in_flight(), 2);
    assert_eq!(t.stats().dropped.in_flight_cap, 1);
    // The dropped exchange's response is ignored; the others finish.
    for exchange in 0..3 {
        let ev = HttpEvent::Abandoned {
            conn: CONN,
            exchange,
            ktime_ns: T0 + 5_000_000_000,
        };
        t.on_http_event(&ev, &ctx(), &unix_ns_of, &mut |r| out.push(r));
    }
    assert_eq!(out.len(), 2);
    assert_eq!(t.in_flight(), 0);
    assert!(
        out.iter()
            .all(|r| r.error_type.as_deref() == Some("no_response"))
    );

    let ev = HttpEvent::Request {
        conn: CONN,
        exchange: 9,
        role: Role::Client,
        request: &req,
    };
    t.on_http_event(&ev, &ctx(), &unix_ns_of, &mut |r| out.push(r));
    assert_eq!(t.evict_idle(T0 + 10_000_000_000, 60_000_000_000), 0);
    assert_eq!(t.evict_idle(T0 + 100_000_000_000, 60_000_000_000), 1);
    assert_eq!(t.stats().dropped.idle, 1);
}

/// A 12 MB embeddings response: past the whole-body limit only head and tail are kept, and
/// `model` and `usage` are found at its end.
#[test]
fn large_json_response_is_scanned_in_head_and_tail() {
    let req = request(
        "api.openai.com",
        "POST",
        "/v1/embeddings",
        whole(r#"{"input":["a","b"],"model":"text-embedding-3-small","encoding_format":"float"}"#),
    );
    let mut events = vec![Ev::Head(head(200, "application/json", 40))];
    let mut body = String::from(r#"{"object":"list","data":["#);
    events.push(Ev::Body(T0 + 41_000_000, body.clone().into_bytes()));
    let vector = format!(
        r#"{{"object":"embedding","index":0,"embedding":[{}]}}"#,
        vec!["-0.0123456789"; 1536].join(",")
    );
    let mut sent = body.len();
    for i in 0..540 {
        body = if i == 0 {
            vector.clone()
        } else {
            format!(",{vector}")
        };
        sent += body.len();
        events.push(Ev::Body(T0 + 42_000_000, body.into_bytes()));
    }
    let end =
        r#"],"model":"text-embedding-3-small","usage":{"prompt_tokens":4218,"total_tokens":4218}}"#;
    sent += end.len();
    events.push(Ev::Body(T0 + 90_000_000, end.as_bytes().to_vec()));
    events.push(Ev::End(ResponseEnd::Complete, T0 + 90_000_000));
    assert!(sent > 8 << 20);
    let (records, stats) = run(&req, &events);
    let r = &records[0];
    assert_eq!(r.response_model.as_deref(), Some("text-embedding-3-small"));
    assert_eq!(r.tokens.input, Some(4218));
    assert_eq!(r.tokens.output, None);
    assert_eq!(r.response_bytes, sent as u64);
    assert_eq!(r.operation, "embeddings");
    assert_eq!(stats.partial_bodies, 1);
    assert_eq!(stats.json_errors, 0);
}

/// Bytes lost in the middle of a stream: decoding resumes at the next event, usage at the
/// end is still read, and the missing `[DONE]`-less end is not judged an interruption.
#[test]
fn stream_gap_resyncs() {
    let req = request(
        "api.openai.com",
        "POST",
        "/v1/chat/completions",
        whole(
            r#"{"messages":[],"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true}}"#,
        ),
    );
    let (first, rest) = CHAT_STREAM.split_at(60);
    let events = vec![
        Ev::Head(head(200, "text/event-stream", 100)),
        Ev::Body(T0 + 200_000_000, first.to_vec()),
        Ev::Gap(4000),
        Ev::Body(T0 + 300_000_000, rest[40..rest.len() - 14].to_vec()),
        Ev::End(ResponseEnd::Complete, T0 + 400_000_000),
    ];
    let (records, stats) = run(&req, &events);
    let r = &records[0];
    assert_eq!(r.tokens.input, Some(1_000_012));
    assert_eq!(r.error_type, None);
    assert!(r.capture_gaps);
    assert_eq!(stats.response_gaps, 1);
    assert_eq!(stats.json_errors, 0);
}

/// Request bodies never reach the record: nothing but the listed fields.
#[test]
fn record_carries_no_credentials_or_bodies() {
    let req = request(
        "api.openai.com",
        "POST",
        "/v1/chat/completions",
        whole(
            r#"{"messages":[{"role":"user","content":"my secret prompt"}],"model":"gpt-4o","stream":true}"#,
        ),
    );
    let (records, _) = run(
        &req,
        &body_events(head(200, "text/event-stream", 100), CHAT_STREAM, 300),
    );
    let json = serde_json::to_string(&records[0]).expect("serialize");
    assert!(!json.contains("secret"), "{json}");
    assert!(!json.contains("Bearer"), "{json}");
    assert!(!json.contains("Hi"), "{json}");
}

/// Writes every fixture as a fuzz seed for `fuzz/fuzz_targets/http_llm.rs`: a role byte, a
/// record-size byte, the raw request (with Content-Length), `\0\xff\0\xff`, and the raw
/// response (the fixture's body deliveries as chunks). Runs only when
/// `TOKENTAP_WRITE_FUZZ_SEEDS=DIR` is set (`cargo xtask fuzz` does that).
#[test]
fn write_fuzz_seeds() {
    let Some(dir) = std::env::var_os("TOKENTAP_WRITE_FUZZ_SEEDS") else {
        return;
    };
    let dir = PathBuf::from(dir);
    fs::create_dir_all(&dir).expect("seed dir");
    let mut written = 0;
    for entry in fs::read_dir(fixtures_dir()).expect("fixtures") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "fixture") {
            continue;
        }
        let f = parse_fixture(&fs::read_to_string(&path).expect("read fixture"));
        let body = f
            .request
            .body
            .complete()
            .unwrap_or(&f.request.body.head)
            .to_vec();
        let mut req = format!("{} {} HTTP/1.1\r\n", f.request.method, f.request.target);
        for (n, v) in f.request.headers.iter() {
            if n != "content-length" && n != "transfer-encoding" {
                req.push_str(&format!("{n}: {v}\r\n"));
            }
        }
        req.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
        let mut req = req.into_bytes();
        req.extend_from_slice(&body);
        let mut resp = Vec::new();
        for ev in &f.events {
            match ev {
                Ev::Head(h) => {
                    resp.extend_from_slice(format!("HTTP/1.1 {} X\r\n", h.status).as_bytes());
                    for (n, v) in h.headers.iter() {
                        if n != "content-length" && n != "transfer-encoding" {
                            resp.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
                        }
                    }
                    resp.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
                }
                Ev::Body(_, bytes) if !bytes.is_empty() => {
                    resp.extend_from_slice(format!("{:x}\r\n", bytes.len()).as_bytes());
                    resp.extend_from_slice(bytes);
                    resp.extend_from_slice(b"\r\n");
                }
                Ev::End(..) => resp.extend_from_slice(b"0\r\n\r\n"),
                _ => {}
            }
        }
        let role = u8::from(f.role == Role::Server);
        let mut seed = vec![role, 64];
        seed.extend_from_slice(&req);
        seed.extend_from_slice(b"\0\xff\0\xff");
        seed.extend_from_slice(&resp);
        let name = path
            .file_stem()
            .expect("stem")
            .to_string_lossy()
            .into_owned();
        fs::write(dir.join(name), seed).expect("write seed");
        written += 1;
    }
    assert!(written > 0, "no fixtures found");
}
