//! The event ABI between tokentap's eBPF programs and its agent, defined once.
//!
//! Every record in the ring buffer starts with an [`EventHeader`] whose `kind` says which
//! `#[repr(C)]` struct follows. TLS payloads are variable-length: a [`TlsDataHeader`] followed by
//! `data_len` bytes. The names of maps, programs and load-time globals are constants here so
//! that the kernel and user sides can never disagree on a string.
//!
//! With the `user` feature the crate also decodes records ([`decode`]): the layouts and their
//! readers live side by side, so a field added to a struct is decoded in the same change.
#![no_std]

/// Names of the BPF maps, used by both sides.
pub mod maps {
    /// Ring buffer carrying every event to user space.
    pub const EVENTS: &str = "EVENTS";
    /// Per-CPU `u64` counters indexed by [`super::KernelCounter`].
    pub const COUNTERS: &str = "COUNTERS";
    /// Arguments of in-flight `SSL_read*` calls, keyed by `pid_tgid`.
    pub const READ_ARGS: &str = "READ_ARGS";
    /// Arguments of in-flight `SSL_write*` calls, keyed by `pid_tgid`.
    pub const WRITE_ARGS: &str = "WRITE_ARGS";
    /// Bytes each connection direction has carried so far, keyed by [`super::ConnDirKey`]:
    /// every record says where its call starts in the stream, so a call lost whole is seen.
    pub const CONN_OFFSETS: &str = "CONN_OFFSETS";
    /// Per-CPU scratch space where a TLS data record is built before output.
    pub const SCRATCH: &str = "SCRATCH";
    /// Arguments of in-flight Go `crypto/tls.(*Conn).Read` calls, keyed by [`super::GoCallKey`].
    pub const GO_READ_ARGS: &str = "GO_READ_ARGS";
    /// Arguments of in-flight plaintext socket reads (`read`, `recvfrom`), keyed by `pid_tgid`.
    pub const SYSCALL_READ_ARGS: &str = "SYSCALL_READ_ARGS";
    /// Arguments of in-flight plaintext socket writes (`write`, `sendto`), keyed by `pid_tgid`.
    pub const SYSCALL_WRITE_ARGS: &str = "SYSCALL_WRITE_ARGS";
    /// File descriptors seen carrying plaintext HTTP, keyed by `tgid << 32 | fd`.
    pub const PLAINTEXT_FDS: &str = "PLAINTEXT_FDS";
    /// File descriptors whose last judged read did not start like HTTP: their reads are skipped.
    pub const NON_HTTP_FDS: &str = "NON_HTTP_FDS";
}

