//! A small HTTPS (HTTP/1.1 over TLS 1.3/1.2) server for the end-to-end tests.
//!
//! The end-to-end tests run real TLS clients (Python's `ssl` module, i.e. the system OpenSSL)
//! while the agent's uprobes are attached to `libssl`, and then compare what the agent captured
//! with what actually went over the connection. This server is the other end of those
//! connections and the source of truth for the comparison: for every accepted connection it
//! records, in a [`ConnectionRecord`], every plaintext byte it read and wrote, exactly as they
//! crossed the rustls plaintext boundary.
//!
//! The server is deliberately built on **rustls** rather than OpenSSL: the tests run in one
//! host, and the probes hook every process that maps `libssl`. A server on OpenSSL would add
//! its own (mirror-image) captures to every test and could mask or fake client-side results.
//! With rustls only the client under test is observed.
//!
//! Behaviour:
//! - [`TlsTestServer::start`] creates a throw-away CA and a leaf certificate (for the given
//!   host names, `localhost` and `127.0.0.1`), writes the CA certificate as PEM into a fresh
//!   temporary directory (removed on drop), binds `127.0.0.1:0` and accepts connections on a
//!   background thread, one thread per connection.
//! - Each connection serves HTTP/1.1 requests until the client closes it: request heads up to
//!   64 KiB, bodies by `Content-Length` or `Transfer-Encoding: chunked` (streamed, so tens of
//!   megabytes are fine).
//! - `GET|POST /bytes/N[?seed=S]` answers with `N` bytes of [`body_bytes`]`(S, N)`
//!   (`application/octet-stream`); every other request gets a small JSON description of
//!   itself: `{"method":…,"path":…,"body_len":…}` where `path` is the full request target,
//!   query string included.
//! - `Connection: close` (or an HTTP/1.0 request without `keep-alive`) makes the server answer
//!   with `Connection: close`, send a TLS `close_notify` and close the connection.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, anyhow, bail};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ServerConfig, ServerConnection, StreamOwned};

/// Largest accepted request head (request line + headers + blank line).
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// Largest accepted chunk-size line or trailer line of a chunked body.
pub(crate) const MAX_LINE: usize = 4 * 1024;
/// Largest accepted trailer section of a chunked body.
const MAX_TRAILERS: usize = 64 * 1024;
/// Plaintext read size.
const READ_CHUNK: usize = 64 * 1024;
/// `/bytes/N` with a larger `N` is not treated as a `/bytes` request.
const MAX_BYTES_RESPONSE: usize = 1 << 30;

/// What the server saw on one accepted connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnectionRecord {
    /// Every plaintext byte the server read from this connection, in order.
    pub received: Vec<u8>,
    /// Every plaintext byte the server wrote to this connection, in order.
    pub sent: Vec<u8>,
    /// The connection has ended (peer closed, server closed after `Connection: close`, error, or
    /// server shut down).
    pub closed: bool,
    /// Number of complete HTTP requests served (response fully written and flushed).
    pub requests: usize,
    /// Why the connection ended, if it was not a clean close (TLS error, reset, malformed
    /// request, …). A client that closes the TCP connection between requests without sending
    /// `close_notify` counts as a clean close.
    pub error: Option<String>,
}

/// A running HTTPS test server. Dropping it stops accepting, shuts down open connections and
/// removes the temporary directory holding the CA certificate.
#[derive(Debug)]
pub struct TlsTestServer {
    addr: SocketAddr,
    temp_dir: PathBuf,
    ca_file: PathBuf,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    accept_thread: Option<JoinHandle<()>>,
}

