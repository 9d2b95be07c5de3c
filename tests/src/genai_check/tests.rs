//! The comparison against a synthetic exporter that does what the metrics contract says: it
//! passes when the exporter is right, and names the series when it is not.

use super::*;
use crate::prom;
use crate::sdk::SdkTokens;

/// How the synthetic agent differs from a correct one.
#[derive(Clone, Copy, Default)]
struct Faults {
    /// Seconds the agent's times are shorter than the client's (SDK overhead is invisible).
    skew: f64,
    /// Time to first chunk measured to the first byte instead of the first content chunk.
    ttfc_to_first_byte: bool,
    extra_output_token: bool,
    wrong_response_model: bool,
    executable: Option<&'static str>,
    status_500_for_200: bool,
}

#[derive(Default)]
struct Exporter {
    histograms: BTreeMap<(String, BTreeMap<String, String>), (u64, f64)>,
    counters: BTreeMap<(String, BTreeMap<String, String>), f64>,
}

impl Exporter {
    fn observe(&mut self, name: &str, labels: &BTreeMap<String, String>, v: f64) {
        let e = self
            .histograms
            .entry((name.to_owned(), labels.clone()))
            .or_default();
        e.0 += 1;
        e.1 += v;
    }

    fn add(&mut self, name: &str, labels: &BTreeMap<String, String>, v: f64) {
        *self
            .counters
            .entry((name.to_owned(), labels.clone()))
            .or_default() += v;
    }

