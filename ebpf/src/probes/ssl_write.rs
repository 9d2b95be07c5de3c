//! `SSL_write(ssl, buf, int num)` and `SSL_write_ex(ssl, buf, size_t num, size_t *written)`.
//!
//! Captured at return, with the entry time: only the return says how many bytes were written.
//! A write that fails with `WANT_WRITE` on a non-blocking socket is retried by the caller with
//! the same buffer; capturing at entry would see it twice.

use aya_ebpf::{
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use tokentap_common::Direction;

use crate::{
    calls::{finish, stash},
    maps::WRITE_ARGS,
};

#[uprobe]
pub fn ssl_write(ctx: ProbeContext) -> u32 {
    let _ = stash(&ctx, &WRITE_ARGS, false);
    0
}

#[uprobe]
pub fn ssl_write_ex(ctx: ProbeContext) -> u32 {
    let _ = stash(&ctx, &WRITE_ARGS, true);
    0
}

/// Attached to the return of both `SSL_write` and `SSL_write_ex`.
#[uretprobe]
pub fn ssl_write_return(ctx: RetProbeContext) -> u32 {
    let _ = finish(&ctx, &WRITE_ARGS, Direction::Write);
    0
}
