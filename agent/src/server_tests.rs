//! The endpoints on loopback, without privileges: bearer token (401/200, probes open), TLS with
//! a test CA, plaintext to the TLS port, certificate rotation, and one-line setup errors.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};

use super::*;
use crate::endpoint_security::SecurityFiles;

const TOKEN: &str = "s3cr3t-t0ken";

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tokentap-server-{name}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// A CA and a leaf for `localhost`/127.0.0.1 signed by it, written as PEM files.
struct TestPki {
    ca_pem: String,
    cert: PathBuf,
    key: PathBuf,
}

fn write_pki(dir: &Path, ca_name: &str) -> TestPki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, ca_name);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key")).expect("CA");
    let leaf_key = KeyPair::generate().expect("leaf key");
    let leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("leaf params")
        .signed_by(&leaf_key, &ca)
        .expect("leaf");
    let cert = dir.join("tls.crt");
    let key = dir.join("tls.key");
    // Written next to the target and renamed, as a Secret update swaps files.
    for (path, pem) in [(&cert, leaf.pem()), (&key, leaf_key.serialize_pem())] {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, pem).expect("write PEM");
        std::fs::rename(&tmp, path).expect("rename PEM");
    }
    TestPki {
        ca_pem: ca.pem(),
        cert,
        key,
    }
}

/// Serves on 127.0.0.1 from a runtime of its own (dropped with the guard).
struct TestServer {
    addr: SocketAddr,
    registry: Registry,
    _runtime: tokio::runtime::Runtime,
}

fn start(files: &SecurityFiles) -> TestServer {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let registry = Registry::new();
    let security = EndpointSecurity::load(files)
        .expect("security files load")
        .with_metrics(&registry);
    let state = ServerState {
        registry: registry.clone(),
        ready: Arc::new(AtomicBool::new(true)),
        before_scrape: Arc::new(|| {}),
        stats: None,
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], 0));
    let (addr, serve) = runtime
        .block_on(bind(addr, state, security))
        .expect("bind loopback");
    runtime.spawn(serve);
    TestServer {
        addr,
        registry,
        _runtime: runtime,
    }
}

fn request(path: &str, authorization: Option<&str>) -> String {
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n")
}

fn exchange(stream: &mut impl ReadWrite, req: &str) -> String {
    stream.write_all(req.as_bytes()).expect("send request");
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn tcp(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s
}

fn plain_get(addr: SocketAddr, path: &str, authorization: Option<&str>) -> String {
    exchange(&mut tcp(addr), &request(path, authorization))
}

fn tls_client(ca_pem: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).expect("CA PEM"))
        .expect("CA root");
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

