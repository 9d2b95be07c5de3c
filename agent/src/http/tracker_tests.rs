//! Golden byte-stream fixtures for the whole HTTP stage.
//!
//! Each fixture is a connection's capture: data steps in the write or read direction (each
//! step one record, with its own capture time), gaps, and a close. It is fed whole, then with
//! every data step split in two at every byte boundary, then byte by byte; the emitted events
//! (adjacent body pieces with the same capture time merged) and the counters must be the same
//! every time, and match the golden rendering.

use tokentap_common::{
    Direction, TlsFunction,
    decode::{Common, TlsData},
};

use std::collections::HashMap;

use super::*;
use crate::{
    http::body_decoder::tests::{
        BROTLI_10X10Y, brotli_stored, gzip, gzip_flushed, raw_deflate, zlib, zstd,
    },
    stream::{CloseReason, GapCause},
};

const KEY: ConnKey = ConnKey { tgid: 7, conn: 1 };

#[derive(Clone, Debug)]
enum Step {
    W(Vec<u8>),
    R(Vec<u8>),
    Gap(Direction, u64),
    Close,
}

use Step::{Close, R, W};

fn w(s: impl AsRef<[u8]>) -> Step {
    W(s.as_ref().to_vec())
}

fn r(s: impl AsRef<[u8]>) -> Step {
    R(s.as_ref().to_vec())
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// An owned, comparable copy of an event.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Ev {
    Request {
        conn: ConnKey,
        exchange: u64,
        role: Role,
        request: HttpRequest,
    },
    Head {
        conn: ConnKey,
        exchange: u64,
        head: ResponseHead,
    },
    Body {
        conn: ConnKey,
        exchange: u64,
        ktime: u64,
        data: Vec<u8>,
    },
    Gap {
        conn: ConnKey,
        exchange: u64,
        len: u64,
    },
    End {
        conn: ConnKey,
        exchange: u64,
        end: ResponseEnd,
        ktime: u64,
    },
    Abandoned {
        conn: ConnKey,
        exchange: u64,
        ktime: u64,
    },
}

fn record(conn: u64, direction: Direction, ktime: u64, data: &[u8]) -> TlsData<'_> {
    TlsData {
        common: Common {
            tgid: 7,
            tid: 7,
            ktime_ns: ktime,
        },
        conn,
        buf_addr: 0,
        call_len: data.len() as u64,
        call_offset: 0,
        stream_offset: 0,
        direction,
        function: match direction {
            Direction::Write => TlsFunction::SslWriteEx,
            Direction::Read => TlsFunction::SslReadEx,
        },
        unreadable: false,
        missing_len: 0,
        comm: b"test",
        data,
    }
}

/// Appends `ev`, merging it into the previous body piece or gap when they continue it.
fn take(events: &mut Vec<Ev>, ev: HttpEvent<'_>) {
    match (events.last_mut(), ev) {
        (
            Some(Ev::Body {
                conn,
                exchange,
                ktime,
                data,
            }),
            HttpEvent::ResponseBody {
                conn: c,
                exchange: e,
                data: d,
                ktime_ns: k,
            },
        ) if *conn == c && *exchange == e && *ktime == k => data.extend_from_slice(d),
        (
            Some(Ev::Gap {
                conn,
                exchange,
                len,
            }),
            HttpEvent::ResponseGap {
                conn: c,
                exchange: e,
                len: l,
            },
        ) if *conn == c && *exchange == e => *len += l,
        (_, ev) => events.push(match ev {
            HttpEvent::Request {
                conn,
                exchange,
                role,
                request,
            } => Ev::Request {
                conn,
                exchange,
                role,
                request: request.clone(),
            },
            HttpEvent::ResponseHead {
                conn,
                exchange,
                head,
            } => Ev::Head {
                conn,
                exchange,
                head: head.clone(),
            },
            HttpEvent::ResponseBody {
                conn,
                exchange,
                data,
                ktime_ns,
            } => Ev::Body {
                conn,
                exchange,
                ktime: ktime_ns,
                data: data.to_vec(),
            },
            HttpEvent::ResponseGap {
                conn,
                exchange,
                len,
            } => Ev::Gap {
                conn,
                exchange,
                len,
            },
            HttpEvent::ResponseEnd {
                conn,
                exchange,
                end,
                ktime_ns,
            } => Ev::End {
                conn,
                exchange,
                end,
                ktime: ktime_ns,
            },
            HttpEvent::Abandoned {
                conn,
                exchange,
                ktime_ns,
            } => Ev::Abandoned {
                conn,
                exchange,
                ktime: ktime_ns,
            },
        }),
    }
}

#[derive(Clone, Copy, Debug)]
enum Split {
    Whole,
    /// Data step `.0` is fed as two records, split at byte `.1`.
    At(usize, usize),
    Bytes,
}

struct Run {
    events: Vec<Ev>,
    stats: HttpStats,
    open: usize,
}

/// Capture time of step `i`.
fn ktime_of(i: usize) -> u64 {
    100 * (i as u64 + 1)
}

fn feed(steps: &[Step], config: &HttpConfig, split: Split) -> Run {
    let mut tracker = HttpTracker::new(config.clone());
    let mut events = Vec::new();
    let mut offsets = [0u64; 2];
    for (i, step) in steps.iter().enumerate() {
        let ktime = ktime_of(i);
        match step {
            W(data) | R(data) => {
                let dir = if matches!(step, W(_)) {
                    Direction::Write
                } else {
                    Direction::Read
                };
                let pieces: Vec<&[u8]> = match split {
                    Split::At(s, at) if s == i => vec![&data[..at], &data[at..]],
                    Split::Bytes => data.chunks(1).collect(),
                    _ => vec![&data[..]],
                };
                for piece in pieces {
                    let rec = record(KEY.conn, dir, ktime, piece);
                    tracker.on_stream_item(
                        &StreamItem::Data {
                            key: KEY,
                            offset: offsets[dir as usize],
                            record: &rec,
                        },
                        &mut |e| take(&mut events, e),
                    );
                    offsets[dir as usize] += piece.len() as u64;
                }
            }
            Step::Gap(direction, len) => {
                tracker.on_stream_item(
                    &StreamItem::Gap {
                        key: KEY,
                        direction: *direction,
                        offset: offsets[*direction as usize],
                        len: *len,
                        cause: GapCause::Truncated,
                    },
                    &mut |e| take(&mut events, e),
                );
                offsets[*direction as usize] += len;
            }
            Close => tracker.on_stream_item(
                &StreamItem::Closed {
                    key: KEY,
                    reason: CloseReason::Freed,
                },
                &mut |e| take(&mut events, e),
            ),
        }
    }
    Run {
        events,
        stats: tracker.stats().clone(),
        open: tracker.open_connections(),
    }
}

