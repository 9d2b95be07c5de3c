//! Anomaly flags on exchange records, and their counter.
//!
//! Receives: finished [`ExchangeRecord`]s. [`AnomalyDetector`] (an enricher) adds to
//! `record.anomalies`:
//! - `truncated`: a finish reason says the output hit its limit (`length`, `max_tokens`,
//!   `MAX_TOKENS`, `max_output_tokens`);
//! - `rate_limited`: HTTP 429, or an error type that names a rate limit
//!   (`rate_limit_exceeded`, `rate_limit_error`, `RESOURCE_EXHAUSTED`, `ThrottlingException`);
//! - `prompt_bloat`: input tokens above [`BLOAT_FACTOR`] × the trailing p95 of the same
//!   service (executable and container), provider and model (its last [`BLOAT_WINDOW`] calls, once there are
//!   [`BLOAT_MIN_SAMPLES`]).
//!
//! `repetition_loop` is flagged by the LLM stage, the only one that sees the completion text.
//! [`AnomalyMetrics`] (a sink) counts every flag in `tokentap_anomalies_total`.

use std::collections::{HashMap, VecDeque};

use prometheus::{IntCounterVec, Opts, Registry};

use crate::{
    exchanges::{RecordEnricher, RecordSink},
    llm::ExchangeRecord,
    metrics::{
        cardinality::{CardinalityGuard, sanitize_label_value},
        genai::{WORKLOAD_LABELS, belongs_to, remove_series, workload_label_values},
    },
    workload::PodRef,
};

pub const REPETITION_LOOP: &str = "repetition_loop";
pub const PROMPT_BLOAT: &str = "prompt_bloat";
pub const TRUNCATED: &str = "truncated";
pub const RATE_LIMITED: &str = "rate_limited";

/// Input above this multiple of the trailing p95 is bloat.
pub const BLOAT_FACTOR: f64 = 3.0;
/// Calls of one (executable, provider, model) kept for the p95.
pub const BLOAT_WINDOW: usize = 200;
/// Calls needed before anything is judged.
pub const BLOAT_MIN_SAMPLES: usize = 20;
/// (executable, provider, model) keys tracked; beyond, the least recently used is forgotten.
pub const BLOAT_MAX_KEYS: usize = 1024;

const TRUNCATION_REASONS: &[&str] = &["length", "max_tokens", "MAX_TOKENS", "max_output_tokens"];
const RATE_LIMIT_TYPES: &[&str] = &[
    "rate_limit_exceeded",
    "rate_limit_error",
    "RESOURCE_EXHAUSTED",
    "ThrottlingException",
    "too_many_requests",
    "429",
];

/// Adds `truncated`, `rate_limited` and `prompt_bloat` flags.
#[derive(Debug, Default)]
pub struct AnomalyDetector {
    /// Recent input-token counts per (executable, provider, model), with a use stamp.
    inputs: HashMap<(String, String, String), (u64, VecDeque<u64>)>,
    uses: u64,
}

fn flag(record: &mut ExchangeRecord, kind: &str) {
    if !record.anomalies.iter().any(|a| a == kind) {
        record.anomalies.push(kind.to_owned());
    }
}

