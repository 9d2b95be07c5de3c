//! The agent's main loop: load, attach, read the ring buffer, keep attaching as processes
//! start, keep the self metrics current. Shared by `tokentap agent` and `tokentap capture`;
//! they differ only in the sink and in whether the HTTP server runs.

use std::{
    collections::HashSet,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::{
    cli::CaptureOptions,
    clock::KtimeClock,
    discovery,
    pipeline::{Pipeline, ProcessNotice, StreamSink},
    probes::{AttachOutcome, KernelCounters, Probes, check_environment},
    self_metrics::SelfMetrics,
    source::RingBufSource,
    stream::CaptureLimits,
    tls_stacks::coverage::{CoverageWatch, LlmEndpoints, ProcScanner, scan_mapped},
};

/// How long after an exec or library mapping the process is scanned once more, in case the
/// library was mapped after the first scan read its maps.
const FOLLOW_UP_SCAN: Duration = Duration::from_millis(100);
/// The poll period: most records are written without waking the agent (see
/// `globals::WAKEUP_BYTES`), so this bounds how late they are read.
const TICK: Duration = Duration::from_millis(20);
const METRICS_SYNC: Duration = Duration::from_millis(250);

enum Wake {
    Shutdown,
    Batch(std::io::Result<usize>),
    Tick,
}

/// Everything set up and attached, ready to run.
pub struct Runtime<S> {
    options: CaptureOptions,
    probes: Probes,
    source: RingBufSource,
    counters: KernelCounters,
    pipeline: Pipeline<S>,
    metrics: Arc<Mutex<SelfMetrics>>,
    follow_ups: Vec<(Instant, u32)>,
    coverage: CoverageWatch,
}

impl<S: StreamSink> Runtime<S> {
    /// Checks the environment, loads the probes and attaches to every OpenSSL in use.
    pub fn start(
        options: CaptureOptions,
        sink: S,
        metrics: Arc<Mutex<SelfMetrics>>,
    ) -> anyhow::Result<Self> {
        options.validate().map_err(anyhow::Error::msg)?;
        check_environment().map_err(anyhow::Error::msg)?;
        let mut probes = Probes::load(&options.probe_config())?;
        if let Err(why) = &probes.process_watch {
            log::warn!("{why}");
        }
        let source = RingBufSource::new(probes.take_ring_buffer()?)
            .context("cannot poll the eBPF ring buffer")?;
        let counters = probes.take_counters()?;
        let limits = CaptureLimits {
            head_bytes: options.head_bytes,
            tail_bytes: options.tail_bytes,
        };
        let pipeline = Pipeline::new(limits, KtimeClock::now(), sink);
        let mut runtime = Self {
            options,
            probes,
            source,
            counters,
            pipeline,
            metrics,
            follow_ups: Vec::new(),
            coverage: CoverageWatch::default(),
        };
        runtime.attach_initial()?;
        Ok(runtime)
    }

    /// Host libraries, `--libssl` files, and every library mapped by a running process.
    fn attach_initial(&mut self) -> anyhow::Result<()> {
        let mut explicit = Vec::new();
        for path in &self.options.libssl {
            let lib = discovery::libssl_at(path)
                .with_context(|| format!("--libssl {}: cannot open", path.display()))?;
            explicit.push(lib);
        }
        for lib in &explicit {
            if let Err(e) = self.probes.attach_library(lib) {
                bail!("--libssl {}: {}", lib.display, e.reason);
            }
        }
        let mut libs = discovery::standard_libraries(Path::new("/"));
        let host_root = self.options.proc_root.join("1/root");
        if !same_file(Path::new("/"), &host_root) {
            libs.extend(discovery::standard_libraries(&host_root));
        }
        for lib in &libs {
            self.offer(lib);
        }
        let pids = discovery::all_pids(&self.options.proc_root);
        for &pid in &pids {
            self.scan_process(pid);
        }
        if self.probes.tls_libraries() == 0 && self.probes.uprobe_permission_denied() {
            bail!(crate::probes::UPROBE_PRIVILEGE);
        }
        if self.probes.tls_libraries() == 0 {
            bail!(
                "no OpenSSL library found (looked in the standard library directories and the memory maps of {} processes): install OpenSSL's libssl, or pass --libssl PATH",
                pids.len()
            );
        }
        self.sync_metrics();
        self.sync_tls_coverage();
        Ok(())
    }

    /// `tokentap_process_tls_coverage`: every process with TCP connections, judged against
    /// the files actually hooked.
    fn sync_tls_coverage(&mut self) {
        let proc_root = &self.options.proc_root;
        let endpoints = LlmEndpoints::from_provider_args(&self.options.providers);
        let mut scanner = ProcScanner::new(proc_root, &endpoints);
        let rows: Vec<_> = discovery::all_pids(proc_root)
            .into_iter()
            .filter_map(|pid| scanner.process(pid, |pid, m| scan_mapped(proc_root, pid, m)))
            .collect();
        let probes = &self.probes;
        let counts = self
            .coverage
            .update(&rows, |s| probes.is_attached(s.dev, s.inode));
        if let Ok(m) = self.metrics.lock() {
            m.set_tls_coverage(&counts);
        }
    }

    fn offer(&mut self, lib: &discovery::LibraryFile) {
        match self.probes.attach_library(lib) {
            Ok(AttachOutcome::Attached(a)) => {
                log::info!("hooked {}: {}", a.display, a.functions.join(", "));
            }
            Ok(AttachOutcome::AlreadyAttached | AttachOutcome::NothingToHook) => {}
            Err(e) => {
                log::warn!("cannot hook {e}");
                if let Ok(m) = self.metrics.lock() {
                    m.attach_error();
                }
            }
        }
    }

    fn scan_process(&mut self, pid: u32) {
        match discovery::process_libraries(&self.options.proc_root, pid) {
            Ok((libs, errors)) => {
                for lib in &libs {
                    self.offer(lib);
                }
                for e in errors {
                    log::warn!("pid {pid}: {e}");
                }
            }
            // The process is gone, or a kernel thread: nothing to hook.
            Err(e) => log::trace!("pid {pid}: {e}"),
        }
        if let Ok(exe) = discovery::process_executable(&self.options.proc_root, pid) {
            self.offer(&exe);
        }
    }

    pub fn attached_tls_libraries(&self) -> Vec<String> {
        self.probes
            .attached()
            .filter(|a| a.kind.is_tls())
            .map(|a| a.display.clone())
            .collect()
    }

    pub fn pipeline(&self) -> &Pipeline<S> {
        &self.pipeline
    }

    pub fn pipeline_mut(&mut self) -> &mut Pipeline<S> {
        &mut self.pipeline
    }

    fn sync_metrics(&mut self) {
        let kernel = self.counters.read();
        if let Ok(mut m) = self.metrics.lock() {
            m.sync(
                self.pipeline.stats(),
                &self.pipeline.assembler().stats(),
                &kernel,
            );
            let a = self.pipeline.assembler();
            m.set_connections(a.open_connections(), a.processes());
            m.set_libraries_attached(self.probes.tls_libraries());
        }
    }

    /// Runs until `shutdown` resolves, then drains what the kernel already delivered.
    pub async fn run(
        &mut self,
        shutdown: impl Future<Output = ()>,
        mut after_batch: impl FnMut(&mut Pipeline<S>),
    ) -> anyhow::Result<()> {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let rescan_every = Duration::from_secs(self.options.rescan_interval);
        let idle_ns = self.options.idle_timeout.saturating_mul(1_000_000_000);
        let mut last_rescan = Instant::now();
        let mut last_sync = Instant::now();
        let mut last_clock = Instant::now();
        let mut notices = Vec::new();
        loop {
            let wake = {
                let pipeline = &mut self.pipeline;
                let notices = &mut notices;
                let mut each = |record: &[u8]| {
                    if let Some(n) = pipeline.handle_record(record) {
                        notices.push(n);
                    }
                };
                // Unbiased: under sustained load the ring is always ready, and the tick (metrics,
                // rescans, eviction) must still get its turns.
                tokio::select! {
                    () = &mut shutdown => Wake::Shutdown,
                    batch = self.source.next_batch(&mut each) => Wake::Batch(batch),
                    _ = tick.tick() => Wake::Tick,
                }
            };
            match wake {
                Wake::Shutdown => break,
                Wake::Batch(batch) => {
                    batch.context("reading the eBPF ring buffer")?;
                    self.handle_notices(&mut notices);
                    after_batch(&mut self.pipeline);
                }
                Wake::Tick => {
                    let pipeline = &mut self.pipeline;
                    self.source.drain_now(&mut |record| {
                        if let Some(n) = pipeline.handle_record(record) {
                            notices.push(n);
                        }
                    });
                    self.handle_notices(&mut notices);
                    after_batch(&mut self.pipeline);
                    let now = Instant::now();
                    self.run_follow_ups(now);
                    if now.duration_since(last_rescan) >= rescan_every {
                        last_rescan = now;
                        for pid in discovery::all_pids(&self.options.proc_root) {
                            self.scan_process(pid);
                        }
                        self.sync_tls_coverage();
                    }
                    if now.duration_since(last_clock) >= Duration::from_secs(10) {
                        last_clock = now;
                        self.pipeline.set_clock(KtimeClock::now());
                        self.pipeline
                            .evict_idle(KtimeClock::monotonic_now_ns(), idle_ns);
                        after_batch(&mut self.pipeline);
                    }
                    if now.duration_since(last_sync) >= METRICS_SYNC {
                        last_sync = now;
                        self.sync_metrics();
                    }
                }
            }
        }
        let pipeline = &mut self.pipeline;
        self.source.drain_now(&mut |record| {
            pipeline.handle_record(record);
        });
        after_batch(&mut self.pipeline);
        self.sync_metrics();
        Ok(())
    }

    fn handle_notices(&mut self, notices: &mut Vec<ProcessNotice>) {
        let mut scanned = HashSet::new();
        for notice in notices.drain(..) {
            match notice {
                ProcessNotice::Exec { tgid } | ProcessNotice::LinkMapChanged { tgid } => {
                    if scanned.insert(tgid) {
                        self.scan_process(tgid);
                        let due = Instant::now() + FOLLOW_UP_SCAN;
                        self.follow_ups.retain(|&(_, p)| p != tgid);
                        self.follow_ups.push((due, tgid));
                    }
                }
                ProcessNotice::Exit { tgid } => self.follow_ups.retain(|&(_, p)| p != tgid),
            }
        }
    }

    fn run_follow_ups(&mut self, now: Instant) {
        let due: Vec<u32> = self
            .follow_ups
            .iter()
            .filter(|(at, _)| *at <= now)
            .map(|&(_, p)| p)
            .collect();
        self.follow_ups.retain(|(at, _)| *at > now);
        for pid in due {
            self.scan_process(pid);
        }
    }

    /// Kernel-side loss totals right now.
    pub fn kernel_counters(&self) -> [u64; tokentap_common::KernelCounter::COUNT as usize] {
        self.counters.read()
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        // Cannot tell: treat as the same, and do not scan twice.
        _ => true,
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the process still ends on the default action.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
