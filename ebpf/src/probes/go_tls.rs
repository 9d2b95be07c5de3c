//! Go's `crypto/tls`: `(*Conn).Write(b []byte) (int, error)`, `(*Conn).Read(b []byte) (int,
//! error)` and `(*Conn).Close()`, in executables built with Go 1.17+ for amd64.
//!
//! Go's internal register ABI passes the receiver in RAX, `b`'s pointer, length and capacity
//! in RBX, RCX, RDI, and returns `n` in RAX (the error in RBX:RCX); R14 holds the current
//! goroutine's `runtime.g`.
//!
//! `Write` is copied when it starts, whole (the probe sits just after the function's stack
//! check, not on its entry: a call whose stack is too small runs `morestack` and starts over
//! from the entry, which would copy the request twice). Go's HTTP client writes a request on
//! one goroutine and reads the answer on another, so a copy made at `Write`'s return can reach
//! the ring buffer after the answer (the reader runs on another CPU while the writer is still
//! on its way out), and user space would pair requests with the wrong responses. Copying at
//! the start puts the request in the ring before its first byte is on the socket. `Write` sends all of `b`
//! or fails, and a failed write leaves the `tls.Conn` broken for good ("all future writes
//! will return the same error"), so the only bytes this can over-report are those of a
//! connection's last, failed, write.
//!
//! `Read` is copied at return (only then are the bytes there, and `n` known): uprobes on each
//! `RET` instruction of the function, placed by the agent; a uretprobe would rewrite the
//! return address on the stack, which Go's stack copying and tracebacks cannot follow. Reads
//! are keyed by goroutine, not thread: a goroutine blocked in `Read` parks, and resumes on
//! whichever thread the scheduler picks. A buffer on the goroutine's own stack is found again
//! at return through the stack's top, since the runtime may have moved the stack (grown or
//! shrunk it) while the call was blocked. Writes keep their entry time, reads their return
//! time, as for OpenSSL.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::uprobe,
    maps::LruHashMap,
    programs::ProbeContext,
};
use tokentap_common::{Direction, GoCallArgs, GoCallKey, KernelCounter, TlsFunction};

use crate::{
    capture::{TlsCall, emit_tls_call},
    maps::{GO_READ_ARGS, count},
    probes::ssl_free::end_connection,
};

#[uprobe]
pub fn go_tls_write_enter(ctx: ProbeContext) -> u32 {
    // SAFETY: a uprobe's context is the task's saved user registers.
    let (conn, buf_addr, len) = unsafe { ((*ctx.regs).rax, (*ctx.regs).rbx, (*ctx.regs).rcx) };
    // `len` is a Go int: negative never happens, but must not become a huge length.
    if conn != 0 && buf_addr != 0 && (len as i64) > 0 {
        emit_tls_call(&TlsCall {
            conn,
            buf_addr,
            call_len: len,
            direction: Direction::Write,
            function: TlsFunction::GoTlsWrite,
            ktime_ns: unsafe { bpf_ktime_get_ns() },
        });
    }
    0
}

#[uprobe]
pub fn go_tls_read_enter(ctx: ProbeContext) -> u32 {
    let _ = stash(&ctx, &GO_READ_ARGS);
    0
}

/// Attached to every `RET` of `crypto/tls.(*Conn).Read`.
#[uprobe]
pub fn go_tls_read_return(ctx: ProbeContext) -> u32 {
    let _ = finish(&ctx, &GO_READ_ARGS);
    0
}

#[uprobe]
pub fn go_tls_close(ctx: ProbeContext) -> u32 {
    // SAFETY: a uprobe's context is the task's saved user registers.
    let conn = unsafe { (*ctx.regs).rax };
    end_connection(conn);
    0
}

/// `runtime.g` starts with `stack struct { lo, hi uintptr }` in every Go release.
#[repr(C)]
#[derive(Clone, Copy)]
struct GoStack {
    lo: u64,
    hi: u64,
}

#[inline(always)]
fn call_key(ctx: &ProbeContext) -> Result<GoCallKey, ()> {
    // SAFETY: a uprobe's context is the task's saved user registers.
    let g = unsafe { (*ctx.regs).r14 };
    if g == 0 {
        return Err(());
    }
    Ok(GoCallKey {
        g,
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        _reserved: 0,
    })
}

#[inline(always)]
fn stash(ctx: &ProbeContext, map: &LruHashMap<GoCallKey, GoCallArgs>) -> Result<(), ()> {
    let key = call_key(ctx)?;
    // SAFETY: as above.
    let (conn, buf_addr) = unsafe { ((*ctx.regs).rax, (*ctx.regs).rbx) };
    let stack_hi_offset = match unsafe { bpf_probe_read_user(key.g as *const GoStack) } {
        Ok(stack) if stack.lo <= buf_addr && buf_addr < stack.hi => stack.hi - buf_addr,
        _ => 0,
    };
    let args = GoCallArgs {
        conn,
        buf_addr,
        stack_hi_offset,
    };
    // A call that grew the stack re-runs from its first instruction: this overwrite then
    // records the arguments as they are after the move.
    if map.insert(&key, &args, 0).is_err() {
        count(KernelCounter::CallArgsFull, 1);
    }
    Ok(())
}

#[inline(always)]
fn finish(ctx: &ProbeContext, map: &LruHashMap<GoCallKey, GoCallArgs>) -> Result<(), ()> {
    let return_ktime = unsafe { bpf_ktime_get_ns() };
    let key = call_key(ctx)?;
    let Some(args) = (unsafe { map.get(&key) }).copied() else {
        count(KernelCounter::CallArgsMissing, 1);
        return Err(());
    };
    let _ = map.remove(&key);
    // SAFETY: as above. `n` is a Go int.
    let n = unsafe { (*ctx.regs).rax } as i64;
    if n <= 0 || args.conn == 0 {
        return Ok(());
    }
    let buf_addr = if args.stack_hi_offset == 0 {
        args.buf_addr
    } else {
        match unsafe { bpf_probe_read_user(key.g as *const GoStack) } {
            Ok(stack) => stack.hi - args.stack_hi_offset,
            Err(_) => args.buf_addr,
        }
    };
    if buf_addr == 0 {
        return Ok(());
    }
    emit_tls_call(&TlsCall {
        conn: args.conn,
        buf_addr,
        call_len: n as u64,
        direction: Direction::Read,
        function: TlsFunction::GoTlsRead,
        ktime_ns: return_ktime,
    });
    Ok(())
}
