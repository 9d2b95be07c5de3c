//! A mock LLM provider (OpenAI, Anthropic, Gemini) on rustls, for the end-to-end tests.
//!
//! The real, unmodified Python SDKs are pointed at it (their host names resolve to this
//! server inside the client process only), and what they parse is the ground truth that the
//! agent's `/metrics` must equal. The server is rustls, not OpenSSL, so the agent (which hooks
//! `libssl`) sees only the client side.
//!
//! # What it serves
//! HTTPS on `127.0.0.1:<port>` (TLS 1.3 and 1.2, ALPN `http/1.1` only), one certificate valid
//! for [`HOSTS`], `localhost` and `127.0.0.1`, signed by a throw-away CA whose PEM is at
//! [`MockProvider::ca_file`]. HTTP/1.1 with keep-alive; request bodies by `Content-Length` or
//! chunked; `Expect: 100-continue` is answered.
//!
//! | request | answer |
//! |---|---|
//! | `POST /v1/chat/completions` | OpenAI chat completion; `stream: true` gives `data:` chunks, a `choices: []` usage chunk only with `stream_options.include_usage`, then `data: [DONE]` |
//! | `POST /v1/completions` | OpenAI legacy completion (same streaming rules) |
//! | `POST /v1/embeddings` | OpenAI embeddings (`encoding_format: base64` honoured, as the Python SDK asks) |
//! | `POST /v1/responses` | OpenAI Responses; the stream has `event:` lines (`response.created` … `response.output_text.delta` … `response.completed` with usage) |
//! | `POST /v1/messages` | Anthropic Messages; the stream is `message_start`, `content_block_start`, `ping`, `content_block_delta`s, `content_block_stop`, `message_delta` (cumulative usage, `stop_reason`), `message_stop` |
//! | `POST /v1beta/models/{model}:generateContent` (also `/v1/`, `/v1alpha/`) | Gemini `GenerateContentResponse` |
//! | `POST /v1beta/models/{model}:streamGenerateContent?alt=sse` | one whole `GenerateContentResponse` per `data:` event (CRLF-separated, as Google sends them), `usageMetadata` complete on the last, `finishReason: STOP` |
//!
//! Shapes, key order and whitespace follow the real services: OpenAI and Gemini bodies are
//! pretty-printed, OpenAI error bodies use four spaces, stream events are one line (Gemini's
//! with `": "`), Anthropic's `ping` is `{"type": "ping"}`. The response `model` is a dated
//! snapshot of the requested one (`gpt-4o-mini` → `gpt-4o-mini-2024-07-18`, any other OpenAI
//! `X` → `X-2024-08-06`; Anthropic `X` → `X-20250929` unless already dated; Gemini
//! `modelVersion` `X` → `X-001`). Non-streamed JSON has a `Content-Length` and is gzipped when
//! the request's `Accept-Encoding` allows it (all three providers); streams use chunked
//! transfer encoding, one HTTP chunk per event, and Anthropic's stream is gzipped with a sync
//! flush per event when the client accepts gzip.
//!
//! # Token counts
//! Deterministic: base input tokens = characters of the request's text (messages, system
//! prompt, input, prompt, contents) / 4, at least 1. Output tokens = content chunks (default
//! 5), each chunk one word; a non-streamed answer has the same words in one piece.
//! Cache-read tokens are added on top of the base input (OpenAI `prompt_tokens` and Gemini
//! `promptTokenCount` include them; Anthropic reports `input_tokens` without them).
//!
//! # Scenario grammar (in the model name, so unmodified SDK calls can choose it)
//! The model name is split at `-`; these tokens are options, every other token is part of the
//! base model name (`gpt-4o-mini-ka-chunks3` has base model `gpt-4o-mini-ka`):
//!
//! | token | effect |
//! |---|---|
//! | `chunks{N}` | N content chunks = N output tokens (default 5) |
//! | `delay{MS}` | wait MS before the first content chunk (non-streamed: before the answer). A stream's head and its non-content preamble (OpenAI's role chunk, Anthropic's `message_start`/`content_block_start`/`ping`, the Responses `response.created` … `content_part.added`) go out at once, so time to first *content* chunk differs from time to first byte |
//! | `gap{MS}` | wait MS between content chunks |
//! | `err{STATUS}` | answer STATUS with the provider's real error body: OpenAI `{"error":{"message","type","param","code"}}` (429 → `rate_limit_exceeded`, 5xx → type `server_error`), Anthropic `{"type":"error","error":{"type","message"}}` (429 `rate_limit_error`, 500 `api_error`, 529 `overloaded_error`, …), Gemini `{"error":{"code","message","status"}}` (429 `RESOURCE_EXHAUSTED`, 500 `INTERNAL`, 503 `UNAVAILABLE`, …) |
//! | `midstream-error` (or `midstream`) | after `after` content chunks, send the in-band error and end the stream: Anthropic `event: error` (`overloaded_error`), OpenAI chat `data: {"error":{…}}` (`server_error`), Responses `response.failed` (`server_error`), Gemini `data: {"error":{…}}` (`INTERNAL`) |
//! | `errevent` | Responses only: a top-level `event: error` (`server_error`) instead of `response.failed` |
//! | `disconnect` | after `after` content chunks, cut the TCP connection: no terminal event, no last chunk, no TLS `close_notify` (non-streamed: after half the body) |
//! | `after{N}` | content chunks before `midstream-error`/`errevent`/`disconnect` (default 2) |
//! | `cached{N}` | N cache-read input tokens |
//! | `cachewrite{N}` | N cache-creation input tokens (Anthropic) |
//! | `reason{N}` | N reasoning tokens, counted in the output (OpenAI `reasoning_tokens`, Gemini `thoughtsTokenCount`; ignored by Anthropic) |
//! | `nogzip` | never compress |
//!
//! A mid-stream error or disconnect happens right after the last content chunk it follows,
//! with no extra wait, so "the last byte" and "the moment the client saw the error" coincide.
//!
//! # Ground truth
//! Every request gets a [`RequestRecord`] ([`MockProvider::requests`]): TLS name and ALPN,
//! path, model, streaming, status, error type, the tokens its usage reported (in the metrics'
//! terms: input includes cached), chunks planned and sent, how it ended, and
//! `CLOCK_MONOTONIC` timestamps (the clock Python's `time.monotonic_ns` reads). The same list
//! is served as JSON at [`RECORDS_PATH`], for a mock run by hand (`mock-provider` binary).

