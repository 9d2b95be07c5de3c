use std::{os::unix::fs::symlink, path::PathBuf};

use super::*;
use crate::tls_stacks::elf_symbols::SslFlavor;

// A real /proc/net/tcp excerpt (little-endian x86): a listener, an established connection from
// 127.0.0.1:40000 to 127.0.0.1:8443 (inode 1001), one to 93.184.216.34:443 (inode 1002), and a
// TIME_WAIT row.
const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:20FB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 900 1 0000000000000000 100 0 0 10 0
   1: 0100007F:9C40 0100007F:20FB 01 00000000:00000000 00:00000000 00000000     0        0 1001 1 0000000000000000 20 4 30 10 -1
   2: 0A00000A:B2D2 22D8B85D:01BB 01 00000000:00000000 00:00000000 00000000     0        0 1002 1 0000000000000000 20 4 30 10 -1
   3: 0100007F:9C41 0100007F:20FB 06 00000000:00000000 03:00001770 00000000     0        0 0 3 0000000000000000
";

// An IPv6 connection to [2001:db8::1]:443 and a v4-mapped one to 127.0.0.1:8443.
const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:D431 B80D0120000000000000000001000000:01BB 01 00000000:00000000 00:00000000 00000000     0        0 2001 1 0000000000000000 20 4 30 10 -1
   1: 0000000000000000FFFF00000100007F:D432 0000000000000000FFFF00000100007F:20FB 01 00000000:00000000 00:00000000 00000000     0        0 2002 1 0000000000000000 20 4 30 10 -1
";

#[test]
fn parses_established_tcp_rows() {
    let v4 = parse_proc_net_tcp(TCP);
    assert_eq!(
        v4,
        vec![
            TcpEntry {
                inode: 1001,
                remote: "127.0.0.1:8443".parse().expect("addr"),
            },
            TcpEntry {
                inode: 1002,
                remote: "93.184.216.34:443".parse().expect("addr"),
            },
        ]
    );
    let v6 = parse_proc_net_tcp(TCP6);
    assert_eq!(v6[0].remote, "[2001:db8::1]:443".parse().expect("addr"));
    assert_eq!(v6[1].remote, "127.0.0.1:8443".parse().expect("addr"));
    assert!(parse_proc_net_tcp("header\nnot a row\n 0: zz:zz yy 01\n").is_empty());
}

#[test]
fn llm_endpoints_are_port_443_or_provider_ip_literals() {
    let e = LlmEndpoints::from_provider_args(&[
        "127.0.0.1:8443=mock".into(),
        "llm-gw.internal:8443=litellm".into(),
        "[::1]:9000=vllm".into(),
    ]);
    assert!(e.matches(&"127.0.0.1:8443".parse().expect("addr")));
    assert!(e.matches(&"[::1]:9000".parse().expect("addr")));
    assert!(e.matches(&"10.0.0.1:443".parse().expect("addr")));
    assert!(!e.matches(&"10.0.0.1:8443".parse().expect("addr")));
    assert_eq!(
        e.exact.len(),
        2,
        "a host name cannot be matched at the socket layer"
    );
}

fn mapped(path: &str, inode: u64, perms: &str) -> MappedFile {
    MappedFile {
        start: 0x1000 * inode,
        end: 0x1000 * inode + 0x1000,
        perms: perms.into(),
        dev_major: 0xfd,
        dev_minor: 1,
        inode,
        path: PathBuf::from(path),
    }
}

fn info(f: impl FnOnce(&mut ElfTlsInfo)) -> Option<Arc<ElfTlsInfo>> {
    let mut i = ElfTlsInfo::default();
    f(&mut i);
    Some(Arc::new(i))
}

