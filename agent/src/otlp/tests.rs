use std::time::Duration;

use prometheus::Registry;

use super::{
    Collector, Endpoint, EndpointError, ExporterConfig,
    exporter::{ExporterMetrics, post},
    parse_headers,
    proto::{self, KeyValue, Value},
    span::{IdGenerator, ParentContext, attr, parse_traceparent, span_of},
    start,
};
use crate::{
    exchanges::RecordSink,
    llm::{Cost, ExchangeRecord, RoleName, Tokens},
};

// ---- a minimal protobuf decoder, independent of the writer ----

#[derive(Debug, Clone, PartialEq)]
enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Len(&'a [u8]),
    Fixed32(u32),
}

fn varint(buf: &[u8], at: &mut usize) -> u64 {
    let mut v = 0u64;
    let mut shift = 0;
    loop {
        let b = buf[*at];
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return v;
        }
        shift += 7;
    }
}

fn fields(buf: &[u8]) -> Vec<(u32, Wire<'_>)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let tag = varint(buf, &mut at);
        let field = (tag >> 3) as u32;
        let w = match tag & 7 {
            0 => Wire::Varint(varint(buf, &mut at)),
            1 => {
                let v = u64::from_le_bytes(buf[at..at + 8].try_into().expect("8 bytes"));
                at += 8;
                Wire::Fixed64(v)
            }
            2 => {
                let len = varint(buf, &mut at) as usize;
                let v = &buf[at..at + len];
                at += len;
                Wire::Len(v)
            }
            5 => {
                let v = u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes"));
                at += 4;
                Wire::Fixed32(v)
            }
            other => panic!("unexpected wire type {other}"),
        };
        out.push((field, w));
    }
    assert_eq!(at, buf.len(), "message ends exactly at its length");
    out
}

fn len_fields(buf: &[u8], field: u32) -> Vec<&[u8]> {
    fields(buf)
        .into_iter()
        .filter_map(|(f, w)| match w {
            Wire::Len(b) if f == field => Some(b),
            _ => None,
        })
        .collect()
}

fn one<'a>(buf: &'a [u8], field: u32) -> Option<Wire<'a>> {
    fields(buf)
        .into_iter()
        .find(|(f, _)| *f == field)
        .map(|(_, w)| w)
}

fn decode_any(buf: &[u8]) -> Value {
    match fields(buf).first().expect("a value").clone() {
        (1, Wire::Len(b)) => Value::String(String::from_utf8(b.to_vec()).expect("utf-8")),
        (2, Wire::Varint(v)) => Value::Bool(v != 0),
        (3, Wire::Varint(v)) => Value::Int(v as i64),
        (4, Wire::Fixed64(v)) => Value::Double(f64::from_bits(v)),
        (5, Wire::Len(b)) => Value::StringArray(
            len_fields(b, 1)
                .into_iter()
                .map(|v| match decode_any(v) {
                    Value::String(s) => s,
                    other => panic!("array of {other:?}"),
                })
                .collect(),
        ),
        other => panic!("unexpected AnyValue {other:?}"),
    }
}

fn decode_attrs(buf: &[u8], field: u32) -> Vec<(String, Value)> {
    len_fields(buf, field)
        .into_iter()
        .map(|kv| {
            let Some(Wire::Len(k)) = one(kv, 1) else {
                panic!("key")
            };
            let Some(Wire::Len(v)) = one(kv, 2) else {
                panic!("value")
            };
            (String::from_utf8(k.to_vec()).expect("utf-8"), decode_any(v))
        })
        .collect()
}

fn attr_of<'a>(attrs: &'a [(String, Value)], key: &str) -> Option<&'a Value> {
    attrs.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

