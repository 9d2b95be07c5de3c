use std::io::Read;
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use flate2::read::GzDecoder;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use serde_json::{Value, json};

use super::*;
use crate::sdk;

const WAIT: Duration = Duration::from_secs(10);

type ClientIo = HttpReader<StreamOwned<ClientConnection, TcpStream>>;

struct Client {
    io: ClientIo,
    host: &'static str,
}

#[derive(Debug)]
struct Response {
    status: u16,
    head: String,
    /// Payloads of the HTTP chunks as they arrived (empty for a Content-Length body).
    chunks: Vec<Vec<u8>>,
    /// Arrival time of each chunk, from when the request was sent.
    chunk_times: Vec<Duration>,
    /// The body, de-chunked and decompressed.
    body: Vec<u8>,
    /// The body ended without its terminating chunk (connection cut).
    truncated: bool,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.split("\r\n").skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn text(&self) -> String {
        String::from_utf8(self.body.clone()).expect("UTF-8 body")
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }

    /// SSE events as (event name, data), split on blank lines (LF or CRLF).
    fn events(&self) -> Vec<(Option<String>, String)> {
        let text = self.text().replace("\r\n", "\n");
        text.split("\n\n")
            .filter(|block| !block.trim().is_empty())
            .map(|block| {
                let mut event = None;
                let mut data = Vec::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        event = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push(v);
                    } else {
                        panic!("unexpected SSE line {line:?}");
                    }
                }
                (event, data.join("\n"))
            })
            .collect()
    }
}

fn connect(mock: &MockProvider, host: &'static str) -> Client {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(mock.ca_file()).expect("CA file") {
        roots.add(cert.expect("PEM")).expect("CA accepted");
    }
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let conn = ClientConnection::new(
        Arc::new(config),
        ServerName::try_from(host).expect("server name"),
    )
    .expect("client connection");
    let tcp = TcpStream::connect(mock.addr()).expect("connect");
    tcp.set_read_timeout(Some(WAIT)).expect("timeout");
    Client {
        io: HttpReader::new(StreamOwned::new(conn, tcp)),
        host,
    }
}

impl Client {
    fn send(&mut self, path: &str, body: &Value, gzip: bool) -> Response {
        let body = body.to_string();
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\n{}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.host,
            if gzip {
                "Accept-Encoding: gzip, deflate\r\n"
            } else {
                ""
            },
            body.len()
        );
        let out = self.io.get_mut();
        out.write_all(request.as_bytes()).expect("write request");
        out.flush().expect("flush request");
        self.read_response(Instant::now())
    }

    fn read_response(&mut self, sent: Instant) -> Response {
        let head = self
            .io
            .read_until(b"\r\n\r\n", MAX_HEAD)
            .expect("read head")
            .expect("a response");
        let head = String::from_utf8(head).expect("UTF-8 head");
        let status = head[9..12].parse().expect("status");
        let mut response = Response {
            status,
            head,
            chunks: Vec::new(),
            chunk_times: Vec::new(),
            body: Vec::new(),
            truncated: false,
        };
        let raw = if let Some(len) = response.header("content-length") {
            let len: usize = len.parse().expect("length");
            match self.io.take(len) {
                Ok(b) => b,
                Err(_) => {
                    response.truncated = true;
                    Vec::new()
                }
            }
        } else {
            assert_eq!(response.header("transfer-encoding"), Some("chunked"));
            let mut raw = Vec::new();
            loop {
                let Ok(Some(line)) = self.io.read_until(b"\r\n", MAX_LINE) else {
                    response.truncated = true;
                    break;
                };
                let size =
                    usize::from_str_radix(std::str::from_utf8(&line).expect("size").trim(), 16)
                        .expect("hex size");
                if size == 0 {
                    let end = self.io.take(2).expect("final CRLF");
                    assert_eq!(end, b"\r\n");
                    break;
                }
                let data = self.io.take(size).expect("chunk data");
                assert_eq!(self.io.take(2).expect("CRLF"), b"\r\n");
                response.chunk_times.push(sent.elapsed());
                raw.extend_from_slice(&data);
                response.chunks.push(data);
            }
            raw
        };
        response.body = if response.header("content-encoding") == Some("gzip") && !raw.is_empty() {
            let mut out = Vec::new();
            let mut dec = GzDecoder::new(&raw[..]);
            if dec.read_to_end(&mut out).is_err() {
                // A cut gzip stream: keep what decoded.
                assert!(response.truncated, "gzip body does not decode");
            }
            out
        } else {
            raw
        };
        response
    }
}

