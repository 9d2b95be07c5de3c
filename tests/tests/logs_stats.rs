//! End-to-end: `tokentap agent --log-exchanges FILE`, without and with `--capture-content`,
//! while the real SDKs call the mock provider. The log must hold one JSON line per call with
//! the SDK's models and tokens, content only with the switch (the scenario's prompt and the
//! mock's answer), no API key in any line either way, `rate_limited` on the 429; and
//! `/v1/stats` must count the calls per provider and model.
//!
//! Needs root. Run with `cargo xtask test`.

use std::{path::PathBuf, time::Duration};

use serde_json::Value;
use tokentap_tests::harness::{Agent, http_get, privileged_tests_enabled};
use tokentap_tests::mock_provider::MockProvider;
use tokentap_tests::sdk::{SdkReport, run_sdk_client, sdk_python};

/// The key `sdk_client.py` gives every SDK.
const SDK_API_KEY: &str = "sk-tokentap-test-not-a-real-key";
/// Shared by the OpenAI and Anthropic scenarios' user messages.
const USER_TEXT: &str = "Say hello to the eBPF agent that is watching this call";
/// The mock's answer, one word per output token.
const MOCK_WORDS: [&str; 12] = [
    "Hello",
    " from",
    " the",
    " tokentap",
    " mock",
    " provider,",
    " one",
    " token",
    " per",
    " chunk",
    " and",
    " more.",
];
const SCENARIOS: [&str; 4] = [
    "openai.chat",
    "openai.chat.stream",
    "anthropic.messages",
    "openai.chat.429",
];

struct Run {
    report: SdkReport,
    /// The whole log file.
    log: String,
    /// Its records of the SDK client's calls.
    records: Vec<Value>,
    /// The log as it was just before `/v1/stats` was read (other processes on the host may
    /// call the mock's models too: the feed counts every process).
    log_before_stats: String,
    stats: Value,
    agent_log: String,
}

fn run(capture_content: bool, name: &str) -> Run {
    let python = sdk_python().expect(
        "the SDK venv is missing: `cargo xtask setup` builds target/e2e-venv (or set TOKENTAP_SDK_PYTHON)",
    );
    let dir = std::env::temp_dir().join(format!("tokentap-logs-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let log_path: PathBuf = dir.join("exchanges.jsonl");
    let log_arg = log_path.to_string_lossy().into_owned();
    let mut args = vec![
        "agent",
        "--listen",
        "127.0.0.1:0",
        "--log-exchanges",
        &log_arg,
    ];
    if capture_content {
        args.push("--capture-content");
    }
    let mock = MockProvider::start().expect("start the mock provider");
    let agent = Agent::start(&args).expect("start tokentap agent");
    let addr = agent
        .stderr()
        .lines()
        .find_map(|l| l.split("http://").nth(1))
        .map(|a| a.trim().to_owned())
        .expect("the agent logs its listen address");
    let (report, _) = run_sdk_client(&python, &mock, &SCENARIOS).expect("the SDK client runs");
    // Records of finished calls are written within the agent's 20 ms poll.
    std::thread::sleep(Duration::from_millis(500));
    let log_before_stats = std::fs::read_to_string(&log_path).expect("the exchange log exists");
    let (status, body) = http_get(&addr, "/v1/stats?window=5m").expect("GET /v1/stats");
    assert_eq!(status, 200, "{body}");
    let stats: Value = serde_json::from_str(&body).expect("/v1/stats is JSON");
    let (status, _) = http_get(&addr, "/v1/stats?window=2d").expect("GET /v1/stats");
    assert_eq!(status, 400, "a bad window is refused");
    let agent_log = agent.stderr();
    agent.stop().expect("the agent stops cleanly");
    let log = std::fs::read_to_string(&log_path).expect("the exchange log exists");
    let records = log
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("every log line is JSON"))
        .filter(|r| r["pid"].as_u64() == Some(u64::from(report.pid)))
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    Run {
        report,
        log,
        records,
        log_before_stats,
        stats,
        agent_log,
    }
}

/// Log lines (of any process) with this provider and request model.
fn lines_of(log: &str, provider: &str, model: &str) -> u64 {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| {
            r["provider"].as_str() == Some(provider) && r["request_model"].as_str() == Some(model)
        })
        .count() as u64
}