impl TlsTestServer {
    /// Generates a fresh CA and a leaf cert for `hostnames` (plus "localhost" and IP 127.0.0.1),
    /// writes the CA PEM to a file in a fresh temp dir, binds 127.0.0.1:0, and serves in
    /// background threads.
    pub fn start(hostnames: &[&str]) -> anyhow::Result<Self> {
        let certs = generate_certs(hostnames)?;

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .context("choosing TLS versions")?
            .with_no_client_auth()
            .with_single_cert(vec![certs.leaf], certs.leaf_key)
            .context("building the rustls server config")?;
        let config = Arc::new(config);

        let temp_dir = make_temp_dir()?;
        let ca_file = temp_dir.join("ca.pem");
        if let Err(e) = fs::write(&ca_file, certs.ca_pem.as_bytes()) {
            let _ = fs::remove_dir_all(&temp_dir);
            return Err(e).with_context(|| format!("writing {}", ca_file.display()));
        }

        let listener = match TcpListener::bind(("127.0.0.1", 0)) {
            Ok(l) => l,
            Err(e) => {
                let _ = fs::remove_dir_all(&temp_dir);
                return Err(e).context("binding 127.0.0.1:0");
            }
        };
        let addr = listener
            .local_addr()
            .context("local address of the listener")?;

        let shared = Arc::new(Shared::default());
        let stop = Arc::new(AtomicBool::new(false));
        let accept_thread = {
            let shared = Arc::clone(&shared);
            let stop = Arc::clone(&stop);
            thread::Builder::new()
                .name(format!("tls-accept-{}", addr.port()))
                .spawn(move || accept_loop(&listener, &config, &shared, &stop))
        };
        let accept_thread = match accept_thread {
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

    /// Path of the CA certificate (PEM) clients must trust.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// Snapshot of every connection accepted so far, in accept order.
    pub fn connections(&self) -> Vec<ConnectionRecord> {
        lock(&self.shared.records).clone()
    }

    /// Waits until at least `n` connections have been accepted AND closed (peer closed or
    /// error), or the timeout passes; returns the snapshot either way.
    pub fn wait_closed(&self, n: usize, timeout: Duration) -> Vec<ConnectionRecord> {
        let deadline = Instant::now() + timeout;
        let mut records = lock(&self.shared.records);
        loop {
            if records.iter().filter(|r| r.closed).count() >= n {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            records = match self.shared.changed.wait_timeout(records, deadline - now) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        records.clone()
    }
}

impl Drop for TlsTestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept() with a throw-away connection. Only wait for the accept
        // thread if the wake-up connection got through; otherwise leave it detached.
        let woke = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)).is_ok();
        if let Some(handle) = self.accept_thread.take()
            && woke
        {
            let _ = handle.join();
        }
        // End the per-connection threads: their next read/write fails and they mark their
        // records closed. They are not joined.
        for stream in lock(&self.shared.live).values() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        let _ = fs::remove_dir_all(&self.temp_dir);
    }
}

/// Deterministic, non-repeating-looking body bytes (printable ASCII, `!`..=`~`) for a response
/// of `len` bytes with the given seed; tests use it to know exactly what a client received.
///
/// `body_bytes(seed, n)` is a prefix of `body_bytes(seed, m)` for `n <= m`.
pub fn body_bytes(seed: u64, len: usize) -> Vec<u8> {
    // splitmix64, 8 output bytes per step, each mapped onto the 94 visible ASCII characters.
    let mut state = seed ^ 0x746f_6b65_6e74_6170; // "tokentap"
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let take = (len - out.len()).min(8);
        out.extend(z.to_le_bytes()[..take].iter().map(|b| b'!' + b % 94));
    }
    out
}

/// Held by the unit tests that load both cores (the 40 MB upload, the SDK run), so that they
/// do not run at the same time and skew each other's timings.
#[cfg(test)]
pub(crate) fn heavy_test_lock() -> MutexGuard<'static, ()> {
    static HEAVY: Mutex<()> = Mutex::new(());
    lock(&HEAVY)
}

// ---------------------------------------------------------------------------------------------
// Shared state

#[derive(Debug, Default)]
struct Shared {
    records: Mutex<Vec<ConnectionRecord>>,
    /// Signalled when a connection closes or completes a request.
    changed: Condvar,
    /// Clones of the sockets of connections still being served, by record index, so that
    /// dropping the server can shut them down.
    live: Mutex<HashMap<usize, TcpStream>>,
}