fn chat(model: &str, stream: bool, usage: bool) -> Value {
    let mut body = json!({
        "messages": [
            {"role": "system", "content": "12345678"},
            {"role": "user", "content": [{"type": "text", "text": "abcdefghijkl"}]},
        ],
        "model": model,
    });
    if stream {
        body["stream"] = json!(true);
    }
    if usage {
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

fn last_record(mock: &MockProvider) -> RequestRecord {
    mock.wait_requests(mock.requests().len(), WAIT)
        .last()
        .cloned()
        .expect("a record")
}

/// Positions of `keys` in `text` are increasing (the real services' key order).
fn assert_order(text: &str, keys: &[&str]) {
    let positions: Vec<usize> = keys
        .iter()
        .map(|k| {
            text.find(&format!("\"{k}\""))
                .unwrap_or_else(|| panic!("{k} missing in {text}"))
        })
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "keys {keys:?} out of order in {text}"
    );
}

#[test]
fn http_date_is_imf_fixdate() {
    assert_eq!(http_date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
    assert_eq!(http_date(1_709_251_199), "Thu, 29 Feb 2024 23:59:59 GMT");
}

#[test]
fn openai_chat_json_gzip_and_keepalive() {
    let mock = MockProvider::start().expect("mock");
    let mut c = connect(&mock, "api.openai.com");
    let r = c.send(
        "/v1/chat/completions",
        &chat("gpt-4o-mini-chunks3", false, false),
        true,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert!(r.header("content-length").is_some() && r.chunks.is_empty());
    let text = r.text();
    assert!(text.starts_with("{\n  \"id\": \"chatcmpl-"), "{text}");
    assert_order(
        &text,
        &["id", "object", "created", "model", "choices", "usage"],
    );
    let v = r.json();
    assert_eq!(v["model"], "gpt-4o-mini-2024-07-18");
    assert_eq!(v["choices"][0]["message"]["content"], "Hello from the");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    // 20 characters of message text: 5 tokens.
    assert_eq!(v["usage"]["prompt_tokens"], 5);
    assert_eq!(v["usage"]["completion_tokens"], 3);
    assert_eq!(v["usage"]["total_tokens"], 8);

    // Same connection, no gzip accepted this time.
    let r = c.send(
        "/v1/chat/completions",
        &chat("gpt-4o-cached7-reason2", false, false),
        false,
    );
    assert_eq!(r.header("content-encoding"), None);
    let v = r.json();
    assert_eq!(v["model"], "gpt-4o-2024-08-06");
    assert_eq!(v["usage"]["prompt_tokens"], 12);
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 7);
    assert_eq!(v["usage"]["completion_tokens"], 7);
    assert_eq!(
        v["usage"]["completion_tokens_details"]["reasoning_tokens"],
        2
    );

    let records = mock.wait_requests(2, WAIT);
    assert_eq!(records.len(), 2);
    let (a, b) = (&records[0], &records[1]);
    assert_eq!((a.connection, a.index_on_connection), (0, 0));
    assert_eq!((b.connection, b.index_on_connection), (0, 1));
    assert_eq!(
        a.alpn.as_deref(),
        Some("http/1.1"),
        "h2 offered, http/1.1 chosen"
    );
    assert_eq!(a.sni.as_deref(), Some("api.openai.com"));
    assert_eq!(a.api, "openai.chat_completions");
    assert_eq!(a.request_model.as_deref(), Some("gpt-4o-mini-chunks3"));
    assert_eq!(a.response_model.as_deref(), Some("gpt-4o-mini-2024-07-18"));
    assert_eq!(a.content_encoding.as_deref(), Some("gzip"));
    assert_eq!(a.outcome, Outcome::Complete);
    assert_eq!(
        a.tokens,
        Tokens {
            input: Some(5),
            output: Some(3),
            cache_read: Some(0),
            cache_write: None,
            reasoning: Some(0),
        }
    );
    assert_eq!(b.tokens.input, Some(12), "input includes the cached tokens");
}

#[test]
fn openai_chat_stream_framing_and_usage_chunk() {
    let mock = MockProvider::start().expect("mock");
    let mut c = connect(&mock, "api.openai.com");
    let r = c.send(
        "/v1/chat/completions",
        &chat("gpt-4o-mini-chunks4", true, true),
        true,
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/event-stream; charset=utf-8")
    );
    assert_eq!(
        r.header("content-encoding"),
        None,
        "OpenAI streams are not compressed"
    );
    // One event per HTTP chunk.
    for chunk in &r.chunks {
        let s = std::str::from_utf8(chunk).expect("UTF-8");
        assert!(s.starts_with("data: ") && s.ends_with("\n\n") && s.matches("\n\n").count() == 1);
    }
    let events = r.events();
    assert_eq!(events.last().map(|e| e.1.as_str()), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|(_, d)| serde_json::from_str(d).expect("chunk JSON"))
        .collect();
    // Role chunk, 4 content chunks, finish chunk, usage chunk.
    assert_eq!(chunks.len(), 7);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(chunks[0]["choices"][0]["delta"]["content"], "");
    let content: String = chunks[1..5]
        .iter()
        .map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .expect("content")
        })
        .collect();
    assert_eq!(content, "Hello from the tokentap");
    assert_eq!(chunks[5]["choices"][0]["finish_reason"], "stop");
    assert!(chunks[..6].iter().all(|c| c["usage"].is_null()));
    assert_eq!(chunks[6]["choices"], json!([]));
    assert_eq!(chunks[6]["usage"]["prompt_tokens"], 5);
    assert_eq!(chunks[6]["usage"]["completion_tokens"], 4);
    assert_eq!(chunks[6]["model"], "gpt-4o-mini-2024-07-18");

    // Without include_usage: no usage anywhere.
    let r = c.send(
        "/v1/chat/completions",
        &chat("gpt-4o-mini-chunks2", true, false),
        true,
    );
    assert!(!r.text().contains("\"usage\""), "{}", r.text());
    let rec = last_record(&mock);
    assert_eq!(rec.tokens, Tokens::default(), "no usage was sent");
    assert_eq!((rec.chunks_planned, rec.chunks_sent), (2, 2));
    assert!(rec.stream);
}

