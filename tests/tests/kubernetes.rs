//! End-to-end: workload identity. The real Python SDK client runs inside a cgroup (v2) named
//! like a containerd container's scope; a fake Kubernetes API server reports a pod of
//! Deployment `checkout` with that container id; `tokentap agent --kubernetes on` must label
//! the SDK's calls with the pod and workload, count the tokens the SDK saw, and remove the
//! series once the pod is deleted and `--pod-series-ttl` has passed.
//!
//! Needs root (eBPF, and creating a cgroup) and a cgroup v2 hierarchy. Run with
//! `cargo xtask test`.

use std::{
    fs,
    path::PathBuf,
    time::{Duration, Instant},
};

use tokentap_tests::{
    fake_kube::{FakeKube, deployment_pod},
    genai_check::{FAMILIES, Tolerance, compare_with},
    harness::{Agent, http_get, metric, privileged_tests_enabled},
    mock_provider::MockProvider,
    prom,
    sdk::{run_sdk_client_in, sdk_python},
};

const NODE: &str = "test-node";
const NAMESPACE: &str = "shop";
const DEPLOYMENT: &str = "checkout";
const POD: &str = "checkout-5f6d7c8b9-x2x4q";
const POD_UID: &str = "0b6c3d0e-7a1f-4c55-9a43-1f2e3d4c5b6a";
const CONTAINER: &str = "app";
/// Seconds after the deletion the series go (the agent checks every 10 s).
const TTL: u64 = 2;

/// A cgroup v2 directory `tokentap-e2e-PID.slice/cri-containerd-ID.scope`, removed on drop.
struct ContainerCgroup {
    parent: PathBuf,
    scope: PathBuf,
}

impl ContainerCgroup {
    fn create(container_id: &str) -> Result<Self, String> {
        let root = cgroup2_mount().ok_or(
            "no cgroup v2 hierarchy is mounted (mount -t cgroup2 none /sys/fs/cgroup/unified)",
        )?;
        let parent = root.join(format!("tokentap-e2e-{}.slice", std::process::id()));
        let scope = parent.join(format!("cri-containerd-{container_id}.scope"));
        fs::create_dir_all(&scope)
            .map_err(|e| format!("cannot create the cgroup {}: {e}", scope.display()))?;
        Ok(Self { parent, scope })
    }

    fn procs(&self) -> PathBuf {
        self.scope.join("cgroup.procs")
    }
}

impl Drop for ContainerCgroup {
    fn drop(&mut self) {
        // The client has exited (its processes left the cgroup), so the directories can go;
        // a process still exiting may hold them a moment.
        for _ in 0..50 {
            let _ = fs::remove_dir(&self.scope);
            if fs::remove_dir(&self.parent).is_ok() || !self.parent.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("could not remove the test cgroup {}", self.parent.display());
    }
}

/// Where the cgroup2 filesystem is mounted (`/sys/fs/cgroup`, or `.../unified` on hybrid hosts).
fn cgroup2_mount() -> Option<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split(' ').next()? != "cgroup2" {
            return None;
        }
        left.split(' ').nth(4).map(PathBuf::from)
    })
}

/// A container id that no real container has: 64 hex digits from the pid and the time.
fn container_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{:032x}{:024x}{:08x}",
        nanos,
        0x7e57_u64,
        std::process::id()
    )
}

