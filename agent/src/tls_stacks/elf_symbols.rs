//! What an ELF file says about TLS: where OpenSSL's (or BoringSSL's) `SSL_read`/`SSL_write`
//! family is defined, as file offsets a uprobe can attach to, and hints of other TLS stacks
//! compiled in (Go's crypto/tls, rustls, a stripped OpenSSL).
//!
//! Receives: any ELF file (read through positioned reads: only the headers, the symbol tables and
//! a few small sections are read, never a multi-GB file whole). Emits: [`ElfTlsInfo`].
//!
//! Symbols are looked up in `.dynsym` first (exported: a shared libssl, or Node.js which exports
//! its bundled OpenSSL for addons) and then in `.symtab` (a statically linked executable that
//! was not stripped). Undefined entries (imports of the system libssl, as in CPython's `_ssl`
//! module) do not count: the code lives elsewhere. A symbol's address becomes a file offset
//! through the `PT_LOAD` segment that holds it (`offset = addr - p_vaddr + p_offset`), which is
//! what the kernel's uprobe interface takes.

use std::{
    collections::HashMap,
    fs::File,
    os::unix::fs::MetadataExt,
    sync::{Arc, Mutex, OnceLock},
};

use object::{
    Endianness, Object, ObjectSection, ObjectSymbol, ReadCache, ReadRef,
    elf::{PF_X, PT_LOAD},
    read::elf::{ElfFile64, ProgramHeader},
};

/// Files larger than this are not scanned (no executable or library is this large).
pub const MAX_FILE_BYTES: u64 = 4 << 30;
/// Symbol tables larger than this are not searched. (`object` reads the symbol and string
/// tables when it opens the file; the file size cap bounds that.)
const MAX_TABLE_BYTES: u64 = 256 << 20;
/// `.rodata` is searched for libssl's traces only when no symbol was found, and only up to this
/// size.
const MAX_RODATA_BYTES: u64 = 64 << 20;

/// OpenSSL's (and BoringSSL's) functions tokentap hooks.
pub const SSL_FUNCTIONS: [&str; 5] = [
    "SSL_read",
    "SSL_read_ex",
    "SSL_write",
    "SSL_write_ex",
    "SSL_free",
];

/// Which OpenSSL-compatible library defines the functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslFlavor {
    OpenSsl,
    /// Google's fork (Chromium, Envoy, gRPC core, …): same `SSL_read`/`SSL_write` ABI; older
    /// versions lack the `_ex` forms.
    BoringSsl,
}

/// What one ELF file holds that matters for TLS capture.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ElfTlsInfo {
    /// Defined functions of [`SSL_FUNCTIONS`] with their file offsets.
    pub ssl_functions: Vec<(&'static str, u64)>,
    pub flavor: Option<SslFlavor>,
    /// Symbols are absent (stripped) but libssl's source file names are in `.rodata`: OpenSSL
    /// (or BoringSSL) is compiled in and tokentap cannot tell where its functions are.
    pub stripped_openssl: bool,
    /// A Go program (`.go.buildinfo`).
    pub go: bool,
    /// The Go program links crypto/tls (or is stripped, so this cannot be ruled out).
    pub go_crypto_tls: bool,
    /// Rust code from the rustls crate is compiled in (its mangled names in `.symtab`).
    pub rustls: bool,
    /// The GNU build id, hex.
    pub build_id: Option<String>,
}

impl ElfTlsInfo {
    /// Whether the read and write halves can both be hooked.
    pub fn hookable_ssl(&self) -> bool {
        let has = |f: &str| self.ssl_functions.iter().any(|(n, _)| *n == f);
        (has("SSL_read") || has("SSL_read_ex")) && (has("SSL_write") || has("SSL_write_ex"))
    }

    pub fn offset_of(&self, function: &str) -> Option<u64> {
        self.ssl_functions
            .iter()
            .find(|(n, _)| *n == function)
            .map(|&(_, o)| o)
    }
}

