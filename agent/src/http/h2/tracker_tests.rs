//! HTTP/2 through the whole HTTP stage: golden byte streams (hand-built frames, and real
//! captures of the `h2` package's client and server in `fixtures/`, written by
//! tests/clients/h2_fixtures.py) fed whole, split at every boundary and byte by byte.

use super::*;
use crate::http::h2::{
    PREFACE,
    frame::{CONTINUATION, DATA, END_HEADERS, END_STREAM, HEADERS, PADDED, RST_STREAM, SETTINGS},
};

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK literal field without indexing, plain strings.
fn lit(name: &str, value: &str) -> Vec<u8> {
    let mut b = vec![0x00, name.len() as u8];
    b.extend_from_slice(name.as_bytes());
    b.push(value.len() as u8);
    b.extend_from_slice(value.as_bytes());
    b
}

/// An HPACK literal field with incremental indexing, new name, plain strings.
fn indexed_lit(name: &str, value: &str) -> Vec<u8> {
    let mut b = lit(name, value);
    b[0] = 0x40;
    b
}

const GET: u8 = 0x82;
const POST: u8 = 0x83;
const HTTPS: u8 = 0x87;
const STATUS_200: u8 = 0x88;

fn request_block(method: u8, path: &str) -> Vec<u8> {
    cat(&[
        &[method, HTTPS],
        &lit(":path", path),
        &lit(":authority", "api.openai.com"),
        &lit("authorization", "Bearer sk-secret"),
    ])
}

fn client_preface() -> Vec<u8> {
    cat(&[PREFACE, &frame(SETTINGS, 0, 0, &[0, 4, 0, 1, 0, 0])])
}

fn server_preface() -> Vec<u8> {
    frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100])
}

#[test]
fn hand_built_exchange_with_continuation_and_padding() {
    let block = request_block(POST, "/v1/chat/completions?key=abc");
    let (first, rest) = block.split_at(5);
    let run = check(
        &[
            W(client_preface()),
            R(server_preface()),
            W(cat(&[
                &frame(HEADERS, PADDED, 1, &cat(&[&[2], first, &[0, 0]])),
                &frame(CONTINUATION, END_HEADERS, 1, rest),
                &frame(DATA, 0, 1, b"{\"a\":"),
                &frame(DATA, END_STREAM | PADDED, 1, b"\x031}\0\0\0"),
            ])),
            R(frame(
                HEADERS,
                END_HEADERS,
                1,
                &cat(&[&[STATUS_200], &lit("content-type", "application/json")]),
            )),
            R(frame(DATA, 0, 1, b"{\"ok\":")),
            R(frame(DATA, END_STREAM, 1, b"true}")),
            Close,
        ],
        &[
            r#"req#0 Client POST /v1/chat/completions?key=REDACTED wire=147 t=300..300 body total=7 missing=0 head="{\"a\":1}""#,
            "head#0 200 t=400",
            r#"body#0 t=500 "{\"ok\":""#,
            r#"body#0 t=600 "true}""#,
            "end#0 Complete t=600",
        ],
    );
    let req = requests(&run)[0];
    assert_eq!(req.headers.get("host"), Some("api.openai.com"));
    assert_eq!(req.headers.get("authorization"), None);
    assert_eq!(run.stats.h2_connections, 1);
    assert_eq!(run.stats.non_http_connections, 0);
    assert_eq!(run.stats.resyncs, 0);
}

#[test]
fn server_role_and_server_settings_first() {
    // A server writes its SETTINGS before it reads the client's preface.
    let run = check(
        &[
            W(server_preface()),
            R(cat(&[
                &client_preface(),
                &frame(
                    HEADERS,
                    END_HEADERS | END_STREAM,
                    1,
                    &request_block(GET, "/v1/models"),
                ),
            ])),
            W(cat(&[
                &frame(HEADERS, END_HEADERS, 1, &[STATUS_200]),
                &frame(DATA, END_STREAM, 1, b"[]"),
            ])),
        ],
        &[
            r#"req#0 Server GET /v1/models wire=88 t=200..200 body total=0 missing=0 head="""#,
            "head#0 200 t=300",
            r#"body#0 t=300 "[]""#,
            "end#0 Complete t=300",
        ],
    );
    assert_eq!(run.stats.h2_connections, 1);
    assert_eq!(run.stats.resyncs, 0);
}

