use std::{fs, path::PathBuf, time::Duration};

use prometheus::{Encoder, Registry, TextEncoder};

use super::*;
use crate::{
    exchanges::RecordEnricher,
    llm::{ExchangeRecord, RoleName, Tokens},
};

fn priced_as(provider: &str, model: &str) -> Option<String> {
    PriceTable::embedded()
        .lookup(provider, model)
        .map(|p| p.name.clone())
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

#[test]
fn embedded_table_covers_the_providers() {
    let t = PriceTable::embedded();
    assert!(t.len() >= 50, "{}", t.len());
    for (p, m) in [
        ("openai", "gpt-4o"),
        ("anthropic", "claude-sonnet-4-5"),
        ("gcp.gemini", "gemini-2.5-pro"),
        ("mistral_ai", "mistral-large-2512"),
        ("deepseek", "deepseek-chat"),
        ("groq", "llama-3.3-70b-versatile"),
        ("x_ai", "grok-4"),
    ] {
        assert_eq!(priced_as(p, m), Some(format!("{p}/{m}")));
    }
}

#[test]
fn dated_snapshots_and_qualifiers_normalise() {
    for (provider, model, want) in [
        ("openai", "gpt-4o-2024-08-06", "openai/gpt-4o"),
        ("openai", "GPT-4o-2024-11-20", "openai/gpt-4o"),
        ("openai", "gpt-4o-mini-2024-07-18", "openai/gpt-4o-mini"),
        ("openai", "gpt-4.1-mini-2025-04-14", "openai/gpt-4.1-mini"),
        ("openai", "o3-mini-2025-01-31", "openai/o3-mini"),
        ("openai", "gpt-5.1-2025-11-13", "openai/gpt-5.1"),
        ("openai", "gpt-3.5-turbo-0125", "openai/gpt-3.5-turbo"),
        (
            "anthropic",
            "claude-sonnet-4-5-20250929",
            "anthropic/claude-sonnet-4-5",
        ),
        (
            "anthropic",
            "claude-opus-4-1-20250805",
            "anthropic/claude-opus-4-1",
        ),
        (
            "anthropic",
            "claude-3-5-haiku-latest",
            "anthropic/claude-3-5-haiku",
        ),
        (
            "gcp.gemini",
            "models/gemini-2.5-flash",
            "gcp.gemini/gemini-2.5-flash",
        ),
        (
            "gcp.gemini",
            "gemini-2.0-flash-001",
            "gcp.gemini/gemini-2.0-flash",
        ),
        (
            "gcp.gemini",
            "gemini-2.5-flash-preview-05-20",
            "gcp.gemini/gemini-2.5-flash",
        ),
        (
            "mistral_ai",
            "mistral-large-latest",
            "mistral_ai/mistral-large",
        ),
        (
            "mistral_ai",
            "mistral-large-2512",
            "mistral_ai/mistral-large-2512",
        ),
        ("x_ai", "grok-4-0709", "x_ai/grok-4"),
        (
            "groq",
            "meta-llama/llama-4-scout-17b-16e-instruct",
            "groq/meta-llama/llama-4-scout-17b-16e-instruct",
        ),
    ] {
        assert_eq!(
            priced_as(provider, model).as_deref(),
            Some(want),
            "{provider} {model}"
        );
    }
}

#[test]
fn provider_aliases() {
    for (provider, model, want) in [
        ("azure.ai.openai", "gpt-4o-2024-11-20", "openai/gpt-4o"),
        (
            "gcp.vertex_ai",
            "gemini-2.5-pro",
            "gcp.gemini/gemini-2.5-pro",
        ),
        (
            "gcp.vertex_ai",
            "publishers/google/models/gemini-2.0-flash-001",
            "gcp.gemini/gemini-2.0-flash",
        ),
        (
            "gcp.vertex_ai",
            "claude-sonnet-4-5@20250929",
            "anthropic/claude-sonnet-4-5",
        ),
        (
            "aws.bedrock",
            "anthropic.claude-sonnet-4-5-20250929-v1:0",
            "anthropic/claude-sonnet-4-5",
        ),
        (
            "aws.bedrock",
            "us.anthropic.claude-haiku-4-5-20251001-v1:0",
            "anthropic/claude-haiku-4-5",
        ),
        // A gateway or a `--provider` name: the model family's list price.
        ("litellm", "gpt-4o", "openai/gpt-4o"),
        ("litellm", "openai/gpt-4o-mini", "openai/gpt-4o-mini"),
    ] {
        assert_eq!(
            priced_as(provider, model).as_deref(),
            Some(want),
            "{provider} {model}"
        );
    }
}

#[test]
fn never_a_wrong_family() {
    for (provider, model) in [
        // Unknown variants must not fall back onto a sibling with another price.
        ("openai", "gpt-4o-mini-ka-2024-08-06"),
        ("openai", "gpt-4o-audio-preview"),
        ("openai", "o3-deep-research"),
        ("openai", "gpt-5-codex"),
        ("anthropic", "claude-opus-4-6"),
        ("anthropic", "claude-sonnet-4-7-20260101"),
        ("gcp.gemini", "gemini-2.5-flash-image"),
        // A known provider never borrows another provider's prices.
        ("groq", "gpt-4o"),
        ("openai", "claude-sonnet-4-5"),
        ("vllm", "llama-3-70b"),
    ] {
        assert_eq!(priced_as(provider, model), None, "{provider} {model}");
    }
    assert_eq!(
        priced_as("openai", "gpt-4o-mini").as_deref(),
        Some("openai/gpt-4o-mini")
    );
    assert_eq!(
        priced_as("openai", "gpt-5-mini").as_deref(),
        Some("openai/gpt-5-mini")
    );
}

fn tokens(input: u64, output: u64) -> Tokens {
    Tokens {
        input: Some(input),
        output: Some(output),
        ..Tokens::default()
    }
}

fn cost(provider: &str, model: &str, t: &Tokens) -> crate::llm::Cost {
    PriceTable::embedded()
        .lookup(provider, model)
        .expect("priced")
        .cost(t)
        .expect("tokens known")
}

#[test]
fn openai_cached_input_and_reasoning_in_output() {
    // gpt-4o: input 2.5, cache_read 1.25, output 10 per million.
    let t = Tokens {
        cache_read: Some(400),
        reasoning: Some(50),
        ..tokens(1000, 200)
    };
    let c = cost("openai", "gpt-4o-2024-08-06", &t);
    assert!(close(c.input_usd, 600.0 * 2.5e-6), "{c:?}");
    assert!(close(c.cache_read_usd, 400.0 * 1.25e-6), "{c:?}");
    assert!(close(c.output_usd, 200.0 * 10e-6), "{c:?}");
    assert!(close(c.reasoning_usd, 0.0), "reasoning is billed as output");
    assert!(close(c.total_usd, 0.0015 + 0.0005 + 0.002), "{c:?}");
    assert_eq!(c.priced_as, "openai/gpt-4o");
}

#[test]
fn anthropic_cache_read_and_write() {
    // claude-sonnet-4-5: input 3, cache_read 0.3, cache_write 3.75, output 15.
    let t = Tokens {
        cache_read: Some(100),
        cache_write: Some(20),
        ..tokens(1120, 50)
    };
    let c = cost("anthropic", "claude-sonnet-4-5-20250929", &t);
    assert!(close(c.input_usd, 1000.0 * 3e-6), "{c:?}");
    assert!(close(c.cache_read_usd, 100.0 * 0.3e-6), "{c:?}");
    assert!(close(c.cache_write_usd, 20.0 * 3.75e-6), "{c:?}");
    assert!(close(c.output_usd, 50.0 * 15e-6), "{c:?}");
    assert!(close(c.total_usd, 0.003 + 0.00003 + 0.000075 + 0.00075));
}

#[test]
fn long_context_tiers() {
    let c = cost("anthropic", "claude-sonnet-4-5", &tokens(250_000, 1000));
    assert!(close(c.input_usd, 250_000.0 * 6e-6), "{c:?}");
    assert!(close(c.output_usd, 1000.0 * 22.5e-6), "{c:?}");
    // At the threshold: still the base prices ("above").
    let c = cost("gcp.gemini", "gemini-2.5-pro", &tokens(200_000, 1000));
    assert!(close(c.input_usd, 200_000.0 * 1.25e-6), "{c:?}");
    assert!(close(c.output_usd, 1000.0 * 10e-6), "{c:?}");
    let t = Tokens {
        cache_read: Some(1000),
        ..tokens(200_001, 10)
    };
    let c = cost("gcp.gemini", "gemini-2.5-pro", &t);
    assert!(close(c.input_usd, 199_001.0 * 2.5e-6), "{c:?}");
    assert!(close(c.cache_read_usd, 1000.0 * 0.25e-6), "{c:?}");
    assert!(close(c.output_usd, 10.0 * 15e-6), "{c:?}");
}

#[test]
fn missing_cache_price_falls_back_to_input() {
    // gemini-2.0-flash-lite has no cache-read price: cached tokens cost the input price.
    let t = Tokens {
        cache_read: Some(100),
        ..tokens(1000, 0)
    };
    let c = cost("gcp.gemini", "gemini-2.0-flash-lite", &t);
    assert!(close(c.input_usd, 900.0 * 0.075e-6));
    assert!(close(c.cache_read_usd, 100.0 * 0.075e-6));
}

#[test]
fn unknown_tokens_cost_nothing_not_zero() {
    let price = PriceTable::embedded();
    let price = price.lookup("openai", "gpt-4o").expect("priced");
    assert_eq!(price.cost(&Tokens::default()), None);
    // Embeddings: input only.
    let c = price
        .cost(&Tokens {
            input: Some(1000),
            ..Tokens::default()
        })
        .expect("input known");
    assert!(close(c.total_usd, 0.0025) && close(c.output_usd, 0.0));
}

#[test]
fn reasoning_priced_separately_is_split_from_output() {
    let t = PriceTable::parse(
        "[[model]]\nprovider = \"p\"\nmodel = \"m\"\ninput = 1\noutput = 4\nreasoning = 8\n",
    )
    .expect("valid");
    let c = t
        .lookup("p", "m")
        .expect("priced")
        .cost(&Tokens {
            reasoning: Some(40),
            ..tokens(10, 100)
        })
        .expect("known");
    assert!(close(c.output_usd, 60.0 * 4e-6), "{c:?}");
    assert!(close(c.reasoning_usd, 40.0 * 8e-6), "{c:?}");
}

#[test]
fn gpu_hours_become_token_prices() {
    let t = PriceTable::parse(
        "[[model]]\nprovider = \"vllm\"\nmodel = \"llama-3-70b\"\ngpu_hour_usd = 2.0\ntokens_per_hour = 4000000\n",
    )
    .expect("valid");
    let p = t.lookup("vllm", "llama-3-70b").expect("priced");
    assert!(
        close(p.base.input, 0.5) && close(p.base.output, 0.5),
        "{p:?}"
    );
}

#[test]
fn bad_files_say_why() {
    for (text, says) in [
        (
            "[[model]]\nprovider = \"p\"\nmodel = \"m\"\ninput = -1\n",
            "non-negative",
        ),
        (
            "[[model]]\nprovider = \"p\"\nmodel = \"m\"\n",
            "needs `input`",
        ),
        (
            "[[model]]\nprovider = \"p\"\nmodel = \"m\"\ninptu = 1\n",
            "inptu",
        ),
        (
            "[[model]]\nprovider = \"p\"\nmodel = \"m\"\ninput = 1\n[[model]]\nprovider = \"p\"\nmodel = \"M\"\ninput = 2\n",
            "twice",
        ),
        (
            "[[model]]\nprovider = \"p\"\nmodel = \"m\"\ngpu_hour_usd = 1\n",
            "together",
        ),
        ("not toml", "line 1"),
    ] {
        let err = PriceTable::parse(text).expect_err(text).to_string();
        assert!(err.contains(says), "{text}: {err}");
    }
}

struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "tokentap-pricing-{}-{name}.toml",
            std::process::id()
        ));
        Self(path)
    }

    /// Writes `text` with a modification time of `secs` after the epoch, so that a rewrite is
    /// seen as a change however coarse the file system's clock is.
    fn write(&self, text: &str, secs: u64) {
        fs::write(&self.0, text).expect("write");
        let f = fs::File::options().write(true).open(&self.0).expect("open");
        f.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(secs))
            .expect("set mtime");
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

