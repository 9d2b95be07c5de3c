use std::path::Path;

use super::*;

/// A minimal ELF64 little-endian file: a read-only `PT_LOAD` at 0x400000 (file offset 0) and an
/// executable one whose addresses differ from its file offsets (vaddr 0x600100, offset 0x100),
/// so that an address mistaken for an offset is caught.
struct SyntheticElf {
    sections: Vec<(String, u32, u64, Vec<u8>, u32, u64)>,
}

const TEXT_VADDR: u64 = 0x60_0100;
const TEXT_OFFSET: u64 = 0x100;
const TEXT_SIZE: u64 = 0x40;
const SHT_PROGBITS: u32 = 1;
const SHT_SYMTAB: u32 = 2;
const SHT_STRTAB: u32 = 3;
const SHT_DYNSYM: u32 = 11;

#[derive(Clone, Copy)]
enum Table {
    Dynsym,
    Symtab,
}

impl SyntheticElf {
    fn new() -> Self {
        Self {
            sections: vec![(
                ".text".into(),
                SHT_PROGBITS,
                TEXT_VADDR,
                vec![0xc3; TEXT_SIZE as usize],
                0,
                0,
            )],
        }
    }

    /// Adds a symbol table. `(name, address, defined)`.
    fn symbols(mut self, table: Table, symbols: &[(&str, u64, bool)]) -> Self {
        let (sym_name, str_name, sh_type) = match table {
            Table::Dynsym => (".dynsym", ".dynstr", SHT_DYNSYM),
            Table::Symtab => (".symtab", ".strtab", SHT_SYMTAB),
        };
        let mut strtab = vec![0u8];
        let mut symtab = vec![0u8; 24];
        for &(name, addr, defined) in symbols {
            let name_off = strtab.len() as u32;
            strtab.extend_from_slice(name.as_bytes());
            strtab.push(0);
            symtab.extend_from_slice(&name_off.to_le_bytes());
            symtab.push(0x12); // STB_GLOBAL, STT_FUNC
            symtab.push(0);
            symtab.extend_from_slice(&u16::from(defined).to_le_bytes()); // .text is section 1
            symtab.extend_from_slice(&(if defined { addr } else { 0 }).to_le_bytes());
            symtab.extend_from_slice(&8u64.to_le_bytes());
        }
        // The string table follows the symbol table: link = its section index (1-based + 1).
        let link = self.sections.len() as u32 + 2;
        self.sections
            .push((sym_name.into(), sh_type, 0, symtab, link, 24));
        self.sections
            .push((str_name.into(), SHT_STRTAB, 0, strtab, 0, 0));
        self
    }

    fn note(mut self, name: &str, data: &[u8]) -> Self {
        const SHT_NOTE: u32 = 7;
        self.sections
            .push((name.into(), SHT_NOTE, 0, data.to_vec(), 0, 0));
        self
    }

    fn section(mut self, name: &str, data: &[u8]) -> Self {
        self.sections
            .push((name.into(), SHT_PROGBITS, 0, data.to_vec(), 0, 0));
        self
    }

