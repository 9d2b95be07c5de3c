//! The deployment's Prometheus side in tests: the rules and dashboard files, Debian's
//! `prometheus` server run against a temporary config, and its HTTP API.
//!
//! [`dashboard_queries`] is pure; [`PrometheusServer`] runs `/usr/bin/prometheus` (the Debian
//! package `cargo xtask setup` installs) and kills it when dropped, on every exit path.

use std::{
    fs,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, anyhow, bail};
use serde_json::Value;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

pub fn rules_file() -> PathBuf {
    repo_root().join("deploy/prometheus/rules.yaml")
}

pub fn dashboard_file() -> PathBuf {
    repo_root().join("deploy/grafana/tokentap.json")
}

/// A PromQL expression of a dashboard panel, with Grafana's variables replaced.
#[derive(Debug, Clone)]
pub struct DashboardQuery {
    pub panel: String,
    pub expr: String,
}

/// What the dashboard's variables stand for when a query runs outside Grafana: every
/// provider, model and service; windows long enough for a short test's scrapes.
const VARIABLES: [(&str, &str); 6] = [
    ("$__rate_interval", "1m"),
    ("$__interval", "15s"),
    ("$__range", "5m"),
    ("$provider", ".*"),
    ("$model", ".*"),
    ("$service", ".*"),
];

