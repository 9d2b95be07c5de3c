//! Finding Go's `crypto/tls` in an executable: where to put the uprobes.
//!
//! Receives: the bytes of an ELF file (a slice, or a [`object::ReadCache`] over an open file,
//! so that a non-Go executable costs only its headers). Emits: [`GoTlsHooks`], the file
//! offsets of the entry of `crypto/tls.(*Conn).Write`, `.Read` and `.Close` and of every
//! `RET` instruction of `Read`, or a [`GoBinaryError`] saying why not.
//!
//! Return probes go on the `RET` instructions because a uretprobe replaces the return address
//! on the stack with a trampoline, and Go's runtime, which walks and copies goroutine stacks,
//! then fails (`unexpected return pc`). The instructions are found with a real x86-64
//! decoder: the byte `C3` also occurs inside other instructions (immediates, displacements).
//!
//! The functions are looked up in `.symtab`. A binary linked with `-ldflags=-s` (usual in
//! container images) has none; its functions are then found in Go's own function table,
//! `.gopclntab`, which every Go executable keeps for stack traces (see [`crate::go_pclntab`]):
//! the same entries, and the same `RET`s, since a function ends where the next one starts.
//!
//! Supported: ELF x86-64 executables built by Go 1.17 or later (the register ABI, whose
//! argument registers the kernel programs read), with or without a symbol table. arm64 would
//! need the arm64 register assignment in the kernel programs (receiver and buffer in R0–R2,
//! `g` in R28) and `RET` found by fixed-width decoding; it is not built or tested here.

use iced_x86::{Decoder, DecoderOptions, Mnemonic, Register};
use object::{
    Architecture, Object, ObjectSection, ObjectSegment, ObjectSymbol, ReadRef, read::elf::ElfFile64,
};

use crate::go_pclntab::{self as pclntab, FuncRange, MAX_PCLNTAB_BYTES, Pclntab, PclntabError};

/// The functions hooked, as named in a Go binary's symbol table and function table.
pub const WRITE_SYMBOL: &str = "crypto/tls.(*Conn).Write";
pub const READ_SYMBOL: &str = "crypto/tls.(*Conn).Read";
pub const CLOSE_SYMBOL: &str = "crypto/tls.(*Conn).Close";

/// The first release with the register-based internal ABI on amd64.
const FIRST_REGISTER_ABI: GoVersion = GoVersion {
    major: 1,
    minor: 17,
};

/// A Go release, from the binary's build information (`go1.19.8` → 1.19).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct GoVersion {
    pub major: u32,
    pub minor: u32,
}

impl std::fmt::Display for GoVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "go{}.{}", self.major, self.minor)
    }
}

/// One hooked function: file offsets of its first instruction and of each of its `RET`s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoFunction {
    pub entry: u64,
    pub returns: Vec<u64>,
}

/// Where the probes go in one Go executable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoTlsHooks {
    /// The toolchain's version string (`go1.19.8`).
    pub version: String,
    /// Where the functions were found.
    pub found_in: FunctionTable,
    /// Start of `(*Conn).Write`'s body, just after its stack check (writes are copied there,
    /// before any byte is sent: see `ebpf/src/probes/go_tls.rs`, and [`body_after_stack_check`]
    /// for why not at the entry).
    pub write: u64,
    /// Entry of `(*Conn).Write`.
    pub write_entry: u64,
    pub read: GoFunction,
    /// Entry of `(*Conn).Close`, which ends a connection; absent if the linker dropped it.
    pub close: Option<u64>,
}

/// The table that named the hooked functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FunctionTable {
    /// The ELF symbol table.
    Symtab,
    /// Go's own function table, kept by binaries linked with `-ldflags=-s`.
    Pclntab,
}

impl FunctionTable {
    pub fn section_name(self) -> &'static str {
        match self {
            FunctionTable::Symtab => ".symtab",
            FunctionTable::Pclntab => ".gopclntab",
        }
    }
}

/// Why no hooks were found.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum GoBinaryError {
    /// Not a Go executable (no `.go.buildinfo`): nothing to say.
    #[error("not a Go executable")]
    NotGo,
    /// A Go executable that does not link `crypto/tls`: nothing to hook.
    #[error("Go executable without crypto/tls")]
    NoCryptoTls,
    /// A Go executable with `crypto/tls` that cannot be hooked.
    #[error("Go crypto/tls unsupported: {0}")]
    Unsupported(String),
    /// The file contradicts itself.
    #[error("malformed Go executable: {0}")]
    Malformed(String),
}

/// Finds the hooks in the ELF file `data`.
pub fn analyse<'data, R: ReadRef<'data>>(data: R) -> Result<GoTlsHooks, GoBinaryError> {
    let Ok(elf) = ElfFile64::<object::Endianness, R>::parse(data) else {
        return Err(GoBinaryError::NotGo);
    };
    let Some(buildinfo) = elf.section_by_name(".go.buildinfo") else {
        return Err(GoBinaryError::NotGo);
    };
    let buildinfo = buildinfo
        .data()
        .map_err(|e| GoBinaryError::Malformed(format!(".go.buildinfo: {e}")))?;
    let version = build_version(buildinfo, &|addr, len| read_at(&elf, data, addr, len))?;
    let parsed = parse_version(&version)
        .ok_or_else(|| GoBinaryError::Malformed(format!("Go version {version:?}")))?;

    let mut symbols = find_symbols(&elf);
    let mut found_in = FunctionTable::Symtab;
    if symbols.read.is_none() {
        // A symbol table without the functions: the program does not link crypto/tls.
        if elf.symbol_table().is_some() {
            return Err(GoBinaryError::NoCryptoTls);
        }
        symbols = pclntab_symbols(&elf, &version, parsed)?;
        found_in = FunctionTable::Pclntab;
    }
    let Some(read) = symbols.read else {
        return Err(GoBinaryError::NoCryptoTls);
    };
    let Some(write) = symbols.write else {
        return Err(GoBinaryError::NoCryptoTls);
    };
    hookable(&elf, &version, parsed)?;
    let write_entry = file_offset(&elf, write.0)?;
    let write = file_offset(&elf, write_body(&elf, write.0))?;
    let read = function(&elf, data, read)?;
    let close = match symbols.close {
        Some((addr, _)) => Some(file_offset(&elf, addr)?),
        None => None,
    };
    Ok(GoTlsHooks {
        version,
        found_in,
        write,
        write_entry,
        read,
        close,
    })
}

