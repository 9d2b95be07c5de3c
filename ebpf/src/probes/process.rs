//! Process lifecycle, so the agent attaches to TLS libraries as soon as they are loaded and
//! forgets connections of processes that are gone.
//!
//! `_dl_debug_state` is the dynamic loader's debugger hook (the `r_debug` protocol): glibc's and
//! musl's loaders call it whenever a process's link map changes, e.g. right after `dlopen`
//! mapped a library. A process that loads libssl after the agent started (Python's `import
//! ssl`) is therefore rescanned at once, before it can send its first byte.

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{btf_tracepoint, uprobe},
    programs::{BtfTracePointContext, ProbeContext},
};
use tokentap_common::{EventHeader, EventKind, KernelCounter, ProcessEvent};

use crate::maps::{BPF_RB_FORCE_WAKEUP, EVENTS, count};

// BTF tracepoints attach without tracefs, which many hosts do not mount.
#[btf_tracepoint(function = "sched_process_exec")]
pub fn sched_process_exec(_ctx: BtfTracePointContext) -> u32 {
    emit_process_event(EventKind::ProcessExec);
    0
}

#[btf_tracepoint(function = "sched_process_exit")]
pub fn sched_process_exit(_ctx: BtfTracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // Once per process: when the thread-group leader exits.
    if pid_tgid >> 32 == pid_tgid & 0xffff_ffff {
        emit_process_event(EventKind::ProcessExit);
    }
    0
}

#[uprobe]
pub fn dl_debug_state(_ctx: ProbeContext) -> u32 {
    emit_process_event(EventKind::LinkMapChanged);
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
    // Rare, and urgent: a process that just loaded libssl must be hooked before it uses it.
    if EVENTS
        .output::<ProcessEvent>(&event, BPF_RB_FORCE_WAKEUP)
        .is_err()
    {
        count(KernelCounter::RingbufFull, 1);
    }
}
