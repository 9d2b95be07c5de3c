//! Embeds the eBPF object built by `cargo xtask build-ebpf`.
//!
//! The eBPF crate is built by xtask (nightly, `bpfel-unknown-none`) into the shared `target/`,
//! once, instead of from here: a build script's OUT_DIR differs per profile and per `cargo
//! check`, so building it here would rebuild it (and `core`) for every one of them. A plain
//! `cargo build`/`cargo test` without the object still works; the binary then says how to
//! build it properly when asked to load the probes.

use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=TOKENTAP_EBPF_OBJECT");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let object = env::var_os("TOKENTAP_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
            manifest.join("../target/bpfel-unknown-none/release/tokentap-ebpf")
        });
    println!("cargo:rerun-if-changed={}", object.display());
    let dest = out_dir.join("tokentap-ebpf.o");
    match fs::read(&object) {
        Ok(bytes) => fs::write(&dest, bytes).expect("write eBPF object to OUT_DIR"),
        Err(_) => fs::write(&dest, b"").expect("write empty eBPF object placeholder"),
    }
}