mod anthropic;
mod gemini;
mod h2;
mod json;
mod ollama;
mod openai;
pub mod scenario;

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, anyhow, bail};
use flate2::Compression;
use flate2::write::GzEncoder;
use rustls::{ServerConfig, ServerConnection, StreamOwned};
use serde::Serialize;
use serde_json::Value;

pub use h2::H2MockProvider;
pub use scenario::Scenario;

use crate::tls_server::{HttpReader, MAX_HEAD, MAX_LINE, generate_certs, lock, make_temp_dir};

/// The real provider host names the certificate carries.
pub const HOSTS: [&str; 3] = [
    "api.openai.com",
    "api.anthropic.com",
    "generativelanguage.googleapis.com",
];

/// `GET` this path for every [`RequestRecord`] so far, as JSON (not itself recorded).
pub const RECORDS_PATH: &str = "/_mock/requests";

/// Largest accepted request body (the long-context benchmark sends 40 MB prompts).
const MAX_BODY: usize = 64 * 1024 * 1024;

/// Token counts an answer's usage reported, in the metrics' terms (input includes cached
/// tokens). `None`: the answer did not say.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Tokens {
    pub input: Option<u64>,
    pub output: Option<u64>,
    pub cache_read: Option<u64>,
    pub cache_write: Option<u64>,
    pub reasoning: Option<u64>,
}

/// How the mock ended an answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Still being written.
    #[default]
    InProgress,
    /// Everything was sent (an error status counts: its body was sent whole).
    Complete,
    /// The stream carried an in-band error and ended.
    MidstreamError,
    /// The connection was cut on purpose.
    Disconnected,
    /// Writing failed (the client went away).
    WriteFailed,
}

/// What the mock saw and answered for one request.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RequestRecord {
    /// Index of the TLS connection (accept order) and of the request on it.
    pub connection: usize,
    pub index_on_connection: usize,
    /// TLS server name (SNI) the client sent.
    pub sni: Option<String>,
    /// Negotiated ALPN protocol.
    pub alpn: Option<String>,
    pub tls_version: String,
    pub method: String,
    /// Request target, query string included.
    pub target: String,
    pub http_version: String,
    pub host: Option<String>,
    pub user_agent: Option<String>,
    pub accept_encoding: Option<String>,
    /// `openai.chat_completions`, `openai.completions`, `openai.embeddings`,
    /// `openai.responses`, `anthropic.messages`, `gcp.gemini.generate_content`, or empty.
    pub api: String,
    pub request_model: Option<String>,
    pub response_model: Option<String>,
    /// The request asked for a stream (the answer may still be a whole error body).
    pub stream: bool,
    pub status: u16,
    /// The provider error code/type the answer carried (HTTP error or in-band), or
    /// `stream_interrupted` for a cut connection.
    pub error_type: Option<String>,
    pub content_encoding: Option<String>,
    /// What the usage in the answer said (`None` where it said nothing, including answers
    /// cut before their usage).
    pub tokens: Tokens,
    pub chunks_planned: u32,
    pub chunks_sent: u32,
    pub outcome: Outcome,
    pub request_body_bytes: usize,
    /// Plaintext bytes written for the answer, head included.
    pub response_bytes: usize,
    /// `CLOCK_MONOTONIC` nanoseconds: request fully read, first content chunk written, answer
    /// finished (or cut).
    pub t_request_mono_ns: u64,
    pub t_first_chunk_mono_ns: Option<u64>,
    pub t_end_mono_ns: Option<u64>,
}

