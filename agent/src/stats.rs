//! The live feed for routers: `GET /v1/stats?window=5m`.
//!
//! Receives: finished [`ExchangeRecord`]s ([`StatsSink`], on the pipeline's task). Emits, on
//! request ([`Stats::snapshot`], on the server's task): per provider and model over a sliding
//! window (by the requested model, else the response's), the request count, error and 429 ratios, p50/p95/p99 duration and time to first
//! chunk, output tokens per second of streams, and the mean cost per 1k tokens.
//!
//! Bounded: at most [`MAX_KEYS`] (provider, model) pairs (beyond, new pairs are counted
//! under model `_OTHER`), each keeping its calls of the last [`MAX_WINDOW_S`] seconds up to
//! [`MAX_SAMPLES_PER_KEY`] (the oldest go first).

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Arc, Mutex},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::Serialize;

use crate::{
    anomalies::percentile,
    exchanges::RecordSink,
    llm::ExchangeRecord,
    metrics::cardinality::{OTHER, sanitize_label_value},
};

/// Longest window served, in seconds.
pub const MAX_WINDOW_S: f64 = 3600.0;
/// The window when none is asked for.
pub const DEFAULT_WINDOW_S: f64 = 300.0;
pub const MAX_KEYS: usize = 64;
pub const MAX_SAMPLES_PER_KEY: usize = 4096;

/// One finished call, as the feed needs it.
#[derive(Clone, Debug, PartialEq)]
struct Sample {
    /// Unix seconds when it finished.
    at: f64,
    error: bool,
    rate_limited: bool,
    duration_s: Option<f64>,
    ttfc_s: Option<f64>,
    /// Output tokens / (duration − time to first chunk), streams only.
    output_tokens_per_s: Option<f64>,
    /// (USD, tokens) when the call was priced.
    cost: Option<(f64, u64)>,
}

impl Sample {
    fn of(r: &ExchangeRecord, at: f64) -> Self {
        let tps = match (
            r.streaming,
            r.tokens.output,
            r.duration_s,
            r.time_to_first_chunk_s,
        ) {
            (true, Some(out), Some(d), Some(t)) if d > t => Some(out as f64 / (d - t)),
            _ => None,
        };
        let tokens = r.tokens.input.unwrap_or(0) + r.tokens.output.unwrap_or(0);
        Self {
            at,
            error: r.error_type.is_some() || r.http_status.is_some_and(|s| s >= 400),
            rate_limited: r.http_status == Some(429),
            duration_s: r.duration_s,
            ttfc_s: r.time_to_first_chunk_s,
            output_tokens_per_s: tps,
            cost: r
                .cost
                .as_ref()
                .filter(|_| tokens > 0)
                .map(|c| (c.total_usd, tokens)),
        }
    }
}

/// p50, p95 and p99 (nearest rank) of a figure; null when no call had it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
}

impl Percentiles {
    fn of(mut v: Vec<f64>) -> Self {
        if v.is_empty() {
            return Self::default();
        }
        Self {
            p50: Some(percentile(&mut v, 0.50)),
            p95: Some(percentile(&mut v, 0.95)),
            p99: Some(percentile(&mut v, 0.99)),
        }
    }
}

/// One provider and model over the window.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelStats {
    pub provider: String,
    pub model: String,
    pub requests: u64,
    pub error_ratio: f64,
    pub rate_limited_ratio: f64,
    pub duration_s: Percentiles,
    pub time_to_first_chunk_s: Percentiles,
    /// Mean of output tokens / (duration − time to first chunk) over streams with both.
    pub output_tokens_per_s: Option<f64>,
    /// Total cost / total tokens × 1000 over priced calls.
    pub cost_per_1k_tokens_usd: Option<f64>,
}

/// The `/v1/stats` answer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Snapshot {
    pub window_s: f64,
    pub generated_unix_s: f64,
    pub models: Vec<ModelStats>,
}

/// Recent calls per (provider, model).
#[derive(Debug, Default)]
pub struct Stats {
    calls: BTreeMap<(String, String), VecDeque<Sample>>,
}

pub type SharedStats = Arc<Mutex<Stats>>;

impl Stats {
    pub fn shared() -> SharedStats {
        Arc::new(Mutex::new(Self::default()))
    }