#[test]
fn long_context_prompt_of_40_mb() {
    let mock = MockProvider::start().expect("mock");
    let mut c = connect(&mock, "api.openai.com");
    let body = json!({
        "messages": [{"role": "user", "content": "a".repeat(40_000_000)}],
        "model": "gpt-4o-mini-chunks30",
    });
    let r = c.send("/v1/chat/completions", &body, false);
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["usage"]["prompt_tokens"], 10_000_000);
    assert_eq!(v["usage"]["completion_tokens"], 30);
}

#[test]
fn openai_responses_stream_events() {
    let mock = MockProvider::start().expect("mock");
    let mut c = connect(&mock, "api.openai.com");
    let body = json!({"model": "gpt-4.1-chunks3-cached4", "input": "abcdefgh", "stream": true});
    let r = c.send("/v1/responses", &body, true);
    let events = r.events();
    let names: Vec<&str> = events
        .iter()
        .map(|(e, _)| e.as_deref().expect("event:"))
        .collect();
    assert_eq!(
        names,
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    for (i, (name, data)) in events.iter().enumerate() {
        let v: Value = serde_json::from_str(data).expect("JSON");
        assert_eq!(v["type"].as_str(), name.as_deref());
        assert_eq!(v["sequence_number"], i as u64);
    }
    let done: Value = serde_json::from_str(&events[10].1).expect("JSON");
    assert_eq!(done["response"]["status"], "completed");
    assert_eq!(done["response"]["model"], "gpt-4.1-2025-04-14");
    assert_eq!(done["response"]["usage"]["input_tokens"], 2 + 4);
    assert_eq!(
        done["response"]["usage"]["input_tokens_details"]["cached_tokens"],
        4
    );
    assert_eq!(done["response"]["usage"]["output_tokens"], 3);

    // Non-streamed, with instructions counted as input.
    let body = json!({"model": "o3-mini", "instructions": "abcd", "input": [{"role": "user", "content": [{"type": "input_text", "text": "abcdefgh"}]}]});
    let v = c.send("/v1/responses", &body, true).json();
    assert_eq!(v["object"], "response");
    assert_eq!(v["model"], "o3-mini-2025-01-31");
    assert_eq!(v["usage"]["input_tokens"], 3);
    assert_eq!(
        v["output"][0]["content"][0]["text"],
        "Hello from the tokentap mock"
    );
}

#[test]
fn openai_embeddings_and_completions() {
    let mock = MockProvider::start().expect("mock");
    let mut c = connect(&mock, "api.openai.com");
    let body = json!({"model": "text-embedding-3-small", "input": ["abcdefgh", "abcd"], "encoding_format": "base64", "dimensions": 8});
    let v = c.send("/v1/embeddings", &body, true).json();
    assert_eq!(v["model"], "text-embedding-3-small");
    assert_eq!(v["usage"]["prompt_tokens"], 3);
    assert_eq!(v["data"].as_array().map(Vec::len), Some(2));
    let raw = base64::engine::general_purpose::STANDARD
        .decode(v["data"][1]["embedding"].as_str().expect("base64"))
        .expect("decodes");
    assert_eq!(raw.len(), 8 * 4);
    let rec = last_record(&mock);
    assert_eq!(rec.tokens.input, Some(3));
    assert_eq!(rec.tokens.output, None, "embeddings have no output tokens");

    let body = json!({"model": "gpt-3.5-turbo-instruct", "prompt": "abcdefgh"});
    let v = c.send("/v1/completions", &body, true).json();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["model"], "gpt-3.5-turbo-instruct:20230824-v2");
    assert_eq!(v["usage"]["completion_tokens"], 5);
}

