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
    anomalies::{AnomalyDetector, AnomalyMetrics},
    capture::CaptureSink,
    cli::{
        AgentOptions, CaptureCommandOptions, CaptureOptions, Cli, Command, StatusOptions,
        WatchOptions,
    },
    config::{FileConfig, apply},
    cost::{CostMetrics, Pricer},
    endpoint_security::EndpointSecurity,
    exchange_log::ExchangeLog,
    exchanges::{ExchangeSink, RecordEnricher, RecordSink},
    http::HttpConfig,
    llm::{ExchangeRecord, ProviderConfig},
    metrics::genai::GenAiMetrics,
    otlp,
    probes::error_chain,
    runtime::{Runtime, shutdown_signal},
    self_metrics::SelfMetrics,
    server::{ServerState, bind},
    stage_metrics::StageMetrics,
    stats::{Stats, StatsSink},
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
    tokentap::tls_stacks::elf_symbols::set_debug_dirs(cli.capture.debug_dirs.clone());
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
            Some(Command::Status(opts)) => run_status(&cli.capture, &opts),
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

/// `tokentap status`: the TLS coverage table from /proc.
fn run_status(capture: &CaptureOptions, opts: &StatusOptions) -> anyhow::Result<()> {
    use tokentap::tls_stacks::{coverage::LlmEndpoints, status};
    let endpoints = LlmEndpoints::from_provider_args(&capture.providers);
    let rows = status::scan_all(&capture.proc_root, &endpoints);
    let text = if opts.json {
        status::render_json(&rows)
    } else {
        status::render_table(&rows)
    };
    std::io::stdout()
        .write_all(text.as_bytes())
        .context("writing to stdout")
}

/// The exchange stages with `sinks`, configured from the command line.
fn exchange_sink(
    capture: &CaptureOptions,
    registry: &prometheus::Registry,
    sinks: Vec<Box<dyn RecordSink + Send>>,
) -> anyhow::Result<ExchangeSink> {
    let workloads =
        tokentap::workload::api::start(capture, registry).map_err(anyhow::Error::msg)?;
    let providers = ProviderConfig::from_specs(&capture.providers)
        .map_err(|e| anyhow::anyhow!("--provider: {e}"))?;
    Ok(ExchangeSink::new(
        HttpConfig::default(),
        providers,
        capture.proc_root.clone(),
        sinks,
    )
    .with_workloads(workloads)
    .with_content_policy(capture.content_policy())
    .with_enricher(Box::new(AnomalyDetector::new())))
}

/// The anomaly counter, and the exchange log when `--log-exchanges` is given.
fn log_and_anomaly_sinks(
    capture: &CaptureOptions,
    registry: &prometheus::Registry,
    sinks: &mut Vec<Box<dyn RecordSink + Send>>,
) -> anyhow::Result<()> {
    sinks.push(Box::new(AnomalyMetrics::new(
        registry,
        capture.max_label_sets,
    )));
    if let Some(path) = &capture.log_exchanges {
        let mut log = ExchangeLog::new(path, capture.log_max_bytes, capture.log_files)
            .with_error_metric(registry);
        log.open()
            .with_context(|| format!("--log-exchanges {}", path.display()))?;
        // On its own thread: a stalled disk or pipe must not stall capture.
        let log = tokentap::exchanges::Detached::new("exchange_log", Box::new(log), Some(registry))
            .context("cannot start the exchange log writer")?;
        sinks.push(Box::new(log));
    }
    Ok(())
}

/// The span exporter, when `--otlp-endpoint` is given: its sink joins `sinks`.
fn otlp_exporter(
    capture: &CaptureOptions,
    registry: &prometheus::Registry,
    sinks: &mut Vec<Box<dyn RecordSink + Send>>,
) -> anyhow::Result<Option<otlp::OtlpExporter>> {
    let Some(url) = &capture.otlp_endpoint else {
        return Ok(None);
    };
    let endpoint =
        otlp::Endpoint::parse(url).map_err(|e| anyhow::anyhow!("--otlp-endpoint {url}: {e}"))?;
    let mut headers = Vec::new();
    if let Some(path) = &capture.otlp_headers_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("--otlp-headers-file {}: {e}", path.display()))?;
        headers = otlp::parse_headers(&text)
            .map_err(|e| anyhow::anyhow!("--otlp-headers-file {}: {e}", path.display()))?;
    }
    // The signal-specific variable wins over the general one, and both over the file.
    for var in [
        "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    ] {
        if let Ok(text) = std::env::var(var) {
            for (name, value) in
                otlp::parse_headers(&text).map_err(|e| anyhow::anyhow!("{var}: {e}"))?
            {
                headers.retain(|(n, _)| *n != name);
                headers.push((name, value));
            }
        }
    }
    // Not as a URL: tests and people look for the agent's own `http://` address in its log.
    let scheme = if endpoint.https {
        "https"
    } else {
        "plain http"
    };
    log::info!(
        "exporting one span per LLM call to the OTLP collector at {}{} over {scheme}{}",
        endpoint.authority(),
        endpoint.path,
        if headers.is_empty() {
            String::new()
        } else {
            // Names only: values are credentials.
            let names: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
            format!(" with headers {}", names.join(", "))
        }
    );
    let collector = otlp::Collector::new(endpoint, capture.otlp_ca_file.as_deref(), headers)
        .map_err(|e| anyhow::anyhow!("--otlp-endpoint {url}: {e}"))?;
    let (sink, exporter) = otlp::start(collector, otlp::ExporterConfig::default(), registry);
    sinks.push(Box::new(sink));
    Ok(Some(exporter))
}

