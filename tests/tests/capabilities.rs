//! The DaemonSet's capability set is enough, and each capability in it is needed: the agent
//! runs as root with exactly the capabilities listed in deploy/kubernetes/base/daemonset.yaml
//! (`setpriv --bounding-set`, as a container runtime does), and must capture an LLM call made
//! by another user's process through its own copy of libssl in a directory only that user may
//! enter (as an application container's libssl is, seen from the node). Then once with each
//! capability dropped: the agent must fail at start with a message naming what it needs, or
//! miss that process and say why in its log.
//!
//! Needs root. Run with `cargo xtask test`.

use std::{
    ffi::CString,
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::Duration,
};

use tokentap_tests::harness::{Agent, http_get, privileged_tests_enabled, python};
use tokentap_tests::mock_provider::MockProvider;
use tokentap_tests::prom;

const DAEMONSET: &str = "deploy/kubernetes/base/daemonset.yaml";
/// The unprivileged user the observed client runs as.
const NOBODY: u32 = 65534;

/// `securityContext.capabilities.add` of the DaemonSet, e.g. `["SYS_ADMIN", ...]`.
fn manifest_capabilities() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(DAEMONSET);
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut in_capabilities = false;
    for line in text.lines().map(str::trim) {
        if line == "capabilities:" {
            in_capabilities = true;
        } else if in_capabilities && let Some(list) = line.strip_prefix("add:") {
            let list = list.trim().trim_start_matches('[').trim_end_matches(']');
            return list
                .split(',')
                .map(|c| c.trim().trim_matches('"').to_owned())
                .filter(|c| !c.is_empty())
                .collect();
        }
    }
    panic!("{DAEMONSET}: no `capabilities: add: [...]` (keep it a one-line flow list)");
}

/// `setpriv` bounding set for `caps` (names as in Kubernetes: `SYS_ADMIN`).
fn bounding_set(caps: &[&str]) -> String {
    let mut set = String::from("-all");
    for c in caps {
        set.push_str(",+");
        set.push_str(&c.to_ascii_lowercase());
    }
    set
}

/// A directory only `NOBODY` may enter, holding copies of the libssl and libcrypto that
/// Python loads, so that the agent can only reach them through that process.
struct PrivateLibs {
    root: PathBuf,
    lib: PathBuf,
}

impl PrivateLibs {
    fn new() -> Self {
        let out = Command::new(python())
            .args(["-c", "import ssl; print(open('/proc/self/maps').read())"])
            .output()
            .expect("run python3");
        let maps = String::from_utf8_lossy(&out.stdout).into_owned();
        let find = |name: &str| {
            maps.lines()
                .filter_map(|l| l.split_whitespace().nth(5))
                .find(|p| p.ends_with(name))
                .map(PathBuf::from)
                .unwrap_or_else(|| panic!("python3's ssl module does not map {name}"))
        };
        let root = std::env::temp_dir().join(format!("tokentap-caps-{}", std::process::id()));
        let lib = root.join("lib");
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&lib).expect("create the private lib dir");
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).expect("chmod");
        for name in ["libssl.so.3", "libcrypto.so.3"] {
            fs::copy(find(name), lib.join(name)).expect("copy the library");
            chown(&lib.join(name));
        }
        chown(&lib);
        fs::set_permissions(&lib, fs::Permissions::from_mode(0o700)).expect("chmod 0700");
        Self { root, lib }
    }
}

impl Drop for PrivateLibs {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

fn chown(path: &Path) {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).expect("no NUL in path");
    // SAFETY: a valid NUL-terminated path.
    let rc = unsafe { libc::chown(c.as_ptr(), NOBODY, NOBODY) };
    assert_eq!(rc, 0, "chown {}", path.display());
}

/// One chat completion to the mock as user `NOBODY` through the private libssl; returns the
/// client's pid after checking that it used that copy.
fn call_as_nobody(mock: &MockProvider, libs: &PrivateLibs, model: &str) -> u32 {
    const CLIENT: &str = r#"
import http.client, json, os, ssl, sys, time
port, model = int(sys.argv[1]), sys.argv[2]
# `import ssl` loaded the private libssl; the agent hooks it when the loader reports the load
# (a rescan of this pid). Calls made before that are missed by design, so give it a moment.
time.sleep(1.0)
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx)
body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]})
conn.request("POST", "/v1/chat/completions", body, {"Host": "api.openai.com",
    "Content-Type": "application/json", "Authorization": "Bearer sk-tokentap-test"})