    fn record(&mut self, c: &SdkCall, f: Faults) {
        let mut labels: BTreeMap<String, String> = [
            ("gen_ai_provider_name", c.provider.clone()),
            ("gen_ai_operation_name", c.operation.clone()),
            ("gen_ai_request_model", c.request_model.clone()),
            (
                "gen_ai_response_model",
                if f.wrong_response_model {
                    c.request_model.clone()
                } else {
                    c.response_model.clone().unwrap_or_default()
                },
            ),
            ("server_address", c.server_address.clone()),
            ("server_port", "443".to_owned()),
            ("error_type", c.error_type.clone().unwrap_or_default()),
            (
                "process_executable_name",
                f.executable.unwrap_or("python3.11").to_owned(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        self.observe(DURATION, &labels, c.duration_s - f.skew);
        if c.streaming {
            if let Some(t) = c.ttfc_s {
                let t = if f.ttfc_to_first_byte {
                    0.001
                } else {
                    t - f.skew
                };
                self.observe(TTFC, &labels, t);
            }
            for gap in &c.chunk_gaps_s {
                self.observe(TPOC, &labels, *gap);
            }
        }
        for (kind, n) in c.tokens().by_type() {
            let Some(mut n) = n else { continue };
            if kind == "output" && f.extra_output_token {
                n += 1;
            }
            let mut l = labels.clone();
            l.insert("gen_ai_token_type".to_owned(), kind.to_owned());
            if kind == "input" || kind == "output" {
                self.observe(TOKEN_USAGE, &l, n as f64);
            }
            self.add(TOKENS_TOTAL, &l, n as f64);
        }
        let status = match c.status {
            Some(200) if f.status_500_for_200 => "500".to_owned(),
            Some(s) => s.to_string(),
            None => String::new(),
        };
        labels.insert("http_response_status_code".to_owned(), status);
        self.add(REQUESTS_TOTAL, &labels, 1.0);
    }

    /// Prometheus text, label names sorted (as the prometheus crate prints them).
    fn render(&self) -> String {
        let fmt = |labels: &BTreeMap<String, String>, extra: &str| {
            let mut parts: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
                .collect();
            if !extra.is_empty() {
                parts.push(extra.to_owned());
            }
            format!("{{{}}}", parts.join(","))
        };
        let mut out =
            String::from("# HELP tokentap_up 1\n# TYPE tokentap_up gauge\ntokentap_up 1\n");
        for ((name, labels), (count, sum)) in &self.histograms {
            out.push_str(&format!("{name}_bucket{} 0\n", fmt(labels, "le=\"0.01\"")));
            out.push_str(&format!(
                "{name}_bucket{} {count}\n",
                fmt(labels, "le=\"+Inf\"")
            ));
            out.push_str(&format!("{name}_sum{} {sum}\n", fmt(labels, "")));
            out.push_str(&format!("{name}_count{} {count}\n", fmt(labels, "")));
        }
        for ((name, labels), v) in &self.counters {
            out.push_str(&format!("{name}{} {v}\n", fmt(labels, "")));
        }
        out
    }
}

#[expect(
    clippy::too_many_arguments,
    reason = "a table of calls reads best as positional rows"
)]
fn call(
    scenario: &str,
    provider: &str,
    model: &str,
    response_model: Option<&str>,
    streaming: bool,
    status: u16,
    error_type: Option<&str>,
    tokens: Option<SdkTokens>,
    ttfc: Option<f64>,
    gaps: &[f64],
    duration: f64,
) -> SdkCall {
    let (operation, api, host) = match provider {
        "openai" => ("chat", "openai.chat_completions", "api.openai.com"),
        "anthropic" => ("chat", "anthropic.messages", "api.anthropic.com"),
        _ => (
            "generate_content",
            "gcp.gemini.generate_content",
            "generativelanguage.googleapis.com",
        ),
    };
    SdkCall {
        scenario: scenario.to_owned(),
        timed: !scenario.ends_with(".warmup"),
        provider: provider.to_owned(),
        operation: operation.to_owned(),
        api: api.to_owned(),
        server_address: host.to_owned(),
        request_model: model.to_owned(),
        response_model: response_model.map(str::to_owned),
        streaming,
        is_async: false,
        status: Some(status),
        error_type: error_type.map(str::to_owned),
        error: None,
        tokens,
        chunks: u32::try_from(gaps.len() + usize::from(ttfc.is_some())).unwrap_or(0),
        ttfc_s: ttfc,
        duration_s: duration,
        chunk_gaps_s: gaps.to_vec(),
        t_start_mono_ns: 0,
        t_end_mono_ns: 0,
    }
}

fn tokens(input: u64, output: Option<u64>, cache_read: u64) -> Option<SdkTokens> {
    Some(SdkTokens {
        input: Some(input),
        output,
        cache_read: Some(cache_read),
        cache_write: None,
        reasoning: Some(0),
    })
}

fn calls() -> Vec<SdkCall> {
    vec![
        call(
            "chat.warmup",
            "openai",
            "gpt-4o-mini-warmup",
            Some("gpt-4o-mini-warmup-2024-08-06"),
            false,
            200,
            None,
            tokens(27, Some(5), 0),
            None,
            &[],
            0.9,
        ),
        call(
            "chat",
            "openai",
            "gpt-4o-mini-delay40",
            Some("gpt-4o-mini-2024-07-18"),
            false,
            200,
            None,
            tokens(27, Some(5), 0),
            None,
            &[],
            0.043,
        ),
        call(
            "ka",
            "openai",
            "gpt-4o-mini-ka",
            Some("gpt-4o-mini-ka-2024-08-06"),
            false,
            200,
            None,
            tokens(27, Some(2), 0),
            None,
            &[],
            0.023,
        ),
        call(
            "ka",
            "openai",
            "gpt-4o-mini-ka",
            Some("gpt-4o-mini-ka-2024-08-06"),
            false,
            200,
            None,
            tokens(27, Some(2), 0),
            None,
            &[],
            0.024,
        ),
        call(
            "stream",
            "openai",
            "gpt-4o-mini-chunks3-delay150-gap15",
            Some("gpt-4o-mini-2024-07-18"),
            true,
            200,
            None,
            tokens(27, Some(3), 0),
            Some(0.153),
            &[0.015, 0.016],
            0.187,
        ),
        call(
            "no_usage",
            "openai",
            "gpt-4o-mini-nousage",
            Some("gpt-4o-mini-nousage-2024-08-06"),
            true,
            200,
            None,
            None,
            Some(0.105),
            &[0.01],
            0.12,
        ),
        call(
            "429",
            "openai",
            "gpt-4o-mini-err429",
            None,
            false,
            429,
            Some("rate_limit_exceeded"),
            None,
            None,
            &[],
            0.002,
        ),
        call(
            "cut",
            "anthropic",
            "claude-sonnet-4-5-disconnect",
            Some("claude-sonnet-4-5-20250929"),
            true,
            200,
            Some("stream_interrupted"),
            Some(SdkTokens {
                input: Some(29),
                output: None,
                cache_read: Some(0),
                cache_write: Some(0),
                reasoning: None,
            }),
            Some(0.064),
            &[0.011],
            0.076,
        ),
        call(
            "gemini",
            "gcp.gemini",
            "gemini-2.5-flash-reason12",
            Some("gemini-2.5-flash-001"),
            true,
            200,
            None,
            Some(SdkTokens {
                input: Some(23),
                output: Some(17),
                cache_read: Some(8),
                cache_write: None,
                reasoning: Some(12),
            }),
            Some(0.142),
            &[0.015, 0.015, 0.016, 0.015],
            0.204,
        ),
    ]
}

/// What a correct agent would export for `calls` (their times taken as the agent's).
pub(crate) fn scrape_of(calls: &[SdkCall]) -> String {
    let mut exporter = Exporter::default();
    for c in calls {
        exporter.record(c, Faults::default());
    }
    exporter.render()
}

fn run(f: Faults) -> (Comparison, String) {
    let calls = calls();
    let mut exporter = Exporter::default();
    for c in &calls {
        exporter.record(c, f);
    }
    let text = exporter.render();
    let samples = prom::parse(&text).expect("synthetic scrape parses");
    let comparison = compare(&calls, &samples);
    let message = comparison.message(&text);
    (comparison, message)
}

#[test]
fn a_correct_exporter_passes() {
    let (c, message) = run(Faults::default());
    assert!(c.ok(), "{message}");
    assert_eq!(c.label_sets, 8);
    assert!(c.checked > 60, "{}", c.checked);
    // The SDK overhead the agent cannot see is tolerated.
    let (c, message) = run(Faults {
        skew: 0.004,
        ..Faults::default()
    });
    assert!(c.ok(), "{message}");
}

#[test]
fn a_wrong_token_count_names_the_series() {
    let (c, message) = run(Faults {
        extra_output_token: true,
        ..Faults::default()
    });
    assert!(!c.ok());
    assert!(
        message.contains(
            "tokentap_tokens_total{gen_ai_token_type=\"output\"}: output tokens: expected 5, got 6"
        ),
        "{message}"
    );
    assert!(
        message.contains("gen_ai_client_token_usage_sum{gen_ai_token_type=\"output\"}: output token sum: expected 4, got 6"),
        "two calls in the keep-alive label set: {message}"
    );
    // Only calls whose output the SDK saw are checked; the cut stream's is not.
    assert!(!message.contains("claude-sonnet-4-5-disconnect\",gen_ai_response_model=\"claude-sonnet-4-5-20250929\",server_address=\"api.anthropic.com\",server_port=\"443\"} (1 call"), "{message}");
}

#[test]
fn time_to_first_byte_is_not_time_to_first_chunk() {
    let (c, message) = run(Faults {
        ttfc_to_first_byte: true,
        ..Faults::default()
    });
    assert!(!c.ok());
    assert!(
        message.contains("gen_ai_client_operation_time_to_first_chunk_seconds_sum: time to first chunk: the client measured 0.1530 s, the agent says 0.0010 s"),
        "{message}"
    );
}

#[test]
fn times_outside_the_tolerance_fail_and_warmups_are_not_timed() {
    // 0.043 s with 20 ms + 10 %: 0.0243 s of slack.
    let (c, message) = run(Faults {
        skew: 0.026,
        ..Faults::default()
    });
    assert!(!c.ok());
    assert!(
        message.contains(
            "gen_ai_client_operation_duration_seconds_sum: duration: the client measured 0.0430 s"
        ),
        "{message}"
    );
    assert!(
        !message.contains("chat.warmup"),
        "warm-ups are not timed: {message}"
    );
}

#[test]
fn wrong_labels_show_up_twice() {
    let (c, message) = run(Faults {
        wrong_response_model: true,
        ..Faults::default()
    });
    assert!(!c.ok());
    assert!(
        message.contains("operations: expected 1, the series is missing"),
        "{message}"
    );
    assert!(
        message.contains("series in label sets that no SDK call has"),
        "{message}"
    );
    assert!(
        message.contains("gen_ai_response_model=\"gpt-4o-mini-delay40\""),
        "the agent's series are listed: {message}"
    );

    let (c, message) = run(Faults {
        executable: Some("node"),
        ..Faults::default()
    });
    assert!(!c.ok());
    assert!(
        message.contains("process_executable_name \"node\""),
        "{message}"
    );

    let (c, message) = run(Faults {
        status_500_for_200: true,
        ..Faults::default()
    });
    assert!(!c.ok());
    assert!(
        message.contains("tokentap_requests_total{http_response_status_code=\"500\"}: 1 with a status the SDK did not see"),
        "{message}"
    );
}

#[test]
fn an_agent_with_no_genai_series_says_so_first() {
    let calls = calls();
    let text = "tokentap_up 1\n";
    let samples = prom::parse(text).expect("parses");
    let c = compare(&calls, &samples);
    assert!(!c.ok());
    assert!(
        c.message(text)
            .starts_with("the agent exported no GenAI series for the provider hosts at all")
    );
    assert_eq!(c.failed.len(), c.label_sets);
}
