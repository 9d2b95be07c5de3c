//! Compares the agent's `/metrics` with the ground truth the SDKs parsed (the report of
//! `clients/sdk_client.py`): the heart of the `llm_metrics` end-to-end test, kept here so that
//! its own logic is unit-tested against a synthetic, correct exporter.
//!
//! Per label set (provider, operation, request model, response model, error type; the server
//! is the real host name on port 443, the executable is Python) it checks:
//! - `gen_ai_client_operation_duration_seconds`: one observation per call; the sum within
//!   20 ms + 10 % (per call) of the client's own measurement;
//! - `gen_ai_client_token_usage{gen_ai_token_type=input|output}`: one observation per call
//!   and the token sum, where the SDK saw the count;
//! - `tokentap_tokens_total` by type (input, output, cache_read, cache_write, reasoning), where
//!   the SDK saw the count (a zero may be absent);
//! - `gen_ai_client_operation_time_to_first_chunk_seconds`: streams that delivered content
//!   only, within the same tolerance; `..._time_per_output_chunk_seconds`: one observation per
//!   gap between content chunks, their sum within tolerance;
//! - `tokentap_requests_total{http_response_status_code}`;
//! - no other series for the provider hosts.
//!
//! Counts the SDK did not see (a stream without usage, the output of a stream cut short) are
//! not checked: the agent may leave them unknown or estimate them. Warm-up calls (the SDKs'
//! first-use costs, invisible on the wire) are counted but their times are not compared.

use std::collections::BTreeMap;

use crate::mock_provider::HOSTS;
use crate::prom::{Sample, series_string};
use crate::sdk::SdkCall;

pub const DURATION: &str = "gen_ai_client_operation_duration_seconds";
pub const TOKEN_USAGE: &str = "gen_ai_client_token_usage";
pub const TTFC: &str = "gen_ai_client_operation_time_to_first_chunk_seconds";
pub const TPOC: &str = "gen_ai_client_operation_time_per_output_chunk_seconds";
pub const TOKENS_TOTAL: &str = "tokentap_tokens_total";
pub const REQUESTS_TOTAL: &str = "tokentap_requests_total";
/// Families (base names) whose series must all be accounted for.
pub const FAMILIES: [&str; 6] = [
    DURATION,
    TOKEN_USAGE,
    TTFC,
    TPOC,
    TOKENS_TOTAL,
    REQUESTS_TOTAL,
];

/// The labels of a label set (every family has them, plus `process_executable_name`).
const BASE_LABELS: [&str; 7] = [
    "gen_ai_provider_name",
    "gen_ai_operation_name",
    "gen_ai_request_model",
    "gen_ai_response_model",
    "server_address",
    "server_port",
    "error_type",
];

/// The workload labels (every family has them too; empty off Kubernetes, checked by the
/// Kubernetes test).
pub const WORKLOAD_LABELS: [&str; 6] = [
    "k8s_namespace_name",
    "k8s_pod_name",
    "k8s_container_name",
    "k8s_workload_name",
    "k8s_workload_kind",
    "service_name",
];

/// Timing tolerance: 20 ms per observation plus 10 % of the client's value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerance {
    /// Seconds per observation.
    pub abs_s: f64,
    /// Fraction of the client's value.
    pub rel: f64,
}

/// The contract: 20 ms per observation plus 10 % of the client's value.
pub const TOLERANCE: Tolerance = Tolerance {
    abs_s: 0.020,
    rel: 0.10,
};

/// The label values that identify a label set (besides server and executable).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    provider: String,
    operation: String,
    request_model: String,
    response_model: String,
    error_type: String,
}

impl Key {
    fn of_call(c: &SdkCall) -> Self {
        Self {
            provider: c.provider.clone(),
            operation: c.operation.clone(),
            request_model: c.request_model.clone(),
            response_model: c.response_model.clone().unwrap_or_default(),
            error_type: c.error_type.clone().unwrap_or_default(),
        }
    }