/// Refuses what the kernel programs cannot read: another architecture, or the stack ABI.
fn hookable<'data, R: ReadRef<'data>>(
    elf: &ElfFile64<'data, object::Endianness, R>,
    version: &str,
    parsed: GoVersion,
) -> Result<(), GoBinaryError> {
    if elf.architecture() != Architecture::X86_64 {
        return Err(GoBinaryError::Unsupported(format!(
            "{version} binary for {:?}; only x86-64 is supported",
            elf.architecture()
        )));
    }
    if parsed < FIRST_REGISTER_ABI {
        return Err(GoBinaryError::Unsupported(format!(
            "{version} predates the register ABI of Go 1.17"
        )));
    }
    Ok(())
}

/// (address, size) of each hooked symbol.
#[derive(Default)]
struct Symbols {
    write: Option<(u64, u64)>,
    read: Option<(u64, u64)>,
    close: Option<(u64, u64)>,
}

fn find_symbols<'data, R: ReadRef<'data>>(
    elf: &ElfFile64<'data, object::Endianness, R>,
) -> Symbols {
    let mut found = Symbols::default();
    for sym in elf.symbols() {
        let slot = match sym.name_bytes() {
            Ok(n) if n == WRITE_SYMBOL.as_bytes() => &mut found.write,
            Ok(n) if n == READ_SYMBOL.as_bytes() => &mut found.read,
            Ok(n) if n == CLOSE_SYMBOL.as_bytes() => &mut found.close,
            _ => continue,
        };
        if sym.address() != 0 && slot.is_none() {
            *slot = Some((sym.address(), sym.size()));
        }
    }
    found
}

/// The hooked functions from `.gopclntab`, for a binary without a symbol table.
///
/// From Go 1.18 on the table gives entries relative to `runtime.text`, which a stripped binary
/// does not name. Candidates, in order: the `text` field of the runtime's module table
/// ([`moduledata_text`]), the header's `textStart` (filled in by Go 1.18–1.19 linkers), and
/// the start of `.text` (where Go's internal linker puts `runtime.text`; an external linker
/// may put C start-up code first). A candidate is taken only if it puts Go's
/// stack-bound check at the entries of `Write` and `Read` (and `Close` is kept only if it
/// has one too), so a wrong base never places a probe inside an instruction.
fn pclntab_symbols<'data, R: ReadRef<'data>>(
    elf: &ElfFile64<'data, object::Endianness, R>,
    version: &str,
    parsed: GoVersion,
) -> Result<Symbols, GoBinaryError> {
    // No table: nothing says this program links crypto/tls (Go's linker always writes one
    // for ELF executables, so this is not a Go executable as the toolchain makes them).
    let Some(section) = pclntab::SECTION_NAMES
        .iter()
        .find_map(|name| elf.section_by_name(name))
    else {
        return Err(GoBinaryError::NoCryptoTls);
    };
    if section.size() > MAX_PCLNTAB_BYTES {
        return Err(GoBinaryError::Unsupported(format!(
            "{version} binary without a symbol table whose .gopclntab has {} bytes (limit {MAX_PCLNTAB_BYTES})",
            section.size()
        )));
    }
    let bytes = section
        .data()
        .map_err(|e| GoBinaryError::Malformed(format!(".gopclntab: {e}")))?;
    let refused = |e: PclntabError| match e {
        PclntabError::TooOld => {
            GoBinaryError::Unsupported(format!("{version} predates the register ABI of Go 1.17"))
        }
        PclntabError::Duplicate(_) => GoBinaryError::Unsupported(e.to_string()),
        PclntabError::UnknownMagic(_) | PclntabError::Malformed(_) => {
            GoBinaryError::Malformed(e.to_string())
        }
    };
    let table = Pclntab::parse(bytes).map_err(refused)?;
    let names = [WRITE_SYMBOL, READ_SYMBOL, CLOSE_SYMBOL];
    let mut bases: Vec<u64> = Vec::with_capacity(3);
    if table.format().text_relative() {
        let from_moduledata = elf.section_by_name(".noptrdata").and_then(|noptrdata| {
            if noptrdata.size() > MAX_NOPTRDATA_BYTES {
                return None;
            }
            moduledata_text(
                noptrdata.data().ok()?,
                section.address(),
                section.address() + table.name_table_offset() as u64,
                table.first_entry_field()?,
            )
        });
        let candidates = [
            from_moduledata,
            table.header_text_start(),
            elf.section_by_name(".text").map(|t| t.address()),
        ];
        for base in candidates.into_iter().flatten() {
            if !bases.contains(&base) {
                bases.push(base);
            }
        }
    } else {
        bases.push(0); // absolute entries
    }
    // Names do not depend on the base: absent ones mean no crypto/tls at all.
    if !table.contains(READ_SYMBOL).map_err(refused)? {
        return Err(GoBinaryError::NoCryptoTls);
    }
    // The prologue check below decodes x86-64 and expects the register ABI's `g` in R14.
    hookable(elf, version, parsed)?;
    for base in bases {
        let found = table.find(&names, base).map_err(refused)?;
        if found[0].is_none() || found[1].is_none() {
            return Err(GoBinaryError::NoCryptoTls);
        }
        let as_symbol = |f: &Option<FuncRange>| f.map(|f| (f.entry, f.end - f.entry));
        let checked = |f: &Option<FuncRange>| {
            as_symbol(f).filter(|&(addr, _)| opens_with_stack_check(elf, addr))
        };
        let (Some(write), Some(read)) = (checked(&found[0]), checked(&found[1])) else {
            continue;
        };
        // `Close` is optional (a connection then ends when its process does).
        return Ok(Symbols {
            write: Some(write),
            read: Some(read),
            close: checked(&found[2]),
        });
    }
    Err(GoBinaryError::Unsupported(format!(
        "{version} binary without a symbol table: its .gopclntab names crypto/tls, but no text \
         address puts Go's stack check at those functions' entries (externally linked?)"
    )))
}

