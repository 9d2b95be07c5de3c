//! `SSL_read(ssl, buf, int num)` and `SSL_read_ex(ssl, buf, size_t num, size_t *readbytes)`.
//!
//! The buffer is only filled when the call returns, so entry stashes the arguments per thread
//! and the shared return probe copies what was read. Failed and zero-byte reads emit nothing.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use tokentap_common::{Direction, KernelCounter, ReadArgs, TlsFunction};

use crate::{
    capture::{TlsCall, emit_tls_call},
    maps::{READ_ARGS, count},
};

#[uprobe]
pub fn ssl_read_enter(ctx: ProbeContext) -> u32 {
    let _ = try_read_enter(&ctx, false);
    0
}

#[uprobe]
pub fn ssl_read_ex_enter(ctx: ProbeContext) -> u32 {
    let _ = try_read_enter(&ctx, true);
    0
}

fn try_read_enter(ctx: &ProbeContext, ex: bool) -> Result<(), ()> {
    let args = ReadArgs {
        conn: ctx.arg(0).ok_or(())?,
        buf_addr: ctx.arg(1).ok_or(())?,
        readbytes_addr: if ex { ctx.arg(3).ok_or(())? } else { 0 },
    };
    if READ_ARGS
        .insert(&bpf_get_current_pid_tgid(), &args, 0)
        .is_err()
    {
        count(KernelCounter::ReadArgsFull, 1);
    }
    Ok(())
}

/// Attached to the return of both `SSL_read` and `SSL_read_ex`.
#[uretprobe]
pub fn ssl_read_return(ctx: RetProbeContext) -> u32 {
    let _ = try_read_return(&ctx);
    0
}

fn try_read_return(ctx: &RetProbeContext) -> Result<(), ()> {
    let ktime_ns = unsafe { bpf_ktime_get_ns() };
    let key = bpf_get_current_pid_tgid();
    // Copy out and delete first, so that every path below leaves no stale entry.
    let args = unsafe { READ_ARGS.get(&key) }.copied().ok_or(())?;
    let _ = READ_ARGS.remove(&key);
    let ret: i32 = ctx.ret();
    let (call_len, function) = if args.readbytes_addr == 0 {
        if ret <= 0 {
            return Ok(());
        }
        (ret as u64, TlsFunction::SslRead)
    } else {
        if ret != 1 {
            return Ok(());
        }
        match unsafe { bpf_probe_read_user(args.readbytes_addr as *const u64) } {
            Ok(n) => (n, TlsFunction::SslReadEx),
            Err(_) => {
                count(KernelCounter::ReadBytesUnreadable, 1);
                return Err(());
            }
        }
    };
    if call_len == 0 || args.buf_addr == 0 {
        return Ok(());
    }
    emit_tls_call(&TlsCall {
        conn: args.conn,
        buf_addr: args.buf_addr,
        call_len,
        direction: Direction::Read,
        function,
        ktime_ns,
    });
    Ok(())
}