    fn build(self) -> Vec<u8> {
        let mut shstrtab = vec![0u8];
        let mut names = Vec::new();
        for (name, ..) in &self.sections {
            names.push(shstrtab.len() as u32);
            shstrtab.extend_from_slice(name.as_bytes());
            shstrtab.push(0);
        }
        let shstrtab_name = shstrtab.len() as u32;
        shstrtab.extend_from_slice(b".shstrtab\0");

        let mut out = vec![0u8; TEXT_OFFSET as usize];
        let mut placed = Vec::new();
        for (i, (_, _, _, data, ..)) in self.sections.iter().enumerate() {
            if i > 0 {
                while !out.len().is_multiple_of(8) {
                    out.push(0);
                }
            }
            placed.push(out.len() as u64);
            out.extend_from_slice(data);
        }
        while !out.len().is_multiple_of(8) {
            out.push(0);
        }
        let shstrtab_off = out.len() as u64;
        out.extend_from_slice(&shstrtab);
        while !out.len().is_multiple_of(8) {
            out.push(0);
        }
        let shoff = out.len() as u64;
        let shnum = self.sections.len() as u16 + 2;
        // Section headers: null, the sections, .shstrtab.
        out.extend_from_slice(&[0u8; 64]);
        let mut header =
            |name: u32, ty: u32, addr: u64, off: u64, size: u64, link: u32, entsize: u64| {
                out.extend_from_slice(&name.to_le_bytes());
                out.extend_from_slice(&ty.to_le_bytes());
                out.extend_from_slice(&0u64.to_le_bytes()); // flags
                out.extend_from_slice(&addr.to_le_bytes());
                out.extend_from_slice(&off.to_le_bytes());
                out.extend_from_slice(&size.to_le_bytes());
                out.extend_from_slice(&link.to_le_bytes());
                out.extend_from_slice(&1u32.to_le_bytes()); // info: first global symbol
                out.extend_from_slice(&8u64.to_le_bytes());
                out.extend_from_slice(&entsize.to_le_bytes());
            };
        for (i, (_, ty, addr, data, link, entsize)) in self.sections.iter().enumerate() {
            header(
                names[i],
                *ty,
                *addr,
                placed[i],
                data.len() as u64,
                *link,
                *entsize,
            );
        }
        header(
            shstrtab_name,
            SHT_STRTAB,
            0,
            shstrtab_off,
            shstrtab.len() as u64,
            0,
            0,
        );

        // ELF header.
        let mut h = Vec::new();
        h.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
        h.extend_from_slice(&[0; 8]);
        h.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        h.extend_from_slice(&62u16.to_le_bytes()); // x86-64
        h.extend_from_slice(&1u32.to_le_bytes());
        h.extend_from_slice(&TEXT_VADDR.to_le_bytes());
        h.extend_from_slice(&64u64.to_le_bytes()); // phoff
        h.extend_from_slice(&shoff.to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes());
        h.extend_from_slice(&64u16.to_le_bytes());
        h.extend_from_slice(&56u16.to_le_bytes());
        h.extend_from_slice(&2u16.to_le_bytes());
        h.extend_from_slice(&64u16.to_le_bytes());
        h.extend_from_slice(&shnum.to_le_bytes());
        h.extend_from_slice(&(shnum - 1).to_le_bytes());
        // Program headers: R at 0x400000/0, R+X at TEXT_VADDR/TEXT_OFFSET.
        for (flags, offset, vaddr, size) in [
            (4u32, 0u64, 0x40_0000u64, TEXT_OFFSET),
            (5, TEXT_OFFSET, TEXT_VADDR, TEXT_SIZE),
        ] {
            h.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
            h.extend_from_slice(&flags.to_le_bytes());
            h.extend_from_slice(&offset.to_le_bytes());
            h.extend_from_slice(&vaddr.to_le_bytes());
            h.extend_from_slice(&vaddr.to_le_bytes());
            h.extend_from_slice(&size.to_le_bytes());
            h.extend_from_slice(&size.to_le_bytes());
            h.extend_from_slice(&0x1000u64.to_le_bytes());
        }
        out[..h.len()].copy_from_slice(&h);
        out
    }
}

fn scan(bytes: &[u8]) -> ElfTlsInfo {
    scan_elf(bytes).expect("synthetic ELF parses")
}

#[test]
fn symtab_only_functions_get_file_offsets_not_addresses() {
    let elf = SyntheticElf::new()
        .symbols(
            Table::Symtab,
            &[
                ("main", TEXT_VADDR, true),
                ("SSL_read", TEXT_VADDR + 0x10, true),
                ("SSL_write", TEXT_VADDR + 0x20, true),
                ("SSL_free", TEXT_VADDR + 0x30, true),
            ],
        )
        .build();
    let info = scan(&elf);
    assert_eq!(
        info.ssl_functions,
        vec![
            ("SSL_read", TEXT_OFFSET + 0x10),
            ("SSL_write", TEXT_OFFSET + 0x20),
            ("SSL_free", TEXT_OFFSET + 0x30),
        ]
    );
    assert!(info.hookable_ssl());
    assert_eq!(info.flavor, Some(SslFlavor::OpenSsl));
    assert!(!info.go && !info.rustls && !info.stripped_openssl);
}