/// The largest `.noptrdata` searched for the module table.
const MAX_NOPTRDATA_BYTES: u64 = 64 << 20;

/// `runtime.text` as the runtime's own module table (`runtime.firstmoduledata`, in
/// `.noptrdata`) records it, for 64-bit little-endian Go 1.18+ binaries. The table opens with
/// (`src/runtime/symtab.go`, `moduledata`): a pointer to the pclntab header, six slices
/// (funcnametab, cutab, filetab, pctab, pclntable, ftab: pointer, length, capacity each),
/// `findfunctab`, `minpc`, `maxpc`, `text`. A match must point at `.gopclntab`
/// (`pclntab_addr`), have its name table where the header says (`nametab_addr`), and have
/// `minpc == text + first_entry` (the first function's offset from `runtime.text`), so a
/// stray word or another layout yields `None`, not a wrong address.
fn moduledata_text(
    noptrdata: &[u8],
    pclntab_addr: u64,
    nametab_addr: u64,
    first_entry: u64,
) -> Option<u64> {
    const WORDS: usize = 23;
    const MINPC: usize = 20;
    const TEXT: usize = 22;
    let word = |chunk: &[u8], i: usize| -> Option<u64> {
        Some(u64::from_le_bytes(
            chunk.get(i * 8..i * 8 + 8)?.try_into().ok()?,
        ))
    };
    let needle = pclntab_addr.to_le_bytes();
    noptrdata
        .chunks_exact(8)
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .find_map(|(i, _)| {
            let table = noptrdata.get(i * 8..i * 8 + WORDS * 8)?;
            let text = word(table, TEXT)?;
            (word(table, 1)? == nametab_addr
                && word(table, MINPC)? == text.checked_add(first_entry)?)
            .then_some(text)
        })
}

/// Whether the code at `addr` starts, within its first two instructions, with Go's
/// stack-bound check: a `cmp` against `g.stackguard0`, `[r14+0x10]` in the register ABI.
fn opens_with_stack_check<'data, R: ReadRef<'data>>(
    elf: &ElfFile64<'data, object::Endianness, R>,
    addr: u64,
) -> bool {
    const PROLOGUE_BYTES: u64 = 32;
    let Some(code) = read_at(elf, elf.data(), addr, PROLOGUE_BYTES) else {
        return false;
    };
    starts_with_stack_check(code)
}

/// Where the write probe goes in `(*Conn).Write` at `addr`: after its stack check, or at the
/// entry if it has none (then it never restarts).
fn write_body<'data, R: ReadRef<'data>>(
    elf: &ElfFile64<'data, object::Endianness, R>,
    addr: u64,
) -> u64 {
    const PROLOGUE_BYTES: u64 = 32;
    read_at(elf, elf.data(), addr, PROLOGUE_BYTES)
        .and_then(|code| body_after_stack_check(code, addr))
        .unwrap_or(addr)
}

/// The address of the instruction after the stack check's branch, in code at `ip` that opens
/// with Go's stack check (`cmp …, [r14+0x10]` in its first two instructions, then a
/// conditional jump to `morestack`).
///
/// A call that finds its stack too small branches to `morestack`, which grows the stack (moving
/// it) and starts the function over from its entry. A probe at the entry then fires twice for
/// one call; for `Write`, copied at entry, the request would reach user space twice and every
/// later response on that connection would be paired with the request before it. The
/// instruction after the branch runs once per call, with the arguments still in their
/// registers.
pub fn body_after_stack_check(code: &[u8], ip: u64) -> Option<u64> {
    let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    for _ in 0..2 {
        let insn = decoder.decode();
        if insn.is_invalid() {
            return None;
        }
        if insn.mnemonic() == Mnemonic::Cmp
            && insn.memory_base() == Register::R14
            && insn.memory_displacement64() == 0x10
        {
            let branch = decoder.decode();
            // Go branches with JLS (`jbe`); any conditional jump will do.
            let conditional = matches!(
                branch.mnemonic(),
                Mnemonic::Jbe
                    | Mnemonic::Jb
                    | Mnemonic::Ja
                    | Mnemonic::Jae
                    | Mnemonic::Jle
                    | Mnemonic::Jl
                    | Mnemonic::Jg
                    | Mnemonic::Jge
            );
            return (!branch.is_invalid() && conditional).then(|| branch.next_ip());
        }
    }
    None
}