#[test]
fn interleaved_streams_reset_and_interim() {
    check(
        &[
            W(client_preface()),
            W(frame(
                HEADERS,
                END_HEADERS | END_STREAM,
                1,
                &request_block(GET, "/a"),
            )),
            W(frame(
                HEADERS,
                END_HEADERS | END_STREAM,
                3,
                &request_block(GET, "/b"),
            )),
            W(frame(HEADERS, END_HEADERS, 5, &request_block(POST, "/c"))),
            R(frame(
                HEADERS,
                END_HEADERS,
                3,
                &[0x08, 0x03, b'1', b'0', b'3'],
            )),
            R(frame(HEADERS, END_HEADERS, 3, &[STATUS_200])),
            R(frame(HEADERS, END_HEADERS, 1, &[STATUS_200])),
            R(frame(DATA, 0, 3, b"b1")),
            R(frame(DATA, 0, 1, b"a1")),
            R(frame(RST_STREAM, 0, 1, &[0, 0, 0, 8])),
            W(frame(RST_STREAM, 0, 5, &[0, 0, 0, 8])),
            R(cat(&[
                &frame(DATA, END_STREAM, 3, b"b2"),
                // A frame on a stream the observer does not know is ignored.
                &frame(DATA, END_STREAM, 7, b"zz"),
            ])),
        ],
        &[
            r#"req#0 Client GET /a wire=80 t=200..200 body total=0 missing=0 head="""#,
            r#"req#1 Client GET /b wire=80 t=300..300 body total=0 missing=0 head="""#,
            "head#1 200 t=600",
            "head#0 200 t=700",
            r#"body#1 t=800 "b1""#,
            r#"body#0 t=900 "a1""#,
            "end#0 Interrupted t=900",
            r#"req#2 Client POST /c wire=80 t=400..400 body total=0 missing=0 undecodable head="""#,
            "abandoned#2 t=1100",
            r#"body#1 t=1200 "b2""#,
            "end#1 Complete t=1200",
        ],
    );
}

#[test]
fn gap_inside_data_is_reported_in_place() {
    let run = check(
        &[
            W(client_preface()),
            W(frame(
                HEADERS,
                END_HEADERS | END_STREAM,
                1,
                &request_block(GET, "/a"),
            )),
            R(cat(&[
                &frame(HEADERS, END_HEADERS, 1, &[STATUS_200]),
                &frame(DATA, END_STREAM, 1, b"0123")[..11],
            ])),
            Step::Gap(Direction::Read, 1),
            r(b"3"),
        ],
        &[
            r#"req#0 Client GET /a wire=80 t=200..200 body total=0 missing=0 head="""#,
            "head#0 200 t=300",
            r#"body#0 t=300 "01""#,
            "gap#0 1",
            r#"body#0 t=500 "3""#,
            "end#0 Complete t=500",
        ],
    );
    assert_eq!(run.stats.h2_desynced, 0);
    assert_eq!(run.stats.body_gap_bytes, 1);
}

#[test]
fn gap_over_a_frame_header_desyncs_the_connection() {
    let run = check(
        &[
            W(client_preface()),
            W(frame(
                HEADERS,
                END_HEADERS | END_STREAM,
                1,
                &request_block(GET, "/a"),
            )),
            R(frame(HEADERS, END_HEADERS, 1, &[STATUS_200])),
            R(frame(DATA, 0, 1, b"01")),
            Step::Gap(Direction::Read, 12),
            // Whatever follows is not decoded: no exchange is made up from it.
            W(frame(
                HEADERS,
                END_HEADERS | END_STREAM,
                3,
                &request_block(GET, "/b"),
            )),
            R(frame(HEADERS, END_HEADERS, 3, &[STATUS_200])),
        ],
        &[
            r#"req#0 Client GET /a wire=80 t=200..200 body total=0 missing=0 head="""#,
            "head#0 200 t=300",
            r#"body#0 t=400 "01""#,
            "end#0 Interrupted t=400",
        ],
    );
    assert_eq!(run.stats.h2_desynced, 1);
    assert_eq!(run.open, 1, "remembered as ignored until closed");
}