// ---- fixtures ----

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn record() -> ExchangeRecord {
    ExchangeRecord {
        provider: "openai".into(),
        operation: "chat".into(),
        api: "openai.chat_completions".into(),
        request_model: Some("gpt-4o".into()),
        response_model: Some("gpt-4o-2024-08-06".into()),
        response_id: Some("chatcmpl-123".into()),
        streaming: true,
        role: Some(RoleName::Client),
        server_address: "api.openai.com".into(),
        server_port: 443,
        http_status: Some(200),
        error_type: None,
        finish_reasons: vec!["stop".into()],
        tokens: Tokens {
            input: Some(120),
            output: Some(40),
            cache_read: Some(64),
            cache_write: None,
            reasoning: Some(8),
            estimated: false,
        },
        start_unix_ns: 1_700_000_000_000_000_000,
        time_to_first_chunk_s: Some(0.25),
        duration_s: Some(1.5),
        pid: 4242,
        executable: "python3".into(),
        container_id: Some("ab".repeat(32)),
        cost: Some(Cost {
            total_usd: 0.0123,
            ..Cost::default()
        }),
        ..ExchangeRecord::default()
    }
}

// ---- tests ----

#[test]
fn span_attributes_follow_the_genai_conventions() {
    let span = span_of(&record(), &mut IdGenerator::with_seed(7));
    assert_eq!(span.name, "chat gpt-4o");
    assert_eq!(span.kind, proto::SPAN_KIND_CLIENT);
    assert_eq!(span.start_unix_ns, 1_700_000_000_000_000_000);
    assert_eq!(span.end_unix_ns, 1_700_000_001_500_000_000);
    assert_eq!(span.parent_span_id, None);
    assert_eq!(span.error, None);
    let get = |k: &str| {
        span.attributes
            .iter()
            .find(|kv| kv.key == k)
            .map(|kv| kv.value.clone())
    };
    let s = |v: &str| Some(Value::String(v.into()));
    assert_eq!(get(attr::PROVIDER), s("openai"));
    assert_eq!(get(attr::OPERATION), s("chat"));
    assert_eq!(get(attr::REQUEST_MODEL), s("gpt-4o"));
    assert_eq!(get(attr::RESPONSE_MODEL), s("gpt-4o-2024-08-06"));
    assert_eq!(get(attr::RESPONSE_ID), s("chatcmpl-123"));
    assert_eq!(
        get(attr::FINISH_REASONS),
        Some(Value::StringArray(vec!["stop".into()]))
    );
    assert_eq!(get(attr::INPUT_TOKENS), Some(Value::Int(120)));
    assert_eq!(get(attr::OUTPUT_TOKENS), Some(Value::Int(40)));
    assert_eq!(get(attr::CACHE_READ_TOKENS), Some(Value::Int(64)));
    assert_eq!(get(attr::CACHE_CREATION_TOKENS), None, "unknown, not zero");
    assert_eq!(get(attr::REASONING_TOKENS), Some(Value::Int(8)));
    assert_eq!(get(attr::STREAM), Some(Value::Bool(true)));
    assert_eq!(get(attr::TIME_TO_FIRST_CHUNK), Some(Value::Double(0.25)));
    assert_eq!(get(attr::SERVER_ADDRESS), s("api.openai.com"));
    assert_eq!(get(attr::SERVER_PORT), Some(Value::Int(443)));
    assert_eq!(get(attr::HTTP_STATUS), Some(Value::Int(200)));
    assert_eq!(get(attr::ERROR_TYPE), None);
    assert_eq!(get(attr::COST_USD), Some(Value::Double(0.0123)));

    // An error, the server role, no request model.
    let mut r = record();
    r.error_type = Some("rate_limit_exceeded".into());
    r.http_status = Some(429);
    r.role = Some(RoleName::Server);
    r.request_model = None;
    r.cost = None;
    let span = span_of(&r, &mut IdGenerator::with_seed(7));
    assert_eq!(span.name, "chat gpt-4o-2024-08-06");
    assert_eq!(span.kind, proto::SPAN_KIND_SERVER);
    // A 4xx is the client's fault: a server span leaves its status unset, error.type says it.
    assert_eq!(span.error, None);
    assert!(span.attributes.iter().any(|kv| kv.key == attr::ERROR_TYPE));
    assert!(!span.attributes.iter().any(|kv| kv.key == attr::COST_USD));
    // The same call seen from the client is an error span; a 5xx is one for the server too.
    r.role = Some(RoleName::Client);
    let span = span_of(&r, &mut IdGenerator::with_seed(7));
    assert_eq!(span.error.as_deref(), Some("rate_limit_exceeded"));
    r.role = Some(RoleName::Server);
    r.http_status = Some(503);
    r.error_type = Some("503".into());
    let span = span_of(&r, &mut IdGenerator::with_seed(7));
    assert_eq!(span.error.as_deref(), Some("503"));
}