#[test]
fn stacks_from_library_names_and_elf_contents() {
    let maps = vec![
        mapped("/usr/bin/node", 10, "r-xp"),
        mapped("/usr/bin/node", 10, "r--p"),
        mapped("/usr/lib/x86_64-linux-gnu/libssl.so.3", 11, "r-xp"),
        mapped("/usr/lib/x86_64-linux-gnu/libgnutls.so.30", 12, "r-xp"),
        mapped("/usr/lib/x86_64-linux-gnu/libc.so.6", 13, "r-xp"),
        mapped("/opt/app/server", 14, "r-xp"),
        mapped("/usr/lib/x86_64-linux-gnu/libssl3.so", 15, "r-xp"),
        mapped("/opt/stripped", 16, "r-xp"),
        mapped("/opt/boring", 17, "r-xp"),
        mapped("/usr/lib/x86_64-linux-gnu/android/libssl.so.0", 18, "r-xp"),
        mapped("/opt/broken/libssl.so.1.1", 19, "r-xp"),
    ];
    let mut asked = Vec::new();
    let stacks = stacks_in_maps(&maps, |m| {
        asked.push(m.inode);
        match m.inode {
            10 => info(|i| {
                i.ssl_functions = vec![("SSL_read", 1), ("SSL_write", 2)];
                i.flavor = Some(SslFlavor::OpenSsl);
            }),
            14 => info(|i| {
                i.go = true;
                i.go_crypto_tls = true;
            }),
            16 => info(|i| i.stripped_openssl = true),
            11 => info(|i| {
                i.ssl_functions = vec![("SSL_read_ex", 1), ("SSL_write_ex", 2)];
                i.flavor = Some(SslFlavor::OpenSsl);
            }),
            17 | 18 => info(|i| {
                i.ssl_functions = vec![("SSL_read", 1), ("SSL_write", 2)];
                i.flavor = Some(SslFlavor::BoringSsl);
            }),
            // Cannot be opened: a libssl is still hooked by name.
            19 => None,
            _ => info(|_| {}),
        }
    });
    // Known libraries other than libssl are judged by name, without opening them; a libssl's
    // symbols tell OpenSSL's from BoringSSL's.
    assert_eq!(asked, vec![10, 11, 13, 14, 16, 17, 18, 19]);
    let got: Vec<(TlsStack, bool, u64)> = stacks
        .iter()
        .map(|s| (s.stack, s.hookable, s.inode))
        .collect();
    assert_eq!(
        got,
        vec![
            (TlsStack::OpensslStatic, true, 10),
            (TlsStack::OpensslShared, true, 11),
            (TlsStack::Gnutls, false, 12),
            (TlsStack::GoCryptoTls, false, 14),
            (TlsStack::Nss, false, 15),
            (TlsStack::OpensslStatic, false, 16),
            (TlsStack::Boringssl, true, 17),
            (TlsStack::Boringssl, true, 18),
            (TlsStack::OpensslShared, true, 19),
        ]
    );
    assert_eq!(stacks[0].dev, libc::makedev(0xfd, 1));
}

