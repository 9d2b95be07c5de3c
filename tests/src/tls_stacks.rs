//! Helpers for the TLS-stack end-to-end tests (Node.js, a statically linked OpenSSL client,
//! stacks tokentap does not hook): the agent's metrics and `tokentap status` for one process,
//! and the static client's build.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, anyhow, bail};
use serde_json::{Value, json};

use crate::{
    harness::{Agent, http_get, tokentap_bin},
    mock_provider::MockProvider,
    prom::{self, Sample},
};

/// What a client saw for one call: the ground truth.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallTruth {
    pub model: String,
    pub status: u16,
    pub input: Option<u64>,
    pub output: Option<u64>,
}

/// Totals the metrics must equal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub requests: u64,
    pub status_429: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
}

impl Totals {
    pub fn of_calls(calls: &[CallTruth]) -> Self {
        Self {
            requests: calls.len() as u64,
            status_429: calls.iter().filter(|c| c.status == 429).count() as u64,
            input_tokens: calls.iter().filter_map(|c| c.input).sum(),
            output_tokens: calls.iter().filter_map(|c| c.output).sum(),
        }
    }

    /// From the agent's samples of series whose request model contains `tag`.
    pub fn of_metrics(samples: &[Sample], tag: &str) -> Self {
        let mine = |s: &&Sample| s.label("gen_ai_request_model").contains(tag);
        let sum = |name: &str, f: &dyn Fn(&Sample) -> bool| -> u64 {
            samples
                .iter()
                .filter(mine)
                .filter(|s| s.name == name && f(s))
                .map(|s| s.value as u64)
                .sum()
        };
        Self {
            requests: sum("tokentap_requests_total", &|_| true),
            status_429: sum("tokentap_requests_total", &|s| {
                s.label("http_response_status_code") == "429"
            }),
            input_tokens: sum("tokentap_tokens_total", &|s| {
                s.label("gen_ai_token_type") == "input"
            }),
            output_tokens: sum("tokentap_tokens_total", &|s| {
                s.label("gen_ai_token_type") == "output"
            }),
        }
    }
}

/// The address the agent serves on (from its log).
pub fn agent_addr(agent: &Agent) -> anyhow::Result<String> {
    agent
        .stderr()
        .lines()
        .find_map(|l| l.split("http://").nth(1))
        .map(|a| a.trim().to_owned())
        .ok_or_else(|| anyhow!("the agent did not log its listen address"))
}

pub fn scrape(addr: &str) -> anyhow::Result<(String, Vec<Sample>)> {
    let (status, text) = http_get(addr, "/metrics")?;
    if status != 200 {
        bail!("/metrics answered {status}");
    }
    let samples = prom::parse(&text)?;
    Ok((text, samples))
}

/// `tokentap_process_tls_coverage{coverage,stack}`.
pub fn coverage_gauge(samples: &[Sample], coverage: &str, stack: &str) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == "tokentap_process_tls_coverage"
                && s.label("coverage") == coverage
                && s.label("stack") == stack
        })
        .map(|s| s.value)
}

