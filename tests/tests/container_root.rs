//! End-to-end: a process in a fake container root (a chroot holding its own copies of
//! `openssl`, `libssl.so.3` and their dependencies, at the very paths the host uses) is hooked
//! through its own files, never through the host's files of the same name.
//!
//! The chrooted process maps its copy of `/lib/x86_64-linux-gnu/libssl.so.3`, a path that also
//! exists on the host. An agent that resolved the name against the host's files would find
//! the host's libssl, which it already hooks from the standard directories, and hook nothing
//! new: the client's TLS calls (into the copy, another inode) would go unseen, since uprobes
//! belong to an inode. The test checks that a libssl is newly hooked for that pid and that the
//! client's traffic is captured byte for byte.
//!
//! Needs root (eBPF, chroot). Run with `cargo xtask test`.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use tokentap_tests::{
    harness::{Capture, privileged_tests_enabled},
    tls_server::TlsTestServer,
};

/// `ldd`'s list of the shared objects `binary` needs (absolute paths).
fn shared_objects(binary: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd").arg(binary).output().expect("ldd runs");
    assert!(out.status.success(), "ldd {}", binary.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with('/'))
                .map(PathBuf::from)
        })
        .collect()
}

/// Copies `file` to the same absolute path beneath `root` (a new inode).
fn copy_into(root: &Path, file: &Path) -> PathBuf {
    let dest = root.join(file.strip_prefix("/").expect("absolute"));
    std::fs::create_dir_all(dest.parent().expect("parent")).expect("mkdir");
    std::fs::copy(file, &dest).unwrap_or_else(|e| panic!("copy {}: {e}", file.display()));
    dest
}

fn inode(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).expect("stat").ino()
}

#[test]
fn a_container_process_is_hooked_through_its_own_libssl_not_the_hosts() {
    if !privileged_tests_enabled() {
        return;
    }
    let openssl = Path::new("/usr/bin/openssl");
    assert!(
        openssl.exists(),
        "the openssl command line tool is needed (apt-get install openssl)"
    );
    let root = std::env::temp_dir().join(format!("tokentap-chroot-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    copy_into(&root, openssl);
    let objects = shared_objects(openssl);
    let host_libssl = objects
        .iter()
        .find(|p| p.file_name().is_some_and(|n| n == "libssl.so.3"))
        .expect("openssl links libssl.so.3")
        .clone();
    for object in &objects {
        copy_into(&root, object);
    }
    let container_libssl = root.join(host_libssl.strip_prefix("/").expect("absolute"));
    assert_ne!(inode(&host_libssl), inode(&container_libssl));

    let server = TlsTestServer::start(&["localhost"]).expect("start the TLS test server");
    std::fs::copy(server.ca_file(), root.join("ca.pem")).expect("CA into the root");
    // The chroot has no /etc/ssl or /dev: an empty configuration file.
    std::fs::write(root.join("openssl.cnf"), "").expect("config into the root");
    let capture = Capture::start(&[]).expect("start tokentap capture");

    let mut client = Command::new("chroot")
        .arg(&root)
        .args([
            "/usr/bin/openssl",
            "s_client",
            "-connect",
            &format!("127.0.0.1:{}", server.port()),
            "-servername",
            "localhost",
            "-CAfile",
            "/ca.pem",
            "-verify_return_error",
            "-quiet",
            "-ign_eof",
        ])
        .env("OPENSSL_CONF", "/openssl.cnf")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chroot runs openssl s_client");
    let pid = client.id();
    // The chroot's loader is a copy too, so the host loader's hook does not announce its
    // library loads: the agent finds the copy by the scans that follow the exec. s_client
    // handshakes at once and then waits for stdin, so the request is written once the copy
    // is hooked (the handshake carries no plaintext).
    // The maps of a chrooted process name its files from the reader's root
    // (`/tmp/…/lib/x86_64-linux-gnu/libssl.so.3`); a namespaced container's name them from
    // its own. Either way, a `(pid N)` line for libssl means a file other than the host's
    // (already hooked from the standard directories, so not hooked again) was attached.
    let hooked = format!("libssl.so.3 (pid {pid}): SSL_read");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let hooked_line = |log: &str| {
        log.lines()
            .any(|l| l.contains("hooked ") && l.contains(&hooked))
    };
    while !hooked_line(&capture.agent_log()) {
        assert!(
            std::time::Instant::now() < deadline,
            "expected `{hooked}` in the agent log within 10 s:\n{}",
            capture.agent_log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    client
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"GET /bytes/3000?seed=5&m=chroot HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .expect("send the request");
    let out = client.wait_with_output().expect("client ends");
    assert!(
        out.status.success(),
        "openssl s_client in the chroot failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records = server.wait_closed(1, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    let log = capture.finish().expect("capture output");
    let _ = std::fs::remove_dir_all(&root);

    // The copy was hooked for this pid (above): the host's file of the same name was hooked
    // already (standard directories), so a host-side resolution would have added nothing.
    assert!(hooked_line(&log.agent_log));
    // And its calls were seen: the probes sit on the container's inode.
    let rec = records
        .iter()
        .find(|r| r.received.windows(8).any(|w| w == b"m=chroot"))
        .expect("the server saw the chrooted client's request");
    let conns = log.connections_of(u64::from(pid));
    assert_eq!(
        conns.len(),
        1,
        "one captured connection of the chrooted pid {pid}"
    );
    let (w, r) = conns.values().next().expect("one");
    assert_eq!(
        w.contiguous().expect("write stream without gaps"),
        rec.received,
        "what the client wrote"
    );
    assert_eq!(
        r.contiguous().expect("read stream without gaps"),
        rec.sent,
        "what the client read"
    );
}
