//! What an ELF file says about TLS: where OpenSSL's (or BoringSSL's) `SSL_read`/`SSL_write`
//! family is defined, as file offsets a uprobe can attach to, and hints of other TLS stacks
//! compiled in (Go's crypto/tls, rustls, a stripped OpenSSL).
//!
//! Receives: any ELF file (read through positioned reads: the headers and a few small sections
//! are read; the symbol and string tables and `.rodata` are searched a window at a time
//! ([`super::elf_windows`]), so a scan holds about a MiB whatever the file). Emits:
//! [`ElfTlsInfo`].
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
    path::{Path, PathBuf},
    sync::{Arc, Mutex, OnceLock},
};

use object::{
    Endianness, ReadCache, ReadRef, SectionIndex,
    elf::{
        ELF_NOTE_GNU, FileHeader64, NT_GNU_BUILD_ID, PF_X, PT_LOAD, ProgramHeader64, SHN_UNDEF,
        SHT_DYNSYM, SHT_NOBITS, SHT_SYMTAB, SectionHeader64,
    },
    read::elf::{FileHeader, ProgramHeader, SectionHeader, SectionTable},
};

use super::elf_windows::{ReadAt, WINDOW, find_needles, name_offsets, visit_windows};

/// Files larger than this are not scanned (no executable or library is this large).
pub const MAX_FILE_BYTES: u64 = 4 << 30;
/// Symbol or string tables larger than this are not read.
const MAX_TABLE_BYTES: u64 = 256 << 20;
/// `.rodata` is searched for libssl's traces only when no symbol was found, and only up to this
/// size.
const MAX_RODATA_BYTES: u64 = 64 << 20;
/// Places in a string table that name a hooked function, at most (a name is normally there
/// once or twice).
const MAX_NAME_OFFSETS: usize = 256;
/// Size of an ELF64 symbol table entry.
const SYM64_BYTES: usize = 24;

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
    /// The Go program links crypto/tls (or its function tables are unreadable, so this cannot
    /// be ruled out).
    pub go_crypto_tls: bool,
    /// `crypto/tls.(*Conn).Write` is named in `.symtab`, or in `.gopclntab` of a binary
    /// without `.symtab`: the Go hooks can find their functions.
    pub go_crypto_tls_symbols: bool,
    /// Rust code from the rustls crate is compiled in (its mangled names in `.symtab`).
    pub rustls: bool,
    /// The GNU build id, hex.
    pub build_id: Option<String>,
    /// The separate debug file the functions were found in (the file itself is stripped).
    pub symbols_from: Option<PathBuf>,
    /// Executable segments, to place symbols of a separate debug file.
    pub loads: Vec<LoadSegment>,
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

/// Scans an ELF image in memory.
///
/// Reads the headers, then searches each symbol table's string table for the hooked functions'
/// names, and reads the symbols themselves only when a name is there; `.symtab` only when
/// `.dynsym` did not already give every function (a binary may export some and call others
/// internally).
pub fn scan_elf(bytes: &[u8]) -> Result<ElfTlsInfo, ElfScanError> {
    scan_elf_placed(bytes, &bytes, None)
}

