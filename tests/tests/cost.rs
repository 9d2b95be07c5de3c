//! End-to-end: the real Python SDKs call the mock provider while `tokentap agent --pricing
//! FILE` runs, and `tokentap_cost_usd_total` must equal the SDKs' own token counts times the
//! file's prices, per token type; calls to a model without a price are counted in
//! `tokentap_cost_unpriced_total`, never as a zero cost.
//!
//! Needs root. Run with `cargo xtask test`.

use std::collections::BTreeMap;
use std::time::Duration;

use tokentap_tests::harness::{Agent, http_get, privileged_tests_enabled};
use tokentap_tests::mock_provider::MockProvider;
use tokentap_tests::prom;
use tokentap_tests::sdk::{SdkCall, run_sdk_client, sdk_python};

/// Round prices (USD per million) for the mock's response models, given undated so that the
/// agent's snapshot normalisation is part of what is tested. They override the embedded ones.
const PRICING: &str = r#"
[[model]]
provider = "openai"
model = "gpt-4o-mini"
input = 1.0
cache_read = 0.5
output = 2.0

[[model]]
provider = "anthropic"
model = "claude-sonnet-4-5"
input = 3.0
cache_read = 0.25
cache_write = 5.0
output = 4.0

[[model]]
provider = "gcp.gemini"
model = "gemini-2.5-flash"
input = 2.0
cache_read = 1.0
output = 8.0
"#;

/// (input, cache_read, cache_write, output) per million, by the mock's response model.
fn prices(response_model: &str) -> Option<(f64, f64, f64, f64)> {
    match response_model {
        "gpt-4o-mini-2024-07-18" => Some((1.0, 0.5, 1.0, 2.0)),
        "claude-sonnet-4-5-20250929" => Some((3.0, 0.25, 5.0, 4.0)),
        "gemini-2.5-flash-001" => Some((2.0, 1.0, 2.0, 8.0)),
        _ => None,
    }
}

/// USD by token type that a call must have added.
fn expected_cost(call: &SdkCall) -> Option<BTreeMap<&'static str, f64>> {
    let (input, cache_read, cache_write, output) = prices(call.response_model.as_deref()?)?;
    let t = call.tokens();
    let mut out = BTreeMap::new();
    if let Some(all_in) = t.input {
        let read = t.cache_read.unwrap_or(0);
        let write = t.cache_write.unwrap_or(0);
        out.insert("input", (all_in - read - write) as f64 * input * 1e-6);
        if let Some(read) = t.cache_read {
            out.insert("cache_read", read as f64 * cache_read * 1e-6);
        }
        if let Some(write) = t.cache_write {
            out.insert("cache_write", write as f64 * cache_write * 1e-6);
        }
    }
    if let Some(o) = t.output {
        // Reasoning tokens are part of the output and billed as output here.
        out.insert("output", o as f64 * output * 1e-6);
    }
    Some(out)
}

