//! Faults replayed through the whole user-side pipeline, kernel-free: ring-buffer records
//! built with `tokentap_common::encode` go into `Pipeline<ExchangeSink>`, exchange records
//! come out. The privileged end-to-end tests (tests/tests/faults.rs) cause the same faults
//! with real processes; these pin the agent's answer for each, byte-exactly.
//!
//! - an `SSL*` freed mid-stream and reused at once by a new connection;
//! - a process exiting with an exchange in flight (response started, or not yet);
//! - a call lost whole in the ring buffer in the middle of a stream.

use std::sync::{Arc, Mutex};

use tokentap::{
    clock::KtimeClock,
    exchanges::{ExchangeSink, RecordSink},
    http::HttpConfig,
    llm::{ExchangeRecord, ProviderConfig},
    pipeline::Pipeline,
    stream::CaptureLimits,
};
use tokentap_common::{DEFAULT_HEAD_BYTES, DEFAULT_TAIL_BYTES, Direction, EventKind, encode};

const TGID: u32 = 4242;

struct Collect(Arc<Mutex<Vec<ExchangeRecord>>>);

impl RecordSink for Collect {
    fn record(&mut self, record: &ExchangeRecord) {
        if let Ok(mut v) = self.0.lock() {
            v.push(record.clone());
        }
    }
}

/// A connection's two directions, fed call by call with exact kernel stream offsets.
struct Conn {
    conn: u64,
    offsets: [u64; 2],
}

struct Replay {
    pipeline: Pipeline<ExchangeSink>,
    records: Arc<Mutex<Vec<ExchangeRecord>>>,
    ktime: u64,
}

impl Replay {
    fn new() -> Self {
        let records = Arc::new(Mutex::new(Vec::new()));
        let sink = ExchangeSink::new(
            HttpConfig::default(),
            ProviderConfig::default(),
            "/nonexistent".into(),
            vec![Box::new(Collect(records.clone()))],
        );
        let limits = CaptureLimits {
            head_bytes: DEFAULT_HEAD_BYTES,
            tail_bytes: DEFAULT_TAIL_BYTES,
        };
        Self {
            pipeline: Pipeline::new(limits, KtimeClock::with_offset(0), sink),
            records,
            ktime: 1_000_000,
        }
    }

    /// One SSL_write/SSL_read call; `deliver: false` loses all its records (ring full).
    fn call(&mut self, c: &mut Conn, direction: Direction, bytes: &[u8], deliver: bool) {
        self.ktime += 1_000_000;
        let d = direction as usize;
        let records = encode::tls_call(
            TGID,
            self.ktime,
            c.conn,
            0x1000,
            direction,
            c.offsets[d],
            bytes,
            DEFAULT_HEAD_BYTES,
            DEFAULT_TAIL_BYTES,
            16 * 1024,
        );
        c.offsets[d] += bytes.len() as u64;
        if deliver {
            for r in records {
                self.pipeline.handle_record(&r);
            }
        }
    }

    fn free(&mut self, c: &Conn) {
        self.ktime += 1_000_000;
        self.pipeline
            .handle_record(&encode::tls_free(TGID, self.ktime, c.conn));
    }

    fn exit(&mut self) {
        self.ktime += 1_000_000;
        self.pipeline.handle_record(&encode::process(
            EventKind::ProcessExit,
            TGID,
            self.ktime,
            b"python3",
        ));
    }

    fn records(&self) -> Vec<ExchangeRecord> {
        self.records.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

fn request(model: &str, stream: bool) -> Vec<u8> {
    let body = if stream {
        format!(
            r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}],"stream":true,"stream_options":{{"include_usage":true}}}}"#
        )
    } else {
        format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#)
    };
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

const STREAM_HEAD: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";

/// One SSE event in one HTTP chunk.
fn event(data: &str) -> Vec<u8> {
    let e = format!("data: {data}\n\n");
    format!("{:x}\r\n{e}\r\n", e.len()).into_bytes()
}

fn delta(model: &str, text: &str) -> Vec<u8> {
    event(&format!(
        r#"{{"id":"c1","object":"chat.completion.chunk","model":"{model}","choices":[{{"index":0,"delta":{{"content":"{text}"}},"finish_reason":null}}]}}"#
    ))
}

fn usage(model: &str, input: u64, output: u64) -> Vec<u8> {
    event(&format!(
        r#"{{"id":"c1","object":"chat.completion.chunk","model":"{model}","choices":[],"usage":{{"prompt_tokens":{input},"completion_tokens":{output},"total_tokens":{}}}}}"#,
        input + output
    ))
}

fn json_answer(model: &str, input: u64, output: u64) -> Vec<u8> {
    let body = format!(
        r#"{{"id":"c2","object":"chat.completion","model":"{model}","choices":[{{"index":0,"message":{{"role":"assistant","content":"ok"}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":{input},"completion_tokens":{output},"total_tokens":{}}}}}"#,
        input + output
    );
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn one<'a>(records: &'a [ExchangeRecord], model: &str) -> &'a ExchangeRecord {
    let found: Vec<&ExchangeRecord> = records
        .iter()
        .filter(|r| r.request_model.as_deref() == Some(model))
        .collect();
    assert_eq!(found.len(), 1, "one record for {model}: {records:#?}");
    found[0]
}

