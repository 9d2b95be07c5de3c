//! The main job's sink: connection streams → HTTP exchanges → LLM exchange records → record
//! sinks (metrics, watch).
//!
//! Receives: [`StreamItem`]s from the pipeline. Emits: [`ExchangeRecord`]s to every
//! [`RecordSink`]. Process facts (executable, container, service name override, systemd
//! unit) are looked up once per process; pod facts when each record is made.

use std::{collections::HashMap, fs, path::PathBuf, time::Instant};

use crate::{
    clock::KtimeClock,
    http::{HttpConfig, HttpEvent, HttpStats, HttpTracker},
    llm::{
        ContentPolicy, ExchangeRecord, ExchangeTracker, LlmStats, ProcessContext, ProviderConfig,
    },
    metrics::genai::GenAiMetrics,
    pipeline::StreamSink,
    stream::StreamItem,
    workload::{PodRef, WorkloadResolver, process},
};

/// Where exchange records go.
pub trait RecordSink {
    fn record(&mut self, record: &ExchangeRecord);

    /// These pods were deleted a while ago: drop what is kept per pod (metric series).
    fn forget_pods(&mut self, _pods: &[PodRef]) {}
}

/// Adds to a record before the sinks see it (cost, anomaly flags, content).
pub trait RecordEnricher {
    fn enrich(&mut self, record: &mut ExchangeRecord);
}

impl RecordSink for GenAiMetrics {
    fn record(&mut self, record: &ExchangeRecord) {
        GenAiMetrics::record(self, record);
    }

    fn forget_pods(&mut self, pods: &[PodRef]) {
        GenAiMetrics::forget_pods(self, pods);
    }
}

/// Facts about processes, read from `/proc` once per process.
pub struct ProcessInfo {
    proc_root: PathBuf,
    known: HashMap<u32, ProcessContext>,
}

/// More processes than this and the cache starts over (they are cheap to look up again).
const MAX_PROCESSES: usize = 65_536;

impl ProcessInfo {
    pub fn new(proc_root: PathBuf) -> Self {
        Self {
            proc_root,
            known: HashMap::new(),
        }
    }

    /// The context of `tgid`; `comm` is the fallback name when `/proc` has nothing.
    pub fn get(&mut self, tgid: u32, comm: &[u8]) -> &ProcessContext {
        if self.known.len() >= MAX_PROCESSES && !self.known.contains_key(&tgid) {
            self.known.clear();
        }
        let proc_root = &self.proc_root;
        self.known.entry(tgid).or_insert_with(|| {
            let executable = fs::read_link(proc_root.join(format!("{tgid}/exe")))
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_else(|| String::from_utf8_lossy(comm).into_owned());
            let cgroup = fs::read_to_string(proc_root.join(format!("{tgid}/cgroup"))).ok();
            let cgroup = cgroup.as_deref().unwrap_or("");
            ProcessContext {
                pid: tgid,
                executable,
                container_id: container_id_from_cgroup(cgroup),
                service_name_env: process::read_service_name_env(proc_root, tgid),
                systemd_unit: process::systemd_unit(cgroup),
            }
        })
    }

    pub fn forget(&mut self, tgid: u32) {
        self.known.remove(&tgid);
    }
}

/// The container id in a `/proc/PID/cgroup` file: the last 64-hex-digit run in a path
/// segment (docker, containerd, cri-o and podman all name the container's cgroup after it).
pub fn container_id_from_cgroup(text: &str) -> Option<String> {
    let mut found = None;
    for line in text.lines() {
        let path = line.rsplit(':').next().unwrap_or("");
        for segment in path.split('/') {
            // `cri-containerd-<id>.scope`, `docker-<id>.scope`, `crio-<id>`, `<id>`
            let name = segment.strip_suffix(".scope").unwrap_or(segment);
            let candidate = name.rsplit(['-', ':']).next().unwrap_or(name);
            if candidate.len() == 64 && candidate.bytes().all(|b| b.is_ascii_hexdigit()) {
                found = Some(candidate.to_ascii_lowercase());
            }
        }
    }
    found
}

