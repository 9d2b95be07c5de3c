//! Running the real agent in end-to-end tests and reading back what it captured.
//!
//! The tests need root (they load eBPF programs). Without it they fail and say why; setting
//! `TOKENTAP_SKIP_PRIVILEGED=1` skips them instead, and says so.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, anyhow, bail};
use base64::Engine;
use serde_json::Value;

/// Returns false (after printing why) when privileged tests are explicitly opted out of;
/// panics with the reason when they cannot run.
pub fn privileged_tests_enabled() -> bool {
    if std::env::var_os("TOKENTAP_SKIP_PRIVILEGED").is_some_and(|v| v == "1") {
        eprintln!(
            "SKIPPED: TOKENTAP_SKIP_PRIVILEGED=1 opts out of the privileged end-to-end tests"
        );
        return false;
    }
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        panic!(
            "the end-to-end tests load eBPF programs and need root: run `sudo -E cargo xtask test`, \
             or set TOKENTAP_SKIP_PRIVILEGED=1 to skip them"
        );
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        panic!(
            "the end-to-end tests need kernel BTF (/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF=y)"
        );
    }
    if !Path::new("/sys/bus/event_source/devices/uprobe/type").exists() {
        panic!("the end-to-end tests need uprobe support (CONFIG_UPROBE_EVENTS=y)");
    }
    true
}

/// The agent binary under test, built by `cargo xtask test`.
pub fn tokentap_bin() -> PathBuf {
    let bin = std::env::var_os("TOKENTAP_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/tokentap")
        });
    assert!(
        bin.exists(),
        "agent binary {} not found: run the end-to-end tests with `cargo xtask test`, which builds it",
        bin.display()
    );
    bin
}