impl Shared {
    fn update(&self, idx: usize, f: impl FnOnce(&mut ConnectionRecord)) {
        if let Some(record) = lock(&self.records).get_mut(idx) {
            f(record);
        }
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Marks a connection closed when the connection thread ends, however it ends.
struct CloseGuard {
    shared: Arc<Shared>,
    idx: usize,
    error: Option<String>,
}

impl Drop for CloseGuard {
    fn drop(&mut self) {
        if let Some(stream) = lock(&self.shared.live).remove(&self.idx) {
            let _ = stream.shutdown(Shutdown::Both);
        }
        let error = self
            .error
            .take()
            .or_else(|| thread::panicking().then(|| "connection thread panicked".to_owned()));
        self.shared.update(self.idx, |r| {
            r.closed = true;
            r.error = error;
        });
        self.shared.changed.notify_all();
    }
}

// ---------------------------------------------------------------------------------------------
// Certificates

pub(crate) struct GeneratedCerts {
    pub(crate) ca_pem: String,
    pub(crate) leaf: CertificateDer<'static>,
    pub(crate) leaf_key: PrivateKeyDer<'static>,
}

pub(crate) fn generate_certs(hostnames: &[&str]) -> anyhow::Result<GeneratedCerts> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).context("CA parameters")?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "tokentap test CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().context("generating the CA key")?;
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).context("self-signing the CA")?;

    let mut names: Vec<String> = Vec::new();
    for name in hostnames.iter().copied().chain(["localhost", "127.0.0.1"]) {
        if !names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            names.push(name.to_owned());
        }
    }
    let common_name = names.first().cloned().unwrap_or_default();
    let mut leaf_params = CertificateParams::new(names).context("leaf certificate names")?;
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    leaf_params.is_ca = IsCa::ExplicitNoCa;
    leaf_params.use_authority_key_identifier_extension = true;
    leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_key = KeyPair::generate().context("generating the leaf key")?;
    let leaf = leaf_params
        .signed_by(&leaf_key, &ca)
        .context("signing the leaf certificate")?;

    Ok(GeneratedCerts {
        ca_pem: ca.pem(),
        leaf: leaf.der().clone(),
        leaf_key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
    })
}

pub(crate) fn make_temp_dir() -> anyhow::Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let base = std::env::temp_dir();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    for _ in 0..100 {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!(
            "tokentap-tls-{}-{}-{:08x}",
            std::process::id(),
            n,
            nanos
        ));
        match fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
        }
    }
    bail!(
        "could not create a temporary directory in {}",
        base.display()
    )
}

// ---------------------------------------------------------------------------------------------
// Accepting and serving

fn accept_loop(
    listener: &TcpListener,
    config: &Arc<ServerConfig>,
    shared: &Arc<Shared>,
    stop: &AtomicBool,
) {
    loop {
        let accepted = listener.accept();
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let tcp = match accepted {
            Ok((tcp, _peer)) => tcp,
            Err(_) => {
                // EMFILE and friends: back off instead of spinning.
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);

        let idx = {
            let mut records = lock(&shared.records);
            records.push(ConnectionRecord::default());
            records.len() - 1
        };
        if let Ok(clone) = tcp.try_clone() {
            lock(&shared.live).insert(idx, clone);
        }

        let spawned = {
            let shared = Arc::clone(shared);
            let config = Arc::clone(config);
            thread::Builder::new()
                .name(format!("tls-conn-{idx}"))
                .spawn(move || {
                    let mut guard = CloseGuard {
                        shared: Arc::clone(&shared),
                        idx,
                        error: None,
                    };
                    if let Err(e) = serve_connection(shared, idx, tcp, config) {
                        guard.error = Some(format!("{e:#}"));
                    }
                })
        };
        if let Err(e) = spawned {
            // The closure (and the stream in it) is gone; record the failure.
            drop(CloseGuard {
                shared: Arc::clone(shared),
                idx,
                error: Some(format!("spawning the connection thread: {e}")),
            });
        }
    }
}

/// Records the plaintext crossing the rustls boundary into the connection's record.
struct Recorded<S> {
    inner: S,
    shared: Arc<Shared>,
    idx: usize,
}

impl<S: Read> Read for Recorded<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 {
            let data = &buf[..n];
            self.shared
                .update(self.idx, |r| r.received.extend_from_slice(data));
        }
        Ok(n)
    }
}

