//! Like `http_llm`, with every bound of the HTTP and LLM stages set tiny so that small inputs
//! reach the overflow paths (bodies kept as head + tail and scanned, oversized stream events,
//! the decompression cap, the label-set cap), with content capture and redaction on, and every
//! record rendered as an exchange-log line and an OTLP span.
//!
//! Input layout: as `http_llm` (byte 0 role, byte 1 record size, request and response streams
//! separated by `\0\xff\0\xff`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokentap::{
    clock::KtimeClock,
    exchanges::{ExchangeSink, RecordSink},
    http::HttpConfig,
    llm::{ContentPolicy, ExchangeRecord, ProviderConfig, TrackerLimits},
    metrics::genai::GenAiMetrics,
    otlp::span::{IdGenerator, span_of},
    pipeline::Pipeline,
    stream::CaptureLimits,
};
use tokentap_common::{Direction, encode};

const SEPARATOR: &[u8] = b"\0\xff\0\xff";

/// Renders each record the way the exchange log and the OTLP exporter do.
struct Render;

impl RecordSink for Render {
    fn record(&mut self, record: &ExchangeRecord) {
        let line = serde_json::to_vec(record).expect("a record serialises");
        let _: serde_json::Value = serde_json::from_slice(&line).expect("valid JSON");
        let span = span_of(record, &mut IdGenerator::with_seed(1)).encode();
        assert!(span.len() < 1 << 20);
    }
}

fuzz_target!(|input: &[u8]| {
    let (Some(&role), Some(&size)) = (input.first(), input.get(1)) else { return };
    let body = &input[2..];
    let (request, response) = match body.windows(SEPARATOR.len()).position(|w| w == SEPARATOR) {
        Some(at) => (&body[..at], &body[at + SEPARATOR.len()..]),
        None => (body, &[][..]),
    };
    let (request_dir, response_dir) = if role % 2 == 0 {
        (Direction::Write, Direction::Read)
    } else {
        (Direction::Read, Direction::Write)
    };
    let registry = prometheus::Registry::new();
    let http = HttpConfig {
        body_head_limit: 64,
        body_tail_limit: 32,
        max_head_bytes: 512,
        max_decoded_body: 4096,
        max_connections: 4,
    };
    let llm = TrackerLimits {
        max_in_flight: 4,
        max_json_body: 128,
        json_budget: 256,
        keep_bytes: 32,
        max_event: 96,
        max_request_parse: 128,
        max_chunk_gaps: 4,
    };
    let sink = ExchangeSink::new(
        http,
        ProviderConfig::default(),
        "/nonexistent".into(),
        vec![Box::new(GenAiMetrics::new(&registry, 3)), Box::new(Render)],
    )
    .with_llm_limits(llm)
    .with_content_policy(ContentPolicy { all: true, executables: Vec::new(), max_bytes: 64 });
    let limits = CaptureLimits { head_bytes: 256, tail_bytes: 128 };
    let mut pipeline = Pipeline::new(limits, KtimeClock::with_offset(0), sink);
    let size = usize::from(size.max(1));
    let mut req = request.chunks(size);
    let mut resp = response.chunks(size);
    let mut ktime = 1_000;
    let mut offsets = [0u64; 2];
    loop {
        let mut progressed = false;
        for (chunks, dir) in [(&mut req, request_dir), (&mut resp, response_dir)] {
            if let Some(chunk) = chunks.next() {
                ktime += 1_000;
                let offset = &mut offsets[dir as usize];
                let stream_offset = *offset;
                *offset += chunk.len() as u64;
                for record in encode::tls_call(42, ktime, 7, 0x1000 + ktime, dir, stream_offset, chunk, 256, 128, 64) {
                    pipeline.handle_record(&record);
                }
                progressed = true;
            }
        }
        if !progressed {
            break;
        }
    }
    pipeline.handle_record(&encode::tls_free(42, ktime + 1, 7));
});