/// Whether one of the first two instructions of `code` is `cmp …, [r14+0x10]`.
fn starts_with_stack_check(code: &[u8]) -> bool {
    let mut decoder = Decoder::new(64, code, DecoderOptions::NONE);
    (0..2).any(|_| {
        let insn = decoder.decode();
        !insn.is_invalid()
            && insn.mnemonic() == Mnemonic::Cmp
            && insn.memory_base() == Register::R14
            && insn.memory_displacement64() == 0x10
    })
}

/// The function's entry and `RET` offsets, from its machine code.
fn function<'data, R: ReadRef<'data>>(
    elf: &ElfFile64<'data, object::Endianness, R>,
    data: R,
    (addr, size): (u64, u64),
) -> Result<GoFunction, GoBinaryError> {
    if size == 0 || size > 1 << 20 {
        return Err(GoBinaryError::Malformed(format!(
            "function at {addr:#x} has size {size}"
        )));
    }
    let entry = file_offset(elf, addr)?;
    let code = data
        .read_bytes_at(entry, size)
        .map_err(|()| GoBinaryError::Malformed(format!("code at {addr:#x} is outside the file")))?;
    let returns = ret_offsets(code, addr)
        .map_err(|at| {
            GoBinaryError::Malformed(format!(
                "undecodable instruction at {at:#x} in function at {addr:#x}"
            ))
        })?
        .into_iter()
        .map(|ret| entry + (ret - addr))
        .collect::<Vec<_>>();
    if returns.is_empty() {
        return Err(GoBinaryError::Malformed(format!(
            "function at {addr:#x} has no RET instruction"
        )));
    }
    Ok(GoFunction { entry, returns })
}

/// Addresses of the near `RET` instructions (`C3`, `C2 imm16`, with any prefixes) in `code`,
/// which starts at address `ip`. Err: the address of an instruction that does not decode.
pub fn ret_offsets(code: &[u8], ip: u64) -> Result<Vec<u64>, u64> {
    let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut out = Vec::new();
    while decoder.can_decode() {
        let insn = decoder.decode();
        if insn.is_invalid() {
            return Err(insn.ip());
        }
        if insn.mnemonic() == Mnemonic::Ret {
            out.push(insn.ip());
        }
    }
    Ok(out)
}

/// The file offset of virtual address `addr`, through the loadable segment holding it.
fn file_offset<'data, R: ReadRef<'data>>(
    elf: &ElfFile64<'data, object::Endianness, R>,
    addr: u64,
) -> Result<u64, GoBinaryError> {
    elf.segments()
        .find_map(|seg| {
            let (offset, file_size) = seg.file_range();
            let start = seg.address();
            (start <= addr && addr < start + file_size).then(|| offset + (addr - start))
        })
        .ok_or_else(|| GoBinaryError::Malformed(format!("address {addr:#x} is in no segment")))
}

fn read_at<'data, R: ReadRef<'data>>(
    elf: &ElfFile64<'data, object::Endianness, R>,
    data: R,
    addr: u64,
    len: u64,
) -> Option<&'data [u8]> {
    let offset = file_offset(elf, addr).ok()?;
    data.read_bytes_at(offset, len).ok()
}

const BUILDINFO_MAGIC: &[u8] = b"\xff Go buildinf:";
/// Go 1.18+: the version and module strings follow the 32-byte header, length-prefixed.
const BUILDINFO_INLINE_STRINGS: u8 = 2;
const BUILDINFO_BIG_ENDIAN: u8 = 1;

/// The toolchain version from `.go.buildinfo`. Go 1.18+ stores it inline; older releases
/// store a pointer to a Go string header (pointer, length), read through `read_at`.
pub fn build_version<'a>(
    buildinfo: &'a [u8],
    read_at: &dyn Fn(u64, u64) -> Option<&'a [u8]>,
) -> Result<String, GoBinaryError> {
    let malformed = |what: &str| GoBinaryError::Malformed(format!(".go.buildinfo: {what}"));
    if buildinfo.len() < 32 || !buildinfo.starts_with(BUILDINFO_MAGIC) {
        return Err(malformed("no magic"));
    }
    let ptr_size = usize::from(buildinfo[14]);
    let flags = buildinfo[15];
    let bytes = if flags & BUILDINFO_INLINE_STRINGS != 0 {
        let (len, used) = uvarint(&buildinfo[32..]).ok_or_else(|| malformed("bad length"))?;
        let start = 32 + used;
        let end = usize::try_from(len)
            .ok()
            .and_then(|l| start.checked_add(l))
            .filter(|&e| e <= buildinfo.len())
            .ok_or_else(|| malformed("version past the end"))?;
        &buildinfo[start..end]
    } else {
        if ptr_size != 4 && ptr_size != 8 {
            return Err(malformed("bad pointer size"));
        }
        let big = flags & BUILDINFO_BIG_ENDIAN != 0;
        let ptr = |b: &[u8]| -> u64 {
            let mut v = 0u64;
            for i in 0..ptr_size {
                let byte = if big { b[i] } else { b[ptr_size - 1 - i] };
                v = (v << 8) | u64::from(byte);
            }
            v
        };
        let header_addr = ptr(&buildinfo[16..16 + ptr_size]);
        let header = read_at(header_addr, 2 * ptr_size as u64)
            .ok_or_else(|| malformed("version string header unreadable"))?;
        let (data, len) = (ptr(header), ptr(&header[ptr_size..]));
        if len > 256 {
            return Err(malformed("version string too long"));
        }
        read_at(data, len).ok_or_else(|| malformed("version string unreadable"))?
    };
    String::from_utf8(bytes.to_vec()).map_err(|_| malformed("version is not UTF-8"))
}

