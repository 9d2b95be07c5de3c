//! The agent's own figures, in Prometheus form: what was received, captured, skipped and lost.
//!
//! Nothing is dropped without a count: kernel-side losses (ring buffer full, unreadable user
//! memory, read arguments not stashed), gaps in streams by cause, undecodable records, and
//! retried writes that were recognised and dropped.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use tokentap_common::KernelCounter;

use crate::{
    pipeline::PipelineStats,
    stream::AssemblerStats,
    tls_stacks::{
        TlsStack,
        coverage::{Coverage, CoverageCounts},
    },
};

pub struct SelfMetrics {
    pub registry: Registry,
    records: IntCounterVec,
    decode_errors: IntCounterVec,
    captured_bytes: IntCounterVec,
    gap_bytes: IntCounterVec,
    gaps: IntCounterVec,
    kernel_lost: IntCounterVec,
    kernel_lost_bytes: IntCounter,
    calls_lost: IntCounter,
    offset_resets: IntCounter,
    out_of_order: IntCounter,
    connections_opened: IntCounter,
    connections_evicted: IntCounter,
    connections_closed: IntCounterVec,
    connections_open: IntGauge,
    processes_seen: IntCounter,
    tls_processes: IntGauge,
    libraries_attached: IntGauge,
    attach_errors: IntCounter,
    tls_coverage: IntGaugeVec,
    last: Snapshot,
}

/// Totals as of the previous sync, to turn totals into counter increments.
#[derive(Default)]
struct Snapshot {
    pipeline: PipelineStats,
    assembler: AssemblerStats,
    kernel: [u64; KernelCounter::COUNT as usize],
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    registry
        .register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric definition");
    registry
        .register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric definition");
    registry
        .register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

fn kernel_reason(c: KernelCounter) -> Option<&'static str> {
    match c {
        KernelCounter::RingbufFull => Some("ringbuf_full"),
        KernelCounter::UserReadFailed => Some("user_memory_unreadable"),
        KernelCounter::CallArgsFull => Some("call_args_full"),
        KernelCounter::LenUnreadable => Some("length_unreadable"),
        KernelCounter::CallArgsMissing => Some("call_args_missing"),
        KernelCounter::RingbufBytesLost => None,
    }
}

