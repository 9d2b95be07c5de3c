//! Building ring-buffer records in user space: for tests, benchmarks, fuzzing and replays.
//! The kernel writes the same layouts (the `#[repr(C)]` structs in this crate).

extern crate alloc;

use alloc::vec::Vec;
use core::mem::{offset_of, size_of};

use crate::{
    COMM_LEN, Direction, EventHeader, EventKind, ProcessEvent, TlsDataHeader, TlsFreeEvent,
    TlsFunction,
};

fn put(buf: &mut [u8], at: usize, bytes: &[u8]) {
    buf[at..at + bytes.len()].copy_from_slice(bytes);
}

fn header(buf: &mut [u8], kind: EventKind, tgid: u32, tid: u32, ktime_ns: u64) {
    put(
        buf,
        offset_of!(EventHeader, kind),
        &(kind as u32).to_ne_bytes(),
    );
    put(buf, offset_of!(EventHeader, tgid), &tgid.to_ne_bytes());
    put(buf, offset_of!(EventHeader, tid), &tid.to_ne_bytes());
    put(
        buf,
        offset_of!(EventHeader, ktime_ns),
        &ktime_ns.to_ne_bytes(),
    );
}

fn comm(buf: &mut [u8], at: usize, name: &[u8]) {
    let n = name.len().min(COMM_LEN);
    put(buf, at, &name[..n]);
}

/// One TLS data record carrying `data` at `call_offset` of a call of `call_len` bytes.
#[expect(
    clippy::too_many_arguments,
    reason = "mirrors the record's fields one to one"
)]
pub fn tls_data(
    tgid: u32,
    tid: u32,
    ktime_ns: u64,
    conn: u64,
    direction: Direction,
    function: TlsFunction,
    call_len: u64,
    call_offset: u64,
    stream_offset: u64,
    data: &[u8],
    comm_name: &[u8],
) -> Vec<u8> {
    let fixed = size_of::<TlsDataHeader>();
    let mut buf = alloc::vec![0u8; fixed + data.len()];
    header(&mut buf, EventKind::TlsData, tgid, tid, ktime_ns);
    put(
        &mut buf,
        offset_of!(TlsDataHeader, conn),
        &conn.to_ne_bytes(),
    );
    put(
        &mut buf,
        offset_of!(TlsDataHeader, buf_addr),
        &0x1000u64.to_ne_bytes(),
    );
    put(
        &mut buf,
        offset_of!(TlsDataHeader, call_len),
        &call_len.to_ne_bytes(),
    );
    put(
        &mut buf,
        offset_of!(TlsDataHeader, call_offset),
        &call_offset.to_ne_bytes(),
    );
    put(
        &mut buf,
        offset_of!(TlsDataHeader, stream_offset),
        &stream_offset.to_ne_bytes(),
    );
    put(
        &mut buf,
        offset_of!(TlsDataHeader, data_len),
        &(data.len() as u32).to_ne_bytes(),
    );
    buf[offset_of!(TlsDataHeader, direction)] = direction as u8;
    buf[offset_of!(TlsDataHeader, function)] = function as u8;
    comm(&mut buf, offset_of!(TlsDataHeader, comm), comm_name);
    put(&mut buf, fixed, data);
    buf
}

/// The records the kernel emits for one whole call of `payload`, with the given head and tail
/// sizes and record size: head records, then tail records, the middle skipped.
#[expect(
    clippy::too_many_arguments,
    reason = "mirrors the record's fields one to one"
)]
pub fn tls_call(
    tgid: u32,
    ktime_ns: u64,
    conn: u64,
    buf_addr: u64,
    direction: Direction,
    stream_offset: u64,
    payload: &[u8],
    head: u64,
    tail: u64,
    chunk: usize,
) -> Vec<Vec<u8>> {
    let function = match direction {
        Direction::Write => TlsFunction::SslWriteEx,
        Direction::Read => TlsFunction::SslReadEx,
    };
    let len = payload.len() as u64;
    let head_end = len.min(head);
    let mut parts = alloc::vec![(0, head_end)];
    if len > head + tail {
        parts.push((len - tail, len));
    } else if len > head_end {
        parts.push((head_end, len));
    }
    let mut out = Vec::new();
    for (start, end) in parts {
        let mut off = start;
        while off < end {
            let n = (end - off).min(chunk.max(1) as u64);
            let data = &payload[off as usize..(off + n) as usize];
            let mut rec = tls_data(
                tgid,
                tgid,
                ktime_ns,
                conn,
                direction,
                function,
                len,
                off,
                stream_offset,
                data,
                b"python3",
            );
            put(
                &mut rec,
                offset_of!(TlsDataHeader, buf_addr),
                &buf_addr.to_ne_bytes(),
            );
            out.push(rec);
            off += n;
        }
    }
    out
}

pub fn tls_free(tgid: u32, ktime_ns: u64, conn: u64) -> Vec<u8> {
    let mut buf = alloc::vec![0u8; size_of::<TlsFreeEvent>()];
    header(&mut buf, EventKind::TlsFree, tgid, tgid, ktime_ns);
    put(
        &mut buf,
        offset_of!(TlsFreeEvent, conn),
        &conn.to_ne_bytes(),
    );
    buf
}

pub fn process(kind: EventKind, tgid: u32, ktime_ns: u64, comm_name: &[u8]) -> Vec<u8> {
    let mut buf = alloc::vec![0u8; size_of::<ProcessEvent>()];
    header(&mut buf, kind, tgid, tgid, ktime_ns);
    comm(&mut buf, offset_of!(ProcessEvent, comm), comm_name);
    buf
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{RawEvent, decode};

    #[test]
    fn encoded_records_decode_back() {
        let rec = tls_data(
            1,
            2,
            3,
            4,
            Direction::Write,
            TlsFunction::SslWrite,
            10,
            5,
            77,
            b"hello",
            b"py",
        );
        let RawEvent::TlsData(d) = decode(&rec).expect("decodes") else {
            panic!("kind")
        };
        assert_eq!(
            (
                d.common.tgid,
                d.common.tid,
                d.conn,
                d.call_offset,
                d.stream_offset,
                d.data
            ),
            (1, 2, 4, 5, 77, &b"hello"[..])
        );
        let calls = tls_call(1, 0, 9, 0x1000, Direction::Read, 0, &[7u8; 100], 16, 8, 5);
        let total: usize = calls
            .iter()
            .map(|r| match decode(r) {
                Ok(RawEvent::TlsData(d)) => d.data.len(),
                _ => 0,
            })
            .sum();
        assert_eq!(total, 24);
        assert!(matches!(
            decode(&tls_free(1, 0, 9)),
            Ok(RawEvent::TlsFree { conn: 9, .. })
        ));
    }
}
