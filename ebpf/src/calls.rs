//! Entry/return bookkeeping shared by the `SSL_read*` and `SSL_write*` probes.
//!
//! Entry stashes the arguments per thread; return learns how many bytes the call moved (the
//! return value, or `*readbytes`/`*written` for the `_ex` forms) and copies exactly those.
//! Failed calls (including `WANT_READ`/`WANT_WRITE` that the caller will retry with the same
//! buffer) and zero-byte calls emit nothing, so retries are never captured twice and partial
//! writes (`SSL_MODE_ENABLE_PARTIAL_WRITE`) are captured exactly.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    maps::LruHashMap,
    programs::{ProbeContext, RetProbeContext},
};
use tokentap_common::{CallArgs, Direction, KernelCounter, TlsFunction};

use crate::{
    capture::{TlsCall, emit_tls_call},
    maps::count,
};

/// Stashes `(ssl, buf, len_addr)` at entry; `ex` says whether arg 3 is the length pointer.
#[inline(always)]
pub(crate) fn stash(
    ctx: &ProbeContext,
    map: &LruHashMap<u64, CallArgs>,
    ex: bool,
) -> Result<(), ()> {
    let args = CallArgs {
        conn: ctx.arg(0).ok_or(())?,
        buf_addr: ctx.arg(1).ok_or(())?,
        len_addr: if ex { ctx.arg(3).ok_or(())? } else { 0 },
        ktime_ns: unsafe { bpf_ktime_get_ns() },
    };
    if map.insert(&bpf_get_current_pid_tgid(), &args, 0).is_err() {
        count(KernelCounter::CallArgsFull, 1);
    }
    Ok(())
}

/// At return: emits what the call moved. Writes keep their entry time (when the process handed
/// the bytes over), reads their return time (when the bytes arrived).
#[inline(always)]
pub(crate) fn finish(
    ctx: &RetProbeContext,
    map: &LruHashMap<u64, CallArgs>,
    direction: Direction,
) -> Result<(), ()> {
    let return_ktime = unsafe { bpf_ktime_get_ns() };
    let key = bpf_get_current_pid_tgid();
    // Copy out and delete first, so that every path below leaves no stale entry.
    let Some(args) = (unsafe { map.get(&key) }).copied() else {
        count(KernelCounter::CallArgsMissing, 1);
        return Err(());
    };
    let _ = map.remove(&key);
    let ret: i32 = ctx.ret();
    let ex = args.len_addr != 0;
    let call_len = if !ex {
        if ret <= 0 {
            return Ok(());
        }
        ret as u64
    } else {
        if ret != 1 {
            return Ok(());
        }
        match unsafe { bpf_probe_read_user(args.len_addr as *const u64) } {
            Ok(n) => n,
            Err(_) => {
                count(KernelCounter::LenUnreadable, 1);
                return Err(());
            }
        }
    };
    if call_len == 0 || args.buf_addr == 0 || args.conn == 0 {
        return Ok(());
    }
    let (function, ktime_ns) = match (direction, ex) {
        (Direction::Write, false) => (TlsFunction::SslWrite, args.ktime_ns),
        (Direction::Write, true) => (TlsFunction::SslWriteEx, args.ktime_ns),
        (Direction::Read, false) => (TlsFunction::SslRead, return_ktime),
        (Direction::Read, true) => (TlsFunction::SslReadEx, return_ktime),
    };
    emit_tls_call(&TlsCall {
        conn: args.conn,
        buf_addr: args.buf_addr,
        call_len,
        direction,
        function,
        ktime_ns,
    });
    Ok(())
}
