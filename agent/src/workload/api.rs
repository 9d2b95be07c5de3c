//! The thin edge: keeps a [`PodIndex`] current from the Kubernetes API.
//!
//! Lists this node's pods (`fieldSelector=spec.nodeName=NODE`), then watches from the list's
//! `resourceVersion` with bookmarks; re-lists when the version has expired (410) or the watch
//! fails, with exponential backoff. Every failure is counted in
//! `tokentap_kubernetes_watch_errors_total{reason}`; `tokentap_kubernetes_api_up` says whether
//! the last list or watch worked. The agent never waits for the API: records made while it is
//! away just have no `k8s` labels.
//!
//! In cluster: https to `KUBERNETES_SERVICE_HOST:KUBERNETES_SERVICE_PORT`, verified with the
//! service account's CA, authenticated with its token (both re-read for every connection,
//! since bound tokens rotate). `http://` (tests, a local proxy) sends no token.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Empty};
use hyper::{Request, StatusCode, body::Incoming, header};
use hyper_util::rt::TokioIo;
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use serde::Deserialize;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
    time::timeout,
};

use super::{
    PodIndex, SharedPods, WorkloadResolver,
    pods::{ObjectMeta, Pod},
};
use crate::cli::{CaptureOptions, KubernetesMode};

/// Where the service account's token and CA are mounted.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// An API server address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiUrl {
    pub https: bool,
    pub host: String,
    pub port: u16,
}

impl ApiUrl {
    /// `https://HOST[:PORT]` or `http://HOST[:PORT]` (no path).
    pub fn parse(url: &str) -> Result<Self, String> {
        let (https, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err("expected http://HOST[:PORT] or https://HOST[:PORT]".into());
        };
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() || rest.contains('/') {
            return Err(
                "expected http://HOST[:PORT] or https://HOST[:PORT], without a path".into(),
            );
        }
        let default = if https { 443 } else { 80 };
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) if !port.contains(']') => (
                host,
                port.parse().map_err(|_| format!("bad port {port:?}"))?,
            ),
            _ => (rest, default),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err("no host".into());
        }
        Ok(Self {
            https,
            host: host.to_owned(),
            port,
        })
    }

    /// The in-cluster address, when this process runs in a pod with a service account.
    pub fn in_cluster(service_account: &Path) -> Option<Self> {
        let host = std::env::var("KUBERNETES_SERVICE_HOST").ok()?;
        let port = std::env::var("KUBERNETES_SERVICE_PORT")
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(443);
        service_account.join("token").exists().then_some(Self {
            https: true,
            host,
            port,
        })
    }

    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Timeouts and backoff; the defaults suit a real API server, tests shorten them.
#[derive(Clone, Debug)]
pub struct Timing {
    /// To connect and complete TLS.
    pub connect: Duration,
    /// For a list's whole response.
    pub list: Duration,
    /// What the server is asked to end a watch after.
    pub watch_server: Duration,
    /// Silence on a watch that counts as a dead connection (bookmarks come about once a minute).
    pub watch_idle: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(10),
            list: Duration::from_secs(60),
            watch_server: Duration::from_secs(300),
            watch_idle: Duration::from_secs(330),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ApiConfig {
    pub url: ApiUrl,
    /// Only this node's pods are listed and watched.
    pub node_name: String,
    /// Where `token` and `ca.crt` are (https only).
    pub service_account: PathBuf,
    pub timing: Timing,
}

/// Why a list or watch failed; [`WatchError::reason`] is the counter's label.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("cannot read the service account token: {0}")]
    Credentials(std::io::Error),
    #[error("no answer in time")]
    Timeout,
    #[error("HTTP status {0}{hint}", hint = status_hint(*.0))]
    Status(u16),
    #[error("unreadable answer: {0}")]
    Decode(String),
    #[error("resource version expired (410): re-listing")]
    Expired,
    #[error("connection failed: {0}")]
    Stream(String),
}

fn status_hint(status: u16) -> &'static str {
    match status {
        401 => " (the service account token was refused)",
        403 => " (RBAC: the agent needs get, list and watch on pods)",
        _ => "",
    }
}