#[test]
fn traceparent_makes_the_span_a_child_of_the_callers() {
    let parent = parse_traceparent(TRACEPARENT).expect("valid");
    assert_eq!(
        parent,
        ParentContext {
            trace_id: [
                0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e,
                0x47, 0x36
            ],
            span_id: [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7],
            flags: 1,
        }
    );
    assert_eq!(
        parse_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
        None
    );
    let mut ids = IdGenerator::with_seed(1);
    let mut r = record();
    r.traceparent = Some(TRACEPARENT.into());
    let child = span_of(&r, &mut ids);
    assert_eq!(child.trace_id, parent.trace_id);
    assert_eq!(child.parent_span_id, Some(parent.span_id));
    assert_ne!(child.span_id, parent.span_id);
    assert_eq!(child.flags & 0xff, 1);
    assert_ne!(child.flags & proto::FLAGS_CONTEXT_IS_REMOTE, 0);

    let a = span_of(&record(), &mut ids);
    let b = span_of(&record(), &mut ids);
    assert_eq!(a.parent_span_id, None);
    assert_ne!(a.trace_id, b.trace_id, "a fresh trace per untraced call");
    assert_ne!(a.trace_id, [0; 16]);
    assert_ne!(a.span_id, b.span_id);
}

#[test]
fn encoded_request_decodes_back() {
    let mut r = record();
    r.traceparent = Some(TRACEPARENT.into());
    r.error_type = Some("server_error".into());
    let span = span_of(&r, &mut IdGenerator::with_seed(3));
    let resource = proto::resource(&[
        KeyValue::new(attr::SERVICE_NAME, Value::String("python3".into())),
        KeyValue::new(attr::PROCESS_PID, Value::Int(4242)),
    ]);
    let encoded = span.encode();
    let body = proto::export_request([(&resource[..], vec![&encoded[..]])], "tokentap", "0.1.0");

    let rs = len_fields(&body, proto::REQUEST_RESOURCE_SPANS);
    assert_eq!(rs.len(), 1);
    let Some(Wire::Len(res)) = one(rs[0], proto::RESOURCE_SPANS_RESOURCE) else {
        panic!("resource")
    };
    let res_attrs = decode_attrs(res, proto::RESOURCE_ATTRIBUTES);
    assert_eq!(
        attr_of(&res_attrs, "service.name"),
        Some(&Value::String("python3".into()))
    );
    assert_eq!(attr_of(&res_attrs, "process.pid"), Some(&Value::Int(4242)));
    let ss = len_fields(rs[0], proto::RESOURCE_SPANS_SCOPE_SPANS);
    let Some(Wire::Len(scope)) = one(ss[0], proto::SCOPE_SPANS_SCOPE) else {
        panic!("scope")
    };
    assert_eq!(one(scope, 1), Some(Wire::Len(b"tokentap")));
    let spans = len_fields(ss[0], proto::SCOPE_SPANS_SPANS);
    assert_eq!(spans.len(), 1);
    let s = spans[0];
    assert_eq!(one(s, 1), Some(Wire::Len(&span.trace_id[..])));
    assert_eq!(one(s, 2), Some(Wire::Len(&span.span_id[..])));
    assert_eq!(
        one(s, 4),
        Some(Wire::Len(
            &[0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7][..]
        ))
    );
    assert_eq!(one(s, 5), Some(Wire::Len(b"chat gpt-4o")));
    assert_eq!(one(s, 6), Some(Wire::Varint(3)));
    assert_eq!(one(s, 7), Some(Wire::Fixed64(1_700_000_000_000_000_000)));
    assert_eq!(one(s, 8), Some(Wire::Fixed64(1_700_000_001_500_000_000)));
    assert!(matches!(one(s, 16), Some(Wire::Fixed32(f)) if f & 0xff == 1));
    let Some(Wire::Len(status)) = one(s, 15) else {
        panic!("status")
    };
    assert_eq!(one(status, 2), Some(Wire::Len(b"server_error")));
    assert_eq!(one(status, 3), Some(Wire::Varint(2)));
    let attrs = decode_attrs(s, 9);
    let expected: Vec<(String, Value)> = span
        .attributes
        .iter()
        .map(|kv| (kv.key.to_owned(), kv.value.clone()))
        .collect();
    assert_eq!(attrs, expected, "every attribute round-trips");
}