/// Names of the eBPF programs (the functions in the eBPF crate carry exactly these names).
pub mod programs {
    pub const SSL_WRITE: &str = "ssl_write";
    pub const SSL_WRITE_EX: &str = "ssl_write_ex";
    pub const SSL_WRITE_RETURN: &str = "ssl_write_return";
    pub const SSL_READ_ENTER: &str = "ssl_read_enter";
    pub const SSL_READ_EX_ENTER: &str = "ssl_read_ex_enter";
    pub const SSL_READ_RETURN: &str = "ssl_read_return";
    pub const SSL_FREE: &str = "ssl_free";
    pub const SCHED_PROCESS_EXEC: &str = "sched_process_exec";
    pub const SCHED_PROCESS_EXIT: &str = "sched_process_exit";
    pub const DL_DEBUG_STATE: &str = "dl_debug_state";
    /// Go `crypto/tls.(*Conn).Write` entry, where the bytes are copied.
    pub const GO_TLS_WRITE_ENTER: &str = "go_tls_write_enter";
    /// Go `crypto/tls.(*Conn).Read` entry.
    pub const GO_TLS_READ_ENTER: &str = "go_tls_read_enter";
    /// Attached to every `RET` instruction of Go `crypto/tls.(*Conn).Read` (not a uretprobe).
    pub const GO_TLS_READ_RETURN: &str = "go_tls_read_return";
    /// Go `crypto/tls.(*Conn).Close` entry: the connection is over.
    pub const GO_TLS_CLOSE: &str = "go_tls_close";
    /// Plaintext HTTP on sockets: syscall tracepoints (`syscalls:<name>`), entry and exit.
    pub const SYS_ENTER_WRITE: &str = "sys_enter_write";
    pub const SYS_EXIT_WRITE: &str = "sys_exit_write";
    pub const SYS_ENTER_SENDTO: &str = "sys_enter_sendto";
    pub const SYS_EXIT_SENDTO: &str = "sys_exit_sendto";
    pub const SYS_ENTER_READ: &str = "sys_enter_read";
    pub const SYS_EXIT_READ: &str = "sys_exit_read";
    pub const SYS_ENTER_RECVFROM: &str = "sys_enter_recvfrom";
    pub const SYS_EXIT_RECVFROM: &str = "sys_exit_recvfrom";
    pub const SYS_ENTER_WRITEV: &str = "sys_enter_writev";
    pub const SYS_EXIT_WRITEV: &str = "sys_exit_writev";
    pub const SYS_ENTER_SENDMSG: &str = "sys_enter_sendmsg";
    pub const SYS_EXIT_SENDMSG: &str = "sys_exit_sendmsg";
    pub const SYS_ENTER_READV: &str = "sys_enter_readv";
    pub const SYS_EXIT_READV: &str = "sys_exit_readv";
    pub const SYS_ENTER_RECVMSG: &str = "sys_enter_recvmsg";
    pub const SYS_EXIT_RECVMSG: &str = "sys_exit_recvmsg";
    /// `close(fd)` ends a plaintext connection.
    pub const SYS_ENTER_CLOSE: &str = "sys_enter_close";
    /// Every plaintext tracepoint program; each is attached to `syscalls:<its name>`.
    pub const PLAINTEXT: [&str; 17] = [
        SYS_ENTER_WRITEV,
        SYS_EXIT_WRITEV,
        SYS_ENTER_SENDMSG,
        SYS_EXIT_SENDMSG,
        SYS_ENTER_READV,
        SYS_EXIT_READV,
        SYS_ENTER_RECVMSG,
        SYS_EXIT_RECVMSG,
        SYS_ENTER_WRITE,
        SYS_EXIT_WRITE,
        SYS_ENTER_SENDTO,
        SYS_EXIT_SENDTO,
        SYS_ENTER_READ,
        SYS_EXIT_READ,
        SYS_ENTER_RECVFROM,
        SYS_EXIT_RECVFROM,
        SYS_ENTER_CLOSE,
    ];
}

/// Names of the globals the agent sets at load time.
pub mod globals {
    /// Bytes copied from the start of each TLS call (`u64`).
    pub const HEAD_BYTES: &str = "TOKENTAP_HEAD_BYTES";
    /// Bytes copied from the end of each TLS call longer than head + tail (`u64`).
    pub const TAIL_BYTES: &str = "TOKENTAP_TAIL_BYTES";
    /// Unread ring-buffer bytes above which a TLS record wakes the agent (`u64`). Below it
    /// records are written without a wakeup and the agent collects them on its next poll:
    /// a wakeup per record would cost every observed call an extra kernel round trip.
    pub const WAKEUP_BYTES: &str = "TOKENTAP_WAKEUP_BYTES";
    /// The agent's own process id (`u32`): the plaintext syscall tracepoints skip its calls
    /// (its own HTTP server and clients are not what it observes).
    pub const AGENT_TGID: &str = "TOKENTAP_AGENT_TGID";
}

/// Largest payload carried by one TLS data record. A call's head and tail are cut into records
/// of at most this many bytes.
pub const MAX_CHUNK: usize = 16 * 1024;
/// Upper bound on the records one call may produce; bounds the kernel loop.
pub const MAX_CHUNKS_PER_CALL: usize = 64;
/// Upper bound on head + tail, so that a call never needs more than [`MAX_CHUNKS_PER_CALL`]
/// records.
pub const MAX_CAPTURE_PER_CALL: u64 = (MAX_CHUNK * MAX_CHUNKS_PER_CALL) as u64;
/// Default bytes copied from the start of a call: request headers and the first part of a body.
pub const DEFAULT_HEAD_BYTES: u64 = 64 * 1024;
/// Default bytes copied from the end of a long call: where SDKs put `model`, `stream`, tools.
pub const DEFAULT_TAIL_BYTES: u64 = 64 * 1024;
/// Length of a task's `comm`.
pub const COMM_LEN: usize = 16;

