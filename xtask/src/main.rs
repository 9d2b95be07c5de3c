//! Project tasks. `cargo xtask setup` installs what the build and the tests need; every other
//! task runs it first, so each README command works alone on a fresh machine.

use std::{
    env,
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

mod static_python;

#[derive(Parser)]
#[command(about = "tokentap project tasks")]
struct Xtask {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the eBPF toolchain (nightly rust-src, bpf-linker 0.10.2) and test dependencies
    /// (the LLM SDK venv, target/e2e-venv; a static-OpenSSL Python, target/static-python).
    Setup,
    /// Build the eBPF object (nightly, bpfel-unknown-none) into target/.
    BuildEbpf,
    /// Build the release binary with its eBPF object: target/release/tokentap.
    Build,
    /// Build, then run the agent as root with its default configuration (extra args are passed on).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Unit tests, then the privileged end-to-end tests (need root).
    Test {
        /// Only the unprivileged unit tests.
        #[arg(long)]
        unit_only: bool,
        /// Seconds of fuzzing (seeded from the golden fixtures) after the tests; 0 skips it.
        #[arg(long, default_value_t = 30)]
        fuzz_seconds: u64,
    },
    /// Fuzz the HTTP/SSE/JSON path (cargo-fuzz on nightly), corpus seeded from the fixtures.
    Fuzz {
        /// How long to fuzz.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Overhead measurement: what tokentap costs the observed clients, next to no probes, no-op
    /// hooks, a naive bpftrace capture, in-process OpenTelemetry instrumentation and a LiteLLM
    /// gateway. Writes bench-results/overhead.md.
    Bench {
        /// micro (TLS round trips), realistic (streamed chat completions), long (4 and 40 MB
        /// prompts), plaintext (what --plaintext-http costs HTTP, TLS and non-HTTP processes),
        /// or all.
        #[arg(long, default_value = "all")]
        workload: String,
        /// Runs per mode (modes are interleaved; medians are reported).
        #[arg(long, default_value_t = 5)]
        runs: u32,
        /// micro: round trips per run.
        #[arg(long, default_value_t = 20000)]
        round_trips: u64,
        /// realistic: rounds of 64 concurrent streams per run.
        #[arg(long, default_value_t = 5)]
        rounds: u32,
        /// long: calls per prompt size per run.
        #[arg(long, default_value_t = 2)]
        long_calls: u32,
        /// long: prompt sizes in MB, comma-separated.
        #[arg(long, default_value = "4,40")]
        prompt_mb: String,
        /// micro: MiB downloaded to measure the agent's CPU per GB captured (0 skips it).
        #[arg(long, default_value_t = 512)]
        bulk_mb: u32,
        /// plaintext: dd's 512-byte blocks per run (a process that is not HTTP).
        #[arg(long, default_value_t = 2_000_000)]
        dd_blocks: u64,
        /// plaintext: also measure this other build of the agent with --plaintext-http (e.g.
        /// a copy of target/release/tokentap from before a change to the kernel programs).
        #[arg(long, value_name = "BINARY")]
        compare_tokentap: Option<PathBuf>,
    },
    /// Soak: mixed LLM traffic from short-lived client processes while the agent runs, then a
    /// call-by-call check of its exchange log; report in bench-results/soak.md.
    Soak {
        /// How long the traffic runs.
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
        /// Client processes at a time.
        #[arg(long, default_value_t = 6)]
        concurrency: usize,
    },
}

const BPF_LINKER_VERSION: &str = "0.10.2";
/// Pinned requirements of the SDK venv (openai, anthropic, google-genai and their closure).
const SDK_REQUIREMENTS: &str = "tests/clients/requirements.txt";
/// In the venv: the requirements it was built from.
const SDK_VENV_STAMP: &str = ".tokentap-requirements";
const NIGHTLY: &str = "nightly";
/// Debian packages the tests use: `prometheus` (with `promtool`) checks and unit-tests
/// deploy/prometheus/rules.yaml and runs in the Prometheus end-to-end test.
const TEST_PACKAGES: &[&str] = &["prometheus"];

fn main() {
    let Xtask { task } = Xtask::parse();
    let result = match task {
        Task::Setup => setup()
            .and_then(|()| ensure_sdk_venv())
            .and_then(|()| ensure_apt(TEST_PACKAGES))
            .and_then(|()| ensure_tls_stack_clients())
            .and_then(|()| static_python::ensure()),
        Task::BuildEbpf => setup().and_then(|()| build_ebpf()),
        Task::Build => setup().and_then(|()| build()),
        Task::Run { args } => setup().and_then(|()| run(&args)),
        Task::Test {
            unit_only,
            fuzz_seconds,
        } => setup()
            .and_then(|()| ensure_sdk_venv())
            .and_then(|()| ensure_apt(TEST_PACKAGES))
            .and_then(|()| ensure_tls_stack_clients())
            .and_then(|()| static_python::ensure())
            .and_then(|()| test(unit_only, fuzz_seconds)),
        Task::Fuzz { seconds } => setup().and_then(|()| fuzz(seconds)),
        Task::Bench {
            workload,
            runs,
            round_trips,
            rounds,
            long_calls,
            prompt_mb,
            bulk_mb,
            dd_blocks,
            compare_tokentap,
        } => setup().and_then(|()| {
            let mut options = vec![
                ("--workload", workload),
                ("--runs", runs.to_string()),
                ("--round-trips", round_trips.to_string()),
                ("--rounds", rounds.to_string()),
                ("--long-calls", long_calls.to_string()),
                ("--prompt-mb", prompt_mb),
                ("--bulk-mb", bulk_mb.to_string()),
                ("--dd-blocks", dd_blocks.to_string()),
            ];
            if let Some(binary) = compare_tokentap {
                options.push(("--compare-tokentap", binary.display().to_string()));
            }
            bench(&options)
        }),
        Task::Soak {
            minutes,
            concurrency,
        } => setup()
            .and_then(|()| ensure_sdk_venv())
            .and_then(|()| soak(minutes, concurrency)),
    };
    if let Err(e) = result {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn target_dir() -> PathBuf {
    env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

fn ebpf_object() -> PathBuf {
    target_dir().join("bpfel-unknown-none/release/tokentap-ebpf")
}

/// `cargo install`'s bin directory: `$CARGO_HOME/bin`, or `~/.cargo/bin`.
fn cargo_bin_dir() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_default()
        .join("bin")
}

/// A command for a toolchain tool, with cargo's bin directory first on PATH, so that a
/// `bpf-linker` just installed there is found even when that directory is not on PATH.
fn tool(program: &str) -> Command {
    let mut dirs = vec![cargo_bin_dir()];
    if let Some(path) = env::var_os("PATH") {
        dirs.extend(env::split_paths(&path));
    }
    let mut cmd = Command::new(program);
    if let Ok(path) = env::join_paths(dirs) {
        cmd.env("PATH", path);
    }
    cmd
}

fn run_cmd(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn output_of(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn is_root() -> bool {
    output_of(Command::new("id").arg("-u"))
        .map(|s| s.trim() == "0")
        .unwrap_or(false)
}

/// The toolchain for building (every task). The SDK venv for the tests is added by `setup`
/// and `test` only, so building and running the agent need no Python packages.
/// Idempotent, and quick when everything is already there.
fn setup() -> anyhow::Result<()> {
    // The nightly toolchain builds the eBPF crate with -Z build-std=core, which needs rust-src.
    let sysroot = output_of(tool("rustc").args([&format!("+{NIGHTLY}"), "--print", "sysroot"]))
        .context(
            "the nightly toolchain is missing: install it with `rustup toolchain install nightly`",
        )?;
    let rust_src = Path::new(sysroot.trim()).join("lib/rustlib/src/rust/library/core");
    if !rust_src.exists() {
        eprintln!("xtask: installing rust-src for {NIGHTLY}");
        run_cmd(tool("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]))?;
    }
    let linker_ok = output_of(tool("bpf-linker").arg("--version"))
        .map(|v| v.contains(BPF_LINKER_VERSION))
        .unwrap_or(false);
    if !linker_ok {
        // 0.10.2 links against the nightly's own LLVM; newer releases need a system LLVM.
        eprintln!("xtask: installing bpf-linker {BPF_LINKER_VERSION} (about 3 minutes)");
        run_cmd(tool("cargo").args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
            "--force",
        ]))?;
    }
    // The Go toolchain builds the Go test programs (crypto/tls unit and end-to-end tests);
    // gcc links one of them externally (cgo), as Go programs with C code are linked.
    ensure_apt(&["golang-go", "gcc"])?;
    Ok(())
}

/// The venv holding the real LLM SDKs that the end-to-end tests drive.
fn sdk_venv() -> PathBuf {
    target_dir().join("e2e-venv")
}

fn sdk_python() -> PathBuf {
    sdk_venv().join("bin/python")
}

/// Builds target/e2e-venv from tests/clients/requirements.txt with the machine's `python3`,
/// unless it was already built from the same requirements (then this costs one `python -c`).
fn ensure_sdk_venv() -> anyhow::Result<()> {
    ensure_venv(
        &sdk_venv(),
        Path::new("python3"),
        SDK_REQUIREMENTS,
        "the LLM SDK venv (about 15 s)",
        verify_sdk_venv,
    )
}

/// Builds `venv` from `requirements` (relative to the workspace) with `base_python` (the
/// machine's `python3` for most venvs), then checks it with `verify`, unless it was already
/// built from the same requirements.
fn ensure_venv(
    venv: &Path,
    base_python: &Path,
    requirements: &str,
    what: &str,
    verify: fn(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let requirements_file = workspace_root().join(requirements);
    let pins = fs::read_to_string(&requirements_file)
        .with_context(|| format!("reading {}", requirements_file.display()))?;
    let python = venv.join("bin/python");
    let stamp = venv.join(SDK_VENV_STAMP);
    let up_to_date = fs::read_to_string(&stamp).is_ok_and(|s| s == pins)
        && output_of(Command::new(&python).args(["-c", "pass"])).is_some();
    if up_to_date {
        return Ok(());
    }
    eprintln!(
        "xtask: building {what}: {} from {requirements}",
        venv.display()
    );
    if venv.exists() {
        fs::remove_dir_all(venv).with_context(|| format!("removing {}", venv.display()))?;
    }
    run_cmd(Command::new(base_python).args(["-m", "venv"]).arg(venv)).with_context(|| {
        format!(
            "creating the venv with {} (`-m venv`; a Debian python3 needs python3-venv)",
            base_python.display()
        )
    })?;
    run_cmd(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-input",
                "-r",
            ])
            .arg(&requirements_file),
    )
    .with_context(|| format!("installing {requirements} from PyPI"))?;
    verify(&python)?;
    fs::write(&stamp, pins).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(())
}

/// The agent hooks the system `libssl.so.3`: the venv's `ssl` module must use that file, and
/// its HTTP stack must not be able to negotiate HTTP/2 (the mock provider speaks HTTP/1.1).
fn verify_sdk_venv(python: &Path) -> anyhow::Result<()> {
    const PROBE: &str = "import importlib.util, ssl, sys\n\
        import openai, anthropic, google.genai, httpx2\n\
        maps = sorted({l.split()[-1] for l in open('/proc/self/maps') if 'libssl' in l})\n\
        print('libssl=' + ','.join(maps))\n\
        print('openssl=' + ssl.OPENSSL_VERSION)\n\
        print('h2=' + str(importlib.util.find_spec('h2') is not None))\n\
        print('versions=openai %s, anthropic %s, google-genai %s, httpx2 %s, Python %s' % (openai.__version__, anthropic.__version__, google.genai.__version__, httpx2.__version__, sys.version.split()[0]))\n";
    let out = output_of(Command::new(python).args(["-c", PROBE]))
        .context("the SDK venv's Python cannot import the SDKs")?;
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
            .unwrap_or_default()
            .to_owned()
    };
    let libssl = field("libssl");
    let system = libssl.split(',').any(|p| {
        // The distribution's own libssl: /usr/lib/<multiarch>, /lib64, /usr/lib64, ...
        p.ends_with("/libssl.so.3")
            && ["/usr/lib/", "/lib/", "/usr/lib64/", "/lib64/"]
                .iter()
                .any(|d| p.starts_with(d))
    });
    if !system {
        bail!(
            "the SDK venv's Python maps libssl from {libssl:?} ({}), not the system libssl.so.3 that \
             the agent hooks: build the venv from a python3 whose ssl module links the system OpenSSL",
            field("openssl")
        );
    }
    // h2_sdk_client.py (the HTTP/2 end-to-end test) asks httpx2 for HTTP/2; the other clients
    // leave it off, and the HTTP/1.1 mock offers only http/1.1 in ALPN.
    if field("h2") != "True" {
        bail!(
            "the SDK venv lacks the h2 package that the HTTP/2 test needs: it is pinned in \
             {SDK_REQUIREMENTS}; remove the venv and run `cargo xtask setup` again"
        );
    }
    eprintln!(
        "xtask: SDK venv ready: {}; ssl uses {libssl} ({})",
        field("versions"),
        field("openssl")
    );
    Ok(())
}

fn build_ebpf() -> anyhow::Result<()> {
    let root = workspace_root();
    // What aya-build passes: the target arch cfg, BTF for CO-RE and the loader, debug info.
    let arch = env::consts::ARCH;
    let rustflags = [
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        "-Cdebuginfo=2".into(),
        "-Clink-arg=--btf".into(),
    ]
    .join("\x1f");
    run_cmd(
        tool("cargo")
            .current_dir(&root)
            .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
            .env_remove("RUSTC")
            .env_remove("RUSTC_WORKSPACE_WRAPPER")
            .args([
                &format!("+{NIGHTLY}"),
                "build",
                "--package",
                "tokentap-ebpf",
                "--bins",
                "--release",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
            ])
            .arg("--target-dir")
            .arg(target_dir()),
    )
    .context("building the eBPF programs")
}

fn build() -> anyhow::Result<()> {
    build_ebpf()?;
    run_cmd(
        tool("cargo")
            .current_dir(workspace_root())
            .env("TOKENTAP_EBPF_OBJECT", ebpf_object())
            .args(["build", "--release", "--package", "tokentap"]),
    )?;
    eprintln!(
        "xtask: built {}",
        target_dir().join("release/tokentap").display()
    );
    Ok(())
}

fn run(args: &[OsString]) -> anyhow::Result<()> {
    build()?;
    let bin = target_dir().join("release/tokentap");
    let mut cmd = if is_root() {
        Command::new(&bin)
    } else {
        let mut c = Command::new("sudo");
        c.arg(&bin);
        c
    };
    cmd.args(args);
    run_cmd(&mut cmd)
}

fn test(unit_only: bool, fuzz_seconds: u64) -> anyhow::Result<()> {
    let root = workspace_root();
    // Unit tests: no privileges, no eBPF object needed.
    run_cmd(tool("cargo").current_dir(&root).args([
        "test",
        "--workspace",
        "--exclude",
        "tokentap-ebpf",
        "--exclude",
        "tokentap-tests",
    ]))?;
    // The mock provider's own tests, and the SDKs against it (no agent, no privileges).
    run_cmd(
        tool("cargo")
            .current_dir(&root)
            .env("TOKENTAP_SDK_PYTHON", sdk_python())
            .args(["test", "--package", "tokentap-tests", "--lib"]),
    )?;
    check_prometheus_rules(&root)?;
    if unit_only {
        return Ok(());
    }
    // A short fuzz run before the end-to-end tests, so the log ends with their results.
    if fuzz_seconds > 0 {
        fuzz(fuzz_seconds)?;
    }
    build()?;
    if !is_root() {
        bail!(
            "the end-to-end tests load eBPF programs and need root: run `sudo -E cargo xtask test` (or `cargo xtask test --unit-only`)"
        );
    }
    run_cmd(
        tool("cargo")
            .current_dir(&root)
            .env("TOKENTAP_BIN", target_dir().join("release/tokentap"))
            .env("TOKENTAP_EBPF_OBJECT", ebpf_object())
            .env("TOKENTAP_SDK_PYTHON", sdk_python())
            .env("TOKENTAP_STATIC_PYTHON", static_python::python())
            .args([
                "test",
                "--release",
                "--package",
                "tokentap-tests",
                "--test",
                "*",
                "--",
                "--test-threads=1",
            ]),
    )
}

/// `promtool check rules` and the rules' unit tests (each alert fires on a synthetic burn and
/// stays quiet on a healthy series).
fn check_prometheus_rules(root: &Path) -> anyhow::Result<()> {
    let dir = root.join("deploy/prometheus");
    run_cmd(
        Command::new("promtool")
            .current_dir(&dir)
            .args(["check", "rules", "rules.yaml"]),
    )?;
    let mut tests: Vec<PathBuf> = fs::read_dir(dir.join("tests"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    tests.sort();
    run_cmd(
        Command::new("promtool")
            .current_dir(&dir)
            .args(["test", "rules"])
            .args(&tests),
    )
}

/// Requirements of the benchmark's client venv (openai SDK + OpenTelemetry instrumentation).
const BENCH_REQUIREMENTS: &str = "tests/bench/requirements.txt";
/// Requirements of the benchmark's gateway venv (the LiteLLM proxy; openai < 3).
const GATEWAY_REQUIREMENTS: &str = "tests/bench/gateway-requirements.txt";

fn bench(options: &[(&str, String)]) -> anyhow::Result<()> {
    build()?;
    if !is_root() {
        bail!("the benchmark attaches probes and needs root: run `sudo -E cargo xtask bench`");
    }
    ensure_apt(&["bpftrace"])?;
    let bench_venv = target_dir().join("bench-venv");
    let gateway_venv = target_dir().join("bench-gateway-venv");
    ensure_venv(
        &bench_venv,
        Path::new("python3"),
        BENCH_REQUIREMENTS,
        "the benchmark's client venv",
        |_| Ok(()),
    )?;
    // The gateway column is optional: without it the report says why. Only the LLM workloads
    // have it.
    let workload = options
        .iter()
        .find(|(flag, _)| *flag == "--workload")
        .map_or("all", |(_, value)| value.as_str());
    let gateway = if matches!(workload, "micro" | "plaintext") {
        Err(anyhow::anyhow!("not needed by --workload {workload}"))
    } else {
        ensure_venv(
            &gateway_venv,
            Path::new("python3"),
            GATEWAY_REQUIREMENTS,
            "the benchmark's LiteLLM venv (about 2 minutes)",
            |_| Ok(()),
        )
    };
    let root = workspace_root();
    run_cmd(tool("cargo").current_dir(&root).args([
        "build",
        "--release",
        "--package",
        "tokentap-tests",
        "--bin",
        "tls-test-server",
        "--bin",
        "mock-provider",
    ]))?;
    let mut cmd = tool("python3");
    cmd.current_dir(&root)
        .arg(root.join("tests/bench/overhead.py"))
        .arg("--tokentap")
        .arg(target_dir().join("release/tokentap"))
        .arg("--server")
        .arg(target_dir().join("release/tls-test-server"))
        .arg("--mock")
        .arg(target_dir().join("release/mock-provider"))
        .arg("--venv")
        .arg(&bench_venv)
        .arg("--out")
        .arg(root.join("bench-results/overhead.md"));
    match gateway {
        Ok(()) => cmd.arg("--gateway-venv").arg(&gateway_venv),
        Err(e) => cmd.arg("--gateway-unavailable").arg(format!("{e:#}")),
    };
    for (flag, value) in options {
        cmd.args([flag, value.as_str()]);
    }
    run_cmd(&mut cmd)
}

fn soak(minutes: f64, concurrency: usize) -> anyhow::Result<()> {
    build()?;
    if !is_root() {
        bail!("the soak runs the agent, which loads eBPF programs: run `sudo -E cargo xtask soak`");
    }
    let root = workspace_root();
    run_cmd(
        tool("cargo")
            .current_dir(&root)
            .env("TOKENTAP_BIN", target_dir().join("release/tokentap"))
            .env("TOKENTAP_SDK_PYTHON", sdk_python())
            .args([
                "run",
                "--release",
                "--package",
                "tokentap-tests",
                "--bin",
                "soak",
                "--",
                "--minutes",
                &minutes.to_string(),
                "--concurrency",
                &concurrency.to_string(),
                "--out",
            ])
            .arg(root.join("bench-results/soak.md")),
    )
}

const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// `http_llm`: default bounds; `http_llm_tight`: tiny bounds, content capture on.
const FUZZ_TARGETS: [&str; 2] = ["http_llm", "http_llm_tight"];

fn fuzz(seconds: u64) -> anyhow::Result<()> {
    let root = workspace_root();
    let has_cargo_fuzz = output_of(tool("cargo").args(["fuzz", "--version"]))
        .map(|v| v.contains(CARGO_FUZZ_VERSION))
        .unwrap_or(false);
    if !has_cargo_fuzz {
        eprintln!("xtask: installing cargo-fuzz {CARGO_FUZZ_VERSION}");
        run_cmd(tool("cargo").args([
            "install",
            "cargo-fuzz",
            "--version",
            CARGO_FUZZ_VERSION,
            "--locked",
        ]))?;
    }
    // Both targets read the same input layout; each gets `seconds`.
    for target in FUZZ_TARGETS {
        // Seeds: every golden LLM fixture as a raw request/response pair.
        let corpus = root.join("fuzz/corpus").join(target);
        run_cmd(
            tool("cargo")
                .current_dir(&root)
                .env("TOKENTAP_WRITE_FUZZ_SEEDS", &corpus)
                .args([
                    "test",
                    "--package",
                    "tokentap",
                    "--lib",
                    "write_fuzz_seeds",
                    "--quiet",
                ]),
        )?;
        eprintln!("xtask: fuzzing {target} for {seconds} s");
        run_cmd(
            tool("cargo")
                .current_dir(root.join("fuzz"))
                .args([&format!("+{NIGHTLY}"), "fuzz", "run", target])
                .arg(&corpus)
                .args(["--", &format!("-max_total_time={seconds}"), "-rss_limit_mb=2048", "-timeout=10", "-print_final_stats=1"]),
        )
        .with_context(|| format!("the fuzzer found a crash, a hang or an allocation blow-up: the input is in fuzz/artifacts/{target}/"))?;
    }
    Ok(())
}

/// The clients of the TLS-stack end-to-end tests (tests/tests/tls_stacks.rs): a C compiler and
/// OpenSSL's static archives (a client with OpenSSL linked in), Android's BoringSSL as shared
/// libraries with headers (a BoringSSL client), Node.js, and GnuTLS's `gnutls-cli` (a stack
/// tokentap does not hook).
fn ensure_tls_stack_clients() -> anyhow::Result<()> {
    ensure_apt(&[
        "gcc",
        "libc6-dev",
        "libssl-dev",
        "android-libboringssl-dev",
        "nodejs",
        "gnutls-bin",
    ])
}

/// Installs Debian packages that are missing.
fn ensure_apt(packages: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !output_of(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .map(|s| s.contains("install ok installed"))
                .unwrap_or(false)
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    run_cmd(Command::new("apt-get").arg("update").arg("-qq"))?;
    run_cmd(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing),
    )
}
