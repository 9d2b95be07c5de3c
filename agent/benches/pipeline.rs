//! The user-side pipeline on one core: capture records in, exchange records and metric updates
//! out. A realistic mix on keep-alive connections:
//! - streamed chat, Anthropic-style: chunked, gzip-compressed SSE flushed per event;
//! - a 4 MiB chat request (long context) captured as head + gap + tail, JSON answer;
//! - embeddings with a gzip-compressed JSON answer of 16 vectors.
//!
//! Run: `cargo bench -p tokentap --bench pipeline`.

use std::io::Write;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use flate2::{Compression, write::GzEncoder};
use tokentap::{
    clock::KtimeClock, exchanges::ExchangeSink, http::HttpConfig, llm::ProviderConfig,
    metrics::genai::GenAiMetrics, pipeline::Pipeline, stream::CaptureLimits,
};
use tokentap_common::{DEFAULT_HEAD_BYTES, DEFAULT_TAIL_BYTES, Direction, encode};

const READ_SIZE: usize = 16 * 1024;

fn chunked(body: &[u8], piece: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for c in body.chunks(piece) {
        write!(out, "{:x}\r\n", c.len()).expect("vec write");
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

fn request(host: &str, path: &str, body: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nAccept-Encoding: gzip, deflate\r\nContent-Type: application/json\r\nAuthorization: Bearer sk-bench\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    (head.into_bytes(), body.to_vec())
}

/// Anthropic streamed message: gzip SSE, one flush per event, in chunked framing.
fn anthropic_stream() -> (Vec<Vec<u8>>, Vec<u8>) {
    let body = br#"{"max_tokens":1024,"messages":[{"role":"user","content":"Write a haiku about eBPF."}],"model":"claude-sonnet-4-5","stream":true}"#;
    let (head, body) = request("api.anthropic.com", "/v1/messages", body);
    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    let mut pieces = Vec::new();
    let mut events = vec![
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_01\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5-20250929\",\"content\":[],\"stop_reason\":null,\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"output_tokens\":1}}}\n\n".to_owned(),
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n".to_owned(),
    ];
    for i in 0..40 {
        events.push(format!("event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"word{i} \"}}}}\n\n"));
    }
    events.push(
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n".into(),
    );
    events.push("event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":40}}\n\n".into());
    events.push("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n".into());
    let mut resp = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for e in events {
        gz.write_all(e.as_bytes()).expect("gzip");
        gz.flush().expect("gzip flush");
        let piece = std::mem::take(gz.get_mut());
        write!(resp, "{:x}\r\n", piece.len()).expect("vec write");
        resp.extend_from_slice(&piece);
        resp.extend_from_slice(b"\r\n");
        pieces.push(std::mem::take(&mut resp));
    }
    let mut tail = gz.finish().expect("gzip end");
    let mut last = Vec::new();
    write!(last, "{:x}\r\n", tail.len()).expect("vec write");
    last.append(&mut tail);
    last.extend_from_slice(b"\r\n0\r\n\r\n");
    pieces.push(last);
    let mut req = head;
    req.extend_from_slice(&body);
    (pieces, req)
}

/// A 4 MiB chat request (the SDK puts `model` after `messages`), JSON answer.
fn long_context() -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let filler = "lorem ipsum dolor sit amet ".repeat(4 * 1024 * 1024 / 27);
    let body = format!(
        r#"{{"messages":[{{"role":"user","content":"{filler}"}}],"model":"gpt-4o","stream":false}}"#
    );
    let (head, body) = request("api.openai.com", "/v1/chat/completions", body.as_bytes());
    let json = br#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"message":{"role":"assistant","content":"Summary."},"finish_reason":"stop"}],"usage":{"prompt_tokens":1048576,"completion_tokens":2,"total_tokens":1048578,"prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}}}"#;
    let mut resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        json.len()
    )
    .into_bytes();
    resp.extend_from_slice(json);
    (vec![head, body], vec![resp])
}

/// Embeddings: 16 vectors of 256 floats, gzip JSON (as OpenAI answers).
fn embeddings() -> (Vec<Vec<u8>>, Vec<u8>) {
    let body = br#"{"input":["a","b","c","d","e","f","g","h","i","j","k","l","m","n","o","p"],"model":"text-embedding-3-small","encoding_format":"float"}"#;
    let (head, body) = request("api.openai.com", "/v1/embeddings", body);
    let vector: Vec<String> = (0..256)
        .map(|i| format!("{:.8}", (i as f64 * 0.37).sin()))
        .collect();
    let data: Vec<String> = (0..16)
        .map(|i| {
            format!(
                r#"{{"object":"embedding","index":{i},"embedding":[{}]}}"#,
                vector.join(",")
            )
        })
        .collect();
    let json = format!(
        r#"{{"object":"list","data":[{}],"model":"text-embedding-3-small","usage":{{"prompt_tokens":16,"total_tokens":16}}}}"#,
        data.join(",")
    );
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(json.as_bytes()).expect("gzip");
    let compressed = gz.finish().expect("gzip end");
    let mut resp = b"HTTP/1.1 200 OK
Content-Type: application/json
Content-Encoding: gzip
Transfer-Encoding: chunked

"
    .to_vec();
    resp.extend(chunked(&compressed, 8192));
    (vec![head, body], resp)
}

