//! Loading the eBPF programs and attaching them (the kernel edge).
//!
//! Uprobes attach per file (inode): one attach covers every process, present and future, that
//! maps that file. Libraries are therefore tracked by (device, inode) and attached once.

use std::{collections::HashMap, path::Path};

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{
        BtfTracePoint, TracePoint, UProbe,
        uprobe::{UProbeAttachLocation, UProbeScope},
    },
};
use tokentap_common::{
    DEFAULT_HEAD_BYTES, DEFAULT_TAIL_BYTES, KernelCounter, MAX_CAPTURE_PER_CALL, globals, maps,
    programs,
};

use crate::discovery::{LibraryFile, LibraryKind};

mod go;

/// The compiled eBPF object, embedded by `build.rs` (empty when built without it).
static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tokentap-ebpf.o"));

/// What the kernel side is loaded with.
#[derive(Clone, Debug)]
pub struct ProbeConfig {
    pub head_bytes: u64,
    pub tail_bytes: u64,
    pub ring_buffer_bytes: u32,
    /// Also capture plaintext HTTP on sockets (syscall tracepoints; see `attach_plaintext`).
    pub plaintext_http: bool,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            head_bytes: DEFAULT_HEAD_BYTES,
            tail_bytes: DEFAULT_TAIL_BYTES,
            ring_buffer_bytes: 16 * 1024 * 1024,
            plaintext_http: false,
        }
    }
}

impl ProbeConfig {
    /// Unread bytes at which the kernel wakes the agent early: an eighth of the ring.
    pub fn wakeup_bytes(&self) -> u64 {
        u64::from(self.ring_buffer_bytes / 8)
    }

    /// Checks the limits the kernel programs rely on.
    pub fn validate(&self) -> Result<(), String> {
        let half = MAX_CAPTURE_PER_CALL / 2;
        if self.head_bytes == 0 || self.head_bytes > half {
            return Err(format!("--head-bytes must be between 1 and {half}"));
        }
        if self.tail_bytes > half {
            return Err(format!("--tail-bytes must be at most {half}"));
        }
        let rb = self.ring_buffer_bytes;
        if !rb.is_power_of_two() || rb < 4096 * 16 {
            return Err("--ring-buffer-bytes must be a power of two of at least 65536".into());
        }
        Ok(())
    }
}