/// Runs the HTTP and LLM stages over every stream item.
pub struct ExchangeSink {
    http: HttpTracker,
    llm: ExchangeTracker,
    processes: ProcessInfo,
    workloads: WorkloadResolver,
    enrichers: Vec<Box<dyn RecordEnricher + Send>>,
    sinks: Vec<Box<dyn RecordSink + Send>>,
    records: u64,
}

impl ExchangeSink {
    pub fn new(
        http: HttpConfig,
        providers: ProviderConfig,
        proc_root: PathBuf,
        sinks: Vec<Box<dyn RecordSink + Send>>,
    ) -> Self {
        Self {
            http: HttpTracker::new(http),
            llm: ExchangeTracker::new(providers),
            processes: ProcessInfo::new(proc_root),
            workloads: WorkloadResolver::default(),
            enrichers: Vec::new(),
            sinks,
            records: 0,
        }
    }

    /// The LLM stage with other bounds than the defaults (the fuzzer's tight limits reach the
    /// overflow paths with small inputs).
    pub fn with_llm_limits(mut self, limits: crate::llm::TrackerLimits) -> Self {
        self.llm.set_limits(limits);
        self
    }

    /// Adds a stage that enriches every record before the sinks see it (in order added).
    pub fn with_enricher(mut self, enricher: Box<dyn RecordEnricher + Send>) -> Self {
        self.enrichers.push(enricher);
        self
    }

    /// Resolves records to pods and workloads (Kubernetes); without it only `service_name`.
    pub fn with_workloads(mut self, workloads: WorkloadResolver) -> Self {
        self.workloads = workloads;
        self
    }

    /// Whose prompt and completion text the LLM stage puts into records.
    pub fn with_content_policy(mut self, policy: ContentPolicy) -> Self {
        self.llm.set_content_policy(policy);
        self
    }

    pub fn http_stats(&self) -> &HttpStats {
        self.http.stats()
    }

    pub fn llm_stats(&self) -> &LlmStats {
        self.llm.stats()
    }

    /// Exchange records produced so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    pub fn open_http_connections(&self) -> usize {
        self.http.open_connections()
    }

    pub fn llm_in_flight(&self) -> usize {
        self.llm.in_flight()
    }

    pub fn sinks_mut(&mut self) -> &mut [Box<dyn RecordSink + Send>] {
        &mut self.sinks
    }
}

fn event_tgid(ev: &HttpEvent<'_>) -> u32 {
    match ev {
        HttpEvent::Request { conn, .. }
        | HttpEvent::ResponseHead { conn, .. }
        | HttpEvent::ResponseBody { conn, .. }
        | HttpEvent::ResponseGap { conn, .. }
        | HttpEvent::ResponseEnd { conn, .. }
        | HttpEvent::Abandoned { conn, .. } => conn.tgid,
    }
}

impl StreamSink for ExchangeSink {
    fn item(&mut self, item: &StreamItem<'_, '_>, clock: &KtimeClock) {
        let Self {
            http,
            llm,
            processes,
            workloads,
            enrichers,
            sinks,
            records,
        } = self;
        if let StreamItem::Data { key, record, .. } = item {
            processes.get(key.tgid, record.comm);
        }
        let unix_ns_of = |ktime: u64| clock.to_unix_ns(ktime);
        http.on_stream_item(item, &mut |ev| {
            let ctx = processes.get(event_tgid(&ev), b"");
            llm.on_http_event(&ev, ctx, &unix_ns_of, &mut |mut record| {
                *records += 1;
                (record.service_name, record.k8s) = workloads.identify(ctx);
                for enricher in enrichers.iter_mut() {
                    enricher.enrich(&mut record);
                }
                for sink in sinks.iter_mut() {
                    sink.record(&record);
                }
            });
        });
    }

    fn process_exited(&mut self, tgid: u32) {
        self.processes.forget(tgid);
    }