#[test]
fn anthropic_stream_is_gzip_flushed_per_event() {
    let mock = MockProvider::start().expect("mock");
    let mut c = connect(&mock, "api.anthropic.com");
    let body = json!({
        "model": "claude-sonnet-4-5-chunks3-cached10-cachewrite6",
        "max_tokens": 100,
        "system": "abcd",
        "messages": [{"role": "user", "content": "abcdefgh"}],
        "stream": true,
    });
    let r = c.send("/v1/messages", &body, true);
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    // Each HTTP chunk decodes, on arrival, to whole events.
    let mut dec = flate2::write::GzDecoder::new(Vec::new());
    let mut decoded_events = 0;
    for chunk in &r.chunks {
        dec.write_all(chunk).expect("gzip data");
        dec.flush().expect("flush");
        let so_far = String::from_utf8(dec.get_ref().clone()).expect("UTF-8");
        assert!(
            so_far.ends_with("\n\n"),
            "a chunk ends mid-event: {so_far:?}"
        );
        decoded_events = so_far.matches("\n\n").count();
    }
    let events = r.events();
    assert_eq!(decoded_events, events.len());
    let names: Vec<&str> = events
        .iter()
        .map(|(e, _)| e.as_deref().expect("event:"))
        .collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
    );
    assert_eq!(events[2].1, "{\"type\": \"ping\"}");
    let start: Value = serde_json::from_str(&events[0].1).expect("JSON");
    assert_eq!(start["message"]["model"], "claude-sonnet-4-5-20250929");
    assert_eq!(start["message"]["usage"]["input_tokens"], 3);
    assert_eq!(start["message"]["usage"]["cache_read_input_tokens"], 10);
    assert_eq!(start["message"]["usage"]["cache_creation_input_tokens"], 6);
    let message = events[0].1.split_once("\"message\":").expect("message").1;
    assert_order(
        message,
        &["model", "id", "type", "role", "content", "usage"],
    );
    let delta: Value = serde_json::from_str(&events[7].1).expect("JSON");
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert_eq!(delta["usage"]["output_tokens"], 3, "cumulative");
    let rec = last_record(&mock);
    assert_eq!(
        rec.tokens,
        Tokens {
            input: Some(3 + 10 + 6),
            output: Some(3),
            cache_read: Some(10),
            cache_write: Some(6),
            reasoning: None,
        }
    );

    // Non-streamed: compact JSON, gzipped, Content-Length.
    body_without_stream(&mut c);
}

fn body_without_stream(c: &mut Client) {
    let body = json!({"model": "claude-3-5-haiku-latest", "max_tokens": 10, "messages": [{"role": "user", "content": [{"type": "text", "text": "abcdefgh"}]}]});
    let r = c.send("/v1/messages", &body, true);
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert!(
        r.text()
            .starts_with("{\"model\":\"claude-3-5-haiku-20241022\",\"id\":\"msg_01")
    );
    let v = r.json();
    assert_eq!(v["usage"]["input_tokens"], 2);
    assert_eq!(v["usage"]["output_tokens"], 5);
    assert_eq!(v["content"][0]["text"], "Hello from the tokentap mock");
}