fn record(provider: &str, request: &str, response: Option<&str>, t: Tokens) -> ExchangeRecord {
    ExchangeRecord {
        provider: provider.into(),
        operation: "chat".into(),
        request_model: Some(request.into()),
        response_model: response.map(Into::into),
        role: Some(RoleName::Client),
        server_address: "api.example.com".into(),
        server_port: 443,
        http_status: Some(200),
        tokens: t,
        executable: "python3".into(),
        ..ExchangeRecord::default()
    }
}

#[test]
fn overrides_extend_replace_and_reload() {
    let file = TempFile::new("reload");
    file.write(
        "[[model]]\nprovider = \"openai\"\nmodel = \"gpt-4o\"\ninput = 1\noutput = 2\n\
         [[model]]\nprovider = \"vllm\"\nmodel = \"llama-3-70b\"\ngpu_hour_usd = 3\ntokens_per_hour = 1000000\n",
        1_000_000,
    );
    let registry = Registry::new();
    let mut pricer = Pricer::new(Some(&file.0), &registry)
        .expect("valid file")
        .with_check_interval(Duration::ZERO);
    let mut r = record(
        "openai",
        "gpt-4o",
        Some("gpt-4o-2024-08-06"),
        tokens(1000, 100),
    );
    pricer.enrich(&mut r);
    let c = r.cost.clone().expect("priced");
    assert!(close(c.total_usd, 1000.0 * 1e-6 + 100.0 * 2e-6), "{c:?}");
    let mut v = record("vllm", "llama-3-70b", None, tokens(1000, 1000));
    pricer.enrich(&mut v);
    assert!(close(
        v.cost.clone().expect("priced").total_usd,
        2000.0 * 3e-6
    ));
    // Other embedded prices stay.
    let mut m = record("openai", "gpt-4o-mini", None, tokens(1_000_000, 0));
    pricer.enrich(&mut m);
    assert!(close(m.cost.expect("priced").input_usd, 0.15));

    file.write(
        "[[model]]\nprovider = \"openai\"\nmodel = \"gpt-4o\"\ninput = 5\noutput = 7\n",
        2_000_000,
    );
    pricer.enrich(&mut r);
    let c = r.cost.clone().expect("priced");
    assert!(close(c.total_usd, 1000.0 * 5e-6 + 100.0 * 7e-6), "{c:?}");
    pricer.enrich(&mut v);
    assert_eq!(v.cost, None, "an entry removed from the file is gone");

    // A bad file keeps the previous table, and is counted once.
    file.write("[[model]]\nprovider = \"openai\"\n", 3_000_000);
    pricer.enrich(&mut r);
    pricer.enrich(&mut r);
    assert!(close(
        r.cost.clone().expect("priced").total_usd,
        c.total_usd
    ));
    assert!(scrape(&registry).contains("tokentap_pricing_reload_errors_total 1"));
}