/// A running mock provider. Dropping it stops accepting, shuts down open connections and
/// removes the CA file's temporary directory.
#[derive(Debug)]
pub struct MockProvider {
    addr: SocketAddr,
    temp_dir: PathBuf,
    ca_file: PathBuf,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    accept_thread: Option<JoinHandle<()>>,
}

impl MockProvider {
    /// Generates the CA and certificate, binds `127.0.0.1:0` and serves on background
    /// threads (one per connection).
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(true)
    }

    /// Serves plaintext HTTP/1.1 (`http://127.0.0.1:PORT`), as in-cluster model servers do.
    /// [`Self::ca_file`] still names a CA file, which plaintext clients ignore.
    pub fn start_plaintext() -> anyhow::Result<Self> {
        Self::start_with(false)
    }

    fn start_with(tls: bool) -> anyhow::Result<Self> {
        let certs = generate_certs(&HOSTS)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .context("choosing TLS versions")?
            .with_no_client_auth()
            .with_single_cert(vec![certs.leaf], certs.leaf_key)
            .context("building the rustls server config")?;
        // Only HTTP/1.1: a client that would only speak h2 fails the handshake instead of
        // silently talking a protocol the mock does not.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let config = Arc::new(config);

        let temp_dir = make_temp_dir()?;
        let ca_file = temp_dir.join("ca.pem");
        let listener = fs::write(&ca_file, certs.ca_pem.as_bytes())
            .with_context(|| format!("writing {}", ca_file.display()))
            .and_then(|()| TcpListener::bind(("127.0.0.1", 0)).context("binding 127.0.0.1:0"))
            .and_then(|l| Ok((l.local_addr().context("listener address")?, l)));
        let (addr, listener) = match listener {
            Ok(v) => v,
            Err(e) => {
                let _ = fs::remove_dir_all(&temp_dir);
                return Err(e);
            }
        };

        let shared = Arc::new(Shared::default());
        let stop = Arc::new(AtomicBool::new(false));
        let spawned = {
            let shared = Arc::clone(&shared);
            let stop = Arc::clone(&stop);
            thread::Builder::new()
                .name(format!("mock-accept-{}", addr.port()))
                .spawn(move || accept_loop(&listener, tls.then_some(&config), &shared, &stop))
        };
        let accept_thread = match spawned {
            Ok(t) => t,
            Err(e) => {
                let _ = fs::remove_dir_all(&temp_dir);
                return Err(e).context("spawning the accept thread");
            }
        };
        Ok(Self {
            addr,
            temp_dir,
            ca_file,
            shared,
            stop,
            accept_thread: Some(accept_thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The CA certificate (PEM) clients must trust.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// Every request so far, in arrival order (finished or not).
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.shared.records).clone()
    }

    /// Waits until at least `n` requests have been answered to the end (however it ended) or
    /// the timeout passes; returns the snapshot either way.
    pub fn wait_requests(&self, n: usize, timeout: Duration) -> Vec<RequestRecord> {
        wait_answered(&self.shared.records, &self.shared.changed, n, timeout)
    }
}

/// Waits until at least `n` of `records` have been answered to the end (however it ended) or
/// `timeout` passes, woken by `changed`; returns the snapshot either way. Shared by the
/// HTTP/1 and HTTP/2 mocks.
fn wait_answered(
    records: &Mutex<Vec<RequestRecord>>,
    changed: &Condvar,
    n: usize,
    timeout: Duration,
) -> Vec<RequestRecord> {
    let deadline = Instant::now() + timeout;
    let mut records = lock(records);
    loop {
        let done = records
            .iter()
            .filter(|r| r.outcome != Outcome::InProgress)
            .count();
        let now = Instant::now();
        if done >= n || now >= deadline {
            return records.clone();
        }
        records = match changed.wait_timeout(records, deadline - now) {
            Ok((guard, _)) => guard,
            Err(poisoned) => poisoned.into_inner().0,
        };
    }
}

impl Drop for MockProvider {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let woke = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)).is_ok();
        if let Some(handle) = self.accept_thread.take()
            && woke
        {
            let _ = handle.join();
        }
        for stream in lock(&self.shared.live).values() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        let _ = fs::remove_dir_all(&self.temp_dir);
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds (what Python's `time.monotonic_ns()` reads on Linux).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only into the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// What the provider modules produce

/// Everything a provider module needs to build an answer.
pub(crate) struct Ctx<'a> {
    pub(crate) scenario: &'a Scenario,
    /// The model exactly as requested.
    pub(crate) request_model: &'a str,
    pub(crate) body: &'a Value,
    pub(crate) stream: bool,
    /// Request number on this server, for ids.
    pub(crate) seq: u64,
    /// Unix seconds.
    pub(crate) created: u64,
}