fn tls_get(
    addr: SocketAddr,
    client: &Arc<rustls::ClientConfig>,
    path: &str,
    authorization: Option<&str>,
) -> Result<String, std::io::Error> {
    let conn = rustls::ClientConnection::new(
        Arc::clone(client),
        ServerName::try_from("localhost").expect("name"),
    )
    .expect("client connection");
    let mut tls = rustls::StreamOwned::new(conn, tcp(addr));
    tls.write_all(request(path, authorization).as_bytes())?;
    let mut out = Vec::new();
    match tls.read_to_end(&mut out) {
        Ok(_) => {}
        // hyper closes without close_notify after `Connection: close`.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !out.is_empty() => {}
        Err(e) => return Err(e),
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn status(response: &str) -> &str {
    response.lines().next().unwrap_or("")
}

fn counter(registry: &Registry, name: &str, label: &str) -> u64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().iter())
        .filter(|m| m.get_label().iter().any(|l| l.value() == label))
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

#[test]
fn open_by_default() {
    let server = start(&SecurityFiles::default());
    assert_eq!(
        status(&plain_get(server.addr, "/metrics", None)),
        "HTTP/1.1 200 OK"
    );
}

#[test]
fn token_guards_metrics_and_v1_but_not_the_probes() {
    let dir = temp_dir("token");
    let token_file = dir.join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("token file");
    let server = start(&SecurityFiles {
        auth_token_file: Some(token_file.clone()),
        ..SecurityFiles::default()
    });
    let bearer = format!("Bearer {TOKEN}");
    for path in ["/metrics", "/v1/stats", "/v1/anything", "/elsewhere"] {
        let resp = plain_get(server.addr, path, None);
        assert_eq!(status(&resp), "HTTP/1.1 401 Unauthorized", "{path}: {resp}");
        assert!(
            resp.to_ascii_lowercase()
                .contains("www-authenticate: bearer realm=\"tokentap\""),
            "{resp}"
        );
        let resp = plain_get(server.addr, path, Some("Bearer wrong"));
        assert_eq!(status(&resp), "HTTP/1.1 401 Unauthorized", "{path}");
        assert!(resp.contains("error=\"invalid_token\""), "{resp}");
        assert!(!resp.contains(TOKEN), "the token is never echoed");
        let resp = plain_get(server.addr, path, Some(&format!("Basic {TOKEN}")));
        assert_eq!(status(&resp), "HTTP/1.1 401 Unauthorized", "{path}");
    }
    let resp = plain_get(server.addr, "/metrics", Some(&bearer));
    assert_eq!(status(&resp), "HTTP/1.1 200 OK", "{resp}");
    assert!(resp.contains("tokentap_endpoint_rejected_total"), "{resp}");
    // No stats feed in this server: the route is reached (404 from the handler, not 401).
    let resp = plain_get(server.addr, "/v1/stats", Some(&bearer));
    assert_eq!(status(&resp), "HTTP/1.1 404 Not Found", "{resp}");
    for path in ["/healthz", "/readyz"] {
        assert_eq!(
            status(&plain_get(server.addr, path, None)),
            "HTTP/1.1 200 OK",
            "{path} stays open for the kubelet"
        );
    }
    assert_eq!(
        counter(
            &server.registry,
            "tokentap_endpoint_rejected_total",
            "missing_token"
        ),
        4 + 4, // no header, and a Basic header
    );
    assert_eq!(
        counter(
            &server.registry,
            "tokentap_endpoint_rejected_total",
            "invalid_token"
        ),
        4
    );

    // Rotation: the new token works at once, the old one no longer does.
    let tmp = dir.join("token.tmp");
    std::fs::write(&tmp, "rotated-token").expect("new token");
    std::fs::rename(&tmp, &token_file).expect("swap token");
    assert_eq!(
        status(&plain_get(server.addr, "/metrics", Some(&bearer))),
        "HTTP/1.1 401 Unauthorized"
    );
    assert_eq!(
        status(&plain_get(
            server.addr,
            "/metrics",
            Some("Bearer rotated-token")
        )),
        "HTTP/1.1 200 OK"
    );
    // An empty file after a change keeps the previous token in service, and is counted.
    std::fs::write(&tmp, "").expect("empty token");
    std::fs::rename(&tmp, &token_file).expect("swap token");
    assert_eq!(
        status(&plain_get(
            server.addr,
            "/metrics",
            Some("Bearer rotated-token")
        )),
        "HTTP/1.1 200 OK"
    );
    assert_eq!(
        counter(
            &server.registry,
            "tokentap_endpoint_reload_errors_total",
            "auth_token"
        ),
        1
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn tls_with_a_test_ca_and_token() {
    let dir = temp_dir("tls");
    let pki = write_pki(&dir, "tokentap test CA one");
    let token_file = dir.join("token");
    std::fs::write(&token_file, TOKEN).expect("token file");
    let server = start(&SecurityFiles {
        tls_cert: Some(pki.cert.clone()),
        tls_key: Some(pki.key.clone()),
        auth_token_file: Some(token_file),
    });
    let client = tls_client(&pki.ca_pem);
    let resp = tls_get(
        server.addr,
        &client,
        "/metrics",
        Some(&format!("Bearer {TOKEN}")),
    )
    .expect("TLS request");
    assert_eq!(status(&resp), "HTTP/1.1 200 OK", "{resp}");
    let resp = tls_get(server.addr, &client, "/metrics", None).expect("TLS request");
    assert_eq!(status(&resp), "HTTP/1.1 401 Unauthorized", "{resp}");
    let resp = tls_get(server.addr, &client, "/healthz", None).expect("TLS request");
    assert_eq!(status(&resp), "HTTP/1.1 200 OK", "{resp}");

    // Plaintext HTTP to the TLS port: no HTTP answer, the connection ends, counted.
    let resp = plain_get(server.addr, "/healthz", None);
    assert!(
        !resp.starts_with("HTTP/"),
        "plaintext got an answer: {resp:?}"
    );
    // Counted once the server's side of the handshake has failed (just after the client saw
    // the connection end).
    let counted = (0..100).any(|_| {
        let n = counter(
            &server.registry,
            "tokentap_endpoint_rejected_total",
            "tls_handshake",
        );
        n == 1 || {
            std::thread::sleep(Duration::from_millis(50));
            false
        }
    });
    assert!(counted, "the failed handshake is counted");
    // The server still serves TLS afterwards.
    let resp = tls_get(server.addr, &client, "/healthz", None).expect("TLS request");
    assert_eq!(status(&resp), "HTTP/1.1 200 OK");

    // A client that trusts another CA refuses the server's certificate.
    let other = write_pki(&temp_dir("tls-other"), "some other CA");
    assert!(tls_get(server.addr, &tls_client(&other.ca_pem), "/healthz", None).is_err());

    // Rotation: new files from a new CA are served to the next connection.
    let rotated = write_pki(&dir, "tokentap test CA two");
    let resp = tls_get(server.addr, &tls_client(&rotated.ca_pem), "/healthz", None)
        .expect("the rotated certificate is served");
    assert_eq!(status(&resp), "HTTP/1.1 200 OK");
    assert!(tls_get(server.addr, &client, "/healthz", None).is_err());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn setup_errors_are_one_line_and_name_the_flag() {
    let dir = temp_dir("errors");
    let pki = write_pki(&dir, "tokentap test CA");
    let missing = dir.join("missing.pem");
    let not_pem = dir.join("not.pem");
    std::fs::write(&not_pem, "hello\n").expect("write");
    let cases = [
        (
            SecurityFiles {
                tls_cert: Some(pki.cert.clone()),
                ..SecurityFiles::default()
            },
            "--tls-cert needs --tls-key",
        ),
        (
            SecurityFiles {
                tls_key: Some(pki.key.clone()),
                ..SecurityFiles::default()
            },
            "--tls-key needs --tls-cert",
        ),
        (
            SecurityFiles {
                tls_cert: Some(missing.clone()),
                tls_key: Some(pki.key.clone()),
                ..SecurityFiles::default()
            },
            "--tls-cert",
        ),
        (
            SecurityFiles {
                tls_cert: Some(not_pem.clone()),
                tls_key: Some(pki.key.clone()),
                ..SecurityFiles::default()
            },
            "no CERTIFICATE block",
        ),
        (
            SecurityFiles {
                tls_cert: Some(pki.cert.clone()),
                tls_key: Some(pki.cert.clone()),
                ..SecurityFiles::default()
            },
            "--tls-key",
        ),
        (
            SecurityFiles {
                auth_token_file: Some(missing.clone()),
                ..SecurityFiles::default()
            },
            "--auth-token-file",
        ),
        (
            SecurityFiles {
                auth_token_file: Some(not_pem.with_extension("empty")),
                ..SecurityFiles::default()
            },
            "--auth-token-file",
        ),
    ];
    std::fs::write(not_pem.with_extension("empty"), "  \n").expect("write");
    for (files, expected) in cases {
        let err = match EndpointSecurity::load(&files) {
            Ok(_) => panic!("{files:?} loaded"),
            Err(e) => e,
        };
        assert!(err.contains(expected), "{files:?}: {err}");
        assert!(!err.contains('\n'), "one line: {err}");
    }
    let _ = std::fs::remove_dir_all(dir);
}
