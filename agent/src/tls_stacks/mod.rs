//! Which TLS implementation each process uses, and whether tokentap hooks it.
//!
//! Receives: `/proc` (memory maps, file descriptors, TCP tables) and the ELF files processes
//! map. Emits: where OpenSSL is compiled into a file that is not libssl ([`elf_symbols`], used
//! by discovery and the probes to attach by file offset), and a per-process coverage view
//! ([`coverage`]: `tokentap status` and `tokentap_process_tls_coverage`).

pub mod coverage;
pub mod elf_symbols;
pub mod elf_windows;
pub mod status;

use elf_symbols::{ElfTlsInfo, SslFlavor};

/// A TLS implementation, as far as the files a process maps tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TlsStack {
    /// OpenSSL's shared `libssl.so*`.
    OpensslShared,
    /// OpenSSL compiled into another executable or library (Node.js, a static build).
    OpensslStatic,
    /// BoringSSL: a shared `libssl.so*` built from it (Android's; Debian's
    /// `android-libboringssl`), or compiled into an executable or library (Chromium, Envoy).
    Boringssl,
    Gnutls,
    /// Mozilla NSS (`libnss3.so`, `libssl3.so`).
    Nss,
    /// Go's crypto/tls (no OpenSSL involved).
    GoCryptoTls,
    /// Rust's rustls.
    Rustls,
    /// A JVM (JSSE is Java code inside `libjvm`'s heap).
    Java,
    Mbedtls,
    Wolfssl,
}

impl TlsStack {
    pub const ALL: [TlsStack; 10] = [
        TlsStack::OpensslShared,
        TlsStack::OpensslStatic,
        TlsStack::Boringssl,
        TlsStack::Gnutls,
        TlsStack::Nss,
        TlsStack::GoCryptoTls,
        TlsStack::Rustls,
        TlsStack::Java,
        TlsStack::Mbedtls,
        TlsStack::Wolfssl,
    ];

    /// The metric label and the name `tokentap status` prints.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsStack::OpensslShared => "openssl-shared",
            TlsStack::OpensslStatic => "openssl-static",
            TlsStack::Boringssl => "boringssl",
            TlsStack::Gnutls => "gnutls",
            TlsStack::Nss => "nss",
            TlsStack::GoCryptoTls => "go-crypto-tls",
            TlsStack::Rustls => "rustls",
            TlsStack::Java => "java",
            TlsStack::Mbedtls => "mbedtls",
            TlsStack::Wolfssl => "wolfssl",
        }
    }

    /// A shared TLS library recognised by its file name.
    pub fn from_library_name(name: &[u8]) -> Option<TlsStack> {
        let starts = |p: &[u8]| name.starts_with(p);
        if starts(b"libssl.so") {
            Some(TlsStack::OpensslShared)
        } else if starts(b"libgnutls.so") {
            Some(TlsStack::Gnutls)
        } else if starts(b"libnss3.so") || starts(b"libssl3.so") {
            Some(TlsStack::Nss)
        } else if starts(b"libjvm.so") {
            Some(TlsStack::Java)
        } else if starts(b"libmbedtls.so") {
            Some(TlsStack::Mbedtls)
        } else if starts(b"libwolfssl.so") {
            Some(TlsStack::Wolfssl)
        } else {
            None
        }
    }

    /// Stacks compiled into an ELF file that is not a known TLS library, and whether tokentap
    /// knows how to hook each (it has the functions' offsets).
    pub fn embedded_in(info: &ElfTlsInfo) -> Vec<(TlsStack, bool)> {
        let mut out = Vec::new();
        match info.flavor {
            Some(SslFlavor::OpenSsl) => out.push((TlsStack::OpensslStatic, info.hookable_ssl())),
            Some(SslFlavor::BoringSsl) => out.push((TlsStack::Boringssl, info.hookable_ssl())),
            None if info.stripped_openssl => out.push((TlsStack::OpensslStatic, false)),
            None => {}
        }
        // Go's crypto/tls is hooked when its functions are named in `.symtab` or, without one,
        // in `.gopclntab` (amd64 only; see `go_binary`); the agent's coverage gauge follows the
        // files the probes really attached.
        if info.go_crypto_tls {
            let hookable = info.go_crypto_tls_symbols && cfg!(target_arch = "x86_64");
            out.push((TlsStack::GoCryptoTls, hookable));
        }
        if info.rustls {
            out.push((TlsStack::Rustls, false));
        }
        out
    }
}
