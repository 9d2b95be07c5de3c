//! The public metrics contract: OpenTelemetry GenAI semantic conventions in Prometheus form.
//!
//! Receives: [`ExchangeRecord`]s. Emits: observations on the families below (names, labels
//! and buckets are the public interface, asserted by tests).
//!
//! Client role: `gen_ai_client_operation_duration_seconds`, `gen_ai_client_token_usage`,
//! `gen_ai_client_operation_time_to_first_chunk_seconds`,
//! `gen_ai_client_operation_time_per_output_chunk_seconds`, `tokentap_tokens_total`,
//! `tokentap_requests_total`. Server role (a gateway or model server on this node terminating
//! TLS): `gen_ai_server_request_duration_seconds`, `gen_ai_server_time_to_first_token_seconds`,
//! `gen_ai_server_time_per_output_token_seconds`, `tokentap_server_tokens_total`,
//! `tokentap_server_requests_total`; they never feed the client families, so a call observed at
//! both ends on one node is not counted twice.
//!
//! Unknown values are never observed as zero: a histogram gets no observation for an unknown
//! token count or duration.

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

use super::cardinality::{CardinalityGuard, sanitize_label_value};
use crate::llm::{ExchangeRecord, RoleName};

/// The convention's buckets for durations, in seconds.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];
/// The convention's buckets for token counts: powers of 4 from 1 to 4^13.
pub const TOKEN_BUCKETS: [f64; 14] = [
    1.0,
    4.0,
    16.0,
    64.0,
    256.0,
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    67_108_864.0,
];
/// The convention's buckets for the server's time to first token.
pub const SERVER_TTFT_BUCKETS: [f64; 16] = [
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
/// The convention's buckets for the server's time per output token.
pub const SERVER_TPOT_BUCKETS: [f64; 13] = [
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
];

/// Labels on every family, in this order.
pub const LABELS: [&str; 8] = [
    "gen_ai_provider_name",
    "gen_ai_operation_name",
    "gen_ai_request_model",
    "gen_ai_response_model",
    "server_address",
    "server_port",
    "error_type",
    "process_executable_name",
];
/// Positions in [`LABELS`] whose values come from traffic (provider, models, host, port, error
/// codes) or from whatever a local user runs (the executable).
pub const UNTRUSTED: [usize; 7] = [0, 2, 3, 4, 5, 6, 7];

/// The values of [`LABELS`] for a record, sanitised (before the cardinality guard). Every
/// family keyed by the standard labels builds them here.
pub fn label_values(r: &ExchangeRecord) -> Vec<String> {
    vec![
        sanitize_label_value(&r.provider),
        sanitize_label_value(&r.operation),
        sanitize_label_value(r.request_model.as_deref().unwrap_or("")),
        sanitize_label_value(r.response_model.as_deref().unwrap_or("")),
        sanitize_label_value(&r.server_address),
        if r.server_port == 0 {
            String::new()
        } else {
            r.server_port.to_string()
        },
        sanitize_label_value(r.error_type.as_deref().unwrap_or("")),
        sanitize_label_value(&r.executable),
    ]
}

/// The status label: a real HTTP status, or `_OTHER`, so a hostile server cannot mint
/// unbounded values.
fn status_label(status: Option<u16>) -> String {
    match status {
        Some(s @ 100..=599) => s.to_string(),
        Some(_) => super::cardinality::OTHER.to_owned(),
        None => String::new(),
    }
}
/// Default cap on distinct label sets.
pub const DEFAULT_MAX_LABEL_SETS: usize = 2000;

pub struct GenAiMetrics {
    client_duration: HistogramVec,
    client_tokens: HistogramVec,
    client_ttfc: HistogramVec,
    client_tpoc: HistogramVec,
    tokens_total: IntCounterVec,
    requests_total: IntCounterVec,
    server_duration: HistogramVec,
    server_ttft: HistogramVec,
    server_tpot: HistogramVec,
    server_tokens_total: IntCounterVec,
    server_requests_total: IntCounterVec,
    overflow_total: IntCounter,
    label_sets: IntGauge,
    guard: CardinalityGuard,
}

fn with(labels: &[&'static str], extra: &'static str) -> Vec<&'static str> {
    let mut v = labels.to_vec();
    v.push(extra);
    v
}

fn histogram(
    r: &Registry,
    name: &str,
    help: &str,
    buckets: &[f64],
    labels: &[&str],
) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
    .expect("valid histogram definition");
    r.register(Box::new(h.clone()))
        .expect("histogram registered once");
    h
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter definition");
    r.register(Box::new(c.clone()))
        .expect("counter registered once");
    c
}

