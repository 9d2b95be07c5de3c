//! The soak test: mixed LLM traffic from many short-lived client processes while the agent
//! runs, then a call-by-call comparison of the agent's exchange log with what the clients
//! made and what the mock sent. Shared by `cargo xtask soak` (10 minutes, Markdown report)
//! and the `soak` end-to-end test (about a minute).
//!
//! # Ground truth
//! `clients/soak_client.py` processes (a few at a time, replaced as they exit) write one line
//! per call: pid, a unique `User-Agent` (`tokentap-soak/<pid>/<seq>/<nonce>`), the request
//! model (`<base>-soak-<options>`), status and outcome as the
//! client saw them, and the SDK's usage for SDK calls. The mock records, per request, the
//! `User-Agent`, status, error type and the token counts its answer carried. So each call is
//! known three times: client, mock (what was on the wire) and agent (the exchange log).
//!
//! # Checks ([`check`])
//! - the chain without the agent: every client call reached the mock, with the status the
//!   client saw, and the SDKs parsed the tokens the mock sent;
//! - every call has exactly one exchange record with the client's pid and request model,
//!   started within the call's time window (pids may be reused: the window tells them apart;
//!   a process makes its calls one after the other, so of several candidates the earliest
//!   unused one is the call's), with the mock's provider, API, status, error type, response
//!   model and tokens;
//! - no other record carries a soak model or a soak client's pid: one left over with the pid
//!   and model of a call, in its window, is a duplicate; any other is unexpected (a merged,
//!   split or misattributed exchange);
//! - loss counters ([`LOSS_COUNTERS`]) stay at zero.
//!
//! Agent RSS and a few gauges are sampled every few seconds ([`Sample`]); [`RssSummary`]
//! describes the curve after warm-up.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::fs;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use serde::Deserialize;
use serde_json::Value;

use crate::harness::{Agent, http_get};
use crate::mock_provider::{MockProvider, Outcome, RequestRecord};
use crate::prom;
use crate::sdk::SdkTokens;

pub fn soak_client_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/soak_client.py")
}

/// One call, as the soak client saw it (see the docstring of soak_client.py).
#[derive(Clone, Debug, Deserialize)]
pub struct ClientCall {
    pub pid: u32,
    pub seq: u32,
    pub ua: String,
    pub scenario: String,
    pub provider: String,
    pub api: String,
    pub request_model: String,
    pub streaming: bool,
    pub sdk: bool,
    pub status: Option<u16>,
    pub outcome: String,
    pub tokens: Option<SdkTokens>,
    pub t_start_unix_ns: i128,
    pub t_end_unix_ns: i128,
    #[serde(default)]
    pub error: Option<String>,
}

/// The fields of an exchange log line the checker compares.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AgentRecord {
    pub pid: u32,
    pub provider: String,
    pub api: String,
    pub server_address: String,
    pub request_model: Option<String>,
    pub response_model: Option<String>,
    pub http_status: Option<u16>,
    pub error_type: Option<String>,
    pub tokens: SdkTokens,
    pub start_unix_ns: i128,
}

impl AgentRecord {
    pub fn from_json(v: &Value) -> Self {
        let s = |k: &str| v[k].as_str().map(str::to_owned);
        let t = |k: &str| v["tokens"][k].as_u64();
        Self {
            pid: v["pid"]
                .as_u64()
                .and_then(|p| u32::try_from(p).ok())
                .unwrap_or(0),
            provider: s("provider").unwrap_or_default(),
            api: s("api").unwrap_or_default(),
            server_address: s("server_address").unwrap_or_default(),
            request_model: s("request_model"),
            response_model: s("response_model"),
            http_status: v["http_status"]
                .as_u64()
                .and_then(|c| u16::try_from(c).ok()),
            error_type: s("error_type"),
            tokens: SdkTokens {
                input: t("input"),
                output: t("output"),
                cache_read: t("cache_read"),
                cache_write: t("cache_write"),
                reasoning: t("reasoning"),
            },
            start_unix_ns: v["start_unix_ns"]
                .as_i64()
                .map(i128::from)
                .or_else(|| v["start_unix_ns"].as_f64().map(|f| f as i128))
                .unwrap_or(0),
        }
    }
}

/// Parses exchange log text (JSON lines); lines that are not JSON are errors.
pub fn parse_exchange_log(text: &str) -> anyhow::Result<Vec<AgentRecord>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str::<Value>(l)
                .map(|v| AgentRecord::from_json(&v))
                .with_context(|| format!("exchange log line is not JSON: {l}"))
        })
        .collect()
}

/// A request model the soak client made: it has a `soak` token.
pub fn is_soak_model(model: &str) -> bool {
    model.split('-').any(|t| t == "soak")
}