impl WatchError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Connect(_) => "connect",
            Self::Tls(_) => "tls",
            Self::Credentials(_) => "credentials",
            Self::Timeout => "timeout",
            Self::Status(_) => "http_status",
            Self::Decode(_) => "decode",
            Self::Expired => "expired",
            Self::Stream(_) => "stream",
        }
    }
}

/// The watch's self metrics.
#[derive(Clone)]
pub struct ApiMetrics {
    pods: IntGauge,
    up: IntGauge,
    errors: IntCounterVec,
}

impl ApiMetrics {
    pub fn new(registry: &Registry) -> Self {
        let pods = IntGauge::new(
            "tokentap_kubernetes_pods",
            "Pods on this node known from the Kubernetes API (deleted ones excluded).",
        )
        .expect("valid gauge");
        let up = IntGauge::new(
            "tokentap_kubernetes_api_up",
            "1 when the last list or watch of this node's pods worked, else 0.",
        )
        .expect("valid gauge");
        let errors = IntCounterVec::new(
            Opts::new(
                "tokentap_kubernetes_watch_errors_total",
                "Failed lists and watches of this node's pods, by reason (connect, tls, credentials, timeout, http_status, decode, expired, stream).",
            ),
            &["reason"],
        )
        .expect("valid counter");
        for c in [
            Box::new(pods.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(up.clone()),
            Box::new(errors.clone()),
        ] {
            if let Err(e) = registry.register(c) {
                log::warn!("a Kubernetes metric was not registered: {e}");
            }
        }
        Self { pods, up, errors }
    }

    fn failed(&self, e: &WatchError) {
        self.errors.with_label_values(&[e.reason()]).inc();
        // An expired version is the API answering, not failing.
        if !matches!(e, WatchError::Expired) {
            self.up.set(0);
        }
    }
}

/// A list: its pods and where the watch starts.
#[derive(Deserialize)]
struct PodList {
    #[serde(default)]
    metadata: ObjectMeta,
    #[serde(default)]
    items: Vec<Pod>,
}

#[derive(Deserialize)]
struct WatchEvent {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    object: serde_json::Value,
}

/// What one watch event asks of the index.
#[derive(Debug)]
enum Change {
    Upsert(Box<Pod>),
    Delete(Box<Pod>),
    /// A bookmark: only the resource version moves on.
    Bookmark(String),
}

/// Decodes one line of a watch stream.
fn decode_event(line: &[u8]) -> Result<Change, WatchError> {
    let ev: WatchEvent =
        serde_json::from_slice(line).map_err(|e| WatchError::Decode(e.to_string()))?;
    let pod = || -> Result<Box<Pod>, WatchError> {
        serde_json::from_value(ev.object.clone())
            .map(Box::new)
            .map_err(|e| WatchError::Decode(e.to_string()))
    };
    match ev.kind.as_str() {
        "ADDED" | "MODIFIED" => Ok(Change::Upsert(pod()?)),
        "DELETED" => Ok(Change::Delete(pod()?)),
        "BOOKMARK" => Ok(Change::Bookmark(pod()?.metadata.resource_version)),
        "ERROR" => {
            let code = ev.object.get("code").and_then(serde_json::Value::as_u64);
            match code {
                Some(410) => Err(WatchError::Expired),
                Some(code) => Err(WatchError::Status(u16::try_from(code).unwrap_or(0))),
                None => Err(WatchError::Decode("an ERROR event without a code".into())),
            }
        }
        other => Err(WatchError::Decode(format!("unknown event type {other:?}"))),
    }
}

/// Largest list answer or watch line accepted.
const MAX_BODY: usize = 64 * 1024 * 1024;

/// Keeps `pods` current until the task is dropped.
pub async fn run(config: ApiConfig, pods: SharedPods, metrics: ApiMetrics) {
    let client = Client { config };
    let mut backoff = client.config.timing.backoff_min;
    loop {
        match client.list_and_watch(&pods, &metrics).await {
            Ok(()) => backoff = client.config.timing.backoff_min,
            Err((e, worked)) => {
                metrics.failed(&e);
                if worked {
                    backoff = client.config.timing.backoff_min;
                }
                if matches!(e, WatchError::Expired) {
                    log::info!("Kubernetes API: {e}");
                    continue;
                }
                log::warn!(
                    "Kubernetes API {}: {e}; retrying in {:?}",
                    client.config.url.authority(),
                    backoff
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(client.config.timing.backoff_max);
            }
        }
    }
}

struct Client {
    config: ApiConfig,
}

impl Client {
    fn pods_path(&self) -> String {
        format!(
            "/api/v1/pods?fieldSelector=spec.nodeName%3D{}",
            self.config.node_name
        )
    }

    /// One list, then watches until one fails. The flag says whether the list worked (the
    /// API answered, so the backoff starts over).
    async fn list_and_watch(
        &self,
        pods: &SharedPods,
        metrics: &ApiMetrics,
    ) -> Result<(), (WatchError, bool)> {
        let list = self.list().await.map_err(|e| (e, false))?;
        let mut version = list.metadata.resource_version;
        if let Ok(mut index) = pods.lock() {
            index.replace_all(&list.items, Instant::now());
            metrics.pods.set(index.live() as i64);
        }
        metrics.up.set(1);
        log::info!(
            "Kubernetes API: {} pods on node {}",
            list.items.len(),
            self.config.node_name
        );
        loop {
            // A watch that ends cleanly (the server's timeout) is resumed where it stopped;
            // one that ends at once (a misbehaving proxy) does not make this loop spin.
            let started = Instant::now();
            self.watch(&mut version, pods, metrics)
                .await
                .map_err(|e| (e, true))?;
            let pause = self.config.timing.backoff_min;
            if started.elapsed() < pause {
                tokio::time::sleep(pause).await;
            }
        }
    }

    async fn list(&self) -> Result<PodList, WatchError> {
        let timing = &self.config.timing;
        let body = timeout(timing.list, async {
            let response = self.get(&self.pods_path()).await?;
            let mut body = BytesMut::new();
            let mut incoming = response.into_body();
            while let Some(frame) = incoming.frame().await {
                let frame = frame.map_err(|e| WatchError::Stream(e.to_string()))?;
                if let Ok(data) = frame.into_data() {
                    if body.len() + data.len() > MAX_BODY {
                        return Err(WatchError::Decode("the pod list is too large".into()));
                    }
                    body.extend_from_slice(&data);
                }
            }
            Ok(body.freeze())
        })
        .await
        .map_err(|_| WatchError::Timeout)??;
        serde_json::from_slice(&body).map_err(|e| WatchError::Decode(e.to_string()))
    }

    async fn watch(
        &self,
        version: &mut String,
        pods: &SharedPods,
        metrics: &ApiMetrics,
    ) -> Result<(), WatchError> {
        let timing = &self.config.timing;
        let path = format!(
            "{}&watch=1&allowWatchBookmarks=true&resourceVersion={version}&timeoutSeconds={}",
            self.pods_path(),
            timing.watch_server.as_secs().max(1)
        );
        let response = timeout(timing.connect + timing.list, self.get(&path))
            .await
            .map_err(|_| WatchError::Timeout)??;
        let mut body = response.into_body();
        let mut pending = BytesMut::new();
        loop {
            let Some(frame) = timeout(timing.watch_idle, body.frame())
                .await
                .map_err(|_| WatchError::Timeout)?
            else {
                return Ok(());
            };
            let frame = frame.map_err(|e| WatchError::Stream(e.to_string()))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            pending.extend_from_slice(&data);
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line = pending.split_to(end + 1);
                let line = line.chunk().trim_ascii();
                if line.is_empty() {
                    continue;
                }
                self.apply(decode_event(line)?, version, pods, metrics);
            }
            if pending.len() > MAX_BODY {
                return Err(WatchError::Decode("a watch event is too large".into()));
            }
        }
    }

    fn apply(&self, change: Change, version: &mut String, pods: &SharedPods, metrics: &ApiMetrics) {
        metrics.up.set(1);
        let Ok(mut index) = pods.lock() else {
            return;
        };
        let moved_to = match change {
            Change::Upsert(pod) => {
                index.upsert(&pod);
                pod.metadata.resource_version
            }
            Change::Delete(pod) => {
                index.delete(&pod.metadata.uid, Instant::now());
                pod.metadata.resource_version
            }
            Change::Bookmark(v) => v,
        };
        if !moved_to.is_empty() {
            *version = moved_to;
        }
        metrics.pods.set(index.live() as i64);
    }

    /// Sends a GET and returns the response if its status is 200.
    async fn get(&self, path: &str) -> Result<hyper::Response<Incoming>, WatchError> {
        let url = &self.config.url;
        let mut request = Request::get(path)
            .header(header::HOST, url.authority())
            .header(header::ACCEPT, "application/json");
        let connect = self.config.timing.connect;
        let tcp = timeout(connect, TcpStream::connect((url.host.as_str(), url.port)))
            .await
            .map_err(|_| WatchError::Timeout)?
            .map_err(WatchError::Connect)?;
        let response = if url.https {
            let token = std::fs::read_to_string(self.config.service_account.join("token"))
                .map_err(WatchError::Credentials)?;
            request = request.header(header::AUTHORIZATION, format!("Bearer {}", token.trim()));
            let tls = timeout(connect, self.tls(tcp))
                .await
                .map_err(|_| WatchError::Timeout)??;
            send(tls, request, connect).await?
        } else {
            send(tcp, request, connect).await?
        };
        match response.status() {
            StatusCode::OK => Ok(response),
            StatusCode::GONE => Err(WatchError::Expired),
            status => Err(WatchError::Status(status.as_u16())),
        }
    }

    async fn tls(
        &self,
        tcp: TcpStream,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, WatchError> {
        // Read on every connection: the service account's CA may be rotated.
        let config = crate::tls_client::client_config(&self.config.service_account.join("ca.crt"))
            .map_err(WatchError::Tls)?;
        crate::tls_client::connect(config, &self.config.url.host, tcp)
            .await
            .map_err(WatchError::Tls)
    }
}

/// One HTTP/1.1 request on its own connection; the connection lives as long as the body.
async fn send<IO>(
    io: IO,
    request: hyper::http::request::Builder,
    head_timeout: Duration,
) -> Result<hyper::Response<Incoming>, WatchError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| WatchError::Stream(e.to_string()))?;
    tokio::spawn(async move {
        // Its errors surface on the response or the body.
        let _ = connection.await;
    });
    let request = request
        .body(Empty::<Bytes>::new())
        .map_err(|e| WatchError::Stream(e.to_string()))?;
    timeout(head_timeout, sender.send_request(request))
        .await
        .map_err(|_| WatchError::Timeout)?
        .map_err(|e| WatchError::Stream(e.to_string()))
}

