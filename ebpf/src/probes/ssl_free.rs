//! `SSL_free(ssl)`: the connection is over and its `SSL*` may be reused by a new one.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::uprobe,
    programs::ProbeContext,
};
use tokentap_common::{ConnDirKey, Direction, EventHeader, EventKind, KernelCounter, TlsFreeEvent};

use crate::maps::{CONN_OFFSETS, EVENTS, batched_output_flags, count};

#[uprobe]
pub fn ssl_free(ctx: ProbeContext) -> u32 {
    let _ = try_ssl_free(&ctx);
    0
}

fn try_ssl_free(ctx: &ProbeContext) -> Result<(), ()> {
    let conn: u64 = ctx.arg(0).ok_or(())?;
    end_connection(conn);
    Ok(())
}

/// Forgets the connection's stream offsets and tells user space it is over (also used by Go's
/// `crypto/tls.(*Conn).Close`).
#[inline(always)]
pub(crate) fn end_connection(conn: u64) {
    if conn == 0 {
        return;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    for direction in [Direction::Write, Direction::Read] {
        let _ = CONN_OFFSETS.remove(&ConnDirKey {
            conn,
            tgid,
            direction: direction as u32,
        });
    }
    let event = TlsFreeEvent {
        header: EventHeader {
            kind: EventKind::TlsFree as u32,
            tgid: (pid_tgid >> 32) as u32,
            tid: pid_tgid as u32,
            _reserved: 0,
            ktime_ns: unsafe { bpf_ktime_get_ns() },
        },
        conn,
    };
    if EVENTS
        .output::<TlsFreeEvent>(&event, batched_output_flags())
        .is_err()
    {
        count(KernelCounter::RingbufFull, 1);
    }
}