/// What follows an [`EventHeader`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A [`TlsDataHeader`] and its payload.
    TlsData = 1,
    /// A [`TlsFreeEvent`]: the `SSL*` was freed; the connection is over.
    TlsFree = 2,
    /// A [`ProcessEvent`]: a process called `execve`.
    ProcessExec = 3,
    /// A [`ProcessEvent`]: a process (its thread-group leader) exited.
    ProcessExit = 4,
    /// A [`ProcessEvent`]: the dynamic loader changed a process's link map (`dlopen`).
    LinkMapChanged = 5,
}

impl EventKind {
    pub const fn from_u32(value: u32) -> Option<Self> {
        Some(match value {
            1 => Self::TlsData,
            2 => Self::TlsFree,
            3 => Self::ProcessExec,
            4 => Self::ProcessExit,
            5 => Self::LinkMapChanged,
            _ => return None,
        })
    }
}

/// Which way plaintext went through the TLS library, from the hooked process's view.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The process wrote plaintext (`SSL_write*`): it is sending.
    Write = 0,
    /// The process read plaintext (`SSL_read*`): it is receiving.
    Read = 1,
}

impl Direction {
    pub const fn from_u8(value: u8) -> Option<Self> {
        match value {
            0 => Some(Self::Write),
            1 => Some(Self::Read),
            _ => None,
        }
    }
}

/// The hooked function a TLS data record came from.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsFunction {
    SslWrite = 0,
    SslWriteEx = 1,
    SslRead = 2,
    SslReadEx = 3,
    /// Go's `crypto/tls.(*Conn).Write`; `conn` is the `*tls.Conn`.
    GoTlsWrite = 4,
    /// Go's `crypto/tls.(*Conn).Read`; `conn` is the `*tls.Conn`.
    GoTlsRead = 5,
    /// `write(2)` on a plaintext connection; `conn` is [`plaintext_conn`] of the fd.
    SysWrite = 6,
    /// `sendto(2)`/`send(3)` on a plaintext connection.
    SysSendto = 7,
    /// `read(2)` on a plaintext connection.
    SysRead = 8,
    /// `recvfrom(2)`/`recv(3)` on a plaintext connection.
    SysRecvfrom = 9,
    /// `writev(2)`: each of the first [`MAX_IOVECS`] buffers is recorded as one call.
    SysWritev = 10,
    /// `sendmsg(2)`, buffers as for `writev`.
    SysSendmsg = 11,
    /// `readv(2)`, buffers as for `writev`.
    SysReadv = 12,
    /// `recvmsg(2)`, buffers as for `writev`.
    SysRecvmsg = 13,
}

/// Buffers of a vectored socket call (`writev`, `sendmsg`, `readv`, `recvmsg`) that are copied;
/// the bytes of later buffers are skipped in the stream offset, so user space sees them as a gap.
pub const MAX_IOVECS: usize = 4;