fn provider_name(host: &str) -> &'static str {
    match host {
        "api.openai.com" => "openai",
        "api.anthropic.com" => "anthropic",
        "generativelanguage.googleapis.com" => "gcp.gemini",
        _ => "",
    }
}

/// What the agent must have recorded for a call, from the mock's record of it.
fn expected_error_type(rec: &RequestRecord) -> Option<String> {
    if rec.outcome == Outcome::Disconnected && !rec.stream {
        // A JSON body cut short: the mock says "interrupted", the agent says what was cut.
        return Some("response_interrupted".to_owned());
    }
    rec.error_type.clone()
}

fn same_count(a: Option<u64>, b: Option<u64>) -> bool {
    a.unwrap_or(0) == b.unwrap_or(0)
}

fn same_tokens(agent: &SdkTokens, mock: &crate::mock_provider::Tokens) -> bool {
    agent.input == mock.input
        && agent.output == mock.output
        && same_count(agent.cache_read, mock.cache_read)
        && same_count(agent.cache_write, mock.cache_write)
        && same_count(agent.reasoning, mock.reasoning)
}

/// How far outside a call's client-side window its record may start (clock reads differ).
const WINDOW_SLACK_NS: i128 = 2_000_000_000;
/// Problems listed per kind in a verdict (the counts are always complete).
const MAX_LISTED: usize = 20;

/// The outcome of [`check`].
#[derive(Clone, Debug, Default)]
pub struct Verdict {
    pub calls: usize,
    /// Calls whose one record matched in every field.
    pub exact: usize,
    /// Client calls the mock never saw, or saw differently (the chain without the agent).
    pub chain: Vec<String>,
    pub chain_count: usize,
    /// Calls with no record.
    pub missing: Vec<String>,
    pub missing_count: usize,
    /// Records left over with the pid and model of a call, in its window.
    pub duplicated: Vec<String>,
    pub duplicated_count: usize,
    /// Calls whose record disagrees with the mock.
    pub wrong: Vec<String>,
    pub wrong_count: usize,
    /// Records with a soak model or a soak client's pid that match no call.
    pub unexpected: Vec<String>,
    pub unexpected_count: usize,
}

impl Verdict {
    pub fn ok(&self) -> bool {
        self.chain_count == 0
            && self.missing_count == 0
            && self.duplicated_count == 0
            && self.wrong_count == 0
            && self.unexpected_count == 0
    }

    fn push(list: &mut Vec<String>, count: &mut usize, what: String) {
        *count += 1;
        if list.len() < MAX_LISTED {
            list.push(what);
        }
    }

    /// The problems, for a failure message.
    pub fn problems(&self) -> String {
        let mut out = String::new();
        for (name, n, list) in [
            ("chain (client vs mock)", self.chain_count, &self.chain),
            ("missing", self.missing_count, &self.missing),
            ("duplicated", self.duplicated_count, &self.duplicated),
            ("wrong", self.wrong_count, &self.wrong),
            ("unexpected", self.unexpected_count, &self.unexpected),
        ] {
            if n > 0 {
                let _ = writeln!(out, "{name}: {n}");
                for p in list {
                    let _ = writeln!(out, "  {p}");
                }
            }
        }
        out
    }
}

