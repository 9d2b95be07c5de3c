//! Plaintext HTTP on sockets: `write`/`sendto`/`writev`/`sendmsg` and
//! `read`/`recvfrom`/`readv`/`recvmsg`, through the per-syscall
//! tracepoints (`syscalls:sys_enter_*`/`sys_exit_*`), for in-cluster model servers spoken to
//! without TLS.
//!
//! These tracepoints fire for every such call of every process, so the common case must be
//! cheap. A file descriptor is followed once a call on it started like HTTP/1 (a request line's
//! method or `HTTP/`), and from then on every call on it is captured until `close`. Writes are
//! filtered at entry (the bytes are already there): a write on an fd not followed stashes
//! nothing unless its first four bytes look like HTTP. Reads can only be judged at exit, so
//! their entry stashes the arguments (one hash update per read), except on an fd whose last
//! judged read did not look like HTTP (`NON_HTTP_FDS`): there the entry is one lookup. Such an
//! fd is judged again once a write on it starts like HTTP (which follows it) or it is closed.
//! The agent's own calls are skipped first.
//!
//! TLS is never counted twice: a TLS connection's bytes on the socket are records, which start
//! with a content-type byte (0x14..=0x18), never with an ASCII method or `HTTP`, so its fd is
//! never followed; its plaintext comes from the TLS library hooks alone.
//!
//! A vectored call's buffers are recorded as consecutive calls, the first [`MAX_IOVECS`] of
//! them; the bytes of any later buffer advance the stream offset uncopied (a counted gap).
//!
//! The connection identity is `plaintext_conn(fd)` (bit 63 set), which no `SSL*` has. Writes keep
//! their entry time, reads their return time, as for the TLS hooks.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::tracepoint,
    maps::LruHashMap,
    programs::TracePointContext,
};
use tokentap_common::{
    Direction, KernelCounter, MAX_IOVECS, SyscallArgs, TlsFunction, plaintext_conn,
};

use crate::{
    capture::{TlsCall, emit_tls_call, skip_stream_bytes},
    maps::{NON_HTTP_FDS, PLAINTEXT_FDS, SYSCALL_READ_ARGS, SYSCALL_WRITE_ARGS, count, is_agent},
    probes::ssl_free::end_connection,
};

/// `sys_enter_*`: the first three arguments (fd, buffer, length) are 8-byte fields from 16.
const ARG0: usize = 16;
const ARG1: usize = 24;
const ARG2: usize = 32;
/// `recvfrom`'s `flags`.
const ARG3: usize = 40;
/// `struct msghdr`: `msg_iov` and `msg_iovlen`.
const MSG_IOV: u64 = 16;
const MSG_IOVLEN: u64 = 24;

/// `struct iovec`.
#[repr(C)]
#[derive(Clone, Copy)]
struct Iovec {
    base: u64,
    len: u64,
}
const MSG_PEEK: u64 = 2;
/// `sys_exit_*`: `long ret` at 16.
const RET: usize = 16;

#[tracepoint]
pub fn sys_enter_write(ctx: TracePointContext) -> u32 {
    let _ = stash_write(&ctx);
    0
}

#[tracepoint]
pub fn sys_enter_sendto(ctx: TracePointContext) -> u32 {
    let _ = stash_write(&ctx);
    0
}

#[tracepoint]
pub fn sys_exit_write(ctx: TracePointContext) -> u32 {
    let _ = finish(&ctx, Direction::Write, TlsFunction::SysWrite);
    0
}

#[tracepoint]
pub fn sys_exit_sendto(ctx: TracePointContext) -> u32 {
    let _ = finish(&ctx, Direction::Write, TlsFunction::SysSendto);
    0
}

#[tracepoint]
pub fn sys_enter_read(ctx: TracePointContext) -> u32 {
    let _ = stash_read(&ctx);
    0
}

#[tracepoint]
pub fn sys_enter_recvfrom(ctx: TracePointContext) -> u32 {
    // `MSG_PEEK` leaves the bytes in the socket for the next read: capturing them would count
    // them twice.
    let peek = unsafe { ctx.read_at::<u64>(ARG3) }.map_or(true, |flags| flags & MSG_PEEK != 0);
    if !peek {
        let _ = stash_read(&ctx);
    }
    0
}

#[tracepoint]
pub fn sys_exit_read(ctx: TracePointContext) -> u32 {
    let _ = finish(&ctx, Direction::Read, TlsFunction::SysRead);
    0
}

#[tracepoint]
pub fn sys_exit_recvfrom(ctx: TracePointContext) -> u32 {
    let _ = finish(&ctx, Direction::Read, TlsFunction::SysRecvfrom);
    0
}

#[tracepoint]
pub fn sys_enter_writev(ctx: TracePointContext) -> u32 {
    let _ = stash_vectored(&ctx, Direction::Write, false);
    0
}

#[tracepoint]
pub fn sys_enter_sendmsg(ctx: TracePointContext) -> u32 {
    let _ = stash_vectored(&ctx, Direction::Write, true);
    0
}