#[test]
fn gemini_stream_whole_responses_crlf() {
    let mock = MockProvider::start().expect("mock");
    let mut c = connect(&mock, "generativelanguage.googleapis.com");
    let body = json!({"contents": [{"parts": [{"text": "abcdefgh"}], "role": "user"}]});
    let r = c.send(
        "/v1beta/models/gemini-2.5-flash-chunks3-reason5-cached4:streamGenerateContent?alt=sse",
        &body,
        true,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let text = r.text();
    assert!(text.starts_with("data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"Hello\"}],\"role\": \"model\"}"), "{text}");
    assert_eq!(text.matches("\r\n\r\n").count(), 3);
    let events: Vec<Value> = r
        .events()
        .iter()
        .map(|(e, d)| {
            assert!(e.is_none());
            serde_json::from_str(d).expect("JSON")
        })
        .collect();
    assert_eq!(events.len(), 3);
    for e in &events {
        assert_eq!(e["modelVersion"], "gemini-2.5-flash-001");
        assert_eq!(e["usageMetadata"]["promptTokenCount"], 2 + 4);
    }
    assert!(events[0]["candidates"][0]["finishReason"].is_null());
    let last = &events[2];
    assert_eq!(last["candidates"][0]["finishReason"], "STOP");
    assert_eq!(last["usageMetadata"]["candidatesTokenCount"], 3);
    assert_eq!(last["usageMetadata"]["thoughtsTokenCount"], 5);
    assert_eq!(last["usageMetadata"]["cachedContentTokenCount"], 4);
    assert_eq!(last["usageMetadata"]["totalTokenCount"], 6 + 3 + 5);

    // Non-streamed, on the v1 path, pretty-printed and gzipped.
    let r = c.send("/v1/models/gemini-2.0-flash:generateContent", &body, true);
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert!(r.text().starts_with("{\n  \"candidates\": [\n"));
    let v = r.json();
    assert_eq!(v["modelVersion"], "gemini-2.0-flash-001");
    assert_eq!(v["usageMetadata"]["candidatesTokenCount"], 5);
    let rec = last_record(&mock);
    assert_eq!(rec.api, "gcp.gemini.generate_content");
    assert_eq!(rec.request_model.as_deref(), Some("gemini-2.0-flash"));
}

#[test]
fn error_statuses_carry_the_providers_bodies() {
    let mock = MockProvider::start().expect("mock");
    let mut c = connect(&mock, "api.openai.com");
    let r = c.send(
        "/v1/chat/completions",
        &chat("gpt-4o-mini-err429", false, false),
        true,
    );
    assert_eq!(r.status, 429);
    assert!(r.head.starts_with("HTTP/1.1 429 Too Many Requests\r\n"));
    assert_eq!(r.header("retry-after"), Some("20"));
    assert!(r.text().starts_with(
        "{\n    \"error\": {\n        \"message\": \"Rate limit reached for gpt-4o-mini"
    ));
    let e = &r.json()["error"];
    assert_eq!(e["type"], "requests");
    assert_eq!(e["code"], "rate_limit_exceeded");
    assert!(e["param"].is_null());
    assert_eq!(
        last_record(&mock).error_type.as_deref(),
        Some("rate_limit_exceeded")
    );

    let r = c.send(
        "/v1/chat/completions",
        &chat("gpt-4o-mini-err500", true, true),
        true,
    );
    assert_eq!(r.status, 500);
    assert_eq!(r.json()["error"]["type"], "server_error");
    assert!(r.json()["error"]["code"].is_null());
    assert_eq!(
        last_record(&mock).error_type.as_deref(),
        Some("server_error")
    );

    let mut a = connect(&mock, "api.anthropic.com");
    let body = json!({"model": "claude-haiku-4-5-err529", "max_tokens": 1, "messages": [], "stream": true});
    let r = a.send("/v1/messages", &body, true);
    assert_eq!(r.status, 529);
    let v = r.json();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "overloaded_error");
    let body = json!({"model": "claude-haiku-4-5-err429", "max_tokens": 1, "messages": []});
    assert_eq!(
        a.send("/v1/messages", &body, true).json()["error"]["type"],
        "rate_limit_error"
    );

    let mut g = connect(&mock, "generativelanguage.googleapis.com");
    let r = g.send(
        "/v1beta/models/gemini-2.0-flash-err429:generateContent",
        &json!({}),
        true,
    );
    assert_eq!(r.status, 429);
    assert_eq!(
        r.json(),
        json!({"error": {"code": 429, "message": "Resource has been exhausted (e.g. check quota).", "status": "RESOURCE_EXHAUSTED"}})
    );
    assert_eq!(
        last_record(&mock).error_type.as_deref(),
        Some("RESOURCE_EXHAUSTED")
    );

    // Unknown paths and bad JSON.
    let r = c.send("/v1/nope", &json!({}), false);
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "unknown_url");
    let out = c.io.get_mut();
    out.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\nContent-Length: 3\r\n\r\n{x}")
        .expect("write");
    out.flush().expect("flush");
    let r = c.read_response(Instant::now());
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
}