/// Every panel target's `expr` in the dashboard JSON, variables substituted. Fails on a `$`
/// left over (a variable this list does not know).
pub fn dashboard_queries(dashboard: &str) -> anyhow::Result<Vec<DashboardQuery>> {
    let json: Value = serde_json::from_str(dashboard).context("the dashboard is not JSON")?;
    let mut out = Vec::new();
    let mut stack: Vec<&Value> = vec![&json["panels"]];
    while let Some(v) = stack.pop() {
        match v {
            Value::Array(a) => stack.extend(a.iter().rev()),
            Value::Object(o) => {
                let panel = o.get("title").and_then(Value::as_str).unwrap_or("?");
                for t in o
                    .get("targets")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let Some(expr) = t.get("expr").and_then(Value::as_str) else {
                        continue;
                    };
                    let mut expr = expr.to_owned();
                    for (var, value) in VARIABLES {
                        expr = expr.replace(var, value);
                    }
                    if expr.contains('$') {
                        bail!("panel {panel:?}: unknown variable in {expr}");
                    }
                    out.push(DashboardQuery {
                        panel: panel.to_owned(),
                        expr,
                    });
                }
                if let Some(p) = o.get("panels") {
                    stack.push(p);
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// The dashboard's queries as a Prometheus rule file (JSON is YAML), one recording rule per
/// query, so that `promtool check rules` parses every one of them without a server.
pub fn dashboard_as_rule_file(queries: &[DashboardQuery]) -> String {
    let rules: Vec<Value> = queries
        .iter()
        .enumerate()
        .map(|(i, q)| serde_json::json!({"record": format!("dashboard:query_{i}"), "expr": q.expr}))
        .collect();
    serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]}).to_string()
}

/// Debian's `promtool`, or an error that says how to get it.
pub fn promtool() -> anyhow::Result<PathBuf> {
    find_binary("promtool")
}

fn find_binary(name: &str) -> anyhow::Result<PathBuf> {
    let path = Path::new("/usr/bin").join(name);
    if path.exists() {
        Ok(path)
    } else {
        bail!(
            "{} not found: install Debian's `prometheus` package (`cargo xtask setup` does)",
            path.display()
        )
    }
}

fn free_loopback_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A Prometheus server scraping `target` every second and evaluating `rules` every second,
/// with its data in a temporary directory. Killed (and its directory removed) when dropped.
pub struct PrometheusServer {
    child: Child,
    dir: PathBuf,
    pub addr: String,
}

impl PrometheusServer {
    pub fn start(target: &str, rules: &Path) -> anyhow::Result<Self> {
        let bin = find_binary("prometheus")?;
        let dir = std::env::temp_dir().join(format!("tokentap-prometheus-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("data"))?;
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: tokentap\n    static_configs:\n      - targets: [\"{target}\"]\n",
            rules.display()
        );
        fs::write(dir.join("prometheus.yml"), config)?;
        let addr = format!("127.0.0.1:{}", free_loopback_port()?);
        let log = fs::File::create(dir.join("prometheus.log"))?;
        let child = Command::new(bin)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting prometheus")?;
        let mut server = Self { child, dir, addr };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = get(&server.addr, "/-/ready") {
                return Ok(server);
            }
            if let Some(status) = server.child.try_wait()? {
                bail!("prometheus exited with {status}:\n{}", server.log());
            }
            if Instant::now() > deadline {
                bail!("prometheus not ready after 30 s:\n{}", server.log());
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// `GET /api/v1/{path}`; the `data` of a successful answer.
    pub fn api(&self, path: &str) -> anyhow::Result<Value> {
        let (status, body) = get(&self.addr, &format!("/api/v1/{path}"))?;
        let json: Value = serde_json::from_str(&body)
            .with_context(|| format!("{path}: HTTP {status}, not JSON: {body}"))?;
        if json["status"] != "success" {
            bail!(
                "{path}: HTTP {status}: {} {}",
                json["errorType"],
                json["error"]
            );
        }
        Ok(json["data"].clone())
    }

    /// An instant query; its vector's samples as (labels, value).
    pub fn query(
        &self,
        promql: &str,
    ) -> anyhow::Result<Vec<(serde_json::Map<String, Value>, f64)>> {
        let data = self.api(&format!("query?query={}", percent_encode(promql)))?;
        let result = match data["resultType"].as_str() {
            Some("vector") => data["result"].as_array().cloned().unwrap_or_default(),
            Some("scalar") => vec![serde_json::json!({"metric": {}, "value": data["result"]})],
            other => bail!("{promql}: unexpected result type {other:?}"),
        };
        result
            .iter()
            .map(|s| {
                let labels = s["metric"].as_object().cloned().unwrap_or_default();
                let value = s["value"][1]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| anyhow!("{promql}: bad sample {s}"))?;
                Ok((labels, value))
            })
            .collect()
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// HTTP/1.0 GET (so the answer is never chunked); (status, body).
fn get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
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

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dashboard_variables_are_substituted() {
        let json = r#"{"panels":[{"type":"row","title":"r","panels":[]},
            {"title":"p","targets":[{"expr":"rate(x{a=~\"$provider\"}[$__rate_interval])"}]}]}"#;
        let q = dashboard_queries(json).expect("parses");
        assert_eq!(q.len(), 1);
        assert_eq!(q[0].expr, "rate(x{a=~\".*\"}[1m])");
        let unknown = r#"{"panels":[{"title":"p","targets":[{"expr":"x{a=\"$nope\"}"}]}]}"#;
        assert!(dashboard_queries(unknown).is_err());
    }

    #[test]
    fn percent_encoding_keeps_promql_intact() {
        assert_eq!(percent_encode("a{b=\"c\"} +1"), "a%7Bb%3D%22c%22%7D%20%2B1");
    }

    /// Every dashboard query parses as PromQL (`promtool check rules` over them as recording
    /// rules), and the rules file is valid with its unit tests passing. No server, no root;
    /// needs Debian's `prometheus` package (`cargo xtask setup` installs it).
    #[test]
    fn dashboard_queries_parse() {
        let dashboard = fs::read_to_string(dashboard_file()).expect("deploy/grafana/tokentap.json");
        let queries = dashboard_queries(&dashboard).expect("dashboard queries");
        assert!(queries.len() >= 20, "{} queries", queries.len());
        let promtool = promtool().expect("promtool");
        let file = std::env::temp_dir().join(format!(
            "tokentap-dashboard-{}.rules.json",
            std::process::id()
        ));
        fs::write(&file, dashboard_as_rule_file(&queries)).expect("write rule file");
        let out = Command::new(&promtool)
            .args(["check", "rules"])
            .arg(&file)
            .output()
            .expect("run promtool");
        let _ = fs::remove_file(&file);
        assert!(
            out.status.success(),
            "a dashboard query does not parse:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
