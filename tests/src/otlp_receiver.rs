//! A small OTLP/HTTP trace receiver for the end-to-end tests: accepts `POST /v1/traces`
//! (`application/x-protobuf`), decodes the protobuf into plain structs and keeps them. It can
//! answer 503 to the first N requests, to exercise the exporter's retries.
//!
//! The decoder knows only the fields tokentap sends (opentelemetry-proto field numbers); it is
//! written independently of the agent's encoder so that the two check each other.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};

/// An attribute value.
#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    String(String),
    Bool(bool),
    Int(i64),
    Double(f64),
    Array(Vec<AttrValue>),
}

impl AttrValue {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Self::Int(i) => Some(*i),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Self::Double(d) => Some(*d),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Self::Bool(b) => Some(*b),
            _ => None,
        }
    }
}

/// One received span, with its resource and scope.
#[derive(Clone, Debug, Default)]
pub struct ReceivedSpan {
    pub resource: BTreeMap<String, AttrValue>,
    pub scope_name: String,
    /// Lowercase hex.
    pub trace_id: String,
    pub span_id: String,
    /// `None` when absent or empty (a root span).
    pub parent_span_id: Option<String>,
    pub name: String,
    /// `SpanKind`: 2 server, 3 client.
    pub kind: u64,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    pub attributes: BTreeMap<String, AttrValue>,
    /// `StatusCode`: 0 unset, 1 ok, 2 error.
    pub status_code: u64,
    pub status_message: String,
    pub flags: u32,
}

impl ReceivedSpan {
    pub fn attr(&self, key: &str) -> Option<&AttrValue> {
        self.attributes.get(key)
    }
}

#[derive(Default)]
struct State {
    spans: Vec<ReceivedSpan>,
    requests: u32,
    refused: u32,
    problems: Vec<String>,
}

/// The receiver; stops accepting when dropped (the thread lingers on `accept` harmlessly).
pub struct OtlpReceiver {
    port: u16,
    state: Arc<Mutex<State>>,
}

impl OtlpReceiver {
    pub fn start() -> anyhow::Result<Self> {
        Self::start_failing_first(0)
    }