/// [`scan_elf`] of a file: `data` for the headers (a `&ReadCache<File>`), `src` for the large
/// parts, read a window at a time; symbol addresses placed by `loads` instead of the file's own
/// segments when given (a separate debug file has the symbols but no file contents).
fn scan_elf_placed<'data, R: ReadRef<'data>>(
    data: R,
    src: &dyn ReadAt,
    loads: Option<&[LoadSegment]>,
) -> Result<ElfTlsInfo, ElfScanError> {
    let header = FileHeader64::<Endianness>::parse(data).map_err(ElfScanError::NotElf)?;
    let endian = header.endian().map_err(ElfScanError::NotElf)?;
    let program_headers = header
        .program_headers(endian, data)
        .map_err(ElfScanError::NotElf)?;
    let loads = match loads {
        Some(l) => l.to_vec(),
        None => executable_loads(program_headers, endian),
    };
    let sections = header
        .sections(endian, data)
        .map_err(ElfScanError::NotElf)?;
    let mut info = ElfTlsInfo {
        build_id: build_id(&sections, endian, data),
        loads: loads.clone(),
        go: sections.section_by_name(endian, b".go.buildinfo").is_some(),
        ..ElfTlsInfo::default()
    };
    let mut boringssl = false;
    let mut symtab_seen = false;
    for sh_type in [SHT_DYNSYM, SHT_SYMTAB] {
        // Every function exported: the (larger) `.symtab` has nothing to add.
        if sh_type == SHT_SYMTAB && info.ssl_functions.len() == SSL_FUNCTIONS.len() {
            break;
        }
        let Some(table) = sections.iter().find(|s| s.sh_type(endian) == sh_type) else {
            continue;
        };
        symtab_seen |= sh_type == SHT_SYMTAB;
        let Ok(strtab) = sections.section(SectionIndex(table.sh_link(endian) as usize)) else {
            continue;
        };
        let (Some(strings), Some(symbols)) =
            (file_range(strtab, endian), file_range(table, endian))
        else {
            continue;
        };
        if symbols.1 > MAX_TABLE_BYTES
            || strings.1 > MAX_TABLE_BYTES
            || table.sh_entsize(endian) != SYM64_BYTES as u64
        {
            continue;
        }
        let needles: [&[u8]; 4] = [
            // rustls' items carry the crate name in their mangled symbols (`_ZN6rustls…`).
            b"6rustls",
            b"crypto/tls.(*Conn).Write",
            b"BORINGSSL_",
            b"SSL_CTX_set_strict_cipher_list",
        ];
        let Ok(hits) = find_needles(src, strings.0, strings.1, &needles, WINDOW) else {
            continue;
        };
        if sh_type == SHT_SYMTAB {
            info.rustls |= hits[0];
            info.go_crypto_tls |= hits[1];
            info.go_crypto_tls_symbols |= hits[1];
        }
        boringssl |= hits[2] || hits[3];
        let Ok(names) = name_offsets(
            src,
            strings.0,
            strings.1,
            &SSL_FUNCTIONS,
            MAX_NAME_OFFSETS,
            WINDOW,
        ) else {
            continue;
        };
        if names.is_empty() {
            continue;
        }
        let window = WINDOW / SYM64_BYTES * SYM64_BYTES;
        let _ = visit_windows(src, symbols.0, symbols.1, window, 0, &mut |_, bytes| {
            for entry in bytes.chunks_exact(SYM64_BYTES) {
                let little = endian == Endianness::Little;
                let st_name = u64::from(if little {
                    u32::from_le_bytes(fixed(&entry[0..4]))
                } else {
                    u32::from_be_bytes(fixed(&entry[0..4]))
                });
                let st_shndx = if little {
                    u16::from_le_bytes(fixed(&entry[6..8]))
                } else {
                    u16::from_be_bytes(fixed(&entry[6..8]))
                };
                let st_value = if little {
                    u64::from_le_bytes(fixed(&entry[8..16]))
                } else {
                    u64::from_be_bytes(fixed(&entry[8..16]))
                };
                // Undefined: an import of another file's function (the system libssl).
                if st_shndx == SHN_UNDEF {
                    continue;
                }
                let Some(&(which, _)) = names.iter().find(|(_, at)| *at == st_name) else {
                    continue;
                };
                let function = SSL_FUNCTIONS[which];
                if info.offset_of(function).is_some() {
                    continue;
                }
                if let Some(offset) = file_offset(&loads, st_value) {
                    info.ssl_functions.push((function, offset));
                }
            }
            true
        });
    }
    if !info.ssl_functions.is_empty() {
        info.flavor = Some(if boringssl {
            SslFlavor::BoringSsl
        } else {
            SslFlavor::OpenSsl
        });
    }
    // A stripped Go binary: its function table (`.gopclntab`) still names what it links. If
    // that table cannot be read, assume the worst (it may speak TLS).
    if info.go && !symtab_seen {
        let named = pclntab_names_go_tls(&sections, endian, data);
        info.go_crypto_tls = named.unwrap_or(true);
        info.go_crypto_tls_symbols = named.unwrap_or(false);
    }
    if info.ssl_functions.is_empty() && !info.go {
        info.stripped_openssl = rodata_has_libssl(&sections, endian, src);
    }
    Ok(info)
}

/// Whether `.gopclntab` names `crypto/tls.(*Conn).Write`; `None` if it cannot be read.
fn pclntab_names_go_tls<'data, R: ReadRef<'data>>(
    sections: &SectionTable<'data, FileHeader64<Endianness>, R>,
    endian: Endianness,
    data: R,
) -> Option<bool> {
    let (_, section) = crate::go_pclntab::SECTION_NAMES
        .iter()
        .find_map(|name| sections.section_by_name(endian, name.as_bytes()))?;
    if section.sh_size(endian) > crate::go_pclntab::MAX_PCLNTAB_BYTES {
        return None;
    }
    let bytes = section.data(endian, data).ok()?;
    let table = crate::go_pclntab::Pclntab::parse(bytes).ok()?;
    table.contains(crate::go_binary::WRITE_SYMBOL).ok()
}

/// Where a section's bytes are in the file: (offset, size); `None` for a section without any
/// (`SHT_NOBITS`, as in a separate debug file).
fn file_range(section: &SectionHeader64<Endianness>, endian: Endianness) -> Option<(u64, u64)> {
    (section.sh_type(endian) != SHT_NOBITS)
        .then(|| (section.sh_offset(endian), section.sh_size(endian)))
}

/// An exact-size array from a slice of that length.
fn fixed<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(bytes);
    out
}

