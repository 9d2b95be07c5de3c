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
use serde_json::Value;

use crate::{
    harness::{Agent, http_get, tokentap_bin},
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
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let source = root.join("clients/static_tls_client.c");
    let dir = root.join("../target/static-tls-client");
    std::fs::create_dir_all(&dir)?;
    let bin = dir.join("static_tls_client");
    let stripped = dir.join("static_tls_client_stripped");
    let fresh = |p: &Path| -> bool {
        let (Ok(b), Ok(s)) = (std::fs::metadata(p), std::fs::metadata(&source)) else {
            return false;
        };
        matches!((b.modified(), s.modified()), (Ok(b), Ok(s)) if b >= s)
    };
    if !fresh(&bin) || !fresh(&stripped) {
        let out = Command::new("cc")
            .args(["-O2", "-o"])
            .arg(&bin)
            .arg(&source)
            .args([
                "-Wl,-Bstatic",
                "-lssl",
                "-lcrypto",
                "-Wl,-Bdynamic",
                "-lpthread",
                "-ldl",
            ])
            .output()
            .context("running cc: install a C compiler (`cargo xtask setup` installs gcc)")?;
        if !out.status.success() {
            bail!(
                "building the static OpenSSL client failed (it needs gcc and libssl-dev's libssl.a; `cargo xtask setup` installs them):\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
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
