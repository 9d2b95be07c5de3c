//! Per-connection byte streams, assembled from TLS data records.
//!
//! Receives: decoded [`TlsData`] records, `SSL_free` and process-exit notices. Emits:
//! [`StreamItem`]s: data at an exact offset of its connection's write or read stream, gaps of
//! exact length (the untaken middle of a long call, or records that were lost), and closes.
//!
//! A connection is `(tgid, SSL*)`. Offsets count every byte of every call, captured or not, so
//! a later HTTP parser can skip a gap by length and stay in sync with Content-Length and
//! chunked framing.
//!
//! Every record also carries where its call starts in the stream as the kernel counted it, so
//! a call whose records were all lost (ring buffer full) still shows up as a gap of exact
//! length. A kernel count that goes backwards (its per-connection entry was evicted) is
//! counted and otherwise ignored: user-space offsets only move forward.

use std::collections::HashMap;

use tokentap_common::{Direction, decode::TlsData};

/// A connection's identity: the process and its `SSL*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnKey {
    pub tgid: u32,
    pub conn: u64,
}

/// Why bytes are missing from a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GapCause {
    /// The middle of a call longer than head + tail, skipped by design.
    Truncated,
    /// Records the kernel could not deliver (ring buffer full) or user space never saw.
    Lost,
    /// The kernel could not read the caller's buffer.
    Unreadable,
}

impl GapCause {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Truncated => "truncated",
            Self::Lost => "lost",
            Self::Unreadable => "unreadable",
        }
    }
}

/// What the assembler hands to the next stage.
#[derive(Debug)]
pub enum StreamItem<'a, 'r> {
    /// `record.data` sits at `offset` of the connection's `record.direction` stream.
    Data {
        key: ConnKey,
        offset: u64,
        record: &'r TlsData<'a>,
    },
    /// `len` bytes at `offset` of the stream are missing.
    Gap {
        key: ConnKey,
        direction: Direction,
        offset: u64,
        len: u64,
        cause: GapCause,
    },
    /// The connection ended (`SSL_free`, process exit, or eviction).
    Closed { key: ConnKey, reason: CloseReason },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    Freed,
    ProcessExited,
    Evicted,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Freed => "freed",
            Self::ProcessExited => "process_exited",
            Self::Evicted => "evicted",
        }
    }
}

/// Head and tail sizes the kernel was loaded with; they tell truncation gaps from losses.
#[derive(Clone, Copy, Debug)]
pub struct CaptureLimits {
    pub head_bytes: u64,
    pub tail_bytes: u64,
}

/// Counters the assembler keeps; the agent exports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AssemblerStats {
    /// Calls that were lost whole, seen as jumps in the kernel's stream offsets.
    pub calls_lost: u64,
    /// Kernel stream offsets that went backwards (its per-connection state was evicted).
    pub offset_resets: u64,
    /// Records that arrived for a call other than the one in progress, out of order.
    pub records_out_of_order: u64,
    pub connections_opened: u64,
    pub connections_evicted: u64,
    /// Connections dropped because `MAX_CONNECTIONS` were tracked.
    pub connections_over_cap: u64,
    /// Connections ended by `SSL_free`.
    pub connections_freed: u64,
    /// Connections ended because their process exited (or exec'd) without freeing them.
    pub connections_closed_at_exit: u64,
}

/// Connections tracked at once; past this the longest-idle ones are dropped (counted).
pub const MAX_CONNECTIONS: usize = 65_536;

#[derive(Debug, Default)]
struct CallInProgress {
    call_len: u64,
    /// Next expected offset within the call.
    next: u64,
}

#[derive(Debug, Default)]
struct DirectionState {
    /// Stream offset where the current (or next) call starts.
    call_start: u64,
    call: Option<CallInProgress>,
    /// The kernel's stream offset the next call should start at.
    kernel_next: Option<u64>,
}

impl DirectionState {
    /// Ends the call in progress: whatever it still owed was lost.
    fn end_call<'a>(
        &mut self,
        key: ConnKey,
        direction: Direction,
        emit: &mut dyn FnMut(StreamItem<'a, '_>),
    ) {
        if let Some(prev) = self.call.take() {
            let owed = prev.call_len - prev.next;
            if owed > 0 {
                emit(StreamItem::Gap {
                    key,
                    direction,
                    offset: self.call_start + prev.next,
                    len: owed,
                    cause: GapCause::Lost,
                });
            }
            self.call_start += prev.call_len;
        }
    }
}