/// Capture records for `rounds` of each exchange kind, each kind on its own connection.
fn workload(rounds: usize) -> (Vec<Vec<u8>>, u64, u64) {
    let mut records = Vec::new();
    let mut ktime = 1_000_000u64;
    let mut payload = 0u64;
    let mut exchanges = 0u64;
    let (stream_resp, stream_req) = anthropic_stream();
    let (long_req, long_resp) = long_context();
    let (emb_req, emb_resp) = embeddings();
    let mut offsets = std::collections::HashMap::new();
    let mut call = |records: &mut Vec<Vec<u8>>, conn: u64, dir: Direction, bytes: &[u8]| {
        ktime += 50_000;
        let offset: &mut u64 = offsets.entry((conn, dir as u8)).or_default();
        let stream_offset = *offset;
        *offset += bytes.len() as u64;
        for rec in encode::tls_call(
            4242,
            ktime,
            conn,
            ktime,
            dir,
            stream_offset,
            bytes,
            DEFAULT_HEAD_BYTES,
            DEFAULT_TAIL_BYTES,
            16 * 1024,
        ) {
            payload += rec.len().saturating_sub(88) as u64;
            records.push(rec);
        }
    };
    for _ in 0..rounds {
        call(&mut records, 1, Direction::Write, &stream_req);
        for piece in &stream_resp {
            call(&mut records, 1, Direction::Read, piece);
        }
        for piece in &long_req {
            call(&mut records, 2, Direction::Write, piece);
        }
        for piece in &long_resp {
            call(&mut records, 2, Direction::Read, piece);
        }
        for piece in &emb_req {
            call(&mut records, 3, Direction::Write, piece);
        }
        for piece in emb_resp.chunks(READ_SIZE) {
            call(&mut records, 3, Direction::Read, piece);
        }
        exchanges += 3;
    }
    (records, payload, exchanges)
}

/// Small non-streamed chat completions on one keep-alive connection: the per-exchange cost.
fn small_chats(n: usize) -> (Vec<Vec<u8>>, u64) {
    let (head, body) = request(
        "api.openai.com",
        "/v1/chat/completions",
        br#"{"messages":[{"role":"user","content":"ping"}],"model":"gpt-4o-mini"}"#,
    );
    let json = br#"{"id":"chatcmpl-2","object":"chat.completion","created":1,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"pong"},"finish_reason":"stop"}],"usage":{"prompt_tokens":8,"completion_tokens":1,"total_tokens":9}}"#;
    let mut resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        json.len()
    )
    .into_bytes();
    resp.extend_from_slice(json);
    let mut req = head;
    req.extend_from_slice(&body);
    let mut records = Vec::new();
    let mut payload = 0;
    for i in 0..n as u64 {
        for (dir, bytes) in [(Direction::Write, &req), (Direction::Read, &resp)] {
            for rec in encode::tls_call(
                7,
                1_000 + i * 10,
                9,
                i,
                dir,
                i * bytes.len() as u64,
                bytes,
                DEFAULT_HEAD_BYTES,
                DEFAULT_TAIL_BYTES,
                16 * 1024,
            ) {
                payload += rec.len().saturating_sub(88) as u64;
                records.push(rec);
            }
        }
    }
    (records, payload)
}

fn pipeline() -> Pipeline<ExchangeSink> {
    let registry = prometheus::Registry::new();
    let sink = ExchangeSink::new(
        HttpConfig::default(),
        ProviderConfig::default(),
        "/nonexistent".into(),
        vec![Box::new(GenAiMetrics::new(&registry, 2000))],
    );
    let limits = CaptureLimits {
        head_bytes: DEFAULT_HEAD_BYTES,
        tail_bytes: DEFAULT_TAIL_BYTES,
    };
    Pipeline::new(limits, KtimeClock::with_offset(0), sink)
}

fn bench(c: &mut Criterion) {
    let (records, payload, exchanges) = workload(20);
    check_every_exchange(&records, exchanges);
    let (small, _) = small_chats(1000);
    check_every_exchange(&small, 1000);

    // One measurement per workload; the other rate follows from its time (the mix moves
    // `payload` bytes and `exchanges` exchanges per iteration).
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Bytes(payload));
    group.bench_function("mixed_bytes", |b| feed_all(b, &records));
    group.throughput(Throughput::Elements(1000));
    group.bench_function("small_chat_exchanges", |b| feed_all(b, &small));
    group.finish();
    eprintln!("mixed workload: {exchanges} exchanges, {payload} payload bytes per iteration");
}

/// The workload must really produce every exchange, or the numbers mean nothing.
fn check_every_exchange(records: &[Vec<u8>], exchanges: u64) {
    let mut check = pipeline();
    for r in records {
        check.handle_record(r);
    }
    assert_eq!(
        check.sink_mut().records(),
        exchanges,
        "every exchange recorded"
    );
}

fn feed_all(b: &mut criterion::Bencher<'_>, records: &[Vec<u8>]) {
    b.iter_batched(
        pipeline,
        |mut p| {
            for r in records {
                p.handle_record(r);
            }
            p
        },
        BatchSize::LargeInput,
    )
}

criterion_group!(benches, bench);
criterion_main!(benches);
