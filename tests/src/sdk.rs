//! Running `clients/sdk_client.py` (the real Python SDKs) against the [`MockProvider`], and
//! its report: the ground truth of every call, as the SDKs parsed it.
//!
//! [`MockProvider`]: crate::mock_provider::MockProvider

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, bail};
use serde::Deserialize;

use crate::mock_provider::{H2MockProvider, MockProvider, RequestRecord, Tokens};

/// The Python of the SDK venv: `TOKENTAP_SDK_PYTHON` (set by `cargo xtask test`), else
/// `target/e2e-venv/bin/python` when `cargo xtask setup` has built it.
pub fn sdk_python() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TOKENTAP_SDK_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/e2e-venv/bin/python");
    venv.exists().then_some(venv)
}

/// The Python whose OpenSSL is linked statically into its `_ssl` module, with the SDKs
/// (xtask/src/static_python.rs says how it is made): `TOKENTAP_STATIC_PYTHON` (set by `cargo
/// xtask test`), else `target/static-python/venv/bin/python` when `cargo xtask setup` has built it.
pub fn static_openssl_python() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TOKENTAP_STATIC_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let venv =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/static-python/venv/bin/python");
    venv.exists().then_some(venv)
}

pub fn sdk_client_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/sdk_client.py")
}

/// Token counts in the metrics' terms; `None`: the SDK saw no such count.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct SdkTokens {
    pub input: Option<u64>,
    pub output: Option<u64>,
    pub cache_read: Option<u64>,
    pub cache_write: Option<u64>,
    pub reasoning: Option<u64>,
}