/// How long queued spans may take to leave at shutdown.
const OTLP_FLUSH_DEADLINE: std::time::Duration = std::time::Duration::from_secs(3);

async fn run_agent(capture: CaptureOptions, opts: AgentOptions) -> anyhow::Result<()> {
    let registry = prometheus::Registry::new();
    let metrics = Arc::new(Mutex::new(SelfMetrics::new(registry.clone())));
    let mut stage_metrics = StageMetrics::new(&registry);
    let genai = GenAiMetrics::new(&registry, capture.max_label_sets);
    let cost = CostMetrics::new(&registry, capture.max_label_sets);
    let mut sinks: Vec<Box<dyn RecordSink + Send>> = vec![Box::new(genai), Box::new(cost)];
    let otlp = otlp_exporter(&capture, &registry, &mut sinks)?;
    let stats = Stats::shared();
    sinks.push(Box::new(StatsSink::new(stats.clone())));
    log_and_anomaly_sinks(&capture, &registry, &mut sinks)?;
    let sink =
        exchange_sink(&capture, &registry, sinks)?.with_enricher(pricer(&capture, &registry)?);
    let ready = Arc::new(AtomicBool::new(false));
    let state = ServerState {
        registry,
        ready: ready.clone(),
        before_scrape: Arc::new(|| {}),
        stats: Some(stats),
    };
    let security = EndpointSecurity::load(&opts.security_files())
        .map_err(anyhow::Error::msg)?
        .with_metrics(&state.registry);
    let scheme = if security.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let auth = if security.token.is_some() {
        " (bearer token required except on /healthz and /readyz)"
    } else {
        ""
    };
    // Listen first: liveness answers while the probes load.
    let (addr, serve) = bind(opts.listen, state, security)
        .await
        .with_context(|| format!("cannot listen on {} (--listen)", opts.listen))?;
    let server = tokio::spawn(serve);
    log::info!("serving /metrics, /healthz, /readyz and /v1/stats on {scheme}://{addr}{auth}");
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
    if let Some(otlp) = otlp {
        otlp.shutdown(OTLP_FLUSH_DEADLINE).await;
    }
    server.abort();
    Ok(())
}

/// The cost stage: the embedded prices, overridden by `--pricing` (reloaded when it changes).
fn pricer(
    capture: &CaptureOptions,
    registry: &prometheus::Registry,
) -> anyhow::Result<Box<dyn RecordEnricher + Send>> {
    let pricer = Pricer::new(capture.pricing.as_deref(), registry).map_err(|e| {
        let path = capture
            .pricing
            .as_deref()
            .unwrap_or(std::path::Path::new(""));
        anyhow::anyhow!("--pricing {}: {e}", path.display())
    })?;
    Ok(Box::new(pricer))
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
    let mut sinks: Vec<Box<dyn RecordSink + Send>> = vec![Box::new(PidFilter {
        pids: opts.pids,
        inner: watch,
    })];
    // No /metrics in watch: the exporter's counters go to a registry nobody reads.
    let otlp = otlp_exporter(&capture, &prometheus::Registry::new(), &mut sinks)?;
    log_and_anomaly_sinks(&capture, &prometheus::Registry::new(), &mut sinks)?;
    let sink = exchange_sink(&capture, &prometheus::Registry::new(), sinks)?
        .with_enricher(pricer(&capture, &prometheus::Registry::new())?);
    let mut runtime = Runtime::start(capture, sink, metrics)?;
    log::info!(
        "ready: {} TLS libraries hooked; one line per LLM call follows",
        runtime.attached_tls_libraries().len()
    );
    runtime.run(shutdown_signal(), |_| {}).await?;
    if let Some(otlp) = otlp {
        otlp.shutdown(OTLP_FLUSH_DEADLINE).await;
    }
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