    /// Adds a call that finished at Unix second `now`.
    pub fn add(&mut self, r: &ExchangeRecord, now: f64) {
        let provider = sanitize_label_value(&r.provider);
        let mut model = sanitize_label_value(
            r.request_model
                .as_deref()
                .or(r.response_model.as_deref())
                .unwrap_or(""),
        );
        if !self.calls.contains_key(&(provider.clone(), model.clone()))
            && self.calls.len() >= MAX_KEYS
        {
            self.expire(now);
            if self.calls.len() >= MAX_KEYS {
                model = OTHER.to_owned();
            }
        }
        let q = self.calls.entry((provider, model)).or_default();
        while q.len() >= MAX_SAMPLES_PER_KEY {
            q.pop_front();
        }
        q.push_back(Sample::of(r, now));
        while q.front().is_some_and(|s| s.at < now - MAX_WINDOW_S) {
            q.pop_front();
        }
    }

    /// Forgets calls older than the longest window, and pairs left without calls.
    fn expire(&mut self, now: f64) {
        for q in self.calls.values_mut() {
            while q.front().is_some_and(|s| s.at < now - MAX_WINDOW_S) {
                q.pop_front();
            }
        }
        self.calls.retain(|_, q| !q.is_empty());
    }

    /// Figures over the calls that finished in the last `window_s` seconds before `now`.
    pub fn snapshot(&self, now: f64, window_s: f64) -> Snapshot {
        let from = now - window_s;
        let models = self
            .calls
            .iter()
            .filter_map(|((provider, model), q)| {
                let calls: Vec<&Sample> = q.iter().filter(|s| s.at >= from).collect();
                if calls.is_empty() {
                    return None;
                }
                let n = calls.len() as f64;
                let ratio =
                    |f: fn(&Sample) -> bool| calls.iter().filter(|s| f(s)).count() as f64 / n;
                let tps: Vec<f64> = calls.iter().filter_map(|s| s.output_tokens_per_s).collect();
                let (usd, tokens) = calls
                    .iter()
                    .filter_map(|s| s.cost)
                    .fold((0.0, 0u64), |(u, t), (cu, ct)| (u + cu, t + ct));
                Some(ModelStats {
                    provider: provider.clone(),
                    model: model.clone(),
                    requests: calls.len() as u64,
                    error_ratio: ratio(|s| s.error),
                    rate_limited_ratio: ratio(|s| s.rate_limited),
                    duration_s: Percentiles::of(
                        calls.iter().filter_map(|s| s.duration_s).collect(),
                    ),
                    time_to_first_chunk_s: Percentiles::of(
                        calls.iter().filter_map(|s| s.ttfc_s).collect(),
                    ),
                    output_tokens_per_s: (!tps.is_empty())
                        .then(|| tps.iter().sum::<f64>() / tps.len() as f64),
                    cost_per_1k_tokens_usd: (tokens > 0).then(|| usd / tokens as f64 * 1000.0),
                })
            })
            .collect();
        Snapshot {
            window_s,
            generated_unix_s: now,
            models,
        }
    }
}

/// Parses a window: `30s`, `5m`, `1h` (or plain seconds); at most one hour.
pub fn parse_window(s: &str) -> Result<f64, String> {
    let s = s.trim();
    let (num, unit) = match s
        .char_indices()
        .find(|(_, c)| !c.is_ascii_digit() && *c != '.')
    {
        Some((i, _)) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("bad window {s:?}: use 30s, 5m or 1h"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("bad window unit in {s:?}: use s, m or h")),
    };
    if !(secs > 0.0 && secs <= MAX_WINDOW_S) {
        return Err(format!("window {s:?} must be above 0 and at most 1h"));
    }
    Ok(secs)
}

/// The `window` of a query string, or the default.
pub fn window_of_query(query: Option<&str>) -> Result<f64, String> {
    let value = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| kv.strip_prefix("window="));
    value.map_or(Ok(DEFAULT_WINDOW_S), parse_window)
}

pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Feeds finished calls into the shared [`Stats`].
pub struct StatsSink {
    stats: SharedStats,
}

impl StatsSink {
    pub fn new(stats: SharedStats) -> Self {
        Self { stats }
    }
}