/// Output words, one per content chunk.
const WORDS: [&str; 12] = [
    "Hello",
    " from",
    " the",
    " tokentap",
    " mock",
    " provider,",
    " one",
    " token",
    " per",
    " chunk",
    " and",
    " more.",
];

impl Ctx<'_> {
    /// The text of content chunk `i`.
    pub(crate) fn word(i: u32) -> &'static str {
        WORDS[usize::try_from(i).unwrap_or(0) % WORDS.len()]
    }

    /// All chunks' text, as one piece.
    pub(crate) fn full_text(&self) -> String {
        (0..self.scenario.chunks).map(Self::word).collect()
    }

    /// A stable id: `prefix` and `len` characters from `[A-Za-z0-9]` derived from the request
    /// number and `salt`.
    pub(crate) fn id(&self, prefix: &str, len: usize, salt: u64) -> String {
        const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        let bytes = crate::tls_server::body_bytes(self.seq.wrapping_mul(1009) ^ salt, len);
        let tail: String = bytes
            .iter()
            .map(|b| char::from(ALNUM[usize::from(*b) % ALNUM.len()]))
            .collect();
        format!("{prefix}{tail}")
    }
}

/// Base input tokens for `chars` characters of request text.
pub(crate) fn tokens_for_chars(chars: usize) -> u64 {
    u64::try_from(chars / 4).unwrap_or(u64::MAX).max(1)
}

/// Characters of a text field that is a string, a list of strings, or a list of content
/// parts/blocks with a `text` field (OpenAI, Anthropic and Gemini all use one of these).
pub(crate) fn text_chars(v: &Value) -> usize {
    match v {
        Value::String(s) => s.chars().count(),
        Value::Array(items) => items.iter().map(text_chars).sum(),
        Value::Object(o) => o.get("text").map_or(0, text_chars),
        _ => 0,
    }
}

/// An answer, before it is framed and written.
pub(crate) struct Reply {
    pub(crate) api: &'static str,
    pub(crate) status: u16,
    /// Headers besides the framing ones (`Date`, `Content-Length`/`Transfer-Encoding`,
    /// `Content-Encoding`, `Connection`), `Content-Type` included.
    pub(crate) headers: Vec<(&'static str, String)>,
    /// The provider compresses this answer when the client accepts gzip.
    pub(crate) gzip: bool,
    pub(crate) body: Body,
    pub(crate) response_model: Option<String>,
    pub(crate) error_type: Option<String>,
    /// What the complete answer's usage says.
    pub(crate) tokens: Tokens,
}

pub(crate) enum Body {
    Whole(Vec<u8>),
    Stream(StreamPlan),
}

/// A streamed answer, as framed events (`data: …\n\n`, `event: …\ndata: …\n\n`, …).
pub(crate) struct StreamPlan {
    /// Sent at once, before any content.
    pub(crate) preamble: Vec<String>,
    /// Content-bearing events, one per output token.
    pub(crate) chunks: Vec<String>,
    /// Sent right after the last content chunk.
    pub(crate) finish: Vec<String>,
    /// The in-band error event and its error type, for `midstream-error`/`errevent`.
    pub(crate) error: Option<(String, String)>,
    /// Tokens the preamble already reports (Anthropic's `message_start` carries the input
    /// counts), which a cut stream still delivered; the rest of the usage comes with `finish`.
    pub(crate) early_tokens: Tokens,
}

/// `Date` header value (IMF-fixdate).
fn http_date(unix: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = unix / 86_400;
    let secs = unix % 86_400;
    // Civil-from-days (Howard Hinnant), for dates after 1970.
    let z = i64::try_from(days).unwrap_or(0) + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        DAYS[usize::try_from(days % 7).unwrap_or(0)],
        day,
        MONTHS[usize::try_from(month - 1).unwrap_or(0)],
        year,
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Shared state and the accept loop

#[derive(Debug, Default)]
struct Shared {
    records: Mutex<Vec<RequestRecord>>,
    changed: Condvar,
    /// Open connections, shut down when the mock is dropped. The same descriptor the
    /// connection's thread uses (not a `try_clone`): one descriptor per connection.
    live: Mutex<HashMap<usize, Arc<TcpStream>>>,
    seq: AtomicU64,
}

impl Shared {
    fn update(&self, idx: usize, f: impl FnOnce(&mut RequestRecord)) {
        if let Some(r) = lock(&self.records).get_mut(idx) {
            f(r);
        }
        self.changed.notify_all();
    }
}

fn accept_loop(
    listener: &TcpListener,
    config: Option<&Arc<ServerConfig>>,
    shared: &Arc<Shared>,
    stop: &AtomicBool,
) {
    let mut next_conn = 0;
    let mut accept_failed = false;
    loop {
        let accepted = listener.accept();
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // Said once: a client whose connection stays in the backlog (EMFILE, say)
                // sees only a handshake timeout.
                if !accept_failed {
                    accept_failed = true;
                    eprintln!(
                        "mock provider: accept failed after {next_conn} connections ({e}); retrying"
                    );
                }
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let conn_idx = next_conn;
        next_conn += 1;
        let tcp = SharedTcp(Arc::new(tcp));
        lock(&shared.live).insert(conn_idx, Arc::clone(&tcp.0));
        let shared = Arc::clone(shared);
        let config = config.cloned();
        let _ = thread::Builder::new()
            .name(format!("mock-conn-{conn_idx}"))
            .spawn(move || {
                // Errors end the connection; what was recorded for its requests says enough.
                let _ = serve_connection(&shared, conn_idx, tcp, config);
                if let Some(s) = lock(&shared.live).remove(&conn_idx) {
                    let _ = s.shutdown(Shutdown::Both);
                }
            });
    }
}

/// One accepted connection: TLS (the default) or plaintext ([`MockProvider::start_plaintext`]).
enum Tls {
    Tls(Box<StreamOwned<ServerConnection, SharedTcp>>),
    Plain(SharedTcp),
}

/// A connection's socket, shared with [`Shared::live`] so that dropping the mock can shut it
/// down; it is closed when both let go.
struct SharedTcp(Arc<TcpStream>);

impl io::Read for SharedTcp {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self.0).read(buf)
    }
}

