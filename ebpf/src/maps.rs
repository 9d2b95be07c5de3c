//! The maps shared by all programs. Names match `tokentap_common::maps`.

use aya_ebpf::{
    macros::map,
    maps::{LruHashMap, PerCpuArray, RingBuf},
};
use tokentap_common::{KernelCounter, ReadArgs, TlsDataRecord};

/// Default ring-buffer size; the agent overrides it at load time (`--ring-buffer-bytes`).
const DEFAULT_EVENTS_BYTES: u32 = 16 * 1024 * 1024;

#[map]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_EVENTS_BYTES, 0);

#[map]
pub(crate) static COUNTERS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(KernelCounter::COUNT, 0);

/// Keyed by `pid_tgid`: a thread is inside at most one `SSL_read*` at a time. LRU so that a
/// thread that dies inside a read cannot leak an entry forever.
#[map]
pub(crate) static READ_ARGS: LruHashMap<u64, ReadArgs> = LruHashMap::with_max_entries(16384, 0);

#[map]
pub(crate) static SCRATCH: PerCpuArray<TlsDataRecord> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
pub(crate) fn count(counter: KernelCounter, by: u64) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // Per-CPU slot: no other writer while this program runs on this CPU.
        unsafe { *slot += by };
    }
}