#[test]
fn midstream_errors_end_the_stream_in_band() {
    let mock = MockProvider::start().expect("mock");
    let mut a = connect(&mock, "api.anthropic.com");
    let body = json!({"model": "claude-sonnet-4-5-midstream-error-chunks5", "max_tokens": 9, "messages": [{"role": "user", "content": "abcdefgh"}], "stream": true});
    let r = a.send("/v1/messages", &body, true);
    assert!(!r.truncated);
    let events = r.events();
    let names: Vec<&str> = events
        .iter()
        .map(|(e, _)| e.as_deref().expect("event:"))
        .collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "error",
        ]
    );
    let err: Value = serde_json::from_str(&events[5].1).expect("JSON");
    assert_eq!(err["error"]["type"], "overloaded_error");
    let rec = last_record(&mock);
    assert_eq!(rec.outcome, Outcome::MidstreamError);
    assert_eq!(rec.error_type.as_deref(), Some("overloaded_error"));
    assert_eq!(rec.chunks_sent, 2);
    assert_eq!(rec.tokens.input, Some(2), "message_start told the input");
    assert_eq!(rec.tokens.output, None);

    let mut c = connect(&mock, "api.openai.com");
    let body = json!({"model": "gpt-4.1-midstream-error-after1", "input": "x", "stream": true});
    let events = c.send("/v1/responses", &body, false).events();
    let (name, data) = events.last().expect("events");
    assert_eq!(name.as_deref(), Some("response.failed"));
    let v: Value = serde_json::from_str(data).expect("JSON");
    assert_eq!(v["response"]["status"], "failed");
    assert_eq!(v["response"]["error"]["code"], "server_error");
    assert_eq!(v["sequence_number"], 5);
    assert_eq!(events.len(), 6);

    let body = json!({"model": "gpt-4.1-errevent-after0", "input": "x", "stream": true});
    let events = c.send("/v1/responses", &body, false).events();
    let (name, data) = events.last().expect("events");
    assert_eq!(name.as_deref(), Some("error"));
    assert_eq!(
        serde_json::from_str::<Value>(data).expect("JSON")["code"],
        "server_error"
    );

    let r = c.send(
        "/v1/chat/completions",
        &chat("gpt-4o-midstream-error-after3", true, true),
        false,
    );
    let (_, data) = r.events().last().cloned().expect("events");
    assert_eq!(
        serde_json::from_str::<Value>(&data).expect("JSON")["error"]["type"],
        "server_error"
    );
    assert_eq!(last_record(&mock).chunks_sent, 3);

    let mut g = connect(&mock, "generativelanguage.googleapis.com");
    let body = json!({"contents": [{"parts": [{"text": "abcdefgh"}]}]});
    let r = g.send(
        "/v1beta/models/gemini-2.0-flash-midstream-error:streamGenerateContent?alt=sse",
        &body,
        false,
    );
    let (_, data) = r.events().last().cloned().expect("events");
    assert_eq!(
        serde_json::from_str::<Value>(&data).expect("JSON")["error"]["status"],
        "INTERNAL"
    );
}