    /// Answers 503 to the first `n` export requests (their spans are not kept).
    pub fn start_failing_first(n: u32) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the OTLP receiver")?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let shared = shared.clone();
                thread::spawn(move || {
                    if let Err(e) = serve(conn, &shared, n)
                        && let Ok(mut s) = shared.lock()
                    {
                        s.problems.push(format!("{e:#}"));
                    }
                });
            }
        });
        Ok(Self { port, state })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL to give `--otlp-endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.state
            .lock()
            .map(|s| s.spans.clone())
            .unwrap_or_default()
    }

    /// Export requests received (refused ones included).
    pub fn requests(&self) -> u32 {
        self.state.lock().map(|s| s.requests).unwrap_or(0)
    }

    /// Requests answered 503.
    pub fn refused(&self) -> u32 {
        self.state.lock().map(|s| s.refused).unwrap_or(0)
    }

    /// Malformed requests and decoding failures: must be empty.
    pub fn problems(&self) -> Vec<String> {
        self.state
            .lock()
            .map(|s| s.problems.clone())
            .unwrap_or_default()
    }

    /// Waits until `pred` holds for the received spans; returns them either way.
    pub fn wait_for(
        &self,
        timeout: Duration,
        pred: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        let deadline = Instant::now() + timeout;
        loop {
            let spans = self.spans();
            if pred(&spans) || Instant::now() > deadline {
                return spans;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// One connection: HTTP/1.1 requests until the client closes.
fn serve(conn: TcpStream, state: &Mutex<State>, fail_first: u32) -> anyhow::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut out = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let mut content_length = None;
        let mut content_type = String::new();
        let mut close = false;
        loop {
            let mut h = String::new();
            reader.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let Some((name, value)) = h.split_once(':') else {
                bail!("bad header line {h:?}");
            };
            let value = value.trim();
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => content_length = value.parse::<usize>().ok(),
                "content-type" => content_type = value.to_owned(),
                "connection" => close = value.eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
        let len = content_length.ok_or_else(|| anyhow!("request without Content-Length"))?;
        let mut body = vec![0; len];
        reader.read_exact(&mut body)?;
        let status = {
            let mut s = state.lock().map_err(|_| anyhow!("poisoned"))?;
            s.requests += 1;
            if method != "POST" || path != "/v1/traces" {
                s.problems
                    .push(format!("{method} {path}: expected POST /v1/traces"));
                404
            } else if content_type != "application/x-protobuf" {
                s.problems.push(format!(
                    "content type {content_type:?}: expected application/x-protobuf"
                ));
                415
            } else if s.refused < fail_first {
                s.refused += 1;
                503
            } else {
                match decode_request(&body) {
                    Ok(spans) => {
                        s.spans.extend(spans);
                        200
                    }
                    Err(e) => {
                        s.problems.push(format!("undecodable request: {e:#}"));
                        400
                    }
                }
            }
        };
        let reason = match status {
            200 => "OK",
            503 => "Service Unavailable",
            _ => "Error",
        };
        // An empty ExportTraceServiceResponse.
        write!(
            out,
            "HTTP/1.1 {status} {reason}\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n"
        )?;
        out.flush()?;
        if close {
            return Ok(());
        }
    }
}

// ---- protobuf ----

enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Len(&'a [u8]),
    Fixed32(u32),
}

fn varint(buf: &[u8], at: &mut usize) -> anyhow::Result<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*at).ok_or_else(|| anyhow!("varint past the end"))?;
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Ok(v);
        }
    }
    bail!("varint too long")
}

fn take<'a>(buf: &'a [u8], at: &mut usize, n: usize) -> anyhow::Result<&'a [u8]> {
    let end = at
        .checked_add(n)
        .ok_or_else(|| anyhow!("length overflow"))?;
    let s = buf
        .get(*at..end)
        .ok_or_else(|| anyhow!("field past the end"))?;
    *at = end;
    Ok(s)
}

fn fields(buf: &[u8]) -> anyhow::Result<Vec<(u32, Wire<'_>)>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let tag = varint(buf, &mut at)?;
        let field = u32::try_from(tag >> 3)?;
        let w = match tag & 7 {
            0 => Wire::Varint(varint(buf, &mut at)?),
            1 => Wire::Fixed64(u64::from_le_bytes(take(buf, &mut at, 8)?.try_into()?)),
            2 => {
                let n = usize::try_from(varint(buf, &mut at)?)?;
                Wire::Len(take(buf, &mut at, n)?)
            }
            5 => Wire::Fixed32(u32::from_le_bytes(take(buf, &mut at, 4)?.try_into()?)),
            other => bail!("wire type {other} in field {field}"),
        };
        out.push((field, w));
    }
    Ok(out)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn text(b: &[u8]) -> anyhow::Result<String> {
    Ok(std::str::from_utf8(b)?.to_owned())
}

fn any_value(buf: &[u8]) -> anyhow::Result<AttrValue> {
    let Some((f, w)) = fields(buf)?.into_iter().next() else {
        bail!("empty AnyValue")
    };
    Ok(match (f, w) {
        (1, Wire::Len(b)) => AttrValue::String(text(b)?),
        (2, Wire::Varint(v)) => AttrValue::Bool(v != 0),
        (3, Wire::Varint(v)) => AttrValue::Int(v as i64),
        (4, Wire::Fixed64(v)) => AttrValue::Double(f64::from_bits(v)),
        (5, Wire::Len(b)) => {
            let mut items = Vec::new();
            for (f, w) in fields(b)? {
                if let (1, Wire::Len(v)) = (f, w) {
                    items.push(any_value(v)?);
                }
            }
            AttrValue::Array(items)
        }
        (f, _) => bail!("unexpected AnyValue field {f}"),
    })
}

fn key_value(buf: &[u8]) -> anyhow::Result<(String, AttrValue)> {
    let mut key = None;
    let mut value = None;
    for (f, w) in fields(buf)? {
        match (f, w) {
            (1, Wire::Len(b)) => key = Some(text(b)?),
            (2, Wire::Len(b)) => value = Some(any_value(b)?),
            _ => {}
        }
    }
    Ok((
        key.ok_or_else(|| anyhow!("KeyValue without key"))?,
        value.ok_or_else(|| anyhow!("KeyValue without value"))?,
    ))
}

fn attributes_in(buf: &[u8], field: u32) -> anyhow::Result<BTreeMap<String, AttrValue>> {
    let mut out = BTreeMap::new();
    for (f, w) in fields(buf)? {
        if let (true, Wire::Len(b)) = (f == field, w) {
            let (k, v) = key_value(b)?;
            if out.insert(k.clone(), v).is_some() {
                bail!("attribute {k} repeated");
            }
        }
    }
    Ok(out)
}

fn span(
    buf: &[u8],
    resource: &BTreeMap<String, AttrValue>,
    scope: &str,
) -> anyhow::Result<ReceivedSpan> {
    let mut s = ReceivedSpan {
        resource: resource.clone(),
        scope_name: scope.to_owned(),
        attributes: attributes_in(buf, 9)?,
        ..ReceivedSpan::default()
    };
    for (f, w) in fields(buf)? {
        match (f, w) {
            (1, Wire::Len(b)) => s.trace_id = hex(b),
            (2, Wire::Len(b)) => s.span_id = hex(b),
            (4, Wire::Len(b)) if !b.is_empty() => s.parent_span_id = Some(hex(b)),
            (5, Wire::Len(b)) => s.name = text(b)?,
            (6, Wire::Varint(v)) => s.kind = v,
            (7, Wire::Fixed64(v)) => s.start_unix_ns = v,
            (8, Wire::Fixed64(v)) => s.end_unix_ns = v,
            (15, Wire::Len(b)) => {
                for (f, w) in fields(b)? {
                    match (f, w) {
                        (2, Wire::Len(m)) => s.status_message = text(m)?,
                        (3, Wire::Varint(c)) => s.status_code = c,
                        _ => {}
                    }
                }
            }
            (16, Wire::Fixed32(v)) => s.flags = v,
            _ => {}
        }
    }
    if s.trace_id.len() != 32 || s.span_id.len() != 16 {
        bail!(
            "span {:?} has trace id {:?} and span id {:?}",
            s.name,
            s.trace_id,
            s.span_id
        );
    }
    Ok(s)
}

/// Decodes an `ExportTraceServiceRequest` into its spans.
pub fn decode_request(body: &[u8]) -> anyhow::Result<Vec<ReceivedSpan>> {
    let mut spans = Vec::new();
    for (f, w) in fields(body)? {
        let (1, Wire::Len(rs)) = (f, w) else { continue };
        let mut resource = BTreeMap::new();
        for (f, w) in fields(rs)? {
            if let (1, Wire::Len(r)) = (f, w) {
                resource = attributes_in(r, 1)?;
            }
        }
        for (f, w) in fields(rs)? {
            let (2, Wire::Len(ss)) = (f, w) else { continue };
            let mut scope = String::new();
            for (f, w) in fields(ss)? {
                if let (1, Wire::Len(sc)) = (f, w) {
                    for (f, w) in fields(sc)? {
                        if let (1, Wire::Len(n)) = (f, w) {
                            scope = text(n)?;
                        }
                    }
                }
            }
            for (f, w) in fields(ss)? {
                if let (2, Wire::Len(sp)) = (f, w) {
                    spans.push(span(sp, &resource, &scope)?);
                }
            }
        }
    }
    Ok(spans)
}