impl GenAiMetrics {
    pub fn new(registry: &Registry, max_label_sets: usize) -> Self {
        let r = registry;
        let overflow_total = IntCounter::new(
            "tokentap_metric_label_sets_overflow_total",
            "Exchanges whose new label set exceeded the cap; their model, host and error labels were folded into _OTHER.",
        )
        .expect("valid counter");
        r.register(Box::new(overflow_total.clone()))
            .expect("registered once");
        let label_sets = IntGauge::new(
            "tokentap_metric_label_sets",
            "Distinct label sets in the GenAI metric families.",
        )
        .expect("valid gauge");
        r.register(Box::new(label_sets.clone()))
            .expect("registered once");
        Self {
            client_duration: histogram(
                r,
                "gen_ai_client_operation_duration_seconds",
                "GenAI operation duration, from the request's first byte to the response's last.",
                &DURATION_BUCKETS,
                &LABELS,
            ),
            client_tokens: histogram(
                r,
                "gen_ai_client_token_usage",
                "Tokens used per operation, by gen_ai_token_type (input includes cached tokens).",
                &TOKEN_BUCKETS,
                &with(&LABELS, "gen_ai_token_type"),
            ),
            client_ttfc: histogram(
                r,
                "gen_ai_client_operation_time_to_first_chunk_seconds",
                "Time from the request's first byte to the first content-bearing chunk of a streamed response.",
                &DURATION_BUCKETS,
                &LABELS,
            ),
            client_tpoc: histogram(
                r,
                "gen_ai_client_operation_time_per_output_chunk_seconds",
                "Time between content-bearing chunks of a streamed response, after the first.",
                &DURATION_BUCKETS,
                &LABELS,
            ),
            tokens_total: counter(
                r,
                "tokentap_tokens_total",
                "Tokens by type (input includes cached; cache_read, cache_write and reasoning are breakdowns).",
                &with(&LABELS, "gen_ai_token_type"),
            ),
            requests_total: counter(
                r,
                "tokentap_requests_total",
                "LLM API calls by HTTP status.",
                &with(&LABELS, "http_response_status_code"),
            ),
            server_duration: histogram(
                r,
                "gen_ai_server_request_duration_seconds",
                "Server-side GenAI request duration (observed in a process that terminated the request).",
                &DURATION_BUCKETS,
                &LABELS,
            ),
            server_ttft: histogram(
                r,
                "gen_ai_server_time_to_first_token_seconds",
                "Server-side time to the first content-bearing chunk.",
                &SERVER_TTFT_BUCKETS,
                &LABELS,
            ),
            server_tpot: histogram(
                r,
                "gen_ai_server_time_per_output_token_seconds",
                "Server-side time per output token after the first.",
                &SERVER_TPOT_BUCKETS,
                &LABELS,
            ),
            server_tokens_total: counter(
                r,
                "tokentap_server_tokens_total",
                "Tokens served, by type (server role).",
                &with(&LABELS, "gen_ai_token_type"),
            ),
            server_requests_total: counter(
                r,
                "tokentap_server_requests_total",
                "LLM API calls served, by HTTP status (server role).",
                &with(&LABELS, "http_response_status_code"),
            ),
            overflow_total,
            label_sets,
            guard: CardinalityGuard::new(max_label_sets),
        }
    }

    /// The label values for a record, sanitised and admitted by the cardinality guard.
    fn labels(&mut self, r: &ExchangeRecord) -> Vec<String> {
        let values = label_values(r);
        let before = self.guard.overflowed();
        let values = self.guard.admit(values, &UNTRUSTED);
        if self.guard.overflowed() > before {
            self.overflow_total.inc();
        }
        self.label_sets.set(self.guard.distinct() as i64);
        values
    }

