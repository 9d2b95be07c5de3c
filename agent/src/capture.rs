//! `tokentap capture`: every stream item as one JSON line, for people debugging capture.
//!
//! Data lines carry the bytes as `data` when they are UTF-8 and as `data_b64` otherwise, so
//! the output is both readable and exact, except that credentials (`Authorization` and similar
//! headers, `?key=` parameters) are masked with `*` of the same length ([`Redactor`]).

use std::{
    collections::HashMap,
    io::{self, Write},
};

use base64::Engine;
use serde_json::{Value, json};
use tokentap_common::Direction;

use crate::{
    clock::{KtimeClock, rfc3339_nanos},
    pipeline::StreamSink,
    redact::Redactor,
    stream::{ConnKey, StreamItem},
};

pub fn direction_name(d: Direction) -> &'static str {
    match d {
        Direction::Write => "write",
        Direction::Read => "read",
    }
}

/// Writes JSON lines to `out`, optionally only for some processes.
pub struct CaptureSink<W: Write> {
    out: W,
    pids: Vec<u32>,
    redactors: HashMap<(ConnKey, Direction), Redactor>,
    /// Lines that could not be written (stdout closed): counted, never fatal mid-batch.
    pub write_errors: u64,
}

impl<W: Write> CaptureSink<W> {
    pub fn new(out: W, pids: Vec<u32>) -> Self {
        Self {
            out,
            pids,
            redactors: HashMap::new(),
            write_errors: 0,
        }
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

/// The JSON form of one stream item.
pub fn item_json(item: &StreamItem<'_, '_>, data: &[u8], clock: &KtimeClock) -> Value {
    match item {
        StreamItem::Data {
            key,
            offset,
            record,
        } => {
            let mut v = json!({
                "type": "data",
                "time": rfc3339_nanos(clock.to_unix_ns(record.common.ktime_ns)),
                "ktime_ns": record.common.ktime_ns,
                "pid": key.tgid,
                "tid": record.common.tid,
                "comm": String::from_utf8_lossy(record.comm),
                "conn": format!("{:#x}", key.conn),
                "direction": direction_name(record.direction),
                "function": record.function.name(),
                "offset": offset,
                "call_len": record.call_len,
                "call_offset": record.call_offset,
                "len": data.len(),
            });
            match std::str::from_utf8(data) {
                Ok(text) => v["data"] = Value::from(text),
                Err(_) => {
                    v["data_b64"] =
                        Value::from(base64::engine::general_purpose::STANDARD.encode(data));
                }
            }
            v
        }
        StreamItem::Gap {
            key,
            direction,
            offset,
            len,
            cause,
        } => json!({
            "type": "gap",
            "pid": key.tgid,
            "conn": format!("{:#x}", key.conn),
            "direction": direction_name(*direction),
            "offset": offset,
            "len": len,
            "cause": cause.as_str(),
        }),
        StreamItem::Closed { key, reason } => json!({
            "type": "close",
            "pid": key.tgid,
            "conn": format!("{:#x}", key.conn),
            "reason": reason.as_str(),
        }),
    }
}

impl<W: Write> StreamSink for CaptureSink<W> {
    fn item(&mut self, item: &StreamItem<'_, '_>, clock: &KtimeClock) {
        let pid = match item {
            StreamItem::Data { key, .. }
            | StreamItem::Gap { key, .. }
            | StreamItem::Closed { key, .. } => key.tgid,
        };
        if !self.pids.is_empty() && !self.pids.contains(&pid) {
            return;
        }
        let mut data = Vec::new();
        match item {
            StreamItem::Data { key, record, .. } => {
                data.extend_from_slice(record.data);
                self.redactors
                    .entry((*key, record.direction))
                    .or_default()
                    .redact(&mut data);
            }
            StreamItem::Closed { key, .. } => {
                self.redactors.retain(|(k, _), _| k != key);
            }
            StreamItem::Gap { key, direction, .. } => {
                self.redactors.entry((*key, *direction)).or_default().gap();
            }
        }
        let line = item_json(item, &data, clock);
        if serde_json::to_writer(&mut self.out, &line).is_err()
            || self.out.write_all(b"\n").is_err()
        {
            self.write_errors += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use tokentap_common::{
        TlsFunction,
        decode::{Common, TlsData},
    };

    use super::*;
    use crate::stream::{ConnKey, GapCause};

    #[test]
    fn data_lines_are_exact_and_readable() {
        let clock = KtimeClock::with_offset(1_000_000_000);
        let record = TlsData {
            common: Common {
                tgid: 5,
                tid: 6,
                ktime_ns: 500,
            },
            conn: 0xabc,
            buf_addr: 1,
            call_len: 4,
            call_offset: 0,
            stream_offset: 0,
            direction: Direction::Read,
            function: TlsFunction::SslReadEx,
            unreadable: false,
            missing_len: 0,
            comm: b"python3",
            data: b"\xff\x00ab",
        };
        let key = ConnKey {
            tgid: 5,
            conn: 0xabc,
        };
        let mut sink = CaptureSink::new(Vec::new(), vec![]);
        sink.item(
            &StreamItem::Data {
                key,
                offset: 10,
                record: &record,
            },
            &clock,
        );
        sink.item(
            &StreamItem::Gap {
                key,
                direction: Direction::Write,
                offset: 3,
                len: 9,
                cause: GapCause::Truncated,
            },
            &clock,
        );
        let out = String::from_utf8(sink.into_inner()).expect("utf8");
        let lines: Vec<Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect();
        assert_eq!(lines[0]["data_b64"], "/wBhYg==");
        assert_eq!(lines[0]["time"], "1970-01-01T00:00:01.000000500Z");
        assert_eq!(lines[0]["conn"], "0xabc");
        assert_eq!(lines[0]["function"], "SSL_read_ex");
        assert_eq!(lines[1]["cause"], "truncated");
        assert_eq!(lines[1]["len"], 9);
    }

    #[test]
    fn credentials_are_masked_across_records() {
        let clock = KtimeClock::with_offset(0);
        let key = ConnKey { tgid: 1, conn: 2 };
        let mut sink = CaptureSink::new(Vec::new(), vec![]);
        let parts: [&[u8]; 2] = [
            b"GET / HTTP/1.1\r\nAuthoriz",
            b"ation: Bearer sk-abc\r\n\r\n",
        ];
        let mut offset = 0;
        for part in parts {
            let record = TlsData {
                common: Common {
                    tgid: 1,
                    tid: 1,
                    ktime_ns: 0,
                },
                conn: 2,
                buf_addr: 0,
                call_len: part.len() as u64,
                call_offset: 0,
                stream_offset: 0,
                direction: Direction::Write,
                function: TlsFunction::SslWriteEx,
                unreadable: false,
                missing_len: 0,
                comm: b"python3",
                data: part,
            };
            sink.item(
                &StreamItem::Data {
                    key,
                    offset,
                    record: &record,
                },
                &clock,
            );
            offset += part.len() as u64;
        }
        let out = String::from_utf8(sink.into_inner()).expect("utf8");
        assert!(!out.contains("sk-abc"), "{out}");
        assert!(out.contains("ation:**************"), "{out}");
    }

    #[test]
    fn pid_filter_applies() {
        let clock = KtimeClock::with_offset(0);
        let mut sink = CaptureSink::new(Vec::new(), vec![1]);
        let key = ConnKey { tgid: 2, conn: 1 };
        sink.item(
            &StreamItem::Closed {
                key,
                reason: crate::stream::CloseReason::Freed,
            },
            &clock,
        );
        assert!(sink.into_inner().is_empty());
    }
}
