//! The mock provider over HTTP/2: TLS with ALPN `h2` only (rustls, so the agent does not see
//! this side), hyper's HTTP/2 server, the same answers as the HTTP/1.1 mock (the same
//! `route`, scenario grammar and [`RequestRecord`]s). Streams on one connection are answered
//! concurrently, so their DATA frames interleave.
//!
//! Not supported here (the HTTP/1.1 mock has them): `disconnect`, `midstream-error` and
//! `errevent` (the stream simply ends after its content), and `Expect: 100-continue`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ServerConfig;
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::TlsAcceptor;

use super::{
    Body, HOSTS, Head, Outcome, RequestRecord, generate_certs, gzip_all, lock, make_temp_dir,
    monotonic_ns, route,
};

#[derive(Debug, Default)]
struct Shared {
    records: Mutex<Vec<RequestRecord>>,
    changed: Condvar,
    connections: AtomicUsize,
    seq: AtomicU64,
}

/// A running HTTP/2 mock provider; dropping it stops the server and removes its CA file.
#[derive(Debug)]
pub struct H2MockProvider {
    addr: SocketAddr,
    temp_dir: PathBuf,
    ca_file: PathBuf,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl H2MockProvider {
    pub fn start() -> anyhow::Result<Self> {
        let certs = generate_certs(&HOSTS)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .context("choosing TLS versions")?
            .with_no_client_auth()
            .with_single_cert(vec![certs.leaf], certs.leaf_key)
            .context("building the rustls server config")?;
        // Only h2: a client that does not offer it fails the handshake.
        config.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));

        let temp_dir = make_temp_dir()?;
        let ca_file = temp_dir.join("ca.pem");
        std::fs::write(&ca_file, certs.ca_pem.as_bytes())
            .with_context(|| format!("writing {}", ca_file.display()))?;
        let listener =
            std::net::TcpListener::bind(("127.0.0.1", 0)).context("binding 127.0.0.1:0")?;
        listener
            .set_nonblocking(true)
            .context("a non-blocking listener")?;
        let addr = listener.local_addr().context("listener address")?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("a tokio runtime for the HTTP/2 mock")?;
        let shared = Arc::new(Shared::default());
        let (stop, stopped) = oneshot::channel();
        let server_shared = Arc::clone(&shared);
        let thread = thread::Builder::new()
            .name("h2-mock".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                        return;
                    };
                    tokio::spawn(accept_loop(listener, acceptor, server_shared));
                    // Returning drops the runtime, which cancels every connection task.
                    let _ = stopped.await;
                });
            })
            .context("spawning the HTTP/2 mock thread")?;
        Ok(Self {
            addr,
            temp_dir,
            ca_file,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The CA certificate (PEM) clients must trust.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// TLS connections accepted (handshake done, `h2` negotiated).
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Waits until `n` requests were answered to the end or the timeout passes.
    pub fn wait_requests(&self, n: usize, timeout: Duration) -> Vec<RequestRecord> {
        super::wait_answered(&self.shared.records, &self.shared.changed, n, timeout)
    }
}

impl Drop for H2MockProvider {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = std::fs::remove_dir_all(&self.temp_dir);
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
) {
    while let Ok((tcp, _)) = listener.accept().await {
        let acceptor = acceptor.clone();
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            if let Err(e) = serve_connection(tcp, acceptor, shared).await {
                eprintln!("h2 mock: {e:#}");
            }
        });
    }
}

async fn serve_connection(
    tcp: tokio::net::TcpStream,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
) -> anyhow::Result<()> {
    let tls = acceptor.accept(tcp).await.context("TLS handshake")?;
    let (_, session) = tls.get_ref();
    if session.alpn_protocol() != Some(b"h2") {
        bail!("the client did not negotiate h2");
    }
    let sni = session.server_name().map(str::to_owned);
    let tls_version = session
        .protocol_version()
        .map(|v| format!("{v:?}"))
        .unwrap_or_default();
    let connection = shared.connections.fetch_add(1, Ordering::SeqCst);
    let on_conn = Arc::new(AtomicUsize::new(0));
    let service = hyper::service::service_fn(move |req| {
        let conn = ConnInfo {
            connection,
            index_on_connection: on_conn.fetch_add(1, Ordering::SeqCst),
            sni: sni.clone(),
            tls_version: tls_version.clone(),
        };
        answer(req, conn, Arc::clone(&shared))
    });
    // A client closing its connection without GOAWAY (httpx2 does) ends it with a reset:
    // that is the normal end here, not an error.
    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(tls), service)
        .await;
    Ok(())
}

