//! The span exporter: a [`RecordSink`] that turns records into encoded spans and queues them
//! (bounded: when full, the span is dropped and counted; the pipeline never waits), and a
//! background task that batches the queue and POSTs it to the collector, retrying with
//! backoff on connect errors and 429/502/503/504, and dropping (counted) after that.

use std::time::Duration;

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
    sync::{mpsc, watch},
    task::JoinHandle,
    time::{Instant, sleep, timeout},
};

use super::{
    Collector,
    proto::{export_request, resource},
    span::{IdGenerator, ProcessResource, WorkloadResource, span_of},
};
use crate::{exchanges::RecordSink, llm::ExchangeRecord};

/// Tuning; the defaults suit a local collector.
#[derive(Clone, Debug)]
pub struct ExporterConfig {
    /// Spans waiting for export; beyond this, new spans are dropped.
    pub queue_capacity: usize,
    /// Spans per request.
    pub max_batch: usize,
    /// A partial batch goes out after this long.
    pub flush_interval: Duration,
    /// Attempts per batch (the first included).
    pub max_attempts: u32,
    /// Delay before the first retry; doubles each time, up to `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Connect, send and read the answer within this.
    pub request_timeout: Duration,
}

impl Default for ExporterConfig {
    fn default() -> Self {
        Self {
            queue_capacity: 4096,
            max_batch: 512,
            flush_interval: Duration::from_secs(1),
            max_attempts: 5,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// The exporter's counters, in the agent's registry.
#[derive(Clone)]
pub struct ExporterMetrics {
    pub exported: IntCounter,
    pub dropped: IntCounterVec,
    pub errors: IntCounter,
}

impl ExporterMetrics {
    pub fn new(registry: &Registry) -> Self {
        let exported = IntCounter::new(
            "tokentap_otlp_spans_exported_total",
            "Spans the OTLP collector accepted.",
        )
        .expect("valid metric definition");
        let dropped = IntCounterVec::new(
            Opts::new(
                "tokentap_otlp_spans_dropped_total",
                "Spans not exported, by reason (queue_full: the export queue was full; export_failed: the collector refused them or was unreachable after retries).",
            ),
            &["reason"],
        )
        .expect("valid metric definition");
        let errors = IntCounter::new(
            "tokentap_otlp_export_errors_total",
            "Failed OTLP export attempts (each retry counts).",
        )
        .expect("valid metric definition");
        for c in [
            Box::new(exported.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(dropped.clone()),
            Box::new(errors.clone()),
        ] {
            // Registered once per registry; a second exporter shares the counters.
            let _ = registry.register(c);
        }
        // Both reasons show, at zero, from the start.
        dropped.with_label_values(&[QUEUE_FULL]);
        dropped.with_label_values(&[EXPORT_FAILED]);
        Self {
            exported,
            dropped,
            errors,
        }
    }
}

const QUEUE_FULL: &str = "queue_full";
const EXPORT_FAILED: &str = "export_failed";

/// One encoded span and the encoded resource of its process.
struct Queued {
    resource: Vec<u8>,
    span: Vec<u8>,
}

/// The record sink half: converts and queues.
pub struct OtlpSink {
    queue: mpsc::Sender<Queued>,
    ids: IdGenerator,
    workload: Box<dyn WorkloadResource>,
    metrics: ExporterMetrics,
}

impl OtlpSink {
    /// Replaces how records map to resource attributes (the Kubernetes seam).
    pub fn with_workload(mut self, workload: Box<dyn WorkloadResource>) -> Self {
        self.workload = workload;
        self
    }

    /// Spans waiting in the queue.
    pub fn queued(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }
}

impl RecordSink for OtlpSink {
    fn record(&mut self, record: &ExchangeRecord) {
        let span = span_of(record, &mut self.ids).encode();
        let resource = resource(&self.workload.attributes(record));
        if self.queue.try_send(Queued { resource, span }).is_err() {
            self.metrics.dropped.with_label_values(&[QUEUE_FULL]).inc();
        }
    }
}

/// The background half: stop it with [`OtlpExporter::shutdown`] to flush what is queued.
pub struct OtlpExporter {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl OtlpExporter {
    /// Flushes what is queued, giving up after `deadline`.
    pub async fn shutdown(self, deadline: Duration) {
        let Self { stop, mut task } = self;
        let _ = stop.send(true);
        if timeout(deadline, &mut task).await.is_err() {
            log::warn!(
                "OTLP: spans still queued at shutdown were not exported within {deadline:?}"
            );
            task.abort();
        }
    }
}

/// Starts the export task on the current tokio runtime; returns the sink to add to the
/// pipeline and the handle to stop the task.
pub fn start(
    collector: Collector,
    config: ExporterConfig,
    registry: &Registry,
) -> (OtlpSink, OtlpExporter) {
    let metrics = ExporterMetrics::new(registry);
    let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(run(collector, config, rx, stop_rx, metrics.clone()));
    (
        OtlpSink {
            queue: tx,
            ids: IdGenerator::new(),
            workload: Box::new(ProcessResource),
            metrics,
        },
        OtlpExporter {
            stop: stop_tx,
            task,
        },
    )
}

async fn run(
    collector: Collector,
    config: ExporterConfig,
    mut rx: mpsc::Receiver<Queued>,
    mut stop: watch::Receiver<bool>,
    metrics: ExporterMetrics,
) {
    let mut batch: Vec<Queued> = Vec::with_capacity(config.max_batch);
    let mut due = Instant::now() + config.flush_interval;
    loop {
        let stopping = tokio::select! {
            item = rx.recv() => match item {
                Some(q) => {
                    batch.push(q);
                    false
                }
                None => true,
            },
            () = tokio::time::sleep_until(due) => false,
            _ = stop.changed() => true,
        };
        if stopping {
            break;
        }
        if batch.len() >= config.max_batch || (Instant::now() >= due && !batch.is_empty()) {
            export_with_retry(&collector, &config, &mut batch, &metrics, Some(&mut stop)).await;
            due = Instant::now() + config.flush_interval;
        } else if Instant::now() >= due {
            due = Instant::now() + config.flush_interval;
        }
        if *stop.borrow() {
            break;
        }
    }
    // Flush: what is batched and queued, one attempt per batch (the caller's deadline bounds
    // the whole).
    let last = ExporterConfig {
        max_attempts: 1,
        ..config.clone()
    };
    while let Ok(q) = rx.try_recv() {
        batch.push(q);
        if batch.len() >= config.max_batch {
            export_with_retry(&collector, &last, &mut batch, &metrics, None).await;
        }
    }
    if !batch.is_empty() {
        export_with_retry(&collector, &last, &mut batch, &metrics, None).await;
    }
}

/// Exports `batch` (emptying it), retrying what can be retried; counts the outcome.
async fn export_with_retry(
    collector: &Collector,
    config: &ExporterConfig,
    batch: &mut Vec<Queued>,
    metrics: &ExporterMetrics,
    mut stop: Option<&mut watch::Receiver<bool>>,
) {
    let spans = batch.len() as u64;
    let body = encode_batch(batch);
    batch.clear();
    let mut backoff = config.initial_backoff;
    for attempt in 1..=config.max_attempts.max(1) {
        match post(collector, &body, config.request_timeout).await {
            Ok(()) => {
                metrics.exported.inc_by(spans);
                return;
            }
            Err(e) => {
                metrics.errors.inc();
                let last = attempt >= config.max_attempts || !e.retryable();
                log::debug!("OTLP export attempt {attempt} failed: {e}");
                if last {
                    log::warn!("OTLP: dropping {spans} spans: {e}");
                    break;
                }
            }
        }
        // Wait, unless shutting down (then the final flush takes over).
        match stop.as_deref_mut() {
            Some(stop) if !*stop.borrow() => {
                tokio::select! {
                    () = sleep(backoff) => {}
                    _ = stop.changed() => {}
                }
            }
            // Shutting down: no more retries; the batch is counted as dropped below.
            Some(_) => break,
            None => sleep(backoff).await,
        }
        backoff = (backoff * 2).min(config.max_backoff);
    }
    metrics
        .dropped
        .with_label_values(&[EXPORT_FAILED])
        .inc_by(spans);
}

/// One request: spans grouped by resource, in arrival order.
fn encode_batch(batch: &[Queued]) -> Vec<u8> {
    let mut groups: Vec<(&[u8], Vec<&[u8]>)> = Vec::new();
    for q in batch {
        match groups.iter_mut().find(|(r, _)| *r == q.resource.as_slice()) {
            Some((_, spans)) => spans.push(&q.span),
            None => groups.push((&q.resource, vec![&q.span])),
        }
    }
    export_request(groups, "tokentap", env!("CARGO_PKG_VERSION"))
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("cannot reach the collector at {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("collector connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("collector did not answer within {0:?}")]
    Timeout(Duration),
    #[error("collector answered HTTP {0}")]
    Status(u16),
    #[error("collector sent a malformed answer")]
    BadResponse,
    #[error(
        "TLS with the collector at {0} failed: {1} (is it https? is its CA in --otlp-ca-file or the system bundle?)"
    )]
    Tls(String, String),
}

impl ExportError {
    /// Whether trying again later can help.
    pub fn retryable(&self) -> bool {
        match self {
            Self::Connect(..) | Self::Io(_) | Self::Timeout(_) => true,
            // The statuses OTLP/HTTP says to retry.
            Self::Status(s) => matches!(*s, 429 | 502 | 503 | 504),
            // A certificate that does not verify will not verify on the next attempt.
            Self::BadResponse | Self::Tls(..) => false,
        }
    }
}

/// POSTs one export request; Ok on a 2xx answer.
pub async fn post(collector: &Collector, body: &[u8], limit: Duration) -> Result<(), ExportError> {
    match timeout(limit, post_inner(collector, body)).await {
        Ok(r) => r,
        Err(_) => Err(ExportError::Timeout(limit)),
    }
}

/// Answers bigger than this are not read further (the status line is all that matters).
const MAX_RESPONSE: usize = 64 * 1024;

async fn post_inner(collector: &Collector, body: &[u8]) -> Result<(), ExportError> {
    let endpoint = &collector.endpoint;
    let authority = endpoint.authority();
    let tcp = TcpStream::connect((endpoint.host.as_str(), endpoint.port))
        .await
        .map_err(|e| ExportError::Connect(authority.clone(), e))?;
    let mut head = format!(
        "POST {} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\nUser-Agent: tokentap/{}\r\nConnection: close\r\n",
        endpoint.path,
        body.len(),
        env!("CARGO_PKG_VERSION"),
    );
    for (name, value) in collector.headers() {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    match collector.tls() {
        Some(config) => {
            let tls = crate::tls_client::connect(config.clone(), &endpoint.host, tcp)
                .await
                .map_err(|e| ExportError::Tls(authority, e))?;
            exchange(tls, head.as_bytes(), body).await
        }
        None => exchange(tcp, head.as_bytes(), body).await,
    }
}

/// Sends the request and reads the answer's status.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    head: &[u8],
    body: &[u8],
) -> Result<(), ExportError> {
    stream.write_all(head).await?;
    stream.write_all(body).await?;
    stream.flush().await?;
    // The status line decides; the rest of the answer is drained briefly (bounded) so the
    // collector sees a clean close, and a collector that keeps the connection open anyway
    // costs at most a second.
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let header_end = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(ExportError::BadResponse);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if buf.len() > MAX_RESPONSE {
            return Err(ExportError::BadResponse);
        }
    };
    let status = parse_status(&buf).ok_or(ExportError::BadResponse)?;
    let body_len = content_length(&buf[..header_end]).unwrap_or(MAX_RESPONSE);
    let mut have = buf.len() - header_end;
    let _ = timeout(Duration::from_secs(1), async {
        while have < body_len.min(MAX_RESPONSE) {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => have += n,
            }
        }
    })
    .await;
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(ExportError::Status(status))
    }
}

fn content_length(head: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(head).ok()?;
    text.split("\r\n").find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())?
    })
}

/// The status code once the status line is complete.
fn parse_status(buf: &[u8]) -> Option<u16> {
    let end = buf.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&buf[..end]).ok()?;
    let mut parts = line.split(' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}