/// Compares every client call with the mock's and the agent's records of it (see the module
/// documentation).
pub fn check(calls: &[ClientCall], mock: &[RequestRecord], agent: &[AgentRecord]) -> Verdict {
    let mut v = Verdict {
        calls: calls.len(),
        ..Verdict::default()
    };
    let by_ua: HashMap<&str, &RequestRecord> = mock
        .iter()
        .filter_map(|r| r.user_agent.as_deref().map(|ua| (ua, r)))
        .collect();
    let pids: HashSet<u32> = calls.iter().map(|c| c.pid).collect();
    let mut candidates: HashMap<(u32, &str), Vec<usize>> = HashMap::new();
    let mut relevant = Vec::new();
    for (i, r) in agent.iter().enumerate() {
        let soak_model = r.request_model.as_deref().is_some_and(is_soak_model);
        if soak_model || pids.contains(&r.pid) {
            relevant.push(i);
        }
        if let Some(m) = r.request_model.as_deref() {
            candidates.entry((r.pid, m)).or_default().push(i);
        }
    }
    let mut used = vec![false; agent.len()];
    for call in calls {
        let who = format!(
            "pid {} call {} ({} {})",
            call.pid, call.seq, call.scenario, call.request_model
        );
        let Some(rec) = by_ua.get(call.ua.as_str()) else {
            Verdict::push(
                &mut v.chain,
                &mut v.chain_count,
                format!(
                    "{who}: never reached the mock (client: {} {:?})",
                    call.outcome, call.error
                ),
            );
            continue;
        };
        if call.status.is_some() && call.status != Some(rec.status) {
            Verdict::push(
                &mut v.chain,
                &mut v.chain_count,
                format!(
                    "{who}: client saw status {:?}, the mock sent {}",
                    call.status, rec.status
                ),
            );
        }
        if call.sdk
            && call.outcome == "ok"
            && let Some(t) = &call.tokens
            && !same_tokens(t, &rec.tokens)
        {
            Verdict::push(
                &mut v.chain,
                &mut v.chain_count,
                format!("{who}: SDK tokens {t:?} != mock tokens {:?}", rec.tokens),
            );
        }
        let window = call_window(call);
        let first = candidates
            .get(&(call.pid, call.request_model.as_str()))
            .and_then(|c| {
                c.iter()
                    .copied()
                    .filter(|&i| !used[i] && window.contains(&agent[i].start_unix_ns))
                    .min_by_key(|&i| agent[i].start_unix_ns)
            });
        let Some(first) = first else {
            Verdict::push(&mut v.missing, &mut v.missing_count, who);
            continue;
        };
        used[first] = true;
        let r = &agent[first];
        let mut diffs = Vec::new();
        let host = call.provider.as_str();
        if r.provider != provider_name(host) || r.server_address != host {
            diffs.push(format!(
                "provider {} at {}, expected {} at {host}",
                r.provider,
                r.server_address,
                provider_name(host)
            ));
        }
        if r.api != rec.api {
            diffs.push(format!("api {} != {}", r.api, rec.api));
        }
        if r.http_status != Some(rec.status) {
            diffs.push(format!("status {:?} != {}", r.http_status, rec.status));
        }
        let want_error = expected_error_type(rec);
        if r.error_type != want_error {
            diffs.push(format!("error_type {:?} != {want_error:?}", r.error_type));
        }
        if rec.response_model.is_some() && r.response_model != rec.response_model {
            diffs.push(format!(
                "response_model {:?} != {:?}",
                r.response_model, rec.response_model
            ));
        }
        if !same_tokens(&r.tokens, &rec.tokens) {
            diffs.push(format!("tokens {:?} != mock {:?}", r.tokens, rec.tokens));
        }
        if diffs.is_empty() {
            v.exact += 1;
        } else {
            Verdict::push(
                &mut v.wrong,
                &mut v.wrong_count,
                format!("{who}: {}", diffs.join("; ")),
            );
        }
    }
    let mut windows: HashMap<(u32, &str), Vec<RangeInclusive<i128>>> = HashMap::new();
    for call in calls {
        windows
            .entry((call.pid, call.request_model.as_str()))
            .or_default()
            .push(call_window(call));
    }
    for i in relevant {
        if used[i] {
            continue;
        }
        let r = &agent[i];
        let what = format!(
            "pid {} {} {:?} status {:?} error {:?}",
            r.pid, r.provider, r.request_model, r.http_status, r.error_type
        );
        let duplicate = r.request_model.as_deref().is_some_and(|m| {
            windows
                .get(&(r.pid, m))
                .is_some_and(|ws| ws.iter().any(|w| w.contains(&r.start_unix_ns)))
        });
        if duplicate {
            Verdict::push(&mut v.duplicated, &mut v.duplicated_count, what);
        } else {
            Verdict::push(&mut v.unexpected, &mut v.unexpected_count, what);
        }
    }
    v
}

/// When a call's record may start.
fn call_window(call: &ClientCall) -> RangeInclusive<i128> {
    (call.t_start_unix_ns - WINDOW_SLACK_NS)..=(call.t_end_unix_ns + WINDOW_SLACK_NS)
}

/// Loss and drop counters that must stay at zero: `(metric, label filter)`.
pub const LOSS_COUNTERS: [(&str, Option<(&str, &str)>); 8] = [
    (
        "tokentap_events_lost_total",
        Some(("reason", "ringbuf_full")),
    ),
    (
        "tokentap_events_lost_total",
        Some(("reason", "user_memory_unreadable")),
    ),
    (
        "tokentap_events_lost_total",
        Some(("reason", "call_args_full")),
    ),
    (
        "tokentap_events_lost_total",
        Some(("reason", "length_unreadable")),
    ),
    ("tokentap_bytes_lost_total", None),
    ("tokentap_calls_lost_total", None),
    ("tokentap_events_decode_errors_total", None),
    ("tokentap_sink_records_dropped_total", None),
];

/// Sum of the samples of `name` (matching `filter` when given).
pub fn sum_of(samples: &[prom::Sample], name: &str, filter: Option<(&str, &str)>) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name && filter.is_none_or(|(k, val)| s.label(k) == val))
        .map(|s| s.value)
        // An empty sum of f64 is -0.0; a report should say 0.
        .sum::<f64>()
        + 0.0
}