struct ConnInfo {
    connection: usize,
    index_on_connection: usize,
    sni: Option<String>,
    tls_version: String,
}

async fn answer(
    req: Request<Incoming>,
    conn: ConnInfo,
    shared: Arc<Shared>,
) -> Result<Response<ReplyBody>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let t_request = monotonic_ns();
    let mut headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    if let Some(authority) = parts.uri.authority() {
        headers.push(("host".into(), authority.to_string()));
    }
    let head = Head {
        method: parts.method.as_str().to_owned(),
        target: parts
            .uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), ToString::to_string),
        version: "HTTP/2".into(),
        headers,
    };
    let seq = shared.seq.fetch_add(1, Ordering::SeqCst);
    let (reply, scenario, stream) = route(&head, &body, seq);
    let gzip = reply.gzip && !scenario.no_gzip && head.accepts_gzip();
    let index = {
        let mut records = lock(&shared.records);
        records.push(RequestRecord {
            connection: conn.connection,
            index_on_connection: conn.index_on_connection,
            sni: conn.sni,
            alpn: Some("h2".into()),
            tls_version: conn.tls_version,
            ..RequestRecord::of_request(&head, &body, &reply, stream, t_request)
        });
        records.len() - 1
    };
    let mut response = Response::builder().status(reply.status);
    for (name, value) in &reply.headers {
        response = response.header(*name, value.as_str());
    }
    let tokens = reply.tokens;
    let body = match reply.body {
        Body::Whole(bytes) => {
            let bytes = if gzip {
                response = response.header("content-encoding", "gzip");
                gzip_all(&bytes).unwrap_or(bytes)
            } else {
                bytes
            };
            finish(&shared, index, |r| {
                r.content_encoding = gzip.then(|| "gzip".into());
                r.tokens = tokens;
                r.response_bytes = bytes.len();
                r.outcome = Outcome::Complete;
                r.t_end_mono_ns = Some(monotonic_ns());
            });
            ReplyBody::Whole(Some(Bytes::from(bytes)))
        }
        Body::Stream(plan) => {
            let (tx, rx) = mpsc::channel(64);
            let (delay, gap) = (scenario.delay, scenario.gap);
            tokio::spawn(async move {
                let mut sent = 0usize;
                let mut chunks = 0u32;
                let mut first = None;
                let mut ok = tx.send(Bytes::from(plan.preamble.concat())).await.is_ok();
                tokio::time::sleep(delay).await;
                for (i, chunk) in plan.chunks.iter().enumerate() {
                    if i > 0 {
                        tokio::time::sleep(gap).await;
                    }
                    ok &= tx.send(Bytes::from(chunk.clone())).await.is_ok();
                    first.get_or_insert_with(monotonic_ns);
                    sent += chunk.len();
                    chunks += 1;
                }
                ok &= tx.send(Bytes::from(plan.finish.concat())).await.is_ok();
                drop(tx);
                finish(&shared, index, |r| {
                    r.tokens = tokens;
                    r.chunks_sent = chunks;
                    r.response_bytes = sent;
                    r.t_first_chunk_mono_ns = first;
                    r.outcome = if ok {
                        Outcome::Complete
                    } else {
                        Outcome::WriteFailed
                    };
                    r.t_end_mono_ns = Some(monotonic_ns());
                });
            });
            ReplyBody::Channel(rx)
        }
    };
    Ok(response
        .body(body)
        .unwrap_or_else(|_| Response::new(ReplyBody::Whole(None))))
}

fn finish(shared: &Shared, index: usize, update: impl FnOnce(&mut RequestRecord)) {
    if let Some(r) = lock(&shared.records).get_mut(index) {
        update(r);
    }
    shared.changed.notify_all();
}

/// A whole body, or pieces sent as they are produced (one DATA frame each, at most).
enum ReplyBody {
    Whole(Option<Bytes>),
    Channel(mpsc::Receiver<Bytes>),
}

impl hyper::body::Body for ReplyBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Self::Whole(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Self::Channel(rx) => rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b)))),
        }
    }
}