#[test]
fn dynsym_wins_and_symtab_duplicates_are_ignored() {
    let elf = SyntheticElf::new()
        .symbols(
            Table::Dynsym,
            &[
                ("SSL_read_ex", TEXT_VADDR + 0x4, true),
                ("SSL_write_ex", TEXT_VADDR + 0x8, true),
            ],
        )
        .symbols(
            Table::Symtab,
            &[
                ("SSL_read_ex", TEXT_VADDR + 0x4, true),
                ("SSL_write", TEXT_VADDR + 0xc, true),
            ],
        )
        .build();
    let info = scan(&elf);
    assert_eq!(
        info.ssl_functions,
        vec![
            ("SSL_read_ex", TEXT_OFFSET + 0x4),
            ("SSL_write_ex", TEXT_OFFSET + 0x8),
            ("SSL_write", TEXT_OFFSET + 0xc),
        ]
    );
    assert!(info.hookable_ssl());
}

#[test]
fn imports_of_the_system_libssl_are_not_definitions() {
    // CPython's `_ssl` module: SSL_read and SSL_write are undefined, resolved from libssl.so.
    let elf = SyntheticElf::new()
        .symbols(
            Table::Dynsym,
            &[("SSL_read", 0, false), ("SSL_write", 0, false)],
        )
        .build();
    let info = scan(&elf);
    assert!(info.ssl_functions.is_empty());
    assert!(!info.hookable_ssl());
    assert_eq!(info.flavor, None);
}

#[test]
fn boringssl_without_ex_functions_is_hookable() {
    let elf = SyntheticElf::new()
        .symbols(
            Table::Symtab,
            &[
                ("SSL_read", TEXT_VADDR + 0x10, true),
                ("SSL_write", TEXT_VADDR + 0x14, true),
                ("BORINGSSL_self_test", TEXT_VADDR + 0x18, true),
            ],
        )
        .build();
    let info = scan(&elf);
    assert_eq!(info.flavor, Some(SslFlavor::BoringSsl));
    assert!(info.hookable_ssl());
    assert_eq!(info.offset_of("SSL_read_ex"), None);
}

/// A shared BoringSSL libssl (Android's, Debian's `android-libboringssl`) exports the pair in
/// `.dynsym`, no `_ex` forms, and BoringSSL-only API such as `SSL_CTX_set_strict_cipher_list`
/// (`BORINGSSL_self_test` is in its libcrypto).
#[test]
fn shared_boringssl_is_told_by_its_exports() {
    let elf = SyntheticElf::new()
        .symbols(
            Table::Dynsym,
            &[
                ("SSL_read", TEXT_VADDR + 0x10, true),
                ("SSL_write", TEXT_VADDR + 0x14, true),
                ("SSL_free", TEXT_VADDR + 0x18, true),
                ("SSL_CTX_set_strict_cipher_list", TEXT_VADDR + 0x1c, true),
            ],
        )
        .build();
    let info = scan(&elf);
    assert_eq!(info.flavor, Some(SslFlavor::BoringSsl));
    assert!(info.hookable_ssl());
    assert_eq!(info.offset_of("SSL_free"), Some(TEXT_OFFSET + 0x18));
    assert_eq!(info.offset_of("SSL_write_ex"), None);
}

#[test]
fn only_half_of_the_pair_is_not_hookable() {
    let elf = SyntheticElf::new()
        .symbols(Table::Symtab, &[("SSL_read", TEXT_VADDR, true)])
        .build();
    assert!(!scan(&elf).hookable_ssl());
}

#[test]
fn an_address_outside_executable_segments_has_no_offset() {
    let elf = SyntheticElf::new()
        .symbols(
            Table::Symtab,
            &[
                ("SSL_read", 0x40_0010, true),               // in the read-only segment
                ("SSL_write", TEXT_VADDR + TEXT_SIZE, true), // one past the end
            ],
        )
        .build();
    assert!(scan(&elf).ssl_functions.is_empty());
}

