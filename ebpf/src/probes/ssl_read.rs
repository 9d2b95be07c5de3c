//! `SSL_read(ssl, buf, int num)` and `SSL_read_ex(ssl, buf, size_t num, size_t *readbytes)`.
//!
//! The buffer is only filled when the call returns, so entry stashes the arguments per thread
//! and the shared return probe copies what was read. Failed and zero-byte reads emit nothing.

use aya_ebpf::{
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use tokentap_common::Direction;

use crate::{
    calls::{finish, stash},
    maps::READ_ARGS,
};

#[uprobe]
pub fn ssl_read_enter(ctx: ProbeContext) -> u32 {
    let _ = stash(&ctx, &READ_ARGS, false);
    0
}

#[uprobe]
pub fn ssl_read_ex_enter(ctx: ProbeContext) -> u32 {
    let _ = stash(&ctx, &READ_ARGS, true);
    0
}

/// Attached to the return of both `SSL_read` and `SSL_read_ex`.
#[uretprobe]
pub fn ssl_read_return(ctx: RetProbeContext) -> u32 {
    let _ = finish(&ctx, &READ_ARGS, Direction::Read);
    0
}