/// Why a file could not be scanned. Not an error for the agent: such a file has no hookable
/// TLS as far as tokentap can tell.
#[derive(Debug, thiserror::Error)]
pub enum ElfScanError {
    #[error("not a 64-bit ELF file: {0}")]
    NotElf(object::Error),
    #[error("{0} bytes: larger than the {MAX_FILE_BYTES}-byte scan limit")]
    TooLarge(u64),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Scans an ELF image. `data` is a byte slice (tests) or a `&ReadCache<File>` (real files).
pub fn scan_elf<'data, R: ReadRef<'data>>(data: R) -> Result<ElfTlsInfo, ElfScanError> {
    let elf = ElfFile64::<Endianness, R>::parse(data).map_err(ElfScanError::NotElf)?;
    let mut info = ElfTlsInfo {
        build_id: elf
            .build_id()
            .ok()
            .flatten()
            .map(|id| id.iter().map(|b| format!("{b:02x}")).collect()),
        ..ElfTlsInfo::default()
    };
    let loads = executable_loads(&elf);
    let mut boringssl = false;
    let mut symtab_seen = false;
    for (table, section) in [(".dynsym", ".dynstr"), (".symtab", ".strtab")] {
        let Some(sym_section) = elf.section_by_name(table) else {
            continue;
        };
        let str_size = elf.section_by_name(section).map_or(0, |s| s.size());
        if sym_section.size() > MAX_TABLE_BYTES || str_size > MAX_TABLE_BYTES {
            continue;
        }
        let symbols = if table == ".dynsym" {
            elf.dynamic_symbols()
        } else {
            symtab_seen = true;
            elf.symbols()
        };
        for symbol in symbols {
            let Ok(name) = symbol.name_bytes() else {
                continue;
            };
            if table == ".symtab" && !info.rustls && is_rustls_symbol(name) {
                info.rustls = true;
            }
            if name.starts_with(b"BORINGSSL_") || name == b"SSL_CTX_set_strict_cipher_list" {
                boringssl = true;
            }
            if name == b"crypto/tls.(*Conn).Write" {
                info.go_crypto_tls = true;
            }
            if !symbol.is_definition() {
                continue;
            }
            let Some(function) = SSL_FUNCTIONS.iter().find(|f| f.as_bytes() == name) else {
                continue;
            };
            if info.offset_of(function).is_some() {
                continue;
            }
            if let Some(offset) = file_offset(&loads, symbol.address()) {
                info.ssl_functions.push((function, offset));
            }
        }
    }
    if !info.ssl_functions.is_empty() {
        info.flavor = Some(if boringssl {
            SslFlavor::BoringSsl
        } else {
            SslFlavor::OpenSsl
        });
    }
    info.go = elf.section_by_name(".go.buildinfo").is_some();
    // A stripped Go binary keeps no symbol names to tell; assume the worst (it may speak TLS).
    if info.go && !symtab_seen {
        info.go_crypto_tls = true;
    }
    if info.ssl_functions.is_empty() && !info.go {
        info.stripped_openssl = rodata_has_libssl(&elf);
    }
    Ok(info)
}

/// rustls' items carry the crate name in their mangled symbols (`_ZN6rustls…`, v0 `…6rustls…`).
fn is_rustls_symbol(name: &[u8]) -> bool {
    name.windows(7).any(|w| w == b"6rustls")
}

/// libssl's own source file name in `.rodata`: OpenSSL and BoringSSL record `__FILE__` with
/// every error they raise (`ssl/ssl_lib.c`, BoringSSL's `ssl_lib.cc`), unless built with
/// `OPENSSL_NO_FILENAMES`. libcrypto alone (hash modules, `libcrypto.so`) does not have it, and
/// neither does a module that merely imports OpenSSL.
fn rodata_has_libssl<'data, R: ReadRef<'data>>(elf: &ElfFile64<'data, Endianness, R>) -> bool {
    let Some(rodata) = elf.section_by_name(".rodata") else {
        return false;
    };
    if rodata.size() > MAX_RODATA_BYTES {
        return false;
    }
    let Ok(data) = rodata.data() else {
        return false;
    };
    let needle = b"ssl_lib.c";
    data.windows(needle.len()).any(|w| w == needle)
}

/// An executable `PT_LOAD` segment: where its bytes are in the file and in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadSegment {
    pub vaddr: u64,
    pub offset: u64,
    pub filesz: u64,
}

