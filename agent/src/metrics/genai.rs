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

use std::collections::BTreeSet;

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    core::{MetricVec, MetricVecBuilder},
};

use super::cardinality::{CardinalityGuard, sanitize_label_value};
use crate::{
    llm::{ExchangeRecord, RoleName},
    workload::PodRef,
};

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

/// Workload identity labels, at the end of [`LABELS`] (and of the anomaly family's labels):
/// empty off Kubernetes, except `service_name`.
pub const WORKLOAD_LABELS: [&str; 6] = [
    "k8s_namespace_name",
    "k8s_pod_name",
    "k8s_container_name",
    "k8s_workload_name",
    "k8s_workload_kind",
    "service_name",
];

/// Labels on every family, in this order.
pub const LABELS: [&str; 14] = [
    "gen_ai_provider_name",
    "gen_ai_operation_name",
    "gen_ai_request_model",
    "gen_ai_response_model",
    "server_address",
    "server_port",
    "error_type",
    "process_executable_name",
    WORKLOAD_LABELS[0],
    WORKLOAD_LABELS[1],
    WORKLOAD_LABELS[2],
    WORKLOAD_LABELS[3],
    WORKLOAD_LABELS[4],
    WORKLOAD_LABELS[5],
];
/// Where [`WORKLOAD_LABELS`] start in [`LABELS`].
pub const WORKLOAD_AT: usize = 8;
/// Positions in [`LABELS`] whose values come from traffic (provider, models, host, port, error
/// codes), from whatever a local user runs (the executable, `OTEL_SERVICE_NAME`), or churn
/// without bound (pod names, until their series expire).
pub const UNTRUSTED: [usize; 13] = [0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13];

/// The values of [`WORKLOAD_LABELS`] for a record, sanitised.
pub fn workload_label_values(r: &ExchangeRecord) -> [String; 6] {
    let k8s = r.k8s.clone().unwrap_or_default();
    [
        k8s.namespace,
        k8s.pod,
        k8s.container,
        k8s.workload_name,
        k8s.workload_kind,
        r.service_name.clone(),
    ]
    .map(|v| sanitize_label_value(&v))
}

/// Whether a label set (its values from [`WORKLOAD_AT`] on being the workload's) belongs to one
/// of `pods`.
pub fn belongs_to(workload_values: &[String], pods: &[PodRef]) -> bool {
    let (Some(namespace), Some(pod)) = (workload_values.first(), workload_values.get(1)) else {
        return false;
    };
    !pod.is_empty()
        && pods.iter().any(|p| {
            sanitize_label_value(&p.namespace) == *namespace
                && sanitize_label_value(&p.name) == *pod
        })
}

/// Removes a family's series for each of `sets`, one per value of the extra label when it has
/// one (a series that was never created is no error).
pub fn remove_series<T: MetricVecBuilder>(
    family: &MetricVec<T>,
    sets: &[Vec<String>],
    extra: &[&str],
) {
    for set in sets {
        let mut values: Vec<&str> = set.iter().map(String::as_str).collect();
        if extra.is_empty() {
            let _ = family.remove_label_values(&values);
            continue;
        }
        values.push("");
        let last = values.len() - 1;
        for e in extra {
            values[last] = e;
            let _ = family.remove_label_values(&values);
        }
    }
}

/// The `gen_ai_token_type` values.
pub const TOKEN_TYPES: [&str; 5] = ["input", "output", "cache_read", "cache_write", "reasoning"];

