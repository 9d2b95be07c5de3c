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
//! Supported: ELF x86-64 executables built by Go 1.17 or later (the register ABI, whose
//! argument registers the kernel programs read) that keep their symbol table. A binary
//! linked with `-ldflags=-s` has no `.symtab`; it is reported as unsupported when its
//! `.gopclntab` names `crypto/tls.(*Conn).Read`. arm64 would need the arm64 register
//! assignment in the kernel programs (receiver and buffer in R0–R2, `g` in R28) and `RET`
//! found by fixed-width decoding; it is not built or tested here.

use iced_x86::{Decoder, DecoderOptions, Mnemonic};
use object::{
    Architecture, Object, ObjectSection, ObjectSegment, ObjectSymbol, ReadRef, read::elf::ElfFile64,
};

/// The functions hooked, as named in a Go binary's symbol table.
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
    /// Entry of `(*Conn).Write` (writes are copied at entry: see `ebpf/src/probes/go_tls.rs`).
    pub write: u64,
    pub read: GoFunction,
    /// Entry of `(*Conn).Close`, which ends a connection; absent if the linker dropped it.
    pub close: Option<u64>,
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

    let symbols = find_symbols(&elf);
    let Some(read) = symbols.read else {
        return if elf.symbol_table().is_none() {
            if names_crypto_tls(&elf) {
                Err(GoBinaryError::Unsupported(format!(
                    "{version} binary without a symbol table (built with -ldflags=-s)"
                )))
            } else {
                Err(GoBinaryError::NoCryptoTls)
            }
        } else {
            Err(GoBinaryError::NoCryptoTls)
        };
    };
    let Some(write) = symbols.write else {
        return Err(GoBinaryError::NoCryptoTls);
    };
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
    let write = file_offset(&elf, write.0)?;
    let read = function(&elf, data, read)?;
    let close = match symbols.close {
        Some((addr, _)) => Some(file_offset(&elf, addr)?),
        None => None,
    };
    Ok(GoTlsHooks {
        version,
        write,
        read,
        close,
    })
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

/// Whether a stripped binary's function name table mentions `crypto/tls.(*Conn).Read`.
fn names_crypto_tls<'data, R: ReadRef<'data>>(
    elf: &ElfFile64<'data, object::Endianness, R>,
) -> bool {
    elf.section_by_name(".gopclntab")
        .and_then(|s| s.data().ok())
        .is_some_and(|d| {
            d.windows(READ_SYMBOL.len())
                .any(|w| w == READ_SYMBOL.as_bytes())
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
            let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/go-unit");
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
            let build = |out: &str, extra: &[&str]| {
                let out = dir.join(out);
                let status = Command::new("go")
                    .arg("build")
                    .args(extra)
                    .arg("-o")
                    .arg(&out)
                    .arg(".")
                    .current_dir(&src)
                    .env("GOFLAGS", "-mod=mod")
                    .env("GOPROXY", "off")
                    .env("CGO_ENABLED", "0")
                    .env("GOPATH", dir.join("gopath"))
                    .env("GOCACHE", dir.join("gocache"))
                    .status()
                    .expect("`go` not found: install Debian's golang-go (`cargo xtask setup`)");
                assert!(status.success(), "go build failed");
                out
            };
            (
                build("tlsprobe", &[]),
                build("tlsprobe-stripped", &["-ldflags=-s -w"]),
            )
        })
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
        for entry in [hooks.write, read.entry] {
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

    #[test]
    fn stripped_go_binary_is_unsupported() {
        let (_, stripped) = go_programs();
        let bytes = std::fs::read(stripped).expect("read the Go binary");
        match analyse(&bytes[..]) {
            Err(GoBinaryError::Unsupported(why)) => assert!(why.contains("-ldflags=-s"), "{why}"),
            other => panic!("{other:?}"),
        }
    }
}
