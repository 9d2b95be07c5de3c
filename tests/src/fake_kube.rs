//! A fake Kubernetes API server for end-to-end tests: answers the pod list and holds watch
//! streams open, so a test can add and delete pods while the agent watches.
//!
//! Plain HTTP on loopback (the agent sends no token over http). Only what the agent asks is
//! served: `GET /api/v1/pods?...` (a list, or a chunked watch with `watch=1`).

use std::{
    io::{BufRead, BufReader, Write},
    net::{TcpListener, TcpStream},
    sync::{Arc, Mutex},
    thread,
};

use serde_json::{Value, json};

#[derive(Default)]
struct State {
    pods: Vec<Value>,
    version: u64,
    watchers: Vec<TcpStream>,
    requests: Vec<String>,
}

pub struct FakeKube {
    port: u16,
    state: Arc<Mutex<State>>,
}

impl FakeKube {
    pub fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(Mutex::new(State {
            version: 100,
            ..State::default()
        }));
        let shared = state.clone();
        thread::spawn(move || {
            for sock in listener.incoming().map_while(Result::ok) {
                let shared = shared.clone();
                thread::spawn(move || serve(sock, &shared));
            }
        });
        Ok(Self { port, state })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Request targets received so far.
    pub fn requests(&self) -> Vec<String> {
        self.state
            .lock()
            .map(|s| s.requests.clone())
            .unwrap_or_default()
    }

    /// Adds a pod (sent to open watches as ADDED).
    pub fn add(&self, mut pod: Value) {
        self.change("ADDED", &mut pod, |s, p| s.pods.push(p.clone()));
    }

    /// Deletes the pod with this uid (sent to open watches as DELETED).
    pub fn delete(&self, uid: &str) {
        let Ok(s) = self.state.lock() else { return };
        let Some(mut pod) = s.pods.iter().find(|p| p["metadata"]["uid"] == uid).cloned() else {
            return;
        };
        drop(s);
        self.change("DELETED", &mut pod, |s, _| {
            s.pods.retain(|p| p["metadata"]["uid"] != uid);
        });
    }

    fn change(&self, kind: &str, pod: &mut Value, apply: impl FnOnce(&mut State, &Value)) {
        let Ok(mut s) = self.state.lock() else { return };
        s.version += 1;
        pod["metadata"]["resourceVersion"] = json!(s.version.to_string());
        apply(&mut s, pod);
        let line = format!("{}\n", json!({"type": kind, "object": pod}));
        let chunk = format!("{:x}\r\n{line}\r\n", line.len());
        s.watchers.retain_mut(|w| {
            w.write_all(chunk.as_bytes())
                .and_then(|()| w.flush())
                .is_ok()
        });
    }
}

fn serve(sock: TcpStream, state: &Mutex<State>) {
    let Ok(read_half) = sock.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut first = String::new();
    if reader.read_line(&mut first).is_err() {
        return;
    }
    // The rest of the head.
    let mut line = String::new();
    while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
        line.clear();
    }
    let target = first.split(' ').nth(1).unwrap_or("").to_owned();
    let Ok(mut s) = state.lock() else { return };
    s.requests.push(target.clone());
    let mut sock = sock;
    if !target.starts_with("/api/v1/pods?") {
        let _ = sock.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n");
        return;
    }
    if target.contains("watch=1") {
        let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
        if sock.write_all(head.as_bytes()).is_ok() {
            s.watchers.push(sock);
        }
        return;
    }
    let body = json!({
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": s.version.to_string()},
        "items": s.pods,
    })
    .to_string();
    let _ = write!(
        sock,
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// A pod of Deployment `deployment` (through its ReplicaSet) with one container.
pub fn deployment_pod(
    namespace: &str,
    deployment: &str,
    pod: &str,
    uid: &str,
    node: &str,
    container: &str,
    container_id: &str,
) -> Value {
    let hash = "5f6d7c8b9";
    json!({
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": pod,
            "namespace": namespace,
            "uid": uid,
            "labels": {"app": deployment, "pod-template-hash": hash},
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": format!("{deployment}-{hash}"), "uid": "rs-uid",
                "controller": true, "blockOwnerDeletion": true
            }]
        },
        "spec": {"nodeName": node, "containers": [{"name": container, "image": "python:3"}]},
        "status": {
            "phase": "Running",
            "containerStatuses": [{
                "name": container, "ready": true, "restartCount": 0,
                "containerID": format!("containerd://{container_id}")
            }]
        }
    })
}