    fn evict_idle(&mut self, now_ktime_ns: u64, idle_ns: u64) {
        self.llm.evict_idle(now_ktime_ns, idle_ns);
        let expired = self.workloads.expired(Instant::now());
        if !expired.is_empty() {
            for sink in &mut self.sinks {
                sink.forget_pods(&expired);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{Arc, Mutex},
        time::Duration,
    };

    use prometheus::{Encoder, Registry, TextEncoder};

    use super::*;
    use crate::{
        anomalies::AnomalyMetrics,
        cost::CostMetrics,
        llm::{Cost, K8sWorkload, Tokens},
        workload::{PodIndex, pods::Pod},
    };

    fn pod_record() -> ExchangeRecord {
        ExchangeRecord {
            provider: "openai".into(),
            operation: "chat".into(),
            request_model: Some("gpt-4o".into()),
            http_status: Some(200),
            tokens: Tokens {
                input: Some(10),
                output: Some(5),
                ..Tokens::default()
            },
            cost: Some(Cost {
                total_usd: 0.1,
                input_usd: 0.05,
                output_usd: 0.05,
                ..Cost::default()
            }),
            anomalies: vec!["truncated".into()],
            duration_s: Some(0.5),
            executable: "python3".into(),
            service_name: "web".into(),
            k8s: Some(K8sWorkload {
                namespace: "ns".into(),
                pod: "web-0".into(),
                container: "main".into(),
                workload_name: "web".into(),
                workload_kind: "StatefulSet".into(),
            }),
            ..ExchangeRecord::default()
        }
    }

    /// Every metric sink keyed by the workload labels drops a deleted pod's series, and the
    /// exchange stage hands expired pods to its sinks when it evicts.
    #[test]
    fn expired_pods_leave_every_family() {
        let registry = Registry::new();
        let mut sinks: Vec<Box<dyn RecordSink + Send>> = vec![
            Box::new(GenAiMetrics::new(&registry, 100)),
            Box::new(CostMetrics::new(&registry, 100)),
            Box::new(AnomalyMetrics::new(&registry, 100)),
        ];
        for sink in &mut sinks {
            sink.record(&pod_record());
        }
        let scrape = || {
            let mut out = Vec::new();
            TextEncoder::new()
                .encode(&registry.gather(), &mut out)
                .expect("encode");
            String::from_utf8(out).expect("utf8")
        };
        for family in [
            "gen_ai_client_operation_duration_seconds_count{",
            "gen_ai_client_token_usage_count{",
            "tokentap_tokens_total{",
            "tokentap_requests_total{",
            "tokentap_cost_usd_total{",
            "tokentap_anomalies_total{",
        ] {
            assert!(
                scrape()
                    .lines()
                    .any(|l| l.starts_with(family) && l.contains("k8s_pod_name=\"web-0\"")),
                "{family}"
            );
        }
        let pods = Arc::new(Mutex::new(PodIndex::new(Duration::ZERO)));
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-0", "namespace": "ns", "uid": "u"}
        }))
        .expect("pod");
        if let Ok(mut index) = pods.lock() {
            index.upsert(&pod);
            index.delete("u", Instant::now());
        }
        let mut stage = ExchangeSink::new(
            HttpConfig::default(),
            ProviderConfig::default(),
            PathBuf::from("/nonexistent"),
            sinks,
        )
        .with_workloads(WorkloadResolver::new(Some(pods)));
        StreamSink::evict_idle(&mut stage, 0, 1);
        let text = scrape();
        assert!(!text.contains("k8s_pod_name=\"web-0\""), "{text}");
        assert!(text.contains("tokentap_metric_label_sets 0"), "{text}");
    }

    #[test]
    fn a_process_gone_from_proc_falls_back_to_its_comm() {
        let root = std::env::temp_dir().join(format!("tokentap-noproc-{}", std::process::id()));
        let mut info = ProcessInfo::new(root.clone());
        let ctx = info.get(4242, b"python3").clone();
        assert_eq!(ctx.executable, "python3");
        assert_eq!(ctx.container_id, None);
        // A cgroup file without an executable link (the process exited mid-read).
        fs::create_dir_all(root.join("4343")).expect("mkdir");
        fs::write(root.join("4343/cgroup"), "0::/user.slice\n").expect("write");
        assert_eq!(info.get(4343, b"curl").executable, "curl");
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn container_ids_from_common_runtimes() {
        let id = "3f0a1b2c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";
        for text in [
            format!(
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-{id}.scope\n"
            ),
            format!("0::/system.slice/docker-{id}.scope\n"),
            format!("12:memory:/docker/{id}\n"),
            format!("0::/kubepods/besteffort/pod1/crio-{id}\n"),
        ] {
            assert_eq!(
                container_id_from_cgroup(&text).as_deref(),
                Some(id),
                "{text}"
            );
        }
        assert_eq!(
            container_id_from_cgroup("0::/user.slice/user-0.slice/session-1.scope\n"),
            None
        );
    }
}