#[test]
fn cost_counters_equal_sdk_tokens_times_prices() {
    if !privileged_tests_enabled() {
        return;
    }
    let python = sdk_python().expect(
        "the SDK venv is missing: `cargo xtask setup` builds target/e2e-venv (or set TOKENTAP_SDK_PYTHON)",
    );
    let pricing =
        std::env::temp_dir().join(format!("tokentap-e2e-pricing-{}.toml", std::process::id()));
    std::fs::write(&pricing, PRICING).expect("write the pricing file");
    let mock = MockProvider::start().expect("start the mock provider");
    let agent = Agent::start(&[
        "agent",
        "--listen",
        "127.0.0.1:0",
        "--pricing",
        pricing.to_str().expect("utf-8 path"),
    ])
    .expect("start tokentap agent");
    let addr = agent
        .stderr()
        .lines()
        .find_map(|l| l.split("http://").nth(1))
        .map(|a| a.trim().to_owned())
        .expect("the agent logs its listen address");
    let scenarios = [
        "openai.chat",
        "anthropic.messages",
        "anthropic.messages.stream",
        "gemini.generate.stream",
        // `gpt-4o-mini-ka` has no price, and must not be priced as gpt-4o-mini.
        "openai.chat.keepalive",
        // No tokens: neither a cost nor unpriced.
        "openai.chat.429",
    ];
    let (report, _) = run_sdk_client(&python, &mock, &scenarios).expect("the SDK client runs");
    mock.wait_requests(report.calls.len(), Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(1));
    let (status, text) = http_get(&addr, "/metrics").expect("scrape /metrics");
    let _ = std::fs::remove_file(&pricing);
    assert_eq!(status, 200);
    let samples = prom::parse(&text).expect("/metrics is Prometheus text");
    let stopped = agent.stop();

    let sum = |name: &str, request_model: &str, token_type: Option<&str>| -> Option<f64> {
        let found: Vec<f64> = samples
            .iter()
            .filter(|s| {
                s.name == name
                    && s.label("gen_ai_request_model") == request_model
                    && token_type.is_none_or(|t| s.label("gen_ai_token_type") == t)
            })
            .map(|s| s.value)
            .collect();
        (!found.is_empty()).then(|| found.iter().sum())
    };

    let mut priced = 0;
    let mut unpriced: BTreeMap<String, f64> = BTreeMap::new();
    let mut expected: BTreeMap<(String, &str), f64> = BTreeMap::new();
    for call in &report.calls {
        let t = call.tokens();
        match expected_cost(call) {
            Some(parts) => {
                priced += 1;
                for (kind, usd) in parts {
                    *expected
                        .entry((call.request_model.clone(), kind))
                        .or_default() += usd;
                }
            }
            None if t.input.is_some() || t.output.is_some() => {
                *unpriced.entry(call.request_model.clone()).or_default() += 1.0;
            }
            None => {}
        }
    }
    assert!(priced >= 4, "priced calls: {priced}");
    assert!(!unpriced.is_empty(), "the keepalive scenario is unpriced");
    let mut problems = Vec::new();
    // Every cost series equals the agent's own token counts of that label set times the
    // prices (this holds whatever else runs on the node).
    let mut cost_series = 0;
    for s in samples
        .iter()
        .filter(|s| s.name == "tokentap_cost_usd_total")
    {
        cost_series += 1;
        let tokens_of = |kind: &str| -> f64 {
            let mut labels = s.labels.clone();
            labels.insert("gen_ai_token_type".into(), kind.into());
            samples
                .iter()
                .find(|t| t.name == "tokentap_tokens_total" && t.labels == labels)
                .map_or(0.0, |t| t.value)
        };
        let Some((input, cache_read, cache_write, output)) =
            prices(s.label("gen_ai_response_model"))
        else {
            problems.push(format!("{}: priced, but not by the file", s.series()));
            continue;
        };
        let want = match s.label("gen_ai_token_type") {
            "input" => {
                (tokens_of("input") - tokens_of("cache_read") - tokens_of("cache_write")) * input
            }
            "cache_read" => tokens_of("cache_read") * cache_read,
            "cache_write" => tokens_of("cache_write") * cache_write,
            "output" => tokens_of("output") * output,
            other => {
                problems.push(format!("{}: unexpected token type {other}", s.series()));
                continue;
            }
        } * 1e-6;
        if (s.value - want).abs() > 1e-9 {
            problems.push(format!(
                "{}: {} != tokens x prices {want}",
                s.series(),
                s.value
            ));
        }
    }
    // And equals the SDKs' ground truth, for every model whose calls the agent saw only from
    // this test (another test on the node may call the mock with the same model names).
    let calls_of = |model: &str| {
        report
            .calls
            .iter()
            .filter(|c| c.request_model == model)
            .count()
    };
    let mut compared = 0;
    for ((model, kind), usd) in &expected {
        let requests = sum("tokentap_requests_total", model, None).unwrap_or(0.0);
        if requests as usize != calls_of(model) {
            eprintln!(
                "{model}: {requests} requests seen for {} SDK calls (concurrent traffic); compared with the agent's tokens only",
                calls_of(model)
            );
            continue;
        }
        compared += 1;
        let got = sum("tokentap_cost_usd_total", model, Some(kind));
        if got.is_none_or(|g| (g - usd).abs() > 1e-9) {
            problems.push(format!(
                "{model} {kind}: /metrics {got:?}, SDK tokens x prices {usd}"
            ));
        }
    }
    for (model, n) in &unpriced {
        let got = sum("tokentap_cost_unpriced_total", model, None);
        let requests = sum("tokentap_requests_total", model, None).unwrap_or(0.0);
        if got.is_none_or(|g| g < *n || g != requests) {
            problems.push(format!(
                "{model}: unpriced {got:?}, expected {n} ({requests} requests seen)"
            ));
        }
        if sum("tokentap_cost_usd_total", model, None).is_some() {
            problems.push(format!("{model}: unpriced, yet it has a cost series"));
        }
    }
    for call in report.calls.iter().filter(|c| c.error_type.is_some()) {
        for name in ["tokentap_cost_usd_total", "tokentap_cost_unpriced_total"] {
            if sum(name, &call.request_model, None).is_some() {
                problems.push(format!(
                    "{}: a failed call without tokens in {name}",
                    call.request_model
                ));
            }
        }
    }
    assert!(
        !text.contains("tokentap_server_cost_usd_total{"),
        "client calls feed only the client family"
    );
    assert!(problems.is_empty(), "{}\n{text}", problems.join("\n"));
    assert!(
        text.contains("tokentap_pricing_reload_errors_total 0"),
        "{text}"
    );
    stopped.expect("the agent stops cleanly");
    assert!(cost_series >= expected.len(), "{text}");
    assert!(compared > 0, "no model was seen only from this test");
    eprintln!(
        "{cost_series} cost series equal tokens x prices; {compared} of {} equal the SDKs' ground truth; {} unpriced models counted",
        expected.len(),
        unpriced.len()
    );
}