#[test]
fn stripped_openssl_go_and_rustls_are_recognised() {
    let stripped = SyntheticElf::new()
        .section(
            ".rodata",
            b"\0OpenSSL 3.0.19 27 Jan 2026\0../ssl/ssl_lib.c\0",
        )
        .build();
    let info = scan(&stripped);
    assert!(info.stripped_openssl && !info.hookable_ssl());
    // libcrypto alone (a hash module): the version string without libssl is not TLS.
    let crypto_only = SyntheticElf::new()
        .section(
            ".rodata",
            b"\0OpenSSL 3.0.19 27 Jan 2026\0crypto/evp/digest.c\0",
        )
        .build();
    assert!(!scan(&crypto_only).stripped_openssl);

    let go = SyntheticElf::new()
        .section(".go.buildinfo", b"\xff Go buildinf:")
        .symbols(
            Table::Symtab,
            &[("crypto/tls.(*Conn).Write", TEXT_VADDR, true)],
        )
        .build();
    let info = scan(&go);
    assert!(info.go && info.go_crypto_tls);

    let go_without_tls = SyntheticElf::new()
        .section(".go.buildinfo", b"\xff Go buildinf:")
        .symbols(Table::Symtab, &[("main.main", TEXT_VADDR, true)])
        .build();
    assert!(!scan(&go_without_tls).go_crypto_tls);

    let stripped_go = SyntheticElf::new()
        .section(".go.buildinfo", b"\xff Go buildinf:")
        .build();
    let info = scan(&stripped_go);
    assert!(info.go_crypto_tls, "cannot be ruled out");
    assert!(
        !info.go_crypto_tls_symbols,
        "no table to find the functions in"
    );

    // Stripped, but Go's function table names crypto/tls: hookable.
    let pclntab = crate::go_pclntab::tests::crafted_go120();
    let stripped_go = SyntheticElf::new()
        .section(".go.buildinfo", b"\xff Go buildinf:")
        .section(".gopclntab", &pclntab)
        .build();
    let info = scan(&stripped_go);
    assert!(info.go_crypto_tls && info.go_crypto_tls_symbols);
    // The same table without the name (`Write` renamed): no crypto/tls.
    let mut renamed = pclntab.clone();
    let at = renamed
        .windows(5)
        .position(|w| w == b"Write")
        .expect("the name is in the table");
    renamed[at..at + 5].copy_from_slice(b"Wrote");
    let stripped_go = SyntheticElf::new()
        .section(".go.buildinfo", b"\xff Go buildinf:")
        .section(".gopclntab", &renamed)
        .build();
    let info = scan(&stripped_go);
    assert!(!info.go_crypto_tls && !info.go_crypto_tls_symbols);

    let rustls = SyntheticElf::new()
        .symbols(
            Table::Symtab,
            &[(
                "_ZN6rustls6client3tls1213ClientConnection3new17h0123456789abcdefE",
                TEXT_VADDR,
                true,
            )],
        )
        .build();
    assert!(scan(&rustls).rustls);
}

#[test]
fn garbage_and_truncated_files_are_errors_not_panics() {
    assert!(scan_elf(&b"not an elf"[..]).is_err());
    let elf = SyntheticElf::new()
        .symbols(Table::Symtab, &[("SSL_read", TEXT_VADDR, true)])
        .build();
    for cut in [10, 64, 100, elf.len() / 2, elf.len() - 1] {
        // Either an error or a partial answer; never a panic.
        let _ = scan_elf(&elf[..cut]);
    }
}