impl SdkTokens {
    /// `(metric token type, count)` for every type.
    pub fn by_type(&self) -> [(&'static str, Option<u64>); 5] {
        [
            ("input", self.input),
            ("output", self.output),
            ("cache_read", self.cache_read),
            ("cache_write", self.cache_write),
            ("reasoning", self.reasoning),
        ]
    }
}

/// One SDK call, as the SDK saw it (see the docstring of sdk_client.py).
#[derive(Clone, Debug, Deserialize)]
pub struct SdkCall {
    pub scenario: String,
    pub timed: bool,
    pub provider: String,
    pub operation: String,
    pub api: String,
    pub server_address: String,
    pub request_model: String,
    pub response_model: Option<String>,
    pub streaming: bool,
    #[serde(rename = "async")]
    pub is_async: bool,
    pub status: Option<u16>,
    pub error_type: Option<String>,
    pub error: Option<String>,
    pub tokens: Option<SdkTokens>,
    pub chunks: u32,
    pub ttfc_s: Option<f64>,
    pub duration_s: f64,
    pub chunk_gaps_s: Vec<f64>,
    pub t_start_mono_ns: u64,
    pub t_end_mono_ns: u64,
}

impl SdkCall {
    pub fn tokens(&self) -> SdkTokens {
        self.tokens.unwrap_or_default()
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct SdkReport {
    pub pid: u32,
    pub executable: String,
    pub comm: String,
    pub python: String,
    pub openssl: String,
    pub libssl_mapped: Vec<String>,
    pub sdk_versions: serde_json::Map<String, serde_json::Value>,
    pub setup_s: f64,
    pub calls_s: f64,
    pub calls: Vec<SdkCall>,
    pub problems: Vec<String>,
}

/// Runs sdk_client.py (all scenarios, or `only`) against `mock` with `python`; fails when the
/// client fails or says a call did not end as its scenario demands.
pub fn run_sdk_client(
    python: &Path,
    mock: &MockProvider,
    only: &[&str],
) -> anyhow::Result<(SdkReport, f64)> {
    run_sdk_client_in(python, mock, only, None)
}

/// [`run_sdk_client`], with the client first moved into the cgroup (v2) whose
/// `cgroup.procs` is given: a shell writes its own pid there, then becomes the client.
pub fn run_sdk_client_in(
    python: &Path,
    mock: &MockProvider,
    only: &[&str],
    cgroup_procs: Option<&Path>,
) -> anyhow::Result<(SdkReport, f64)> {
    let mut args = vec![];
    let joined = only.join(",");
    if !only.is_empty() {
        args = vec!["--only", joined.as_str()];
    }
    run_client_script(
        python,
        &sdk_client_script(),
        mock.port(),
        mock.ca_file(),
        &args,
        cgroup_procs,
    )
}

/// Runs h2_sdk_client.py (the openai SDK over HTTP/2) against the HTTP/2 mock.
pub fn run_h2_sdk_client(python: &Path, mock: &H2MockProvider) -> anyhow::Result<(SdkReport, f64)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/h2_sdk_client.py");
    run_client_script(python, &script, mock.port(), mock.ca_file(), &[], None)
}

/// Runs a client script that prints an [`SdkReport`]: `--port PORT --cafile CA`, then `args`;
/// with `cgroup_procs`, a shell first moves itself into that cgroup (v2), then becomes the client.
fn run_client_script(
    python: &Path,
    script: &Path,
    port: u16,
    ca_file: &Path,
    args: &[&str],
    cgroup_procs: Option<&Path>,
) -> anyhow::Result<(SdkReport, f64)> {
    let started = Instant::now();
    let name = script
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let mut cmd = match cgroup_procs {
        Some(procs) => {
            let mut sh = Command::new("/bin/sh");
            sh.args(["-c", "echo $$ > \"$0\" && exec \"$@\""])
                .arg(procs)
                .arg(python);
            sh
        }
        None => Command::new(python),
    };
    let out = cmd
        .arg(script)
        .args(["--port", &port.to_string(), "--cafile"])
        .arg(ca_file)
        .args(args)
        .env("SSL_CERT_FILE", ca_file)
        .output()
        .with_context(|| format!("running {} {}", python.display(), script.display()))?;
    let wall = started.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!(
            "{name} failed ({}):\nstderr:\n{stderr}\nstdout (first 4000 bytes):\n{}",
            out.status,
            stdout.chars().take(4000).collect::<String>()
        );
    }
    let report: SdkReport = serde_json::from_str(&stdout)
        .with_context(|| format!("{name} output is not its report:\n{stdout}\n{stderr}"))?;
    Ok((report, wall))
}

/// The mock's record of each call: the first unused record with the call's model (scenarios
/// have their own model names; repeated calls of one scenario arrive in order).
pub fn pair_with_records<'a>(
    calls: &[SdkCall],
    records: &'a [RequestRecord],
) -> Vec<Option<&'a RequestRecord>> {
    let mut used = vec![false; records.len()];
    calls
        .iter()
        .map(|call| {
            let (i, rec) = records.iter().enumerate().find(|(i, r)| {
                !used[*i] && r.request_model.as_deref() == Some(call.request_model.as_str())
            })?;
            used[i] = true;
            Some(rec)
        })
        .collect()
}

fn same_count(sdk: Option<u64>, mock: Option<u64>) -> bool {
    // "Not reported" and "reported as 0" are the same for cache and reasoning counts.
    sdk.unwrap_or(0) == mock.unwrap_or(0)
}

