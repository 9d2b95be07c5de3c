//! The agent's figures about exchange reconstruction: what the HTTP and LLM stages parsed,
//! decoded, dropped (and why), and hold open.

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};

use crate::{exchanges::ExchangeSink, http::HttpStats, llm::LlmStats};

pub struct StageMetrics {
    http: IntCounterVec,
    llm: IntCounterVec,
    http_connections_open: IntGauge,
    llm_in_flight: IntGauge,
    last_http: Vec<u64>,
    last_llm: Vec<u64>,
}

/// HTTP stage counters as (event, total), every field named once.
pub fn http_counters(s: &HttpStats) -> [(&'static str, u64); 22] {
    let HttpStats {
        requests,
        responses,
        interim_responses,
        orphan_responses,
        abandoned,
        interrupted,
        upgrades,
        non_http_connections,
        resyncs,
        parse_errors,
        framing_lost,
        body_gap_bytes,
        bodies_undecodable,
        decompression_capped,
        decoded_bytes,
        connections_evicted,
        h2_connections,
        h2_desynced,
        h2_streams_reset,
        h2_streams_over_limit,
        h2_header_lists_too_large,
        h2_frames_skipped,
    } = s;
    [
        ("requests", *requests),
        ("responses", *responses),
        ("interim_responses", *interim_responses),
        ("orphan_responses", *orphan_responses),
        ("abandoned", *abandoned),
        ("interrupted", *interrupted),
        ("upgrades", *upgrades),
        ("non_http_connections", *non_http_connections),
        ("resyncs", *resyncs),
        ("parse_errors", *parse_errors),
        ("framing_lost", *framing_lost),
        ("body_gap_bytes", *body_gap_bytes),
        ("bodies_undecodable", *bodies_undecodable),
        ("decompression_capped", *decompression_capped),
        ("decoded_bytes", *decoded_bytes),
        ("connections_evicted", *connections_evicted),
        ("h2_connections", *h2_connections),
        ("h2_desynced", *h2_desynced),
        ("h2_streams_reset", *h2_streams_reset),
        ("h2_streams_over_limit", *h2_streams_over_limit),
        ("h2_header_lists_too_large", *h2_header_lists_too_large),
        ("h2_frames_skipped", *h2_frames_skipped),
    ]
}

fn register_vec(r: &Registry, name: &str, help: &str) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), &["event"]).expect("valid counter");
    r.register(Box::new(c.clone())).expect("registered once");
    c
}

fn register_gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid gauge");
    r.register(Box::new(g.clone())).expect("registered once");
    g
}

impl StageMetrics {
    pub fn new(registry: &Registry) -> Self {
        let metrics = Self {
            http: register_vec(
                registry,
                "tokentap_http_total",
                "HTTP reconstruction events: requests, responses, resyncs, parse errors, undecodable bodies, decompression bombs capped, non-HTTP connections, decoded bytes, ...",
            ),
            llm: register_vec(
                registry,
                "tokentap_llm_total",
                "LLM stage events: exchanges recorded, non-LLM exchanges ignored, JSON and frame errors, ambiguous models, exchanges dropped by reason (dropped_*), ...",
            ),
            http_connections_open: register_gauge(
                registry,
                "tokentap_http_connections_open",
                "Connections the HTTP stage tracks.",
            ),
            llm_in_flight: register_gauge(
                registry,
                "tokentap_llm_exchanges_in_flight",
                "LLM exchanges waiting for their response to end.",
            ),
            last_http: Vec::new(),
            last_llm: Vec::new(),
        };
        for (event, _) in http_counters(&HttpStats::default()) {
            metrics.http.with_label_values(&[event]);
        }
        for (event, _) in LlmStats::default().counters() {
            metrics.llm.with_label_values(&[event]);
        }
        metrics
    }

    /// Brings the counters up to date with the sink's totals.
    pub fn sync(&mut self, sink: &ExchangeSink) {
        sync_vec(
            &self.http,
            &http_counters(sink.http_stats()),
            &mut self.last_http,
        );
        sync_vec(&self.llm, &sink.llm_stats().counters(), &mut self.last_llm);
        self.http_connections_open
            .set(sink.open_http_connections() as i64);
        self.llm_in_flight.set(sink.llm_in_flight() as i64);
    }
}

fn sync_vec(vec: &IntCounterVec, now: &[(&'static str, u64)], last: &mut Vec<u64>) {
    last.resize(now.len(), 0);
    for (i, (event, n)) in now.iter().enumerate() {
        if *n > last[i] {
            vec.with_label_values(&[event]).inc_by(n - last[i]);
            last[i] = *n;
        }
    }
}
