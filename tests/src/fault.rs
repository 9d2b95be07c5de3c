//! Helpers of the fault and pressure end-to-end tests: Python clients that report their
//! progress as JSON lines (so a test can act at the right moment), and an agent with an
//! exchange log whose records are compared with what the mock sent.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Agent, http_get, python};
use crate::mock_provider::{MockProvider, Outcome, RequestRecord};
use crate::prom;
use crate::soak::{AgentRecord, parse_exchange_log};

pub fn fault_client_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/fault_client.py")
}

/// A running fault_client.py: its progress events arrive on a channel; killed on drop.
pub struct Client {
    child: Child,
    stdin: Option<ChildStdin>,
    events: Receiver<Value>,
    pub pid: u32,
}

impl Client {
    /// `fault_client.py MODE ARGS` against `mock`, with extra environment variables.
    pub fn fault(mock: &MockProvider, mode: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::script(&fault_client_script(), &[mode], mock, args, env)
    }

    /// `python SCRIPT PRE --port P --cafile CA ARGS`; waits for its `{"event": "pid"}` line
    /// when `wait_pid`.
    pub fn script(
        script: &Path,
        pre: &[&str],
        mock: &MockProvider,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let mut cmd = Command::new(python());
        cmd.arg(script)
            .args(pre)
            .args(["--port", &mock.port().to_string(), "--cafile"])
            .arg(mock.ca_file())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start the Python client");
        let stdout = child.stdout.take().expect("stdout");
        let stdin = child.stdin.take();
        let (tx, events) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && tx.send(v).is_err()
                {
                    return;
                }
            }
        });
        Self {
            pid: child.id(),
            child,
            stdin,
            events,
        }
    }

    /// The next event matching `pred` (earlier ones are skipped).
    pub fn wait_for(&mut self, pred: impl Fn(&Value) -> bool, what: &str) -> Value {
        self.wait_for_within(pred, what, Duration::from_secs(30))
    }

    pub fn wait_for_within(
        &mut self,
        pred: impl Fn(&Value) -> bool,
        what: &str,
        within: Duration,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(e) if pred(&e) => return e,
                Ok(_) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("the Python client exited before {what}")
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("the Python client: no event for {what} within {within:?}")
                }
            }
        }
    }

    pub fn proceed(&mut self) {
        let stdin = self.stdin.as_mut().expect("stdin");
        stdin.write_all(b"go\n").expect("write to the client");
        stdin.flush().expect("flush");
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the exit, whatever the status (killed after 30 s).
    pub fn wait_exit(&mut self) -> Option<std::process::ExitStatus> {
        self.stdin.take();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                self.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn finish(mut self) {
        self.stdin.take();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                assert!(status.success(), "the Python client exited with {status}");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the Python client did not finish"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An agent with an exchange log in a temporary directory.
pub struct LoggedAgent {
    agent: Option<Agent>,
    addr: String,
    pub log: PathBuf,
    dir: PathBuf,
}

impl LoggedAgent {
    pub fn start(name: &str, extra: &[&str]) -> Self {
        let dir =
            std::env::temp_dir().join(format!("tokentap-faults-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let log = dir.join("exchanges.jsonl");
        let mut s = Self {
            agent: None,
            addr: String::new(),
            log,
            dir,
        };
        s.restart(extra);
        s
    }

    /// Starts an agent (another one, when one ran before) appending to the same log.
    pub fn restart(&mut self, extra: &[&str]) {
        let log = self.log.to_string_lossy().into_owned();
        let mut args = vec!["agent", "--listen", "127.0.0.1:0", "--log-exchanges", &log];
        args.extend_from_slice(extra);
        let agent = Agent::start(&args).expect("start tokentap agent");
        self.addr = agent
            .stderr()
            .lines()
            .find_map(|l| l.split("http://").nth(1))
            .map(|a| a.trim().to_owned())
            .expect("the agent logs its listen address");
        self.agent = Some(agent);
    }

    pub fn agent(&self) -> &Agent {
        self.agent.as_ref().expect("agent running")
    }

    pub fn sigkill(&mut self) {
        let agent = self.agent.take().expect("agent running");
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(agent.pid() as i32, libc::SIGKILL) };
        drop(agent);
    }

    pub fn metrics(&self) -> Vec<prom::Sample> {
        let (status, text) = http_get(&self.addr, "/metrics").expect("scrape /metrics");
        assert_eq!(status, 200);
        prom::parse(&text).expect("Prometheus text")
    }

    pub fn healthy(&self) -> bool {
        http_get(&self.addr, "/healthz").is_ok_and(|(s, _)| s == 200)
    }

    /// Records of `pid`, once there are at least `n` (or after 10 s).
    pub fn records_of(&self, pid: u32, n: usize) -> Vec<AgentRecord> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let all = parse_exchange_log(&text).expect("exchange log lines are JSON");
            let mine: Vec<AgentRecord> = all.into_iter().filter(|r| r.pid == pid).collect();
            if mine.len() >= n || Instant::now() > deadline {
                return mine;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn stop(mut self) {
        if let Some(agent) = self.agent.take() {
            agent.stop().expect("the agent stops cleanly");
        }
    }
}

impl Drop for LoggedAgent {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn record_for<'a>(records: &'a [AgentRecord], model: &str) -> Vec<&'a AgentRecord> {
    records
        .iter()
        .filter(|r| r.request_model.as_deref() == Some(model))
        .collect()
}

/// The one record for `model`, which must have ended with `error_type` and report no output
/// tokens (they never arrived whole); returned for further checks.
pub fn only_failed_record<'a>(
    records: &'a [AgentRecord],
    model: &str,
    error_type: &str,
) -> &'a AgentRecord {
    let found = record_for(records, model);
    assert_eq!(found.len(), 1, "one record for {model}: {records:#?}");
    let r = found[0];
    assert_eq!(r.error_type.as_deref(), Some(error_type), "{r:?}");
    assert_eq!(
        r.tokens.output, None,
        "no output count may be reported: {r:?}"
    );
    r
}

/// The mock's record of the request for `model`.
pub fn mock_record(mock: &MockProvider, model: &str) -> RequestRecord {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = mock.requests().into_iter().find(|r| {
            r.request_model.as_deref() == Some(model) && r.outcome != Outcome::InProgress
        });
        if let Some(r) = found {
            return r;
        }
        assert!(Instant::now() < deadline, "the mock never finished {model}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The agent's one record for `model` equals what the mock sent: status, error type,
/// response model and every token count.
pub fn assert_exact(records: &[AgentRecord], mock: &MockProvider, model: &str) {
    let found = record_for(records, model);
    assert_eq!(found.len(), 1, "one record for {model}: {records:#?}");
    let r = found[0];
    let m = mock_record(mock, model);
    assert_eq!(r.http_status, Some(m.status), "{model}: {r:?}");
    assert_eq!(r.error_type, m.error_type, "{model}: {r:?}");
    assert_eq!(r.response_model, m.response_model, "{model}: {r:?}");
    assert_eq!(
        (r.tokens.input, r.tokens.output),
        (m.tokens.input, m.tokens.output),
        "{model}: {r:?} vs {:?}",
        m.tokens
    );
}