#[test]
fn a_freed_ssl_address_reused_at_once_never_merges_exchanges() {
    let mut r = Replay::new();
    let mut a = Conn {
        conn: 0x55aa_0000,
        offsets: [0, 0],
    };
    r.call(
        &mut a,
        Direction::Write,
        &request("gpt-4o-mini-a", true),
        true,
    );
    r.call(&mut a, Direction::Read, STREAM_HEAD, true);
    r.call(
        &mut a,
        Direction::Read,
        &delta("gpt-4o-mini-a", "Hel"),
        true,
    );
    // The client gives up mid-stream and frees the SSL*; OpenSSL hands the same address to
    // the next connection.
    r.free(&a);
    let mut b = Conn {
        conn: a.conn,
        offsets: [0, 0],
    };
    r.call(&mut b, Direction::Write, &request("gpt-4o-b", false), true);
    r.call(
        &mut b,
        Direction::Read,
        &json_answer("gpt-4o-b", 11, 3),
        true,
    );
    let records = r.records();
    assert_eq!(records.len(), 2, "{records:#?}");
    let first = one(&records, "gpt-4o-mini-a");
    assert_eq!(first.error_type.as_deref(), Some("stream_interrupted"));
    assert_eq!((first.tokens.input, first.tokens.output), (None, None));
    let second = one(&records, "gpt-4o-b");
    assert_eq!(second.error_type, None);
    assert_eq!(second.http_status, Some(200));
    assert_eq!(
        (second.tokens.input, second.tokens.output),
        (Some(11), Some(3))
    );
}

#[test]
fn a_process_exiting_mid_exchange_is_reported_and_its_state_released() {
    let mut r = Replay::new();
    let mut streaming = Conn {
        conn: 0x1,
        offsets: [0, 0],
    };
    let mut waiting = Conn {
        conn: 0x2,
        offsets: [0, 0],
    };
    r.call(
        &mut streaming,
        Direction::Write,
        &request("gpt-4o-mini-s", true),
        true,
    );
    r.call(&mut streaming, Direction::Read, STREAM_HEAD, true);
    r.call(
        &mut streaming,
        Direction::Read,
        &delta("gpt-4o-mini-s", "a"),
        true,
    );
    r.call(
        &mut waiting,
        Direction::Write,
        &request("gpt-4o-w", false),
        true,
    );
    assert_eq!(r.pipeline.assembler().open_connections(), 2);
    r.exit();
    let records = r.records();
    let s = one(&records, "gpt-4o-mini-s");
    assert_eq!(s.error_type.as_deref(), Some("stream_interrupted"));
    assert_eq!(s.tokens.output, None);
    let w = one(&records, "gpt-4o-w");
    assert_eq!(w.error_type.as_deref(), Some("no_response"));
    assert_eq!(w.http_status, None);
    assert_eq!(r.pipeline.assembler().open_connections(), 0);
    assert_eq!(r.pipeline.assembler().stats().connections_closed_at_exit, 2);
    let sink = r.pipeline.sink_mut();
    assert_eq!(sink.open_http_connections(), 0);
    assert_eq!(sink.llm_in_flight(), 0);
}

#[test]
fn a_call_lost_in_the_ring_buffer_mid_stream_is_marked_and_never_miscounted() {
    let mut r = Replay::new();
    let mut c = Conn {
        conn: 0x3,
        offsets: [0, 0],
    };
    let model = "gpt-4o-mini-lossy";
    r.call(&mut c, Direction::Write, &request(model, true), true);
    r.call(&mut c, Direction::Read, STREAM_HEAD, true);
    r.call(&mut c, Direction::Read, &delta(model, "one"), true);
    r.call(&mut c, Direction::Read, &delta(model, "two"), false);
    r.call(&mut c, Direction::Read, &delta(model, "three"), true);
    r.call(&mut c, Direction::Read, &usage(model, 9, 3), true);
    r.call(&mut c, Direction::Read, &event("[DONE]"), true);
    r.call(&mut c, Direction::Read, b"0\r\n\r\n", true);
    // The next exchange on the same connection is exact.
    r.call(
        &mut c,
        Direction::Write,
        &request("gpt-4o-after", false),
        true,
    );
    r.call(
        &mut c,
        Direction::Read,
        &json_answer("gpt-4o-after", 5, 2),
        true,
    );
    let records = r.records();
    let lossy = one(&records, model);
    assert!(
        lossy.capture_gaps,
        "a lost call marks the record: {lossy:#?}"
    );
    // The usage event arrived whole: its counts are the provider's; otherwise unknown.
    for (got, want) in [(lossy.tokens.input, 9), (lossy.tokens.output, 3)] {
        assert!(got.is_none() || got == Some(want), "{lossy:#?}");
    }
    let after = one(&records, "gpt-4o-after");
    assert!(!after.capture_gaps);
    assert_eq!(
        (after.tokens.input, after.tokens.output),
        (Some(5), Some(2))
    );
    assert_eq!(r.pipeline.assembler().stats().calls_lost, 1);
}
