//! End-to-end: a real Prometheus server (Debian's package) scrapes a running agent every
//! second and evaluates deploy/prometheus/rules.yaml, while the real SDKs call the mock
//! provider. Then, through Prometheus's HTTP API: the token and call counts it stored equal
//! what the SDKs themselves saw, every rule evaluates without error and the SLI recording
//! rules have data, and every query of deploy/grafana/tokentap.json runs and returns data.
//!
//! Needs root (the agent loads eBPF programs). Bounded: about 40 s.

use std::{
    collections::BTreeMap,
    fs,
    time::{Duration, Instant},
};

use serde_json::Value;
use tokentap_tests::harness::{Agent, privileged_tests_enabled};
use tokentap_tests::mock_provider::MockProvider;
use tokentap_tests::prometheus::{PrometheusServer, dashboard_file, dashboard_queries, rules_file};
use tokentap_tests::sdk::{run_sdk_client, sdk_python};

/// Recording rules that must have data after one run of the SDK scenarios (the cost rule
/// needs priced models, the latency ones successful chat calls: the scenarios have both).
const SLI_RULES: [&str; 12] = [
    "tokentap:gen_ai_client_requests:rate5m",
    "tokentap:gen_ai_client_errors:ratio_rate5m",
    "tokentap:gen_ai_client_rate_limited:ratio_rate5m",
    "tokentap:gen_ai_client_client_errors:ratio_rate5m",
    "tokentap:gen_ai_client_operation_duration_seconds:p95_5m",
    "tokentap:gen_ai_client_operation_time_to_first_chunk_seconds:p95_5m",
    "tokentap:tokens:rate5m",
    "tokentap:tokens_in_out:rate5m",
    "tokentap:cost_usd_per_hour:rate5m",
    "tokentap:gen_ai_client_errors:ratio_rate1h",
    "tokentap:gen_ai_client_chat_slow:ratio_rate5m",
    "tokentap:gen_ai_client_requests:increase1h",
];