fn scrape(addr: &str) -> (String, Vec<prom::Sample>) {
    let (status, text) = http_get(addr, "/metrics").expect("scrape /metrics");
    assert_eq!(status, 200);
    let samples = prom::parse(&text).expect("/metrics is Prometheus text");
    (text, samples)
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn is_genai(name: &str) -> bool {
    FAMILIES.iter().any(|f| {
        name == *f
            || name
                .strip_prefix(f)
                .is_some_and(|rest| ["_bucket", "_sum", "_count"].contains(&rest))
    })
}

#[test]
fn sdk_calls_carry_their_pod_and_workload() {
    if !privileged_tests_enabled() {
        return;
    }
    let python = sdk_python().expect(
        "the SDK venv is missing: `cargo xtask setup` builds target/e2e-venv (or set TOKENTAP_SDK_PYTHON)",
    );
    let id = container_id();
    let cgroup = ContainerCgroup::create(&id).unwrap_or_else(|e| panic!("{e}"));
    let kube = FakeKube::start().expect("start the fake Kubernetes API");
    kube.add(deployment_pod(
        NAMESPACE, DEPLOYMENT, POD, POD_UID, NODE, CONTAINER, &id,
    ));
    let mock = MockProvider::start().expect("start the mock provider");
    let ttl = TTL.to_string();
    let url = kube.url();
    let agent = Agent::start(&[
        "--kubernetes",
        "on",
        "--kubernetes-api",
        &url,
        "--node-name",
        NODE,
        "--pod-series-ttl",
        &ttl,
        "agent",
        "--listen",
        "127.0.0.1:0",
    ])
    .expect("start tokentap agent");
    let addr = agent
        .stderr()
        .lines()
        .find_map(|l| l.split("http://").nth(1))
        .map(|a| a.trim().to_owned())
        .expect("the agent logs its listen address");
    wait_for(
        "the agent to list the pods",
        Duration::from_secs(20),
        || metric(&scrape(&addr).0, "tokentap_kubernetes_pods") == Some(1.0),
    );
    let requests = kube.requests();
    assert!(
        requests[0].contains("fieldSelector=spec.nodeName%3Dtest-node"),
        "only this node's pods: {requests:?}"
    );

    let scenarios = [
        "openai.chat",
        "openai.chat.stream",
        "anthropic.messages.stream",
        "openai.chat.429",
    ];
    let (report, _) = run_sdk_client_in(&python, &mock, &scenarios, Some(&cgroup.procs()))
        .expect("the SDK client runs in the container's cgroup");
    mock.wait_requests(report.calls.len(), Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(1));

    let (text, samples) = scrape(&addr);
    let client: Vec<&prom::Sample> = samples
        .iter()
        .filter(|s| is_genai(&s.name) && s.label("process_executable_name").starts_with("python"))
        .collect();
    assert!(!client.is_empty(), "no series of the SDK client:\n{text}");
    for s in &client {
        for (label, want) in [
            ("k8s_namespace_name", NAMESPACE),
            ("k8s_pod_name", POD),
            ("k8s_container_name", CONTAINER),
            ("k8s_workload_name", DEPLOYMENT),
            ("k8s_workload_kind", "Deployment"),
            ("service_name", DEPLOYMENT),
        ] {
            assert_eq!(s.label(label), want, "{label} of {}", s.series());
        }
    }
    // Token sums and counts equal the SDK's own view. Timing precision is llm_metrics.rs's
    // subject: here the first call also pays the connection's set-up on a busy machine, so
    // times only have to be plausible.
    let loose = Tolerance {
        abs_s: 0.5,
        rel: 0.5,
    };
    let comparison = compare_with(&report.calls, &samples, loose);
    assert!(comparison.ok(), "{}", comparison.message(&text));
    let input: u64 = report.calls.iter().filter_map(|c| c.tokens().input).sum();
    let counted: f64 = samples
        .iter()
        .filter(|s| {
            s.name == "tokentap_tokens_total"
                && s.label("gen_ai_token_type") == "input"
                && s.label("k8s_pod_name") == POD
        })
        .map(|s| s.value)
        .sum();
    assert!(input > 0, "the scenarios report input tokens");
    assert_eq!(counted, input as f64, "input tokens of the pod");
    let sets_before = metric(&text, "tokentap_metric_label_sets").unwrap_or(0.0);

    // The pod goes: its series stay for the TTL, then disappear, and free the label budget.
    kube.delete(POD_UID);
    wait_for(
        "the deleted pod's series to expire",
        Duration::from_secs(TTL + 25),
        || !scrape(&addr).0.contains(&format!("k8s_pod_name=\"{POD}\"")),
    );
    let (text, _) = scrape(&addr);
    let sets_after = metric(&text, "tokentap_metric_label_sets").unwrap_or(0.0);
    assert!(
        sets_after < sets_before,
        "label sets {sets_before} → {sets_after}"
    );
    assert_eq!(metric(&text, "tokentap_kubernetes_pods"), Some(0.0));
    assert_eq!(metric(&text, "tokentap_kubernetes_api_up"), Some(1.0));
    agent.stop().expect("the agent stops cleanly");
    drop(cgroup);
}