/// The nearest-rank percentile `p` (0..=1) of `values` (not empty).
pub fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let rank = (p * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

impl AnomalyDetector {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `input` is bloated against the trailing window of `key`; then adds it.
    fn bloated(&mut self, key: (String, String, String), input: u64) -> bool {
        self.uses += 1;
        if !self.inputs.contains_key(&key)
            && self.inputs.len() >= BLOAT_MAX_KEYS
            && let Some(oldest) = self
                .inputs
                .iter()
                .min_by_key(|(_, (used, _))| *used)
                .map(|(k, _)| k.clone())
        {
            self.inputs.remove(&oldest);
        }
        let (used, window) = self.inputs.entry(key).or_default();
        *used = self.uses;
        let bloated = window.len() >= BLOAT_MIN_SAMPLES && {
            let mut v: Vec<f64> = window.iter().map(|n| *n as f64).collect();
            input as f64 > BLOAT_FACTOR * percentile(&mut v, 0.95)
        };
        if window.len() >= BLOAT_WINDOW {
            window.pop_front();
        }
        window.push_back(input);
        bloated
    }
}

impl RecordEnricher for AnomalyDetector {
    fn enrich(&mut self, record: &mut ExchangeRecord) {
        if record
            .finish_reasons
            .iter()
            .any(|r| TRUNCATION_REASONS.contains(&r.as_str()))
        {
            flag(record, TRUNCATED);
        }
        if record.http_status == Some(429)
            || record
                .error_type
                .as_deref()
                .is_some_and(|e| RATE_LIMIT_TYPES.contains(&e))
        {
            flag(record, RATE_LIMITED);
        }
        if let Some(input) = record.tokens.input
            && record.error_type.is_none()
        {
            let model = record
                .response_model
                .clone()
                .or_else(|| record.request_model.clone())
                .unwrap_or_default();
            // The service: the container when known (every Python service is "python3"),
            // else the executable.
            let service = match &record.container_id {
                Some(id) => format!("{}@{id}", record.executable),
                None => record.executable.clone(),
            };
            let key = (service, record.provider.clone(), model);
            if self.bloated(key, input) {
                flag(record, PROMPT_BLOAT);
            }
        }
    }
}

/// `tokentap_anomalies_total{kind, gen_ai_provider_name, gen_ai_request_model,
/// process_executable_name, WORKLOAD_LABELS}`.
pub struct AnomalyMetrics {
    total: IntCounterVec,
    guard: CardinalityGuard,
}

impl AnomalyMetrics {
    pub fn new(registry: &Registry, max_label_sets: usize) -> Self {
        let mut labels = vec![
            "kind",
            "gen_ai_provider_name",
            "gen_ai_request_model",
            "process_executable_name",
        ];
        labels.extend(WORKLOAD_LABELS);
        let total = IntCounterVec::new(
            Opts::new(
                "tokentap_anomalies_total",
                "LLM calls flagged with an anomaly (repetition_loop, prompt_bloat, truncated, rate_limited).",
            ),
            &labels,
        )
        .expect("valid counter definition");
        if let Err(e) = registry.register(Box::new(total.clone())) {
            log::warn!("tokentap_anomalies_total not registered: {e}");
        }
        Self {
            total,
            guard: CardinalityGuard::new(max_label_sets),
        }
    }
}

impl RecordSink for AnomalyMetrics {
    fn record(&mut self, record: &ExchangeRecord) {
        // Client calls only, like the client metric families: a call seen at both ends of
        // this node is flagged on both records but counted once.
        if record.role == Some(crate::llm::RoleName::Server) {
            return;
        }
        for kind in &record.anomalies {
            let mut values = vec![
                sanitize_label_value(kind),
                sanitize_label_value(&record.provider),
                sanitize_label_value(record.request_model.as_deref().unwrap_or("")),
                sanitize_label_value(&record.executable),
            ];
            values.extend(workload_label_values(record));
            let values = self.guard.admit(values, &UNTRUSTED);
            let refs: Vec<&str> = values.iter().map(String::as_str).collect();
            self.total.with_label_values(&refs).inc();
        }
    }

    fn forget_pods(&mut self, pods: &[PodRef]) {
        let sets = self
            .guard
            .forget(|values| belongs_to(values.get(WORKLOAD_AT..).unwrap_or(&[]), pods));
        remove_series(&self.total, &sets, &[]);
    }
}

/// Where the workload labels start in the anomaly family's labels.
const WORKLOAD_AT: usize = 4;
/// Label positions folded into `_OTHER` past the cap (all but `kind`).
const UNTRUSTED: [usize; 9] = [1, 2, 3, 4, 5, 6, 7, 8, 9];

#[cfg(test)]
mod tests {
    use super::*;

    fn call(input: u64) -> ExchangeRecord {
        ExchangeRecord {
            provider: "openai".into(),
            request_model: Some("gpt-4o".into()),
            executable: "python3".into(),
            http_status: Some(200),
            tokens: crate::llm::Tokens {
                input: Some(input),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn percentile_is_nearest_rank() {
        let mut v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&mut v, 0.95), 19.0);
        assert_eq!(percentile(&mut v, 0.5), 10.0);
        assert_eq!(percentile(&mut [7.0], 0.99), 7.0);
    }

    #[test]
    fn prompt_bloat_needs_a_window_then_flags_far_outliers() {
        let mut d = AnomalyDetector::new();
        // 19 samples: not judged yet, however large.
        for i in 0..19 {
            let mut r = call(1000 + i);
            d.enrich(&mut r);
            assert!(r.anomalies.is_empty());
        }
        let mut r = call(1_000_000);
        d.enrich(&mut r);
        assert!(r.anomalies.is_empty(), "19 samples are too few");
        // Now 20 samples; p95 (nearest rank 19 of 20, sorted) = 1018.
        let mut r = call(3 * 1018);
        d.enrich(&mut r);
        assert!(r.anomalies.is_empty(), "3 × p95 is not above it");
        // 21 samples: 1000..=1018, 3054, 1_000_000; p95 = rank 20 = 3054.
        let mut r = call(3 * 3054 + 1);
        d.enrich(&mut r);
        assert_eq!(r.anomalies, [PROMPT_BLOAT]);
        // Another model of the same process has its own window.
        let mut other = call(1_000_000);
        other.request_model = Some("gpt-4o-mini".into());
        d.enrich(&mut other);
        assert!(other.anomalies.is_empty());
    }

    #[test]
    fn keys_are_bounded() {
        let mut d = AnomalyDetector::new();
        for i in 0..(BLOAT_MAX_KEYS + 50) {
            let mut r = call(10);
            r.request_model = Some(format!("m{i}"));
            d.enrich(&mut r);
        }
        assert_eq!(d.inputs.len(), BLOAT_MAX_KEYS);
    }

    #[test]
    fn truncated_and_rate_limited() {
        let mut d = AnomalyDetector::new();
        for reason in ["length", "max_tokens", "MAX_TOKENS"] {
            let mut r = call(1);
            r.finish_reasons = vec![reason.into()];
            d.enrich(&mut r);
            assert_eq!(r.anomalies, [TRUNCATED], "{reason}");
        }
        let mut r = call(1);
        r.finish_reasons = vec!["stop".into()];
        d.enrich(&mut r);
        assert!(r.anomalies.is_empty());
        let mut r = ExchangeRecord {
            http_status: Some(429),
            error_type: Some("rate_limit_exceeded".into()),
            ..Default::default()
        };
        d.enrich(&mut r);
        d.enrich(&mut r);
        assert_eq!(r.anomalies, [RATE_LIMITED]);
        let mut r = ExchangeRecord {
            http_status: Some(200),
            error_type: Some("ThrottlingException".into()),
            ..Default::default()
        };
        d.enrich(&mut r);
        assert_eq!(r.anomalies, [RATE_LIMITED]);
    }

    #[test]
    fn metrics_count_each_flag() {
        let registry = Registry::new();
        let mut m = AnomalyMetrics::new(&registry, 100);
        let mut r = call(1);
        r.anomalies = vec![TRUNCATED.into(), REPETITION_LOOP.into()];
        m.record(&r);
        m.record(&r);
        let v = m
            .total
            .with_label_values(&[
                TRUNCATED, "openai", "gpt-4o", "python3", "", "", "", "", "", "",
            ])
            .get();
        assert_eq!(v, 2);
    }
}
