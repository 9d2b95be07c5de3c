//! Process lifecycle, so the agent attaches to TLS libraries as soon as they are mapped and
//! forgets connections of processes that are gone.
//!
//! `security_mmap_file` runs for every mmap; only executable file mappings (a binary or a
//! library being loaded) are reported. That is what lets a process that loads libssl after
//! the agent started be hooked before its first TLS call.

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{fentry, tracepoint},
    programs::{FEntryContext, TracePointContext},
};
use tokentap_common::{EventHeader, EventKind, KernelCounter, ProcessEvent};

use crate::maps::{EVENTS, count};

const PROT_EXEC: u64 = 0x4;

#[tracepoint]
pub fn sched_process_exec(_ctx: TracePointContext) -> u32 {
    emit_process_event(EventKind::ProcessExec);
    0
}

#[tracepoint]
pub fn sched_process_exit(_ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // Once per process: when the thread-group leader exits.
    if pid_tgid >> 32 == pid_tgid & 0xffff_ffff {
        emit_process_event(EventKind::ProcessExit);
    }
    0
}

/// `int security_mmap_file(struct file *file, unsigned long prot, unsigned long flags)`
#[fentry(function = "security_mmap_file")]
pub fn mmap_exec(ctx: FEntryContext) -> u32 {
    let file: u64 = ctx.arg(0);
    let prot: u64 = ctx.arg(1);
    if file != 0 && prot & PROT_EXEC != 0 {
        emit_process_event(EventKind::ExecMapping);
    }
    0
}

fn emit_process_event(kind: EventKind) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let event = ProcessEvent {
        header: EventHeader {
            kind: kind as u32,
            tgid: (pid_tgid >> 32) as u32,
            tid: pid_tgid as u32,
            _reserved: 0,
            ktime_ns: unsafe { bpf_ktime_get_ns() },
        },
        comm: bpf_get_current_comm().unwrap_or_default(),
    };
    if EVENTS.output::<ProcessEvent>(&event, 0).is_err() {
        count(KernelCounter::RingbufFull, 1);
    }
}
