//! `cargo xtask soak`: mixed LLM traffic from short-lived client processes for N minutes while
//! the agent runs, then a call-by-call check of its exchange log (see
//! `tokentap_tests::soak`). Writes a Markdown report; exits 1 when a call was lost,
//! duplicated, misattributed or misreported, or a loss counter moved.
//!
//! ```text
//! soak [--minutes 10] [--concurrency 6] [--out bench-results/soak.md]
//! ```
//! Needs root (the agent loads eBPF programs), `TOKENTAP_BIN` (or target/release/tokentap),
//! and the SDK venv (`TOKENTAP_SDK_PYTHON` or target/e2e-venv).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use tokentap_tests::sdk::sdk_python;
use tokentap_tests::soak::{SoakConfig, machine_description, markdown, run};

struct Args {
    minutes: f64,
    concurrency: usize,
    out: PathBuf,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        minutes: 10.0,
        concurrency: 6,
        out: PathBuf::from("bench-results/soak.md"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| anyhow!("{flag} needs a value"));
        match flag.as_str() {
            "--minutes" => {
                args.minutes = value()?.parse().context("--minutes: a number")?;
            }
            "--concurrency" => {
                args.concurrency = value()?.parse().context("--concurrency: a number")?;
            }
            "--out" => args.out = PathBuf::from(value()?),
            other => {
                bail!("unknown argument {other} (use --minutes N, --concurrency N, --out FILE)")
            }
        }
    }
    if !args.minutes.is_finite() || args.minutes <= 0.0 || args.concurrency == 0 {
        bail!("--minutes and --concurrency must be positive");
    }
    Ok(args)
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("soak: error: {e:#}");
        std::process::exit(2);
    }
}

fn real_main() -> anyhow::Result<()> {
    let args = parse_args()?;
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "the soak runs the agent, which loads eBPF programs: run it as root (`sudo -E cargo xtask soak`)"
        );
    }
    let python = sdk_python().ok_or_else(|| {
        anyhow!("the SDK venv is missing: `cargo xtask setup` builds target/e2e-venv (or set TOKENTAP_SDK_PYTHON)")
    })?;
    let duration = Duration::from_secs_f64(args.minutes * 60.0);
    let config = SoakConfig {
        duration,
        concurrency: args.concurrency,
        sdk_every: 8,
        hard_exit_every: 5,
        python,
        warm_up: Duration::from_secs_f64((duration.as_secs_f64() / 5.0).clamp(10.0, 120.0)),
        sample_every: Duration::from_secs(5),
        agent_args: Vec::new(),
    };
    eprintln!(
        "soak: {:.1} min, {} client processes at a time",
        args.minutes, args.concurrency
    );
    let report = run(&config)?;
    let command = format!(
        "cargo xtask soak --minutes {} --concurrency {}",
        args.minutes, args.concurrency
    );
    let md = markdown(&report, &machine_description(), &command);
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&args.out, &md).with_context(|| format!("writing {}", args.out.display()))?;
    println!("{md}");
    eprintln!("soak: report written to {}", args.out.display());
    if !report.ok() {
        std::process::exit(1);
    }
    Ok(())
}