impl Write for SharedTcp {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self.0).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        (&*self.0).flush()
    }
}

impl Tls {
    fn tcp(&self) -> &TcpStream {
        match self {
            Self::Tls(s) => &s.sock.0,
            Self::Plain(s) => &s.0,
        }
    }

    fn tls(&self) -> Option<&ServerConnection> {
        match self {
            Self::Tls(s) => Some(&s.conn),
            Self::Plain(_) => None,
        }
    }

    fn send_close_notify(&mut self) {
        if let Self::Tls(s) = self {
            s.conn.send_close_notify();
        }
    }
}

impl io::Read for Tls {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Tls(s) => s.read(buf),
            Self::Plain(s) => s.read(buf),
        }
    }
}

impl Write for Tls {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Tls(s) => s.write(buf),
            Self::Plain(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Tls(s) => s.flush(),
            Self::Plain(s) => s.flush(),
        }
    }
}

struct Head {
    method: String,
    target: String,
    version: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn wants_close(&self) -> bool {
        let tokens = self.header("connection").unwrap_or("");
        let has = |t: &str| tokens.split(',').any(|x| x.trim().eq_ignore_ascii_case(t));
        has("close") || (self.version == "HTTP/1.0" && !has("keep-alive"))
    }

    fn accepts_gzip(&self) -> bool {
        self.header("accept-encoding").is_some_and(|v| {
            v.split(',').any(|item| {
                let mut parts = item.split(';');
                let coding = parts.next().unwrap_or("").trim();
                let q_zero = parts.any(|p| {
                    p.trim()
                        .strip_prefix("q=")
                        .and_then(|q| q.trim().parse::<f32>().ok())
                        == Some(0.0)
                });
                (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !q_zero
            })
        })
    }
}

fn parse_head(raw: &[u8]) -> anyhow::Result<Head> {
    let text = std::str::from_utf8(raw).context("request head is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        bail!("malformed request line {line:?}");
    };
    if !version.starts_with("HTTP/1.") {
        bail!("not HTTP/1.x: {line:?}");
    }
    let mut headers = Vec::new();
    for l in lines.take_while(|l| !l.is_empty()) {
        let (n, v) = l
            .split_once(':')
            .ok_or_else(|| anyhow!("malformed header line {l:?}"))?;
        headers.push((n.trim().to_owned(), v.trim().to_owned()));
    }
    Ok(Head {
        method: method.to_owned(),
        target: target.to_owned(),
        version: version.to_owned(),
        headers,
    })
}

fn read_line(io: &mut HttpReader<Tls>) -> anyhow::Result<String> {
    let line = io
        .read_until(b"\r\n", MAX_LINE)?
        .ok_or_else(|| anyhow!("connection closed in a chunked body"))?;
    Ok(String::from_utf8_lossy(&line)
        .trim_end_matches("\r\n")
        .to_owned())
}

fn read_body(io: &mut HttpReader<Tls>, head: &Head) -> anyhow::Result<Vec<u8>> {
    let chunked = head
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if !chunked {
        let len: usize = head
            .header("content-length")
            .map(str::parse)
            .transpose()
            .context("bad Content-Length")?
            .unwrap_or(0);
        if len > MAX_BODY {
            bail!("request body of {len} bytes is over the mock's limit");
        }
        return Ok(io.take(len)?);
    }
    let mut body = Vec::new();
    loop {
        let line = read_line(io)?;
        let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
            .with_context(|| format!("bad chunk size {line:?}"))?;
        if size == 0 {
            while !read_line(io)?.is_empty() {}
            return Ok(body);
        }
        if body.len() + size > MAX_BODY {
            bail!("request body over the mock's limit");
        }
        body.extend(io.take(size)?);
        if !read_line(io)?.is_empty() {
            bail!("chunk data not followed by CRLF");
        }
    }
}

fn serve_connection(
    shared: &Arc<Shared>,
    conn_idx: usize,
    tcp: SharedTcp,
    config: Option<Arc<ServerConfig>>,
) -> anyhow::Result<()> {
    let stream = match config {
        Some(config) => {
            let conn = ServerConnection::new(config).context("creating the rustls connection")?;
            Tls::Tls(Box::new(StreamOwned::new(conn, tcp)))
        }
        None => Tls::Plain(tcp),
    };
    let mut io = HttpReader::new(stream);
    let mut index_on_connection = 0;
    loop {
        let Some(raw) = io.read_until(b"\r\n\r\n", MAX_HEAD)? else {
            return Ok(());
        };
        let head = parse_head(&raw)?;
        if head
            .header("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
        {
            let out = io.get_mut();
            out.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
            out.flush()?;
        }
        let body = read_body(&mut io, &head)?;
        let t_request = monotonic_ns();
        if head.target == RECORDS_PATH {
            // For trying the mock by hand: the records so far, not recorded themselves.
            let json = serde_json::to_vec(&*lock(&shared.records)).unwrap_or_default();
            let mut out = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                json.len()
            )
            .into_bytes();
            out.extend(json);
            let tls = io.get_mut();
            tls.write_all(&out)?;
            tls.flush()?;
            continue;
        }
        let seq = shared.seq.fetch_add(1, Ordering::SeqCst);
        let (reply, scenario, stream) = route(&head, &body, seq);

        let tls = io.get_mut().tls();
        let record = RequestRecord {
            connection: conn_idx,
            index_on_connection,
            sni: tls.and_then(|t| t.server_name()).map(str::to_owned),
            alpn: tls
                .and_then(|t| t.alpn_protocol())
                .map(|p| String::from_utf8_lossy(p).into_owned()),
            tls_version: tls
                .and_then(|t| t.protocol_version())
                .map(|v| format!("{v:?}"))
                .unwrap_or_default(),
            ..RequestRecord::of_request(&head, &body, &reply, stream, t_request)
        };
        let idx = {
            let mut records = lock(&shared.records);
            records.push(record);
            records.len() - 1
        };
        index_on_connection += 1;

        let close = head.wants_close();
        let gzip = reply.gzip && !scenario.no_gzip && head.accepts_gzip();
        let mut progress = Progress::default();
        let result = write_reply(io.get_mut(), reply, &scenario, gzip, close, &mut progress);
        let outcome = match &result {
            Ok(o) => *o,
            Err(_) => Outcome::WriteFailed,
        };
        let Progress {
            chunks_sent,
            t_first_chunk,
            response_bytes,
            tokens,
            error_type,
        } = progress;
        shared.update(idx, |r| {
            r.outcome = outcome;
            r.chunks_sent = chunks_sent;
            r.t_first_chunk_mono_ns = t_first_chunk;
            r.t_end_mono_ns = Some(monotonic_ns());
            r.response_bytes = response_bytes;
            r.tokens = tokens;
            r.content_encoding = gzip.then(|| "gzip".to_owned());
            if error_type.is_some() {
                r.error_type = error_type;
            }
        });
        match result? {
            Outcome::Disconnected => return Ok(()),
            _ if close => {
                let out = io.get_mut();
                out.send_close_notify();
                let _ = out.flush();
                return Ok(());
            }
            _ => {}
        }
    }
}

/// `(model, method)` of a Gemini path: `/{v1,v1beta,v1alpha}/models/{model}:{method}`.
fn gemini_model_path(path: &str) -> Option<(&str, &str)> {
    ["/v1beta/models/", "/v1/models/", "/v1alpha/models/"]
        .iter()
        .find_map(|prefix| path.strip_prefix(prefix))
        .and_then(|rest| rest.split_once(':'))
}

fn request_model_of(head: &Head, body: &[u8]) -> Option<String> {
    if let Some((model, _)) = gemini_model_path(head.target.split('?').next()?) {
        return Some(model.to_owned());
    }
    serde_json::from_slice::<Value>(body)
        .ok()?
        .get("model")?
        .as_str()
        .map(str::to_owned)
}

/// Chooses the provider module and builds the answer; also says whether the request asked
/// for a stream.
impl RequestRecord {
    /// What a request and the reply planned for it say, for the HTTP/1 and HTTP/2 mocks alike
    /// (the connection's fields are the caller's).
    fn of_request(head: &Head, body: &[u8], reply: &Reply, stream: bool, t_request: u64) -> Self {
        Self {
            method: head.method.clone(),
            target: head.target.clone(),
            http_version: head.version.clone(),
            host: head.header("host").map(str::to_owned),
            user_agent: head.header("user-agent").map(str::to_owned),
            accept_encoding: head.header("accept-encoding").map(str::to_owned),
            api: reply.api.to_owned(),
            request_model: request_model_of(head, body),
            response_model: reply.response_model.clone(),
            stream,
            status: reply.status,
            error_type: reply.error_type.clone(),
            chunks_planned: match &reply.body {
                Body::Stream(p) => u32::try_from(p.chunks.len()).unwrap_or(u32::MAX),
                Body::Whole(_) => 0,
            },
            request_body_bytes: body.len(),
            t_request_mono_ns: t_request,
            ..Self::default()
        }
    }
}

fn route(head: &Head, body: &[u8], seq: u64) -> (Reply, Scenario, bool) {
    let (path, query) = head
        .target
        .split_once('?')
        .unwrap_or((head.target.as_str(), ""));
    let parsed: Result<Value, _> = serde_json::from_slice(body);
    let model_from_path = gemini_model_path(path);
    let request_model = match model_from_path {
        Some((model, _)) => model.to_owned(),
        None => parsed
            .as_ref()
            .ok()
            .and_then(|v| v.get("model"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
    };
    let scenario = Scenario::parse(&request_model);
    let null = Value::Null;
    let json = parsed.as_ref().unwrap_or(&null);
    let stream = json.get("stream").and_then(Value::as_bool) == Some(true);
    let mut ctx = Ctx {
        scenario: &scenario,
        request_model: &request_model,
        body: json,
        stream,
        seq,
        created: unix_now(),
    };
    let reply = match (head.method.as_str(), path, model_from_path) {
        ("POST", "/v1/chat/completions", _) => openai::handle(&ctx, openai::Api::Chat, &parsed),
        ("POST", "/v1/completions", _) => openai::handle(&ctx, openai::Api::Completions, &parsed),
        ("POST", "/v1/embeddings", _) => openai::handle(&ctx, openai::Api::Embeddings, &parsed),
        ("POST", "/v1/responses", _) => openai::handle(&ctx, openai::Api::Responses, &parsed),
        ("POST", "/v1/messages", _) => anthropic::handle(&ctx, &parsed),
        ("POST", "/api/chat", _) => {
            // Ollama streams unless told not to.
            ctx.stream = json.get("stream").and_then(Value::as_bool) != Some(false);
            ollama::handle(&ctx, &parsed)
        }
        ("POST", _, Some((_, "generateContent"))) => gemini::handle(&ctx, &parsed),
        ("POST", _, Some((_, "streamGenerateContent"))) => {
            let sse = query.split('&').any(|p| p == "alt=sse");
            ctx.stream = true;
            if sse {
                gemini::handle(&ctx, &parsed)
            } else {
                gemini::error(
                    &ctx,
                    400,
                    "The mock provider streams only with alt=sse (as the SDKs ask).",
                )
            }
        }
        _ => openai::unknown_url(&ctx, &head.method, path),
    };
    let stream = ctx.stream;
    (reply, scenario, stream)
}

// ---------------------------------------------------------------------------------------------
// Writing answers

#[derive(Default)]
struct Progress {
    chunks_sent: u32,
    t_first_chunk: Option<u64>,
    response_bytes: usize,
    tokens: Tokens,
    error_type: Option<String>,
}

/// Gzip with a sync flush per piece, so each piece is decodable on arrival (as Anthropic
/// flushes per event).
struct Encoder(Option<GzEncoder<Vec<u8>>>);

impl Encoder {
    fn new(gzip: bool) -> Self {
        Self(gzip.then(|| GzEncoder::new(Vec::new(), Compression::default())))
    }

    fn piece(&mut self, data: &[u8]) -> io::Result<Vec<u8>> {
        match &mut self.0 {
            None => Ok(data.to_vec()),
            Some(enc) => {
                enc.write_all(data)?;
                enc.flush()?;
                Ok(std::mem::take(enc.get_mut()))
            }
        }
    }

    fn finish(&mut self) -> io::Result<Vec<u8>> {
        match self.0.take() {
            None => Ok(Vec::new()),
            Some(enc) => enc.finish(),
        }
    }
}

fn gzip_all(data: &[u8]) -> io::Result<Vec<u8>> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::default());
    enc.write_all(data)?;
    enc.finish()
}

fn status_text(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        529 => "Site Overloaded",
        _ => "Unknown",
    }
}

