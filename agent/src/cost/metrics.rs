//! The cost metric families.
//!
//! Client role: `tokentap_cost_usd_total{LABELS, gen_ai_token_type}` and
//! `tokentap_cost_unpriced_total{gen_ai_provider_name, gen_ai_request_model,
//! gen_ai_response_model}`. Server role: `tokentap_server_cost_usd_total` and
//! `tokentap_server_cost_unpriced_total`, never the client families, so a call seen at both
//! ends is not counted twice. The labels are [`LABELS`], sanitised and capped like the GenAI
//! families (one guard here with the same cap, so these families stay as bounded as those).

use prometheus::{CounterVec, IntCounterVec, Opts, Registry};

use crate::{
    llm::{ExchangeRecord, RoleName},
    metrics::{
        cardinality::CardinalityGuard,
        genai::{LABELS, UNTRUSTED, WORKLOAD_AT, belongs_to, label_values, remove_series},
    },
    workload::PodRef,
};

/// Labels of the unpriced families: positions in [`LABELS`].
const UNPRICED: [usize; 3] = [0, 2, 3];
pub use crate::metrics::genai::TOKEN_TYPES;

pub struct CostMetrics {
    cost: CounterVec,
    unpriced: IntCounterVec,
    server_cost: CounterVec,
    server_unpriced: IntCounterVec,
    guard: CardinalityGuard,
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> CounterVec {
    let c = CounterVec::new(Opts::new(name, help), labels).expect("valid counter definition");
    r.register(Box::new(c.clone()))
        .expect("counter registered once");
    c
}

fn int_counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter definition");
    r.register(Box::new(c.clone()))
        .expect("counter registered once");
    c
}

impl CostMetrics {
    pub fn new(registry: &Registry, max_label_sets: usize) -> Self {
        let mut with_type = LABELS.to_vec();
        with_type.push("gen_ai_token_type");
        let unpriced_labels = UNPRICED.map(|i| LABELS[i]);
        Self {
            cost: counter(
                registry,
                "tokentap_cost_usd_total",
                "Cost of LLM API calls in USD, by gen_ai_token_type (input is uncached input; reasoning only where priced apart from output).",
                &with_type,
            ),
            unpriced: int_counter(
                registry,
                "tokentap_cost_unpriced_total",
                "LLM API calls with token counts whose model has no price (add one with --pricing).",
                &unpriced_labels,
            ),
            server_cost: counter(
                registry,
                "tokentap_server_cost_usd_total",
                "Cost of LLM API calls served, in USD, by gen_ai_token_type (server role).",
                &with_type,
            ),
            server_unpriced: int_counter(
                registry,
                "tokentap_server_cost_unpriced_total",
                "LLM API calls served with token counts whose model has no price (server role).",
                &unpriced_labels,
            ),
            guard: CardinalityGuard::new(max_label_sets),
        }
    }

    /// Removes the cost series of these (deleted) pods. The unpriced families carry no
    /// workload labels, so they have nothing per pod.
    pub fn forget_pods(&mut self, pods: &[PodRef]) {
        let sets = self
            .guard
            .forget(|values| belongs_to(values.get(WORKLOAD_AT..).unwrap_or(&[]), pods));
        for family in [&self.cost, &self.server_cost] {
            remove_series(family, &sets, &TOKEN_TYPES);
        }
    }

    fn labels(&mut self, r: &ExchangeRecord) -> Vec<String> {
        self.guard.admit(label_values(r), &UNTRUSTED)
    }

    pub fn record(&mut self, r: &ExchangeRecord) {
        let has_tokens = r.tokens.input.is_some() || r.tokens.output.is_some();
        if r.cost.is_none() && !has_tokens {
            // Nothing to price (an error before any usage): neither cost nor unpriced.
            return;
        }
        let values = self.labels(r);
        let server = r.role == Some(RoleName::Server);
        let Some(cost) = &r.cost else {
            let labels = UNPRICED.map(|i| values[i].as_str());
            let family = if server {
                &self.server_unpriced
            } else {
                &self.unpriced
            };
            family.with_label_values(&labels).inc();
            return;
        };
        let family = if server {
            &self.server_cost
        } else {
            &self.cost
        };
        let mut labels: Vec<&str> = values.iter().map(String::as_str).collect();
        labels.push("");
        let last = labels.len() - 1;
        let parts = [
            ("input", r.tokens.input.map(|_| cost.input_usd)),
            ("output", r.tokens.output.map(|_| cost.output_usd)),
            (
                "cache_read",
                r.tokens.cache_read.map(|_| cost.cache_read_usd),
            ),
            (
                "cache_write",
                r.tokens.cache_write.map(|_| cost.cache_write_usd),
            ),
            // Reasoning has its own series only when it was priced apart from the output.
            (
                "reasoning",
                Some(cost.reasoning_usd).filter(|usd| *usd > 0.0),
            ),
        ];
        for (kind, usd) in parts {
            if let Some(usd) = usd {
                labels[last] = kind;
                family.with_label_values(&labels).inc_by(usd);
            }
        }
    }
}

impl crate::exchanges::RecordSink for CostMetrics {
    fn record(&mut self, record: &ExchangeRecord) {
        CostMetrics::record(self, record);
    }

    fn forget_pods(&mut self, pods: &[PodRef]) {
        CostMetrics::forget_pods(self, pods);
    }
}
