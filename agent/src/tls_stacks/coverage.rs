//! The per-process coverage view: for each process with TCP connections, the TLS stacks it
//! maps, whether each is hooked, and where its connections go.
//!
//! Receives: a `/proc` tree (real, or a fake one in tests) and a judgement of which files are
//! hooked. Emits: [`ProcessCoverage`] rows and [`CoverageCounts`] (the gauge's values).
//!
//! The socket layer sees addresses, not names, so "talks to an LLM API" is approximated by the
//! remote endpoint: port 443, or an `IP:PORT` named with `--provider`. A process whose stack
//! tokentap cannot hook and which has such connections is reported as unsupported TLS traffic:
//! it happened, but its tokens are not counted.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::unix::ffi::OsStrExt,
    path::Path,
    sync::Arc,
};

use super::{
    TlsStack,
    elf_symbols::{ElfTlsInfo, SslFlavor},
};
use crate::discovery::{MappedFile, parse_maps};

/// A TLS stack found in one process, and the file it lives in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StackUse {
    pub stack: TlsStack,
    /// (device, inode) of the file that holds it, as the probes key attached files.
    pub dev: u64,
    pub inode: u64,
    pub path: String,
    /// tokentap knows where to hook it (the file has the functions it attaches to).
    pub hookable: bool,
}

/// Established TCP connections of one process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Connections {
    pub established: usize,
    /// Remote endpoints that look like LLM APIs (see the module docs).
    pub to_llm_endpoints: Vec<SocketAddr>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessCoverage {
    pub pid: u32,
    pub executable: String,
    pub stacks: Vec<StackUse>,
    pub connections: Connections,
}

/// How a process's TLS is covered, the gauge's `coverage` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Coverage {
    Hooked,
    Unsupported,
    NoTls,
}

impl Coverage {
    pub fn as_str(self) -> &'static str {
        match self {
            Coverage::Hooked => "hooked",
            Coverage::Unsupported => "unsupported",
            Coverage::NoTls => "no_tls",
        }
    }
}

/// Processes per (coverage, stack); `stack` is `None` for `no_tls`. A process with two stacks
/// counts once under each.
pub type CoverageCounts = BTreeMap<(Coverage, Option<TlsStack>), u64>;

pub fn count(rows: &[ProcessCoverage], is_hooked: impl Fn(&StackUse) -> bool) -> CoverageCounts {
    let mut counts = CoverageCounts::new();
    for row in rows {
        if row.stacks.is_empty() {
            *counts.entry((Coverage::NoTls, None)).or_default() += 1;
        }
        let mut seen = HashSet::new();
        for s in &row.stacks {
            let coverage = if is_hooked(s) {
                Coverage::Hooked
            } else {
                Coverage::Unsupported
            };
            if seen.insert((coverage, s.stack)) {
                *counts.entry((coverage, Some(s.stack))).or_default() += 1;
            }
        }
    }
    counts
}

/// The agent's side of the view: counts for the gauge, and one warning per process that
/// talks to an LLM endpoint through a stack that is not hooked.
#[derive(Default)]
pub struct CoverageWatch {
    warned: HashSet<u32>,
}

impl CoverageWatch {
    pub fn update(
        &mut self,
        rows: &[ProcessCoverage],
        is_hooked: impl Fn(&StackUse) -> bool,
    ) -> CoverageCounts {
        let live: HashSet<u32> = rows.iter().map(|r| r.pid).collect();
        self.warned.retain(|pid| live.contains(pid));
        for row in rows {
            let Some(endpoint) = row.connections.to_llm_endpoints.first() else {
                continue;
            };
            if row.stacks.iter().any(&is_hooked) {
                continue;
            }
            if self.warned.insert(row.pid) {
                let stacks: Vec<&str> = row.stacks.iter().map(|s| s.stack.as_str()).collect();
                log::warn!(
                    "pid {} ({}) has a connection to {endpoint} through TLS that is not hooked ({}): its LLM calls are not counted",
                    row.pid,
                    row.executable,
                    if stacks.is_empty() {
                        "no TLS library recognised".to_owned()
                    } else {
                        stacks.join(", ")
                    }
                );
            }
        }
        count(rows, is_hooked)
    }
}