fn head_bytes(reply: &Reply, framing: &str, gzip: bool, close: bool) -> Vec<u8> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nDate: {}\r\n",
        reply.status,
        status_text(reply.status),
        http_date(unix_now())
    );
    for (name, value) in &reply.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(framing);
    head.push_str(if close {
        "Connection: close\r\n"
    } else {
        "Connection: keep-alive\r\n"
    });
    if gzip {
        head.push_str("Content-Encoding: gzip\r\n");
    }
    head.push_str("\r\n");
    head.into_bytes()
}

fn send(out: &mut Tls, data: &[u8], progress: &mut Progress) -> io::Result<()> {
    out.write_all(data)?;
    out.flush()?;
    progress.response_bytes += data.len();
    Ok(())
}

/// One HTTP chunk (skipped when empty: an empty chunk would end the body).
fn send_chunk(out: &mut Tls, data: &[u8], progress: &mut Progress) -> io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    let mut framed = format!("{:x}\r\n", data.len()).into_bytes();
    framed.extend_from_slice(data);
    framed.extend_from_slice(b"\r\n");
    send(out, &framed, progress)
}

/// The gzip trailer and the last chunk. Best effort: a client that got its terminal event
/// (or an in-band error) may hang up before reading them, as the SDKs do.
fn end_stream(out: &mut Tls, enc: &mut Encoder, progress: &mut Progress) {
    let _ = enc
        .finish()
        .and_then(|trailer| send_chunk(out, &trailer, progress))
        .and_then(|()| send(out, b"0\r\n\r\n", progress));
}