fn counter_label(name: &str, filter: Option<(&str, &str)>) -> String {
    match filter {
        Some((k, val)) => format!("{name}{{{k}=\"{val}\"}}"),
        None => name.to_owned(),
    }
}

/// One reading of the agent, every few seconds.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    pub t_s: f64,
    pub rss_kib: u64,
    pub tls_connections_open: f64,
    pub http_connections_open: f64,
    pub llm_in_flight: f64,
    pub exchanges: f64,
}

/// The RSS curve after warm-up.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RssSummary {
    pub warm_up_s: f64,
    pub samples: usize,
    pub min_kib: u64,
    pub max_kib: u64,
    pub first_kib: u64,
    pub last_kib: u64,
    /// Least-squares slope, KiB per minute.
    pub slope_kib_per_min: f64,
}

impl RssSummary {
    /// Growth over the post-warm-up period, as a fraction of the minimum.
    pub fn growth(&self) -> f64 {
        if self.min_kib == 0 {
            return 0.0;
        }
        (self.max_kib - self.min_kib) as f64 / self.min_kib as f64
    }
}

pub fn rss_summary(samples: &[Sample], warm_up_s: f64) -> RssSummary {
    let after: Vec<&Sample> = samples.iter().filter(|s| s.t_s >= warm_up_s).collect();
    if after.is_empty() {
        return RssSummary {
            warm_up_s,
            ..RssSummary::default()
        };
    }
    let n = after.len() as f64;
    let mean_t = after.iter().map(|s| s.t_s).sum::<f64>() / n;
    let mean_r = after.iter().map(|s| s.rss_kib as f64).sum::<f64>() / n;
    let (mut num, mut den) = (0.0, 0.0);
    for s in &after {
        num += (s.t_s - mean_t) * (s.rss_kib as f64 - mean_r);
        den += (s.t_s - mean_t).powi(2);
    }
    RssSummary {
        warm_up_s,
        samples: after.len(),
        min_kib: after.iter().map(|s| s.rss_kib).min().unwrap_or(0),
        max_kib: after.iter().map(|s| s.rss_kib).max().unwrap_or(0),
        first_kib: after.first().map_or(0, |s| s.rss_kib),
        last_kib: after.last().map_or(0, |s| s.rss_kib),
        slope_kib_per_min: if den > 0.0 { num / den * 60.0 } else { 0.0 },
    }
}

/// `VmRSS` of a process, KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// User + system CPU seconds of a process.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `after` starts at field 3.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some((utime + stime) / hz.max(1) as f64)
}

/// How to run a soak.
#[derive(Clone, Debug)]
pub struct SoakConfig {
    pub duration: Duration,
    /// Client processes running at once.
    pub concurrency: usize,
    /// Every n-th process uses the real SDKs (0: none).
    pub sdk_every: usize,
    /// Every n-th process exits without closing its connections (0: none).
    pub hard_exit_every: usize,
    /// The SDK venv's Python (also runs the standard-library clients).
    pub python: PathBuf,
    /// RSS samples before this are warm-up.
    pub warm_up: Duration,
    pub sample_every: Duration,
    /// Extra agent flags.
    pub agent_args: Vec<String>,
}

/// Everything a soak measured.
#[derive(Clone, Debug, Default)]
pub struct SoakReport {
    pub duration_s: f64,
    pub concurrency: usize,
    pub processes: usize,
    pub processes_failed: usize,
    pub sdk_processes: usize,
    pub hard_exits: usize,
    pub verdict: Verdict,
    pub mock_requests: usize,
    pub records: usize,
    pub counters: Vec<(String, f64)>,
    pub losses: Vec<(String, f64)>,
    pub samples: Vec<Sample>,
    pub rss: RssSummary,
    pub agent_cpu_s: f64,
    pub load_before: String,
    pub load_after: String,
    pub scenarios: BTreeMap<String, usize>,
}

impl SoakReport {
    /// Everything that must hold: the verdict and zero losses.
    pub fn ok(&self) -> bool {
        self.verdict.ok()
            && self.losses.iter().all(|(_, n)| *n == 0.0)
            && self.processes_failed == 0
    }
}

/// Client processes; all are killed when this is dropped.
struct Clients(Vec<(Child, usize)>);