fn executable_loads<'data, R: ReadRef<'data>>(
    elf: &ElfFile64<'data, Endianness, R>,
) -> Vec<LoadSegment> {
    let endian = elf.endian();
    elf.elf_program_headers()
        .iter()
        .filter(|ph| ph.p_type(endian) == PT_LOAD && ph.p_flags(endian) & PF_X != 0)
        .map(|ph| LoadSegment {
            vaddr: ph.p_vaddr(endian),
            offset: ph.p_offset(endian),
            filesz: ph.p_filesz(endian),
        })
        .collect()
}

/// The file offset of virtual address `addr`, if an executable segment holds it.
pub fn file_offset(loads: &[LoadSegment], addr: u64) -> Option<u64> {
    loads.iter().find_map(|s| {
        let within = addr.checked_sub(s.vaddr)?;
        (within < s.filesz).then(|| s.offset.checked_add(within))?
    })
}

/// Scans an open file (positioned reads; the file is never read whole).
pub fn scan_file(file: &File) -> Result<ElfTlsInfo, ElfScanError> {
    let size = file.metadata()?.len();
    if size > MAX_FILE_BYTES {
        return Err(ElfScanError::TooLarge(size));
    }
    let cache = ReadCache::new(file);
    scan_elf(&cache)
}

/// Identity of a file's contents as far as the scan is concerned: a replaced or rewritten file
/// gets a new key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileKey {
    pub dev: u64,
    pub inode: u64,
    pub size: u64,
    pub mtime_ns: i64,
}

impl FileKey {
    pub fn of(file: &File) -> std::io::Result<Self> {
        let m = file.metadata()?;
        Ok(Self {
            dev: m.dev(),
            inode: m.ino(),
            size: m.size(),
            mtime_ns: m.mtime().saturating_mul(1_000_000_000) + m.mtime_nsec(),
        })
    }
}

/// Each file is scanned once; later lookups are a hash probe. Files that are not ELF (or too
/// large) are remembered as having nothing.
#[derive(Default)]
pub struct ElfScanCache {
    entries: HashMap<FileKey, Arc<ElfTlsInfo>>,
    /// Scans actually performed (for tests and debugging).
    pub scans: u64,
}

/// Entries kept before the cache is cleared (a host has a few thousand distinct binaries).
const CACHE_CAPACITY: usize = 16_384;

impl ElfScanCache {
    pub fn get_or_scan(&mut self, key: FileKey, file: &File) -> Arc<ElfTlsInfo> {
        if let Some(info) = self.entries.get(&key) {
            return info.clone();
        }
        self.scans += 1;
        let info = Arc::new(scan_file(file).unwrap_or_else(|e| {
            log::trace!("ELF scan of inode {}: {e}", key.inode);
            ElfTlsInfo::default()
        }));
        if self.entries.len() >= CACHE_CAPACITY {
            self.entries.clear();
        }
        self.entries.insert(key, info.clone());
        info
    }
}

/// The process-wide cache shared by discovery (which files to hook), the probes (where) and the
/// coverage view (which stacks).
pub fn scan_cached(file: &File) -> std::io::Result<Arc<ElfTlsInfo>> {
    static CACHE: OnceLock<Mutex<ElfScanCache>> = OnceLock::new();
    let key = FileKey::of(file)?;
    let cache = CACHE.get_or_init(Mutex::default);
    let mut cache = cache
        .lock()
        .map_err(|_| std::io::Error::other("ELF scan cache poisoned"))?;
    Ok(cache.get_or_scan(key, file))
}

#[cfg(test)]
#[path = "elf_symbols_tests.rs"]
mod tests;
