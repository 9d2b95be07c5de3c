//! The resolver and the API client against a fake API server (pod lists and watch streams
//! over HTTP) and a fake `/proc` tree: labels appear once the API answers, watch events
//! move the index, a 410 re-lists, an outage is counted and survived.

use std::{
    collections::VecDeque,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use prometheus::{Encoder, Registry, TextEncoder};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

use super::{
    PodIndex, SharedPods, WorkloadResolver,
    api::{ApiConfig, ApiMetrics, ApiUrl, Timing, run},
};
use crate::exchanges::ProcessInfo;

const NODE: &str = "test-node";
const ID_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const ID_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const ID_C: &str = "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";

/// What the fake server answers to one connection.
enum Reply {
    Json(serde_json::Value),
    /// A chunked watch stream of these events; the connection then ends, or stays open.
    Watch {
        events: Vec<serde_json::Value>,
        hold: bool,
    },
}

struct FakeApi {
    requests: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl FakeApi {
    async fn start(port: u16, script: Vec<Reply>) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind the fake API server");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(serve(listener, script.into(), requests.clone()));
        Self { requests, task }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("lock").clone()
    }

    /// Stops answering and closes every connection (the API server going away).
    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

async fn serve(
    listener: TcpListener,
    mut script: VecDeque<Reply>,
    requests: Arc<Mutex<Vec<String>>>,
) {
    // Held watch connections live as long as the server.
    let mut held: Vec<TcpStream> = Vec::new();
    while let Ok((mut sock, _)) = listener.accept().await {
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let path = head.split(' ').nth(1).unwrap_or("").to_owned();
        assert!(
            !head.to_ascii_lowercase().contains("authorization"),
            "no token over http"
        );
        requests.lock().expect("lock").push(path);
        match script.pop_front() {
            Some(Reply::Json(body)) => {
                let body = body.to_string();
                let out = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(out.as_bytes()).await;
            }
            Some(Reply::Watch { events, hold }) => {
                let mut out =
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
                for event in events {
                    let line = format!("{event}\n");
                    out.extend_from_slice(format!("{:x}\r\n{line}\r\n", line.len()).as_bytes());
                }
                if !hold {
                    out.extend_from_slice(b"0\r\n\r\n");
                }
                let _ = sock.write_all(&out).await;
                if hold {
                    held.push(sock);
                }
            }
            None => {
                let _ = sock
                    .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            }
        }
    }
}

fn pod(uid: &str, name: &str, container_id: &str, version: &str) -> serde_json::Value {
    serde_json::json!({
        "kind": "Pod",
        "metadata": {
            "name": name, "namespace": "shop", "uid": uid, "resourceVersion": version,
            "labels": {"pod-template-hash": "5f6d7c8b9"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": format!("{}-5f6d7c8b9", name.split('-').next().unwrap_or(name)),
                "controller": true}]
        },
        "spec": {"nodeName": NODE},
        "status": {"containerStatuses": [
            {"name": "app", "containerID": format!("containerd://{container_id}")}
        ]}
    })
}

fn list(version: &str, pods: Vec<serde_json::Value>) -> Reply {
    Reply::Json(serde_json::json!({
        "kind": "PodList", "apiVersion": "v1",
        "metadata": {"resourceVersion": version},
        "items": pods
    }))
}

fn event(kind: &str, object: serde_json::Value) -> serde_json::Value {
    serde_json::json!({"type": kind, "object": object})
}

fn metric(registry: &Registry, series: &str) -> f64 {
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut out)
        .expect("encode");
    String::from_utf8_lossy(&out)
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

async fn until(what: &str, ok: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A `/proc` with two processes: 100 in container B, 101 in container C with its own
/// `OTEL_SERVICE_NAME`.
fn fake_proc() -> PathBuf {
    let root = std::env::temp_dir().join(format!("tokentap-fake-proc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    for (pid, id, environ) in [
        (
            100,
            ID_B,
            b"PATH=/bin\0OPENAI_API_KEY=sk-not-kept\0".as_slice(),
        ),
        (101, ID_C, b"OTEL_SERVICE_NAME=billing-worker\0".as_slice()),
    ] {
        let dir = root.join(pid.to_string());
        std::fs::create_dir_all(&dir).expect("proc dir");
        std::fs::write(
            dir.join("cgroup"),
            format!("0::/kubepods.slice/kubepods-pod1.slice/cri-containerd-{id}.scope\n"),
        )
        .expect("cgroup");
        std::fs::write(dir.join("environ"), environ).expect("environ");
        std::os::unix::fs::symlink("/usr/bin/python3.12", dir.join("exe")).expect("exe");
    }
    root
}

#[tokio::test]
async fn resolver_follows_the_api_through_outages() {
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        probe.local_addr().expect("addr").port()
    };
    let registry = Registry::new();
    let pods: SharedPods = Arc::new(Mutex::new(PodIndex::new(Duration::from_secs(3600))));
    let config = ApiConfig {
        url: ApiUrl::parse(&format!("http://127.0.0.1:{port}")).expect("url"),
        node_name: NODE.into(),
        service_account: PathBuf::from("/nonexistent"),
        timing: Timing {
            connect: Duration::from_secs(2),
            list: Duration::from_secs(2),
            watch_server: Duration::from_secs(60),
            watch_idle: Duration::from_secs(5),
            backoff_min: Duration::from_millis(20),
            backoff_max: Duration::from_millis(100),
        },
    };
    let client = tokio::spawn(run(config, pods.clone(), ApiMetrics::new(&registry)));
    let resolver = WorkloadResolver::new(Some(pods.clone()));
    let proc_root = fake_proc();
    let mut processes = ProcessInfo::new(proc_root.clone());

    // The API is down at start: the agent runs on, the failures are counted, no labels.
    until("connection failures counted", || {
        metric(
            &registry,
            "tokentap_kubernetes_watch_errors_total{reason=\"connect\"}",
        ) >= 2.0
    })
    .await;
    assert_eq!(metric(&registry, "tokentap_kubernetes_api_up"), 0.0);
    let (service, k8s) = resolver.identify(processes.get(100, b""));
    assert_eq!((service.as_str(), k8s), ("python3.12", None));

    // It answers: a list, then a watch that adds, modifies, bookmarks, deletes, and expires.
    let api = FakeApi::start(
        port,
        vec![
            list("10", vec![pod("ua", "web-5f6d7c8b9-aaaaa", ID_A, "9")]),
            Reply::Watch {
                events: vec![
                    event("ADDED", pod("ub", "checkout-5f6d7c8b9-bbbbb", ID_B, "11")),
                    event("MODIFIED", pod("ua", "web-5f6d7c8b9-aaaaa", ID_A, "12")),
                    event(
                        "BOOKMARK",
                        serde_json::json!({"kind": "Pod", "metadata": {"resourceVersion": "13"}}),
                    ),
                    event("DELETED", pod("ua", "web-5f6d7c8b9-aaaaa", ID_A, "14")),
                    event(
                        "ERROR",
                        serde_json::json!({"kind": "Status", "code": 410, "reason": "Expired"}),
                    ),
                ],
                hold: false,
            },
            list(
                "20",
                vec![
                    pod("ub", "checkout-5f6d7c8b9-bbbbb", ID_B, "11"),
                    pod("uc", "billing-5f6d7c8b9-ccccc", ID_C, "19"),
                ],
            ),
            Reply::Watch {
                events: vec![],
                hold: true,
            },
        ],
    )
    .await;
    until("the second watch", || api.requests().len() >= 4).await;
    let requests = api.requests();
    let selector = "/api/v1/pods?fieldSelector=spec.nodeName%3Dtest-node";
    assert_eq!(requests[0], selector, "{requests:?}");
    for (request, version) in [(&requests[1], "10"), (&requests[3], "20")] {
        assert!(
            request.starts_with(selector)
                && request.contains("&watch=1")
                && request.contains("&allowWatchBookmarks=true")
                && request.contains(&format!("&resourceVersion={version}&")),
            "{request}"
        );
    }
    assert_eq!(requests[2], selector, "re-listed after 410");
    assert_eq!(
        metric(
            &registry,
            "tokentap_kubernetes_watch_errors_total{reason=\"expired\"}"
        ),
        1.0
    );
    assert_eq!(metric(&registry, "tokentap_kubernetes_api_up"), 1.0);
    assert_eq!(metric(&registry, "tokentap_kubernetes_pods"), 2.0);

    // Labels fill in for a process whose context was read before the API answered.
    let (service, k8s) = resolver.identify(processes.get(100, b""));
    let k8s = k8s.expect("pod of container B");
    assert_eq!(service, "checkout");
    assert_eq!(
        (
            k8s.namespace.as_str(),
            k8s.pod.as_str(),
            k8s.container.as_str(),
            k8s.workload_kind.as_str(),
            k8s.workload_name.as_str()
        ),
        (
            "shop",
            "checkout-5f6d7c8b9-bbbbb",
            "app",
            "Deployment",
            "checkout"
        )
    );
    let (service, k8s) = resolver.identify(processes.get(101, b""));
    assert_eq!(service, "billing-worker", "OTEL_SERVICE_NAME wins");
    assert_eq!(k8s.map(|w| w.workload_name).as_deref(), Some("billing"));
    // The deleted pod A still resolves until its series expire.
    assert!(pods.lock().expect("lock").lookup(ID_A).is_some());

    // The API server goes away mid-watch: counted, the index kept.
    api.stop().await;
    until("the outage counted", || {
        metric(&registry, "tokentap_kubernetes_api_up") == 0.0
    })
    .await;
    assert!(resolver.identify(processes.get(100, b"")).1.is_some());

    // It comes back with pod C gone: re-listed, C deleted.
    let api = FakeApi::start(
        port,
        vec![
            list(
                "30",
                vec![pod("ub", "checkout-5f6d7c8b9-bbbbb", ID_B, "11")],
            ),
            Reply::Watch {
                events: vec![],
                hold: true,
            },
        ],
    )
    .await;
    until("recovered", || {
        metric(&registry, "tokentap_kubernetes_api_up") == 1.0
            && metric(&registry, "tokentap_kubernetes_pods") == 1.0
    })
    .await;
    until("the watch resumed", || api.requests().len() >= 2).await;
    assert!(api.requests()[1].contains("&resourceVersion=30&"));
    client.abort();
    api.stop().await;
    let _ = std::fs::remove_dir_all(proc_root);
}

/// In-cluster mode: https verified with the service account's CA, the token sent and re-read
/// for every connection (bound tokens rotate), a CA that does not verify counted as `tls`.
#[tokio::test]
async fn https_with_the_service_accounts_ca_and_rotating_token() {
    let (ca_pem, server_config) = crate::tls_client::test_support::tls_server_config();
    let (wrong_ca, _) = crate::tls_client::test_support::tls_server_config();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let heads = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = heads.clone();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
    let server = tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let Ok(mut tls) = acceptor.accept(sock).await else {
                continue;
            };
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match tls.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let head = String::from_utf8_lossy(&head).into_owned();
            let body = if head.contains("watch=1") {
                // One event, then the watch ends (the client resumes it on a new connection).
                let line = format!(
                    "{}\n",
                    event("ADDED", pod("ub", "checkout-5f6d7c8b9-b", ID_B, "6"))
                );
                format!("{:x}\r\n{line}\r\n0\r\n\r\n", line.len())
            } else {
                let list = serde_json::json!({"kind": "PodList", "metadata": {"resourceVersion": "5"}, "items": []})
                    .to_string();
                format!("{:x}\r\n{list}\r\n0\r\n\r\n", list.len())
            };
            seen.lock().expect("lock").push(head);
            let _ = tls
                .write_all(
                    format!("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n{body}")
                        .as_bytes(),
                )
                .await;
            let _ = tls.shutdown().await;
        }
    });

    let account = std::env::temp_dir().join(format!("tokentap-sa-{}", std::process::id()));
    std::fs::create_dir_all(&account).expect("dir");
    std::fs::write(account.join("ca.crt"), &wrong_ca).expect("ca");
    std::fs::write(account.join("token"), "token-one\n").expect("token");
    let registry = Registry::new();
    let pods: SharedPods = Arc::new(Mutex::new(PodIndex::new(Duration::from_secs(60))));
    let config = ApiConfig {
        url: ApiUrl::parse(&format!("https://127.0.0.1:{port}")).expect("url"),
        node_name: NODE.into(),
        service_account: account.clone(),
        timing: Timing {
            backoff_min: Duration::from_millis(20),
            backoff_max: Duration::from_millis(100),
            ..Timing::default()
        },
    };
    let client = tokio::spawn(run(config, pods.clone(), ApiMetrics::new(&registry)));
    until("a CA that does not verify is counted", || {
        metric(
            &registry,
            "tokentap_kubernetes_watch_errors_total{reason=\"tls\"}",
        ) >= 1.0
    })
    .await;
    assert!(
        heads.lock().expect("lock").is_empty(),
        "nothing sent unverified"
    );

    std::fs::write(account.join("ca.crt"), &ca_pem).expect("ca");
    until("the pod from the watch", || {
        pods.lock().expect("lock").lookup(ID_B).is_some()
    })
    .await;
    assert!(
        heads.lock().expect("lock")[0].contains("authorization: Bearer token-one\r\n"),
        "{:?}",
        heads.lock().expect("lock")[0]
    );
    std::fs::write(account.join("token"), "token-two\n").expect("token");
    until("the rotated token", || {
        heads
            .lock()
            .expect("lock")
            .iter()
            .any(|h| h.contains("authorization: Bearer token-two\r\n"))
    })
    .await;
    client.abort();
    server.abort();
    let _ = std::fs::remove_dir_all(account);
}
