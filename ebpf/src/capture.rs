//! Copying one TLS call's plaintext into ring-buffer records.
//!
//! A call of `call_len` bytes is sent as its head `[0, min(call_len, HEAD))` and, when it is
//! longer than HEAD + TAIL, its tail `[call_len - TAIL, call_len)`, in records of at most
//! `MAX_CHUNK` bytes. Each record says where it sits in the call, so user space knows the exact
//! length of the gap between head and tail, and of any record that was lost.

use aya_ebpf::helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, generated};
use tokentap_common::{
    ConnDirKey, Direction, EventHeader, EventKind, KernelCounter, MAX_CAPTURE_PER_CALL, MAX_CHUNK,
    MAX_CHUNKS_PER_CALL, TLS_DATA_FLAG_UNREADABLE, TlsDataHeader, TlsDataRecord, TlsFunction,
};

use crate::maps::{CONN_OFFSETS, EVENTS, SCRATCH, batched_output_flags, count};

/// Bytes copied from the start of every call. Set by the agent at load time.
#[unsafe(no_mangle)]
static TOKENTAP_HEAD_BYTES: u64 = tokentap_common::DEFAULT_HEAD_BYTES;
/// Bytes copied from the end of calls longer than head + tail. Set by the agent at load time.
#[unsafe(no_mangle)]
static TOKENTAP_TAIL_BYTES: u64 = tokentap_common::DEFAULT_TAIL_BYTES;

const HEADER_LEN: u64 = core::mem::size_of::<TlsDataHeader>() as u64;
const CHUNK: u64 = MAX_CHUNK as u64;
/// Head and tail each get at most half of the per-call record budget.
const MAX_CHUNKS_PER_PART: usize = MAX_CHUNKS_PER_CALL / 2;

/// One TLS call to copy out.
pub(crate) struct TlsCall {
    pub(crate) conn: u64,
    pub(crate) buf_addr: u64,
    pub(crate) call_len: u64,
    pub(crate) direction: Direction,
    pub(crate) function: TlsFunction,
    pub(crate) ktime_ns: u64,
}

pub(crate) fn emit_tls_call(call: &TlsCall) {
    let Some(record) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // Per-CPU scratch: nothing else uses it while this program runs on this CPU.
    let record = unsafe { &mut *record };
    let pid_tgid = bpf_get_current_pid_tgid();
    // Where this call starts in the stream, counted even when records are lost, so that user
    // space sees a call that was lost whole as a jump.
    let key = ConnDirKey {
        conn: call.conn,
        tgid: (pid_tgid >> 32) as u32,
        direction: call.direction as u32,
    };
    let stream_offset = unsafe { CONN_OFFSETS.get(&key) }.copied().unwrap_or(0);
    let _ = CONN_OFFSETS.insert(&key, &(stream_offset + call.call_len), 0);
    record.head = TlsDataHeader {
        header: EventHeader {
            kind: EventKind::TlsData as u32,
            tgid: (pid_tgid >> 32) as u32,
            tid: pid_tgid as u32,
            _reserved: 0,
            ktime_ns: call.ktime_ns,
        },
        conn: call.conn,
        buf_addr: call.buf_addr,
        call_len: call.call_len,
        call_offset: 0,
        stream_offset,
        data_len: 0,
        direction: call.direction as u8,
        function: call.function as u8,
        flags: 0,
        _reserved: 0,
        comm: bpf_get_current_comm().unwrap_or_default(),
    };

    // Volatile: the loader rewrites these in .rodata, the compiler must not fold them.
    let head = unsafe { core::ptr::read_volatile(&TOKENTAP_HEAD_BYTES) };
    let tail = unsafe { core::ptr::read_volatile(&TOKENTAP_TAIL_BYTES) };
    let half = MAX_CAPTURE_PER_CALL / 2;
    let head = if head > half { half } else { head };
    let tail = if tail > half { half } else { tail };

    let len = call.call_len;
    let head_end = if len < head { len } else { head };
    emit_part(record, call.buf_addr, 0, head_end);
    if len > head + tail {
        emit_part(record, call.buf_addr, len - tail, len);
    } else if len > head_end {
        emit_part(record, call.buf_addr, head_end, len);
    }
}

/// Advances a connection direction's stream offset by `len` bytes that are not copied, so that
/// user space sees them as a gap of exactly that length.
pub(crate) fn skip_stream_bytes(conn: u64, direction: Direction, len: u64) {
    let key = ConnDirKey {
        conn,
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        direction: direction as u32,
    };
    let stream_offset = unsafe { CONN_OFFSETS.get(&key) }.copied().unwrap_or(0);
    let _ = CONN_OFFSETS.insert(&key, &(stream_offset + len), 0);
}

/// Emits `[start, end)` of the call in records of at most `CHUNK` bytes.
#[inline(always)]
fn emit_part(record: &mut TlsDataRecord, buf_addr: u64, start: u64, end: u64) {
    let mut offset = start;
    for _ in 0..MAX_CHUNKS_PER_PART {
        if offset >= end {
            return;
        }
        let remaining = end - offset;
        if remaining <= CHUNK {
            emit_chunk(record, buf_addr, offset, remaining);
            return;
        }
        emit_chunk(record, buf_addr, offset, CHUNK);
        offset += CHUNK;
    }
}

#[inline(always)]
fn emit_chunk(record: &mut TlsDataRecord, buf_addr: u64, offset: u64, len: u64) {
    // Bound len where the verifier can see it: black_box hides what LLVM knows about len, so
    // the comparison is kept and made on the very register passed to the helpers.
    let len = core::hint::black_box(len);
    let len = if len > CHUNK { CHUNK } else { len };
    record.head.call_offset = offset;
    record.head.data_len = len as u32;
    let read = unsafe {
        generated::bpf_probe_read_user(
            record.data.as_mut_ptr().cast(),
            len as u32,
            (buf_addr + offset) as *const core::ffi::c_void,
        )
    };
    let size = if read == 0 {
        record.head.flags = 0;
        HEADER_LEN + len
    } else {
        // Report the chunk as missing rather than dropping the record: user space then knows
        // exactly which bytes it lacks.
        record.head.flags = TLS_DATA_FLAG_UNREADABLE;
        count(KernelCounter::UserReadFailed, 1);
        HEADER_LEN
    };
    // A dynamically sized view of the scratch record; `size` <= size_of::<TlsDataRecord>().
    let bytes = unsafe {
        core::slice::from_raw_parts((record as *const TlsDataRecord).cast::<u8>(), size as usize)
    };
    if EVENTS
        .output::<[u8]>(bytes, batched_output_flags())
        .is_err()
    {
        count(KernelCounter::RingbufFull, 1);
        count(KernelCounter::RingbufBytesLost, len);
    }
}