/// The values of [`LABELS`] for a record, sanitised (before the cardinality guard). Every
/// family keyed by the standard labels builds them here.
pub fn label_values(r: &ExchangeRecord) -> Vec<String> {
    let mut values = vec![
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
    ];
    values.extend(workload_label_values(r));
    values
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
    /// `http_response_status_code` values used (at most ~500), to find a pod's series.
    statuses: BTreeSet<String>,
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
            statuses: BTreeSet::new(),
        }
    }

    /// Removes every series of these (deleted) pods and frees their share of the label budget.
    pub fn forget_pods(&mut self, pods: &[PodRef]) {
        let sets = self
            .guard
            .forget(|values| belongs_to(values.get(WORKLOAD_AT..).unwrap_or(&[]), pods));
        if sets.is_empty() {
            return;
        }
        let statuses: Vec<&str> = self.statuses.iter().map(String::as_str).collect();
        for family in [
            &self.client_duration,
            &self.client_ttfc,
            &self.client_tpoc,
            &self.server_duration,
            &self.server_ttft,
            &self.server_tpot,
        ] {
            remove_series(family, &sets, &[]);
        }
        remove_series(&self.client_tokens, &sets, &TOKEN_TYPES);
        for family in [&self.tokens_total, &self.server_tokens_total] {
            remove_series(family, &sets, &TOKEN_TYPES);
        }
        for family in [&self.requests_total, &self.server_requests_total] {
            remove_series(family, &sets, &statuses);
        }
        self.label_sets.set(self.guard.distinct() as i64);
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
        if !self.statuses.contains(&status) {
            self.statuses.insert(status.clone());
        }
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
            service_name: "checkout".into(),
            k8s: Some(crate::llm::K8sWorkload {
                namespace: "shop".into(),
                pod: "checkout-7d9f8c6b5-x2x4q".into(),
                container: "app".into(),
                workload_name: "checkout".into(),
                workload_kind: "Deployment".into(),
            }),
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
        let tail = ",k8s_container_name=\"app\",k8s_namespace_name=\"shop\",k8s_pod_name=\"checkout-7d9f8c6b5-x2x4q\",k8s_workload_kind=\"Deployment\",k8s_workload_name=\"checkout\",process_executable_name=\"python3.11\",server_address=\"api.openai.com\",server_port=\"443\",service_name=\"checkout\"";
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

    fn pod(i: usize) -> PodRef {
        PodRef {
            namespace: "shop".into(),
            name: format!("checkout-{i}"),
        }
    }

    fn series(text: &str) -> usize {
        text.lines().filter(|l| !l.starts_with('#')).count()
    }

    #[test]
    fn a_deleted_pods_series_are_removed_and_its_budget_freed() {
        let registry = Registry::new();
        let mut m = GenAiMetrics::new(&registry, 10);
        let mut other = record();
        other.k8s = None;
        m.record(&other);
        let alone = series(&scrape(&registry));
        for i in 0..2 {
            let mut r = record();
            if let Some(k8s) = r.k8s.as_mut() {
                k8s.pod = pod(i).name;
            }
            m.record(&r);
            r.role = Some(RoleName::Server);
            r.http_status = Some(503);
            m.record(&r);
        }
        m.forget_pods(&[pod(0), pod(1)]);
        let text = scrape(&registry);
        assert!(!text.contains("k8s_pod_name=\"checkout-"), "{text}");
        assert_eq!(
            series(&text),
            alone,
            "only the pod-less series remain\n{text}"
        );
        assert!(text.contains("tokentap_metric_label_sets 1"), "{text}");
    }

    #[test]
    fn churning_ten_thousand_pods_stays_bounded() {
        let registry = Registry::new();
        let mut m = GenAiMetrics::new(&registry, DEFAULT_MAX_LABEL_SETS);
        for i in 0..10_000 {
            let mut r = record();
            if let Some(k8s) = r.k8s.as_mut() {
                k8s.pod = pod(i).name;
            }
            m.record(&r);
            // Pods are deleted and expire in batches, as the index hands them over.
            if i % 100 == 99 {
                m.forget_pods(&(i - 99..=i).map(pod).collect::<Vec<_>>());
            }
        }
        assert_eq!(m.guard.distinct(), 0);
        assert_eq!(
            series(&scrape(&registry)),
            2,
            "label_sets and overflow remain"
        );
        assert_eq!(m.overflow_total.get(), 0, "no pod was folded into _OTHER");
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