#[test]
fn known_bytes() {
    // Field 1 varint 150 is the protobuf documentation's example: 08 96 01.
    let mut w = proto::Writer::new();
    w.uint(1, 150);
    assert_eq!(w.buf, [0x08, 0x96, 0x01]);
    let mut w = proto::Writer::new();
    w.key_value(9, &KeyValue::new("k", Value::Int(-1)));
    // 4a 10 | 0a 01 "k" | 12 0b | 18 ff ff ff ff ff ff ff ff ff 01
    let mut expected = vec![0x4a, 0x10, 0x0a, 0x01, b'k', 0x12, 0x0b, 0x18];
    expected.extend([0xff; 9]);
    expected.push(0x01);
    assert_eq!(w.buf, expected);
}

#[test]
fn endpoints() {
    let e = Endpoint::parse("http://127.0.0.1:4318").expect("valid");
    assert_eq!(
        (e.host.as_str(), e.port, e.path.as_str()),
        ("127.0.0.1", 4318, "/v1/traces")
    );
    let e = Endpoint::parse("http://collector/v1/traces").expect("valid");
    assert_eq!(
        (e.host.as_str(), e.port, e.path.as_str()),
        ("collector", 4318, "/v1/traces")
    );
    let e = Endpoint::parse("http://[::1]:9999/otlp/v1/traces/").expect("valid");
    assert_eq!(
        (e.host.as_str(), e.port, e.path.as_str()),
        ("::1", 9999, "/otlp/v1/traces")
    );
    assert_eq!(e.authority(), "[::1]:9999");
    let e = Endpoint::parse("HTTPS://otlp.example.com/v1/traces").expect("valid");
    assert_eq!(
        (e.https, e.host.as_str(), e.port),
        (true, "otlp.example.com", 443),
        "https without a port is 443"
    );
    assert!(!Endpoint::parse("http://c").expect("valid").https);
    assert!(matches!(
        Endpoint::parse("ftp://collector:4318"),
        Err(EndpointError::NotHttp(_))
    ));
    assert_eq!(
        Endpoint::parse("https://user:pw@collector"),
        Err(EndpointError::Credentials)
    );
    assert!(Endpoint::parse("collector:4318").is_err());
    assert!(Endpoint::parse("http://:4318").is_err());
    assert!(Endpoint::parse("http://c:port").is_err());
}

/// A port nothing listens on.
fn dead_endpoint() -> Collector {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    drop(l);
    Collector::plain(Endpoint::parse(&format!("http://127.0.0.1:{port}")).expect("valid"))
}

fn counter(registry: &Registry, name: &str, label: Option<&str>) -> u64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().iter())
        .filter(|m| label.is_none_or(|l| m.get_label().iter().any(|p| p.value() == l)))
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