/// `tokentap status --json`'s row for `pid`.
pub fn status_row(pid: u32, extra_args: &[&str]) -> anyhow::Result<Value> {
    let out = Command::new(tokentap_bin())
        .arg("status")
        .arg("--json")
        .args(extra_args)
        .output()
        .context("running tokentap status")?;
    if !out.status.success() {
        bail!(
            "tokentap status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8(out.stdout)?;
    for line in text.lines() {
        let row: Value = serde_json::from_str(line).with_context(|| format!("row {line}"))?;
        if row["pid"].as_u64() == Some(u64::from(pid)) {
            return Ok(row);
        }
    }
    bail!("tokentap status lists no pid {pid}:\n{text}")
}

/// (stack, coverage) pairs of a status row.
pub fn row_stacks(row: &Value) -> Vec<(String, String)> {
    row["stacks"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    (
                        s["stack"].as_str().unwrap_or_default().to_owned(),
                        s["coverage"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A child whose stdin is kept open (so it holds its connections) until it is dropped.
pub struct HeldChild {
    pub child: Child,
    pub stdout: BufReader<ChildStdout>,
}

impl HeldChild {
    pub fn spawn(cmd: &mut Command) -> anyhow::Result<Self> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = BufReader::new(child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?);
        Ok(Self { child, stdout })
    }

    pub fn line(&mut self) -> anyhow::Result<String> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("the client exited early: {:?}", self.child.try_wait()?);
        }
        Ok(line.trim_end().to_owned())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn send_line(&mut self, line: &str) -> anyhow::Result<()> {
        use std::io::Write as _;
        let stdin = self
            .child
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow!("no stdin"))?;
        writeln!(stdin, "{line}")?;
        Ok(stdin.flush()?)
    }
}

/// Waits until the agent's log contains `needle`.
pub fn wait_for_log(agent: &Agent, needle: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    while !agent.stderr().contains(needle) {
        if std::time::Instant::now() > deadline {
            bail!(
                "the agent did not log {needle:?} within {timeout:?}:\n{}",
                agent.stderr()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

impl Drop for HeldChild {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The static OpenSSL client, built by [`static_tls_client`].
pub struct StaticClient {
    /// With its symbols (`.symtab`).
    pub bin: PathBuf,
    /// The same build, stripped of every symbol.
    pub stripped: PathBuf,
    /// A debug-file directory holding the build's symbols as
    /// `.build-id/ab/cdef….debug` (`objcopy --only-keep-debug`), as dbgsym packages install them.
    pub debug_dir: PathBuf,
}

/// Builds `tests/clients/static_tls_client.c` against OpenSSL's static archives into
/// `target/static-tls-client/` (once; again when the source changes), plus a stripped copy
/// and its debug file.
pub fn static_tls_client() -> anyhow::Result<StaticClient> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/static-tls-client");
    std::fs::create_dir_all(&dir)?;
    let bin = dir.join("static_tls_client");
    let stripped = dir.join("static_tls_client_stripped");
    if !is_fresh(&bin) || !is_fresh(&stripped) {
        compile_c_client(
            &bin,
            &[
                "-Wl,-Bstatic",
                "-lssl",
                "-lcrypto",
                "-Wl,-Bdynamic",
                "-lpthread",
                "-ldl",
            ],
            "the static OpenSSL client",
            "gcc and libssl-dev's libssl.a",
        )?;
        std::fs::remove_file(&stripped).ok();
    }
    let debug_dir = dir.join("debug");
    strip_with_debug_file(&bin, &stripped, &debug_dir)?;
    Ok(StaticClient {
        bin,
        stripped,
        debug_dir,
    })
}

/// Writes a copy of the ELF file `bin` stripped of every symbol to `stripped` (unless it
/// exists), and `bin`'s symbols as a separate debug file `.build-id/ab/cdef….debug` under
/// `debug_dir` (`objcopy --only-keep-debug`), as distributions' dbgsym packages install them.
pub fn strip_with_debug_file(bin: &Path, stripped: &Path, debug_dir: &Path) -> anyhow::Result<()> {
    if !stripped.exists() {
        let out = Command::new("strip")
            .arg("-o")
            .arg(stripped)
            .arg(bin)
            .output()
            .context("running strip (binutils)")?;
        if !out.status.success() {
            bail!("strip failed: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    let build_id = build_id(bin)?;
    let debug_file = debug_dir
        .join(".build-id")
        .join(&build_id[..2])
        .join(format!("{}.debug", &build_id[2..]));
    if !debug_file.exists() {
        std::fs::create_dir_all(debug_file.parent().ok_or_else(|| anyhow!("no parent"))?)?;
        let out = Command::new("objcopy")
            .arg("--only-keep-debug")
            .arg(bin)
            .arg(&debug_file)
            .output()
            .context("running objcopy (binutils)")?;
        if !out.status.success() {
            bail!("objcopy failed: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    Ok(())
}

/// `readelf -W ARGS PATH`'s output.
pub fn readelf(args: &[&str], path: &Path) -> anyhow::Result<String> {
    let out = Command::new("readelf")
        .arg("-W")
        .args(args)
        .arg(path)
        .output()
        .context("running readelf (binutils)")?;
    if !out.status.success() {
        bail!(
            "readelf {args:?} {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Where an ELF file defines `function`: (`readelf -s`'s table: `.dynsym` or `.symtab`,
/// binding: GLOBAL, LOCAL, WEAK) for each defined symbol of that name.
pub fn defined_symbol(path: &Path, function: &str) -> anyhow::Result<Vec<(String, String)>> {
    let mut table = String::new();
    let mut found = Vec::new();
    for line in readelf(&["-s"], path)?.lines() {
        if let Some(rest) = line.strip_prefix("Symbol table '") {
            table = rest.split('\'').next().unwrap_or_default().to_owned();
            continue;
        }
        // Num: Value Size Type Bind Vis Ndx Name
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() >= 8 && fields[7] == function && fields[6] != "UND" {
            found.push((table.clone(), fields[4].to_owned()));
        }
    }
    Ok(found)
}

/// `tests/clients/static_tls_client.c`, the source of the C clients.
fn c_client_source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/static_tls_client.c")
}

/// Whether a build exists and is not older than the client's source.
fn is_fresh(bin: &Path) -> bool {
    let (Ok(b), Ok(s)) = (std::fs::metadata(bin), std::fs::metadata(c_client_source())) else {
        return false;
    };
    matches!((b.modified(), s.modified()), (Ok(b), Ok(s)) if b >= s)
}

/// `cc -O2 -o BIN static_tls_client.c ARGS…`; `what` and `needs` are for the error.
fn compile_c_client(bin: &Path, args: &[&str], what: &str, needs: &str) -> anyhow::Result<()> {
    let out = Command::new("cc")
        .args(["-O2", "-o"])
        .arg(bin)
        .arg(c_client_source())
        .args(args)
        .output()
        .context("running cc: install a C compiler (`cargo xtask setup` installs gcc)")?;
    if !out.status.success() {
        bail!(
            "building {what} failed (it needs {needs}; `cargo xtask setup` installs them):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Where Debian's `android-libboringssl` installs Android's BoringSSL (`libssl.so.0`,
/// `libcrypto.so.0`, and with `-dev` the `libssl.so` link names); the headers are in
/// `/usr/include/android`.
pub fn boringssl_lib_dir() -> PathBuf {
    PathBuf::from(format!(
        "/usr/lib/{}-linux-gnu/android",
        std::env::consts::ARCH
    ))
}

/// Builds `tests/clients/static_tls_client.c` against Android's BoringSSL as shared libraries
/// (Debian's `android-libboringssl-dev`) into `target/boringssl-tls-client/` (once; again when
/// the source changes). The client maps BoringSSL's `libssl.so.0` (found through its run path)
/// and no OpenSSL. Debian ships no static BoringSSL archive.
pub fn boringssl_tls_client() -> anyhow::Result<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/boringssl-tls-client");
    std::fs::create_dir_all(&dir)?;
    let bin = dir.join("boringssl_tls_client");
    if !is_fresh(&bin) {
        let lib_dir = boringssl_lib_dir();
        compile_c_client(
            &bin,
            &[
                "-I/usr/include/android",
                &format!("-L{}", lib_dir.display()),
                &format!("-Wl,-rpath,{}", lib_dir.display()),
                "-lssl",
                "-lcrypto",
            ],
            "the BoringSSL client",
            "gcc and android-libboringssl-dev",
        )?;
    }
    Ok(bin)
}

/// The GNU build id of an ELF file, from `readelf -n`.
fn build_id(path: &Path) -> anyhow::Result<String> {
    readelf(&["-n"], path)?
        .lines()
        .find_map(|l| l.split("Build ID: ").nth(1))
        .map(|id| id.trim().to_owned())
        .filter(|id| id.len() > 4)
        .ok_or_else(|| {
            anyhow!(
                "{} has no build id (gcc links with --build-id)",
                path.display()
            )
        })
}

/// Splits an HTTP/1.1 response read to the end of the connection into (status, body), with a
/// chunked body decoded.
pub fn parse_http_response(raw: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("no end of head"))?;
    let head = std::str::from_utf8(&raw[..head_end])?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line: {head}"))?;
    let body = &raw[head_end + 4..];
    let chunked = head
        .lines()
        .any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding:") && l.contains("chunked"));
    if !chunked {
        return Ok((status, body.to_vec()));
    }
    let mut out = Vec::new();
    let mut rest = body;
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| anyhow!("chunk size line"))?;
        let size_text = std::str::from_utf8(&rest[..line_end])?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok((status, out));
        }
        out.extend_from_slice(rest.get(..size).ok_or_else(|| anyhow!("short chunk"))?);
        rest = rest.get(size + 2..).ok_or_else(|| anyhow!("short chunk"))?;
    }
}

/// `data:` payloads of an SSE body, as JSON (`[DONE]` dropped).
pub fn sse_events(body: &str) -> Vec<Value> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(str::trim)
        .filter(|d| !d.is_empty() && *d != "[DONE]")
        .filter_map(|d| serde_json::from_str(d).ok())
        .collect()
}

/// The calls `tests/clients/static_tls_client.c` makes, one TLS connection each:
/// (provider, path, model suffix, stream).
pub const C_CLIENT_CALLS: [(&str, &str, &str, bool); 4] = [
    ("openai", "/v1/chat/completions", "chunks3", false),
    ("openai", "/v1/chat/completions", "chunks5", true),
    ("anthropic", "/v1/messages", "chunks4", true),
    ("openai", "/v1/chat/completions", "err429", false),
];

fn c_client_request(provider: &str, path: &str, model: &str, stream: bool) -> Vec<u8> {
    let (host, auth, body) = if provider == "openai" {
        let mut body = json!({"model": model, "messages": [{"role": "user", "content": "Hello from a C TLS client."}], "stream": stream});
        if stream {
            body["stream_options"] = json!({"include_usage": true});
        }
        (
            "api.openai.com",
            "Authorization: Bearer sk-tokentap-test-not-a-real-key",
            body,
        )
    } else {
        (
            "api.anthropic.com",
            "x-api-key: sk-tokentap-test-not-a-real-key\r\nanthropic-version: 2023-06-01",
            json!({"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": "Hello, static."}], "stream": stream}),
        )
    };
    let body = body.to_string();
    format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\n{auth}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The tokens a response's usage reported, as the metrics count them (input includes cached).
fn c_client_truth(provider: &str, stream: bool, model: String, raw: &[u8]) -> CallTruth {
    let (status, body) = parse_http_response(raw).expect("an HTTP response");
    let body = String::from_utf8_lossy(&body).into_owned();
    let mut call = CallTruth {
        model,
        status,
        input: None,
        output: None,
    };
    if status != 200 {
        return call;
    }
    let anthropic_input = |u: &Value| {
        [
            "input_tokens",
            "cache_read_input_tokens",
            "cache_creation_input_tokens",
        ]
        .iter()
        .filter_map(|k| u[*k].as_u64())
        .sum::<u64>()
    };
    match (provider, stream) {
        ("openai", false) => {
            let v: Value = serde_json::from_str(&body).expect("JSON body");
            call.input = v["usage"]["prompt_tokens"].as_u64();
            call.output = v["usage"]["completion_tokens"].as_u64();
        }
        ("openai", true) => {
            let usage = sse_events(&body)
                .into_iter()
                .rfind(|e| e["usage"].is_object())
                .expect("a usage chunk");
            call.input = usage["usage"]["prompt_tokens"].as_u64();
            call.output = usage["usage"]["completion_tokens"].as_u64();
        }
        (_, true) => {
            for e in sse_events(&body) {
                match e["type"].as_str() {
                    Some("message_start") => {
                        call.input = Some(anthropic_input(&e["message"]["usage"]))
                    }
                    Some("message_delta") => call.output = e["usage"]["output_tokens"].as_u64(),
                    _ => {}
                }
            }
        }
        (_, false) => {
            let v: Value = serde_json::from_str(&body).expect("JSON body");
            call.input = Some(anthropic_input(&v["usage"]));
            call.output = v["usage"]["output_tokens"].as_u64();
        }
    }
    call
}

/// Starts `bin` (a build of `static_tls_client.c`, holding its connections open), checks that
/// it reports a TLS library `version` (`OpenSSL 3`, `BoringSSL`), waits until the agent logs
/// `hooked` for it, runs [`C_CLIENT_CALLS`] with models tagged `tag`, and returns the client
/// with what it saw.
pub fn run_c_client(
    bin: &Path,
    version: &str,
    tag: &str,
    hooked: &str,
    agent: &Agent,
    mock: &MockProvider,
) -> (HeldChild, Vec<CallTruth>) {
    let work = bin.with_file_name(format!("run-{tag}"));
    std::fs::create_dir_all(&work).expect("work dir");
    let mut models = Vec::new();
    // One SNI for all connections: the certificate covers every provider host, and the agent
    // takes the provider from each request's Host header.
    let mut args = vec![
        mock.ca_file().display().to_string(),
        mock.port().to_string(),
        "api.openai.com".to_owned(),
        work.display().to_string(),
    ];
    for (i, (provider, path, suffix, stream)) in C_CLIENT_CALLS.iter().enumerate() {
        let base = if *provider == "openai" {
            "gpt-4o-mini"
        } else {
            "claude-sonnet-4-5"
        };
        let model = format!("{base}-{tag}-{suffix}");
        let file = work.join(format!("{i}.request"));
        std::fs::write(&file, c_client_request(provider, path, &model, *stream))
            .expect("write request");
        args.push(file.display().to_string());
        models.push(model);
    }
    let mut client = HeldChild::spawn(Command::new(bin).args(&args).env("HOLD", "1"))
        .expect("start the C TLS client");
    let hello = client.line().expect("the client starts");
    assert!(
        hello.starts_with("pid ") && hello.contains(version),
        "{hello}"
    );
    // Discovery of a new process (exec event, ELF scan, attach) takes a moment; the client
    // starts once it is hooked, so no call is sent before (a real short-lived static binary
    // could lose its first call: see the README).
    wait_for_log(
        agent,
        &format!("{hooked} (pid {}", client.pid()),
        Duration::from_secs(5),
    )
    .expect("the agent hooks the C TLS client when it starts");
    client.send_line("go").expect("start the client");
    assert_eq!(client.line().expect("the client finishes"), "done");
    let calls: Vec<CallTruth> = C_CLIENT_CALLS
        .iter()
        .zip(models)
        .enumerate()
        .map(|(i, ((provider, _, _, stream), model))| {
            let raw = std::fs::read(work.join(format!("{i}.response"))).expect("response file");
            c_client_truth(provider, *stream, model, &raw)
        })
        .collect();
    let _ = std::fs::remove_dir_all(&work);
    eprintln!("{} (pid {}): {calls:?}", bin.display(), client.pid());
    (client, calls)
}

/// The mock's records of the calls whose model carries `tag`, in order, equal what the client
/// saw (else the test infrastructure is at fault).
pub fn check_mock_chain(mock: &MockProvider, calls: &[CallTruth], tag: &str) {
    let records: Vec<_> = mock
        .requests()
        .into_iter()
        .filter(|r| r.request_model.as_deref().is_some_and(|m| m.contains(tag)))
        .collect();
    assert_eq!(
        records.len(),
        calls.len(),
        "test infrastructure: {records:?}"
    );
    for (call, record) in calls.iter().zip(&records) {
        assert_eq!(
            (call.status, call.input, call.output),
            (record.status, record.tokens.input, record.tokens.output),
            "test infrastructure: the client's view differs from what the mock sent"
        );
    }
}

/// After a C client's calls: the mock answered them as the client says, and the agent's
/// `/metrics` at `addr` (given time to sync, and the coverage gauge a rescan) count the same
/// requests, 429s and tokens. Returns the scrape for further checks; `who` names the client in
/// the failure message.
pub fn agent_counts_equal_c_client(
    addr: &str,
    mock: &MockProvider,
    calls: &[CallTruth],
    tag: &str,
    who: &str,
) -> (String, Vec<Sample>) {
    mock.wait_requests(calls.len(), Duration::from_secs(10));
    check_mock_chain(mock, calls, tag);
    // The agent logs an exchange within its 20 ms poll; metrics are synced 4 times a second,
    // the coverage gauge at every rescan (1 s).
    std::thread::sleep(Duration::from_millis(2500));
    let (text, samples) = scrape(addr).expect("scrape /metrics");
    let expected = Totals::of_calls(calls);
    assert!(expected.input_tokens > 0 && expected.output_tokens > 0 && expected.status_429 == 1);
    assert_eq!(
        Totals::of_metrics(&samples, tag),
        expected,
        "the agent's counters differ from what {who} saw:\n{text}"
    );
    (text, samples)
}