/// The Python that runs the test clients (its `ssl` module must use the system OpenSSL).
pub fn python() -> String {
    std::env::var("TOKENTAP_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

pub fn clients_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/tls_clients.py")
}

/// A running `tokentap` process.
pub struct Agent {
    child: Child,
    stderr: Arc<Mutex<String>>,
    stdout: Option<ChildStdout>,
}

impl Agent {
    /// Starts `tokentap ARGS` and waits until it reports `ready:`.
    pub fn start(args: &[&str]) -> anyhow::Result<Self> {
        Self::start_under(&[], args)
    }

    /// Starts `WRAPPER... tokentap ARGS` (e.g. `setpriv --bounding-set ... --`, which execs
    /// the agent in its own process) and waits until it reports `ready:`.
    pub fn start_under(wrapper: &[&str], args: &[&str]) -> anyhow::Result<Self> {
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(tokentap_bin());
                c
            }
            None => Command::new(tokentap_bin()),
        };
        let mut child = command
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning tokentap")?;
        let stderr = Arc::new(Mutex::new(String::new()));
        let err_pipe = child
            .stderr
            .take()
            .ok_or_else(|| anyhow!("no stderr pipe"))?;
        let sink = stderr.clone();
        thread::spawn(move || {
            for line in BufReader::new(err_pipe).lines().map_while(Result::ok) {
                eprintln!("[tokentap] {line}");
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&line);
                    s.push('\n');
                }
            }
        });
        let stdout = child.stdout.take();
        let mut agent = Self {
            child,
            stderr,
            stdout,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if agent.stderr().contains("ready:") {
                return Ok(agent);
            }
            if let Some(status) = agent.child.try_wait()? {
                bail!(
                    "tokentap exited with {status} before it was ready:\n{}",
                    agent.stderr()
                );
            }
            if Instant::now() > deadline {
                bail!("tokentap not ready after 30 s:\n{}", agent.stderr());
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Takes stdout (for `capture`); must be read concurrently so the agent never blocks.
    pub fn collect_stdout(&mut self) -> thread::JoinHandle<String> {
        let mut out = self.stdout.take().expect("stdout taken once");
        thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        })
    }

    /// SIGINT, then waits for a clean exit.
    pub fn stop(mut self) -> anyhow::Result<()> {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!("tokentap exited with {status}:\n{}", self.stderr());
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("tokentap did not stop within 20 s of SIGINT");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `tokentap capture` running for the duration of a test.
pub struct Capture {
    agent: Agent,
    stdout: thread::JoinHandle<String>,
}

impl Capture {
    pub fn start(extra_args: &[&str]) -> anyhow::Result<Self> {
        let mut args = vec!["capture"];
        args.extend_from_slice(extra_args);
        let mut agent = Agent::start(&args)?;
        let stdout = agent.collect_stdout();
        Ok(Self { agent, stdout })
    }

    pub fn agent_log(&self) -> String {
        self.agent.stderr()
    }

    /// Stops the agent and parses everything it printed.
    pub fn finish(self) -> anyhow::Result<CaptureLog> {
        let log = self.agent.stderr();
        self.agent.stop()?;
        let out = self
            .stdout
            .join()
            .map_err(|_| anyhow!("stdout reader panicked"))?;
        CaptureLog::parse(&out, log)
    }
}

/// One direction of one connection, rebuilt from capture lines.
#[derive(Debug, Default, Clone)]
pub struct Stream {
    pub len: u64,
    pub segments: Vec<(u64, Vec<u8>)>,
    pub gaps: Vec<(u64, u64, String)>,
    pub functions: Vec<String>,
    pub tids: Vec<u64>,
    pub comms: Vec<String>,
}

impl Stream {
    /// All bytes, if nothing is missing.
    pub fn contiguous(&self) -> Option<Vec<u8>> {
        if !self.gaps.is_empty() {
            return None;
        }
        Some(
            self.segments
                .iter()
                .flat_map(|(_, b)| b.iter().copied())
                .collect(),
        )
    }

    /// Checks the stream against `truth`: same length, every captured byte equal.
    pub fn check_against(&self, truth: &[u8]) -> anyhow::Result<()> {
        if self.len != truth.len() as u64 {
            bail!("stream is {} bytes, the peer saw {}", self.len, truth.len());
        }
        for (offset, bytes) in &self.segments {
            let at = *offset as usize;
            if truth.get(at..at + bytes.len()) != Some(bytes.as_slice()) {
                bail!(
                    "captured bytes at offset {at} (len {}) differ from what the peer saw",
                    bytes.len()
                );
            }
        }
        Ok(())
    }
}

/// Key of a stream: (pid, conn, direction). A connection whose `SSL*` address was used
/// again after a close gets `conn#N` for its N-th reuse.
pub type StreamKey = (u64, String, String);

/// Everything one `tokentap capture` run printed.
#[derive(Debug)]
pub struct CaptureLog {
    pub streams: BTreeMap<StreamKey, Stream>,
    pub closes: Vec<(u64, String, String)>,
    pub summary: Value,
    pub agent_log: String,
}

impl CaptureLog {
    fn parse(out: &str, agent_log: String) -> anyhow::Result<Self> {
        let mut streams: BTreeMap<StreamKey, Stream> = BTreeMap::new();
        let mut closes = Vec::new();
        let mut summary = None;
        // Closes seen per (pid, SSL* address): data after a close is a new connection.
        let mut generation: BTreeMap<(u64, String), u32> = BTreeMap::new();
        for line in out.lines() {
            let v: Value =
                serde_json::from_str(line).with_context(|| format!("bad line {line}"))?;
            let pid = v["pid"].as_u64().unwrap_or(0);
            let address = v["conn"].as_str().unwrap_or("").to_owned();
            let conn = match generation.get(&(pid, address.clone())) {
                Some(&n) if n > 0 => format!("{address}#{n}"),
                _ => address.clone(),
            };
            let dir = v["direction"].as_str().unwrap_or("").to_owned();
            match v["type"].as_str() {
                Some("data") => {
                    let bytes = if let Some(text) = v["data"].as_str() {
                        text.as_bytes().to_vec()
                    } else {
                        base64::engine::general_purpose::STANDARD
                            .decode(v["data_b64"].as_str().unwrap_or(""))?
                    };
                    let offset = v["offset"].as_u64().ok_or_else(|| anyhow!("no offset"))?;
                    let s = streams.entry((pid, conn, dir)).or_default();
                    if offset != s.len {
                        bail!(
                            "data at offset {offset} does not continue the stream at {}",
                            s.len
                        );
                    }
                    s.len += bytes.len() as u64;
                    s.segments.push((offset, bytes));
                    let function = v["function"].as_str().unwrap_or("").to_owned();
                    if !s.functions.contains(&function) {
                        s.functions.push(function);
                    }
                    let tid = v["tid"].as_u64().unwrap_or(0);
                    if !s.tids.contains(&tid) {
                        s.tids.push(tid);
                    }
                    let comm = v["comm"].as_str().unwrap_or("").to_owned();
                    if !s.comms.contains(&comm) {
                        s.comms.push(comm);
                    }
                }
                Some("gap") => {
                    let offset = v["offset"].as_u64().ok_or_else(|| anyhow!("no offset"))?;
                    let len = v["len"].as_u64().ok_or_else(|| anyhow!("no len"))?;
                    let s = streams.entry((pid, conn, dir)).or_default();
                    if offset != s.len {
                        bail!(
                            "gap at offset {offset} does not continue the stream at {}",
                            s.len
                        );
                    }
                    s.len += len;
                    s.gaps
                        .push((offset, len, v["cause"].as_str().unwrap_or("").to_owned()));
                }
                Some("close") => {
                    closes.push((pid, conn, v["reason"].as_str().unwrap_or("").to_owned()));
                    *generation.entry((pid, address)).or_default() += 1;
                }
                Some("summary") => summary = Some(v),
                other => bail!("unknown line type {other:?}"),
            }
        }
        let summary =
            summary.ok_or_else(|| anyhow!("no summary line: the agent did not exit cleanly"))?;
        Ok(Self {
            streams,
            closes,
            summary,
            agent_log,
        })
    }

    /// The connections of `pid`: conn id → (write stream, read stream).
    pub fn connections_of(&self, pid: u64) -> BTreeMap<String, (Stream, Stream)> {
        let mut out: BTreeMap<String, (Stream, Stream)> = BTreeMap::new();
        for ((p, conn, dir), s) in &self.streams {
            if *p != pid {
                continue;
            }
            let e = out.entry(conn.clone()).or_default();
            match dir.as_str() {
                "write" => e.0 = s.clone(),
                _ => e.1 = s.clone(),
            }
        }
        out
    }

    /// Asserts that nothing was lost anywhere: kernel counters, decoding, ordering.
    pub fn assert_nothing_lost(&self) {
        let s = &self.summary;
        for (name, n) in s["kernel"].as_object().expect("kernel counters") {
            assert_eq!(n.as_u64(), Some(0), "kernel counter {name} is {n}: {s}");
        }
        assert_eq!(s["decode_errors"].as_u64(), Some(0), "{s}");
        assert_eq!(s["records_out_of_order"].as_u64(), Some(0), "{s}");
        for st in self.streams.values() {
            for (offset, len, cause) in &st.gaps {
                assert_eq!(
                    cause, "truncated",
                    "unexpected {cause} gap of {len} bytes at {offset}"
                );
            }
        }
    }
}

/// Runs a test client mode; returns its JSON report.
pub fn run_client(
    mode: &str,
    port: u16,
    cafile: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> anyhow::Result<Value> {
    let mut cmd = Command::new(python());
    cmd.arg(clients_script())
        .arg(mode)
        .args(["--port", &port.to_string(), "--cafile"])
        .arg(cafile)
        .args(extra);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().context("running the Python test client")?;
    if !out.status.success() {
        bail!(
            "client {mode} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let report: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("client output: {}", String::from_utf8_lossy(&out.stdout)))?;
    Ok(report)
}

/// A plain HTTP/1.1 GET against the agent's own server; returns (status, body).
pub fn http_get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let status = resp
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("bad response: {resp}"))?;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Value of a metric series in Prometheus text output (`name{labels}` exactly as printed).
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
}