#[test]
fn a_stripped_file_gets_its_symbols_from_the_debug_file_of_its_build() {
    let dir = std::env::temp_dir().join(format!("tokentap-debug-dir-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let build_id = "1b74532e743218371db3acff0e09310e2ed6eab6";
    let note = |id: &str| {
        let desc: Vec<u8> = (0..id.len() / 2)
            .map(|i| u8::from_str_radix(&id[i * 2..i * 2 + 2], 16).expect("hex"))
            .collect();
        let mut n = Vec::new();
        n.extend_from_slice(&4u32.to_le_bytes());
        n.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        n.extend_from_slice(&3u32.to_le_bytes()); // NT_GNU_BUILD_ID
        n.extend_from_slice(b"GNU\0");
        n.extend_from_slice(&desc);
        n
    };
    let stripped = SyntheticElf::new()
        .note(".note.gnu.build-id", &note(build_id))
        .build();
    // The debug file: the same build id and the symbols. (Its own segments would be empty; the
    // stripped file's place the symbols.)
    let debug = SyntheticElf::new()
        .note(".note.gnu.build-id", &note(build_id))
        .symbols(
            Table::Symtab,
            &[
                ("SSL_read", TEXT_VADDR + 0x10, true),
                ("SSL_write", TEXT_VADDR + 0x20, true),
            ],
        )
        .build();
    let other_build = SyntheticElf::new()
        .note(
            ".note.gnu.build-id",
            &note("ffff532e743218371db3acff0e09310e2ed6eab6"),
        )
        .symbols(
            Table::Symtab,
            &[
                ("SSL_read", TEXT_VADDR, true),
                ("SSL_write", TEXT_VADDR, true),
            ],
        )
        .build();
    let path = debug_file_path(&dir, build_id).expect("path");
    assert!(path.ends_with(".build-id/1b/74532e743218371db3acff0e09310e2ed6eab6.debug"));
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    let target = dir.join("stripped");
    std::fs::write(&target, &stripped).expect("write");
    let file = File::open(&target).expect("open");

    assert!(!scan_file(&file, &[]).expect("scan").hookable_ssl());
    // A debug file of another build under this build's name is refused.
    std::fs::write(&path, &other_build).expect("write");
    assert!(
        !scan_file(&file, std::slice::from_ref(&dir))
            .expect("scan")
            .hookable_ssl()
    );
    std::fs::write(&path, &debug).expect("write");
    let info = scan_file(&file, std::slice::from_ref(&dir)).expect("scan");
    assert_eq!(
        info.ssl_functions,
        vec![
            ("SSL_read", TEXT_OFFSET + 0x10),
            ("SSL_write", TEXT_OFFSET + 0x20)
        ]
    );
    assert_eq!(info.symbols_from.as_deref(), Some(path.as_path()));
    assert_eq!(info.build_id.as_deref(), Some(build_id));
    assert!(debug_file_path(&dir, "../etc").is_none());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn file_offsets_follow_the_segment() {
    let loads = [LoadSegment {
        vaddr: 0x1000,
        offset: 0x800,
        filesz: 0x100,
    }];
    assert_eq!(file_offset(&loads, 0x1000), Some(0x800));
    assert_eq!(file_offset(&loads, 0x10ff), Some(0x8ff));
    assert_eq!(file_offset(&loads, 0x1100), None);
    assert_eq!(file_offset(&loads, 0xfff), None);
}

/// The machine's own libssl exports the functions in `.dynsym`; libc has none.
#[test]
fn real_libssl_and_libc() {
    let dir = format!("/usr/lib/{}-linux-gnu", std::env::consts::ARCH);
    let libssl = Path::new(&dir).join("libssl.so.3");
    let file = File::open(&libssl).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; the unit tests need OpenSSL 3 (apt-get install libssl3)",
            libssl.display()
        )
    });
    let info = scan_file(&file, &[]).expect("libssl scans");
    assert!(info.hookable_ssl(), "{info:?}");
    for f in SSL_FUNCTIONS {
        let offset = info.offset_of(f).unwrap_or_else(|| panic!("{f} in libssl"));
        assert!(offset < file.metadata().expect("stat").len());
    }
    assert_eq!(info.flavor, Some(SslFlavor::OpenSsl));
    assert!(info.build_id.as_ref().is_some_and(|id| id.len() == 40));

    for lib in ["libc.so.6", "libcrypto.so.3"] {
        let file = File::open(Path::new(&dir).join(lib)).expect(lib);
        let info = scan_file(&file, &[]).expect("scans");
        assert!(
            info.ssl_functions.is_empty() && !info.stripped_openssl && !info.go,
            "{lib}: {info:?}"
        );
    }
}

#[test]
fn the_cache_scans_each_file_once() {
    let path = std::env::temp_dir().join(format!("tokentap-elf-cache-{}", std::process::id()));
    let elf = SyntheticElf::new()
        .symbols(
            Table::Symtab,
            &[
                ("SSL_read", TEXT_VADDR, true),
                ("SSL_write", TEXT_VADDR + 1, true),
            ],
        )
        .build();
    std::fs::write(&path, &elf).expect("write");
    let mut cache = ElfScanCache::default();
    for _ in 0..3 {
        let file = File::open(&path).expect("open");
        let key = FileKey::of(&file).expect("stat");
        assert!(cache.get_or_scan(key, &file).hookable_ssl());
    }
    assert_eq!(cache.scans, 1);
    // Rewritten (another size): scanned again.
    std::fs::write(&path, b"no longer ELF").expect("rewrite");
    let file = File::open(&path).expect("open");
    let key = FileKey::of(&file).expect("stat");
    assert!(!cache.get_or_scan(key, &file).hookable_ssl());
    assert_eq!(cache.scans, 2);
    let _ = std::fs::remove_file(&path);
}
