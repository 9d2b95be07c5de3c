//! Just enough protobuf to write OTLP trace requests: varints, length-delimited fields and
//! the few OpenTelemetry messages tokentap sends. Field numbers are those of
//! opentelemetry-proto (`collector/trace/v1/trace_service.proto`, `trace/v1/trace.proto`,
//! `common/v1/common.proto`, `resource/v1/resource.proto`).

/// `ExportTraceServiceRequest.resource_spans`.
pub const REQUEST_RESOURCE_SPANS: u32 = 1;
/// `ResourceSpans.resource`, `ResourceSpans.scope_spans`.
pub const RESOURCE_SPANS_RESOURCE: u32 = 1;
pub const RESOURCE_SPANS_SCOPE_SPANS: u32 = 2;
/// `Resource.attributes`.
pub const RESOURCE_ATTRIBUTES: u32 = 1;
/// `ScopeSpans.scope`, `ScopeSpans.spans`.
pub const SCOPE_SPANS_SCOPE: u32 = 1;
pub const SCOPE_SPANS_SPANS: u32 = 2;
/// `InstrumentationScope.name`, `.version`.
pub const SCOPE_NAME: u32 = 1;
pub const SCOPE_VERSION: u32 = 2;
/// `Span` fields.
pub const SPAN_TRACE_ID: u32 = 1;
pub const SPAN_SPAN_ID: u32 = 2;
pub const SPAN_PARENT_SPAN_ID: u32 = 4;
pub const SPAN_NAME: u32 = 5;
pub const SPAN_KIND: u32 = 6;
pub const SPAN_START_TIME: u32 = 7;
pub const SPAN_END_TIME: u32 = 8;
pub const SPAN_ATTRIBUTES: u32 = 9;
pub const SPAN_STATUS: u32 = 15;
pub const SPAN_FLAGS: u32 = 16;
/// `Status.message`, `Status.code`.
pub const STATUS_MESSAGE: u32 = 2;
pub const STATUS_CODE: u32 = 3;
/// `KeyValue.key`, `KeyValue.value`.
pub const KEY_VALUE_KEY: u32 = 1;
pub const KEY_VALUE_VALUE: u32 = 2;
/// `AnyValue` oneof members.
pub const ANY_STRING: u32 = 1;
pub const ANY_BOOL: u32 = 2;
pub const ANY_INT: u32 = 3;
pub const ANY_DOUBLE: u32 = 4;
pub const ANY_ARRAY: u32 = 5;
/// `ArrayValue.values`.
pub const ARRAY_VALUES: u32 = 1;

/// `Span.SpanKind`.
pub const SPAN_KIND_SERVER: u64 = 2;
pub const SPAN_KIND_CLIENT: u64 = 3;
/// `Status.StatusCode`.
pub const STATUS_CODE_ERROR: u64 = 2;
/// `SpanFlags`: the W3C trace flags live in the low byte.
pub const FLAGS_CONTEXT_HAS_IS_REMOTE: u32 = 0x100;
pub const FLAGS_CONTEXT_IS_REMOTE: u32 = 0x200;

pub const WIRE_VARINT: u32 = 0;
pub const WIRE_FIXED64: u32 = 1;
pub const WIRE_LEN: u32 = 2;
pub const WIRE_FIXED32: u32 = 5;

/// An attribute value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    String(String),
    Bool(bool),
    Int(i64),
    Double(f64),
    StringArray(Vec<String>),
}

/// An attribute.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyValue {
    pub key: &'static str,
    pub value: Value,
}

impl KeyValue {
    pub fn new(key: &'static str, value: Value) -> Self {
        Self { key, value }
    }
}

/// Appends protobuf fields to a buffer.
#[derive(Default)]
pub struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn new() -> Self {
        Self::default()
    }

    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }

    fn tag(&mut self, field: u32, wire: u32) {
        self.varint(u64::from(field << 3 | wire));
    }

    pub fn uint(&mut self, field: u32, v: u64) {
        self.tag(field, WIRE_VARINT);
        self.varint(v);
    }

    pub fn fixed64(&mut self, field: u32, v: u64) {
        self.tag(field, WIRE_FIXED64);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub fn fixed32(&mut self, field: u32, v: u32) {
        self.tag(field, WIRE_FIXED32);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub fn bytes(&mut self, field: u32, b: &[u8]) {
        self.tag(field, WIRE_LEN);
        self.varint(b.len() as u64);
        self.buf.extend_from_slice(b);
    }

    pub fn string(&mut self, field: u32, s: &str) {
        self.bytes(field, s.as_bytes());
    }

    /// A nested message written by `f`.
    pub fn message(&mut self, field: u32, f: impl FnOnce(&mut Writer)) {
        let mut inner = Writer::new();
        f(&mut inner);
        self.bytes(field, &inner.buf);
    }

    /// A `KeyValue` in repeated field `field`.
    pub fn key_value(&mut self, field: u32, kv: &KeyValue) {
        self.message(field, |w| {
            w.string(KEY_VALUE_KEY, kv.key);
            w.message(KEY_VALUE_VALUE, |w| any_value(w, &kv.value));
        });
    }
}

fn any_value(w: &mut Writer, v: &Value) {
    match v {
        Value::String(s) => w.string(ANY_STRING, s),
        Value::Bool(b) => w.uint(ANY_BOOL, u64::from(*b)),
        // int64 on the wire is the two's complement varint.
        Value::Int(i) => w.uint(ANY_INT, *i as u64),
        Value::Double(d) => w.fixed64(ANY_DOUBLE, d.to_bits()),
        Value::StringArray(items) => w.message(ANY_ARRAY, |w| {
            for s in items {
                w.message(ARRAY_VALUES, |w| w.string(ANY_STRING, s));
            }
        }),
    }
}

/// An encoded `ExportTraceServiceRequest` with one `ResourceSpans` per distinct resource;
/// `resource` and `span` bytes are already-encoded `Resource` and `Span` messages.
pub fn export_request<'a>(
    groups: impl IntoIterator<Item = (&'a [u8], Vec<&'a [u8]>)>,
    scope_name: &str,
    scope_version: &str,
) -> Vec<u8> {
    let mut w = Writer::new();
    for (resource, spans) in groups {
        w.message(REQUEST_RESOURCE_SPANS, |w| {
            w.bytes(RESOURCE_SPANS_RESOURCE, resource);
            w.message(RESOURCE_SPANS_SCOPE_SPANS, |w| {
                w.message(SCOPE_SPANS_SCOPE, |w| {
                    w.string(SCOPE_NAME, scope_name);
                    w.string(SCOPE_VERSION, scope_version);
                });
                for span in spans {
                    w.bytes(SCOPE_SPANS_SPANS, span);
                }
            });
        });
    }
    w.buf
}

/// An encoded `Resource` (its contents, without the field tag).
pub fn resource(attributes: &[KeyValue]) -> Vec<u8> {
    let mut w = Writer::new();
    for kv in attributes {
        w.key_value(RESOURCE_ATTRIBUTES, kv);
    }
    w.buf
}