#[test]
fn disconnect_cuts_the_connection_mid_stream() {
    let mock = MockProvider::start().expect("mock");
    let mut a = connect(&mock, "api.anthropic.com");
    let body = json!({"model": "claude-sonnet-4-5-disconnect-after3", "max_tokens": 9, "messages": [{"role": "user", "content": "abcdefgh"}], "stream": true});
    let r = a.send("/v1/messages", &body, true);
    assert!(r.truncated, "no terminating chunk");
    let deltas = r
        .events()
        .iter()
        .filter(|(e, _)| e.as_deref() == Some("content_block_delta"))
        .count();
    assert_eq!(deltas, 3);
    assert!(!r.text().contains("message_stop"));
    let rec = last_record(&mock);
    assert_eq!(rec.outcome, Outcome::Disconnected);
    assert_eq!(rec.error_type.as_deref(), Some("stream_interrupted"));
    assert_eq!(rec.chunks_sent, 3);

    // A non-streamed answer is cut after half its body.
    let mut c = connect(&mock, "api.openai.com");
    let r = c.send(
        "/v1/chat/completions",
        &chat("gpt-4o-disconnect", false, false),
        false,
    );
    assert!(r.truncated);
    assert_eq!(last_record(&mock).outcome, Outcome::Disconnected);

    // The server goes on serving.
    let mut c = connect(&mock, "api.openai.com");
    assert_eq!(
        c.send("/v1/chat/completions", &chat("gpt-4o", false, false), true)
            .status,
        200
    );
}

#[test]
fn delays_apply_to_content_not_to_the_preamble() {
    let mock = MockProvider::start().expect("mock");
    let mut a = connect(&mock, "api.anthropic.com");
    let body = json!({"model": "claude-haiku-4-5-chunks3-delay150-gap40", "max_tokens": 9, "messages": [{"role": "user", "content": "abcdefgh"}], "stream": true});
    let r = a.send("/v1/messages", &body, false);
    // message_start, content_block_start, ping: at once; then 3 deltas; then the finish.
    assert_eq!(r.chunks.len(), 9);
    assert!(
        r.chunk_times[2] < Duration::from_millis(140),
        "{:?}",
        r.chunk_times
    );
    // Nothing arrives before it was sent: 150 ms, then 40 ms more per chunk.
    for (i, at_least) in [(3, 150), (4, 190), (5, 230)] {
        assert!(
            r.chunk_times[i] >= Duration::from_millis(at_least),
            "{:?}",
            r.chunk_times
        );
    }
    let rec = last_record(&mock);
    let first = rec.t_first_chunk_mono_ns.expect("first chunk time");
    assert!(first - rec.t_request_mono_ns >= 150_000_000);
    assert!(rec.t_end_mono_ns.expect("end") - first >= 80_000_000);

    let mut c = connect(&mock, "api.openai.com");
    let t = Instant::now();
    c.send(
        "/v1/embeddings",
        &json!({"model": "text-embedding-3-small-delay80", "input": "x"}),
        true,
    );
    assert!(t.elapsed() >= Duration::from_millis(80));
}