impl SelfMetrics {
    pub fn new(registry: Registry) -> Self {
        let r = &registry;
        let metrics = Self {
            records: counter_vec(
                r,
                "tokentap_events_received_total",
                "Ring-buffer records received, by kind.",
                &["kind"],
            ),
            decode_errors: counter_vec(
                r,
                "tokentap_events_decode_errors_total",
                "Records that could not be decoded, by reason.",
                &["reason"],
            ),
            captured_bytes: counter_vec(
                r,
                "tokentap_captured_bytes_total",
                "TLS plaintext bytes captured, by direction (write: sent by the process, read: received).",
                &["direction"],
            ),
            gap_bytes: counter_vec(
                r,
                "tokentap_stream_gap_bytes_total",
                "Stream bytes not captured, by cause (truncated: middle of a call longer than head+tail; lost; unreadable).",
                &["direction", "cause"],
            ),
            gaps: counter_vec(
                r,
                "tokentap_stream_gaps_total",
                "Gaps in connection streams, by cause.",
                &["direction", "cause"],
            ),
            kernel_lost: counter_vec(
                r,
                "tokentap_events_lost_total",
                "Events the kernel side could not deliver or complete, by reason.",
                &["reason"],
            ),
            kernel_lost_bytes: counter(
                r,
                "tokentap_bytes_lost_total",
                "Payload bytes in records the ring buffer had no room for.",
            ),
            calls_lost: counter(
                r,
                "tokentap_calls_lost_total",
                "TLS calls whose records were all lost (seen as jumps in the kernel's stream offsets; their bytes are gaps).",
            ),
            offset_resets: counter(
                r,
                "tokentap_stream_offset_resets_total",
                "Kernel stream offsets that went backwards (per-connection state evicted in the kernel).",
            ),
            out_of_order: counter(
                r,
                "tokentap_records_out_of_order_total",
                "Records that did not continue the call in progress.",
            ),
            connections_opened: counter(
                r,
                "tokentap_tls_connections_total",
                "TLS connections seen.",
            ),
            connections_evicted: counter(
                r,
                "tokentap_tls_connections_evicted_total",
                "TLS connections forgotten after being idle too long.",
            ),
            connections_closed: counter_vec(
                r,
                "tokentap_tls_connections_closed_total",
                "TLS connections ended, by reason (freed: SSL_free; process_exited: the process exited or exec'd with the connection still open). Evictions are counted in tokentap_tls_connections_evicted_total.",
                &["reason"],
            ),
            connections_open: gauge(
                r,
                "tokentap_tls_connections_open",
                "TLS connections currently tracked.",
            ),
            processes_seen: counter(
                r,
                "tokentap_processes_seen_total",
                "Distinct processes seen using TLS.",
            ),
            tls_processes: gauge(
                r,
                "tokentap_tls_processes",
                "Processes with a tracked TLS connection.",
            ),
            libraries_attached: gauge(
                r,
                "tokentap_tls_libraries_attached",
                "TLS library files (libssl, Go executables) the uprobes are attached to.",
            ),
            attach_errors: counter(
                r,
                "tokentap_attach_errors_total",
                "TLS library files that could not be hooked.",
            ),
            tls_coverage: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "tokentap_process_tls_coverage",
                        "Processes with established TCP connections, by TLS stack and whether it is hooked (stack=\"none\" for no_tls); a process with two stacks counts under each.",
                    ),
                    &["coverage", "stack"],
                )
                .expect("valid metric definition");
                r.register(Box::new(g.clone()))
                    .expect("metric registered once");
                g
            },
            last: Snapshot::default(),
            registry,
        };
        // Every labelled series exists from the start, so absence never means zero.
        for kind in PipelineStats::KINDS {
            metrics.records.with_label_values(&[kind]);
        }
        for c in KernelCounter::ALL {
            if let Some(reason) = kernel_reason(c) {
                metrics.kernel_lost.with_label_values(&[reason]);
            }
        }
        for reason in ["freed", "process_exited"] {
            metrics.connections_closed.with_label_values(&[reason]);
        }
        for d in ["write", "read"] {
            metrics.captured_bytes.with_label_values(&[d]);
            for cause in ["truncated", "lost", "unreadable"] {
                metrics.gap_bytes.with_label_values(&[d, cause]);
                metrics.gaps.with_label_values(&[d, cause]);
            }
        }
        metrics
    }

    /// Brings the counters up to date with the current totals.
    pub fn sync(
        &mut self,
        pipeline: &PipelineStats,
        assembler: &AssemblerStats,
        kernel: &[u64; KernelCounter::COUNT as usize],
    ) {
        let last = &mut self.last;
        for (i, kind) in PipelineStats::KINDS.iter().enumerate() {
            inc(
                &self.records.with_label_values(&[kind]),
                pipeline.records[i],
                last.pipeline.records[i],
            );
        }
        for (reason, n) in &pipeline.decode_errors {
            let before = last
                .pipeline
                .decode_errors
                .get(reason)
                .copied()
                .unwrap_or(0);
            inc(&self.decode_errors.with_label_values(&[reason]), *n, before);
        }
        for (d, dir) in ["write", "read"].iter().enumerate() {
            inc(
                &self.captured_bytes.with_label_values(&[dir]),
                pipeline.captured_bytes[d],
                last.pipeline.captured_bytes[d],
            );
            for (c, cause) in ["truncated", "lost", "unreadable"].iter().enumerate() {
                inc(
                    &self.gap_bytes.with_label_values(&[dir, cause]),
                    pipeline.gap_bytes[d][c],
                    last.pipeline.gap_bytes[d][c],
                );
                inc(
                    &self.gaps.with_label_values(&[dir, cause]),
                    pipeline.gaps[d][c],
                    last.pipeline.gaps[d][c],
                );
            }
        }
        inc(
            &self.processes_seen,
            pipeline.processes_seen,
            last.pipeline.processes_seen,
        );
        inc(
            &self.calls_lost,
            assembler.calls_lost,
            last.assembler.calls_lost,
        );
        inc(
            &self.offset_resets,
            assembler.offset_resets,
            last.assembler.offset_resets,
        );
        inc(
            &self.out_of_order,
            assembler.records_out_of_order,
            last.assembler.records_out_of_order,
        );
        inc(
            &self.connections_opened,
            assembler.connections_opened,
            last.assembler.connections_opened,
        );
        inc(
            &self.connections_evicted,
            assembler.connections_evicted + assembler.connections_over_cap,
            last.assembler.connections_evicted + last.assembler.connections_over_cap,
        );
        inc(
            &self.connections_closed.with_label_values(&["freed"]),
            assembler.connections_freed,
            last.assembler.connections_freed,
        );
        inc(
            &self
                .connections_closed
                .with_label_values(&["process_exited"]),
            assembler.connections_closed_at_exit,
            last.assembler.connections_closed_at_exit,
        );
        for (i, c) in KernelCounter::ALL.iter().enumerate() {
            match kernel_reason(*c) {
                Some(reason) => inc(
                    &self.kernel_lost.with_label_values(&[reason]),
                    kernel[i],
                    last.kernel[i],
                ),
                None => inc(&self.kernel_lost_bytes, kernel[i], last.kernel[i]),
            }
        }
        last.pipeline = pipeline.clone();
        last.assembler = *assembler;
        last.kernel = *kernel;
    }

    pub fn set_connections(&self, open: usize, processes: usize) {
        self.connections_open.set(open as i64);
        self.tls_processes.set(processes as i64);
    }

    pub fn set_libraries_attached(&self, n: usize) {
        self.libraries_attached.set(n as i64);
    }

    /// Every (coverage, stack) series is set, zeros included, so a series never vanishes.
    pub fn set_tls_coverage(&self, counts: &CoverageCounts) {
        for coverage in [Coverage::Hooked, Coverage::Unsupported] {
            for stack in TlsStack::ALL {
                let n = counts.get(&(coverage, Some(stack))).copied().unwrap_or(0);
                self.tls_coverage
                    .with_label_values(&[coverage.as_str(), stack.as_str()])
                    .set(n as i64);
            }
        }
        let none = counts.get(&(Coverage::NoTls, None)).copied().unwrap_or(0);
        self.tls_coverage
            .with_label_values(&[Coverage::NoTls.as_str(), "none"])
            .set(none as i64);
    }

    pub fn attach_error(&self) {
        self.attach_errors.inc();
    }
}

fn inc(c: &IntCounter, now: u64, before: u64) {
    if now > before {
        c.inc_by(now - before);
    }
}
