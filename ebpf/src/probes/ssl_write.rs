//! `SSL_write(ssl, buf, int num)` and `SSL_write_ex(ssl, buf, size_t num, size_t *written)`.
//!
//! Captured at entry only: a uretprobe per write would cost a second trap on every call. The
//! price is that a write retried after `SSL_ERROR_WANT_WRITE` (non-blocking sockets) is seen
//! again with the same buffer and length; user space recognises and drops such repeats.

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::uprobe, programs::ProbeContext};
use tokentap_common::{Direction, TlsFunction};

use crate::capture::{TlsCall, emit_tls_call};

#[uprobe]
pub fn ssl_write(ctx: ProbeContext) -> u32 {
    let _ = try_ssl_write(&ctx, TlsFunction::SslWrite);
    0
}

#[uprobe]
pub fn ssl_write_ex(ctx: ProbeContext) -> u32 {
    let _ = try_ssl_write(&ctx, TlsFunction::SslWriteEx);
    0
}

fn try_ssl_write(ctx: &ProbeContext, function: TlsFunction) -> Result<(), ()> {
    let ktime_ns = unsafe { bpf_ktime_get_ns() };
    let conn: u64 = ctx.arg(0).ok_or(())?;
    let buf_addr: u64 = ctx.arg(1).ok_or(())?;
    let call_len = match function {
        TlsFunction::SslWrite => {
            let num: i32 = ctx.arg(2).ok_or(())?;
            if num <= 0 {
                return Ok(());
            }
            num as u64
        }
        _ => ctx.arg::<u64>(2).ok_or(())?,
    };
    if call_len == 0 || conn == 0 || buf_addr == 0 {
        return Ok(());
    }
    emit_tls_call(&TlsCall {
        conn,
        buf_addr,
        call_len,
        direction: Direction::Write,
        function,
        ktime_ns,
    });
    Ok(())
}