fn uvarint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, &byte) in b.iter().enumerate().take(10) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// `go1.19.8`, `go1.21rc2`, `devel go1.23-abc…` → (1, minor).
pub fn parse_version(s: &str) -> Option<GoVersion> {
    let at = s.find("go1.")?;
    let rest = &s[at + 2..];
    let (major, rest) = rest.split_once('.')?;
    let minor: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some(GoVersion {
        major: major.parse().ok()?,
        minor: minor.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use std::{path::PathBuf, process::Command, sync::OnceLock};

    use super::*;

    #[test]
    fn finds_ret_but_not_c3_inside_other_instructions() {
        let code = [
            0xb8, 0xc3, 0x00, 0x00, 0x00, // mov eax, 0xc3
            0x48, 0x8b, 0x05, 0xc3, 0xc3, 0x00, 0x00, // mov rax, [rip+0xc3c3]
            0xc3, // ret
            0xf3, 0xc3, // repz ret
            0xc2, 0x08, 0x00, // ret 8
            0xcc, // int3 (padding)
            0xcb, // retf: a far return, never a function's own return here
        ];
        assert_eq!(ret_offsets(&code, 0x1000), Ok(vec![0x100c, 0x100d, 0x100f]));
    }

    #[test]
    fn recognises_the_stack_bound_check() {
        // cmp rsp, [r14+0x10]: small frames.
        assert!(starts_with_stack_check(&[
            0x49, 0x3b, 0x66, 0x10, 0x76, 0x20
        ]));
        // lea r12, [rsp-0x98]; cmp r12, [r14+0x10]: large frames.
        assert!(starts_with_stack_check(&[
            0x4c, 0x8d, 0xa4, 0x24, 0x68, 0xff, 0xff, 0xff, 0x4d, 0x3b, 0x66, 0x10
        ]));
        // The body starts after the check's branch: cmp (4 bytes) + jbe rel8 (2).
        assert_eq!(
            body_after_stack_check(&[0x49, 0x3b, 0x66, 0x10, 0x76, 0x20, 0x55], 0x1000),
            Some(0x1006)
        );
        // lea (8) + cmp (4) + jbe rel32 (6).
        assert_eq!(
            body_after_stack_check(
                &[
                    0x4c, 0x8d, 0xa4, 0x24, 0x68, 0xff, 0xff, 0xff, 0x4d, 0x3b, 0x66, 0x10, 0x0f,
                    0x86, 0x10, 0x00, 0x00, 0x00, 0x55
                ],
                0x2000
            ),
            Some(0x2012)
        );
        // A check not followed by a branch, or no check: no body start.
        assert_eq!(
            body_after_stack_check(&[0x49, 0x3b, 0x66, 0x10, 0x55], 0),
            None
        );
        assert_eq!(
            body_after_stack_check(&[0x48, 0x83, 0xec, 0x68, 0xcc], 0),
            None
        );
        // sub rsp, 0x68 (a function's body, not its entry); int3 padding; [r14+0x18].
        assert!(!starts_with_stack_check(&[0x48, 0x83, 0xec, 0x68, 0xcc]));
        assert!(!starts_with_stack_check(&[
            0xcc, 0xcc, 0x49, 0x3b, 0x66, 0x10
        ]));
        assert!(!starts_with_stack_check(&[0x49, 0x3b, 0x66, 0x18]));
        assert!(!starts_with_stack_check(&[0x49, 0x3b]));
    }

    #[test]
    fn truncated_instruction_is_an_error() {
        // `mov eax, imm32` cut after two bytes of its immediate.
        assert_eq!(ret_offsets(&[0xc3, 0xb8, 0x01, 0x02], 0x10), Err(0x11));
    }

    #[test]
    fn parses_versions() {
        let v = |s| parse_version(s);
        assert_eq!(
            v("go1.19.8"),
            Some(GoVersion {
                major: 1,
                minor: 19
            })
        );
        assert_eq!(
            v("go1.21rc2"),
            Some(GoVersion {
                major: 1,
                minor: 21
            })
        );
        assert_eq!(
            v("devel go1.23-4f2a8b Tue"),
            Some(GoVersion {
                major: 1,
                minor: 23
            })
        );
        assert_eq!(
            v("go1.16"),
            Some(GoVersion {
                major: 1,
                minor: 16
            })
        );
        assert_eq!(v("1.19"), None);
        assert!(v("go1.16.15").expect("parses") < FIRST_REGISTER_ABI);
    }

    fn buildinfo_header(flags: u8) -> Vec<u8> {
        let mut b = BUILDINFO_MAGIC.to_vec();
        b.push(8);
        b.push(flags);
        b.resize(32, 0);
        b
    }

    #[test]
    fn reads_inline_build_version() {
        let mut b = buildinfo_header(BUILDINFO_INLINE_STRINGS);
        b.push(8);
        b.extend_from_slice(b"go1.22.1");
        b.push(0);
        assert_eq!(build_version(&b, &|_, _| None), Ok("go1.22.1".into()));
        b.truncate(36);
        assert!(matches!(
            build_version(&b, &|_, _| None),
            Err(GoBinaryError::Malformed(_))
        ));
    }

    #[test]
    fn reads_pointer_build_version() {
        // Go 1.13–1.17: a pointer to a string header (data pointer, length).
        let mut b = buildinfo_header(0);
        b[16..24].copy_from_slice(&0x5000u64.to_le_bytes());
        let mut header = 0x6000u64.to_le_bytes().to_vec();
        header.extend_from_slice(&8u64.to_le_bytes());
        let read = |addr: u64, len: u64| -> Option<&[u8]> {
            match (addr, len) {
                (0x5000, 16) => Some(&header[..]),
                (0x6000, 8) => Some(&b"go1.16.5"[..]),
                _ => None,
            }
        };
        assert_eq!(build_version(&b, &read), Ok("go1.16.5".into()));
        assert!(build_version(&b[..20], &read).is_err());
    }

    #[test]
    fn other_files_are_not_go() {
        assert_eq!(analyse(&b"#!/bin/sh\n"[..]), Err(GoBinaryError::NotGo));
        let me = std::fs::read(std::env::current_exe().expect("own path")).expect("own binary");
        assert_eq!(analyse(&me[..]), Err(GoBinaryError::NotGo));
    }

    /// A tiny Go program using crypto/tls, built here with the system Go toolchain (Debian's
    /// `golang-go`; `cargo xtask setup` installs it). Built once per test run, with and
    /// without a symbol table.
    fn go_programs() -> &'static (PathBuf, PathBuf) {
        static BUILT: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
        BUILT.get_or_init(|| {
            (
                go_build("tlsprobe", "", false),
                go_build("tlsprobe-stripped", "-s -w", false),
            )
        })
    }

    /// The same program linked by the system's C linker (`-linkmode=external`, cgo; gcc
    /// comes with Debian's golang-go), which puts C start-up code at the start of `.text`,
    /// before `runtime.text`: with and without a symbol table.
    fn go_programs_external() -> &'static (PathBuf, PathBuf) {
        static BUILT: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
        BUILT.get_or_init(|| {
            (
                go_build("tlsprobe-ext", "-linkmode=external", true),
                go_build("tlsprobe-ext-stripped", "-linkmode=external -s -w", true),
            )
        })
    }

    /// The program as a position-independent executable (`-buildmode=pie`, as some
    /// distributions build Go): the table is in `.data.rel.ro.gopclntab`.
    fn go_programs_pie() -> &'static (PathBuf, PathBuf) {
        static BUILT: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
        BUILT.get_or_init(|| {
            (
                go_build_with("tlsprobe-pie", "", false, &["-buildmode=pie"]),
                go_build_with("tlsprobe-pie-stripped", "-s -w", false, &["-buildmode=pie"]),
            )
        })
    }

    fn go_build(out: &str, ldflags: &str, cgo: bool) -> PathBuf {
        go_build_with(out, ldflags, cgo, &[])
    }

    fn go_build_with(out: &str, ldflags: &str, cgo: bool, extra: &[&str]) -> PathBuf {
        static SOURCE: OnceLock<PathBuf> = OnceLock::new();
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/go-unit");
        let src = SOURCE.get_or_init(|| {
            let src = dir.join("src");
            std::fs::create_dir_all(&src).expect("create target/go-unit");
            std::fs::write(src.join("go.mod"), "module tlsprobe\n\ngo 1.17\n").expect("go.mod");
            std::fs::write(
                src.join("main.go"),
                "package main\n\nimport (\n\t\"crypto/tls\"\n\t\"fmt\"\n\t\"os\"\n)\n\n\
                 func main() {\n\tc, err := tls.Dial(\"tcp\", os.Args[1], nil)\n\t\
                 if err != nil {\n\t\tfmt.Println(err)\n\t\treturn\n\t}\n\t\
                 c.Write([]byte(\"x\"))\n\tb := make([]byte, 9)\n\tc.Read(b)\n\tc.Close()\n}\n",
            )
            .expect("main.go");
            src
        });
        let out = dir.join(out);
        let status = Command::new("go")
            .arg("build")
            .args(extra)
            .arg(format!("-ldflags={ldflags}"))
            .arg("-o")
            .arg(&out)
            .arg(".")
            .current_dir(src)
            .env("GOFLAGS", "-mod=mod")
            .env("GOPROXY", "off")
            .env("CGO_ENABLED", if cgo { "1" } else { "0" })
            .env("GOPATH", dir.join("gopath"))
            .env("GOCACHE", dir.join("gocache"))
            .status()
            .expect("`go` not found: install Debian's golang-go (`cargo xtask setup`)");
        assert!(status.success(), "go build -ldflags={ldflags:?} failed");
        out
    }

    /// The offsets are checked against the bytes of the file: every entry is a function's
    /// first byte (Go's stack check starts with `mov`/`cmp` on R14's `g`), every return a
    /// `C3`.
    #[test]
    fn finds_hooks_in_a_real_go_binary() {
        let (plain, _) = go_programs();
        let bytes = std::fs::read(plain).expect("read the Go binary");
        let hooks = analyse(&bytes[..]).expect("hooks found");
        let version = parse_version(&hooks.version).expect("a Go version");
        assert!(version >= FIRST_REGISTER_ABI, "{}", hooks.version);
        let read = &hooks.read;
        assert!(!read.returns.is_empty());
        for &r in &read.returns {
            assert!(r > read.entry && r < read.entry + 0x10000);
            let insn = &bytes[r as usize..];
            assert!(
                insn[0] == 0xc3 || insn[..2] == [0xf3, 0xc3],
                "not a RET at {r:#x}: {:02x?}",
                &insn[..4]
            );
        }
        // ABIInternal functions open with the stack-bound check against g (R14): a
        // `cmp rsp, [r14+16]` (49 3b 66 10) or, for big frames, a `lea` then `cmp`.
        assert!(
            hooks.write > hooks.write_entry && hooks.write - hooks.write_entry <= 18,
            "the write probe goes right after Write's stack check: {:#x} vs entry {:#x}",
            hooks.write,
            hooks.write_entry
        );
        for entry in [hooks.write_entry, read.entry] {
            let entry = &bytes[entry as usize..][..8];
            assert!(
                entry.windows(4).any(|w| w == [0x49, 0x3b, 0x66, 0x10])
                    || entry.starts_with(&[0x4c, 0x8d]),
                "unexpected prologue {entry:02x?}"
            );
        }
        assert!(hooks.close.is_some());
        // Analysing through a lazily read file gives the same answer.
        let file = std::fs::File::open(plain).expect("open");
        let cache = object::ReadCache::new(file);
        assert_eq!(analyse(&cache), Ok(hooks));
    }

    /// The same program linked with `-ldflags=-s -w` has no `.symtab`: its functions are
    /// found through `.gopclntab`, at exactly the offsets `.symtab` gives its twin (the two
    /// links lay out the code identically), `RET`s included.
    #[test]
    fn stripped_go_binary_is_hooked_through_pclntab() {
        let (plain, stripped) = go_programs();
        let plain = std::fs::read(plain).expect("read the Go binary");
        let stripped = std::fs::read(stripped).expect("read the stripped Go binary");
        let with_symbols = analyse(&plain[..]).expect("hooks from .symtab");
        let elf = ElfFile64::<object::Endianness, _>::parse(&stripped[..]).expect("ELF");
        assert!(elf.symbol_table().is_none(), "-s kept the symbol table");
        let from_pclntab = analyse(&stripped[..]).expect("hooks from .gopclntab");
        assert_eq!(with_symbols.found_in, FunctionTable::Symtab);
        assert_eq!(from_pclntab.found_in, FunctionTable::Pclntab);
        assert_eq!(
            GoTlsHooks {
                found_in: FunctionTable::Symtab,
                ..from_pclntab.clone()
            },
            with_symbols
        );
        // And through a lazily read file.
        let (_, path) = go_programs();
        let cache = object::ReadCache::new(std::fs::File::open(path).expect("open"));
        assert_eq!(analyse(&cache), Ok(from_pclntab));
    }

    /// Every function `.symtab` names in the unstripped binary, `.gopclntab` places at the
    /// same address, and each ends where `.symtab`'s size says (or at the next function,
    /// after alignment padding).
    #[test]
    fn pclntab_agrees_with_symtab_on_every_function() {
        let (plain, _) = go_programs();
        let bytes = std::fs::read(plain).expect("read the Go binary");
        let elf = ElfFile64::<object::Endianness, _>::parse(&bytes[..]).expect("ELF");
        let section = elf.section_by_name(".gopclntab").expect(".gopclntab");
        let table = Pclntab::parse(section.data().expect("data")).expect("parses");
        let text = elf.section_by_name(".text").expect(".text").address();
        let functions: Vec<(String, u64, u64)> = elf
            .symbols()
            .filter(|s| s.kind() == object::SymbolKind::Text && s.size() > 0)
            .filter_map(|s| Some((s.name().ok()?.to_owned(), s.address(), s.size())))
            .filter(|(n, _, _)| n.contains('.') && !n.starts_with('_'))
            .collect();
        assert!(functions.len() > 1000, "{} functions", functions.len());
        // Names as the table has them: an assembly function and its Go declaration's
        // wrapper may share one (`.symtab` tells them apart with an `.abi0` suffix).
        let mut by_name: std::collections::HashMap<&[u8], Vec<FuncRange>> = Default::default();
        for function in table.functions(text) {
            let (name, range) = function.expect("a readable table");
            by_name.entry(name).or_default().push(range);
        }
        assert!(by_name.len() > 1000, "{} names", by_name.len());
        let mut compared = 0;
        for (name, addr, size) in &functions {
            let Some(ranges) = by_name.get(name.as_bytes()) else {
                continue; // assembly stubs without a Go function record
            };
            let range = ranges.iter().find(|r| r.entry == *addr);
            let range = range.unwrap_or_else(|| panic!("{name} at {addr:#x}: {ranges:x?}"));
            assert!(
                range.end >= addr + size && range.end < addr + size + 64,
                "{name}: {range:x?}, size {size:#x}"
            );
            compared += 1;
        }
        assert!(
            compared * 10 >= functions.len() * 9,
            "{compared} of {}",
            functions.len()
        );
    }

    /// Where `.symtab` puts `runtime.text` in a Go binary.
    fn runtime_text(path: &PathBuf) -> u64 {
        let bytes = std::fs::read(path).expect("read the Go binary");
        let elf = ElfFile64::<object::Endianness, _>::parse(&bytes[..]).expect("ELF");
        elf.symbols()
            .find(|s| s.name() == Ok("runtime.text"))
            .expect("runtime.text in .symtab")
            .address()
    }

    /// `moduledata_text` on the stripped binaries: the address `.symtab` gives their twins.
    fn moduledata_text_of(path: &PathBuf) -> Option<u64> {
        let bytes = std::fs::read(path).expect("read the Go binary");
        let elf = ElfFile64::<object::Endianness, _>::parse(&bytes[..]).expect("ELF");
        let pclntab = elf.section_by_name(".gopclntab").expect(".gopclntab");
        let table = Pclntab::parse(pclntab.data().expect("data")).expect("parses");
        let noptrdata = elf.section_by_name(".noptrdata").expect(".noptrdata");
        moduledata_text(
            noptrdata.data().expect("data"),
            pclntab.address(),
            pclntab.address() + table.name_table_offset() as u64,
            table.first_entry_field().expect("functions"),
        )
    }

    /// Linked externally, `.text` starts with C code: the base comes from the module table
    /// (or the header), the offsets equal `.symtab`'s for the twin, and `.text`'s start,
    /// which would be wrong, is not what was used.
    #[test]
    fn externally_linked_stripped_binary_is_placed_by_its_module_table() {
        let (plain, stripped) = go_programs_external();
        let text = runtime_text(plain);
        let bytes = std::fs::read(stripped).expect("read");
        let elf = ElfFile64::<object::Endianness, _>::parse(&bytes[..]).expect("ELF");
        let text_section = elf.section_by_name(".text").expect(".text").address();
        assert!(
            text_section < text,
            "C code before runtime.text: {text_section:#x} {text:#x}"
        );
        assert_eq!(moduledata_text_of(stripped), Some(text));
        let with_symbols = analyse(&std::fs::read(plain).expect("read")[..]).expect("symtab");
        let from_pclntab = analyse(&bytes[..]).expect("pclntab");
        assert_eq!(from_pclntab.found_in, FunctionTable::Pclntab);
        assert_eq!(
            GoTlsHooks {
                found_in: FunctionTable::Symtab,
                ..from_pclntab
            },
            with_symbols
        );
    }

    /// A position-independent executable: its table under another section name, its
    /// functions where `.symtab` puts them in the twin.
    #[test]
    fn stripped_pie_is_hooked_through_its_pclntab() {
        let (plain, stripped) = go_programs_pie();
        let bytes = std::fs::read(stripped).expect("read");
        let elf = ElfFile64::<object::Endianness, _>::parse(&bytes[..]).expect("ELF");
        assert!(elf.section_by_name(".data.rel.ro.gopclntab").is_some());
        assert!(elf.section_by_name(".gopclntab").is_none());
        let with_symbols = analyse(&std::fs::read(plain).expect("read")[..]).expect("symtab");
        let from_pclntab = analyse(&bytes[..]).expect("pclntab");
        assert_eq!(
            GoTlsHooks {
                found_in: FunctionTable::Symtab,
                ..from_pclntab
            },
            with_symbols
        );
    }

    #[test]
    fn module_table_of_an_internally_linked_binary() {
        let (plain, stripped) = go_programs();
        assert_eq!(moduledata_text_of(stripped), Some(runtime_text(plain)));
    }

    /// A crafted module table: found where it points at the pclntab, and only where every
    /// cross-check holds.
    #[test]
    fn module_table_cross_checks() {
        let (pclntab, nametab, text, first) = (0x65_a120u64, 0x65_a180u64, 0x40_23e0u64, 0x20u64);
        let mut words = vec![0u64; 23];
        words[0] = pclntab;
        words[1] = nametab;
        words[20] = text + first; // minpc
        words[21] = text + 0x1000; // maxpc
        words[22] = text;
        let bytes = |words: &[u64]| -> Vec<u8> {
            // A decoy word equal to the pclntab address first (a pointer elsewhere).
            let mut out = pclntab.to_le_bytes().to_vec();
            out.extend(0u64.to_le_bytes());
            out.extend(words.iter().flat_map(|w| w.to_le_bytes()));
            out
        };
        assert_eq!(
            moduledata_text(&bytes(&words), pclntab, nametab, first),
            Some(text)
        );
        assert_eq!(
            moduledata_text(&bytes(&words), pclntab, nametab, first + 1),
            None
        );
        assert_eq!(
            moduledata_text(&bytes(&words), pclntab, nametab + 8, first),
            None
        );
        assert_eq!(
            moduledata_text(&bytes(&words), pclntab + 8, nametab, first),
            None
        );
        let whole = bytes(&words);
        for len in 0..whole.len() {
            let found = moduledata_text(&whole[..len], pclntab, nametab, first);
            assert_eq!(found, (len == whole.len()).then_some(text), "{len} bytes");
        }
        words[22] = u64::MAX; // text + first overflows
        assert_eq!(
            moduledata_text(&bytes(&words), pclntab, nametab, first),
            None
        );
    }

    /// The real stripped binary with its `.gopclntab` header and function table corrupted
    /// word by word: an answer (hooks or an error) every time, never a panic; and hooks only
    /// where every entry still opens with Go's stack check.
    #[test]
    fn corrupted_pclntab_in_a_real_binary_never_panics() {
        let (_, stripped) = go_programs();
        let good = std::fs::read(stripped).expect("read");
        let elf = ElfFile64::<object::Endianness, _>::parse(&good[..]).expect("ELF");
        let section = elf.section_by_name(".gopclntab").expect(".gopclntab");
        let (start, _) = section.file_range().expect("in the file");
        let start = start as usize;
        // Go 1.18+ header: the function table's offset is word 7.
        let word7: [u8; 8] = good[start + 64..start + 72].try_into().expect("8 bytes");
        let functab = start + u64::from_le_bytes(word7) as usize;
        drop(elf);
        let header = (start..start + 72).step_by(8);
        let entries = (functab..functab + 4 * 64).step_by(4);
        for at in header.chain(entries) {
            for value in [0u8, 0x7f, 0xff] {
                let mut bytes = good.clone();
                bytes[at..at + 4].fill(value);
                if let Ok(hooks) = analyse(&bytes[..]) {
                    for entry in [hooks.write_entry, hooks.read.entry] {
                        let code = &bytes[entry as usize..][..16];
                        assert!(starts_with_stack_check(code), "byte {at:#x} = {value:#x}");
                    }
                }
            }
        }
    }
}