impl TlsFunction {
    pub const fn from_u8(value: u8) -> Option<Self> {
        Some(match value {
            0 => Self::SslWrite,
            1 => Self::SslWriteEx,
            2 => Self::SslRead,
            3 => Self::SslReadEx,
            4 => Self::GoTlsWrite,
            5 => Self::GoTlsRead,
            6 => Self::SysWrite,
            7 => Self::SysSendto,
            8 => Self::SysRead,
            9 => Self::SysRecvfrom,
            10 => Self::SysWritev,
            11 => Self::SysSendmsg,
            12 => Self::SysReadv,
            13 => Self::SysRecvmsg,
            _ => return None,
        })
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::SslWrite => "SSL_write",
            Self::SslWriteEx => "SSL_write_ex",
            Self::SslRead => "SSL_read",
            Self::SslReadEx => "SSL_read_ex",
            Self::GoTlsWrite => "crypto/tls.(*Conn).Write",
            Self::GoTlsRead => "crypto/tls.(*Conn).Read",
            Self::SysWrite => "write",
            Self::SysSendto => "sendto",
            Self::SysRead => "read",
            Self::SysRecvfrom => "recvfrom",
            Self::SysWritev => "writev",
            Self::SysSendmsg => "sendmsg",
            Self::SysReadv => "readv",
            Self::SysRecvmsg => "recvmsg",
        }
    }

    /// The TLS implementation the hooked function belongs to.
    pub const fn stack(self) -> TlsStack {
        match self {
            Self::SslWrite | Self::SslWriteEx | Self::SslRead | Self::SslReadEx => {
                TlsStack::OpenSsl
            }
            Self::GoTlsWrite | Self::GoTlsRead => TlsStack::GoCryptoTls,
            Self::SysWrite
            | Self::SysSendto
            | Self::SysRead
            | Self::SysRecvfrom
            | Self::SysWritev
            | Self::SysSendmsg
            | Self::SysReadv
            | Self::SysRecvmsg => TlsStack::Plaintext,
        }
    }
}

/// A TLS implementation tokentap hooks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TlsStack {
    /// OpenSSL's `libssl` (`SSL_read*`/`SSL_write*`).
    OpenSsl,
    /// Go's `crypto/tls`, linked into a Go executable.
    GoCryptoTls,
    /// No TLS: plaintext HTTP seen on socket syscalls.
    Plaintext,
}

impl TlsStack {
    pub const fn name(self) -> &'static str {
        match self {
            Self::OpenSsl => "openssl",
            Self::GoCryptoTls => "go",
            Self::Plaintext => "plaintext",
        }
    }
}

/// Counters the kernel side keeps per CPU, so that nothing is dropped without a count.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelCounter {
    /// Records that did not fit in the ring buffer.
    RingbufFull = 0,
    /// Payload bytes in those records.
    RingbufBytesLost = 1,
    /// `bpf_probe_read_user` failures on a payload (the bytes are reported as a gap).
    UserReadFailed = 2,
    /// `SSL_read*`/`SSL_write*` entries whose arguments could not be stashed.
    CallArgsFull = 3,
    /// Returns whose `*readbytes`/`*written` could not be read (the call's bytes are lost).
    LenUnreadable = 4,
    /// Returns with no stashed entry (the agent attached mid-call, or the stash was evicted).
    CallArgsMissing = 5,
}

impl KernelCounter {
    pub const COUNT: u32 = 6;
    pub const ALL: [Self; Self::COUNT as usize] = [
        Self::RingbufFull,
        Self::RingbufBytesLost,
        Self::UserReadFailed,
        Self::CallArgsFull,
        Self::LenUnreadable,
        Self::CallArgsMissing,
    ];
}

/// Common prefix of every ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHeader {
    /// An [`EventKind`].
    pub kind: u32,
    pub tgid: u32,
    pub tid: u32,
    pub _reserved: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC): at entry for writes (when the process handed
    /// the bytes over), at return for reads (when they arrived).
    pub ktime_ns: u64,
}