resp = conn.getresponse()
resp.read()
libssl = [l.split()[5] for l in open("/proc/self/maps") if "libssl.so" in l]
print(os.getpid(), resp.status, libssl[0])
"#;
    let out = Command::new("setpriv")
        .args([
            "--reuid",
            &NOBODY.to_string(),
            "--regid",
            &NOBODY.to_string(),
            "--clear-groups",
        ])
        .arg("env")
        .arg(format!("LD_LIBRARY_PATH={}", libs.lib.display()))
        .arg(python())
        .args(["-c", CLIENT, &mock.port().to_string(), model])
        .output()
        .expect("run the client as nobody");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "client failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fields: Vec<&str> = stdout.split_whitespace().collect();
    assert_eq!(fields.get(1), Some(&"200"), "the mock answered: {stdout}");
    assert!(
        fields
            .get(2)
            .is_some_and(|p| p.starts_with(libs.lib.to_str().unwrap_or("?"))),
        "the client must load the private libssl copy: {stdout}"
    );
    fields[0].parse().expect("client pid")
}

/// Calls of `model` in the agent's /metrics.
fn calls_seen(agent: &Agent, model: &str) -> f64 {
    let addr = agent
        .stderr()
        .lines()
        .find_map(|l| l.split("http://").nth(1))
        .map(|a| a.trim().to_owned())
        .expect("the agent logs its listen address");
    let (status, ready) = http_get(&addr, "/readyz").expect("GET /readyz");
    assert_eq!(status, 200, "/readyz: {ready}");
    // The agent brings its metrics up to date four times a second.
    thread::sleep(Duration::from_secs(1));
    let (_, text) = http_get(&addr, "/metrics").expect("scrape /metrics");
    prom::parse(&text)
        .expect("Prometheus text")
        .iter()
        .filter(|s| s.name == "tokentap_requests_total" && s.label("gen_ai_request_model") == model)
        .map(|s| s.value)
        .sum()
}

fn start(caps: &[&str]) -> anyhow::Result<Agent> {
    let set = bounding_set(caps);
    Agent::start_under(
        &["setpriv", "--bounding-set", &set, "--"],
        &["agent", "--listen", "127.0.0.1:0"],
    )
}

#[test]
fn manifest_capabilities_are_enough_and_each_is_needed() {
    if !privileged_tests_enabled() {
        return;
    }
    let caps = manifest_capabilities();
    let caps: Vec<&str> = caps.iter().map(String::as_str).collect();
    assert!(!caps.is_empty());
    let mock = MockProvider::start().expect("start the mock provider");
    let libs = PrivateLibs::new();

    // Exactly the manifest's set: the other user's call is captured.
    let agent = start(&caps).expect("the agent starts with the manifest's capabilities");
    let model = "gpt-4o-mini-caps-all";
    call_as_nobody(&mock, &libs, model);
    let seen = calls_seen(&agent, model);
    agent.stop().expect("the agent stops cleanly");
    assert_eq!(
        seen, 1.0,
        "with {caps:?} the call of another user's process is captured"
    );

    for dropped in &caps {
        let fewer: Vec<&str> = caps.iter().copied().filter(|c| c != dropped).collect();
        let model = format!("gpt-4o-mini-caps-no-{}", dropped.to_ascii_lowercase());
        match start(&fewer) {
            Err(e) => {
                let e = e.to_string();
                assert!(
                    e.contains("needs CAP_SYS_ADMIN"),
                    "without {dropped} the agent must say what it needs: {e}"
                );
                eprintln!(
                    "without {dropped}: refuses to start: {}",
                    e.lines().last().unwrap_or("")
                );
            }
            Ok(agent) => {
                let pid = call_as_nobody(&mock, &libs, &model);
                let seen = calls_seen(&agent, &model);
                let log = agent.stderr();
                agent.stop().expect("the agent stops cleanly");
                assert_eq!(
                    seen, 0.0,
                    "without {dropped} the call was still captured: it is not needed"
                );
                let why = format!("pid {pid}: Permission denied");
                assert!(
                    log.contains(&why),
                    "without {dropped} the log must say `{why}`:\n{log}"
                );
                eprintln!("without {dropped}: misses the other user's process and logs `{why}`");
            }
        }
    }
}
