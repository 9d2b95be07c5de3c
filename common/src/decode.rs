//! Decoding ring-buffer records into typed events, without trusting their bytes.
//!
//! Receives: one raw record as the ring buffer hands it out. Emits: a [`RawEvent`] borrowing
//! its payload, or a [`DecodeError`] saying what was wrong. Fields are read by offset with
//! `from_ne_bytes`, so alignment and truncation can never cause undefined behaviour.

use core::mem::{offset_of, size_of};

use crate::{
    COMM_LEN, Direction, EventHeader, EventKind, ProcessEvent, TLS_DATA_FLAG_UNREADABLE,
    TlsDataHeader, TlsFreeEvent, TlsFunction,
};

/// A decoded record. Payload and comm borrow from the record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RawEvent<'a> {
    TlsData(TlsData<'a>),
    TlsFree { common: Common, conn: u64 },
    ProcessExec { common: Common, comm: &'a [u8] },
    ProcessExit { common: Common, comm: &'a [u8] },
    LinkMapChanged { common: Common, comm: &'a [u8] },
}

/// Fields every record carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Common {
    pub tgid: u32,
    pub tid: u32,
    pub ktime_ns: u64,
}

/// One TLS data record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsData<'a> {
    pub common: Common,
    pub conn: u64,
    pub buf_addr: u64,
    pub call_len: u64,
    pub call_offset: u64,
    /// Where the call starts in the connection direction's stream (kernel count).
    pub stream_offset: u64,
    pub direction: Direction,
    pub function: TlsFunction,
    /// The kernel could not read this chunk: `missing_len` bytes at `call_offset` are lost.
    pub unreadable: bool,
    /// Bytes at `call_offset` this record stands for but could not carry (when unreadable).
    pub missing_len: u64,
    pub comm: &'a [u8],
    pub data: &'a [u8],
}

/// Why a record could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The record is shorter than its kind's fixed part.
    Truncated { kind: u32, len: usize, need: usize },
    /// The header names no known kind.
    UnknownKind(u32),
    /// A field holds a value outside its enum.
    BadField { field: &'static str, value: u64 },
    /// `data_len` disagrees with the bytes actually present.
    LengthMismatch { data_len: u32, present: usize },
}

impl core::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Truncated { kind, len, need } => {
                write!(f, "record of kind {kind} is {len} bytes, needs {need}")
            }
            Self::UnknownKind(kind) => write!(f, "unknown record kind {kind}"),
            Self::BadField { field, value } => write!(f, "field {field} has bad value {value}"),
            Self::LengthMismatch { data_len, present } => {
                write!(f, "data_len {data_len} but {present} payload bytes present")
            }
        }
    }
}

impl DecodeError {
    /// A short stable name for counters.
    pub const fn reason(&self) -> &'static str {
        match self {
            Self::Truncated { .. } => "truncated",
            Self::UnknownKind(_) => "unknown_kind",
            Self::BadField { .. } => "bad_field",
            Self::LengthMismatch { .. } => "length_mismatch",
        }
    }
}

/// Largest call length accepted (256 TiB).
pub const MAX_CALL_LEN: u64 = 1 << 48;

fn u32_at(buf: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[at..at + 4]);
    u32::from_ne_bytes(b)
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_ne_bytes(b)
}

fn need(buf: &[u8], kind: u32, size: usize) -> Result<(), DecodeError> {
    if buf.len() < size {
        Err(DecodeError::Truncated {
            kind,
            len: buf.len(),
            need: size,
        })
    } else {
        Ok(())
    }
}

/// The comm up to its first NUL.
fn comm_at(buf: &[u8], at: usize) -> &[u8] {
    let comm = &buf[at..at + COMM_LEN];
    let end = comm.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
    &comm[..end]
}

/// Decodes one ring-buffer record.
pub fn decode(buf: &[u8]) -> Result<RawEvent<'_>, DecodeError> {
    need(buf, 0, size_of::<EventHeader>())?;
    let kind = u32_at(buf, offset_of!(EventHeader, kind));
    let common = Common {
        tgid: u32_at(buf, offset_of!(EventHeader, tgid)),
        tid: u32_at(buf, offset_of!(EventHeader, tid)),
        ktime_ns: u64_at(buf, offset_of!(EventHeader, ktime_ns)),
    };
    match EventKind::from_u32(kind) {
        Some(EventKind::TlsData) => decode_tls_data(buf, common).map(RawEvent::TlsData),
        Some(EventKind::TlsFree) => {
            need(buf, kind, size_of::<TlsFreeEvent>())?;
            Ok(RawEvent::TlsFree {
                common,
                conn: u64_at(buf, offset_of!(TlsFreeEvent, conn)),
            })
        }
        Some(k @ (EventKind::ProcessExec | EventKind::ProcessExit | EventKind::LinkMapChanged)) => {
            need(buf, kind, size_of::<ProcessEvent>())?;
            let comm = comm_at(buf, offset_of!(ProcessEvent, comm));
            Ok(match k {
                EventKind::ProcessExec => RawEvent::ProcessExec { common, comm },
                EventKind::ProcessExit => RawEvent::ProcessExit { common, comm },
                _ => RawEvent::LinkMapChanged { common, comm },
            })
        }
        None => Err(DecodeError::UnknownKind(kind)),
    }
}