#[test]
fn counts_per_coverage_and_stack() {
    let use_ = |stack, inode, hookable| StackUse {
        stack,
        dev: 1,
        inode,
        path: String::new(),
        hookable,
    };
    let row = |pid, stacks| ProcessCoverage {
        pid,
        executable: "x".into(),
        stacks,
        connections: Connections {
            established: 1,
            to_llm_endpoints: Vec::new(),
        },
    };
    let rows = vec![
        row(1, vec![use_(TlsStack::OpensslShared, 11, true)]),
        row(2, vec![use_(TlsStack::OpensslShared, 11, true)]),
        row(
            3,
            vec![
                use_(TlsStack::OpensslShared, 11, true),
                use_(TlsStack::Gnutls, 12, false),
            ],
        ),
        row(4, vec![]),
        // Hookable, but the agent has not attached it (yet): unsupported in the agent's view.
        row(5, vec![use_(TlsStack::OpensslStatic, 13, true)]),
    ];
    let counts = count(&rows, |s| s.inode == 11);
    let expected: CoverageCounts = [
        ((Coverage::Hooked, Some(TlsStack::OpensslShared)), 3),
        ((Coverage::Unsupported, Some(TlsStack::Gnutls)), 1),
        ((Coverage::Unsupported, Some(TlsStack::OpensslStatic)), 1),
        ((Coverage::NoTls, None), 1),
    ]
    .into_iter()
    .collect();
    assert_eq!(counts, expected);
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tokentap-cov-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// A fake `/proc` with three processes: 100 (libssl + a connection to an LLM endpoint), 200
/// (GnuTLS, two connections, one in another network namespace's table that must not be used),
/// 300 (sockets but no established TCP: not listed).
#[test]
fn scans_a_fake_proc_tree() {
    let proc_root = temp_dir("proc");
    let write = |rel: &str, text: &str| {
        let p = proc_root.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    };
    let fd = |pid: u32, n: u32, target: &str| {
        let dir = proc_root.join(format!("{pid}/fd"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        symlink(target, dir.join(n.to_string())).expect("symlink");
    };
    write(
        "100/maps",
        "7f0000000000-7f0000001000 r-xp 00000000 fd:01 11 /usr/lib/x86_64-linux-gnu/libssl.so.3\n",
    );
    write("100/comm", "python3.11\n");
    write("100/net/tcp", TCP);
    fd(100, 0, "/dev/null");
    fd(100, 3, "socket:[1001]");
    fd(100, 4, "socket:[1002]");
    std::fs::create_dir_all(proc_root.join("100/ns")).expect("mkdir");
    symlink("net:[4026531840]", proc_root.join("100/ns/net")).expect("symlink");

    write(
        "200/maps",
        "7f0000000000-7f0000001000 r-xp 00000000 fd:01 12 /usr/lib/x86_64-linux-gnu/libgnutls.so.30\n",
    );
    write("200/comm", "gnutls-cli\n");
    write("200/net/tcp6", TCP6);
    std::fs::create_dir_all(proc_root.join("200/ns")).expect("mkdir");
    symlink("net:[4026532000]", proc_root.join("200/ns/net")).expect("symlink");
    fd(200, 5, "socket:[2001]");
    fd(200, 6, "socket:[2002]");
    fd(200, 7, "socket:[1001]"); // only in pid 100's namespace

    write("300/maps", "");
    write("300/net/tcp", TCP);
    fd(300, 3, "socket:[900]"); // the listener

    let endpoints = LlmEndpoints::from_provider_args(&["127.0.0.1:8443=mock".into()]);
    let mut scanner = ProcScanner::new(&proc_root, &endpoints);
    let p100 = scanner.process(100, |_, _| None).expect("pid 100 listed");
    assert_eq!(p100.executable, "python3.11");
    assert_eq!(p100.connections.established, 2);
    assert_eq!(
        p100.connections.to_llm_endpoints,
        vec![
            "93.184.216.34:443".parse().expect("addr"),
            "127.0.0.1:8443".parse().expect("addr"),
        ]
    );
    assert_eq!(p100.stacks.len(), 1);
    assert_eq!(p100.stacks[0].stack, TlsStack::OpensslShared);

    let p200 = scanner.process(200, |_, _| None).expect("pid 200 listed");
    assert_eq!(p200.connections.established, 2);
    assert_eq!(p200.stacks[0].stack, TlsStack::Gnutls);
    assert!(!p200.stacks[0].hookable);

    assert_eq!(scanner.process(300, |_, _| None), None);
    assert_eq!(scanner.process(400, |_, _| None), None, "no such process");

    let table = crate::tls_stacks::status::render_table(&[p100.clone(), p200.clone()]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(
        lines[1].starts_with("100  python3.11  openssl-shared  yes"),
        "{table}"
    );
    assert!(
        lines[2].contains("gnutls") && lines[2].contains("NO (unsupported TLS to LLM endpoint)"),
        "{table}"
    );
    let json = crate::tls_stacks::status::render_json(&[p200]);
    let v: serde_json::Value = serde_json::from_str(json.trim()).expect("json");
    assert_eq!(v["stacks"][0]["coverage"], "unsupported");
    assert_eq!(v["tcp_established"], 2);
    let _ = std::fs::remove_dir_all(&proc_root);
}

#[test]
fn go_with_named_functions_is_hookable_and_unreadable_go_is_not() {
    let named = info(|i| {
        i.go = true;
        i.go_crypto_tls = true;
        i.go_crypto_tls_symbols = true;
    })
    .expect("info");
    assert_eq!(
        TlsStack::embedded_in(&named),
        vec![(TlsStack::GoCryptoTls, cfg!(target_arch = "x86_64"))]
    );
    let stripped = info(|i| {
        i.go = true;
        i.go_crypto_tls = true;
    })
    .expect("info");
    assert_eq!(
        TlsStack::embedded_in(&stripped),
        vec![(TlsStack::GoCryptoTls, false)]
    );
}