/// The stacks in a process's memory map. `elf_info` scans a mapped file that is not a known TLS
/// library, or is a `libssl.so*` (cached: each file once); `None` when it cannot be opened.
pub fn stacks_in_maps(
    maps: &[MappedFile],
    mut elf_info: impl FnMut(&MappedFile) -> Option<Arc<ElfTlsInfo>>,
) -> Vec<StackUse> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for m in maps {
        if !m.perms.contains('x') || !seen.insert((m.dev_major, m.dev_minor, m.inode)) {
            continue;
        }
        let dev = libc::makedev(m.dev_major, m.dev_minor);
        let path = m.path.display().to_string();
        let name = m.path.file_name().map(|n| n.as_bytes()).unwrap_or_default();
        let found: Vec<(TlsStack, bool)> = match TlsStack::from_library_name(name) {
            // A `libssl.so*` is hooked by name; its symbols tell OpenSSL from BoringSSL.
            Some(TlsStack::OpensslShared) => vec![shared_libssl(elf_info(m).as_deref())],
            Some(stack) => vec![(stack, false)],
            None => elf_info(m)
                .map(|info| TlsStack::embedded_in(&info))
                .unwrap_or_default(),
        };
        for (stack, hookable) in found {
            out.push(StackUse {
                stack,
                dev,
                inode: m.inode,
                path: path.clone(),
                hookable,
            });
        }
    }
    out
}

/// A shared `libssl.so*`: BoringSSL's (Android's, Debian's `android-libboringssl`) when its
/// symbols say so, else OpenSSL's. A file that cannot be scanned is taken for OpenSSL's, which
/// the probes attach to by name.
fn shared_libssl(info: Option<&ElfTlsInfo>) -> (TlsStack, bool) {
    match info {
        Some(info) if info.flavor == Some(SslFlavor::BoringSsl) => {
            (TlsStack::Boringssl, info.hookable_ssl())
        }
        _ => (TlsStack::OpensslShared, true),
    }
}

/// One row of `/proc/net/tcp{,6}`: an established connection's socket inode and remote end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpEntry {
    pub inode: u64,
    pub remote: SocketAddr,
}

const TCP_ESTABLISHED: u8 = 1;

/// Parses `/proc/PID/net/tcp` or `tcp6`, keeping established connections.
pub fn parse_proc_net_tcp(text: &str) -> Vec<TcpEntry> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let state = u8::from_str_radix(fields.get(3)?, 16).ok()?;
            if state != TCP_ESTABLISHED {
                return None;
            }
            let remote = parse_hex_endpoint(fields.get(2)?)?;
            let inode = fields.get(9)?.parse().ok()?;
            (inode != 0).then_some(TcpEntry { inode, remote })
        })
        .collect()
}

/// `0100007F:01BB` (IPv4) or 32 hex digits (IPv6): 32-bit words in host byte order.
fn parse_hex_endpoint(s: &str) -> Option<SocketAddr> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let w = u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16).ok()?;
        Some(w.to_ne_bytes())
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            let v6 = Ipv6Addr::from(bytes);
            v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Which remote endpoints count as LLM APIs.
#[derive(Clone, Debug, Default)]
pub struct LlmEndpoints {
    /// Exact `IP:PORT`s (from `--provider` entries whose host is an IP literal).
    pub exact: HashSet<SocketAddr>,
}

impl LlmEndpoints {
    /// From `--provider HOST[:PORT]=NAME` entries: those whose host is an IP address.
    pub fn from_provider_args(args: &[String]) -> Self {
        let exact = args
            .iter()
            .filter_map(|a| a.split_once('=').map(|(h, _)| h.trim()))
            .filter_map(|h| {
                h.parse::<SocketAddr>()
                    .ok()
                    .or_else(|| h.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 443)))
            })
            .collect();
        Self { exact }
    }

    pub fn matches(&self, remote: &SocketAddr) -> bool {
        remote.port() == 443 || self.exact.contains(remote)
    }
}