/// The API settings from the command line: `None` when workload identity stays off
/// Kubernetes (`--kubernetes off`, or `auto` outside a cluster).
pub fn config_from(capture: &CaptureOptions) -> Result<Option<ApiConfig>, String> {
    let service_account = PathBuf::from(SERVICE_ACCOUNT_DIR);
    let url = match &capture.kubernetes_api {
        Some(url) => Some(ApiUrl::parse(url).map_err(|e| format!("--kubernetes-api {url}: {e}"))?),
        None => ApiUrl::in_cluster(&service_account),
    };
    let url = match (capture.kubernetes, url) {
        (KubernetesMode::Off, _) | (KubernetesMode::Auto, None) => return Ok(None),
        (KubernetesMode::On, None) => {
            return Err("--kubernetes on: not running in a cluster (no KUBERNETES_SERVICE_HOST or no service account token); give --kubernetes-api URL".into());
        }
        (_, Some(url)) => url,
    };
    if let Some(node) = &capture.node_name
        && !valid_node_name(node)
    {
        return Err(format!(
            "--node-name {node:?} is not a Kubernetes node name"
        ));
    }
    let Some(node_name) = capture.node_name.clone() else {
        if capture.kubernetes == KubernetesMode::On {
            return Err("--kubernetes on needs this node's name: --node-name NAME or the NODE_NAME environment variable (from spec.nodeName)".into());
        }
        log::warn!(
            "running in Kubernetes without NODE_NAME (or --node-name): pods are not resolved; set NODE_NAME from spec.nodeName"
        );
        return Ok(None);
    };
    Ok(Some(ApiConfig {
        url,
        node_name,
        service_account,
        timing: Timing::default(),
    }))
}