/// A slice of the plaintext of one TLS call; `data_len` payload bytes follow it.
///
/// A call of `call_len` bytes is copied as a head (`[0, head)`) and, when it is longer than
/// head + tail, a tail (`[call_len - tail, call_len)`); each part is cut into records of at
/// most [`MAX_CHUNK`] bytes. `call_offset` places this record inside its call, so the agent
/// knows the exact length of every gap.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TlsDataHeader {
    pub header: EventHeader,
    /// The `SSL*`: with the tgid, the connection's identity.
    pub conn: u64,
    /// Address of the caller's buffer; a retried write passes the same one again.
    pub buf_addr: u64,
    /// Bytes the call wrote or read in all.
    pub call_len: u64,
    /// Offset of this record's payload within the call.
    pub call_offset: u64,
    /// Where the call starts in its connection direction's stream, as the kernel counted it
    /// (every byte of every call, delivered or not). A jump means a whole call was lost.
    pub stream_offset: u64,
    /// Payload bytes following this header; with [`TLS_DATA_FLAG_UNREADABLE`], the bytes that
    /// could not be read (and no payload follows).
    pub data_len: u32,
    /// A [`Direction`].
    pub direction: u8,
    /// A [`TlsFunction`].
    pub function: u8,
    /// [`TLS_DATA_FLAG_UNREADABLE`] and friends.
    pub flags: u8,
    pub _reserved: u8,
    pub comm: [u8; COMM_LEN],
}

/// Set in [`TlsDataHeader::conn`] (and [`TlsFreeEvent::conn`]) of plaintext connections, whose
/// identity is a file descriptor rather than a TLS object's address. User-space addresses
/// (`SSL*`, `*tls.Conn`) never have bit 63 set on any supported architecture, so the two kinds
/// of identity cannot collide.
pub const PLAINTEXT_CONN_FLAG: u64 = 1 << 63;

/// The connection identity of plaintext file descriptor `fd`.
pub const fn plaintext_conn(fd: u32) -> u64 {
    PLAINTEXT_CONN_FLAG | fd as u64
}

/// The payload of this record could not be read from user memory: the `data_len` bytes at
/// `call_offset` are missing and no payload follows.
pub const TLS_DATA_FLAG_UNREADABLE: u8 = 1;

/// The per-CPU scratch record: header and the largest payload.
#[repr(C)]
pub struct TlsDataRecord {
    pub head: TlsDataHeader,
    pub data: [u8; MAX_CHUNK],
}

/// The `SSL*` of a connection was freed.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TlsFreeEvent {
    pub header: EventHeader,
    pub conn: u64,
}

/// Process lifecycle: exec, exit, executable mapping.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcessEvent {
    pub header: EventHeader,
    pub comm: [u8; COMM_LEN],
}

/// Arguments of an in-flight `SSL_read*` or `SSL_write*` call, stashed at entry and used at
/// return (only then is it known how many bytes the call moved).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CallArgs {
    pub conn: u64,
    pub buf_addr: u64,
    /// `size_t *readbytes` / `size_t *written` of the `_ex` forms; 0 for the plain ones.
    pub len_addr: u64,
    /// Entry time.
    pub ktime_ns: u64,
}

/// Arguments of an in-flight plaintext socket call, stashed at entry.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SyscallArgs {
    pub fd: u64,
    /// The buffer, or for the vectored forms the `struct iovec` array.
    pub buf_addr: u64,
    /// Entries of the `iovec` array; 0 for the plain forms.
    pub iov_count: u64,
    /// Entry time.
    pub ktime_ns: u64,
}

/// Key of [`maps::GO_READ_ARGS`]: a goroutine. A goroutine blocked
/// in `Read` may resume on another thread, so the thread id cannot key its call; the address
/// of its `runtime.g` (in R14 under Go's register ABI) is stable for the goroutine's life.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GoCallKey {
    pub g: u64,
    pub tgid: u32,
    pub _reserved: u32,
}

/// Arguments of an in-flight Go `crypto/tls.(*Conn).Read`, stashed at entry.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GoCallArgs {
    /// The `*tls.Conn`.
    pub conn: u64,
    pub buf_addr: u64,
    /// When the buffer lies on the goroutine's stack: `stack.hi - buf_addr`, so that the
    /// buffer can be found again if the runtime moved the stack during the call (copying
    /// keeps offsets from the top); 0 otherwise.
    pub stack_hi_offset: u64,
}

/// Key of [`maps::CONN_OFFSETS`]: a connection direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnDirKey {
    pub conn: u64,
    pub tgid: u32,
    /// A [`Direction`].
    pub direction: u32,
}

#[cfg(feature = "user")]
pub mod decode;
#[cfg(feature = "user")]
pub mod encode;
