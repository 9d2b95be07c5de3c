//! End-to-end: containers of one image share its layers, and the agent hooks a shared library
//! once.
//!
//! Three overlayfs mounts stand in for three containers' root filesystems: `a` and `b` share
//! one lower layer holding copies of the libssl and libcrypto that Python loads (two pods of
//! one image), and `c` has the same files in its own upper layer (an image that ships its own
//! copy). A Python client in each loads libssl through its overlay (`LD_LIBRARY_PATH`) and
//! makes one chat completion.
//!
//! The kernel puts a uprobe on the file under the overlay, so `a` and `b` map one inode under
//! two overlay devices. Keyed by the overlay's device, the agent attached twice, and every call
//! ran the programs twice: the second return found its arguments taken and counted
//! `tokentap_events_lost_total{reason="call_args_missing"}`, a loss that did not happen, once
//! per call per extra container. Now: two attachments for the three (the shared layer file and
//! `c`'s own), every call counted once with the tokens the client saw, nothing counted lost.
//!
//! Needs root (mount, real eBPF) and a kernel with overlayfs. Run with `cargo xtask test`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::Duration,
};

use serde_json::Value;
use tokentap_tests::{
    harness::{Agent, privileged_tests_enabled, python},
    mock_provider::MockProvider,
    prom::Sample,
    tls_stacks::{agent_addr, scrape},
};

/// Overlay mounts over scratch directories, unmounted and removed on drop.
struct Overlays {
    dir: PathBuf,
    mounts: Vec<PathBuf>,
}

impl Overlays {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("tokentap-overlay-e2e-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let libs = python_ssl_libraries();
        let shared = dir.join("image-layer/lib");
        fs::create_dir_all(&shared).expect("scratch dir");
        let own = dir.join("c-upper/lib");
        fs::create_dir_all(&own).expect("scratch dir");
        for lib in &libs {
            let name = lib.file_name().expect("file name");
            fs::copy(lib, shared.join(name)).expect("copy a library into the shared layer");
            fs::copy(lib, own.join(name)).expect("copy a library into c's upper layer");
        }
        let mut overlays = Self {
            dir,
            mounts: Vec::new(),
        };
        for name in ["a", "b", "c"] {
            let d = &overlays.dir;
            let upper = if name == "c" {
                d.join("c-upper")
            } else {
                d.join(format!("{name}-upper"))
            };
            let (work, merged) = (d.join(format!("{name}-work")), d.join(name));
            for p in [&upper, &work, &merged] {
                fs::create_dir_all(p).expect("scratch dir");
            }
            let options = format!(
                "lowerdir={},upperdir={},workdir={}",
                d.join("image-layer").display(),
                upper.display(),
                work.display()
            );
            let status = Command::new("mount")
                .args(["-t", "overlay", "overlay", "-o", &options])
                .arg(&merged)
                .status()
                .expect("run mount");
            assert!(
                status.success(),
                "mount -t overlay failed: this test needs root and overlayfs"
            );
            overlays.mounts.push(merged);
        }
        overlays
    }

    fn lib_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name).join("lib")
    }
}

impl Drop for Overlays {
    fn drop(&mut self) {
        for m in &self.mounts {
            let _ = Command::new("umount").arg(m).status();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The libssl and libcrypto files the test Python's `ssl` module maps.
fn python_ssl_libraries() -> Vec<PathBuf> {
    let out = Command::new(python())
        .args(["-c", "import ssl; print(open('/proc/self/maps').read())"])
        .output()
        .expect("run python3");
    let maps = String::from_utf8_lossy(&out.stdout);
    let mut libs: Vec<PathBuf> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| p.contains("libssl.so") || p.contains("libcrypto.so"))
        .map(PathBuf::from)
        .collect();
    libs.sort();
    libs.dedup();
    assert_eq!(
        libs.len(),
        2,
        "python3's ssl module must map one libssl and one libcrypto: {libs:?}"
    );
    libs
}

/// One chat completion through the libssl in `lib_dir`: (pid, output tokens the client got).
fn call_through(mock: &MockProvider, lib_dir: &Path, model: &str) -> (u32, u64) {
    const CLIENT: &str = r#"
import http.client, json, os, ssl, sys, time
port, model, lib_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
# `import ssl` loaded the overlay's libssl; the agent hooks it (or finds it hooked) when the
# loader reports the load. Give that a moment.
time.sleep(1.0)
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx)
body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]})
conn.request("POST", "/v1/chat/completions", body, {"Host": "api.openai.com",
    "Content-Type": "application/json", "Authorization": "Bearer sk-tokentap-test"})