    fn of_sample(s: &Sample) -> Self {
        Self {
            provider: s.label("gen_ai_provider_name").to_owned(),
            operation: s.label("gen_ai_operation_name").to_owned(),
            request_model: s.label("gen_ai_request_model").to_owned(),
            response_model: s.label("gen_ai_response_model").to_owned(),
            error_type: s.label("error_type").to_owned(),
        }
    }

    /// The labels every series of this label set must carry (executable aside).
    fn labels(&self, server_address: &str) -> BTreeMap<String, String> {
        let Self {
            provider,
            operation,
            request_model,
            response_model,
            error_type,
        } = self;
        [
            ("gen_ai_provider_name", provider.as_str()),
            ("gen_ai_operation_name", operation),
            ("gen_ai_request_model", request_model),
            ("gen_ai_response_model", response_model),
            ("server_address", server_address),
            ("server_port", "443"),
            ("error_type", error_type),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }
}

/// Everything the test compares, with the problems it found.
struct Checker<'a> {
    samples: &'a [Sample],
    tolerance: Tolerance,
    /// Problems of the label set being checked.
    problems: Vec<String>,
    checked: usize,
}

/// `name{extra="…"}`: a series of the label set being checked, shown with the labels beyond the
/// label set's own (those head the group of messages).
fn short(name: &str, labels: &BTreeMap<String, String>) -> String {
    let extra: BTreeMap<String, String> = labels
        .iter()
        .filter(|(k, _)| {
            !BASE_LABELS.contains(&k.as_str())
                && !WORKLOAD_LABELS.contains(&k.as_str())
                && *k != "process_executable_name"
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if extra.is_empty() {
        name.to_owned()
    } else {
        series_string(name, &extra)
    }
}

impl Checker<'_> {
    /// The one sample `name` with `labels` (and `process_executable_name` starting with
    /// `python`); records a problem when there are several.
    fn find(&mut self, name: &str, labels: &BTreeMap<String, String>) -> Option<f64> {
        let found: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels.iter().all(|(k, v)| s.label(k) == v)
                    && s.labels
                        .keys()
                        .filter(|k| !WORKLOAD_LABELS.contains(&k.as_str()))
                        .count()
                        == labels.len() + 1
            })
            .collect();
        for s in &found {
            let exe = s.label("process_executable_name");
            if !exe.starts_with("python") {
                self.problems.push(format!(
                    "{}: process_executable_name {exe:?}, expected the Python client's (python…)",
                    short(name, labels)
                ));
            }
        }
        match found.as_slice() {
            [] => None,
            [one] => Some(one.value),
            many => {
                self.problems.push(format!(
                    "{}: {} series (one per executable?) where one was expected: {:?}",
                    short(name, labels),
                    many.len(),
                    many.iter().map(|s| s.series()).collect::<Vec<_>>()
                ));
                Some(many.iter().map(|s| s.value).sum())
            }
        }
    }

    fn expect_value(
        &mut self,
        name: &str,
        labels: &BTreeMap<String, String>,
        want: f64,
        what: &str,
    ) {
        self.checked += 1;
        match self.find(name, labels) {
            Some(got) if got == want => {}
            // A count or sum of zero may as well be absent.
            None if want == 0.0 => {}
            Some(got) => self.problems.push(format!(
                "{}: {what}: expected {want}, got {got}",
                short(name, labels)
            )),
            None => self.problems.push(format!(
                "{}: {what}: expected {want}, the series is missing",
                short(name, labels)
            )),
        }
    }

    /// `_sum` of a timing histogram within 20 ms per observation + 10 % of the client's.
    fn expect_time(
        &mut self,
        name: &str,
        labels: &BTreeMap<String, String>,
        observations: usize,
        client_s: f64,
        what: &str,
    ) {
        self.checked += 1;
        let Tolerance { abs_s, rel } = self.tolerance;
        let tolerance = abs_s * observations as f64 + rel * client_s;
        match self.find(name, labels) {
            Some(got) if (got - client_s).abs() <= tolerance => {}
            Some(got) => self.problems.push(format!(
                "{}: {what}: the client measured {client_s:.4} s, the agent says {got:.4} s (off by {:+.4} s, tolerance {tolerance:.4} s)",
                short(name, labels),
                got - client_s
            )),
            None => self.problems.push(format!(
                "{}: {what}: expected about {client_s:.4} s, the series is missing",
                short(name, labels)
            )),
        }
    }

    fn with(labels: &BTreeMap<String, String>, k: &str, v: &str) -> BTreeMap<String, String> {
        let mut l = labels.clone();
        l.insert(k.to_owned(), v.to_owned());
        l
    }

    /// All checks for the calls of one label set.
    fn check_label_set(&mut self, key: &Key, calls: &[&SdkCall]) {
        let server = calls[0].server_address.as_str();
        let labels = key.labels(server);
        let n = calls.len();
        let timed = calls.iter().all(|c| c.timed);

        // Operation count and duration.
        let count =
            |c: &mut Self, family: &str, l: &BTreeMap<String, String>, want: usize, what: &str| {
                c.expect_value(&format!("{family}_count"), l, want as f64, what);
            };
        count(self, DURATION, &labels, n, "operations");
        if timed {
            let client: f64 = calls.iter().map(|c| c.duration_s).sum();
            self.expect_time(&format!("{DURATION}_sum"), &labels, n, client, "duration");
        }

        // Tokens, where the SDK saw them in every call of the set. Counts the SDK did not see
        // (a stream without usage) are not checked: the agent may leave them unknown or
        // estimate them.
        for (i, kind) in ["input", "output", "cache_read", "cache_write", "reasoning"]
            .into_iter()
            .enumerate()
        {
            let known: Vec<u64> = calls
                .iter()
                .filter_map(|c| c.tokens.and_then(|t| t.by_type()[i].1))
                .collect();
            if known.len() != n {
                continue;
            }
            let total: u64 = known.iter().sum();
            let l = Self::with(&labels, "gen_ai_token_type", kind);
            self.expect_value(TOKENS_TOTAL, &l, total as f64, &format!("{kind} tokens"));
            if kind == "input" || kind == "output" {
                count(
                    self,
                    TOKEN_USAGE,
                    &l,
                    n,
                    &format!("{kind} token observations"),
                );
                self.expect_value(
                    &format!("{TOKEN_USAGE}_sum"),
                    &l,
                    total as f64,
                    &format!("{kind} token sum"),
                );
            }
        }

        // Time to first chunk: streams that delivered content, and only those.
        let ttfcs: Vec<f64> = calls.iter().filter_map(|c| c.ttfc_s).collect();
        count(self, TTFC, &labels, ttfcs.len(), "first chunks");
        if timed && !ttfcs.is_empty() {
            let client: f64 = ttfcs.iter().sum();
            self.expect_time(
                &format!("{TTFC}_sum"),
                &labels,
                ttfcs.len(),
                client,
                "time to first chunk",
            );
        }

        // Time per output chunk: one observation per gap between content chunks.
        let gaps: Vec<f64> = calls
            .iter()
            .flat_map(|c| c.chunk_gaps_s.iter().copied())
            .collect();
        count(
            self,
            TPOC,
            &labels,
            gaps.len(),
            "gaps between content chunks",
        );
        if timed && !gaps.is_empty() {
            let client: f64 = gaps.iter().sum();
            self.expect_time(
                &format!("{TPOC}_sum"),
                &labels,
                gaps.len(),
                client,
                "time per output chunk (sum of the gaps)",
            );
        }

        // Requests by status.
        let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
        for c in calls {
            let status = c.status.map(|s| s.to_string()).unwrap_or_default();
            *by_status.entry(status).or_default() += 1;
        }
        for (status, want) in &by_status {
            let l = Self::with(&labels, "http_response_status_code", status);
            self.expect_value(REQUESTS_TOTAL, &l, *want as f64, "requests");
        }
        for s in self.samples {
            if s.name == REQUESTS_TOTAL
                && Key::of_sample(s) == *key
                && !by_status.contains_key(s.label("http_response_status_code"))
            {
                self.problems.push(format!(
                    "{}: {} with a status the SDK did not see (it saw {by_status:?})",
                    short(&s.name, &s.labels),
                    s.value
                ));
            }
        }
    }
}

