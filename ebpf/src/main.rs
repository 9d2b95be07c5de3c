//! tokentap's kernel programs.
//!
//! Uprobes and uretprobes on OpenSSL's `SSL_write*`/`SSL_read*` copy the plaintext of every
//! completed call (a bounded head and tail of long calls) into the `EVENTS` ring buffer;
//! `SSL_free` ends a connection; BTF exec/exit tracepoints and a uprobe on the dynamic
//! loader's `_dl_debug_state` tell the agent when to look for newly loaded TLS libraries.
//! Everything that cannot be delivered is counted in `COUNTERS`. The event layouts live in
//! `tokentap-common`.
#![no_std]
#![no_main]

mod calls;
mod capture;
mod maps;
mod probes;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this, so it is never executed.
    loop {}
}

// bpf_probe_read_user and bpf_ringbuf_* are GPL-only helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