/// Why the kernel side could not be set up. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "this binary was built without its eBPF programs; build it with `cargo xtask build` (or `cargo xtask run`)"
    )]
    NotEmbedded,
    #[error("loading the eBPF object failed: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("eBPF program `{name}` {what}: {source}")]
    Program {
        name: &'static str,
        what: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error(
        "eBPF object has no program `{0}`; it does not match this agent, rebuild both with `cargo xtask build`"
    )]
    MissingProgram(&'static str),
    #[error("eBPF object has no map `{0}`; rebuild with `cargo xtask build`")]
    MissingMap(&'static str),
    #[error("--plaintext-http: {0}")]
    Plaintext(String),
    #[error("map `{name}`: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

/// A library the uprobes are attached to.
#[derive(Clone, Debug)]
pub struct AttachedLibrary {
    pub kind: LibraryKind,
    pub display: String,
    /// The functions hooked in it.
    pub functions: Vec<&'static str>,
}

/// Why a library could not be hooked.
#[derive(Debug, thiserror::Error)]
#[error("{display}: {reason}")]
pub struct AttachError {
    pub display: String,
    pub reason: String,
}

/// Outcome of offering a library.
#[derive(Debug)]
pub enum AttachOutcome {
    Attached(AttachedLibrary),
    AlreadyAttached,
    /// Not a TLS stack tokentap hooks (an executable that is not a Go program with
    /// `crypto/tls`).
    NothingToHook,
}

/// The dynamic loader's debugger hook, called after every change to a process's link map.
const LOADER_HOOKS: &[(&str, &str)] = &[(programs::DL_DEBUG_STATE, "_dl_debug_state")];

/// (uprobe program, function). Return probes are attached before the entry probes so that no
/// entry is stashed without its return being watched.
const SSL_HOOKS: &[(&str, &str)] = &[
    (programs::SSL_READ_RETURN, "SSL_read"),
    (programs::SSL_READ_RETURN, "SSL_read_ex"),
    (programs::SSL_WRITE_RETURN, "SSL_write"),
    (programs::SSL_WRITE_RETURN, "SSL_write_ex"),
    (programs::SSL_READ_ENTER, "SSL_read"),
    (programs::SSL_READ_EX_ENTER, "SSL_read_ex"),
    (programs::SSL_WRITE, "SSL_write"),
    (programs::SSL_WRITE_EX, "SSL_write_ex"),
    (programs::SSL_FREE, "SSL_free"),
];

/// The loaded programs and what they are attached to.
pub struct Probes {
    ebpf: Ebpf,
    attached: HashMap<(u64, u64), AttachedLibrary>,
    /// Files that failed once are not retried on every rescan.
    rejected: HashMap<(u64, u64), String>,
    /// The kernel refused to create a uprobe for lack of privilege (see [`UPROBE_PRIVILEGE`]).
    uprobe_permission_denied: bool,
    go: go::GoExecutables,
    /// Whether process starts and exits are seen as they happen (BTF tracepoints).
    pub process_watch: Result<(), String>,
}

impl Probes {
    /// Loads the object with `config`, loads every program and attaches the process watchers.
    pub fn load(config: &ProbeConfig) -> Result<Self, ProbeError> {
        if EBPF_OBJECT.is_empty() {
            return Err(ProbeError::NotEmbedded);
        }
        let mut ebpf = EbpfLoader::new()
            .override_global(globals::HEAD_BYTES, &config.head_bytes, true)
            .override_global(globals::TAIL_BYTES, &config.tail_bytes, true)
            .override_global(globals::WAKEUP_BYTES, &config.wakeup_bytes(), true)
            .override_global(globals::AGENT_TGID, &std::process::id(), true)
            .map_max_entries(maps::EVENTS, config.ring_buffer_bytes)
            .load(EBPF_OBJECT)
            .map_err(ProbeError::Load)?;

        for name in [
            programs::SSL_WRITE,
            programs::SSL_WRITE_EX,
            programs::SSL_READ_ENTER,
            programs::SSL_READ_EX_ENTER,
            programs::SSL_READ_RETURN,
            programs::SSL_WRITE_RETURN,
            programs::SSL_FREE,
            programs::DL_DEBUG_STATE,
        ]
        .into_iter()
        .chain(go::GO_PROGRAMS)
        {
            let prog: &mut UProbe = program(&mut ebpf, name)?;
            prog.load().map_err(|source| ProbeError::Program {
                name,
                what: "failed to load",
                source,
            })?;
        }
        let process_watch = Self::attach_process_watch(&mut ebpf);
        if config.plaintext_http {
            Self::attach_plaintext(&mut ebpf).map_err(ProbeError::Plaintext)?;
        }
        Ok(Self {
            ebpf,
            attached: HashMap::new(),
            rejected: HashMap::new(),
            uprobe_permission_denied: false,
            go: go::GoExecutables::default(),
            process_watch,
        })
    }

    /// The exec/exit tracepoints need kernel BTF; without it the agent still finds new
    /// processes through the loader hook and periodic rescans.
    fn attach_process_watch(ebpf: &mut Ebpf) -> Result<(), String> {
        let btf = Btf::from_sys_fs().map_err(|e| {
            format!("no kernel BTF ({e}): process exits are noticed late, by rescans")
        })?;
        for name in [programs::SCHED_PROCESS_EXEC, programs::SCHED_PROCESS_EXIT] {
            let prog: &mut BtfTracePoint = program(ebpf, name).map_err(|e| e.to_string())?;
            prog.load(name, &btf)
                .map_err(|e| format!("tp_btf {name}: {}", error_chain(&e)))?;
            prog.attach()
                .map_err(|e| format!("tp_btf {name}: {}", error_chain(&e)))?;
        }
        Ok(())
    }

    /// Plaintext HTTP: the `syscalls:sys_{enter,exit}_*` tracepoints of `write`, `sendto`,
    /// `read`, `recvfrom` and `close`. Their ids come from tracefs, which is mounted at
    /// `/sys/kernel/tracing` first when no tracefs is.
    fn attach_plaintext(ebpf: &mut Ebpf) -> Result<(), String> {
        ensure_tracefs()?;
        for name in programs::PLAINTEXT {
            let prog: &mut TracePoint = program(ebpf, name).map_err(|e| e.to_string())?;
            prog.load()
                .map_err(|e| format!("tracepoint syscalls:{name}: {}", error_chain(&e)))?;
            prog.attach("syscalls", name)
                .map_err(|e| format!("tracepoint syscalls:{name}: {}", error_chain(&e)))?;
        }
        Ok(())
    }

    pub fn take_ring_buffer(&mut self) -> Result<RingBuf<MapData>, ProbeError> {
        let map = self
            .ebpf
            .take_map(maps::EVENTS)
            .ok_or(ProbeError::MissingMap(maps::EVENTS))?;
        RingBuf::try_from(map).map_err(|source| ProbeError::Map {
            name: maps::EVENTS,
            source,
        })
    }

    pub fn take_counters(&mut self) -> Result<KernelCounters, ProbeError> {
        let map = self
            .ebpf
            .take_map(maps::COUNTERS)
            .ok_or(ProbeError::MissingMap(maps::COUNTERS))?;
        let array = PerCpuArray::try_from(map).map_err(|source| ProbeError::Map {
            name: maps::COUNTERS,
            source,
        })?;
        Ok(KernelCounters { array })
    }

    /// Whether the kernel refused some uprobe for lack of privilege.
    pub fn uprobe_permission_denied(&self) -> bool {
        self.uprobe_permission_denied
    }

    pub fn attached(&self) -> impl Iterator<Item = &AttachedLibrary> {
        self.attached.values()
    }

    /// TLS library files hooked, Go executables included (the loaders are not counted).
    pub fn tls_libraries(&self) -> usize {
        self.attached.values().filter(|a| a.kind.is_tls()).count()
    }

    /// Whether the file (device, inode) is hooked. `/proc/PID/maps` may report another device
    /// number than `fstat` for the same file (overlayfs), so the inode alone also matches.
    pub fn is_attached(&self, dev: u64, inode: u64) -> bool {
        self.attached.contains_key(&(dev, inode)) || self.attached.keys().any(|&(_, i)| i == inode)
    }

    /// Attaches the OpenSSL hooks to `lib` unless this file is already hooked.
    pub fn attach_library(&mut self, lib: &LibraryFile) -> Result<AttachOutcome, AttachError> {
        if lib.kind == LibraryKind::GoExecutable {
            return self.attach_go_executable(lib);
        }
        let key = (lib.dev, lib.inode);
        if self.attached.contains_key(&key) {
            return Ok(AttachOutcome::AlreadyAttached);
        }
        if let Some(reason) = self.rejected.get(&key) {
            return Err(AttachError {
                display: lib.display.clone(),
                reason: reason.clone(),
            });
        }
        let target = lib.fd_path();
        let mut functions = Vec::new();
        let mut errors = Vec::new();
        let hooks = match lib.kind {
            LibraryKind::OpenSsl | LibraryKind::EmbeddedOpenSsl => SSL_HOOKS,
            LibraryKind::DynamicLoader => LOADER_HOOKS,
            LibraryKind::GoExecutable => &[],
        };
        for &(name, function) in hooks {
            // By file offset where discovery found one (OpenSSL inside another file), else by
            // name (aya resolves it in the file's symbol tables).
            let location = match lib.offsets.iter().find(|(f, _)| *f == function) {
                Some(&(_, offset)) => UProbeAttachLocation::AbsoluteOffset(offset),
                None if lib.kind == LibraryKind::EmbeddedOpenSsl => {
                    errors.push(format!("{function}: not defined in this file"));
                    continue;
                }
                None => UProbeAttachLocation::Symbol(function),
            };
            match attach_uprobe(&mut self.ebpf, name, location, &target) {
                Ok(()) => {
                    if !functions.contains(&function) {
                        functions.push(function);
                    }
                }
                Err((e, permission_denied)) => {
                    self.uprobe_permission_denied |= permission_denied;
                    errors.push(format!("{function}: {e}"));
                }
            }
        }
        let usable = match lib.kind {
            LibraryKind::OpenSsl | LibraryKind::EmbeddedOpenSsl => {
                (functions.contains(&"SSL_read") || functions.contains(&"SSL_read_ex"))
                    && (functions.contains(&"SSL_write") || functions.contains(&"SSL_write_ex"))
            }
            LibraryKind::DynamicLoader | LibraryKind::GoExecutable => !functions.is_empty(),
        };
        if !usable {
            let reason = format!("no usable symbols ({})", errors.join("; "));
            self.rejected.insert(key, reason.clone());
            return Err(AttachError {
                display: lib.display.clone(),
                reason,
            });
        }
        if !errors.is_empty() {
            log::debug!("{}: some hooks missing: {}", lib.display, errors.join("; "));
        }
        let attached = AttachedLibrary {
            kind: lib.kind,
            display: lib.display.clone(),
            functions,
        };
        self.attached.insert(key, attached.clone());
        Ok(AttachOutcome::Attached(attached))
    }
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, ProbeError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = ebpf
        .program_mut(name)
        .ok_or(ProbeError::MissingProgram(name))?;
    prog.try_into().map_err(|source| ProbeError::Program {
        name,
        what: "has the wrong type",
        source,
    })
}

/// Attaches one hook; the error says whether the kernel refused it for lack of privilege.
fn attach_uprobe(
    ebpf: &mut Ebpf,
    name: &'static str,
    location: UProbeAttachLocation<'_>,
    target: &Path,
) -> Result<(), (String, bool)> {
    let prog: &mut UProbe = program(ebpf, name).map_err(|e| (e.to_string(), false))?;
    prog.attach(location, target, UProbeScope::AllProcesses)
        .map(|_| ())
        .map_err(|e| (error_chain(&e), is_permission_denied(&e)))
}

/// Whether an error or one of its sources is EACCES or EPERM from the kernel.
fn is_permission_denied(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && matches!(io.raw_os_error(), Some(libc::EACCES | libc::EPERM))
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// What creating uprobes takes: since the fix for CVE-2025-38466 (Linux 6.16, and stable
/// 5.10.240, 5.15.189, 6.1.146, 6.6.99, 6.12.39, 6.15.7) the kernel wants CAP_SYS_ADMIN;
/// CAP_PERFMON is no longer enough.
pub const UPROBE_PRIVILEGE: &str = "the kernel refused to create uprobes (perf_event_open: permission denied): since the fix for CVE-2025-38466 (Linux 6.16; stable 5.10.240, 5.15.189, 6.1.146, 6.6.99, 6.12.39, 6.15.7) that needs CAP_SYS_ADMIN, CAP_PERFMON is not enough: run as root or add SYS_ADMIN to the container's capabilities";

/// An error and its sources on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

/// The kernel's per-CPU loss counters.
pub struct KernelCounters {
    array: PerCpuArray<MapData, u64>,
}

impl KernelCounters {
    /// Current totals over all CPUs, indexed like [`KernelCounter::ALL`].
    pub fn read(&self) -> [u64; KernelCounter::COUNT as usize] {
        let mut out = [0; KernelCounter::COUNT as usize];
        for (slot, counter) in out.iter_mut().zip(KernelCounter::ALL) {
            if let Ok(values) = self.array.get(&(counter as u32), 0) {
                *slot = values.iter().sum();
            }
        }
        out
    }
}

/// Checks the environment before loading, so that a missing piece is one clear line.
pub fn check_environment() -> Result<(), String> {
    if !has_bpf_privileges() {
        return Err("tokentap lacks the capabilities to load eBPF programs and attach uprobes: it needs CAP_SYS_ADMIN (CAP_BPF and CAP_PERFMON suffice only on kernels before the CVE-2025-38466 fix), and CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH to see other users' processes: run it as root with sudo, or add them to the container's capabilities".into());
    }
    if !Path::new("/sys/bus/event_source/devices/uprobe/type").exists() {
        return Err("this kernel has no uprobe support (/sys/bus/event_source/devices/uprobe missing): it needs CONFIG_UPROBE_EVENTS=y".into());
    }
    Ok(())
}

/// The effective capabilities that loading and attaching need. Checked for root too: root in
/// a container, or under a reduced bounding set, holds only what it was given.
fn has_bpf_privileges() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    let Some(cap_eff) = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
    else {
        return false;
    };
    const CAP_SYS_ADMIN: u64 = 21;
    const CAP_PERFMON: u64 = 38;
    const CAP_BPF: u64 = 39;
    let has = |cap: u64| cap_eff & (1 << cap) != 0;
    has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))
}

/// Where tracefs is normally mounted; the kernel creates the directory when tracefs is built in.
const TRACEFS: &str = "/sys/kernel/tracing";

/// Makes sure tracefs is mounted (at [`TRACEFS`] or under debugfs), mounting it if not.
fn ensure_tracefs() -> Result<(), String> {
    let mounted = |dir: &str| Path::new(dir).join("events/syscalls").is_dir();
    if mounted(TRACEFS) || mounted("/sys/kernel/debug/tracing") {
        return Ok(());
    }
    let source = c"tracefs";
    let target = c"/sys/kernel/tracing";
    // SAFETY: plain C strings; no data argument.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            source.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(format!(
            "tracefs is not mounted and mounting it at {TRACEFS} failed ({}); mount it (`mount -t tracefs tracefs {TRACEFS}`, or a hostPath volume) or drop --plaintext-http",
            std::io::Error::last_os_error()
        ));
    }
    if !mounted(TRACEFS) {
        return Err(format!(
            "{TRACEFS} has no events/syscalls: this kernel lacks CONFIG_FTRACE_SYSCALLS; drop --plaintext-http"
        ));
    }
    Ok(())
}
