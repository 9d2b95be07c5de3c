//! Building and running `clients/go_llm_client` (a Go program: net/http over crypto/tls)
//! against the [`MockProvider`], and its report: every call as the Go client parsed it.
//!
//! Built with the system Go toolchain (Debian's `golang-go`, installed by `cargo xtask setup`)
//! from the standard library only, with the module cache and build cache under `target/go`
//! and `GOPROXY=off`, so the build never reaches the network.
//!
//! [`MockProvider`]: crate::mock_provider::MockProvider

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context as _, bail};
use serde::Deserialize;

use crate::mock_provider::MockProvider;

/// The executable's file name: also its `comm` and `process_executable_name`.
pub const GO_CLIENT_NAME: &str = "go_llm_client";

fn go_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/go")
}

/// Builds the client (with `-ldflags=-s -w` when `stripped`) and returns its path.
pub fn build_go_client(stripped: bool) -> anyhow::Result<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/go_llm_client");
    let dir = go_dir();
    let out = if stripped {
        dir.join("stripped").join(GO_CLIENT_NAME)
    } else {
        dir.join(GO_CLIENT_NAME)
    };
    let mut cmd = Command::new("go");
    cmd.arg("build");
    if stripped {
        cmd.arg("-ldflags=-s -w");
    }
    let status = cmd
        .arg("-o")
        .arg(&out)
        .arg(".")
        .current_dir(&src)
        .env("GOFLAGS", "-mod=mod")
        .env("GOPROXY", "off")
        .env("CGO_ENABLED", "0")
        .env("GOPATH", dir.join("gopath"))
        .env("GOCACHE", dir.join("gocache"))
        .status()
        .context(
            "running `go build`: the Go tests need Debian's golang-go (`cargo xtask setup` installs it)",
        )?;
    if !status.success() {
        bail!("go build of {} failed ({status})", src.display());
    }
    Ok(out)
}

/// One call, as the Go client saw it.
#[derive(Clone, Debug, Deserialize)]
pub struct GoCall {
    pub scenario: String,
    pub provider: String,
    pub server_address: String,
    pub request_model: String,
    pub response_model: String,
    pub streaming: bool,
    pub status: u16,
    /// `HTTP/1.1` or `HTTP/2.0`, from the response.
    pub proto: String,
    /// The ALPN protocol negotiated on the connection.
    pub alpn: String,
    pub input: u64,
    pub output: u64,
    /// 0 when no content chunk arrived (or not streamed).
    pub ttfc_s: f64,
    pub duration_s: f64,
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct GoReport {
    pub pid: u32,
    pub go_version: String,
    pub calls: Vec<GoCall>,
    /// Reads into a buffer on the goroutine's stack whose address changed across the call.
    pub stack_buffer_moves: u64,
    pub raw_reads: u64,
}

/// The client, started and waiting for a line on stdin before its first call (so a test can
/// first see the agent hook it).
pub struct GoClient {
    child: Child,
}

impl GoClient {
    pub fn start(exe: &Path, mock: &MockProvider, args: &[&str]) -> anyhow::Result<Self> {
        let child = Command::new(exe)
            .args(["-wait-stdin", "-port", &mock.port().to_string(), "-cafile"])
            .arg(mock.ca_file())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        Ok(Self { child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Started with `-hold-stdin` too: after its report the client keeps running, with a
    /// loopback TCP connection open, until [`HeldGoClient::release`].
    pub fn start_held(exe: &Path, mock: &MockProvider, args: &[&str]) -> anyhow::Result<Self> {
        let mut args = args.to_vec();
        args.push("-hold-stdin");
        Self::start(exe, mock, &args)
    }

    /// For a client started with [`GoClient::start_held`]: lets it make its calls and returns
    /// its report while it keeps running.
    pub fn run_and_hold(mut self) -> anyhow::Result<(GoReport, HeldGoClient)> {
        let (Some(mut stdin), Some(stdout)) = (self.child.stdin.take(), self.child.stdout.take())
        else {
            bail!("the Go client's stdin and stdout are not piped");
        };
        stdin
            .write_all(b"go\n")
            .context("releasing the Go client")?;
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .context("reading the Go client's report")?;
        if line.is_empty() {
            let mut stderr = String::new();
            if let Some(mut e) = self.child.stderr.take() {
                let _ = e.read_to_string(&mut stderr);
            }
            let status = self.child.wait().context("waiting for the Go client")?;
            bail!("the Go client ended ({status}) without a report:\n{stderr}");
        }
        let report = serde_json::from_str(&line)
            .with_context(|| format!("the Go client's output is not its report:\n{line}"))?;
        Ok((
            report,
            HeldGoClient {
                child: self.child,
                stdin,
            },
        ))
    }

    /// Lets the client make its calls, waits for it, and parses its report.
    pub fn run(mut self) -> anyhow::Result<GoReport> {
        if let Some(mut stdin) = self.child.stdin.take() {
            stdin
                .write_all(b"go\n")
                .context("releasing the Go client")?;
        }
        let out = self
            .child
            .wait_with_output()
            .context("waiting for the Go client")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            bail!("the Go client failed ({}):\n{stderr}\n{stdout}", out.status);
        }
        serde_json::from_str(&stdout).with_context(|| {
            format!("the Go client's output is not its report:\n{stdout}\n{stderr}")
        })
    }
}

/// A Go client that has reported and is waiting to be released.
pub struct HeldGoClient {
    child: Child,
    stdin: std::process::ChildStdin,
}

impl HeldGoClient {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lets the client exit and checks that it did so cleanly.
    pub fn release(mut self) -> anyhow::Result<()> {
        self.stdin
            .write_all(b"done\n")
            .context("releasing the held Go client")?;
        let status = self.child.wait().context("waiting for the Go client")?;
        if !status.success() {
            bail!("the held Go client failed ({status})");
        }
        Ok(())
    }
}

impl Drop for HeldGoClient {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