fn check(run: &Run, capture_content: bool) {
    let Run {
        report,
        log,
        records,
        log_before_stats,
        stats,
        agent_log,
    } = run;
    assert!(!log.contains(SDK_API_KEY), "an API key leaked into the log");
    assert!(
        !agent_log.contains(SDK_API_KEY),
        "an API key leaked into the agent's stderr"
    );
    assert_eq!(
        records.len(),
        report.calls.len(),
        "one log line per call:\n{log}"
    );
    for call in &report.calls {
        let found: Vec<&Value> = records
            .iter()
            .filter(|r| r["request_model"].as_str() == Some(call.request_model.as_str()))
            .collect();
        assert_eq!(found.len(), 1, "one line for {}", call.request_model);
        let r = found[0];
        assert_eq!(r["provider"].as_str(), Some(call.provider.as_str()), "{r}");
        assert_eq!(
            r["response_model"].as_str(),
            call.response_model.as_deref(),
            "{r}"
        );
        assert_eq!(r["http_status"].as_u64(), call.status.map(u64::from), "{r}");
        if let Some(t) = call.tokens {
            assert_eq!(r["tokens"]["input"].as_u64(), t.input, "{r}");
            assert_eq!(r["tokens"]["output"].as_u64(), t.output, "{r}");
        }
        let anomalies: Vec<&str> = r["anomalies"]
            .as_array()
            .expect("anomalies")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        if call.status == Some(429) {
            assert_eq!(anomalies, ["rate_limited"], "{r}");
        } else {
            assert!(anomalies.is_empty(), "{r}");
        }
        if !capture_content {
            assert!(r["content"].is_null(), "no content without the switch: {r}");
            continue;
        }
        let content = &r["content"];
        let prompt = content["prompt"].as_str().expect("a prompt");
        assert!(prompt.contains(USER_TEXT), "{prompt}");
        assert!(
            prompt.starts_with("system: ") || prompt.starts_with("user: "),
            "{prompt}"
        );
        if call.status == Some(200) {
            let words = call
                .tokens
                .and_then(|t| t.output)
                .expect("successful calls report output tokens");
            let want: String = MOCK_WORDS
                .iter()
                .cycle()
                .take(usize::try_from(words).expect("small"))
                .copied()
                .collect();
            assert_eq!(content["completion"].as_str(), Some(want.as_str()), "{r}");
        }
        assert_eq!(content["truncated"].as_bool(), Some(false), "{r}");
    }

    // /v1/stats: one entry per scenario model (each has its own), counting its calls: ours,
    // and any other process's on this host that the log saw too.
    let models = stats["models"].as_array().expect("models");
    assert_eq!(stats["window_s"].as_f64(), Some(300.0));
    for call in &report.calls {
        let m = models
            .iter()
            .find(|m| m["model"].as_str() == Some(call.request_model.as_str()))
            .unwrap_or_else(|| panic!("{} in /v1/stats: {stats}", call.request_model));
        assert_eq!(m["provider"].as_str(), Some(call.provider.as_str()), "{m}");
        let requests = m["requests"].as_u64().expect("requests");
        let (low, high) = (
            lines_of(log_before_stats, &call.provider, &call.request_model),
            lines_of(log, &call.provider, &call.request_model),
        );
        assert!(
            low >= 1 && (low..=high).contains(&requests),
            "{requests} requests, the log had {low}..={high}: {m}"
        );
        let limited = if call.status == Some(429) { 1.0 } else { 0.0 };
        assert_eq!(m["rate_limited_ratio"].as_f64(), Some(limited), "{m}");
        assert_eq!(m["error_ratio"].as_f64(), Some(limited), "{m}");
        assert!(
            m["duration_s"]["p50"].as_f64().is_some_and(|d| d > 0.0),
            "{m}"
        );
        if call.streaming && call.status == Some(200) {
            assert!(m["time_to_first_chunk_s"]["p95"].as_f64().is_some(), "{m}");
            assert!(m["output_tokens_per_s"].as_f64().is_some(), "{m}");
        }
    }
}

#[test]
fn exchange_log_without_content() {
    if !privileged_tests_enabled() {
        return;
    }
    let run = run(false, "off");
    check(&run, false);
}

#[test]
fn exchange_log_with_content() {
    if !privileged_tests_enabled() {
        return;
    }
    let run = run(true, "on");
    check(&run, true);
}