/// Cuts the connection without `close_notify`.
fn abort(out: &Tls) -> Outcome {
    let _ = out.tcp().shutdown(Shutdown::Both);
    Outcome::Disconnected
}

fn write_reply(
    out: &mut Tls,
    reply: Reply,
    sc: &Scenario,
    gzip: bool,
    close: bool,
    progress: &mut Progress,
) -> io::Result<Outcome> {
    match &reply.body {
        Body::Whole(body) => {
            thread::sleep(sc.delay);
            let body = if gzip { gzip_all(body)? } else { body.clone() };
            let framing = format!("Content-Length: {}\r\n", body.len());
            let mut bytes = head_bytes(&reply, &framing, gzip, close);
            if sc.disconnect {
                bytes.extend_from_slice(&body[..body.len() / 2]);
                send(out, &bytes, progress)?;
                progress.error_type = Some("stream_interrupted".to_owned());
                return Ok(abort(out));
            }
            bytes.extend_from_slice(&body);
            send(out, &bytes, progress)?;
            progress.tokens = reply.tokens;
            Ok(Outcome::Complete)
        }
        Body::Stream(plan) => {
            let head = head_bytes(&reply, "Transfer-Encoding: chunked\r\n", gzip, close);
            send(out, &head, progress)?;
            let mut enc = Encoder::new(gzip);
            for event in &plan.preamble {
                send_chunk(out, &enc.piece(event.as_bytes())?, progress)?;
            }
            progress.tokens = plan.early_tokens;
            let cut = sc
                .cut_after()
                .map(|k| usize::try_from(k).unwrap_or(usize::MAX));
            for i in 0..=plan.chunks.len() {
                if cut == Some(i) {
                    if i == 0 {
                        thread::sleep(sc.delay);
                    }
                    if sc.disconnect {
                        progress.error_type = Some("stream_interrupted".to_owned());
                        return Ok(abort(out));
                    }
                    if let Some((event, error_type)) = &plan.error {
                        send_chunk(out, &enc.piece(event.as_bytes())?, progress)?;
                        progress.error_type = Some(error_type.clone());
                        end_stream(out, &mut enc, progress);
                        return Ok(Outcome::MidstreamError);
                    }
                }
                let Some(chunk) = plan.chunks.get(i) else {
                    break;
                };
                thread::sleep(if i == 0 { sc.delay } else { sc.gap });
                send_chunk(out, &enc.piece(chunk.as_bytes())?, progress)?;
                if i == 0 {
                    progress.t_first_chunk = Some(monotonic_ns());
                }
                progress.chunks_sent += 1;
            }
            for event in &plan.finish {
                send_chunk(out, &enc.piece(event.as_bytes())?, progress)?;
            }
            progress.tokens = reply.tokens;
            end_stream(out, &mut enc, progress);
            Ok(Outcome::Complete)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tests: a rustls client drives the mock, no privileges needed.

#[cfg(test)]
mod tests;