#[tracepoint]
pub fn sys_enter_readv(ctx: TracePointContext) -> u32 {
    let _ = stash_vectored(&ctx, Direction::Read, false);
    0
}

#[tracepoint]
pub fn sys_enter_recvmsg(ctx: TracePointContext) -> u32 {
    // recvmsg(fd, msg, flags): see recvfrom about MSG_PEEK.
    let peek = unsafe { ctx.read_at::<u64>(ARG2) }.map_or(true, |flags| flags & MSG_PEEK != 0);
    if !peek {
        let _ = stash_vectored(&ctx, Direction::Read, true);
    }
    0
}

#[tracepoint]
pub fn sys_exit_writev(ctx: TracePointContext) -> u32 {
    let _ = finish(&ctx, Direction::Write, TlsFunction::SysWritev);
    0
}

#[tracepoint]
pub fn sys_exit_sendmsg(ctx: TracePointContext) -> u32 {
    let _ = finish(&ctx, Direction::Write, TlsFunction::SysSendmsg);
    0
}

#[tracepoint]
pub fn sys_exit_readv(ctx: TracePointContext) -> u32 {
    let _ = finish(&ctx, Direction::Read, TlsFunction::SysReadv);
    0
}

#[tracepoint]
pub fn sys_exit_recvmsg(ctx: TracePointContext) -> u32 {
    let _ = finish(&ctx, Direction::Read, TlsFunction::SysRecvmsg);
    0
}

#[tracepoint]
pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
    let _ = try_close(&ctx);
    0
}

#[inline(always)]
fn fd_key(tgid: u32, fd: u32) -> u64 {
    (tgid as u64) << 32 | fd as u64
}

/// The call's fd and buffer; `Err` for a negative fd or a null buffer.
#[inline(always)]
fn fd_and_buf(ctx: &TracePointContext) -> Result<(u32, u64), ()> {
    let fd: u64 = unsafe { ctx.read_at(ARG0) }.map_err(|_| ())?;
    let buf: u64 = unsafe { ctx.read_at(ARG1) }.map_err(|_| ())?;
    let fd = fd as u32;
    if (fd as i32) < 0 || buf == 0 {
        return Err(());
    }
    Ok((fd, buf))
}

/// Whether a call whose bytes start at `buf` begins like HTTP/1: a request line's method or a
/// status line's `HTTP/`.
#[inline(always)]
fn starts_like_http(buf: u64) -> bool {
    let Ok(first) = (unsafe { bpf_probe_read_user(buf as *const [u8; 4]) }) else {
        return false;
    };
    matches!(
        &first,
        b"GET " | b"POST" | b"PUT " | b"HEAD" | b"DELE" | b"PATC" | b"OPTI" | b"HTTP"
    )
}

#[inline(always)]
fn followed(tgid: u32, fd: u32) -> bool {
    unsafe { PLAINTEXT_FDS.get(&fd_key(tgid, fd)) }.is_some()
}

/// Whether the fd's last judged read did not start like HTTP (and no write on it has since).
#[inline(always)]
fn known_non_http(tgid: u32, fd: u32) -> bool {
    unsafe { NON_HTTP_FDS.get(&fd_key(tgid, fd)) }.is_some()
}

/// From now on every call on the fd is captured.
#[inline(always)]
fn follow(tgid: u32, fd: u32) {
    let key = fd_key(tgid, fd);
    let _ = NON_HTTP_FDS.remove(&key);
    let _ = PLAINTEXT_FDS.insert(&key, &0, 0);
}

/// A call on an fd not followed did not start like HTTP: a read marks the fd so that its next
/// reads are skipped at entry; a write leaves it alone (writes are judged at entry anyway).
#[inline(always)]
fn not_http(direction: Direction, tgid: u32, fd: u32) {
    if direction == Direction::Read {
        let _ = NON_HTTP_FDS.insert(&fd_key(tgid, fd), &0, 0);
    }
}

#[inline(always)]
fn stash(map: &LruHashMap<u64, SyscallArgs>, pid_tgid: u64, fd: u32, buf: u64, iov_count: u64) {
    let args = SyscallArgs {
        fd: fd as u64,
        buf_addr: buf,
        iov_count,
        ktime_ns: unsafe { bpf_ktime_get_ns() },
    };
    if map.insert(&pid_tgid, &args, 0).is_err() {
        count(KernelCounter::CallArgsFull, 1);
    }
}

#[inline(always)]
fn stash_write(ctx: &TracePointContext) -> Result<(), ()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if is_agent(tgid) {
        return Ok(());
    }
    let (fd, buf) = fd_and_buf(ctx)?;
    if followed(tgid, fd) || starts_like_http(buf) {
        stash(&SYSCALL_WRITE_ARGS, pid_tgid, fd, buf, 0);
    }
    Ok(())
}

#[inline(always)]
fn stash_read(ctx: &TracePointContext) -> Result<(), ()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if is_agent(tgid) {
        return Ok(());
    }
    let (fd, buf) = fd_and_buf(ctx)?;
    if !known_non_http(tgid, fd) {
        stash(&SYSCALL_READ_ARGS, pid_tgid, fd, buf, 0);
    }
    Ok(())
}