#[test]
fn prometheus_scrapes_the_agent_and_rules_and_dashboard_work() {
    if !privileged_tests_enabled() {
        return;
    }
    let started = Instant::now();
    let python = sdk_python().expect(
        "the SDK venv is missing: `cargo xtask setup` builds target/e2e-venv (or set TOKENTAP_SDK_PYTHON)",
    );
    let mock = MockProvider::start().expect("start the mock provider");
    let agent = Agent::start(&["agent", "--listen", "127.0.0.1:0"]).expect("start tokentap agent");
    let addr = agent
        .stderr()
        .lines()
        .find_map(|l| l.split("http://").nth(1))
        .map(|a| a.trim().to_owned())
        .expect("the agent logs its listen address");
    let prometheus =
        PrometheusServer::start(&addr, &rules_file()).expect("start Debian's prometheus");

    let (report, _) = run_sdk_client(&python, &mock, &[]).expect("the SDK client runs");
    // The label is the executable's file name (the report has its full path).
    let exe = report.executable.rsplit('/').next().unwrap_or_default();

    // Ground truth per requested model: calls, and tokens of each type where the SDK saw the
    // count in every call of that model (a stream without usage has none to compare).
    let mut calls: BTreeMap<&str, u64> = BTreeMap::new();
    let mut tokens: BTreeMap<(String, &str), Option<u64>> = BTreeMap::new();
    for c in &report.calls {
        *calls.entry(c.request_model.as_str()).or_default() += 1;
        for (kind, n) in c.tokens.unwrap_or_default().by_type() {
            let e = tokens
                .entry((c.request_model.clone(), kind))
                .or_insert(Some(0));
            *e = match (*e, n) {
                (Some(sum), Some(n)) => Some(sum + n),
                _ => None,
            };
        }
    }
    let requests_query = format!(
        "sum by (gen_ai_request_model) (tokentap_requests_total{{process_executable_name=\"{exe}\"}})"
    );
    // Wait until Prometheus has scraped the agent after the last call (1 s scrapes).
    let want_calls = report.calls.len() as f64;
    let deadline = Instant::now() + Duration::from_secs(30);
    let stored_calls = loop {
        let total: f64 = prometheus
            .query(&requests_query)
            .expect("query requests")
            .iter()
            .map(|(_, v)| v)
            .sum();
        if total >= want_calls || Instant::now() > deadline {
            break total;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(
        stored_calls,
        want_calls,
        "calls stored in Prometheus vs calls the SDKs made; by executable: {:?}",
        prometheus.query("sum by (process_executable_name) (tokentap_requests_total)")
    );

    let mut problems = Vec::new();
    let by_model: BTreeMap<String, f64> = prometheus
        .query(&requests_query)
        .expect("query requests")
        .into_iter()
        .map(|(l, v)| (label(&l, "gen_ai_request_model"), v))
        .collect();
    for (model, n) in &calls {
        if by_model.get(*model) != Some(&(*n as f64)) {
            problems.push(format!(
                "{model}: {n} calls, Prometheus has {:?}",
                by_model.get(*model)
            ));
        }
    }
    let stored_tokens: BTreeMap<(String, String), f64> = prometheus
        .query(&format!(
            "sum by (gen_ai_request_model, gen_ai_token_type) (tokentap_tokens_total{{process_executable_name=\"{exe}\"}})"
        ))
        .expect("query tokens")
        .into_iter()
        .map(|(l, v)| ((label(&l, "gen_ai_request_model"), label(&l, "gen_ai_token_type")), v))
        .collect();
    let mut compared = 0;
    for ((model, kind), sum) in &tokens {
        let Some(sum) = sum else { continue };
        let stored = stored_tokens.get(&(model.clone(), (*kind).to_owned()));
        // Zero-count token types are not exported (a counter is only created when it moves).
        if *sum == 0 && stored.is_none() {
            continue;
        }
        compared += 1;
        if stored != Some(&(*sum as f64)) {
            problems.push(format!(
                "{model} {kind} tokens: SDKs saw {sum}, Prometheus has {stored:?}"
            ));
        }
    }
    assert!(compared >= 20, "only {compared} token sums compared");

    // Rules: every group evaluated, every rule healthy.
    let rules = prometheus.api("rules").expect("GET /api/v1/rules");
    let mut rule_count = 0;
    for group in rules["groups"].as_array().into_iter().flatten() {
        for rule in group["rules"].as_array().into_iter().flatten() {
            rule_count += 1;
            let name = rule["name"].as_str().unwrap_or("?");
            if rule["health"] != "ok" {
                problems.push(format!(
                    "rule {name}: health {} {}",
                    rule["health"], rule["lastError"]
                ));
            }
            if rule["lastEvaluation"]
                .as_str()
                .is_none_or(|t| t.starts_with("0001"))
            {
                problems.push(format!("rule {name}: never evaluated"));
            }
        }
    }
    let rules_text = fs::read_to_string(rules_file()).expect("rules.yaml");
    let in_file = rules_text.matches("- record:").count() + rules_text.matches("- alert:").count();
    assert_eq!(
        rule_count, in_file,
        "Prometheus loaded every rule of rules.yaml"
    );
    // A rate needs two scrapes of a series, and the rules run once a second after that.
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline
        && !SLI_RULES
            .iter()
            .all(|r| prometheus.query(r).is_ok_and(|v| !v.is_empty()))
    {
        std::thread::sleep(Duration::from_millis(500));
    }
    for rule in SLI_RULES {
        match prometheus.query(rule) {
            Ok(v) if !v.is_empty() => {}
            Ok(_) => problems.push(format!("recording rule {rule}: no data")),
            Err(e) => problems.push(format!("recording rule {rule}: {e}")),
        }
    }

    // Dashboard: every query runs and returns data.
    let dashboard = fs::read_to_string(dashboard_file()).expect("the dashboard");
    let queries = dashboard_queries(&dashboard).expect("dashboard queries");
    for q in &queries {
        match prometheus.query(&q.expr) {
            Ok(v) if !v.is_empty() => {}
            Ok(_) => problems.push(format!(
                "dashboard panel {:?}: no data for {}",
                q.panel, q.expr
            )),
            Err(e) => problems.push(format!("dashboard panel {:?}: {e}", q.panel)),
        }
    }

    let stopped = agent.stop();
    drop(prometheus);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    stopped.expect("the agent stops cleanly");
    eprintln!(
        "{} calls, {compared} token sums, {rule_count} rules and {} dashboard queries checked in {:.1} s",
        report.calls.len(),
        queries.len(),
        started.elapsed().as_secs_f64()
    );
}

fn label(labels: &serde_json::Map<String, Value>, name: &str) -> String {
    labels
        .get(name)
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned()
}