fn decode_tls_data(buf: &[u8], common: Common) -> Result<TlsData<'_>, DecodeError> {
    let fixed = size_of::<TlsDataHeader>();
    need(buf, EventKind::TlsData as u32, fixed)?;
    let direction_raw = buf[offset_of!(TlsDataHeader, direction)];
    let direction = Direction::from_u8(direction_raw).ok_or(DecodeError::BadField {
        field: "direction",
        value: u64::from(direction_raw),
    })?;
    let function_raw = buf[offset_of!(TlsDataHeader, function)];
    let function = TlsFunction::from_u8(function_raw).ok_or(DecodeError::BadField {
        field: "function",
        value: u64::from(function_raw),
    })?;
    let flags = buf[offset_of!(TlsDataHeader, flags)];
    let data_len = u32_at(buf, offset_of!(TlsDataHeader, data_len));
    let unreadable = flags & TLS_DATA_FLAG_UNREADABLE != 0;
    let present = buf.len() - fixed;
    let payload_len = if unreadable { 0 } else { data_len as usize };
    // Trailing bytes past the payload are tolerated (alignment padding).
    if payload_len > present {
        return Err(DecodeError::LengthMismatch { data_len, present });
    }
    let call_len = u64_at(buf, offset_of!(TlsDataHeader, call_len));
    let call_offset = u64_at(buf, offset_of!(TlsDataHeader, call_offset));
    // No real call moves 2^48 bytes; bounding lengths keeps offset arithmetic overflow-free.
    if call_len > MAX_CALL_LEN {
        return Err(DecodeError::BadField {
            field: "call_len",
            value: call_len,
        });
    }
    if call_offset > call_len || u64::from(data_len) > call_len - call_offset {
        return Err(DecodeError::BadField {
            field: "call_offset",
            value: call_offset,
        });
    }
    let missing_len = if unreadable { u64::from(data_len) } else { 0 };
    Ok(TlsData {
        common,
        conn: u64_at(buf, offset_of!(TlsDataHeader, conn)),
        buf_addr: u64_at(buf, offset_of!(TlsDataHeader, buf_addr)),
        call_len,
        call_offset,
        stream_offset: u64_at(buf, offset_of!(TlsDataHeader, stream_offset)),
        direction,
        function,
        unreadable,
        missing_len,
        comm: comm_at(buf, offset_of!(TlsDataHeader, comm)),
        data: &buf[fixed..fixed + payload_len],
    })
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;
    use crate::{EventKind, MAX_CHUNK};

    /// The bytes of a `#[repr(C)]` value, as the kernel writes them.
    fn bytes_of<T: Copy>(value: &T) -> Vec<u8> {
        let len = size_of::<T>();
        let mut out = std::vec![0u8; len];
        // SAFETY: T is a plain #[repr(C)] record without padding-sensitive invariants; we only
        // read its bytes.
        unsafe {
            core::ptr::copy_nonoverlapping((value as *const T).cast::<u8>(), out.as_mut_ptr(), len)
        };
        out
    }

    fn header(kind: EventKind) -> EventHeader {
        EventHeader {
            kind: kind as u32,
            tgid: 10,
            tid: 11,
            _reserved: 0,
            ktime_ns: 12,
        }
    }

    fn tls_header(data_len: u32, flags: u8) -> TlsDataHeader {
        let mut comm = [0u8; COMM_LEN];
        comm[..7].copy_from_slice(b"python3");
        TlsDataHeader {
            header: header(EventKind::TlsData),
            conn: 0xdead_beef,
            buf_addr: 0x1000,
            call_len: 100,
            call_offset: 40,
            stream_offset: 1000,
            data_len,
            direction: Direction::Read as u8,
            function: TlsFunction::SslReadEx as u8,
            flags,
            _reserved: 0,
            comm,
        }
    }

    #[test]
    fn decodes_tls_data_with_payload_and_padding() {
        let mut rec = bytes_of(&tls_header(5, 0));
        rec.extend_from_slice(b"hello\0\0\0"); // ring buffer pads records to 8 bytes
        let RawEvent::TlsData(d) = decode(&rec).expect("decodes") else {
            panic!("kind")
        };
        assert_eq!(
            d.common,
            Common {
                tgid: 10,
                tid: 11,
                ktime_ns: 12
            }
        );
        assert_eq!(
            (d.conn, d.buf_addr, d.call_len, d.call_offset),
            (0xdead_beef, 0x1000, 100, 40)
        );
        assert_eq!(d.direction, Direction::Read);
        assert_eq!(d.function, TlsFunction::SslReadEx);
        assert_eq!(d.comm, b"python3");
        assert_eq!(d.data, b"hello");
        assert!(!d.unreadable);
    }

    #[test]
    fn unreadable_record_carries_its_missing_length() {
        let rec = bytes_of(&tls_header(60, TLS_DATA_FLAG_UNREADABLE));
        let RawEvent::TlsData(d) = decode(&rec).expect("decodes") else {
            panic!("kind")
        };
        assert!(d.unreadable);
        assert_eq!(d.missing_len, 60);
        assert!(d.data.is_empty());
    }

    #[test]
    fn rejects_what_the_kernel_never_writes() {
        let good = bytes_of(&tls_header(5, 0));
        // Every truncation of the fixed part is an error, never a panic.
        for cut in 0..good.len() {
            assert!(decode(&good[..cut]).is_err(), "cut at {cut}");
        }
        // data_len larger than what is present.
        assert!(matches!(
            decode(&good),
            Err(DecodeError::LengthMismatch {
                data_len: 5,
                present: 0
            })
        ));
        // data past the end of the call.
        let mut h = tls_header(70, 0);
        h.call_offset = 40;
        let mut rec = bytes_of(&h);
        rec.resize(rec.len() + 70, b'x');
        assert!(matches!(
            decode(&rec),
            Err(DecodeError::BadField {
                field: "call_offset",
                ..
            })
        ));
        // Bad enums.
        let mut h = tls_header(0, 0);
        h.direction = 7;
        assert!(matches!(
            decode(&bytes_of(&h)),
            Err(DecodeError::BadField {
                field: "direction",
                ..
            })
        ));
        let mut h = tls_header(0, 0);
        h.function = 200;
        assert!(matches!(
            decode(&bytes_of(&h)),
            Err(DecodeError::BadField {
                field: "function",
                ..
            })
        ));
        let mut h = header(EventKind::TlsFree);
        h.kind = 99;
        assert_eq!(decode(&bytes_of(&h)), Err(DecodeError::UnknownKind(99)));
    }

    #[test]
    fn plaintext_records_carry_the_fd_identity_and_stack() {
        let mut h = tls_header(0, 0);
        h.conn = crate::plaintext_conn(7);
        h.function = TlsFunction::SysRecvfrom as u8;
        let rec = bytes_of(&h);
        let Ok(RawEvent::TlsData(d)) = decode(&rec) else {
            panic!("a plaintext record decodes");
        };
        assert_eq!(d.conn, crate::PLAINTEXT_CONN_FLAG | 7);
        assert_eq!(d.function, TlsFunction::SysRecvfrom);
        assert_eq!(d.function.stack(), crate::TlsStack::Plaintext);
        assert_eq!(d.function.name(), "recvfrom");
        // Every function value round-trips; the first unused one is rejected.
        for v in 0..=13u8 {
            assert_eq!(TlsFunction::from_u8(v).map(|f| f as u8), Some(v));
        }
        assert_eq!(TlsFunction::from_u8(14), None);
    }

    #[test]
    fn decodes_free_and_process_events() {
        let free = TlsFreeEvent {
            header: header(EventKind::TlsFree),
            conn: 77,
        };
        assert_eq!(
            decode(&bytes_of(&free)),
            Ok(RawEvent::TlsFree {
                common: Common {
                    tgid: 10,
                    tid: 11,
                    ktime_ns: 12
                },
                conn: 77
            })
        );
        let mut comm = [0u8; COMM_LEN];
        comm.copy_from_slice(b"a-full-16-b-comm");
        for (kind, check) in [
            (EventKind::ProcessExec, 0),
            (EventKind::ProcessExit, 1),
            (EventKind::LinkMapChanged, 2),
        ] {
            let ev = ProcessEvent {
                header: header(kind),
                comm,
            };
            let raw = bytes_of(&ev);
            let got = decode(&raw).expect("decodes");
            let c = match (got, check) {
                (RawEvent::ProcessExec { comm, .. }, 0)
                | (RawEvent::ProcessExit { comm, .. }, 1)
                | (RawEvent::LinkMapChanged { comm, .. }, 2) => comm,
                other => panic!("{other:?}"),
            };
            assert_eq!(c, b"a-full-16-b-comm", "a comm without NUL is taken whole");
        }
    }

    #[test]
    fn layout_is_what_the_kernel_side_assumes() {
        assert_eq!(size_of::<EventHeader>(), 24);
        assert_eq!(size_of::<TlsDataHeader>(), 88);
        assert_eq!(size_of::<crate::TlsDataRecord>(), 88 + MAX_CHUNK);
        assert_eq!(align_of::<TlsDataHeader>(), 8);
    }
}