#[derive(Debug, Default)]
struct ConnState {
    dirs: [DirectionState; 2],
    last_seen_ktime: u64,
}

/// Assembles the streams of every live connection.
#[derive(Debug)]
pub struct StreamAssembler {
    limits: CaptureLimits,
    conns: HashMap<ConnKey, ConnState>,
    stats: AssemblerStats,
}

impl StreamAssembler {
    pub fn new(limits: CaptureLimits) -> Self {
        Self {
            limits,
            conns: HashMap::new(),
            stats: AssemblerStats::default(),
        }
    }

    pub fn stats(&self) -> AssemblerStats {
        self.stats
    }

    pub fn open_connections(&self) -> usize {
        self.conns.len()
    }

    /// Number of distinct processes with an open connection.
    pub fn processes(&self) -> usize {
        let mut tgids: Vec<u32> = self.conns.keys().map(|k| k.tgid).collect();
        tgids.sort_unstable();
        tgids.dedup();
        tgids.len()
    }

    /// Feeds one TLS data record.
    pub fn push<'a>(&mut self, record: &TlsData<'a>, emit: &mut dyn FnMut(StreamItem<'a, '_>)) {
        let key = ConnKey {
            tgid: record.common.tgid,
            conn: record.conn,
        };
        if !self.conns.contains_key(&key) && self.conns.len() >= MAX_CONNECTIONS {
            self.drop_idlest(emit);
        }
        let limits = self.limits;
        let stats = &mut self.stats;
        let state = self.conns.entry(key).or_insert_with(|| {
            stats.connections_opened += 1;
            ConnState::default()
        });
        state.last_seen_ktime = state.last_seen_ktime.max(record.common.ktime_ns);
        let direction = record.direction;
        let dir = &mut state.dirs[direction as usize];

        let continues = dir.call.as_ref().is_some_and(|c| {
            record.call_offset != 0 && record.call_len == c.call_len && record.call_offset >= c.next
        });
        if !continues {
            if dir.call.is_some() && record.call_offset != 0 {
                // Not the call in progress: its start was lost, or records were reordered.
                stats.records_out_of_order += 1;
            }
            dir.end_call(key, direction, emit);
            // A whole call lost in between shows as a jump in the kernel's offsets.
            if let Some(expected) = dir.kernel_next {
                if record.stream_offset > expected {
                    let len = record.stream_offset - expected;
                    stats.calls_lost += 1;
                    emit(StreamItem::Gap {
                        key,
                        direction,
                        offset: dir.call_start,
                        len,
                        cause: GapCause::Lost,
                    });
                    dir.call_start += len;
                } else if record.stream_offset < expected {
                    stats.offset_resets += 1;
                }
            }
            dir.kernel_next = Some(record.stream_offset.saturating_add(record.call_len));
            dir.call = Some(CallInProgress {
                call_len: record.call_len,
                next: 0,
            });
        }
        let Some(call) = dir.call.as_mut() else {
            return;
        };
        if record.call_offset > call.next {
            let len = record.call_offset - call.next;
            let head_end = call.call_len.min(limits.head_bytes);
            let truncated = call.next == head_end
                && call.call_len > limits.head_bytes + limits.tail_bytes
                && record.call_offset == call.call_len - limits.tail_bytes;
            emit(StreamItem::Gap {
                key,
                direction,
                offset: dir.call_start + call.next,
                len,
                cause: if truncated {
                    GapCause::Truncated
                } else {
                    GapCause::Lost
                },
            });
        }
        let offset = dir.call_start + record.call_offset;
        if record.unreadable {
            emit(StreamItem::Gap {
                key,
                direction,
                offset,
                len: record.missing_len,
                cause: GapCause::Unreadable,
            });
        } else if !record.data.is_empty() {
            emit(StreamItem::Data {
                key,
                offset,
                record,
            });
        }
        call.next = record.call_offset + record.data.len() as u64 + record.missing_len;
        if call.next >= call.call_len {
            dir.call_start += call.call_len;
            dir.call = None;
        }
    }

    /// Drops the longest-idle connections (a hundredth of the cap at once), counted.
    fn drop_idlest<'a>(&mut self, emit: &mut dyn FnMut(StreamItem<'a, '_>)) {
        let mut by_age: Vec<(u64, ConnKey)> = self
            .conns
            .iter()
            .map(|(k, s)| (s.last_seen_ktime, *k))
            .collect();
        if by_age.is_empty() {
            return;
        }
        let n = (MAX_CONNECTIONS / 100).clamp(1, by_age.len());
        let last = by_age.len() - 1;
        by_age.select_nth_unstable(n.min(last));
        for (_, key) in by_age.into_iter().take(n) {
            self.conns.remove(&key);
            self.stats.connections_over_cap += 1;
            emit(StreamItem::Closed {
                key,
                reason: CloseReason::Evicted,
            });
        }
    }

    /// The `SSL*` was freed: the connection is over.
    pub fn close(&mut self, key: ConnKey, emit: &mut dyn FnMut(StreamItem<'_, '_>)) {
        if self.conns.remove(&key).is_some() {
            self.stats.connections_freed += 1;
            emit(StreamItem::Closed {
                key,
                reason: CloseReason::Freed,
            });
        }
    }

    /// The process exited: all its connections are over.
    pub fn process_exited(&mut self, tgid: u32, emit: &mut dyn FnMut(StreamItem<'_, '_>)) {
        let mut gone: Vec<ConnKey> = self
            .conns
            .keys()
            .filter(|k| k.tgid == tgid)
            .copied()
            .collect();
        gone.sort_unstable();
        for key in gone {
            self.conns.remove(&key);
            self.stats.connections_closed_at_exit += 1;
            emit(StreamItem::Closed {
                key,
                reason: CloseReason::ProcessExited,
            });
        }
    }

    /// Forgets connections silent since before `cutoff_ktime_ns`.
    pub fn evict_idle(&mut self, cutoff_ktime_ns: u64, emit: &mut dyn FnMut(StreamItem<'_, '_>)) {
        let mut stale: Vec<ConnKey> = self
            .conns
            .iter()
            .filter(|(_, s)| s.last_seen_ktime < cutoff_ktime_ns)
            .map(|(k, _)| *k)
            .collect();
        stale.sort_unstable();
        for key in stale {
            self.conns.remove(&key);
            self.stats.connections_evicted += 1;
            emit(StreamItem::Closed {
                key,
                reason: CloseReason::Evicted,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use tokentap_common::{TlsFunction, decode::Common};

    use super::*;

    const LIMITS: CaptureLimits = CaptureLimits {
        head_bytes: 8,
        tail_bytes: 4,
    };

    fn rec<'a>(
        conn: u64,
        direction: Direction,
        buf_addr: u64,
        call_len: u64,
        call_offset: u64,
        data: &'a [u8],
    ) -> TlsData<'a> {
        TlsData {
            common: Common {
                tgid: 7,
                tid: 7,
                ktime_ns: 1,
            },
            conn,
            buf_addr,
            call_len,
            call_offset,
            stream_offset: 0,
            direction,
            function: if direction == Direction::Write {
                TlsFunction::SslWriteEx
            } else {
                TlsFunction::SslReadEx
            },
            unreadable: false,
            missing_len: 0,
            comm: b"python3",
            data,
        }
    }

    /// A stream rebuilt from items: `None` marks a missing byte.
    #[derive(Default)]
    struct Rebuilt {
        bytes: HashMap<(ConnKey, u8), Vec<Option<u8>>>,
        gaps: Vec<(u64, u64, GapCause)>,
        closed: Vec<(ConnKey, CloseReason)>,
    }

    impl Rebuilt {
        fn take(&mut self, item: StreamItem<'_, '_>) {
            match item {
                StreamItem::Data {
                    key,
                    offset,
                    record,
                } => {
                    let s = self.bytes.entry((key, record.direction as u8)).or_default();
                    assert_eq!(
                        s.len() as u64,
                        offset,
                        "data must continue the stream exactly"
                    );
                    s.extend(record.data.iter().map(|&b| Some(b)));
                }
                StreamItem::Gap {
                    key,
                    direction,
                    offset,
                    len,
                    cause,
                } => {
                    let s = self.bytes.entry((key, direction as u8)).or_default();
                    assert_eq!(
                        s.len() as u64,
                        offset,
                        "gap must continue the stream exactly"
                    );
                    s.extend(std::iter::repeat_n(None, len as usize));
                    self.gaps.push((offset, len, cause));
                }
                StreamItem::Closed { key, reason } => self.closed.push((key, reason)),
            }
        }
        fn stream(&self, conn: u64, d: Direction) -> Vec<Option<u8>> {
            self.bytes
                .get(&(ConnKey { tgid: 7, conn }, d as u8))
                .cloned()
                .unwrap_or_default()
        }
    }

    fn feed(a: &mut StreamAssembler, out: &mut Rebuilt, records: &[TlsData<'_>]) {
        for r in records {
            a.push(r, &mut |item| out.take(item));
        }
    }

    /// The records the kernel would emit for one call of `payload` (tgid 7).
    fn kernel_records(
        conn: u64,
        d: Direction,
        addr: u64,
        stream_offset: u64,
        payload: &[u8],
        limits: CaptureLimits,
        chunk: usize,
    ) -> Vec<Vec<u8>> {
        let CaptureLimits {
            head_bytes,
            tail_bytes,
        } = limits;
        tokentap_common::encode::tls_call(
            7,
            1,
            conn,
            addr,
            d,
            stream_offset,
            payload,
            head_bytes,
            tail_bytes,
            chunk,
        )
    }

    fn decoded(raw: &[Vec<u8>]) -> Vec<TlsData<'_>> {
        raw.iter()
            .map(|r| match tokentap_common::decode::decode(r) {
                Ok(tokentap_common::decode::RawEvent::TlsData(d)) => d,
                other => panic!("not TLS data: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn short_calls_concatenate_exactly() {
        let mut a = StreamAssembler::new(LIMITS);
        let mut out = Rebuilt::default();
        feed(
            &mut a,
            &mut out,
            &[
                rec(1, Direction::Write, 100, 5, 0, b"GET /"),
                rec(1, Direction::Write, 200, 3, 0, b" HT"),
                rec(1, Direction::Read, 300, 4, 0, b"HTTP"),
            ],
        );
        let w: Vec<u8> = out
            .stream(1, Direction::Write)
            .into_iter()
            .flatten()
            .collect();
        assert_eq!(w, b"GET / HT");
        let r: Vec<u8> = out
            .stream(1, Direction::Read)
            .into_iter()
            .flatten()
            .collect();
        assert_eq!(r, b"HTTP");
        assert!(out.gaps.is_empty());
    }

    #[test]
    fn long_call_keeps_head_tail_and_exact_gap() {
        let payload: Vec<u8> = (0..40u8).collect();
        let mut a = StreamAssembler::new(LIMITS);
        let mut out = Rebuilt::default();
        feed(
            &mut a,
            &mut out,
            &[rec(1, Direction::Write, 1, 2, 0, b"ab")],
        );
        feed(
            &mut a,
            &mut out,
            &decoded(&kernel_records(
                1,
                Direction::Write,
                2,
                2,
                &payload,
                LIMITS,
                3,
            )),
        );
        feed(
            &mut a,
            &mut out,
            &[rec(1, Direction::Write, 3, 2, 0, b"cd")],
        );
        let s = out.stream(1, Direction::Write);
        assert_eq!(s.len(), 2 + 40 + 2);
        assert_eq!(out.gaps, vec![(2 + 8, 40 - 12, GapCause::Truncated)]);
        let expect: Vec<Option<u8>> = b"ab"
            .iter()
            .map(|&b| Some(b))
            .chain((0..40u8).map(|i| if (8..36).contains(&i) { None } else { Some(i) }))
            .chain(b"cd".iter().map(|&b| Some(b)))
            .collect();
        assert_eq!(s, expect);
    }

    #[test]
    fn every_split_of_calls_rebuilds_the_same_stream() {
        // The same 30 bytes written as calls split at every boundary, with record sizes 1..=5:
        // the rebuilt stream equals the bytes wherever they fall inside a head or a tail.
        let data: Vec<u8> = (0..30u8).map(|i| b'a' + i % 26).collect();
        let limits = CaptureLimits {
            head_bytes: 64,
            tail_bytes: 64,
        };
        for split in 0..=data.len() {
            for chunk in 1..=5 {
                let mut a = StreamAssembler::new(limits);
                let mut out = Rebuilt::default();
                for (i, part) in [&data[..split], &data[split..]].iter().enumerate() {
                    if part.is_empty() {
                        continue;
                    }
                    let raw = kernel_records(
                        9,
                        Direction::Read,
                        i as u64,
                        if i == 0 { 0 } else { split as u64 },
                        part,
                        limits,
                        chunk,
                    );
                    feed(&mut a, &mut out, &decoded(&raw));
                }
                let s: Vec<u8> = out
                    .stream(9, Direction::Read)
                    .into_iter()
                    .flatten()
                    .collect();
                assert_eq!(s, data, "split {split} chunk {chunk}");
                assert!(out.gaps.is_empty());
            }
        }
    }

    #[test]
    fn lost_records_become_exact_gaps() {
        let payload: Vec<u8> = (0..12u8).collect();
        let limits = CaptureLimits {
            head_bytes: 64,
            tail_bytes: 64,
        };
        let raw = kernel_records(1, Direction::Read, 5, 0, &payload, limits, 4);
        let mut recs = decoded(&raw);
        recs.remove(1); // bytes 4..8 lost in the ring buffer
        let mut a = StreamAssembler::new(limits);
        let mut out = Rebuilt::default();
        feed(&mut a, &mut out, &recs);
        // The next call's tail is lost as well: the gap closes when a new call starts.
        let raw_next = kernel_records(1, Direction::Read, 6, 12, &payload, limits, 4);
        let next = decoded(&raw_next);
        feed(&mut a, &mut out, &next[..1]);
        feed(
            &mut a,
            &mut out,
            &decoded(&kernel_records(1, Direction::Read, 7, 24, b"xy", limits, 4)),
        );
        assert_eq!(
            out.gaps,
            vec![(4, 4, GapCause::Lost), (16, 8, GapCause::Lost)]
        );
        assert_eq!(out.stream(1, Direction::Read).len(), 12 + 12 + 2);
    }

    #[test]
    fn unreadable_record_is_a_gap() {
        let mut a = StreamAssembler::new(LIMITS);
        let mut out = Rebuilt::default();
        let mut r = rec(1, Direction::Write, 1, 6, 0, b"");
        r.unreadable = true;
        r.missing_len = 6;
        feed(
            &mut a,
            &mut out,
            &[r, rec(1, Direction::Write, 2, 2, 0, b"ok")],
        );
        assert_eq!(out.gaps, vec![(0, 6, GapCause::Unreadable)]);
        assert_eq!(out.stream(1, Direction::Write).len(), 8);
    }

    #[test]
    fn connections_are_keyed_by_process_and_ssl() {
        let mut a = StreamAssembler::new(LIMITS);
        let mut out = Rebuilt::default();
        let mut other = rec(1, Direction::Write, 1, 1, 0, b"b");
        other.common.tgid = 8;
        feed(
            &mut a,
            &mut out,
            &[rec(1, Direction::Write, 1, 1, 0, b"a"), other],
        );
        assert_eq!(a.open_connections(), 2);
        assert_eq!(a.processes(), 2);
        a.process_exited(8, &mut |i| out.take(i));
        assert_eq!(
            out.closed,
            vec![(ConnKey { tgid: 8, conn: 1 }, CloseReason::ProcessExited)]
        );
        a.close(ConnKey { tgid: 7, conn: 1 }, &mut |i| out.take(i));
        assert_eq!(a.open_connections(), 0);
        // A second notice for a connection already gone is not counted again.
        a.close(ConnKey { tgid: 7, conn: 1 }, &mut |i| out.take(i));
        a.process_exited(8, &mut |i| out.take(i));
        let stats = a.stats();
        assert_eq!(
            (stats.connections_freed, stats.connections_closed_at_exit),
            (1, 1)
        );
    }

    #[test]
    fn reused_ssl_pointer_after_free_starts_a_fresh_stream() {
        let mut a = StreamAssembler::new(LIMITS);
        let mut seen = Vec::new();
        let first = rec(1, Direction::Write, 1, 3, 0, b"one");
        a.push(&first, &mut |i| {
            if let StreamItem::Data { offset, .. } = i {
                seen.push(offset)
            }
        });
        a.close(ConnKey { tgid: 7, conn: 1 }, &mut |_| {});
        let second = rec(1, Direction::Write, 1, 3, 0, b"two");
        a.push(&second, &mut |i| {
            if let StreamItem::Data { offset, .. } = i {
                seen.push(offset)
            }
        });
        assert_eq!(seen, vec![0, 0]);
    }

    #[test]
    fn a_call_lost_whole_is_an_exact_gap() {
        // Three reads; every record of the middle one was lost in the ring buffer. The kernel's
        // stream offsets say how long it was.
        let limits = CaptureLimits {
            head_bytes: 64,
            tail_bytes: 64,
        };
        let mut a = StreamAssembler::new(limits);
        let mut out = Rebuilt::default();
        let first = kernel_records(1, Direction::Read, 1, 0, b"HTTP/1.1 200 OK\r\n", limits, 8);
        let third = kernel_records(1, Direction::Read, 3, 17 + 20, b"\r\nhello", limits, 8);
        feed(&mut a, &mut out, &decoded(&first));
        feed(&mut a, &mut out, &decoded(&third));
        assert_eq!(out.gaps, vec![(17, 20, GapCause::Lost)]);
        assert_eq!(out.stream(1, Direction::Read).len(), 17 + 20 + 7);
        assert_eq!(a.stats().calls_lost, 1);
    }

    #[test]
    fn kernel_offsets_going_back_are_counted_not_followed() {
        let limits = CaptureLimits {
            head_bytes: 64,
            tail_bytes: 64,
        };
        let mut a = StreamAssembler::new(limits);
        let mut out = Rebuilt::default();
        feed(
            &mut a,
            &mut out,
            &decoded(&kernel_records(
                1,
                Direction::Write,
                1,
                100,
                b"abc",
                limits,
                8,
            )),
        );
        feed(
            &mut a,
            &mut out,
            &decoded(&kernel_records(
                1,
                Direction::Write,
                2,
                0,
                b"def",
                limits,
                8,
            )),
        );
        let s: Vec<u8> = out
            .stream(1, Direction::Write)
            .into_iter()
            .flatten()
            .collect();
        assert_eq!(s, b"abcdef");
        assert_eq!(a.stats().offset_resets, 1);
        assert!(out.gaps.is_empty());
    }

    #[test]
    fn connections_are_capped_idlest_first() {
        let mut a = StreamAssembler::new(LIMITS);
        let mut closed = 0;
        for conn in 0..(MAX_CONNECTIONS as u64 + 10) {
            let mut r = rec(conn, Direction::Write, 1, 1, 0, b"a");
            r.common.ktime_ns = conn;
            a.push(&r, &mut |i| {
                if matches!(i, StreamItem::Closed { .. }) {
                    closed += 1;
                }
            });
        }
        assert!(a.open_connections() <= MAX_CONNECTIONS);
        assert_eq!(a.stats().connections_over_cap, closed);
        assert!(closed > 0);
    }

    #[test]
    fn idle_connections_are_evicted_and_counted() {
        let mut a = StreamAssembler::new(LIMITS);
        let mut r = rec(1, Direction::Write, 1, 1, 0, b"a");
        r.common.ktime_ns = 10;
        a.push(&r, &mut |_| {});
        let mut r2 = rec(2, Direction::Write, 1, 1, 0, b"a");
        r2.common.ktime_ns = 100;
        a.push(&r2, &mut |_| {});
        let mut closed = Vec::new();
        a.evict_idle(50, &mut |i| closed.push(format!("{i:?}")));
        assert_eq!(closed.len(), 1);
        assert_eq!(a.stats().connections_evicted, 1);
        assert_eq!(a.open_connections(), 1);
    }
}
