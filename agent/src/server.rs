//! The HTTP edge: `/healthz`, `/readyz`, `/metrics` and `/v1/stats` on hyper, over plain TCP or
//! TLS ([`EndpointSecurity`]). With a bearer token configured, everything except the kubelet's
//! probes (`/healthz`, `/readyz`) needs `Authorization: Bearer <token>`.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Incoming, header, service::service_fn};
use hyper_util::rt::TokioIo;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
};

use crate::{
    endpoint_security::{Authorization, EndpointSecurity},
    stats::{SharedStats, unix_now, window_of_query},
};

/// A client that opens a connection to the TLS port and stalls is dropped after this.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Longest wait for a request head on an open connection.
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Paths that stay open with a token configured: the kubelet's probes carry no credentials.
const OPEN_PATHS: [&str; 2] = ["/healthz", "/readyz"];

/// What the endpoints serve.
#[derive(Clone)]
pub struct ServerState {
    pub registry: Registry,
    /// Set once the probes are loaded and attached.
    pub ready: Arc<AtomicBool>,
    /// Called before `/metrics` is rendered, to bring figures up to date.
    pub before_scrape: Arc<dyn Fn() + Send + Sync>,
    /// The live feed behind `/v1/stats` (filled by the pipeline's task).
    pub stats: Option<SharedStats>,
}

/// Binds `addr`; the returned future serves until the runtime stops.
pub async fn bind(
    addr: SocketAddr,
    state: ServerState,
    security: EndpointSecurity,
) -> std::io::Result<(SocketAddr, impl Future<Output = ()>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let serve = async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    log::warn!("accept on {local}: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let state = state.clone();
            let security = security.clone();
            tokio::spawn(async move {
                let Some(config) = security.tls_config() else {
                    return serve_connection(stream, state, security).await;
                };
                let acceptor = tokio_rustls::TlsAcceptor::from(config);
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => serve_connection(tls, state, security).await,
                    Ok(Err(e)) => {
                        security.count_failed_handshake();
                        log::debug!("TLS handshake with {peer}: {e}");
                    }
                    Err(_) => {
                        security.count_failed_handshake();
                        log::debug!("TLS handshake with {peer}: timed out");
                    }
                }
            });
        }
    };
    Ok((local, serve))
}

async fn serve_connection<S>(stream: S, state: ServerState, security: EndpointSecurity)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let state = state.clone();
        let security = security.clone();
        async move { Ok::<_, std::convert::Infallible>(respond(&state, &security, &req)) }
    });
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        // A client that opens a connection and trickles a head (or nothing) is dropped.
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        log::debug!("http connection: {e}");
    }
}

fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    resp
}

fn respond(
    state: &ServerState,
    security: &EndpointSecurity,
    req: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "only GET\n");
    }
    if !OPEN_PATHS.contains(&req.uri().path()) {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .map(header::HeaderValue::as_bytes);
        match security.authorize(given) {
            Authorization::Allowed => {}
            Authorization::Missing => return unauthorized("Bearer realm=\"tokentap\""),
            Authorization::Invalid => {
                return unauthorized("Bearer realm=\"tokentap\", error=\"invalid_token\"");
            }
        }
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "text/plain", "ok\n"),
        "/readyz" => {
            if state.ready.load(Ordering::Acquire) {
                text(StatusCode::OK, "text/plain", "ready\n")
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "probes not attached yet\n",
                )
            }
        }
        "/metrics" => {
            (state.before_scrape)();
            let mut buf = Vec::new();
            let encoder = TextEncoder::new();
            match encoder.encode(&state.registry.gather(), &mut buf) {
                Ok(()) => text(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    buf,
                ),
                Err(e) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    format!("{e}\n"),
                ),
            }
        }
        "/v1/stats" => stats(state, req.uri().query()),
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics, /healthz, /readyz or /v1/stats\n",
        ),
    }
}

fn unauthorized(challenge: &'static str) -> Response<Full<Bytes>> {
    let mut resp = text(
        StatusCode::UNAUTHORIZED,
        "text/plain",
        "send Authorization: Bearer <token> (the agent's --auth-token-file)\n",
    );
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static(challenge),
    );
    resp
}

/// `GET /v1/stats?window=5m`: per provider and model over the window, as JSON.
fn stats(state: &ServerState, query: Option<&str>) -> Response<Full<Bytes>> {
    let window = match window_of_query(query) {
        Ok(w) => w,
        Err(e) => return text(StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n")),
    };
    let Some(shared) = &state.stats else {
        return text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "no stats in this mode\n",
        );
    };
    // A poisoned lock still holds consistent samples (each add is one push).
    let snapshot = match shared.lock() {
        Ok(s) => s.snapshot(unix_now(), window),
        Err(p) => p.into_inner().snapshot(unix_now(), window),
    };
    match serde_json::to_vec(&snapshot) {
        Ok(body) => text(StatusCode::OK, "application/json", body),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("{e}\n"),
        ),
    }
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