resp = conn.getresponse()
usage = json.loads(resp.read())["usage"]
maps = [l.split()[5] for l in open("/proc/self/maps") if "libssl.so" in l]
assert maps and maps[0].startswith(lib_dir), maps
print(json.dumps({"pid": os.getpid(), "status": resp.status, "output": usage["completion_tokens"]}))
"#;
    let out = Command::new(python())
        .env("LD_LIBRARY_PATH", lib_dir)
        .args(["-c", CLIENT, &mock.port().to_string(), model])
        .arg(lib_dir)
        .output()
        .expect("run the client");
    assert!(
        out.status.success(),
        "client through {} failed: {}",
        lib_dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("client JSON");
    assert_eq!(v["status"], 200);
    (
        v["pid"].as_u64().expect("pid") as u32,
        v["output"].as_u64().expect("output tokens"),
    )
}

fn gauge(samples: &[Sample], name: &str) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .sum()
}

fn lost_call_args(samples: &[Sample]) -> f64 {
    samples
        .iter()
        .filter(|s| {
            s.name == "tokentap_events_lost_total" && s.label("reason") == "call_args_missing"
        })
        .map(|s| s.value)
        .sum()
}

#[test]
fn containers_sharing_an_image_layer_share_one_attachment() {
    if !privileged_tests_enabled() {
        return;
    }
    let overlays = Overlays::new();
    let mock = MockProvider::start().expect("start the mock provider");
    let dir = std::env::temp_dir().join(format!("tokentap-overlay-log-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("log dir");
    let log = dir.join("exchanges.jsonl");
    let agent = Agent::start(&[
        "agent",
        "--listen",
        "127.0.0.1:0",
        "--log-exchanges",
        log.to_str().expect("utf-8 path"),
    ])
    .expect("start the agent");
    let addr = agent_addr(&agent).expect("agent address");
    let (_, before) = scrape(&addr).expect("scrape");
    let attached_before = gauge(&before, "tokentap_tls_libraries_attached");

    let mut truth = Vec::new();
    for name in ["a", "b", "c"] {
        let model = format!("gpt-4o-mini-overlay-{name}");
        let (pid, output) = call_through(&mock, &overlays.lib_dir(name), &model);
        truth.push((pid, model, output));
    }
    // The agent brings its metrics up to date four times a second.
    thread::sleep(Duration::from_secs(1));
    let (text, after) = scrape(&addr).expect("scrape");
    let stderr = agent.stderr();
    agent.stop().expect("the agent stops cleanly");

    let attached = gauge(&after, "tokentap_tls_libraries_attached") - attached_before;
    assert_eq!(
        attached, 2.0,
        "one attachment for the layer file a and b share, one for c's own copy:\n{stderr}"
    );
    assert_eq!(
        lost_call_args(&after),
        0.0,
        "no call ran the programs twice:\n{text}"
    );
    let records: Vec<Value> = fs::read_to_string(&log)
        .expect("exchange log")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    for (pid, model, output) in &truth {
        let mine: Vec<&Value> = records
            .iter()
            .filter(|r| r["pid"].as_u64() == Some(u64::from(*pid)))
            .collect();
        assert_eq!(mine.len(), 1, "one record for {model}: {mine:?}");
        assert_eq!(mine[0]["request_model"], model.as_str());
        assert_eq!(
            mine[0]["tokens"]["output"].as_u64(),
            Some(*output),
            "{model}: the tokens the client saw"
        );
        let calls: f64 = after
            .iter()
            .filter(|s| {
                s.name == "tokentap_requests_total" && s.label("gen_ai_request_model") == model
            })
            .map(|s| s.value)
            .sum();
        assert_eq!(calls, 1.0, "{model} counted once");
    }
    let _ = fs::remove_dir_all(&dir);
}