#[test]
fn a_bad_file_at_start_is_an_error() {
    let file = TempFile::new("bad");
    file.write("[[model]]\nprovider = 1\n", 1);
    let err = Pricer::new(Some(&file.0), &Registry::new())
        .err()
        .expect("refused")
        .to_string();
    assert!(!err.is_empty());
    assert!(
        Pricer::new(
            Some(&PathBuf::from("/nonexistent/prices.toml")),
            &Registry::new()
        )
        .is_err()
    );
}

#[test]
fn response_model_first_then_request_model() {
    let pricer = Pricer::new(None, &Registry::new()).expect("embedded");
    let r = record(
        "openai",
        "gpt-4o",
        Some("gpt-4o-mini-2024-07-18"),
        tokens(1_000_000, 0),
    );
    let c = pricer.price(&r).expect("priced");
    assert_eq!(c.priced_as, "openai/gpt-4o-mini");
    let r = record("openai", "gpt-4o", None, tokens(1_000_000, 0));
    assert_eq!(pricer.price(&r).expect("priced").priced_as, "openai/gpt-4o");
    let r = record(
        "openai",
        "my-alias",
        Some("gpt-4o-mini-2024-07-18"),
        tokens(1, 1),
    );
    assert!(pricer.price(&r).is_some());
}

