//! From raw ring-buffer records to stream items handed to a sink.
//!
//! Receives: one record's bytes at a time. Emits: [`StreamItem`]s to the [`StreamSink`], and
//! [`ProcessNotice`]s back to the caller (which decides when to look for new libraries).
//! Keeps the totals the agent exports about itself.

use std::collections::{HashMap, HashSet};

use tokentap_common::decode::{RawEvent, decode};

use crate::{
    clock::KtimeClock,
    stream::{CaptureLimits, ConnKey, GapCause, StreamAssembler, StreamItem},
};

/// The next stage: the capture view now, HTTP reconstruction later.
pub trait StreamSink {
    fn item(&mut self, item: &StreamItem<'_, '_>, clock: &KtimeClock);

    /// A process exited (after its connections were closed).
    fn process_exited(&mut self, _tgid: u32) {}

    /// Forget state idle since before `now_ktime_ns - idle_ns`.
    fn evict_idle(&mut self, _now_ktime_ns: u64, _idle_ns: u64) {}
}

/// A sink that drops everything (the agent before exchange reconstruction exists).
pub struct NullSink;

impl StreamSink for NullSink {
    fn item(&mut self, _item: &StreamItem<'_, '_>, _clock: &KtimeClock) {}
}

/// Process lifecycle news the caller acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcessNotice {
    Exec { tgid: u32 },
    LinkMapChanged { tgid: u32 },
    Exit { tgid: u32 },
}

/// Totals since start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PipelineStats {
    /// By kind, indexed like [`PipelineStats::KINDS`].
    pub records: [u64; 5],
    pub decode_errors: HashMap<&'static str, u64>,
    /// By direction (write, read).
    pub captured_bytes: [u64; 2],
    /// By direction, then cause (truncated, lost, unreadable).
    pub gap_bytes: [[u64; 3]; 2],
    pub gaps: [[u64; 3]; 2],
    pub processes_seen: u64,
}

impl PipelineStats {
    pub const KINDS: [&'static str; 5] = [
        "tls_data",
        "tls_free",
        "process_exec",
        "process_exit",
        "link_map_changed",
    ];
}

fn cause_index(cause: GapCause) -> usize {
    match cause {
        GapCause::Truncated => 0,
        GapCause::Lost => 1,
        GapCause::Unreadable => 2,
    }
}

pub struct Pipeline<S> {
    assembler: StreamAssembler,
    clock: KtimeClock,
    sink: S,
    stats: PipelineStats,
    processes_seen: HashSet<u32>,
}

impl<S: StreamSink> Pipeline<S> {
    pub fn new(limits: CaptureLimits, clock: KtimeClock, sink: S) -> Self {
        Self {
            assembler: StreamAssembler::new(limits),
            clock,
            sink,
            stats: PipelineStats::default(),
            processes_seen: HashSet::new(),
        }
    }

    pub fn stats(&self) -> &PipelineStats {
        &self.stats
    }

    pub fn assembler(&self) -> &StreamAssembler {
        &self.assembler
    }

    pub fn sink_mut(&mut self) -> &mut S {
        &mut self.sink
    }

    pub fn set_clock(&mut self, clock: KtimeClock) {
        self.clock = clock;
    }

    /// Handles one ring-buffer record.
    pub fn handle_record(&mut self, bytes: &[u8]) -> Option<ProcessNotice> {
        let event = match decode(bytes) {
            Ok(e) => e,
            Err(e) => {
                *self.stats.decode_errors.entry(e.reason()).or_default() += 1;
                log::debug!("undecodable record: {e}");
                return None;
            }
        };
        let kind = match event {
            RawEvent::TlsData(_) => 0,
            RawEvent::TlsFree { .. } => 1,
            RawEvent::ProcessExec { .. } => 2,
            RawEvent::ProcessExit { .. } => 3,
            RawEvent::LinkMapChanged { .. } => 4,
        };
        self.stats.records[kind] += 1;
        let Self {
            assembler,
            clock,
            sink,
            stats,
            processes_seen,
        } = self;
        if let RawEvent::TlsData(record) = &event
            && processes_seen.insert(record.common.tgid)
        {
            stats.processes_seen += 1;
        }
        let mut emit = |item: StreamItem<'_, '_>| {
            account(stats, &item);
            sink.item(&item, clock);
        };
        match event {
            RawEvent::TlsData(record) => {
                assembler.push(&record, &mut emit);
                None
            }
            RawEvent::TlsFree { common, conn } => {
                assembler.close(
                    ConnKey {
                        tgid: common.tgid,
                        conn,
                    },
                    &mut emit,
                );
                None
            }
            RawEvent::ProcessExec { common, .. } => {
                // exec replaced the address space: every SSL* of the old image is gone.
                assembler.process_exited(common.tgid, &mut emit);
                sink.process_exited(common.tgid);
                Some(ProcessNotice::Exec { tgid: common.tgid })
            }
            RawEvent::ProcessExit { common, .. } => {
                assembler.process_exited(common.tgid, &mut emit);
                sink.process_exited(common.tgid);
                processes_seen.remove(&common.tgid);
                Some(ProcessNotice::Exit { tgid: common.tgid })
            }
            RawEvent::LinkMapChanged { common, .. } => {
                Some(ProcessNotice::LinkMapChanged { tgid: common.tgid })
            }
        }
    }

    /// Forgets connections idle for longer than `idle_ns`.
    pub fn evict_idle(&mut self, now_ktime_ns: u64, idle_ns: u64) {
        let Self {
            assembler,
            clock,
            sink,
            stats,
            ..
        } = self;
        assembler.evict_idle(now_ktime_ns.saturating_sub(idle_ns), &mut |item| {
            account(stats, &item);
            sink.item(&item, clock);
        });
        sink.evict_idle(now_ktime_ns, idle_ns);
    }
}

fn account(stats: &mut PipelineStats, item: &StreamItem<'_, '_>) {
    match item {
        StreamItem::Data { record, .. } => {
            stats.captured_bytes[record.direction as usize] += record.data.len() as u64;
        }
        StreamItem::Gap {
            direction,
            len,
            cause,
            ..
        } => {
            stats.gap_bytes[*direction as usize][cause_index(*cause)] += len;
            stats.gaps[*direction as usize][cause_index(*cause)] += 1;
        }
        StreamItem::Closed { .. } => {}
    }
}