fn show(b: &[u8]) -> String {
    let lossy = |b: &[u8]| format!("{:?}", String::from_utf8_lossy(b));
    if b.len() <= 72 {
        lossy(b)
    } else {
        format!(
            "{}..{} ({} bytes)",
            lossy(&b[..32]),
            lossy(&b[b.len() - 16..]),
            b.len()
        )
    }
}

fn render(events: &[Ev]) -> Vec<String> {
    events
        .iter()
        .map(|ev| match ev {
            Ev::Request {
                exchange,
                role,
                request,
                ..
            } => {
                let b = &request.body;
                format!(
                    "req#{exchange} {role:?} {} {} wire={} t={}..{} body total={} missing={}{} head={}{}",
                    request.method,
                    request.target,
                    request.wire_len,
                    request.start_ktime_ns,
                    request.end_ktime_ns,
                    b.total_len,
                    b.missing,
                    if b.undecodable { " undecodable" } else { "" },
                    show(&b.head),
                    if b.tail.is_empty() {
                        String::new()
                    } else {
                        format!(" tail={}", show(&b.tail))
                    },
                )
            }
            Ev::Head { exchange, head, .. } => {
                format!("head#{exchange} {} t={}", head.status, head.ktime_ns)
            }
            Ev::Body {
                exchange,
                ktime,
                data,
                ..
            } => format!("body#{exchange} t={ktime} {}", show(data)),
            Ev::Gap { exchange, len, .. } => format!("gap#{exchange} {len}"),
            Ev::End {
                exchange,
                end,
                ktime,
                ..
            } => format!("end#{exchange} {end:?} t={ktime}"),
            Ev::Abandoned {
                exchange, ktime, ..
            } => format!("abandoned#{exchange} t={ktime}"),
        })
        .collect()
}

/// Feeds the fixture whole, split at every boundary of every data step, and byte by byte;
/// asserts all runs agree. Returns the whole run.
fn check_consistent(steps: &[Step], config: &HttpConfig) -> Run {
    let whole = feed(steps, config, Split::Whole);
    for (i, step) in steps.iter().enumerate() {
        let (W(data) | R(data)) = step else {
            continue;
        };
        for at in 1..data.len() {
            let run = feed(steps, config, Split::At(i, at));
            assert!(
                run.events == whole.events,
                "step {i} split at {at}: {:#?}\nwhole: {:#?}",
                render(&run.events),
                render(&whole.events)
            );
            assert_eq!(run.stats, whole.stats, "step {i} split at {at}");
        }
    }
    let run = feed(steps, config, Split::Bytes);
    assert!(
        run.events == whole.events,
        "byte by byte: {:#?}\nwhole: {:#?}",
        render(&run.events),
        render(&whole.events)
    );
    assert_eq!(run.stats, whole.stats, "byte by byte");
    whole
}

/// [`check_consistent`], and the whole run renders as `golden`.
fn check_with(steps: &[Step], config: &HttpConfig, golden: &[&str]) -> Run {
    let whole = check_consistent(steps, config);
    assert_eq!(render(&whole.events), golden, "golden rendering");
    whole
}

/// The decoded body of `exchange`, concatenated.
fn body_of(run: &Run, exchange: u64) -> Vec<u8> {
    run.events
        .iter()
        .filter_map(|e| match e {
            Ev::Body {
                exchange: x, data, ..
            } if *x == exchange => Some(&data[..]),
            _ => None,
        })
        .collect::<Vec<_>>()
        .concat()
}

fn check(steps: &[Step], golden: &[&str]) -> Run {
    check_with(steps, &HttpConfig::default(), golden)
}

fn requests(run: &Run) -> Vec<&HttpRequest> {
    run.events
        .iter()
        .filter_map(|e| match e {
            Ev::Request { request, .. } => Some(request),
            _ => None,
        })
        .collect()
}