/// Base family of a sample name (`x_bucket` → `x`).
fn family(name: &str) -> &str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && FAMILIES.contains(&base)
        {
            return base;
        }
    }
    name
}

/// The outcome of [`compare`].
#[derive(Debug)]
pub struct Comparison {
    pub checked: usize,
    pub label_sets: usize,
    pub failed_checks: usize,
    /// One block per label set with problems (label set, then one line per problem), and one
    /// for series in label sets no call has.
    pub failed: Vec<String>,
    pub tolerance: Tolerance,
}

impl Comparison {
    pub fn ok(&self) -> bool {
        self.failed.is_empty()
    }

    /// The failure message, with the agent's GenAI series for the provider hosts (`text` is
    /// the scrape) so that it can be read without rerunning.
    pub fn message(&self, text: &str) -> String {
        let ours: Vec<&str> = text
            .lines()
            .filter(|l| {
                FAMILIES.iter().any(|f| l.starts_with(f))
                    && !l.contains("_bucket{")
                    && HOSTS.iter().any(|h| l.contains(h))
            })
            .collect();
        let headline = if ours.is_empty() {
            "the agent exported no GenAI series for the provider hosts at all (is the LLM pipeline wired to /metrics?)\n"
        } else {
            ""
        };
        format!(
            "{headline}/metrics differs from what the SDKs parsed: {} of {} checks failed, in {} of {} label sets \
             (tolerance for times: {} s per observation + {} of the client's value):\n\n{}\n\n\
             the agent's GenAI series for the provider hosts ({} lines, buckets left out):\n  {}",
            self.failed_checks,
            self.checked,
            self.failed.len(),
            self.label_sets,
            self.tolerance.abs_s,
            self.tolerance.rel,
            self.failed.join("\n"),
            ours.len(),
            ours.join("\n  ")
        )
    }
}

