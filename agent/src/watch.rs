//! `tokentap watch`: one line per finished LLM call, for a person at a terminal (or, with
//! `--json`, the full exchange record as a JSON line).

use std::io::Write;

use crate::{clock::rfc3339_nanos, exchanges::RecordSink, llm::ExchangeRecord};

pub struct WatchSink<W: Write + Send> {
    out: W,
    json: bool,
    /// Lines that could not be written.
    pub write_errors: u64,
}

impl<W: Write + Send> WatchSink<W> {
    pub fn new(out: W, json: bool) -> Self {
        Self {
            out,
            json,
            write_errors: 0,
        }
    }
}

fn tokens(n: Option<u64>, estimated: bool) -> String {
    match n {
        Some(n) if estimated => format!("~{n}"),
        Some(n) => n.to_string(),
        None => "?".into(),
    }
}

/// `$0.00123`; `$?` when the call had tokens but its model has no price; `$-` when there was
/// nothing to price.
fn cost(r: &ExchangeRecord) -> String {
    match &r.cost {
        Some(c) if c.estimated => format!("~${:.5}", c.total_usd),
        Some(c) => format!("${:.5}", c.total_usd),
        None if r.tokens.input.is_some() || r.tokens.output.is_some() => "$?".into(),
        None => "$-".into(),
    }
}

fn seconds(s: Option<f64>) -> String {
    s.map(|s| format!("{s:.3}s")).unwrap_or_else(|| "-".into())
}

/// The human line for a record. Values from traffic (models, provider, error type) and the
/// executable name are sanitised: a hostile server must not be able to send terminal escape
/// sequences to the person reading.
pub fn watch_line(r: &ExchangeRecord) -> String {
    let clean = crate::metrics::cardinality::sanitize_label_value;
    // Millisecond precision is plenty for people.
    let time = rfc3339_nanos(r.start_unix_ns);
    let time = format!("{}Z", time.get(..23).unwrap_or(&time));
    let model = match (&r.request_model, &r.response_model) {
        (Some(req), Some(resp)) if req != resp => format!("{}→{}", clean(req), clean(resp)),
        (_, Some(m)) | (Some(m), None) => clean(m),
        (None, None) => "?".into(),
    };
    let status = match (r.http_status, &r.error_type) {
        (Some(s), Some(e)) if e != &s.to_string() => format!("{s} {}", clean(e)),
        (Some(s), _) => s.to_string(),
        (None, Some(e)) => clean(e),
        (None, None) => "-".into(),
    };
    // Where the call came from: the pod and container on Kubernetes, the service when it is
    // not just the executable's name.
    let mut origin = String::new();
    if let Some(k8s) = &r.k8s {
        origin = format!(
            " {}/{}:{}",
            clean(&k8s.namespace),
            clean(&k8s.pod),
            clean(&k8s.container)
        );
    }
    if !r.service_name.is_empty() && r.service_name != r.executable {
        origin.push_str(&format!(" ({})", clean(&r.service_name)));
    }
    format!(
        "{time} {exe}[{pid}]{origin} {provider} {op} {model}{stream} in={inp} out={out} {cost} ttfc={ttfc} dur={dur} {status}",
        exe = clean(&r.executable),
        pid = r.pid,
        provider = clean(&r.provider),
        op = clean(&r.operation),
        stream = if r.streaming { " stream" } else { "" },
        inp = tokens(r.tokens.input, r.tokens.estimated),
        out = tokens(r.tokens.output, r.tokens.estimated),
        cost = cost(r),
        ttfc = seconds(r.time_to_first_chunk_s),
        dur = seconds(r.duration_s),
    )
}

impl<W: Write + Send> RecordSink for WatchSink<W> {
    fn record(&mut self, record: &ExchangeRecord) {
        let ok = if self.json {
            serde_json::to_writer(&mut self.out, record).is_ok()
                && self.out.write_all(b"\n").is_ok()
        } else {
            writeln!(self.out, "{}", watch_line(record)).is_ok()
        };
        if !ok || self.out.flush().is_err() {
            self.write_errors += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::{Cost, Tokens};

    #[test]
    fn a_line_says_what_a_person_asks() {
        let r = ExchangeRecord {
            provider: "openai".into(),
            operation: "chat".into(),
            request_model: Some("gpt-4o".into()),
            response_model: Some("gpt-4o-2024-08-06".into()),
            streaming: true,
            http_status: Some(200),
            tokens: Tokens {
                input: Some(1200),
                output: Some(34),
                ..Tokens::default()
            },
            time_to_first_chunk_s: Some(0.4123),
            duration_s: Some(1.83),
            start_unix_ns: 1_795_825_008_500_000_000,
            pid: 4242,
            executable: "python3.11".into(),
            ..ExchangeRecord::default()
        };
        assert_eq!(
            watch_line(&r),
            "2026-11-28T00:16:48.500Z python3.11[4242] openai chat gpt-4o→gpt-4o-2024-08-06 stream in=1200 out=34 $? ttfc=0.412s dur=1.830s 200"
        );
        let mut priced = r.clone();
        priced.cost = Some(Cost {
            total_usd: 0.00334,
            ..Cost::default()
        });
        assert!(
            watch_line(&priced).contains(" in=1200 out=34 $0.00334 ttfc="),
            "{}",
            watch_line(&priced)
        );
        let mut e = r.clone();
        e.http_status = Some(429);
        e.error_type = Some("rate_limit_exceeded".into());
        e.tokens = Tokens::default();
        assert!(
            watch_line(&e)
                .ends_with("in=? out=? $- ttfc=0.412s dur=1.830s 429 rate_limit_exceeded")
        );
        let mut pod = r.clone();
        pod.service_name = "checkout".into();
        pod.k8s = Some(crate::llm::K8sWorkload {
            namespace: "shop".into(),
            pod: "checkout-7d9f8c6b5-x2x4q".into(),
            container: "app".into(),
            workload_name: "checkout".into(),
            workload_kind: "Deployment".into(),
        });
        assert!(
            watch_line(&pod).contains(
                " python3.11[4242] shop/checkout-7d9f8c6b5-x2x4q:app (checkout) openai chat "
            ),
            "{}",
            watch_line(&pod)
        );
    }
}