fn response_head(status: &str, headers: &[&str]) -> Vec<u8> {
    let mut s = format!("HTTP/1.1 {status}\r\n");
    for h in headers {
        s.push_str(h);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s.into_bytes()
}

fn chunk(data: &[u8]) -> Vec<u8> {
    cat(&[format!("{:x}\r\n", data.len()).as_bytes(), data, b"\r\n"])
}

#[test]
fn keep_alive_three_exchanges() {
    let run = check(
        &[
            w(
                "POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\nContent-Type: application/json\r\nContent-Length: 17\r\n\r\n{\"model\":\"gpt-x\"}",
            ),
            r(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"id\":\"a1\"}",
            ),
            w("GET /v1/models HTTP/1.1\r\nHost: api.openai.com\r\n\r\n"),
            r(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n",
            ),
            w("POST /v1/embeddings HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"),
            r("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"),
        ],
        &[
            r#"req#0 Client POST /v1/chat/completions wire=129 t=100..100 body total=17 missing=0 head="{\"model\":\"gpt-x\"}""#,
            "head#0 200 t=200",
            r#"body#0 t=200 "{\"id\":\"a1\"}""#,
            "end#0 Complete t=200",
            r#"req#1 Client GET /v1/models wire=49 t=300..300 body total=0 missing=0 head="""#,
            "head#1 200 t=400",
            r#"body#1 t=400 "{\"a\":1}""#,
            "end#1 Complete t=400",
            r#"req#2 Client POST /v1/embeddings wire=53 t=500..500 body total=2 missing=0 head="{}""#,
            "head#2 400 t=600",
            "end#2 Complete t=600",
        ],
    );
    let reqs = requests(&run);
    assert_eq!(reqs[0].headers.get("host"), Some("api.openai.com"));
    assert_eq!(reqs[0].body.complete(), Some(&b"{\"model\":\"gpt-x\"}"[..]));
    let s = &run.stats;
    assert_eq!(
        (s.requests, s.responses, s.resyncs, s.parse_errors),
        (3, 3, 0, 0)
    );
}

#[test]
fn chunked_response_with_extensions_and_trailers() {
    check(
        &[
            w("GET /stream HTTP/1.1\r\n\r\n"),
            r("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n"),
            r("5;name=value;quoted=\"a;b\"\r\nhello\r\n"),
            r("6 ;ext\r\n world\r\n"),
            r("0;last\r\nX-Checksum: abc\r\nX-Other: 1\r\n\r\n"),
            w("GET /next HTTP/1.1\r\n\r\n"),
            r("HTTP/1.1 204 No Content\r\n\r\n"),
        ],
        &[
            r#"req#0 Client GET /stream wire=24 t=100..100 body total=0 missing=0 head="""#,
            "head#0 200 t=200",
            r#"body#0 t=300 "hello""#,
            r#"body#0 t=400 " world""#,
            "end#0 Complete t=500",
            r#"req#1 Client GET /next wire=22 t=600..600 body total=0 missing=0 head="""#,
            "head#1 204 t=700",
            "end#1 Complete t=700",
        ],
    );
}

#[test]
fn content_length_request_and_response_across_records() {
    check(
        &[
            w("POST /v1/messages HTTP/1.1\r\nContent-Length: 26\r\n\r\n"),
            w("{\"model\":"),
            w("\"claude-x\",\"n\":1}"),
            r("HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n{\"usage\":"),
            r("{}}"),
        ],
        &[
            r#"req#0 Client POST /v1/messages wire=76 t=100..300 body total=26 missing=0 head="{\"model\":\"claude-x\",\"n\":1}""#,
            "head#0 200 t=400",
            r#"body#0 t=400 "{\"usage\":""#,
            r#"body#0 t=500 "{}}""#,
            "end#0 Complete t=500",
        ],
    );
}

#[test]
fn content_length_and_chunked_together_means_chunked() {
    check(
        &[
            w(
                "POST /x HTTP/1.1\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
            ),
            r("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
        ],
        &[
            r#"req#0 Client POST /x wire=81 t=100..100 body total=2 missing=0 head="hi""#,
            "head#0 200 t=200",
            "end#0 Complete t=200",
        ],
    );
}

#[test]
fn close_delimited_response() {
    let run = check(
        &[
            w("GET /old HTTP/1.1\r\n\r\n"),
            r("HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nfirst "),
            r("second"),
            Close,
        ],
        &[
            r#"req#0 Client GET /old wire=21 t=100..100 body total=0 missing=0 head="""#,
            "head#0 200 t=200",
            r#"body#0 t=200 "first ""#,
            r#"body#0 t=300 "second""#,
            "end#0 ClosedDelimited t=300",
        ],
    );
    assert_eq!(run.open, 0);
}

#[test]
fn head_response_has_no_body() {
    check(
        &[
            w("HEAD /file HTTP/1.1\r\n\r\n"),
            r("HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nContent-Encoding: gzip\r\n\r\n"),
            w("GET /file HTTP/1.1\r\n\r\n"),
            r("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
        ],
        &[
            r#"req#0 Client HEAD /file wire=23 t=100..100 body total=0 missing=0 head="""#,
            "head#0 200 t=200",
            "end#0 Complete t=200",
            r#"req#1 Client GET /file wire=22 t=300..300 body total=0 missing=0 head="""#,
            "head#1 200 t=400",
            r#"body#1 t=400 "ok""#,
            "end#1 Complete t=400",
        ],
    );
}

#[test]
fn no_content_and_not_modified_have_no_body() {
    check(
        &[
            w("DELETE /v1/files/f1 HTTP/1.1\r\n\r\n"),
            r("HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n"),
            w("GET /v1/models HTTP/1.1\r\nIf-None-Match: \"x\"\r\n\r\n"),
            r(
                "HTTP/1.1 304 Not Modified\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n",
            ),
            w("GET /v1/models HTTP/1.1\r\n\r\n"),
            r("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]"),
        ],
        &[
            r#"req#0 Client DELETE /v1/files/f1 wire=32 t=100..100 body total=0 missing=0 head="""#,
            "head#0 204 t=200",
            "end#0 Complete t=200",
            r#"req#1 Client GET /v1/models wire=47 t=300..300 body total=0 missing=0 head="""#,
            "head#1 304 t=400",
            "end#1 Complete t=400",
            r#"req#2 Client GET /v1/models wire=27 t=500..500 body total=0 missing=0 head="""#,
            "head#2 200 t=600",
            r#"body#2 t=600 "[]""#,
            "end#2 Complete t=600",
        ],
    );
}

#[test]
fn expect_100_continue() {
    let run = check(
        &[
            w("POST /upload HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"),
            r("HTTP/1.1 100 Continue\r\n\r\n"),
            w("hello"),
            r("HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"),
        ],
        &[
            r#"req#0 Client POST /upload wire=71 t=100..300 body total=5 missing=0 head="hello""#,
            "head#0 201 t=400",
            r#"body#0 t=400 "ok""#,
            "end#0 Complete t=400",
        ],
    );
    assert_eq!(run.stats.interim_responses, 1);
}

#[test]
fn early_response_emits_the_request_first() {
    // The server refuses the upload before its body is sent; the client gives up.
    let run = check(
        &[
            w("POST /upload HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1000\r\n\r\n"),
            r("HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n"),
            Close,
        ],
        &[
            r#"req#0 Client POST /upload wire=1069 t=100..100 body total=1000 missing=1000 head="""#,
            "head#0 413 t=200",
            "end#0 Complete t=200",
        ],
    );
    assert_eq!((run.stats.requests, run.stats.abandoned), (1, 0));
}

#[test]
fn early_response_to_a_chunked_upload_is_not_complete() {
    let run = check(
        &[
            w("POST /upload HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n"),
            r("HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n"),
            Close,
        ],
        &[
            r#"req#0 Client POST /upload wire=63 t=100..100 body total=5 missing=0 undecodable head="abcde""#,
            "head#0 401 t=200",
            "end#0 Complete t=200",
        ],
    );
    assert_eq!(requests(&run)[0].body.complete(), None);
    assert_eq!(
        run.stats.bodies_undecodable, 0,
        "cut short, not undecodable"
    );
}

#[test]
fn pipelined_requests_pair_in_order() {
    check(
        &[
            w("GET /a HTTP/1.1\r\n\r\nHEAD /b HTTP/1.1\r\n\r\nGET /c HTTP/1.1\r\n\r\n"),
            r(
                "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nAHTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nC",
            ),
        ],
        &[
            r#"req#0 Client GET /a wire=19 t=100..100 body total=0 missing=0 head="""#,
            r#"req#1 Client HEAD /b wire=20 t=100..100 body total=0 missing=0 head="""#,
            r#"req#2 Client GET /c wire=19 t=100..100 body total=0 missing=0 head="""#,
            "head#0 200 t=200",
            r#"body#0 t=200 "A""#,
            "end#0 Complete t=200",
            "head#1 200 t=200",
            "end#1 Complete t=200",
            "head#2 200 t=200",
            r#"body#2 t=200 "C""#,
            "end#2 Complete t=200",
        ],
    );
}

#[test]
fn server_role_when_requests_are_read() {
    let run = check(
        &[
            r("POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"),
            w("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
        ],
        &[
            r#"req#0 Server POST /v1/chat/completions wire=59 t=100..100 body total=2 missing=0 head="{}""#,
            "head#0 200 t=200",
            r#"body#0 t=200 "ok""#,
            "end#0 Complete t=200",
        ],
    );
    assert!(matches!(
        run.events[0],
        Ev::Request {
            role: Role::Server,
            ..
        }
    ));
}

#[test]
fn switching_protocols_ends_parsing() {
    let run = check(
        &[
            w("GET /v1/realtime HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"),
            r(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello"),
            w(b"\x81\x85abcdHTTP/1.1 GET / HTTP/1.1\r\n\r\n"),
            r("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
            Close,
        ],
        &[
            r#"req#0 Client GET /v1/realtime wire=70 t=100..100 body total=0 missing=0 head="""#,
            "head#0 101 t=200",
            "end#0 Complete t=200",
        ],
    );
    assert_eq!((run.stats.upgrades, run.stats.responses), (1, 1));
}

/// A JSON body big enough to compress.
fn json_body() -> Vec<u8> {
    let mut s = String::from("{\"choices\":[");
    for i in 0..40 {
        s.push_str(&format!(
            "{{\"index\":{i},\"text\":\"token token token\"}},"
        ));
    }
    s.push_str("{}]}");
    s.into_bytes()
}

fn coded_response_fixture(coding: &str, wire: &[u8]) -> Vec<Step> {
    let half = wire.len() / 2;
    vec![
        w("GET /v1/x HTTP/1.1\r\nAccept-Encoding: gzip, deflate, br, zstd\r\n\r\n"),
        R(cat(&[
            &response_head(
                "200 OK",
                &[
                    &format!("Content-Encoding: {coding}"),
                    &format!("Content-Length: {}", wire.len()),
                ],
            ),
            &wire[..half],
        ])),
        R(wire[half..].to_vec()),
    ]
}

#[test]
fn compressed_responses_decode_at_every_split() {
    let plain = json_body();
    for (coding, wire, expect) in [
        ("gzip", gzip(&plain), plain.clone()),
        ("x-gzip", gzip(&plain), plain.clone()),
        ("deflate", zlib(&plain), plain.clone()),
        ("deflate", raw_deflate(&plain), plain.clone()),
        ("zstd", zstd(&plain), plain.clone()),
        (
            "br",
            BROTLI_10X10Y.to_vec(),
            b"XXXXXXXXXXYYYYYYYYYY".to_vec(),
        ),
        (
            "br",
            brotli_stored(&[&plain[..100], &plain[100..]]),
            plain.clone(),
        ),
        ("identity", plain.clone(), plain.clone()),
    ] {
        let run = check_consistent(
            &coded_response_fixture(coding, &wire),
            &HttpConfig::default(),
        );
        let lines = render(&run.events);
        assert_eq!(
            lines.first().map(String::as_str),
            Some(r#"req#0 Client GET /v1/x wire=64 t=100..100 body total=0 missing=0 head="""#),
            "{coding}"
        );
        assert_eq!(lines[1], "head#0 200 t=200", "{coding}");
        assert_eq!(
            lines.last().map(String::as_str),
            Some("end#0 Complete t=300"),
            "{coding}"
        );
        assert!(body_of(&run, 0) == expect, "{coding}: decoded body differs");
        assert!(
            !run.events.iter().any(|e| matches!(e, Ev::Gap { .. })),
            "{coding}"
        );
        assert_eq!(run.stats.bodies_undecodable, 0, "{coding}");
        let decoded = if coding == "identity" {
            0
        } else {
            expect.len()
        };
        assert_eq!(run.stats.decoded_bytes, decoded as u64, "{coding}");
    }
}

#[test]
fn compressed_request_body_is_decoded() {
    let plain = json_body();
    let wire = gzip(&plain);
    let head = format!(
        "POST /v1/x HTTP/1.1\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\n\r\n",
        wire.len()
    );
    let run = check_consistent(
        &[
            W(cat(&[head.as_bytes(), &wire])),
            r("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
        ],
        &HttpConfig::default(),
    );
    let reqs = requests(&run);
    assert_eq!(reqs[0].body.complete(), Some(&plain[..]));
    assert_eq!(reqs[0].wire_len, (head.len() + wire.len()) as u64);
}

#[test]
fn gzip_sse_flushed_per_event_comes_out_per_event() {
    let events: [&[u8]; 3] = [
        b"event: message_start\ndata: {\"type\":\"message_start\"}\n\n",
        b"event: content_block_delta\ndata: {\"text\":\"Hello\"}\n\n",
        b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    ];
    let pieces = gzip_flushed(&events);
    let mut steps = vec![
        w("POST /v1/messages HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"),
        r(
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
        ),
    ];
    steps.extend(pieces.iter().map(|p| R(chunk(p))));
    steps.push(r("0\r\n\r\n"));
    // Each event comes out with the capture time of the record that carried its flush.
    check(
        &steps,
        &[
            r#"req#0 Client POST /v1/messages wire=51 t=100..100 body total=2 missing=0 head="{}""#,
            "head#0 200 t=200",
            r#"body#0 t=300 "event: message_start\ndata: {\"type\":\"message_start\"}\n\n""#,
            r#"body#0 t=400 "event: content_block_delta\ndata: {\"text\":\"Hello\"}\n\n""#,
            r#"body#0 t=500 "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n""#,
            "end#0 Complete t=700",
        ],
    );
}

#[test]
fn forty_megabyte_upload_as_head_gap_tail() {
    const LEN: u64 = 40_000_000;
    let head = format!("POST /v1/files HTTP/1.1\r\nContent-Length: {LEN}\r\n\r\n");
    let run = check(
        &[
            W(cat(&[head.as_bytes(), &[b'a'; 200]])),
            Step::Gap(Direction::Write, LEN - 400),
            W(vec![b'z'; 200]),
            r("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"),
            w("GET /v1/files HTTP/1.1\r\n\r\n"),
            r("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]"),
        ],
        &[
            r#"req#0 Client POST /v1/files wire=40000053 t=100..300 body total=40000000 missing=39999600 head="aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".."aaaaaaaaaaaaaaaa" (200 bytes) tail="zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz".."zzzzzzzzzzzzzzzz" (200 bytes)"#,
            "head#0 200 t=400",
            r#"body#0 t=400 "{}""#,
            "end#0 Complete t=400",
            r#"req#1 Client GET /v1/files wire=26 t=500..500 body total=0 missing=0 head="""#,
            "head#1 200 t=600",
            r#"body#1 t=600 "[]""#,
            "end#1 Complete t=600",
        ],
    );
    assert_eq!(run.stats.body_gap_bytes, LEN - 400);
    assert_eq!(run.stats.resyncs, 0);
}

#[test]
fn resync_after_joining_mid_body() {
    // The agent attached while a request body and its chunked response were in flight.
    let run = check(
        &[
            w("e, say hi\"}],\"stream\":true}"),
            r("data: [DONE]\r\n\r\n0\r\n\r\n"),
            w("POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"),
            r("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
        ],
        &[
            r#"req#0 Client POST /v1/chat/completions wire=59 t=300..300 body total=2 missing=0 head="{}""#,
            "head#0 200 t=400",
            r#"body#0 t=400 "ok""#,
            "end#0 Complete t=400",
        ],
    );
    let s = &run.stats;
    assert_eq!(
        (s.resyncs, s.parse_errors, s.non_http_connections),
        (2, 0, 0)
    );
}

#[test]
fn joining_between_request_and_response_skips_the_orphan() {
    let run = check(
        &[
            r("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"),
            w("GET /b HTTP/1.1\r\n\r\n"),
            r("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
        ],
        &[
            r#"req#0 Client GET /b wire=19 t=200..200 body total=0 missing=0 head="""#,
            "head#0 200 t=300",
            r#"body#0 t=300 "ok""#,
            "end#0 Complete t=300",
        ],
    );
    assert_eq!(run.stats.orphan_responses, 1);
}

#[test]
fn http2_preface_is_not_http1() {
    // HTTP/1 after the preface is not HTTP/2 framing: the connection is given up.
    let run = check(
        &[
            w(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"),
            r(b"\x00\x00\x00\x04\x01\x00\x00\x00\x00"),
            w("GET / HTTP/1.1\r\n\r\n"),
            r("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
        ],
        &[],
    );
    assert_eq!(run.stats.h2_connections, 1);
    assert_eq!(run.stats.h2_desynced, 1);
    assert_eq!(run.stats.non_http_connections, 0);
    assert_eq!(run.open, 1, "remembered as ignored until closed");
}

#[test]
fn postgres_startup_is_not_http() {
    let mut startup = vec![0, 0, 0, 0, 0, 3, 0, 0];
    startup.extend_from_slice(b"user\0postgres\0database\0llm\0\0");
    let len = startup.len() as u32;
    startup[..4].copy_from_slice(&len.to_be_bytes());
    let run = check(
        &[
            W(startup),
            r(b"R\x00\x00\x00\x08\x00\x00\x00\x00"),
            w(b"Q\x00\x00\x00\x0eGET / HTTP/1.1\r\n\r\n"),
        ],
        &[],
    );
    assert_eq!(run.stats.non_http_connections, 1);
    assert_eq!(run.stats.resyncs, 0);
}

#[test]
fn decompression_bomb_is_capped() {
    let wire = gzip(&vec![0u8; 1 << 20]);
    let config = HttpConfig {
        max_decoded_body: 4096,
        ..HttpConfig::default()
    };
    let gap = format!("gap#0 {}", wire.len());
    let run = check_with(
        &[
            w("GET /bomb HTTP/1.1\r\n\r\n"),
            R(cat(&[
                &response_head(
                    "200 OK",
                    &[
                        "Content-Encoding: gzip",
                        &format!("Content-Length: {}", wire.len()),
                    ],
                ),
                &wire,
            ])),
            w("GET /next HTTP/1.1\r\n\r\n"),
            r("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
        ],
        &config,
        &[
            r#"req#0 Client GET /bomb wire=22 t=100..100 body total=0 missing=0 head="""#,
            "head#0 200 t=200",
            r#"body#0 t=200 "\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0".."\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0" (4096 bytes)"#,
            &gap,
            "end#0 Complete t=200",
            r#"req#1 Client GET /next wire=22 t=300..300 body total=0 missing=0 head="""#,
            "head#1 200 t=400",
            r#"body#1 t=400 "ok""#,
            "end#1 Complete t=400",
        ],
    );
    let s = &run.stats;
    assert_eq!((s.decompression_capped, s.bodies_undecodable), (1, 1));
}

#[test]
fn credentials_never_leave_the_stage() {
    let run = check(
        &[
            w(
                "POST /v1beta/models/gemini:streamGenerateContent?alt=sse&key=SECRET1 HTTP/1.1\r\n\
               Host: generativelanguage.googleapis.com\r\n\
               Authorization: Bearer SECRET2\r\nx-api-key: SECRET3\r\nApi-Key: SECRET4\r\n\
               X-Goog-Api-Key: SECRET5\r\nCookie: s=SECRET6\r\nProxy-Authorization: SECRET7\r\n\
               Content-Length: 2\r\n\r\n{}",
            ),
            r(
                "HTTP/1.1 200 OK\r\nSet-Cookie: id=SECRET8\r\nTransfer-Encoding: chunked\r\n\r\n\
               2\r\nok\r\n0\r\nX-Api-Key: SECRET9\r\n\r\n",
            ),
        ],
        &[
            r#"req#0 Client POST /v1beta/models/gemini:streamGenerateContent?alt=sse&key=REDACTED wire=286 t=100..100 body total=2 missing=0 head="{}""#,
            "head#0 200 t=200",
            r#"body#0 t=200 "ok""#,
            "end#0 Complete t=200",
        ],
    );
    let dump = format!("{:?}", run.events);
    assert!(!dump.contains("SECRET"), "{dump}");
    let reqs = requests(&run);
    assert_eq!(
        reqs[0].headers.get("host"),
        Some("generativelanguage.googleapis.com")
    );
    assert_eq!(reqs[0].headers.iter().count(), 2);
}

#[test]
fn close_with_pending_requests_abandons_them() {
    check(
        &[
            w("POST /v1/chat HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"),
            w("GET /v1/models HTTP/1.1\r\n\r\n"),
            w("POST /v1/upload HTTP/1.1\r\nContent-Length: 100\r\n\r\n0123456789"),
            Close,
        ],
        &[
            r#"req#0 Client POST /v1/chat wire=47 t=100..100 body total=2 missing=0 head="{}""#,
            r#"req#1 Client GET /v1/models wire=27 t=200..200 body total=0 missing=0 head="""#,
            "abandoned#0 t=300",
            "abandoned#1 t=300",
            r#"req#2 Client POST /v1/upload wire=149 t=300..300 body total=100 missing=90 head="0123456789""#,
            "abandoned#2 t=300",
        ],
    );
}

#[test]
fn close_during_a_streaming_response_interrupts_it() {
    let run = check(
        &[
            w("POST /v1/chat HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"),
            R(cat(&[
                &response_head(
                    "200 OK",
                    &[
                        "Content-Type: text/event-stream",
                        "Transfer-Encoding: chunked",
                    ],
                ),
                &chunk(b"data: a\n\n"),
            ])),
            R(chunk(b"data: b\n\n")),
            Close,
        ],
        &[
            r#"req#0 Client POST /v1/chat wire=47 t=100..100 body total=2 missing=0 head="{}""#,
            "head#0 200 t=200",
            r#"body#0 t=200 "data: a\n\n""#,
            r#"body#0 t=300 "data: b\n\n""#,
            "end#0 Interrupted t=300",
        ],
    );
    assert_eq!(run.stats.interrupted, 1);
}

#[test]
fn gap_inside_one_chunk_is_skipped() {
    check(
        &[
            w("GET /s HTTP/1.1\r\n\r\n"),
            r("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n01"),
            Step::Gap(Direction::Read, 6),
            r("89\r\n0\r\n\r\n"),
        ],
        &[
            r#"req#0 Client GET /s wire=19 t=100..100 body total=0 missing=0 head="""#,
            "head#0 200 t=200",
            r#"body#0 t=200 "01""#,
            "gap#0 6",
            r#"body#0 t=400 "89""#,
            "end#0 Complete t=400",
        ],
    );
}

#[test]
fn gap_across_chunks_loses_framing_then_resyncs() {
    let run = check(
        &[
            w("GET /s HTTP/1.1\r\n\r\n"),
            r("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nhello "),
            Step::Gap(Direction::Read, 20),
            r("ld\r\n0\r\n\r\n"),
            w("GET /t HTTP/1.1\r\n\r\n"),
            r("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
        ],
        &[
            r#"req#0 Client GET /s wire=19 t=100..100 body total=0 missing=0 head="""#,
            "head#0 200 t=200",
            r#"body#0 t=200 "hello ""#,
            "gap#0 20",
            "end#0 Interrupted t=200",
            r#"req#1 Client GET /t wire=19 t=500..500 body total=0 missing=0 head="""#,
            "head#1 200 t=600",
            r#"body#1 t=600 "ok""#,
            "end#1 Complete t=600",
        ],
    );
    let s = &run.stats;
    assert_eq!(
        (
            s.framing_lost,
            s.resyncs,
            s.interrupted,
            s.bodies_undecodable
        ),
        (1, 1, 1, 1)
    );
}

#[test]
fn gap_in_a_chunked_request_marks_its_body() {
    let run = check(
        &[
            w("POST /u HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n3\r\nf"),
            Step::Gap(Direction::Write, 10),
            w("GET /v HTTP/1.1\r\n\r\n"),
            r("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
            r("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
        ],
        &[
            r#"req#0 Client POST /u wire=72 t=100..100 body total=16 missing=10 undecodable head="abcdef""#,
            r#"req#1 Client GET /v wire=19 t=300..300 body total=0 missing=0 head="""#,
            "head#0 200 t=400",
            "end#0 Complete t=400",
            "head#1 200 t=500",
            "end#1 Complete t=500",
        ],
    );
    assert_eq!(run.stats.framing_lost, 1);
}

#[test]
fn gap_in_a_compressed_body_makes_it_undecodable() {
    let plain = json_body();
    let wire = gzip(&plain);
    let (first, rest) = wire.split_at(40);
    let run = check_consistent(
        &[
            w("GET /z HTTP/1.1\r\n\r\n"),
            R(cat(&[
                &response_head(
                    "200 OK",
                    &[
                        "Content-Encoding: gzip",
                        &format!("Content-Length: {}", wire.len()),
                    ],
                ),
                first,
            ])),
            Step::Gap(Direction::Read, 20),
            R(rest[20..].to_vec()),
        ],
        &HttpConfig::default(),
    );
    let lines = render(&run.events);
    assert_eq!(
        lines[lines.len() - 2..],
        [
            format!("gap#0 {}", wire.len()),
            "end#0 Complete t=400".into()
        ]
    );
    let decoded = body_of(&run, 0);
    assert!(plain.starts_with(&decoded));
    assert_eq!(run.stats.bodies_undecodable, 1);
}

#[test]
fn unknown_coding_is_undecodable() {
    let run = check(
        &[
            w("GET /c HTTP/1.1\r\n\r\n"),
            r(b"HTTP/1.1 200 OK\r\nContent-Encoding: compress\r\nContent-Length: 4\r\n\r\n\x1f\x9d\x90\x00"),
        ],
        &[
            r#"req#0 Client GET /c wire=19 t=100..100 body total=0 missing=0 head="""#,
            "head#0 200 t=200",
            "gap#0 4",
            "end#0 Complete t=200",
        ],
    );
    assert_eq!(run.stats.bodies_undecodable, 1);
}

#[test]
fn gap_in_a_head_resyncs_and_skips_its_response() {
    let run = check(
        &[
            w("POST /v1/x HTTP/1.1\r\nContent-Le"),
            Step::Gap(Direction::Write, 10),
            w("ngth: 2\r\n\r\n{}"),
            r("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nAA"),
            w("GET /ok HTTP/1.1\r\n\r\n"),
            r("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nBB"),
        ],
        &[
            r#"req#0 Client GET /ok wire=20 t=500..500 body total=0 missing=0 head="""#,
            "head#0 200 t=600",
            r#"body#0 t=600 "BB""#,
            "end#0 Complete t=600",
        ],
    );
    let s = &run.stats;
    assert_eq!((s.resyncs, s.orphan_responses), (1, 1));
}

#[test]
fn invalid_content_length_is_a_parse_error() {
    for bad in [
        "Content-Length: -5",
        "Content-Length: 5\r\nContent-Length: 6",
        "Content-Length: 1000000000000000000000000000000",
    ] {
        let run = check(
            &[
                w(format!("POST /x HTTP/1.1\r\n{bad}\r\n\r\n")),
                r("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"),
                w("GET /y HTTP/1.1\r\n\r\n"),
                r("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
            ],
            &[
                r#"req#0 Client GET /y wire=19 t=300..300 body total=0 missing=0 head="""#,
                "head#0 200 t=400",
                "end#0 Complete t=400",
            ],
        );
        let s = &run.stats;
        assert_eq!(
            (s.parse_errors, s.resyncs, s.orphan_responses),
            (1, 1, 1),
            "{bad}"
        );
    }
}

#[test]
fn oldest_connection_is_evicted_with_its_events() {
    let config = HttpConfig {
        max_connections: 2,
        ..HttpConfig::default()
    };
    let mut tracker = HttpTracker::new(config);
    let mut events = Vec::new();
    for conn in 1..=3u64 {
        let rec = record(conn, Direction::Write, conn * 10, b"GET / HTTP/1.1\r\n\r\n");
        tracker.on_stream_item(
            &StreamItem::Data {
                key: ConnKey { tgid: 7, conn },
                offset: 0,
                record: &rec,
            },
            &mut |e| take(&mut events, e),
        );
    }
    assert_eq!(tracker.open_connections(), 2);
    assert_eq!(tracker.stats().connections_evicted, 1);
    let abandoned: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Ev::Abandoned { conn, ktime, .. } => Some((conn.conn, *ktime)),
            _ => None,
        })
        .collect();
    assert_eq!(abandoned, [(1, 10)]);
    tracker.on_stream_item(
        &StreamItem::Closed {
            key: ConnKey { tgid: 7, conn: 3 },
            reason: CloseReason::Freed,
        },
        &mut |e| take(&mut events, e),
    );
    assert_eq!(tracker.open_connections(), 1);
}

/// Random captures built from HTTP fragments, gaps and closes, across a few connections: the
/// stage never panics, and every connection's events form well-ordered exchanges.
#[test]
fn random_captures_keep_exchanges_well_formed() {
    let gz = gzip(b"data: compressed\n\n");
    let fragments: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        b"HEAD / HTTP/1.1\r\n\r\n".to_vec(),
        b"POST /x HTTP/1.1\r\nContent-Length: 4\r\n\r\n".to_vec(),
        b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n".to_vec(),
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
        b"HTTP/1.1 100 Continue\r\n\r\n".to_vec(),
        b"HTTP/1.1 200 OK\r\n\r\n".to_vec(),
        cat(&[
            format!(
                "HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\n\r\n",
                gz.len()
            )
            .as_bytes(),
            &gz,
        ]),
        b"4\r\nabcd\r\n".to_vec(),
        b"0\r\n\r\n".to_vec(),
        b"abcd".to_vec(),
        b"\r\n".to_vec(),
        b"\x00\xff\x1f\x8b".to_vec(),
    ];
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    for _ in 0..300 {
        let mut tracker = HttpTracker::new(HttpConfig {
            max_connections: 3,
            body_head_limit: 8,
            body_tail_limit: 4,
            max_head_bytes: 128,
            max_decoded_body: 64,
        });
        let mut events = Vec::new();
        let mut offsets: HashMap<(u64, u8), u64> = HashMap::new();
        for step in 0..60 {
            let conn = 1 + next(4);
            let key = ConnKey { tgid: 7, conn };
            let dir = if next(2) == 0 {
                Direction::Write
            } else {
                Direction::Read
            };
            let off = offsets.entry((conn, dir as u8)).or_default();
            match next(12) {
                0 => {
                    let len = next(50);
                    tracker.on_stream_item(
                        &StreamItem::Gap {
                            key,
                            direction: dir,
                            offset: *off,
                            len,
                            cause: GapCause::Lost,
                        },
                        &mut |e| take(&mut events, e),
                    );
                    *off += len;
                }
                1 => {
                    tracker.on_stream_item(
                        &StreamItem::Closed {
                            key,
                            reason: CloseReason::Freed,
                        },
                        &mut |e| take(&mut events, e),
                    );
                    offsets.retain(|k, _| k.0 != conn);
                }
                _ => {
                    let frag = &fragments[next(fragments.len() as u64) as usize];
                    let cut = next(frag.len() as u64 + 1) as usize;
                    for piece in [&frag[..cut], &frag[cut..]] {
                        if piece.is_empty() {
                            continue;
                        }
                        let rec = record(conn, dir, step, piece);
                        let off = offsets.entry((conn, dir as u8)).or_default();
                        tracker.on_stream_item(
                            &StreamItem::Data {
                                key,
                                offset: *off,
                                record: &rec,
                            },
                            &mut |e| take(&mut events, e),
                        );
                        *off += piece.len() as u64;
                    }
                }
            }
        }
        for conn in 1..=4 {
            tracker.on_stream_item(
                &StreamItem::Closed {
                    key: ConnKey { tgid: 7, conn },
                    reason: CloseReason::Freed,
                },
                &mut |e| take(&mut events, e),
            );
        }
        assert_eq!(tracker.open_connections(), 0);
        assert_well_formed(&events);
    }
}

/// Per connection incarnation and exchange: `Request`, then either `Abandoned`, or
/// `ResponseHead`, body pieces and gaps, `ResponseEnd`; every exchange finished at the end.
fn assert_well_formed(events: &[Ev]) {
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum St {
        Requested,
        Responding,
        Done,
    }
    let mut state: HashMap<(ConnKey, u64), St> = HashMap::new();
    // Exchange numbers restart when a connection is closed and reopened: a `Request` for a
    // finished exchange starts a new incarnation.
    for ev in events {
        let (conn, exchange) = match ev {
            Ev::Request { conn, exchange, .. }
            | Ev::Head { conn, exchange, .. }
            | Ev::Body { conn, exchange, .. }
            | Ev::Gap { conn, exchange, .. }
            | Ev::End { conn, exchange, .. }
            | Ev::Abandoned { conn, exchange, .. } => (*conn, *exchange),
        };
        let st = state.get(&(conn, exchange)).copied();
        let new = match (ev, st) {
            (Ev::Request { .. }, None | Some(St::Done)) => St::Requested,
            (Ev::Head { .. }, Some(St::Requested)) => St::Responding,
            (Ev::Body { .. } | Ev::Gap { .. }, Some(St::Responding)) => St::Responding,
            (Ev::End { .. }, Some(St::Responding)) => St::Done,
            (Ev::Abandoned { .. }, Some(St::Requested)) => St::Done,
            _ => panic!("{ev:?} in state {st:?}\n{:#?}", render(events)),
        };
        state.insert((conn, exchange), new);
    }
    for (k, st) in state {
        assert_eq!(st, St::Done, "{k:?} unfinished\n{:#?}", render(events));
    }
}

/// Throughput of the whole stage on a realistic mix (release build):
/// `cargo test --release -p tokentap --lib http::tracker::tests::throughput -- --ignored --nocapture`
#[test]
#[ignore = "benchmark"]
fn throughput() {
    use std::time::Instant;

    let body = json_body();
    let mut request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: api.openai.com\r\nContent-Type: application/json\r\nAuthorization: Bearer x\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    let head =
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";
    let event = chunk(b"data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" token\"}}]}\n\n");
    let big = vec![b'x'; 1 << 20];
    let big_response = cat(&[
        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", big.len()).as_bytes(),
        &big,
    ]);
    let mut records: Vec<(Direction, Vec<u8>)> = Vec::new();
    for i in 0..200 {
        records.push((Direction::Write, request.clone()));
        if i % 10 == 0 {
            // A big non-streaming body, read 16 KiB at a time.
            for piece in big_response.chunks(16 << 10) {
                records.push((Direction::Read, piece.to_vec()));
            }
        } else {
            records.push((Direction::Read, head.to_vec()));
            for _ in 0..300 {
                records.push((Direction::Read, event.clone()));
            }
            records.push((Direction::Read, b"0\r\n\r\n".to_vec()));
        }
    }
    let total: usize = records.iter().map(|(_, d)| d.len()).sum();
    let mut tracker = HttpTracker::new(HttpConfig::default());
    let mut offsets = [0u64; 2];
    let mut events = 0usize;
    let start = Instant::now();
    for (i, (dir, data)) in records.iter().enumerate() {
        let rec = record(1, *dir, i as u64, data);
        tracker.on_stream_item(
            &StreamItem::Data {
                key: KEY,
                offset: offsets[*dir as usize],
                record: &rec,
            },
            &mut |_| events += 1,
        );
        offsets[*dir as usize] += data.len() as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(tracker.stats().requests, 200);
    println!(
        "{} MB in {} records, {events} events: {:.0} MB/s",
        total >> 20,
        records.len(),
        total as f64 / secs / 1e6
    );
}

#[test]
fn tracker_can_move_between_threads() {
    fn assert_send<T: Send>() {}
    assert_send::<HttpTracker>();
}

/// Real captures with random bytes flipped, inserted or removed: the stage never panics and
/// every exchange it reports is well formed.
#[test]
fn mutated_captures_keep_exchanges_well_formed() {
    let plain = json_body();
    let coded = |coding: &str, wire: &[u8]| {
        cat(&[
            &response_head(
                "200 OK",
                &[
                    &format!("Content-Encoding: {coding}"),
                    "Transfer-Encoding: chunked",
                ],
            ),
            &chunk(wire),
            b"0\r\n\r\n",
        ])
    };
    let request = cat(&[
        b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 17\r\n\r\n{\"model\":\"gpt-x\"}GET /v1/models HTTP/1.1\r\n\r\nHEAD /x HTTP/1.1\r\n\r\n",
        b"POST /u HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Encoding: gzip\r\n\r\n",
        &chunk(&gzip(b"{\"a\":1}")),
        b"0\r\n\r\n",
    ]);
    let response = cat(&[
        &coded("gzip", &gzip(&plain)),
        &coded("zstd", &zstd(&plain)),
        &coded("br", &brotli_stored(&[b"data: x\n\n", b"data: y\n\n"])),
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nokok",
    ]);
    let iterations = std::env::var("MUTATION_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let mut x: u64 = 0x0bad_5eed_dead_beef;
    let mut next = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n.max(1)
    };
    for _ in 0..iterations {
        let mut streams = [request.clone(), response.clone()];
        for s in &mut streams {
            for _ in 0..next(8) {
                let at = next(s.len() as u64) as usize;
                match next(3) {
                    0 => s[at] = next(256) as u8,
                    1 => s.insert(at, next(256) as u8),
                    _ => {
                        s.remove(at);
                    }
                }
            }
        }
        let mut tracker = HttpTracker::new(HttpConfig {
            max_decoded_body: 1 << 12,
            ..HttpConfig::default()
        });
        let mut events = Vec::new();
        let size = 1 + next(300) as usize;
        let mut pieces = [streams[0].chunks(size), streams[1].chunks(size)];
        let mut offsets = [0u64; 2];
        let mut ktime = 0;
        loop {
            let mut progressed = false;
            for (i, dir) in [Direction::Write, Direction::Read].into_iter().enumerate() {
                let Some(piece) = pieces[i].next() else {
                    continue;
                };
                progressed = true;
                ktime += 1;
                if next(10) == 0 {
                    // Lost: the stream goes on after a gap.
                    tracker.on_stream_item(
                        &StreamItem::Gap {
                            key: KEY,
                            direction: dir,
                            offset: offsets[i],
                            len: piece.len() as u64,
                            cause: GapCause::Lost,
                        },
                        &mut |e| take(&mut events, e),
                    );
                } else {
                    let rec = record(KEY.conn, dir, ktime, piece);
                    tracker.on_stream_item(
                        &StreamItem::Data {
                            key: KEY,
                            offset: offsets[i],
                            record: &rec,
                        },
                        &mut |e| take(&mut events, e),
                    );
                }
                offsets[i] += piece.len() as u64;
            }
            if !progressed {
                break;
            }
        }
        tracker.on_stream_item(
            &StreamItem::Closed {
                key: KEY,
                reason: CloseReason::Freed,
            },
            &mut |e| take(&mut events, e),
        );
        assert_well_formed(&events);
    }
}

#[path = "h2/tracker_tests.rs"]
mod h2_streams;