/// Starts keeping a pod index current (when the command line asks for Kubernetes) and
/// returns the resolver that reads it. Needs a Tokio runtime.
pub fn start(capture: &CaptureOptions, registry: &Registry) -> Result<WorkloadResolver, String> {
    let Some(config) = config_from(capture)? else {
        return Ok(WorkloadResolver::default());
    };
    log::info!(
        "resolving pods on node {} from the Kubernetes API at {}",
        config.node_name,
        config.url.authority()
    );
    let pods: SharedPods = Arc::new(Mutex::new(PodIndex::new(Duration::from_secs(
        capture.pod_series_ttl,
    ))));
    tokio::spawn(run(config, pods.clone(), ApiMetrics::new(registry)));
    Ok(WorkloadResolver::new(Some(pods)))
}

/// Whether a node name is safe to put in a query string (a DNS subdomain, as Kubernetes
/// requires).
pub fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_urls() {
        assert_eq!(
            ApiUrl::parse("http://127.0.0.1:8080").expect("ok"),
            ApiUrl {
                https: false,
                host: "127.0.0.1".into(),
                port: 8080
            }
        );
        assert_eq!(
            ApiUrl::parse("https://[fd00::1]:6443/").expect("ok"),
            ApiUrl {
                https: true,
                host: "fd00::1".into(),
                port: 6443
            }
        );
        assert_eq!(ApiUrl::parse("https://kube").expect("ok").port, 443);
        assert!(ApiUrl::parse("ftp://x").is_err());
        assert!(ApiUrl::parse("http://x/api").is_err());
        assert!(ApiUrl::parse("http://x:port").is_err());
    }

    #[test]
    fn watch_events() {
        let added = br#"{"type":"ADDED","object":{"metadata":{"name":"p","uid":"u","resourceVersion":"7"}}}"#;
        assert!(
            matches!(decode_event(added), Ok(Change::Upsert(p)) if p.metadata.resource_version == "7")
        );
        let bookmark =
            br#"{"type":"BOOKMARK","object":{"kind":"Pod","metadata":{"resourceVersion":"9"}}}"#;
        assert!(matches!(decode_event(bookmark), Ok(Change::Bookmark(v)) if v == "9"));
        let gone = br#"{"type":"ERROR","object":{"kind":"Status","code":410,"reason":"Expired"}}"#;
        assert!(matches!(decode_event(gone), Err(WatchError::Expired)));
        let other = br#"{"type":"ERROR","object":{"kind":"Status","code":500}}"#;
        assert!(matches!(decode_event(other), Err(WatchError::Status(500))));
        assert!(matches!(decode_event(b"{"), Err(WatchError::Decode(_))));
    }

    fn capture(args: &[&str]) -> CaptureOptions {
        let mut all = vec!["tokentap"];
        all.extend(args);
        <crate::cli::Cli as clap::Parser>::try_parse_from(all)
            .expect("parses")
            .capture
    }

    #[test]
    fn when_the_api_is_used() {
        let api = ["--kubernetes-api", "http://127.0.0.1:8001"];
        assert!(
            config_from(&capture(&["--kubernetes", "off"]))
                .expect("ok")
                .is_none()
        );
        if std::env::var_os("NODE_NAME").is_none() {
            let on = config_from(&capture(&["--kubernetes", "on", api[0], api[1]]));
            assert!(on.expect_err("no node").contains("--node-name"));
        }
        let got = config_from(&capture(&[api[0], api[1], "--node-name", "node-1"]))
            .expect("ok")
            .expect("an explicit address turns auto on");
        assert_eq!((got.url.port, got.node_name.as_str()), (8001, "node-1"));
        let bad = config_from(&capture(&[api[0], api[1], "--node-name", "a&b"]));
        assert!(bad.expect_err("bad node").contains("--node-name"));
        if std::env::var_os("KUBERNETES_SERVICE_HOST").is_none() {
            assert!(
                config_from(&capture(&[])).expect("ok").is_none(),
                "auto, off-cluster"
            );
            let off_cluster = config_from(&capture(&["--kubernetes", "on", "--node-name", "n"]));
            assert!(
                off_cluster
                    .expect_err("not in a cluster")
                    .contains("--kubernetes-api")
            );
        }
    }

    #[test]
    fn node_names_are_checked() {
        assert!(valid_node_name("ip-10-0-0-1.ec2.internal"));
        assert!(!valid_node_name("a&watch=1"));
        assert!(!valid_node_name(""));
    }
}