impl<S: Write> Write for Recorded<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        if n > 0 {
            let data = &buf[..n];
            self.shared
                .update(self.idx, |r| r.sent.extend_from_slice(data));
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn serve_connection(
    shared: Arc<Shared>,
    idx: usize,
    tcp: TcpStream,
    config: Arc<ServerConfig>,
) -> anyhow::Result<()> {
    let conn = ServerConnection::new(config).context("creating the rustls connection")?;
    let stream = Recorded {
        inner: StreamOwned::new(conn, tcp),
        shared: Arc::clone(&shared),
        idx,
    };
    let mut io = HttpReader::new(stream);
    loop {
        let Some(head) = io
            .read_until(b"\r\n\r\n", MAX_HEAD)
            .context("reading a request head")?
        else {
            return Ok(()); // the client closed the connection between requests
        };
        let request = parse_request_head(&head)?;
        let body_len = if request.chunked {
            read_chunked_body(&mut io)?
        } else {
            let len = request.content_length.unwrap_or(0);
            io.skip(len).context("reading the request body")?;
            len
        };

        let response = build_response(&request, body_len);
        let out = io.get_mut();
        out.write_all(&response).context("writing the response")?;
        out.flush().context("flushing the response")?;
        shared.update(idx, |r| r.requests += 1);
        shared.changed.notify_all();

        if request.close {
            let out = io.get_mut();
            out.inner.conn.send_close_notify();
            let _ = out.inner.flush();
            return Ok(());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP

/// A buffered reader for HTTP framing: delimiter search for heads and lines, and streaming
/// skips for bodies.
pub(crate) struct HttpReader<R> {
    inner: R,
    buf: Vec<u8>,
    pos: usize,
}

impl<R: Read> HttpReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        Self {
            inner,
            buf: Vec::with_capacity(READ_CHUNK),
            pos: 0,
        }
    }

    pub(crate) fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    pub(crate) fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Reads more data after the buffered bytes; `Ok(0)` at end of stream.
    pub(crate) fn fill(&mut self) -> io::Result<usize> {
        if self.pos > 0 {
            // Only the unconsumed tail (at most one head plus one read) is moved.
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let old = self.buf.len();
        self.buf.resize(old + READ_CHUNK, 0);
        let result = loop {
            match self.inner.read(&mut self.buf[old..]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        self.buf.truncate(old + result.as_ref().map_or(0, |n| *n));
        result
    }

    /// Returns the bytes up to and including `delim`. `Ok(None)` if the stream ends (cleanly,
    /// or by a TCP close without TLS `close_notify`) before any byte of it was read. Fails if
    /// more than `max` bytes would be needed.
    pub(crate) fn read_until(&mut self, delim: &[u8], max: usize) -> io::Result<Option<Vec<u8>>> {
        let mut scanned = 0;
        loop {
            let avail = &self.buf[self.pos..];
            if let Some(i) = find(&avail[scanned..], delim) {
                let end = scanned + i + delim.len();
                if end > max {
                    return Err(too_long(max));
                }
                let out = avail[..end].to_vec();
                self.pos += end;
                return Ok(Some(out));
            }
            if avail.len() >= max {
                return Err(too_long(max));
            }
            scanned = avail.len().saturating_sub(delim.len() - 1);
            let nothing_read = avail.is_empty();
            match self.fill() {
                Ok(0) if nothing_read => return Ok(None),
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(_) => {}
                Err(e) if nothing_read && e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Ok(None);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Consumes exactly `n` bytes without keeping them.
    pub(crate) fn skip(&mut self, n: u64) -> io::Result<()> {
        let mut left = n;
        while left > 0 {
            if self.buffered() == 0 && self.fill()? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let take = u64::try_from(self.buffered()).unwrap_or(u64::MAX).min(left);
            // `take` is at most `buffered()`, a usize.
            self.pos += usize::try_from(take).unwrap_or(0);
            left -= take;
        }
        Ok(())
    }

    /// Consumes and returns exactly `n` bytes.
    pub(crate) fn take(&mut self, n: usize) -> io::Result<Vec<u8>> {
        while self.buffered() < n {
            if self.fill()? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        let out = self.buf[self.pos..self.pos + n].to_vec();
        self.pos += n;
        Ok(out)
    }
}

fn too_long(max: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("line or head longer than {max} bytes"),
    )
}

pub(crate) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[derive(Debug)]
struct Request {
    method: String,
    target: String,
    content_length: Option<u64>,
    chunked: bool,
    close: bool,
}

fn parse_request_head(head: &[u8]) -> anyhow::Result<Request> {
    let text = std::str::from_utf8(head).context("request head is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        bail!("malformed request line {request_line:?}");
    };
    if method.is_empty() || target.is_empty() || !version.starts_with("HTTP/1.") {
        bail!("malformed request line {request_line:?}");
    }

    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut close = version == "HTTP/1.0";
    for line in lines.take_while(|l| !l.is_empty()) {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| anyhow!("malformed header line {line:?}"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let len: u64 = value
                .parse()
                .with_context(|| format!("bad Content-Length {value:?}"))?;
            if content_length.is_some_and(|old| old != len) {
                bail!("conflicting Content-Length headers");
            }
            content_length = Some(len);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            let last = value.rsplit(',').next().unwrap_or_default().trim();
            if last.eq_ignore_ascii_case("chunked") {
                chunked = true;
            } else {
                bail!("unsupported Transfer-Encoding {value:?}");
            }
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    close = false;
                }
            }
        }
    }
    Ok(Request {
        method: method.to_owned(),
        target: target.to_owned(),
        content_length,
        chunked,
        close,
    })
}

/// Reads a chunked body including the final 0-chunk and trailers; returns the decoded length.
fn read_chunked_body<R: Read>(io: &mut HttpReader<R>) -> anyhow::Result<u64> {
    let mut total: u64 = 0;
    loop {
        let line = read_line(io).context("reading a chunk size")?;
        let size_field = line.split(';').next().unwrap_or_default().trim();
        let size = u64::from_str_radix(size_field, 16)
            .with_context(|| format!("bad chunk size line {line:?}"))?;
        if size == 0 {
            let mut trailer_len = 0;
            loop {
                let trailer = read_line(io).context("reading chunked trailers")?;
                if trailer.is_empty() {
                    return Ok(total);
                }
                trailer_len += trailer.len();
                if trailer_len > MAX_TRAILERS {
                    bail!("chunked trailers longer than {MAX_TRAILERS} bytes");
                }
            }
        }
        io.skip(size).context("reading chunk data")?;
        total = total.saturating_add(size);
        if !read_line(io)
            .context("reading the end of a chunk")?
            .is_empty()
        {
            bail!("chunk data not followed by CRLF");
        }
    }
}

/// Reads one CRLF-terminated line (without the CRLF); end of stream is an error.
fn read_line<R: Read>(io: &mut HttpReader<R>) -> anyhow::Result<String> {
    let line = io
        .read_until(b"\r\n", MAX_LINE)?
        .ok_or_else(|| anyhow!("connection closed in the middle of a request"))?;
    let line = String::from_utf8(line).context("line is not UTF-8")?;
    Ok(line.trim_end_matches("\r\n").to_owned())
}

/// `Some((len, seed))` for `GET|POST /bytes/N[?seed=S]`.
fn bytes_route(method: &str, target: &str) -> Option<(usize, u64)> {
    if method != "GET" && method != "POST" {
        return None;
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let len: usize = path.strip_prefix("/bytes/")?.parse().ok()?;
    if len > MAX_BYTES_RESPONSE {
        return None;
    }
    let mut seed = 0;
    for param in query.split('&') {
        if let Some(value) = param.strip_prefix("seed=") {
            seed = value.parse().ok()?;
        }
    }
    Some((len, seed))
}

fn build_response(request: &Request, body_len: u64) -> Vec<u8> {
    let (content_type, body) = match bytes_route(&request.method, &request.target) {
        Some((len, seed)) => ("application/octet-stream", body_bytes(seed, len)),
        None => {
            let json = serde_json::json!({
                "method": request.method,
                "path": request.target,
                "body_len": body_len,
            });
            ("application/json", json.to_string().into_bytes())
        }
    };
    let mut response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{}\r\n",
        body.len(),
        if request.close {
            "Connection: close\r\n"
        } else {
            ""
        },
    )
    .into_bytes();
    response.extend_from_slice(&body);
    response
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use rustls::pki_types::ServerName;
    use rustls::pki_types::pem::PemObject;
    use rustls::{ClientConfig, ClientConnection, RootCertStore};
    use serde_json::Value;

    use super::*;

    const WAIT: Duration = Duration::from_secs(30);

    /// Records what the client side wrote and read, at its plaintext boundary.
    struct Tap<S> {
        inner: S,
        written: Vec<u8>,
        read: Vec<u8>,
    }

    impl<S: Read> Read for Tap<S> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.read.extend_from_slice(&buf[..n]);
            Ok(n)
        }
    }

    impl<S: Write> Write for Tap<S> {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = self.inner.write(buf)?;
            self.written.extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            self.inner.flush()
        }
    }

    type Client = HttpReader<Tap<StreamOwned<ClientConnection, TcpStream>>>;

    fn connect(server: &TlsTestServer, name: &'static str) -> Client {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(server.ca_file()).expect("CA file is readable") {
            roots
                .add(cert.expect("CA file is valid PEM"))
                .expect("CA certificate is acceptable");
        }
        let config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("default TLS versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
        let conn = ClientConnection::new(
            Arc::new(config),
            ServerName::try_from(name).expect("valid server name"),
        )
        .expect("client connection");
        let tcp = TcpStream::connect(server.addr()).expect("connect to the test server");
        HttpReader::new(Tap {
            inner: StreamOwned::new(conn, tcp),
            written: Vec::new(),
            read: Vec::new(),
        })
    }

    fn read_exact_vec<R: Read>(io: &mut HttpReader<R>, n: usize) -> Vec<u8> {
        while io.buffered() < n {
            assert!(io.fill().expect("read the response body") > 0, "early EOF");
        }
        let out = io.buf[io.pos..io.pos + n].to_vec();
        io.pos += n;
        out
    }

    /// Sends `request` and reads one response; returns (head, body).
    fn exchange(client: &mut Client, request: &[u8]) -> (String, Vec<u8>) {
        client.get_mut().write_all(request).expect("write request");
        client.get_mut().flush().expect("flush request");
        let head = client
            .read_until(b"\r\n\r\n", MAX_HEAD)
            .expect("read response head")
            .expect("a response");
        let head = String::from_utf8(head).expect("UTF-8 head");
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        let len: usize = head
            .split("\r\n")
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .expect("Content-Length")
            .parse()
            .expect("numeric Content-Length");
        let body = read_exact_vec(client, len);
        (head, body)
    }

    fn json(body: &[u8]) -> Value {
        serde_json::from_slice(body).expect("JSON body")
    }

    #[test]
    fn body_bytes_is_deterministic_and_printable() {
        let a = body_bytes(3, 10_000);
        assert_eq!(a, body_bytes(3, 10_000));
        assert_eq!(&a[..777], &body_bytes(3, 777)[..]);
        assert_ne!(a, body_bytes(4, 10_000));
        assert!(a.iter().all(|b| (b'!'..=b'~').contains(b)));
        assert!(body_bytes(0, 0).is_empty());
        // Not a short cycle: no 16-byte window repeats at a small distance.
        assert_ne!(&a[..16], &a[8..24]);
    }

    #[test]
    fn keepalive_records_exact_plaintext() {
        let server = TlsTestServer::start(&["tokentap.test"]).expect("start server");
        let ca = fs::read_to_string(server.ca_file()).expect("read CA");
        assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"));

        let mut client = connect(&server, "tokentap.test");
        let client_thread = thread::spawn(move || {
            // 1: GET /bytes
            let (head, body) = exchange(
                &mut client,
                b"GET /bytes/100000?seed=3 HTTP/1.1\r\nHost: tokentap.test\r\n\r\n",
            );
            assert!(head.contains("Content-Type: application/octet-stream\r\n"));
            assert!(!head.contains("Connection: close"));
            assert_eq!(body, body_bytes(3, 100_000));

            // 2: POST with a 1 MB Content-Length body
            let upload = body_bytes(99, 1 << 20);
            let mut request = format!(
                "POST /upload?m=cl HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
                upload.len()
            )
            .into_bytes();
            request.extend_from_slice(&upload);
            let (head, body) = exchange(&mut client, &request);
            assert!(head.contains("Content-Type: application/json\r\n"));
            assert_eq!(
                json(&body),
                serde_json::json!({"method": "POST", "path": "/upload?m=cl", "body_len": 1 << 20})
            );

            // 3: POST with a chunked body, a chunk extension and a trailer
            let request =
                b"POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
                5\r\nhello\r\n1;ext=1\r\n \r\nA\r\n0123456789\r\n0\r\nX-Trailer: yes\r\n\r\n";
            let (_, body) = exchange(&mut client, request);
            assert_eq!(
                json(&body),
                serde_json::json!({"method": "POST", "path": "/chunked", "body_len": 16})
            );

            let tap = client.get_mut();
            tap.inner.conn.send_close_notify();
            tap.inner.flush().expect("send close_notify");
            let Tap { written, read, .. } = client.inner;
            (written, read)
        });
        let (written, read) = client_thread.join().expect("client thread");

        let records = server.wait_closed(1, WAIT);
        assert_eq!(records.len(), 1);
        let record = &records[0];
        assert!(record.closed);
        assert_eq!(record.error, None);
        assert_eq!(record.requests, 3);
        assert_eq!(record.received.len(), written.len());
        assert!(record.received == written, "received bytes differ");
        assert_eq!(record.sent.len(), read.len());
        assert!(record.sent == read, "sent bytes differ");
    }

    #[test]
    fn connection_close_is_honoured() {
        let server = TlsTestServer::start(&[]).expect("start server");
        let mut client = connect(&server, "localhost");
        let (head, body) = exchange(
            &mut client,
            b"GET /bytes/10 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        );
        assert!(head.contains("Connection: close\r\n"));
        assert_eq!(body, body_bytes(0, 10));
        // The server sent close_notify: a clean end of stream.
        assert_eq!(client.fill().expect("clean EOF"), 0);

        let records = server.wait_closed(1, WAIT);
        assert_eq!(records.len(), 1);
        assert!(records[0].closed);
        assert_eq!(records[0].requests, 1);
        assert_eq!(records[0].error, None);
    }

    #[test]
    fn ip_address_name_is_valid() {
        let server = TlsTestServer::start(&["a.example", "b.example"]).expect("start server");
        for name in ["127.0.0.1", "a.example", "b.example", "localhost"] {
            let mut client = connect(&server, name);
            let (_, body) = exchange(&mut client, b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n");
            assert_eq!(
                json(&body),
                serde_json::json!({"method": "GET", "path": "/x", "body_len": 0})
            );
        }
    }

    #[test]
    fn bad_clients_are_recorded_not_fatal() {
        let server = TlsTestServer::start(&[]).expect("start server");

        // Plain HTTP on the TLS port.
        let mut plain = TcpStream::connect(server.addr()).expect("connect");
        plain
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("write");
        let mut sink = Vec::new();
        let _ = plain.read_to_end(&mut sink);

        // An oversized request head.
        let mut client = connect(&server, "localhost");
        let mut request = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
        request.resize(request.len() + 70 * 1024, b'a');
        client.get_mut().write_all(&request).expect("write");
        client.get_mut().flush().expect("flush");
        let mut buf = [0u8; 16];
        let _ = client.get_mut().read(&mut buf);

        // A TCP connection closed during the handshake, and an abrupt close mid-request.
        drop(TcpStream::connect(server.addr()).expect("connect"));
        let mut client2 = connect(&server, "localhost");
        client2
            .get_mut()
            .write_all(b"POST / HTTP/1.1\r\nContent-Length: 100\r\n\r\nabc")
            .expect("write");
        client2.get_mut().flush().expect("flush");
        drop(client2);

        // The server still works.
        let mut client = connect(&server, "localhost");
        let (_, body) = exchange(&mut client, b"GET /bytes/5?seed=1 HTTP/1.1\r\n\r\n");
        assert_eq!(body, body_bytes(1, 5));
        drop(client);

        let records = server.wait_closed(5, WAIT);
        assert_eq!(records.len(), 5, "{records:#?}");
        assert!(records.iter().all(|r| r.closed));
        assert!(records[0].error.is_some(), "plain HTTP: {:?}", records[0]);
        assert!(records[1].error.is_some(), "big head: {:?}", records[1]);
        assert!(records[1].received.len() >= MAX_HEAD);
        assert!(
            records[3].error.is_some(),
            "truncated body: {:?}",
            records[3]
        );
        assert_eq!(records[4].requests, 1);
    }

    #[test]
    fn drop_does_not_hang_with_idle_connections() {
        let server = TlsTestServer::start(&[]).expect("start server");
        let ca_file = server.ca_file().to_owned();
        let mut client = connect(&server, "localhost");
        let _ = exchange(&mut client, b"GET /a HTTP/1.1\r\n\r\n");
        let started = Instant::now();
        drop(server);
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(!ca_file.exists());
        // The idle connection was shut down.
        let mut buf = [0u8; 1];
        assert!(!matches!(client.get_mut().read(&mut buf), Ok(n) if n > 0));
    }

    // ---- the Python clients (skipped when python3 is not installed) -----------------------

    fn python_available() -> bool {
        Command::new("python3")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// Runs a tls_clients.py mode against `server`; `None` if python3 is missing.
    fn run_client(server: &TlsTestServer, mode: &str, extra: &[&str]) -> Option<Value> {
        if !python_available() {
            eprintln!("python3 not found; skipping the {mode} client test");
            return None;
        }
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/tls_clients.py");
        let output = Command::new("python3")
            .arg(script)
            .arg(mode)
            .args(["--port", &server.port().to_string()])
            .arg("--cafile")
            .arg(server.ca_file())
            .args(extra)
            .output()
            .expect("run python3");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "{mode} failed: {}\nstdout: {stdout}\nstderr: {stderr}",
            output.status
        );
        eprintln!("{mode}: {}", stdout.trim());
        let value: Value = serde_json::from_str(stdout.trim()).expect("one JSON object on stdout");
        assert_eq!(value["mode"], mode);
        assert!(value["pid"].as_u64().is_some_and(|p| p > 0), "{value}");
        Some(value)
    }

    /// The server record whose received bytes contain `m=<marker>` (exactly one).
    fn record_for<'a>(records: &'a [ConnectionRecord], marker: &str) -> &'a ConnectionRecord {
        let needle = format!("m={marker} ");
        let found: Vec<_> = records
            .iter()
            .filter(|r| find(&r.received, needle.as_bytes()).is_some())
            .collect();
        assert_eq!(found.len(), 1, "connections with marker {marker}");
        found[0]
    }

    /// Checks the client's per-connection report against the server's record.
    fn check_connection(records: &[ConnectionRecord], entry: &Value) {
        let marker = entry["id"].as_str().expect("id");
        let record = record_for(records, marker);
        assert!(record.closed, "{marker} not closed");
        assert_eq!(record.error, None, "{marker}");
        assert_eq!(Some(record.requests as u64), entry["requests"].as_u64());
        assert!(entry["thread_id"].as_u64().is_some());
        let body_bytes_sent: usize = responses_body_len(&record.sent);
        assert_eq!(
            Some(body_bytes_sent as u64),
            entry["response_bytes"].as_u64()
        );
    }

    /// Sum of the Content-Length of the responses in `sent`.
    fn responses_body_len(sent: &[u8]) -> usize {
        let mut io = HttpReader::new(sent);
        let mut total = 0;
        while let Some(head) = io.read_until(b"\r\n\r\n", MAX_HEAD).expect("parse") {
            let head = String::from_utf8(head).expect("UTF-8");
            let len: usize = head
                .split("\r\n")
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .and_then(|v| v.parse().ok())
                .expect("Content-Length");
            io.skip(len as u64).expect("body");
            total += len;
        }
        total
    }

    #[test]
    fn python_keepalive() {
        let server = TlsTestServer::start(&[]).expect("start server");
        let Some(out) = run_client(&server, "keepalive", &[]) else {
            return;
        };
        let records = server.wait_closed(1, WAIT);
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].requests, 3);
        let conns = out["connections"].as_array().expect("connections");
        assert_eq!(conns.len(), 1);
        check_connection(&records, &conns[0]);
        assert!(find(&records[0].sent, &body_bytes(2, 70_000)).is_some());
    }

    #[test]
    fn python_asyncio() {
        let server = TlsTestServer::start(&[]).expect("start server");
        let Some(out) = run_client(&server, "asyncio", &[]) else {
            return;
        };
        let records = server.wait_closed(1, WAIT);
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].requests, 2);
        let conns = out["connections"].as_array().expect("connections");
        assert_eq!(conns.len(), 1);
        check_connection(&records, &conns[0]);
    }

    #[test]
    fn python_threads() {
        let server = TlsTestServer::start(&[]).expect("start server");
        let Some(out) = run_client(&server, "threads", &[]) else {
            return;
        };
        let records = server.wait_closed(8, WAIT);
        assert_eq!(records.len(), 8);
        let conns = out["connections"].as_array().expect("connections");
        assert_eq!(conns.len(), 8);
        let mut thread_ids: Vec<u64> = conns
            .iter()
            .map(|c| c["thread_id"].as_u64().expect("thread_id"))
            .collect();
        thread_ids.sort_unstable();
        thread_ids.dedup();
        assert_eq!(thread_ids.len(), 8, "one thread per connection");
        for entry in conns {
            check_connection(&records, entry);
        }
    }

    #[test]
    fn python_large() {
        let _heavy = heavy_test_lock();
        let server = TlsTestServer::start(&[]).expect("start server");
        let started = Instant::now();
        let Some(out) = run_client(&server, "large", &["--body-mb", "40"]) else {
            return;
        };
        eprintln!("large client took {:?}", started.elapsed());
        let records = server.wait_closed(1, Duration::from_secs(60));
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].requests, 2);
        assert_eq!(out["body_len"], 40 << 20);
        assert!(records[0].received.len() > 40 << 20);
        let conns = out["connections"].as_array().expect("connections");
        check_connection(&records, &conns[0]);
        assert!(records[0].sent.ends_with(&body_bytes(7, 1 << 20)));
    }

    #[test]
    fn python_late_start() {
        let server = TlsTestServer::start(&[]).expect("start server");
        let Some(out) = run_client(&server, "late-start", &["--delay-ms", "50"]) else {
            return;
        };
        let records = server.wait_closed(1, WAIT);
        assert_eq!(records.len(), 1);
        let conns = out["connections"].as_array().expect("connections");
        check_connection(&records, &conns[0]);
        assert_eq!(out["libssl_mapped_before_import"], false);
        assert_eq!(out["libssl_mapped_after_import"], true);
        let loaded = out["ssl_load_s"].as_f64().expect("ssl_load_s");
        let request = out["request_start_s"].as_f64().expect("request_start_s");
        assert!(request >= loaded + 0.05, "{out}");
    }
}
