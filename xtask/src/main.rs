//! Project tasks. `cargo xtask setup` installs what the build and the tests need; every other
//! task runs it first, so each README command works alone on a fresh machine.

use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "tokentap project tasks")]
struct Xtask {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the eBPF toolchain (nightly rust-src, bpf-linker 0.10.2) and test dependencies.
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
    },
    /// Overhead measurement: Python TLS round trips with no probes, no-op bpftrace hooks, and tokentap.
    Bench {
        /// Round trips per run.
        #[arg(long, default_value_t = 20000)]
        round_trips: u64,
        /// Runs per configuration (the median is reported).
        #[arg(long, default_value_t = 3)]
        runs: u32,
    },
}

const BPF_LINKER_VERSION: &str = "0.10.2";
const NIGHTLY: &str = "nightly";

fn main() {
    let Xtask { task } = Xtask::parse();
    let result = match task {
        Task::Setup => setup(),
        Task::BuildEbpf => setup().and_then(|()| build_ebpf()),
        Task::Build => setup().and_then(|()| build()),
        Task::Run { args } => setup().and_then(|()| run(&args)),
        Task::Test { unit_only } => setup().and_then(|()| test(unit_only)),
        Task::Bench { round_trips, runs } => setup().and_then(|()| bench(round_trips, runs)),
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

fn test(unit_only: bool) -> anyhow::Result<()> {
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
    run_cmd(tool("cargo").current_dir(&root).args([
        "test",
        "--package",
        "tokentap-tests",
        "--lib",
    ]))?;
    if unit_only {
        return Ok(());
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

fn bench(round_trips: u64, runs: u32) -> anyhow::Result<()> {
    build()?;
    if !is_root() {
        bail!("the benchmark attaches probes and needs root: run `sudo -E cargo xtask bench`");
    }
    ensure_apt(&["bpftrace"])?;
    let root = workspace_root();
    run_cmd(tool("cargo").current_dir(&root).args([
        "build",
        "--release",
        "--package",
        "tokentap-tests",
        "--bin",
        "tls-test-server",
    ]))?;
    run_cmd(
        tool("python3")
            .current_dir(&root)
            .arg(root.join("tests/bench/overhead.py"))
            .arg("--tokentap")
            .arg(target_dir().join("release/tokentap"))
            .arg("--server")
            .arg(target_dir().join("release/tls-test-server"))
            .args([
                "--round-trips",
                &round_trips.to_string(),
                "--runs",
                &runs.to_string(),
            ])
            .arg("--out")
            .arg(root.join("bench-results/overhead.md")),
    )
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