impl Drop for Clients {
    fn drop(&mut self) {
        for (child, _) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn listen_addr(agent: &Agent) -> anyhow::Result<String> {
    agent
        .stderr()
        .lines()
        .find_map(|l| l.split("http://").nth(1))
        .map(|a| a.trim().to_owned())
        .ok_or_else(|| anyhow!("the agent did not log its listen address"))
}

fn scrape(addr: &str) -> anyhow::Result<Vec<prom::Sample>> {
    let (status, text) = http_get(addr, "/metrics")?;
    if status != 200 {
        bail!("/metrics answered {status}");
    }
    prom::parse(&text)
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Runs the soak: mock, agent with an exchange log, clients for `config.duration`, then the
/// comparison. Errors are infrastructure failures; the verdict is in the report.
pub fn run(config: &SoakConfig) -> anyhow::Result<SoakReport> {
    let dir = crate::tls_server::make_temp_dir()?;
    let result = run_in(config, &dir);
    let _ = fs::remove_dir_all(&dir);
    result
}

fn run_in(config: &SoakConfig, dir: &Path) -> anyhow::Result<SoakReport> {
    let log_path = dir.join("exchanges.jsonl");
    let calls_dir = dir.join("calls");
    fs::create_dir_all(&calls_dir)?;
    let mock = MockProvider::start()?;
    let log_arg = log_path.to_string_lossy().into_owned();
    let mut args: Vec<&str> = vec![
        "agent",
        "--listen",
        "127.0.0.1:0",
        "--log-exchanges",
        &log_arg,
        "--log-max-bytes",
        "4000000000",
    ];
    args.extend(config.agent_args.iter().map(String::as_str));
    let agent = Agent::start(&args)?;
    let addr = listen_addr(&agent)?;
    let agent_pid = agent.pid();
    let mut report = SoakReport {
        concurrency: config.concurrency,
        load_before: loadavg(),
        ..SoakReport::default()
    };

    let started = Instant::now();
    let deadline = started + config.duration;
    let mut next_sample = started;
    let mut clients = Clients(Vec::new());
    let mut n = 0usize;
    let script = soak_client_script();
    loop {
        let now = Instant::now();
        if now >= next_sample {
            next_sample += config.sample_every;
            let m = scrape(&addr).unwrap_or_default();
            report.samples.push(Sample {
                t_s: now.duration_since(started).as_secs_f64(),
                rss_kib: rss_kib(agent_pid).unwrap_or(0),
                tls_connections_open: sum_of(&m, "tokentap_tls_connections_open", None),
                http_connections_open: sum_of(&m, "tokentap_http_connections_open", None),
                llm_in_flight: sum_of(&m, "tokentap_llm_exchanges_in_flight", None),
                exchanges: sum_of(&m, "tokentap_llm_total", Some(("event", "exchanges"))),
            });
        }
        // Reap.
        let mut i = 0;
        while i < clients.0.len() {
            if let Some(status) = clients.0[i].0.try_wait()? {
                let (_, idx) = clients.0.swap_remove(i);
                if !status.success() {
                    report.processes_failed += 1;
                    eprintln!("soak: client {idx} exited with {status}");
                }
            } else {
                i += 1;
            }
        }
        if now >= deadline {
            if clients.0.is_empty() {
                break;
            }
            if now > deadline + Duration::from_secs(60) {
                bail!(
                    "{} soak clients still running a minute after the end",
                    clients.0.len()
                );
            }
        } else {
            while clients.0.len() < config.concurrency {
                let sdk = config.sdk_every > 0 && n % config.sdk_every == config.sdk_every - 1;
                let hard = config.hard_exit_every > 0
                    && n % config.hard_exit_every == config.hard_exit_every / 2;
                let calls = if sdk { 6 } else { 3 + n % 8 };
                let mut cmd = Command::new(&config.python);
                cmd.arg(&script)
                    .args(["--port", &mock.port().to_string(), "--cafile"])
                    .arg(mock.ca_file())
                    .arg("--out")
                    .arg(calls_dir.join(format!("{n}.jsonl")))
                    .args(["--calls", &calls.to_string(), "--seed", &n.to_string()])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null());
                if sdk {
                    cmd.arg("--sdk");
                    report.sdk_processes += 1;
                }
                if hard {
                    cmd.arg("--hard-exit");
                    report.hard_exits += 1;
                }
                clients
                    .0
                    .push((cmd.spawn().context("starting soak_client.py")?, n));
                n += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    report.processes = n;
    report.duration_s = started.elapsed().as_secs_f64();
    // The last records are read within the agent's poll; metrics sync every 250 ms.
    std::thread::sleep(Duration::from_secs(2));
    let final_metrics = scrape(&addr)?;
    report.agent_cpu_s = cpu_seconds(agent_pid).unwrap_or(0.0);
    report.samples.push(Sample {
        t_s: started.elapsed().as_secs_f64(),
        rss_kib: rss_kib(agent_pid).unwrap_or(0),
        tls_connections_open: sum_of(&final_metrics, "tokentap_tls_connections_open", None),
        http_connections_open: sum_of(&final_metrics, "tokentap_http_connections_open", None),
        llm_in_flight: sum_of(&final_metrics, "tokentap_llm_exchanges_in_flight", None),
        exchanges: sum_of(
            &final_metrics,
            "tokentap_llm_total",
            Some(("event", "exchanges")),
        ),
    });
    report.load_after = loadavg();
    for (name, filter) in LOSS_COUNTERS {
        report.losses.push((
            counter_label(name, filter),
            sum_of(&final_metrics, name, filter),
        ));
    }
    for (name, filter) in [
        (
            "tokentap_events_lost_total",
            Some(("reason", "call_args_missing")),
        ),
        ("tokentap_tls_connections_total", None),
        ("tokentap_tls_connections_evicted_total", None),
        ("tokentap_tls_connections_open", None),
        ("tokentap_http_connections_open", None),
        ("tokentap_llm_exchanges_in_flight", None),
        ("tokentap_processes_seen_total", None),
        ("tokentap_captured_bytes_total", None),
        ("tokentap_llm_total", Some(("event", "exchanges"))),
        ("tokentap_llm_total", Some(("event", "dropped_idle"))),
        (
            "tokentap_llm_total",
            Some(("event", "dropped_in_flight_cap")),
        ),
        ("tokentap_http_total", Some(("event", "orphan_responses"))),
        ("tokentap_http_total", Some(("event", "resyncs"))),
        ("tokentap_metric_label_sets_overflow_total", None),
    ] {
        report.counters.push((
            counter_label(name, filter),
            sum_of(&final_metrics, name, filter),
        ));
    }
    agent.stop()?;

    let mut log = String::new();
    for suffix in ["", ".1", ".2", ".3", ".4", ".5"] {
        let path = PathBuf::from(format!("{}{suffix}", log_path.display()));
        if let Ok(text) = fs::read_to_string(&path) {
            log = text + &log;
        }
    }
    let agent_records = parse_exchange_log(&log)?;
    report.records = agent_records.len();
    let mut calls = Vec::new();
    for entry in fs::read_dir(&calls_dir)? {
        let text = fs::read_to_string(entry?.path())?;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let call: ClientCall =
                serde_json::from_str(line).with_context(|| format!("soak client line {line}"))?;
            *report.scenarios.entry(call.scenario.clone()).or_default() += 1;
            calls.push(call);
        }
    }
    let mock_records = mock.requests();
    report.mock_requests = mock_records.len();
    report.verdict = check(&calls, &mock_records, &agent_records);
    let warm_up = config.warm_up.as_secs_f64();
    report.rss = rss_summary(&report.samples, warm_up);
    Ok(report)
}

/// The report as Markdown.
pub fn markdown(report: &SoakReport, machine: &str, command: &str) -> String {
    let mut md = String::new();
    let v = &report.verdict;
    let _ = writeln!(md, "# Soak: mixed LLM traffic from short-lived processes\n");
    let _ = writeln!(md, "Command: `{command}`\n");
    let _ = writeln!(md, "Machine: {machine}\n");
    let _ = writeln!(
        md,
        "Load average (1/5/15 min) before: {}; after: {} (the machine is shared with other jobs).\n",
        report.load_before, report.load_after
    );
    let _ = writeln!(
        md,
        "**Result: {}**\n",
        if report.ok() { "PASS" } else { "FAIL" }
    );
    let _ = writeln!(md, "| | |\n|---|---|");
    let _ = writeln!(md, "| duration | {:.0} s |", report.duration_s);
    let _ = writeln!(
        md,
        "| client processes | {} ({} at a time; {} with the real SDKs, {} exited without closing their connections; {} failed) |",
        report.processes,
        report.concurrency,
        report.sdk_processes,
        report.hard_exits,
        report.processes_failed
    );
    let _ = writeln!(
        md,
        "| calls | {} ({:.1}/s); the mock answered {} requests |",
        v.calls,
        v.calls as f64 / report.duration_s.max(1.0),
        report.mock_requests
    );
    let _ = writeln!(md, "| exchange records | {} |", report.records);
    let _ = writeln!(
        md,
        "| calls recorded exactly once, every field right | {} of {} |",
        v.exact, v.calls
    );
    let _ = writeln!(
        md,
        "| missing / duplicated / wrong / unexpected records | {} / {} / {} / {} |",
        v.missing_count, v.duplicated_count, v.wrong_count, v.unexpected_count
    );
    let _ = writeln!(
        md,
        "| client vs mock disagreements (test infrastructure) | {} |",
        v.chain_count
    );
    let _ = writeln!(md, "| agent CPU | {:.1} s |", report.agent_cpu_s);
    let r = &report.rss;
    let _ = writeln!(
        md,
        "| agent RSS after {:.0} s warm-up | min {:.1} MiB, max {:.1} MiB, first {:.1} MiB, last {:.1} MiB, slope {:+.2} MiB/min over {} samples |",
        r.warm_up_s,
        r.min_kib as f64 / 1024.0,
        r.max_kib as f64 / 1024.0,
        r.first_kib as f64 / 1024.0,
        r.last_kib as f64 / 1024.0,
        r.slope_kib_per_min / 1024.0,
        r.samples
    );
    let _ = writeln!(
        md,
        "\n## Loss counters (must be 0)\n\n| counter | value |\n|---|---|"
    );
    for (name, n) in &report.losses {
        let _ = writeln!(md, "| `{name}` | {n} |");
    }
    let _ = writeln!(
        md,
        "\n## Other counters at the end\n\n| counter | value |\n|---|---|"
    );
    for (name, n) in &report.counters {
        let _ = writeln!(md, "| `{name}` | {n} |");
    }
    let _ = writeln!(
        md,
        "\n## Calls by scenario\n\n| scenario | calls |\n|---|---|"
    );
    for (name, n) in &report.scenarios {
        let _ = writeln!(md, "| {name} | {n} |");
    }
    let _ = writeln!(
        md,
        "\n## Samples\n\n| t (s) | RSS (MiB) | TLS conns open | HTTP conns open | LLM in flight | exchanges |\n|---|---|---|---|---|---|"
    );
    let step = (report.samples.len() / 40).max(1);
    for (i, s) in report.samples.iter().enumerate() {
        if i % step == 0 || i + 1 == report.samples.len() {
            let _ = writeln!(
                md,
                "| {:.0} | {:.1} | {} | {} | {} | {} |",
                s.t_s,
                s.rss_kib as f64 / 1024.0,
                s.tls_connections_open,
                s.http_connections_open,
                s.llm_in_flight,
                s.exchanges
            );
        }
    }
    if !v.ok() {
        let _ = writeln!(md, "\n## Problems\n\n```\n{}```", v.problems());
    }
    md
}

/// `nproc`, CPU model, memory and kernel, in one line.
pub fn machine_description() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let mem = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_default();
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    format!("{cpus} CPUs ({model}), {mem} memory, Linux {kernel}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock_provider::Tokens;

    fn call(pid: u32, seq: u32, model: &str) -> ClientCall {
        ClientCall {
            pid,
            seq,
            ua: format!("tokentap-soak/{pid}/{seq}/ab"),
            scenario: "openai.chat".into(),
            provider: "api.openai.com".into(),
            api: "openai.chat_completions".into(),
            request_model: model.into(),
            streaming: false,
            sdk: false,
            status: Some(200),
            outcome: "ok".into(),
            tokens: None,
            t_start_unix_ns: 1_000_000_000_000,
            t_end_unix_ns: 1_000_100_000_000,
            error: None,
        }
    }

    fn mock_of(c: &ClientCall) -> RequestRecord {
        RequestRecord {
            user_agent: Some(c.ua.clone()),
            api: c.api.clone(),
            request_model: Some(c.request_model.clone()),
            response_model: Some(format!("{}-2024-08-06", c.request_model)),
            status: 200,
            outcome: Outcome::Complete,
            tokens: Tokens {
                input: Some(12),
                output: Some(5),
                ..Tokens::default()
            },
            ..RequestRecord::default()
        }
    }

    fn agent_of(c: &ClientCall) -> AgentRecord {
        AgentRecord {
            pid: c.pid,
            provider: "openai".into(),
            api: c.api.clone(),
            server_address: c.provider.clone(),
            request_model: Some(c.request_model.clone()),
            response_model: Some(format!("{}-2024-08-06", c.request_model)),
            http_status: Some(200),
            error_type: None,
            tokens: SdkTokens {
                input: Some(12),
                output: Some(5),
                ..SdkTokens::default()
            },
            start_unix_ns: c.t_start_unix_ns + 1_000_000,
        }
    }

    fn world() -> (Vec<ClientCall>, Vec<RequestRecord>, Vec<AgentRecord>) {
        let mut calls = vec![
            call(10, 0, "gpt-4o-soak"),
            call(10, 1, "gpt-4o-soak"),
            call(11, 0, "gpt-4o-soak"),
        ];
        // Pid 10 calls the same model twice, one call after the other.
        calls[1].t_start_unix_ns = calls[0].t_end_unix_ns + 1_000_000;
        calls[1].t_end_unix_ns = calls[1].t_start_unix_ns + 100_000_000;
        let mock = calls.iter().map(mock_of).collect();
        let agent = calls.iter().map(agent_of).collect();
        (calls, mock, agent)
    }

    #[test]
    fn exact_records_pass() {
        let (calls, mock, agent) = world();
        let v = check(&calls, &mock, &agent);
        assert!(v.ok(), "{}", v.problems());
        assert_eq!(v.exact, 3);
    }

    #[test]
    fn every_kind_of_disagreement_is_caught() {
        let (calls, mock, agent) = world();
        // Missing (of two calls with one model, the second finds no record).
        let v = check(&calls, &mock, &agent[1..]);
        assert_eq!((v.missing_count, v.exact), (1, 2), "{}", v.problems());
        // Records in another order are still paired by time.
        let mut shuffled = agent.clone();
        shuffled.reverse();
        assert!(check(&calls, &mock, &shuffled).ok());
        // Duplicated.
        let mut dup = agent.clone();
        dup.push(agent[0].clone());
        assert_eq!(check(&calls, &mock, &dup).duplicated_count, 1);
        // Attributed to the wrong process: missing for one, unexpected for the other.
        let mut wrong_pid = agent.clone();
        wrong_pid[1].pid = 12;
        let v = check(&calls, &mock, &wrong_pid);
        assert_eq!(
            (v.missing_count, v.unexpected_count),
            (1, 1),
            "{}",
            v.problems()
        );
        // Wrong tokens, status, error type.
        let mut wrong = agent.clone();
        wrong[0].tokens.output = Some(4);
        wrong[1].http_status = Some(500);
        wrong[2].error_type = Some("stream_interrupted".into());
        assert_eq!(check(&calls, &mock, &wrong).wrong_count, 3);
        // Partial tokens on a cut stream are wrong; unknown is right.
        let mut cut_mock = mock.clone();
        cut_mock[0].tokens.output = None;
        cut_mock[0].error_type = Some("stream_interrupted".into());
        cut_mock[0].stream = true;
        cut_mock[0].outcome = Outcome::Disconnected;
        let mut cut = agent.clone();
        cut[0].error_type = Some("stream_interrupted".into());
        assert_eq!(check(&calls, &cut_mock, &cut).wrong_count, 1);
        cut[0].tokens.output = None;
        assert!(check(&calls, &cut_mock, &cut).ok());
        // A record of the same pid and model outside the call's time window (a reused pid).
        let mut late = agent.clone();
        late[2].start_unix_ns += 60_000_000_000;
        let v = check(&calls, &mock, &late);
        assert_eq!((v.missing_count, v.unexpected_count), (1, 1));
        // A call the mock never saw is the test's own failure.
        assert_eq!(check(&calls, &mock[1..], &agent[1..]).chain_count, 1);
        // Another process's traffic with other models is not ours.
        let mut other = agent.clone();
        other.push(AgentRecord {
            pid: 99,
            request_model: Some("gpt-4o-mini-chunks3".into()),
            ..AgentRecord::default()
        });
        assert!(check(&calls, &mock, &other).ok());
    }

    #[test]
    fn the_report_says_pass_or_fail_and_lists_problems() {
        let (calls, mock, agent) = world();
        let mut report = SoakReport {
            duration_s: 60.0,
            verdict: check(&calls, &mock, &agent),
            losses: vec![("tokentap_bytes_lost_total".into(), 0.0)],
            samples: vec![Sample::default()],
            ..SoakReport::default()
        };
        let md = markdown(&report, "test machine", "cargo xtask soak");
        assert!(md.contains("**Result: PASS**"), "{md}");
        assert!(md.contains("| calls recorded exactly once, every field right | 3 of 3 |"));
        report.verdict = check(&calls, &mock, &agent[1..]);
        let md = markdown(&report, "test machine", "cargo xtask soak");
        assert!(
            md.contains("**Result: FAIL**") && md.contains("missing: 1"),
            "{md}"
        );
        report.verdict = check(&calls, &mock, &agent);
        report.losses[0].1 = 5.0;
        assert!(!report.ok());
    }

    #[test]
    fn soak_models_are_recognised() {
        assert!(is_soak_model("gpt-4o-mini-soak-chunks3"));
        assert!(!is_soak_model("gpt-4o-mini-chunks3"));
        assert!(!is_soak_model("soaking-2"));
    }

    #[test]
    fn rss_slope_and_bounds() {
        let samples: Vec<Sample> = (0..10u32)
            .map(|i| Sample {
                t_s: f64::from(i) * 6.0,
                rss_kib: 1000 + u64::from(i) * 10,
                ..Sample::default()
            })
            .collect();
        let r = rss_summary(&samples, 12.0);
        assert_eq!(r.samples, 8);
        assert_eq!((r.min_kib, r.max_kib), (1020, 1090));
        assert!((r.slope_kib_per_min - 100.0).abs() < 1e-6, "{r:?}");
    }
}
