//! Fuzzes the user-side pipeline from capture records to exchange records and metrics: HTTP
//! framing, chunked and compressed bodies, SSE/NDJSON, provider JSON.
//!
//! Input layout: byte 0 picks the role (even: the process is the client) and byte 1 the record
//! size; the rest is the request stream and the response stream, separated by the first
//! `\0\xff\0\xff` (the whole input is the request stream when absent). Records alternate
//! between the directions, so responses can arrive mid-request, as they may on the wire.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokentap::{
    clock::KtimeClock,
    exchanges::ExchangeSink,
    http::HttpConfig,
    llm::ProviderConfig,
    metrics::genai::GenAiMetrics,
    pipeline::Pipeline,
    stream::CaptureLimits,
};
use tokentap_common::{Direction, encode};

const SEPARATOR: &[u8] = b"\0\xff\0\xff";

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
    let sink = ExchangeSink::new(
        HttpConfig::default(),
        ProviderConfig::default(),
        "/nonexistent".into(),
        vec![Box::new(GenAiMetrics::new(&registry, 100))],
    );
    let limits = CaptureLimits { head_bytes: 1 << 16, tail_bytes: 1 << 16 };
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
                for record in encode::tls_call(42, ktime, 7, 0x1000 + ktime, dir, stream_offset, chunk, 1 << 16, 1 << 16, 16_384) {
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