/// Reads one process's view from a `/proc` tree. `tcp_tables` caches each network namespace's
/// TCP table for one pass over all processes.
pub struct ProcScanner<'a> {
    pub proc_root: &'a Path,
    pub endpoints: &'a LlmEndpoints,
    tcp_by_netns: HashMap<String, Arc<HashMap<u64, SocketAddr>>>,
}

impl<'a> ProcScanner<'a> {
    pub fn new(proc_root: &'a Path, endpoints: &'a LlmEndpoints) -> Self {
        Self {
            proc_root,
            endpoints,
            tcp_by_netns: HashMap::new(),
        }
    }

    /// The process's row, or `None` when it has no established TCP connection (or is gone).
    /// `open` opens a mapped file safely (see [`crate::discovery`]).
    pub fn process(
        &mut self,
        pid: u32,
        mut scan: impl FnMut(u32, &MappedFile) -> Option<Arc<ElfTlsInfo>>,
    ) -> Option<ProcessCoverage> {
        let dir = self.proc_root.join(pid.to_string());
        let sockets = socket_inodes(&dir.join("fd"));
        if sockets.is_empty() {
            return None;
        }
        let tcp = self.tcp_table(&dir);
        let mut connections = Connections::default();
        for inode in sockets {
            if let Some(remote) = tcp.get(&inode) {
                connections.established += 1;
                if self.endpoints.matches(remote) {
                    connections.to_llm_endpoints.push(*remote);
                }
            }
        }
        if connections.established == 0 {
            return None;
        }
        connections.to_llm_endpoints.sort();
        connections.to_llm_endpoints.dedup();
        let maps = std::fs::read_to_string(dir.join("maps")).ok()?;
        let stacks = stacks_in_maps(&parse_maps(&maps), |m| scan(pid, m));
        // The executable's file name (`comm` is cut at 15 characters), else `comm`.
        let executable = std::fs::read_link(dir.join("exe"))
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .filter(|n| !n.ends_with(" (deleted)"))
            .or_else(|| {
                std::fs::read_to_string(dir.join("comm"))
                    .ok()
                    .map(|c| c.trim_end().to_owned())
            })
            .unwrap_or_default();
        Some(ProcessCoverage {
            pid,
            executable,
            stacks,
            connections,
        })
    }

    fn tcp_table(&mut self, pid_dir: &Path) -> Arc<HashMap<u64, SocketAddr>> {
        let netns = std::fs::read_link(pid_dir.join("ns/net"))
            .map(|l| l.display().to_string())
            .unwrap_or_else(|_| pid_dir.display().to_string());
        if let Some(t) = self.tcp_by_netns.get(&netns) {
            return t.clone();
        }
        let mut table = HashMap::new();
        for name in ["net/tcp", "net/tcp6"] {
            if let Ok(text) = std::fs::read_to_string(pid_dir.join(name)) {
                for e in parse_proc_net_tcp(&text) {
                    table.insert(e.inode, e.remote);
                }
            }
        }
        let table = Arc::new(table);
        self.tcp_by_netns.insert(netns, table.clone());
        table
    }
}

/// Inodes of the sockets among a process's descriptors (`socket:[12345]`).
fn socket_inodes(fd_dir: &Path) -> Vec<u64> {
    let Ok(entries) = std::fs::read_dir(fd_dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|target| {
            let t = target.as_os_str().as_bytes();
            let inner = t.strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
            std::str::from_utf8(inner).ok()?.parse().ok()
        })
        .collect()
}

/// Scans a mapped file through the shared ELF cache, opening it safely within the process.
pub fn scan_mapped(proc_root: &Path, pid: u32, m: &MappedFile) -> Option<Arc<ElfTlsInfo>> {
    let file: File = crate::discovery::open_mapped_file(proc_root, pid, m).ok()?;
    super::elf_symbols::scan_cached(&file).ok()
}

#[cfg(test)]
#[path = "coverage_tests.rs"]
mod tests;