#[test]
fn concurrent_connections_are_served_in_parallel() {
    let mock = Arc::new(MockProvider::start().expect("mock"));
    let started = Instant::now();
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let mock = Arc::clone(&mock);
            thread::spawn(move || {
                let mut c = connect(&mock, "api.openai.com");
                let model = format!("gpt-4o-mini-conc{i}-chunks3-delay200");
                let r = c.send("/v1/chat/completions", &chat(&model, true, true), true);
                assert_eq!(r.status, 200);
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "served one at a time?"
    );
    let records = mock.wait_requests(8, WAIT);
    let mut conns: Vec<usize> = records.iter().map(|r| r.connection).collect();
    conns.sort_unstable();
    conns.dedup();
    assert_eq!(conns.len(), 8);
}

/// The whole chain without the agent: the real SDKs (from the venv that `cargo xtask setup`
/// builds) against the mock, and what they parsed equals what the mock sent.
#[test]
fn real_sdks_against_the_mock() {
    let Some(python) = sdk::sdk_python() else {
        eprintln!("SKIPPED: no SDK venv (run `cargo xtask setup`, or set TOKENTAP_SDK_PYTHON)");
        return;
    };
    let _heavy = crate::tls_server::heavy_test_lock();
    let mock = MockProvider::start().expect("mock");
    let (report, wall) = sdk::run_sdk_client(&python, &mock, &[]).expect("sdk_client.py");
    let records = mock.wait_requests(report.calls.len(), WAIT);
    eprintln!(
        "sdk_client.py: {} calls, {:.2} s wall ({:.2} s start-up, {:.2} s calls); SDKs {:?}",
        report.calls.len(),
        wall,
        report.setup_s,
        report.calls_s,
        report.sdk_versions
    );
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(
        records.len(),
        report.calls.len(),
        "one HTTP exchange per call"
    );
    let problems = sdk::check_against_mock(&report, &records);
    assert!(
        problems.is_empty(),
        "SDK view != mock:\n{}",
        problems.join("\n")
    );
    assert!(
        report
            .libssl_mapped
            .iter()
            .any(|p| p.ends_with("/libssl.so.3")
                && (p.starts_with("/usr/lib") || p.starts_with("/lib"))),
        "the SDKs' TLS must come from the system libssl.so.3 (the file the agent hooks): {:?}",
        report.libssl_mapped
    );
    // The tolerance holds for wire times: an agent that timed each exchange exactly as the
    // mock saw it (request read → answer written, first content chunk written) passes the
    // end-to-end comparison against what the SDKs measured around their calls.
    let wire: Vec<sdk::SdkCall> = report
        .calls
        .iter()
        .zip(sdk::pair_with_records(&report.calls, &records))
        .map(|(call, rec)| {
            let rec = rec.expect("paired (checked above)");
            let secs = |ns: u64| ns.saturating_sub(rec.t_request_mono_ns) as f64 / 1e9;
            sdk::SdkCall {
                duration_s: secs(rec.t_end_mono_ns.expect("finished")),
                ttfc_s: call.ttfc_s.and(rec.t_first_chunk_mono_ns.map(secs)),
                ..call.clone()
            }
        })
        .collect();
    let scrape = crate::genai_check::tests::scrape_of(&wire);
    let samples = crate::prom::parse(&scrape).expect("synthetic scrape");
    // Other tests share the two cores here, so the calibration allows more than the contract
    // (the end-to-end test runs alone and holds the agent to the contract).
    let loose = crate::genai_check::Tolerance {
        abs_s: 0.050,
        rel: 0.25,
    };
    let comparison = crate::genai_check::compare_with(&report.calls, &samples, loose);
    assert!(comparison.ok(), "{}", comparison.message(&scrape));
    let strict = crate::genai_check::compare(&report.calls, &samples);
    if !strict.ok() {
        eprintln!(
            "note: with the contract's tolerance, wire times would miss in {} checks (a loaded machine?):\n{}",
            strict.failed_checks,
            strict.failed.join("\n")
        );
    }
    // Every scenario shape is there.
    for api in [
        "openai.chat_completions",
        "openai.responses",
        "openai.embeddings",
        "openai.completions",
        "anthropic.messages",
        "gcp.gemini.generate_content",
    ] {
        assert!(report.calls.iter().any(|c| c.api == api), "{api}");
    }
}

/// One request on a fresh plaintext connection that the mock closes after answering.
fn plaintext_exchange(mock: &MockProvider, body: &Value) -> String {
    let mut tcp = TcpStream::connect(mock.addr()).expect("connect");
    let body = body.to_string();
    write!(
        tcp,
        "POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut out = String::new();
    tcp.read_to_string(&mut out).expect("read to the end");
    out
}

#[test]
fn ollama_chat_over_plaintext_streams_ndjson_by_default() {
    let mock = MockProvider::start_plaintext().expect("start");
    let messages = json!([{"role": "user", "content": "twelve chars"}]);
    let streamed = plaintext_exchange(
        &mock,
        &json!({"model": "llama3.2-chunks3", "messages": messages}),
    );
    assert!(streamed.starts_with("HTTP/1.1 200"), "{streamed}");
    assert!(streamed.contains("application/x-ndjson"), "{streamed}");
    assert_eq!(streamed.matches("\"done\":false").count(), 3, "{streamed}");
    assert!(
        streamed.contains("\"done\":true,\"done_reason\":\"stop\""),
        "{streamed}"
    );
    assert!(
        streamed.contains("\"prompt_eval_count\":3,\"eval_count\":3"),
        "{streamed}"
    );

    let whole = plaintext_exchange(
        &mock,
        &json!({"model": "llama3.2-chunks2", "messages": messages, "stream": false}),
    );
    let body = whole.split("\r\n\r\n").nth(1).expect("a body");
    let v: Value = serde_json::from_str(body).expect("one JSON object");
    assert_eq!(v["done"], true);
    assert_eq!(v["message"]["content"], "Hello from");
    assert_eq!(
        (v["prompt_eval_count"].as_u64(), v["eval_count"].as_u64()),
        (Some(3), Some(2))
    );
    let records = mock.wait_requests(2, WAIT);
    assert_eq!(records.len(), 2);
    assert!(
        records
            .iter()
            .all(|r| r.sni.is_none() && r.tls_version.is_empty())
    );
}