#[tokio::test]
async fn dead_collector_costs_bounded_memory_and_counted_drops() {
    let registry = Registry::new();
    let config = ExporterConfig {
        queue_capacity: 1000,
        max_batch: 100,
        flush_interval: Duration::from_millis(50),
        max_attempts: 2,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(20),
        request_timeout: Duration::from_millis(500),
    };
    let (mut sink, exporter) = start(dead_endpoint(), config, &registry);
    let r = record();
    for _ in 0..100_000 {
        sink.record(&r);
        assert!(sink.queued() <= 1000, "the queue is bounded");
    }
    let queue_full = counter(
        &registry,
        "tokentap_otlp_spans_dropped_total",
        Some("queue_full"),
    );
    assert!(
        queue_full >= 100_000 - 1000 - 100,
        "pushes beyond the bound are dropped and counted: {queue_full}"
    );
    // Let the exporter try a batch or two, then stop: it must stop promptly.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopped = std::time::Instant::now();
    exporter.shutdown(Duration::from_secs(2)).await;
    assert!(stopped.elapsed() < Duration::from_secs(3));
    assert!(counter(&registry, "tokentap_otlp_export_errors_total", None) >= 1);
    assert!(
        counter(
            &registry,
            "tokentap_otlp_spans_dropped_total",
            Some("export_failed")
        ) >= 100,
        "failed batches are counted"
    );
    assert_eq!(
        counter(&registry, "tokentap_otlp_spans_exported_total", None),
        0
    );
}