/// The GNU build id (hex), from its note section.
fn build_id<'data, R: ReadRef<'data>>(
    sections: &SectionTable<'data, FileHeader64<Endianness>, R>,
    endian: Endianness,
    data: R,
) -> Option<String> {
    for section in sections.iter() {
        let Ok(Some(mut notes)) = section.notes(endian, data) else {
            continue;
        };
        while let Ok(Some(note)) = notes.next() {
            if note.name() == ELF_NOTE_GNU && note.n_type(endian) == NT_GNU_BUILD_ID {
                return Some(note.desc().iter().map(|b| format!("{b:02x}")).collect());
            }
        }
    }
    None
}

/// libssl's own source file name in `.rodata`: OpenSSL and BoringSSL record `__FILE__` with
/// every error they raise (`ssl/ssl_lib.c`, BoringSSL's `ssl_lib.cc`), unless built with
/// `OPENSSL_NO_FILENAMES`. libcrypto alone (hash modules, `libcrypto.so`) does not have it, and
/// neither does a module that merely imports OpenSSL.
fn rodata_has_libssl<'data, R: ReadRef<'data>>(
    sections: &SectionTable<'data, FileHeader64<Endianness>, R>,
    endian: Endianness,
    src: &dyn ReadAt,
) -> bool {
    let Some((_, rodata)) = sections.section_by_name(endian, b".rodata") else {
        return false;
    };
    let Some((offset, size)) = file_range(rodata, endian) else {
        return false;
    };
    size <= MAX_RODATA_BYTES
        && find_needles(src, offset, size, &[b"ssl_lib.c"], WINDOW).is_ok_and(|hit| hit[0])
}

/// An executable `PT_LOAD` segment: where its bytes are in the file and in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadSegment {
    pub vaddr: u64,
    pub offset: u64,
    pub filesz: u64,
}

fn executable_loads(
    headers: &[ProgramHeader64<Endianness>],
    endian: Endianness,
) -> Vec<LoadSegment> {
    headers
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

/// Scans an open file (positioned reads; the file is never read whole). When it defines no
/// hookable functions (stripped) but has a build id, the separate debug file
/// `DIR/.build-id/ab/cdef….debug` in `debug_dirs` (Debian's dbgsym packages, Fedora's
/// debuginfo, or the unstripped build put there with `objcopy --only-keep-debug`) supplies
/// the symbols.
pub fn scan_file(file: &File, debug_dirs: &[PathBuf]) -> Result<ElfTlsInfo, ElfScanError> {
    let size = file.metadata()?.len();
    if size > MAX_FILE_BYTES {
        return Err(ElfScanError::TooLarge(size));
    }
    let mut info = scan_elf_placed(&ReadCache::new(file), file, None)?;
    if info.hookable_ssl() {
        return Ok(info);
    }
    let Some(id) = info.build_id.clone() else {
        return Ok(info);
    };
    for path in debug_dirs.iter().filter_map(|d| debug_file_path(d, &id)) {
        let Ok(debug) = File::open(&path) else {
            continue;
        };
        if debug.metadata().map_or(true, |m| m.len() > MAX_FILE_BYTES) {
            continue;
        }
        let Ok(found) = scan_elf_placed(&ReadCache::new(&debug), &debug, Some(&info.loads)) else {
            continue;
        };
        // The debug file must describe exactly this build.
        if found.build_id.as_deref() == Some(id.as_str()) && found.hookable_ssl() {
            info.ssl_functions = found.ssl_functions;
            info.flavor = found.flavor;
            info.stripped_openssl = false;
            info.symbols_from = Some(path);
            break;
        }
    }
    Ok(info)
}

/// `DIR/.build-id/ab/cdef….debug` for build id `abcdef…` (hex, at least 2 bytes).
pub fn debug_file_path(dir: &Path, build_id: &str) -> Option<PathBuf> {
    if build_id.len() < 4 || !build_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let (head, rest) = build_id.split_at(2);
    Some(
        dir.join(".build-id")
            .join(head)
            .join(format!("{rest}.debug")),
    )
}

/// Where separate debug files are looked for (`--debug-dir`), set once at start-up.
static DEBUG_DIRS: OnceLock<Vec<PathBuf>> = OnceLock::new();

/// Sets the debug file directories; later calls are ignored. Unset: `/usr/lib/debug`.
pub fn set_debug_dirs(dirs: Vec<PathBuf>) {
    let _ = DEBUG_DIRS.set(dirs);
}

fn debug_dirs() -> &'static [PathBuf] {
    DEBUG_DIRS.get_or_init(|| vec![PathBuf::from(DEFAULT_DEBUG_DIR)])
}

/// Where distributions install separate debug files.
pub const DEFAULT_DEBUG_DIR: &str = "/usr/lib/debug";

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
        let info = Arc::new(scan_file(file, debug_dirs()).unwrap_or_else(|e| {
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