/// Runs a sink on its own thread behind a bounded queue, so that a slow consumer (a log file
/// on a stalled disk, a stdout pipe nobody reads) can never stall the pipeline: records that
/// find the queue full are dropped and counted.
pub struct Detached {
    queue: Option<std::sync::mpsc::SyncSender<ExchangeRecord>>,
    worker: Option<std::thread::JoinHandle<()>>,
    dropped: Option<prometheus::IntCounter>,
    /// Records dropped because the queue was full.
    pub dropped_records: u64,
}

impl Detached {
    /// Records that may wait for the sink.
    pub const QUEUE: usize = 4096;

    /// Moves `sink` to a thread named `name`; drops are counted in
    /// `tokentap_sink_records_dropped_total{sink=name}` of `registry` when given.
    pub fn new(
        name: &'static str,
        mut sink: Box<dyn RecordSink + Send>,
        registry: Option<&prometheus::Registry>,
    ) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<ExchangeRecord>(Self::QUEUE);
        let worker = std::thread::Builder::new()
            .name(format!("tokentap-{name}"))
            .spawn(move || {
                for record in rx {
                    sink.record(&record);
                }
            })?;
        let dropped = registry.and_then(|r| {
            let opts = prometheus::Opts::new(
                "tokentap_sink_records_dropped_total",
                "Exchange records a slow sink (exchange log, watch output) had no room for.",
            )
            .const_label("sink", name);
            let c = prometheus::IntCounter::with_opts(opts).ok()?;
            r.register(Box::new(c.clone())).ok()?;
            Some(c)
        });
        Ok(Self {
            queue: Some(tx),
            worker: Some(worker),
            dropped,
            dropped_records: 0,
        })
    }
}

impl RecordSink for Detached {
    fn record(&mut self, record: &ExchangeRecord) {
        let Some(queue) = &self.queue else { return };
        if queue.try_send(record.clone()).is_err() {
            self.dropped_records += 1;
            if let Some(c) = &self.dropped {
                c.inc();
            }
        }
    }
}

impl Drop for Detached {
    fn drop(&mut self) {
        // Closing the queue ends the worker once it has written what was queued.
        self.queue.take();
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

#[cfg(test)]
mod detached_tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    struct Slow(Arc<Mutex<Vec<u32>>>);

    impl RecordSink for Slow {
        fn record(&mut self, record: &ExchangeRecord) {
            std::thread::sleep(std::time::Duration::from_millis(1));
            if let Ok(mut v) = self.0.lock() {
                v.push(record.pid);
            }
        }
    }

    #[test]
    fn a_slow_sink_never_blocks_and_drops_are_counted() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut d = Detached::new("test", Box::new(Slow(seen.clone())), None).expect("thread");
        let started = Instant::now();
        for pid in 0..(Detached::QUEUE as u32 * 2) {
            d.record(&ExchangeRecord {
                pid,
                ..ExchangeRecord::default()
            });
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "record() must not wait"
        );
        let dropped = d.dropped_records;
        drop(d); // flushes what was queued
        let written = seen.lock().map(|v| v.len()).unwrap_or(0) as u64;
        assert!(dropped > 0);
        assert_eq!(
            written + dropped,
            Detached::QUEUE as u64 * 2,
            "every record written or counted"
        );
    }
}