    pub fn record(&mut self, r: &ExchangeRecord) {
        let values = self.labels(r);
        let base: Vec<&str> = values.iter().map(String::as_str).collect();
        let status = status_label(r.http_status);
        let mut with_extra = base.clone();
        with_extra.push("");
        let last = with_extra.len() - 1;
        let tokens = [
            ("input", r.tokens.input),
            ("output", r.tokens.output),
            ("cache_read", r.tokens.cache_read),
            ("cache_write", r.tokens.cache_write),
            ("reasoning", r.tokens.reasoning),
        ];
        match r.role {
            Some(RoleName::Server) => {
                if let Some(d) = r.duration_s {
                    self.server_duration.with_label_values(&base).observe(d);
                }
                if let Some(t) = r.time_to_first_chunk_s {
                    self.server_ttft.with_label_values(&base).observe(t);
                }
                // Time per output token after the first, when both ends of the interval and
                // the token count are known.
                if let (Some(d), Some(t), Some(out)) =
                    (r.duration_s, r.time_to_first_chunk_s, r.tokens.output)
                    && out > 1
                    && d >= t
                {
                    self.server_tpot
                        .with_label_values(&base)
                        .observe((d - t) / (out - 1) as f64);
                }
                for (kind, n) in tokens {
                    if let Some(n) = n {
                        with_extra[last] = kind;
                        self.server_tokens_total
                            .with_label_values(&with_extra)
                            .inc_by(n);
                    }
                }
                with_extra[last] = &status;
                self.server_requests_total
                    .with_label_values(&with_extra)
                    .inc();
            }
            _ => {
                if let Some(d) = r.duration_s {
                    self.client_duration.with_label_values(&base).observe(d);
                }
                if r.streaming {
                    if let Some(t) = r.time_to_first_chunk_s {
                        self.client_ttfc.with_label_values(&base).observe(t);
                    }
                    let tpoc = self.client_tpoc.with_label_values(&base);
                    for &gap in &r.time_per_output_chunk_s {
                        tpoc.observe(gap);
                    }
                }
                for (kind, n) in tokens {
                    if let Some(n) = n {
                        with_extra[last] = kind;
                        if kind == "input" || kind == "output" {
                            self.client_tokens
                                .with_label_values(&with_extra)
                                .observe(n as f64);
                        }
                        self.tokens_total.with_label_values(&with_extra).inc_by(n);
                    }
                }
                with_extra[last] = &status;
                self.requests_total.with_label_values(&with_extra).inc();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use prometheus::{Encoder, TextEncoder};

    use super::*;
    use crate::llm::Tokens;

    fn record() -> ExchangeRecord {
        ExchangeRecord {
            provider: "openai".into(),
            operation: "chat".into(),
            api: "openai.chat_completions".into(),
            request_model: Some("gpt-4o".into()),
            response_model: Some("gpt-4o-2024-08-06".into()),
            streaming: true,
            role: Some(RoleName::Client),
            server_address: "api.openai.com".into(),
            server_port: 443,
            http_status: Some(200),
            tokens: Tokens {
                input: Some(120),
                output: Some(30),
                cache_read: Some(100),
                ..Tokens::default()
            },
            time_to_first_chunk_s: Some(0.25),
            time_per_output_chunk_s: vec![0.01, 0.02],
            duration_s: Some(1.5),
            executable: "python3.11".into(),
            ..ExchangeRecord::default()
        }
    }

    fn scrape(registry: &Registry) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&registry.gather(), &mut out)
            .expect("encode");
        String::from_utf8(out).expect("utf8")
    }

    const LABELSET: &str = "error_type=\"\",gen_ai_operation_name=\"chat\",gen_ai_provider_name=\"openai\",gen_ai_request_model=\"gpt-4o\",gen_ai_response_model=\"gpt-4o-2024-08-06\"";

    #[test]
    fn contract_names_labels_and_buckets() {
        let registry = Registry::new();
        let mut m = GenAiMetrics::new(&registry, 10);
        m.record(&record());
        let text = scrape(&registry);
        for line in [
            "# TYPE gen_ai_client_operation_duration_seconds histogram",
            "# TYPE gen_ai_client_token_usage histogram",
            "# TYPE gen_ai_client_operation_time_to_first_chunk_seconds histogram",
            "# TYPE gen_ai_client_operation_time_per_output_chunk_seconds histogram",
            "# TYPE tokentap_tokens_total counter",
            "# TYPE tokentap_requests_total counter",
        ] {
            assert!(text.contains(line), "missing {line}\n{text}");
        }
        let tail = ",process_executable_name=\"python3.11\",server_address=\"api.openai.com\",server_port=\"443\"";
        assert!(
            text.contains(&format!(
                "gen_ai_client_operation_duration_seconds_bucket{{{LABELSET}{tail},le=\"81.92\"}} 1"
            )),
            "{text}"
        );
        assert!(text.contains(&format!(
            "gen_ai_client_operation_duration_seconds_sum{{{LABELSET}{tail}}} 1.5"
        )));
        assert!(text.contains(&format!("gen_ai_client_token_usage_bucket{{{LABELSET},gen_ai_token_type=\"input\"{tail},le=\"67108864\"}} 1")), "{text}");
        assert!(text.contains(&format!(
            "tokentap_tokens_total{{{LABELSET},gen_ai_token_type=\"cache_read\"{tail}}} 100"
        )));
        assert!(text.contains(&format!(
            "tokentap_requests_total{{{LABELSET},http_response_status_code=\"200\"{tail}}} 1"
        )));
        assert!(text.contains(&format!(
            "gen_ai_client_operation_time_per_output_chunk_seconds_count{{{LABELSET}{tail}}} 2"
        )));
        // Unknown token types are not observed as zero.
        assert!(!text.contains("gen_ai_token_type=\"reasoning\""));
        // No server family has a series for a client exchange.
        assert!(!text.contains("gen_ai_server_request_duration_seconds_count"));
    }

    #[test]
    fn server_role_never_inflates_client_metrics() {
        let registry = Registry::new();
        let mut m = GenAiMetrics::new(&registry, 10);
        let mut r = record();
        r.role = Some(RoleName::Server);
        m.record(&r);
        let text = scrape(&registry);
        assert!(!text.contains("gen_ai_client_operation_duration_seconds_count"));
        assert!(!text.contains("tokentap_tokens_total{"));
        assert!(text.contains("gen_ai_server_request_duration_seconds_count"));
        // (1.5 - 0.25) / (30 - 1)
        assert!(
            text.contains("gen_ai_server_time_per_output_token_seconds_sum"),
            "{text}"
        );
    }

    #[test]
    fn unknown_tokens_and_missing_labels() {
        let registry = Registry::new();
        let mut m = GenAiMetrics::new(&registry, 10);
        let mut r = record();
        r.tokens = Tokens::default();
        r.response_model = None;
        r.error_type = Some("stream_interrupted".into());
        m.record(&r);
        let text = scrape(&registry);
        assert!(
            !text.contains("gen_ai_client_token_usage_count"),
            "no token observation when unknown"
        );
        assert!(
            text.contains("gen_ai_response_model=\"\""),
            "missing values are empty strings"
        );
        assert!(text.contains("error_type=\"stream_interrupted\""));
    }

    #[test]
    fn overflow_folds_into_other_and_is_counted() {
        let registry = Registry::new();
        let mut m = GenAiMetrics::new(&registry, 2);
        for i in 0..50 {
            let mut r = record();
            r.request_model = Some(format!("model-{i}"));
            m.record(&r);
        }
        let text = scrape(&registry);
        assert!(text.contains("gen_ai_request_model=\"_OTHER\""));
        assert!(
            text.contains("tokentap_metric_label_sets_overflow_total 48"),
            "{text}"
        );
        assert!(text.contains("tokentap_metric_label_sets 3"), "{text}");
    }
}
