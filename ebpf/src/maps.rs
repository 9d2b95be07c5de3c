//! The maps shared by all programs. Names match `tokentap_common::maps`.

use aya_ebpf::{
    macros::map,
    maps::{LruHashMap, PerCpuArray, RingBuf},
};
use tokentap_common::{
    CallArgs, ConnDirKey, GoCallArgs, GoCallKey, KernelCounter, SyscallArgs, TlsDataRecord,
};

/// Default ring-buffer size; the agent overrides it at load time (`--ring-buffer-bytes`).
const DEFAULT_EVENTS_BYTES: u32 = 16 * 1024 * 1024;

#[map]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_EVENTS_BYTES, 0);

#[map]
pub(crate) static COUNTERS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(KernelCounter::COUNT, 0);

/// Keyed by `pid_tgid`: a thread is inside at most one `SSL_read*` (and one `SSL_write*`) at a
/// time. LRU so that a thread that dies inside a call cannot leak an entry forever; an entry
/// is only evicted after 65536 newer calls, and a return that finds none is counted.
#[map]
pub(crate) static READ_ARGS: LruHashMap<u64, CallArgs> = LruHashMap::with_max_entries(65536, 0);

#[map]
pub(crate) static WRITE_ARGS: LruHashMap<u64, CallArgs> = LruHashMap::with_max_entries(65536, 0);

/// Go `crypto/tls` reads in flight, keyed by goroutine (see `probes/go_tls.rs`).
#[map]
pub(crate) static GO_READ_ARGS: LruHashMap<GoCallKey, GoCallArgs> =
    LruHashMap::with_max_entries(16384, 0);

/// Bytes each connection direction has carried, so that every record can say where its call
/// starts in the stream. Deleted at `SSL_free`; LRU bounds what leaked connections cost.
#[map]
pub(crate) static CONN_OFFSETS: LruHashMap<ConnDirKey, u64> =
    LruHashMap::with_max_entries(65536, 0);

/// Plaintext socket calls in flight, keyed by `pid_tgid` (see `probes/plaintext.rs`).
#[map]
pub(crate) static SYSCALL_READ_ARGS: LruHashMap<u64, SyscallArgs> =
    LruHashMap::with_max_entries(65536, 0);

#[map]
pub(crate) static SYSCALL_WRITE_ARGS: LruHashMap<u64, SyscallArgs> =
    LruHashMap::with_max_entries(16384, 0);

/// File descriptors followed as plaintext HTTP, keyed by `tgid << 32 | fd`; deleted at
/// `close`. LRU: a process that exits without closing cannot leak entries forever.
#[map]
pub(crate) static PLAINTEXT_FDS: LruHashMap<u64, u8> = LruHashMap::with_max_entries(65536, 0);

/// File descriptors not followed whose last judged read did not start like HTTP, keyed like
/// `PLAINTEXT_FDS`: their reads stash nothing until a write on them starts like HTTP (which
/// follows them) or `close`. LRU: an evicted entry only costs a read that is judged again.
#[map]
pub(crate) static NON_HTTP_FDS: LruHashMap<u64, u8> = LruHashMap::with_max_entries(65536, 0);

#[map]
pub(crate) static SCRATCH: PerCpuArray<TlsDataRecord> = PerCpuArray::with_max_entries(1, 0);

/// Unread bytes above which a data record wakes the agent. Set by the agent at load time.
#[unsafe(no_mangle)]
static TOKENTAP_WAKEUP_BYTES: u64 = 1024 * 1024;

/// The agent's own process id, whose socket calls the plaintext tracepoints skip. Set by the
/// agent at load time.
#[unsafe(no_mangle)]
static TOKENTAP_AGENT_TGID: u32 = 0;

/// Whether the current task belongs to the agent itself.
#[inline(always)]
pub(crate) fn is_agent(tgid: u32) -> bool {
    tgid == unsafe { core::ptr::read_volatile(&TOKENTAP_AGENT_TGID) }
}

const BPF_RB_AVAIL_DATA: u64 = 0;
const BPF_RB_NO_WAKEUP: u64 = 1;
pub(crate) const BPF_RB_FORCE_WAKEUP: u64 = 2;

/// Output flags for high-volume records: wake the agent only once enough has piled up; the
/// agent polls on a short timer for the rest.
#[inline(always)]
pub(crate) fn batched_output_flags() -> u64 {
    let threshold = unsafe { core::ptr::read_volatile(&TOKENTAP_WAKEUP_BYTES) };
    if EVENTS.query(BPF_RB_AVAIL_DATA) >= threshold {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

#[inline(always)]
pub(crate) fn count(counter: KernelCounter, by: u64) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // Per-CPU slot: no other writer while this program runs on this CPU.
        unsafe { *slot += by };
    }
}