#[test]
fn dynamic_table_shared_across_blocks_and_hpack_errors_desync() {
    // The first request adds `x-team: blue` to the client's table; the second refers to it
    // (index 62); the third refers to an entry that does not exist.
    let first = cat(&[&request_block(GET, "/a"), &indexed_lit("x-team", "blue")]);
    let second = cat(&[&request_block(GET, "/b"), &[0xbe]]);
    let third = cat(&[&request_block(GET, "/c"), &[0xc0]]);
    let run = check(
        &[
            W(client_preface()),
            W(frame(HEADERS, END_HEADERS | END_STREAM, 1, &first)),
            W(frame(HEADERS, END_HEADERS | END_STREAM, 3, &second)),
            W(frame(HEADERS, END_HEADERS | END_STREAM, 5, &third)),
        ],
        &[
            r#"req#0 Client GET /a wire=93 t=200..200 body total=0 missing=0 head="""#,
            r#"req#1 Client GET /b wire=81 t=300..300 body total=0 missing=0 head="""#,
            "abandoned#0 t=400",
            "abandoned#1 t=400",
        ],
    );
    let reqs = requests(&run);
    assert_eq!(reqs[1].headers.get("x-team"), Some("blue"));
    assert_eq!(run.stats.h2_desynced, 1);
}

#[test]
fn stream_and_header_list_limits() {
    let mut steps = vec![W(client_preface())];
    for i in 0..(MAX_STREAMS_FOR_TEST as u32 + 2) {
        steps.push(W(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            1 + 2 * i,
            &request_block(GET, "/a"),
        )));
    }
    let run = feed(&steps, &HttpConfig::default(), Split::Whole);
    assert_eq!(run.stats.requests, MAX_STREAMS_FOR_TEST as u64);
    assert_eq!(run.stats.h2_streams_over_limit, 2);

    let config = HttpConfig {
        max_head_bytes: 300,
        ..HttpConfig::default()
    };
    let big = cat(&[&request_block(GET, "/a"), &lit("x-big", &"v".repeat(120))]);
    let run = feed(
        &[
            W(client_preface()),
            W(frame(HEADERS, END_HEADERS | END_STREAM, 1, &big)),
            W(frame(
                HEADERS,
                END_HEADERS | END_STREAM,
                3,
                &request_block(GET, "/b"),
            )),
        ],
        &config,
        Split::Whole,
    );
    assert_eq!(run.stats.h2_header_lists_too_large, 1);
    assert_eq!(run.stats.requests, 1);
}

const MAX_STREAMS_FOR_TEST: usize = h2::conn::MAX_STREAMS;