fn scrape(registry: &Registry) -> String {
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut out)
        .expect("encode");
    String::from_utf8(out).expect("utf8")
}

#[test]
fn metrics_names_and_labels() {
    let registry = Registry::new();
    let pricer = Pricer::new(None, &registry).expect("embedded");
    let mut m = CostMetrics::new(&registry, 10);
    let mut r = record(
        "openai",
        "gpt-4o",
        Some("gpt-4o-2024-08-06"),
        Tokens {
            cache_read: Some(400_000),
            ..tokens(1_000_000, 100_000)
        },
    );
    r.cost = pricer.price(&r);
    m.record(&r);
    let mut server = r.clone();
    server.role = Some(RoleName::Server);
    m.record(&server);
    let mut unpriced = record("openai", "gpt-9", Some("gpt-9-2027-01-01"), tokens(10, 10));
    unpriced.cost = pricer.price(&unpriced);
    m.record(&unpriced);
    let mut failed = record("openai", "gpt-9", None, Tokens::default());
    failed.http_status = Some(429);
    m.record(&failed);
    let text = scrape(&registry);
    let labels = "error_type=\"\",gen_ai_operation_name=\"chat\",gen_ai_provider_name=\"openai\",gen_ai_request_model=\"gpt-4o\",gen_ai_response_model=\"gpt-4o-2024-08-06\"";
    let tail = ",k8s_container_name=\"\",k8s_namespace_name=\"\",k8s_pod_name=\"\",k8s_workload_kind=\"\",k8s_workload_name=\"\",process_executable_name=\"python3\",server_address=\"api.example.com\",server_port=\"443\",service_name=\"\"";
    for (kind, usd) in [("input", "1.5"), ("cache_read", "0.5"), ("output", "1")] {
        let line =
            format!("tokentap_cost_usd_total{{{labels},gen_ai_token_type=\"{kind}\"{tail}}} {usd}");
        assert!(text.contains(&line), "missing {line}\n{text}");
        assert!(text.contains(&line.replace("tokentap_cost", "tokentap_server_cost")));
    }
    assert!(
        !text.contains("gen_ai_token_type=\"reasoning\""),
        "not priced apart"
    );
    assert!(
        !text.contains("gen_ai_token_type=\"cache_write\""),
        "unknown count"
    );
    assert!(
        text.contains("tokentap_cost_unpriced_total{gen_ai_provider_name=\"openai\",gen_ai_request_model=\"gpt-9\",gen_ai_response_model=\"gpt-9-2027-01-01\"} 1"),
        "{text}"
    );
    assert!(
        !text.contains("gen_ai_response_model=\"\"} "),
        "a call without tokens is not unpriced\n{text}"
    );
}

#[test]
fn metrics_label_sets_are_capped() {
    let registry = Registry::new();
    let mut m = CostMetrics::new(&registry, 2);
    for i in 0..20 {
        let r = record("openai", &format!("model-{i}"), None, tokens(1, 1));
        m.record(&r);
    }
    let text = scrape(&registry);
    assert!(text.contains("gen_ai_request_model=\"_OTHER\""), "{text}");
    assert_eq!(
        text.matches("tokentap_cost_unpriced_total{").count(),
        3,
        "{text}"
    );
}