/// `writev`/`readv(fd, iov, iovcnt)` or `sendmsg`/`recvmsg(fd, msg, flags)`.
#[inline(always)]
fn stash_vectored(ctx: &TracePointContext, direction: Direction, msghdr: bool) -> Result<(), ()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if is_agent(tgid) {
        return Ok(());
    }
    let (fd, arg1) = fd_and_buf(ctx)?;
    if direction == Direction::Read && known_non_http(tgid, fd) {
        return Ok(());
    }
    let (iov, iov_count) = if msghdr {
        let iov: u64 =
            unsafe { bpf_probe_read_user((arg1 + MSG_IOV) as *const u64) }.map_err(|_| ())?;
        let n: u64 =
            unsafe { bpf_probe_read_user((arg1 + MSG_IOVLEN) as *const u64) }.map_err(|_| ())?;
        (iov, n)
    } else {
        (arg1, unsafe { ctx.read_at::<u64>(ARG2) }.map_err(|_| ())?)
    };
    if iov == 0 || iov_count == 0 {
        return Ok(());
    }
    match direction {
        Direction::Write => {
            let first = unsafe { bpf_probe_read_user(iov as *const Iovec) }.map_err(|_| ())?;
            if followed(tgid, fd) || starts_like_http(first.base) {
                stash(&SYSCALL_WRITE_ARGS, pid_tgid, fd, iov, iov_count);
            }
        }
        Direction::Read => stash(&SYSCALL_READ_ARGS, pid_tgid, fd, iov, iov_count),
    }
    Ok(())
}

#[inline(always)]
fn finish(ctx: &TracePointContext, direction: Direction, function: TlsFunction) -> Result<(), ()> {
    let return_ktime = unsafe { bpf_ktime_get_ns() };
    let pid_tgid = bpf_get_current_pid_tgid();
    let map = match direction {
        Direction::Write => &SYSCALL_WRITE_ARGS,
        Direction::Read => &SYSCALL_READ_ARGS,
    };
    // Writes that did not look like HTTP stashed nothing: a miss is the common case, not a loss.
    let args = (unsafe { map.get(&pid_tgid) }).copied().ok_or(())?;
    let _ = map.remove(&pid_tgid);
    let ret: i64 = unsafe { ctx.read_at(RET) }.map_err(|_| ())?;
    if ret <= 0 {
        return Ok(());
    }
    let tgid = (pid_tgid >> 32) as u32;
    let fd = args.fd as u32;
    let ktime_ns = match direction {
        Direction::Write => args.ktime_ns,
        Direction::Read => return_ktime,
    };
    let conn = plaintext_conn(fd);
    if args.iov_count == 0 {
        if !followed(tgid, fd) {
            if !starts_like_http(args.buf_addr) {
                not_http(direction, tgid, fd);
                return Ok(());
            }
            follow(tgid, fd);
        }
        emit_tls_call(&TlsCall {
            conn,
            buf_addr: args.buf_addr,
            call_len: ret as u64,
            direction,
            function,
            ktime_ns,
        });
        return Ok(());
    }
    if !followed(tgid, fd) {
        let first =
            unsafe { bpf_probe_read_user(args.buf_addr as *const Iovec) }.map_err(|_| ())?;
        if !starts_like_http(first.base) {
            not_http(direction, tgid, fd);
            return Ok(());
        }
        follow(tgid, fd);
    }
    // The kernel filled (or took) the buffers in order: the first `ret` bytes of the array.
    let mut remaining = ret as u64;
    for i in 0..MAX_IOVECS {
        if remaining == 0 || i as u64 >= args.iov_count {
            break;
        }
        let at = args.buf_addr + (i * core::mem::size_of::<Iovec>()) as u64;
        let Ok(iov) = (unsafe { bpf_probe_read_user(at as *const Iovec) }) else {
            break;
        };
        let len = if iov.len < remaining {
            iov.len
        } else {
            remaining
        };
        if len > 0 && iov.base != 0 {
            emit_tls_call(&TlsCall {
                conn,
                buf_addr: iov.base,
                call_len: len,
                direction,
                function,
                ktime_ns,
            });
        }
        remaining -= len;
    }
    if remaining > 0 {
        skip_stream_bytes(conn, direction, remaining);
    }
    Ok(())
}

#[inline(always)]
fn try_close(ctx: &TracePointContext) -> Result<(), ()> {
    let fd: u64 = unsafe { ctx.read_at(ARG0) }.map_err(|_| ())?;
    let fd = fd as u32;
    let key = fd_key((bpf_get_current_pid_tgid() >> 32) as u32, fd);
    let _ = NON_HTTP_FDS.remove(&key);
    if unsafe { PLAINTEXT_FDS.get(&key) }.is_some() {
        let _ = PLAINTEXT_FDS.remove(&key);
        end_connection(plaintext_conn(fd));
    }
    Ok(())
}