impl RecordSink for StatsSink {
    fn record(&mut self, record: &ExchangeRecord) {
        // The feed describes calls made from this node. A call whose server end is also here
        // (a gateway or model server) would otherwise be counted twice.
        if record.role == Some(crate::llm::RoleName::Server) {
            return;
        }
        if let Ok(mut s) = self.stats.lock() {
            s.add(record, unix_now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::{Cost, Tokens};

    fn call(model: &str, status: u16, duration: f64) -> ExchangeRecord {
        ExchangeRecord {
            provider: "openai".into(),
            request_model: Some(model.into()),
            http_status: Some(status),
            error_type: (status >= 400).then(|| status.to_string()),
            duration_s: Some(duration),
            ..Default::default()
        }
    }

    #[test]
    fn windows_parse() {
        assert_eq!(parse_window("30s"), Ok(30.0));
        assert_eq!(parse_window("5m"), Ok(300.0));
        assert_eq!(parse_window("1h"), Ok(3600.0));
        assert_eq!(parse_window("90"), Ok(90.0));
        assert!(parse_window("2h").is_err());
        assert!(parse_window("0s").is_err());
        assert!(parse_window("5d").is_err());
        assert!(parse_window("m").is_err());
        assert_eq!(window_of_query(None), Ok(300.0));
        assert_eq!(window_of_query(Some("x=1&window=30s")), Ok(30.0));
    }

    #[test]
    fn percentiles_ratios_and_window() {
        let mut s = Stats::default();
        let now = 10_000.0;
        // Outside a 60 s window: counted only in longer ones.
        s.add(&call("gpt-4o", 500, 9.0), now - 120.0);
        // 10 calls: durations 0.1 .. 1.0; two 429s, one 500.
        for i in 1..=10 {
            let status = match i {
                3 | 7 => 429,
                9 => 500,
                _ => 200,
            };
            s.add(&call("gpt-4o", status, f64::from(i) / 10.0), now - 1.0);
        }
        let snap = s.snapshot(now, 60.0);
        let m = &snap.models[0];
        assert_eq!(m.requests, 10);
        assert!((m.error_ratio - 0.3).abs() < 1e-9);
        assert!((m.rate_limited_ratio - 0.2).abs() < 1e-9);
        // Nearest rank: p50 = 5th of 10, p95 and p99 = 10th.
        assert_eq!(m.duration_s.p50, Some(0.5));
        assert_eq!(m.duration_s.p95, Some(1.0));
        assert_eq!(m.duration_s.p99, Some(1.0));
        assert_eq!(m.time_to_first_chunk_s.p50, None);
        assert_eq!(m.cost_per_1k_tokens_usd, None);
        let long = s.snapshot(now, 300.0);
        assert_eq!(long.models[0].requests, 11);
        assert_eq!(long.models[0].duration_s.p99, Some(9.0));
    }

    #[test]
    fn stream_speed_and_cost() {
        let mut s = Stats::default();
        let stream = |out: u64, dur: f64, ttfc: f64, usd: f64| ExchangeRecord {
            provider: "anthropic".into(),
            request_model: Some("claude".into()),
            streaming: true,
            http_status: Some(200),
            duration_s: Some(dur),
            time_to_first_chunk_s: Some(ttfc),
            tokens: Tokens {
                input: Some(1000),
                output: Some(out),
                ..Tokens::default()
            },
            cost: Some(Cost {
                total_usd: usd,
                ..Cost::default()
            }),
            ..ExchangeRecord::default()
        };
        // 100 tokens in 2 s after the first chunk = 50/s; 300 in 3 s = 100/s.
        s.add(&stream(100, 2.5, 0.5, 0.011), 100.0);
        s.add(&stream(300, 3.2, 0.2, 0.013), 100.0);
        let m = &s.snapshot(100.0, 300.0).models[0];
        assert_eq!(m.output_tokens_per_s, Some(75.0));
        // (0.011 + 0.013) USD / 2400 tokens × 1000.
        let cost = m.cost_per_1k_tokens_usd.expect("priced");
        assert!((cost - 0.01).abs() < 1e-12, "{cost}");
        assert_eq!(m.time_to_first_chunk_s.p50, Some(0.2));
    }

    #[test]
    fn bounded_keys_and_samples() {
        let mut s = Stats::default();
        for i in 0..(MAX_KEYS + 10) {
            s.add(&call(&format!("m{i}"), 200, 1.0), 50.0);
        }
        assert_eq!(s.calls.len(), MAX_KEYS + 1);
        assert!(s.calls.contains_key(&("openai".into(), OTHER.into())));
        for _ in 0..(MAX_SAMPLES_PER_KEY + 5) {
            s.add(&call("m0", 200, 1.0), 60.0);
        }
        assert_eq!(
            s.calls[&("openai".into(), "m0".into())].len(),
            MAX_SAMPLES_PER_KEY
        );
        // An hour later, old calls expire and room is made for new pairs.
        s.add(&call("new", 200, 1.0), 60.0 + MAX_WINDOW_S + 1.0);
        assert!(s.calls.contains_key(&("openai".into(), "new".into())));
    }
}