/// Checks the SDKs' view against what the mock sent, call by call (calls are matched to
/// requests by model name, in order), and the wire facts every request must show: HTTP/1.1
/// (HTTP/2 from the HTTP/2 mock) negotiated by ALPN, the real host name in SNI and `Host`. Returns the disagreements.
pub fn check_against_mock(report: &SdkReport, records: &[RequestRecord]) -> Vec<String> {
    let mut problems = Vec::new();
    for (call, rec) in report
        .calls
        .iter()
        .zip(pair_with_records(&report.calls, records))
    {
        let Some(rec) = rec else {
            problems.push(format!(
                "{}: no request for model {} reached the mock",
                call.scenario, call.request_model
            ));
            continue;
        };
        let who = format!("{} ({})", call.scenario, call.request_model);
        if rec.api != call.api {
            problems.push(format!("{who}: mock api {} != {}", rec.api, call.api));
        }
        if rec.stream != call.streaming {
            problems.push(format!(
                "{who}: mock stream {} != {}",
                rec.stream, call.streaming
            ));
        }
        if Some(rec.status) != call.status {
            problems.push(format!(
                "{who}: mock status {} != SDK {:?}",
                rec.status, call.status
            ));
        }
        if rec.error_type != call.error_type {
            problems.push(format!(
                "{who}: mock error_type {:?} != SDK {:?}",
                rec.error_type, call.error_type
            ));
        }
        if call.response_model.is_some() && rec.response_model != call.response_model {
            problems.push(format!(
                "{who}: mock response_model {:?} != SDK {:?}",
                rec.response_model, call.response_model
            ));
        }
        if call.chunks != rec.chunks_sent {
            problems.push(format!(
                "{who}: SDK saw {} content chunks, the mock sent {}",
                call.chunks, rec.chunks_sent
            ));
        }
        let Tokens {
            input,
            output,
            cache_read,
            cache_write,
            reasoning,
        } = rec.tokens;
        let sdk = call.tokens();
        if sdk.input != input
            || sdk.output != output
            || !same_count(sdk.cache_read, cache_read)
            || !same_count(sdk.cache_write, cache_write)
            || !same_count(sdk.reasoning, reasoning)
        {
            problems.push(format!(
                "{who}: SDK tokens {sdk:?} != mock tokens {:?}",
                rec.tokens
            ));
        }
        let negotiated = matches!(
            (rec.http_version.as_str(), rec.alpn.as_deref()),
            ("HTTP/1.1", Some("http/1.1")) | ("HTTP/2", Some("h2"))
        );
        if !negotiated {
            problems.push(format!(
                "{who}: {} with ALPN {:?}, expected HTTP/1.1 negotiated as http/1.1 (or HTTP/2 as h2)",
                rec.http_version, rec.alpn
            ));
        }
        if rec.sni.as_deref() != Some(call.server_address.as_str())
            || rec.host.as_deref() != Some(call.server_address.as_str())
        {
            problems.push(format!(
                "{who}: SNI {:?} and Host {:?}, expected {}",
                rec.sni, rec.host, call.server_address
            ));
        }
    }
    problems
}

/// Checks an exchange log (`--log-exchanges`, JSON lines) against the SDKs' view: exactly one
/// line of the client's pid per call, matched by request model (in order), with the call's provider, API,
/// streaming, status, error type, response model and the token counts the SDK saw. Returns the
/// disagreements.
pub fn exchange_log_problems(report: &SdkReport, log: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let mut lines = Vec::new();
    for line in log.lines() {
        match serde_json::from_str::<serde_json::Value>(line) {
            Ok(r) if r["pid"].as_u64() == Some(u64::from(report.pid)) => lines.push(r),
            Ok(_) => {}
            Err(e) => problems.push(format!("a log line is not JSON ({e}): {line}")),
        }
    }
    if lines.len() != report.calls.len() {
        problems.push(format!(
            "{} log lines of pid {}, {} calls",
            lines.len(),
            report.pid,
            report.calls.len()
        ));
    }
    // Repeated calls of one scenario share a model: they take its lines in order.
    let mut used = vec![false; lines.len()];
    for call in &report.calls {
        let who = format!("{} ({})", call.scenario, call.request_model);
        let Some(i) = (0..lines.len()).find(|&i| {
            !used[i] && lines[i]["request_model"].as_str() == Some(call.request_model.as_str())
        }) else {
            problems.push(format!("{who}: no log line"));
            continue;
        };
        used[i] = true;
        let r = &lines[i];
        let sdk = call.tokens();
        let want = serde_json::json!({
            "provider": call.provider,
            "api": call.api,
            "streaming": call.streaming,
            "http_status": call.status,
            "error_type": call.error_type,
        });
        for (field, value) in want.as_object().into_iter().flatten() {
            if &r[field] != value {
                problems.push(format!("{who}: log {field} {} != SDK {value}", r[field]));
            }
        }
        if call.response_model.is_some()
            && r["response_model"].as_str() != call.response_model.as_deref()
        {
            problems.push(format!(
                "{who}: log response_model {} != SDK {:?}",
                r["response_model"], call.response_model
            ));
        }
        for (kind, count) in [("input", sdk.input), ("output", sdk.output)] {
            if count.is_some() && r["tokens"][kind].as_u64() != count {
                problems.push(format!(
                    "{who}: log {kind} tokens {} != SDK {count:?}",
                    r["tokens"][kind]
                ));
            }
        }
    }
    problems
}