/// Waits (5 s at most) until `n` spans were dropped as failed exports.
async fn dropped_as_failed(registry: &Registry, n: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while counter(
        registry,
        "tokentap_otlp_spans_dropped_total",
        Some("export_failed"),
    ) < n
    {
        assert!(std::time::Instant::now() < deadline, "refusal not counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What a fake collector received: request heads and the bodies it accepted.
#[derive(Default)]
struct Received {
    heads: Vec<String>,
    bodies: Vec<Vec<u8>>,
}

type Shared = std::sync::Arc<std::sync::Mutex<Received>>;

/// A collector over plain http that answers `statuses` in turn (then 200).
async fn fake_collector(statuses: Vec<u16>) -> (Collector, Shared) {
    let (port, received) = serve_collector(statuses, None).await;
    let endpoint = Endpoint::parse(&format!("http://127.0.0.1:{port}")).expect("valid");
    (Collector::plain(endpoint), received)
}

/// Serves OTLP/HTTP on 127.0.0.1 (over TLS with `tls`); returns the port.
async fn serve_collector(statuses: Vec<u16>, tls: Option<rustls::ServerConfig>) -> (u16, Shared) {
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
    async fn one<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, status: u16, seen: &Shared) {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        let (head, body) = loop {
            let n = s.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some(at) = text.find("\r\n\r\n") {
                let len: usize = text
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if buf.len() >= at + 4 + len {
                    break (text[..at].to_owned(), buf[at + 4..at + 4 + len].to_vec());
                }
            }
        };
        {
            let mut seen = seen.lock().expect("lock");
            seen.heads.push(head);
            if status == 200 {
                seen.bodies.push(body);
            }
        }
        let answer = format!("HTTP/1.1 {status} X\r\nContent-Length: 2\r\n\r\n{{}}");
        let _ = s.write_all(answer.as_bytes()).await;
        let _ = s.shutdown().await;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let received = Shared::default();
    let seen = received.clone();
    let acceptor = tls.map(|c| tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(c)));
    tokio::spawn(async move {
        let mut statuses = statuses.into_iter();
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            match &acceptor {
                Some(a) => {
                    // A client that refuses our certificate never gets to send a request.
                    if let Ok(tls) = a.accept(s).await {
                        one(tls, statuses.next().unwrap_or(200), &seen).await;
                    }
                }
                None => one(s, statuses.next().unwrap_or(200), &seen).await,
            }
        }
    });
    (port, received)
}

#[tokio::test]
async fn retries_after_503_and_429_then_exports() {
    let (endpoint, bodies) = fake_collector(vec![503, 429]).await;
    let registry = Registry::new();
    let config = ExporterConfig {
        flush_interval: Duration::from_millis(50),
        initial_backoff: Duration::from_millis(10),
        ..ExporterConfig::default()
    };
    let (mut sink, exporter) = start(endpoint, config, &registry);
    for _ in 0..3 {
        sink.record(&record());
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while counter(&registry, "tokentap_otlp_spans_exported_total", None) < 3 {
        assert!(std::time::Instant::now() < deadline, "spans not exported");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    exporter.shutdown(Duration::from_secs(1)).await;
    assert_eq!(
        counter(&registry, "tokentap_otlp_export_errors_total", None),
        2
    );
    let bodies = &bodies.lock().expect("lock").bodies;
    let spans: usize = bodies
        .iter()
        .flat_map(|b| len_fields(b, 1))
        .flat_map(|rs| len_fields(rs, 2))
        .map(|ss| len_fields(ss, 2).len())
        .sum();
    assert_eq!(spans, 3);
}

#[tokio::test]
async fn a_refused_batch_is_not_retried_and_shutdown_flushes() {
    let (endpoint, bodies) = fake_collector(vec![400]).await;
    let registry = Registry::new();
    let config = ExporterConfig {
        flush_interval: Duration::from_secs(60),
        max_batch: 2,
        ..ExporterConfig::default()
    };
    let (mut sink, exporter) = start(endpoint.clone(), config, &registry);
    // A full batch goes at once and is refused (400: not retried).
    sink.record(&record());
    sink.record(&record());
    dropped_as_failed(&registry, 2).await;
    assert_eq!(
        counter(&registry, "tokentap_otlp_export_errors_total", None),
        1
    );
    // A partial batch waits for the interval, but shutdown sends it.
    sink.record(&record());
    exporter.shutdown(Duration::from_secs(2)).await;
    assert_eq!(
        counter(&registry, "tokentap_otlp_spans_exported_total", None),
        1
    );
    assert_eq!(bodies.lock().expect("lock").bodies.len(), 1);
    // The raw POST against a 200 collector.
    let (endpoint, _) = fake_collector(vec![]).await;
    post(&endpoint, b"", Duration::from_secs(1))
        .await
        .expect("200 is success");
    let _ = ExporterMetrics::new(&registry);
}

#[test]
fn resource_names_the_service_pod_and_workload() {
    use super::span::{ProcessResource, WorkloadResource};
    let mut r = record();
    r.executable = "python3".into();
    r.container_id = Some("abc".into());
    r.service_name = "checkout".into();
    r.k8s = Some(crate::llm::K8sWorkload {
        namespace: "shop".into(),
        pod: "checkout-7d9f8c6b5-x2x4q".into(),
        container: "app".into(),
        workload_name: "checkout".into(),
        workload_kind: "Deployment".into(),
    });
    let attrs = ProcessResource.attributes(&r);
    let get = |key: &str| {
        attrs
            .iter()
            .find(|kv| kv.key == key)
            .map(|kv| kv.value.clone())
    };
    let s = |v: &str| Some(Value::String(v.into()));
    assert_eq!(get(attr::SERVICE_NAME), s("checkout"));
    assert_eq!(get(attr::K8S_NAMESPACE_NAME), s("shop"));
    assert_eq!(get(attr::K8S_POD_NAME), s("checkout-7d9f8c6b5-x2x4q"));
    assert_eq!(get(attr::K8S_CONTAINER_NAME), s("app"));
    assert_eq!(get(attr::K8S_DEPLOYMENT_NAME), s("checkout"));
    assert_eq!(get(attr::K8S_STATEFULSET_NAME), None);
    assert_eq!(get(attr::CONTAINER_ID), s("abc"));
    // Off Kubernetes: no k8s.* at all, and the service falls back to the executable.
    r.k8s = None;
    r.service_name.clear();
    let attrs = ProcessResource.attributes(&r);
    assert!(attrs.iter().all(|kv| !kv.key.starts_with("k8s.")));
    assert_eq!(
        attrs
            .iter()
            .find(|kv| kv.key == attr::SERVICE_NAME)
            .map(|kv| kv.value.clone()),
        s("python3")
    );
}

#[test]
fn headers_in_the_otel_format() {
    let h = parse_headers("api-key=abc%3D%3D, X-Tenant = team a ,\n# comment\nx-scope=1")
        .expect("valid");
    assert_eq!(
        h,
        [
            ("api-key", "abc=="),
            ("x-tenant", "team a"),
            ("x-scope", "1")
        ]
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
    );
    assert_eq!(
        parse_headers("a=1,a=2").expect("valid"),
        [("a".to_owned(), "2".to_owned())],
        "the later one wins"
    );
    for bad in [
        "novalue",
        "bad name=1",
        "host=x",
        "content-length=1",
        "k=%zz",
        "k=a%0Db",
    ] {
        let e = parse_headers(bad).expect_err(bad);
        assert!(
            !e.contains("zz") && !e.contains("a%0Db"),
            "errors never echo values: {e}"
        );
    }
    let c = Collector::plain(Endpoint::parse("http://c").expect("valid"));
    let with_key = Collector {
        headers: vec![("api-key".into(), "s3cr3t".into())],
        ..c
    };
    let shown = format!("{with_key:?}");
    assert!(
        shown.contains("api-key") && !shown.contains("s3cr3t"),
        "{shown}"
    );
}

/// https: the collector's certificate is checked against the CA given, headers go along,
/// and a collector whose certificate does not verify is counted once per batch (no retry).
#[tokio::test]
async fn https_collector_with_headers_and_a_ca() {
    let (ca_pem, server) = crate::tls_client::test_support::tls_server_config();
    let (other_ca, _) = crate::tls_client::test_support::tls_server_config();
    let dir = std::env::temp_dir().join(format!("tokentap-otlp-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (ca_file, other_file) = (dir.join("ca.pem"), dir.join("other.pem"));
    std::fs::write(&ca_file, ca_pem).expect("CA file");
    std::fs::write(&other_file, other_ca).expect("CA file");
    let (port, received) = serve_collector(vec![], Some(server)).await;
    let endpoint = Endpoint::parse(&format!("https://127.0.0.1:{port}")).expect("valid");
    let headers = parse_headers("api-key=s3cr3t").expect("valid");

    let collector =
        Collector::new(endpoint.clone(), Some(&ca_file), headers.clone()).expect("collector");
    let registry = Registry::new();
    let config = ExporterConfig {
        flush_interval: Duration::from_millis(20),
        ..ExporterConfig::default()
    };
    let (mut sink, exporter) = start(collector, config.clone(), &registry);
    sink.record(&record());
    sink.record(&record());
    exporter.shutdown(Duration::from_secs(5)).await;
    assert_eq!(
        counter(&registry, "tokentap_otlp_spans_exported_total", None),
        2
    );
    {
        let received = received.lock().expect("lock");
        assert!(!received.bodies.is_empty());
        assert!(
            received.heads.iter().all(|h| h.contains("api-key: s3cr3t")),
            "{:?}",
            received.heads
        );
    }

    let untrusted = Collector::new(endpoint, Some(&other_file), headers).expect("collector");
    let registry = Registry::new();
    let (mut sink, exporter) = start(untrusted, config, &registry);
    sink.record(&record());
    dropped_as_failed(&registry, 1).await;
    exporter.shutdown(Duration::from_secs(2)).await;
    assert_eq!(
        counter(&registry, "tokentap_otlp_export_errors_total", None),
        1,
        "a certificate that does not verify is not retried"
    );
    assert_eq!(
        received.lock().expect("lock").heads.len(),
        1,
        "nothing reached it"
    );
    assert!(
        Collector::new(
            Endpoint::parse("https://c").expect("valid"),
            Some(&dir.join("missing.pem")),
            vec![]
        )
        .is_err(),
        "a CA file that cannot be read is an error at start"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