/// A fixture file: one record a line, `W <hex>` or `R <hex>`.
fn load(name: &str) -> Vec<Step> {
    let path = format!("{}/src/http/h2/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("fixture");
    text.lines()
        .map(|line| {
            let (dir, hex) = line.split_once(' ').expect("direction and bytes");
            let bytes: Vec<u8> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
                .collect();
            if dir == "W" { W(bytes) } else { R(bytes) }
        })
        .collect()
}

#[test]
fn real_capture_multiplexed_json_sse_gzip() {
    let run = check(
        &load("multiplexed.h2"),
        &[
            r#"req#0 Client POST /v1/chat/completions wire=170 t=400..400 body total=87 missing=0 head="{\"model\": \"gpt-4o\", \"stream\": fa".."tent\": \"hi 1\"}]}" (87 bytes)"#,
            r#"req#1 Client POST /v1/chat/completions wire=136 t=500..500 body total=91 missing=0 head="{\"model\": \"gpt-4o-mini\", \"stream".."tent\": \"hi 2\"}]}" (91 bytes)"#,
            r#"req#2 Client POST /v1/chat/completions wire=133 t=500..500 body total=88 missing=0 head="{\"model\": \"gpt-4.1\", \"stream\": f".."tent\": \"hi 3\"}]}" (88 bytes)"#,
            r#"head#1 200 t=600"#,
            r#"body#1 t=600 "data: {\"id\": \"c\", \"object\": \"cha".."nt\": \"Hel\"}}]}\n\n" (134 bytes)"#,
            r#"head#0 200 t=700"#,
            r#"body#0 t=700 "{\"id\": \"chatcmpl-1\", \"object\": \"".."al_tokens\": 17}}" (250 bytes)"#,
            r#"end#0 Complete t=700"#,
            r#"body#1 t=700 "data: {\"id\": \"c\", \"object\": \"cha".."ent\": \"lo\"}}]}\n\n" (133 bytes)"#,
            r#"head#2 200 t=800"#,
            r#"body#2 t=900 "{\"id\": \"chatcmpl-1\", \"object\": \"".."al_tokens\": 29}}" (251 bytes)"#,
            r#"end#2 Complete t=900"#,
            r#"body#1 t=900 "data: {\"id\": \"c\", \"object\": \"cha".."\n\ndata: [DONE]\n\n" (183 bytes)"#,
            r#"end#1 Complete t=900"#,
        ],
    );
    for req in requests(&run) {
        assert_eq!(req.headers.get("host"), Some("api.openai.com"));
        assert_eq!(req.headers.get("authorization"), None);
        assert_eq!(req.headers.get("content-type"), Some("application/json"));
    }
    assert_eq!(run.stats.h2_connections, 1);
    assert_eq!(run.stats.bodies_undecodable, 0);
    // The gzip body decoded whole; the event stream ends with its terminator.
    let json: serde_json::Value = serde_json::from_slice(&body_of(&run, 2)).expect("json");
    assert_eq!(json["usage"]["total_tokens"], 29);
    assert!(body_of(&run, 1).ends_with(b"data: [DONE]\n\n"));
}

#[test]
fn real_capture_dynamic_table_eviction() {
    let steps = load("many.h2");
    let path = format!(
        "{}/src/http/h2/fixtures/many.expected.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let expected: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(path).expect("expected")).expect("json");
    let whole = feed(&steps, &HttpConfig::default(), Split::Whole);
    let bytes = feed(&steps, &HttpConfig::default(), Split::Bytes);
    assert!(whole.events == bytes.events, "byte by byte differs");
    assert_eq!(whole.stats, bytes.stats);
    let reqs = requests(&whole);
    assert_eq!(reqs.len(), expected.len());
    let heads: Vec<&ResponseHead> = whole
        .events
        .iter()
        .filter_map(|e| match e {
            Ev::Head { head, .. } => Some(head),
            _ => None,
        })
        .collect();
    for (i, want) in expected.iter().enumerate() {
        let req = reqs[i];
        assert_eq!(req.target, want["path"].as_str().expect("valid test input"));
        assert_eq!(
            req.headers.get("x-request-id"),
            want["request_id"].as_str(),
            "request {i}"
        );
        assert_eq!(
            req.body.complete(),
            Some(
                want["request_body"]
                    .as_str()
                    .expect("valid test input")
                    .as_bytes()
            )
        );
        assert_eq!(heads[i].headers.get("x-trace"), want["trace"].as_str());
        assert_eq!(
            body_of(&whole, i as u64),
            want["response_body"]
                .as_str()
                .expect("valid test input")
                .as_bytes()
        );
    }
    assert_eq!(whole.stats.h2_desynced, 0);
    // Each side's varying header alone adds more than a 4096-byte table holds: both dynamic
    // tables evicted entries while the requests went on.
    for (name, key) in [("x-request-id", "request_id"), ("x-trace", "trace")] {
        let added: usize = expected
            .iter()
            .map(|e| name.len() + e[key].as_str().map_or(0, str::len) + 32)
            .sum();
        assert!(added > 4096, "{name}: {added}");
    }
}

#[test]
fn header_table_size_setting_allows_a_larger_table() {
    // The client grows its encoder's table to 8192 (a size update at the start of a block):
    // allowed only once the server advertised SETTINGS_HEADER_TABLE_SIZE 8192.
    let block = cat(&[&[0x3f, 0xe1, 0x3f], &request_block(GET, "/a")]);
    let steps = |settings: &[u8]| {
        vec![
            W(client_preface()),
            R(frame(SETTINGS, 0, 0, settings)),
            W(frame(HEADERS, END_HEADERS | END_STREAM, 1, &block)),
        ]
    };
    let allowed = check(
        &steps(&[0, 1, 0, 0, 0x20, 0]),
        &[r#"req#0 Client GET /a wire=83 t=300..300 body total=0 missing=0 head="""#],
    );
    assert_eq!(allowed.stats.h2_desynced, 0);
    let refused = check(&steps(&[0, 3, 0, 0, 0, 100]), &[]);
    assert_eq!(refused.stats.h2_desynced, 1);
}

/// The multiplexed capture through the HTTP and LLM stages: each stream is one LLM call with
/// its own model and usage, whatever the order its frames came in.
#[test]
fn real_capture_through_the_llm_stage() {
    use crate::llm::{ExchangeTracker, ProcessContext, ProviderConfig};

    let steps = load("multiplexed.h2");
    let mut http = HttpTracker::new(HttpConfig::default());
    let mut llm = ExchangeTracker::new(ProviderConfig::default());
    let ctx = ProcessContext {
        pid: 7,
        executable: "python3".into(),
        container_id: None,
        service_name_env: None,
        systemd_unit: None,
    };
    let unix = |k: u64| i128::from(k);
    let mut records = Vec::new();
    let mut offsets = [0u64; 2];
    for (i, step) in steps.iter().enumerate() {
        let (dir, data) = match step {
            W(d) => (Direction::Write, d),
            R(d) => (Direction::Read, d),
            _ => continue,
        };
        // Capture times a millisecond apart.
        let rec = record(KEY.conn, dir, (i as u64 + 1) * 1_000_000, data);
        http.on_stream_item(
            &StreamItem::Data {
                key: KEY,
                offset: offsets[dir as usize],
                record: &rec,
            },
            &mut |ev| llm.on_http_event(&ev, &ctx, &unix, &mut |r| records.push(r)),
        );
        offsets[dir as usize] += data.len() as u64;
    }
    records.sort_by_key(|r| r.request_model.clone());
    let summary: Vec<_> = records
        .iter()
        .map(|r| {
            (
                r.request_model.as_deref().unwrap_or(""),
                r.streaming,
                r.tokens.input,
                r.tokens.output,
                r.time_to_first_chunk_s.is_some(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("gpt-4.1", false, Some(20), Some(9), false),
            ("gpt-4o", false, Some(10), Some(7), false),
            ("gpt-4o-mini", true, Some(12), Some(5), true),
        ]
    );
    assert!(records.iter().all(|r| r.provider == "openai"));
}

/// Writes the HTTP/2 captures as fuzz seeds for `fuzz/fuzz_targets/http_llm.rs` (role byte,
/// record-size byte, the client's bytes, `\0\xff\0\xff`, the server's bytes). Runs only when
/// `TOKENTAP_WRITE_FUZZ_SEEDS=DIR` is set (`cargo xtask fuzz` does that).
#[test]
fn write_fuzz_seeds() {
    let Some(dir) = std::env::var_os("TOKENTAP_WRITE_FUZZ_SEEDS") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    std::fs::create_dir_all(&dir).expect("seed dir");
    for name in ["multiplexed", "many"] {
        let (mut client, mut server) = (Vec::new(), Vec::new());
        for step in load(&format!("{name}.h2")) {
            match step {
                W(d) => client.extend_from_slice(&d),
                R(d) => server.extend_from_slice(&d),
                _ => {}
            }
        }
        let seed = [&[0u8, 255][..], &client, b"\0\xff\0\xff", &server].concat();
        std::fs::write(dir.join(format!("h2_{name}")), seed).expect("write seed");
    }
}
