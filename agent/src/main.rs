//! The `tokentap` binary: parses the command line and runs a subcommand. Environment problems
//! end in one line on stderr that says what to do, and a non-zero exit.

use std::{
    io::Write,
    process::ExitCode,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches};
use tokentap::{
    capture::CaptureSink,
    cli::{AgentOptions, CaptureCommandOptions, CaptureOptions, Cli, Command, WatchOptions},
    config::{FileConfig, apply},
    exchanges::{ExchangeSink, RecordSink},
    http::HttpConfig,
    llm::{ExchangeRecord, ProviderConfig},
    metrics::genai::GenAiMetrics,
    probes::error_chain,
    runtime::{Runtime, shutdown_signal},
    self_metrics::SelfMetrics,
    server::{ServerState, bind},
    stage_metrics::StageMetrics,
    watch::WatchSink,
};

/// Parses the command line and the optional config file; errors name the setting.
fn parse_cli() -> Result<Cli, String> {
    let matches = Cli::command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches).map_err(|e| e.to_string())?;
    if let Some(path) = cli.capture.config.clone() {
        apply(&mut cli, &matches, FileConfig::load(&path)?);
    }
    Ok(cli)
}

fn main() -> ExitCode {
    let cli = match parse_cli() {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("tokentap: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tokentap: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            None => run_agent(cli.capture, AgentOptions::default()).await,
            Some(Command::Agent(opts)) => run_agent(cli.capture, opts).await,
            Some(Command::Watch(opts)) => run_watch(cli.capture, opts).await,
            Some(Command::Capture(opts)) => run_capture(cli.capture, opts).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tokentap: error: {}", error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// The exchange stages with `sinks`, configured from the command line.
fn exchange_sink(
    capture: &CaptureOptions,
    sinks: Vec<Box<dyn RecordSink + Send>>,
) -> anyhow::Result<ExchangeSink> {
    let providers = ProviderConfig::from_specs(&capture.providers)
        .map_err(|e| anyhow::anyhow!("--provider: {e}"))?;
    Ok(ExchangeSink::new(
        HttpConfig::default(),
        providers,
        capture.proc_root.clone(),
        sinks,
    ))
}

async fn run_agent(capture: CaptureOptions, opts: AgentOptions) -> anyhow::Result<()> {
    let registry = prometheus::Registry::new();
    let metrics = Arc::new(Mutex::new(SelfMetrics::new(registry.clone())));
    let mut stage_metrics = StageMetrics::new(&registry);
    let genai = GenAiMetrics::new(&registry, capture.max_label_sets);
    let sink = exchange_sink(&capture, vec![Box::new(genai)])?;
    let ready = Arc::new(AtomicBool::new(false));
    let state = ServerState {
        registry,
        ready: ready.clone(),
        before_scrape: Arc::new(|| {}),
    };
    // Listen first: liveness answers while the probes load.
    let (addr, serve) = bind(opts.listen, state)
        .await
        .with_context(|| format!("cannot listen on {} (--listen)", opts.listen))?;
    let server = tokio::spawn(serve);
    log::info!("serving /metrics, /healthz and /readyz on http://{addr}");
    let mut runtime = Runtime::start(capture, sink, metrics)?;
    ready.store(true, Ordering::Release);
    log::info!(
        "ready: {} TLS libraries hooked",
        runtime.attached_tls_libraries().len()
    );
    runtime
        .run(shutdown_signal(), |pipeline| {
            stage_metrics.sync(pipeline.sink_mut())
        })
        .await?;
    server.abort();
    Ok(())
}

/// Passes records of some processes on to another sink.
struct PidFilter<S> {
    pids: Vec<u32>,
    inner: S,
}

impl<S: RecordSink> RecordSink for PidFilter<S> {
    fn record(&mut self, record: &ExchangeRecord) {
        if self.pids.is_empty() || self.pids.contains(&record.pid) {
            self.inner.record(record);
        }
    }
}

async fn run_watch(capture: CaptureOptions, opts: WatchOptions) -> anyhow::Result<()> {
    let metrics = Arc::new(Mutex::new(SelfMetrics::new(prometheus::Registry::new())));
    let watch = WatchSink::new(std::io::stdout(), opts.json);
    let sink = exchange_sink(
        &capture,
        vec![Box::new(PidFilter {
            pids: opts.pids,
            inner: watch,
        })],
    )?;
    let mut runtime = Runtime::start(capture, sink, metrics)?;
    log::info!(
        "ready: {} TLS libraries hooked; one line per LLM call follows",
        runtime.attached_tls_libraries().len()
    );
    runtime.run(shutdown_signal(), |_| {}).await?;
    Ok(())
}

async fn run_capture(capture: CaptureOptions, opts: CaptureCommandOptions) -> anyhow::Result<()> {
    let metrics = Arc::new(Mutex::new(SelfMetrics::new(prometheus::Registry::new())));
    let sink = CaptureSink::new(std::io::BufWriter::new(std::io::stdout()), opts.pids);
    let mut runtime = Runtime::start(capture, sink, metrics)?;
    log::info!(
        "ready: {} TLS libraries hooked",
        runtime.attached_tls_libraries().len()
    );
    runtime
        .run(shutdown_signal(), |pipeline| {
            let _ = pipeline.sink_mut().flush();
        })
        .await?;
    // A last line with the totals, so a capture says whether it was complete.
    let stats = runtime.pipeline().stats().clone();
    let assembler = runtime.pipeline().assembler().stats();
    let kernel = runtime.kernel_counters();
    let summary = serde_json::json!({
        "type": "summary",
        "records": tokentap::pipeline::PipelineStats::KINDS.iter().zip(stats.records).map(|(k, n)| (k.to_string(), serde_json::Value::from(n))).collect::<serde_json::Map<_, _>>(),
        "captured_bytes": { "write": stats.captured_bytes[0], "read": stats.captured_bytes[1] },
        "decode_errors": stats.decode_errors.values().sum::<u64>(),
        "calls_lost": assembler.calls_lost,
        "offset_resets": assembler.offset_resets,
        "records_out_of_order": assembler.records_out_of_order,
        "kernel": tokentap_common::KernelCounter::ALL.iter().zip(kernel).map(|(c, n)| (format!("{c:?}"), serde_json::Value::from(n))).collect::<serde_json::Map<_, _>>(),
        "write_errors": runtime.pipeline_mut().sink_mut().write_errors,
    });
    let sink = runtime.pipeline_mut().sink_mut();
    let _ = sink.flush();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{summary}");
    Ok(())
}