/// Checks `samples` (a parsed scrape) against the SDK calls, with the contract's tolerance.
pub fn compare(calls: &[SdkCall], samples: &[Sample]) -> Comparison {
    compare_with(calls, samples, TOLERANCE)
}

/// [`compare`] with another timing tolerance.
pub fn compare_with(calls: &[SdkCall], samples: &[Sample], tolerance: Tolerance) -> Comparison {
    let mut groups: BTreeMap<Key, Vec<&SdkCall>> = BTreeMap::new();
    for call in calls {
        groups.entry(Key::of_call(call)).or_default().push(call);
    }
    let mut checker = Checker {
        samples,
        tolerance,
        problems: Vec::new(),
        checked: 0,
    };
    let mut failed: Vec<String> = Vec::new();
    let mut failed_checks = 0;
    for (key, calls) in &groups {
        checker.check_label_set(key, calls);
        let problems = std::mem::take(&mut checker.problems);
        if !problems.is_empty() {
            failed_checks += problems.len();
            failed.push(format!(
                "{} ({} call{} of scenario {}):\n    {}",
                series_string("", &key.labels(&calls[0].server_address)),
                calls.len(),
                if calls.len() == 1 { "" } else { "s" },
                calls[0].scenario,
                problems.join("\n    ")
            ));
        }
    }
    // Nothing else about the provider hosts.
    let mut unexpected = Vec::new();
    for s in samples {
        if FAMILIES.contains(&family(&s.name))
            && !s.name.ends_with("_bucket")
            && HOSTS.contains(&s.label("server_address"))
            && !groups.contains_key(&Key::of_sample(s))
            && s.value != 0.0
        {
            unexpected.push(format!("{} {}", s.series(), s.value));
        }
    }
    if !unexpected.is_empty() {
        failed_checks += unexpected.len();
        failed.push(format!(
            "series in label sets that no SDK call has:\n    {}",
            unexpected.join("\n    ")
        ));
    }

    Comparison {
        checked: checker.checked,
        label_sets: groups.len(),
        failed_checks,
        failed,
        tolerance,
    }
}

#[cfg(test)]
pub(crate) mod tests;
