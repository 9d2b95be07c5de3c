//! Who may reach the agent's endpoints: optional TLS (rustls) and an optional bearer token.
//!
//! Both come from files (`--tls-cert`/`--tls-key`, `--auth-token-file`) and are re-read when a
//! file changes, so a rotated Kubernetes Secret (mounted files are swapped through a symlink)
//! takes effect without a restart. A file that fails to load after a change keeps the previous
//! contents in service; the failure is logged and counted. The token is never logged: its
//! `Debug` form is redacted, and errors name the file, not the contents.

use std::{
    fmt,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use prometheus::{IntCounterVec, Opts, Registry};
use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};

/// The paths given on the command line or in the config file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecurityFiles {
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub auth_token_file: Option<PathBuf>,
}

/// What the server enforces; cheap to clone (shared state behind `Arc`s).
#[derive(Clone, Default)]
pub struct EndpointSecurity {
    pub tls: Option<Arc<TlsFiles>>,
    pub token: Option<Arc<TokenFile>>,
    metrics: Option<SecurityMetrics>,
}

impl EndpointSecurity {
    /// Loads the files once, so a bad path or a bad PEM stops the agent at start with one line
    /// that names the flag.
    pub fn load(files: &SecurityFiles) -> Result<Self, String> {
        let tls = match (&files.tls_cert, &files.tls_key) {
            (Some(cert), Some(key)) => Some(Arc::new(TlsFiles::load(cert, key)?)),
            (None, None) => None,
            (Some(_), None) => {
                return Err("--tls-cert needs --tls-key (give both or neither)".into());
            }
            (None, Some(_)) => {
                return Err("--tls-key needs --tls-cert (give both or neither)".into());
            }
        };
        let token = match &files.auth_token_file {
            Some(path) => Some(Arc::new(TokenFile::load(path)?)),
            None => None,
        };
        Ok(Self {
            tls,
            token,
            metrics: None,
        })
    }

    /// Counts rejected requests and failed reloads in `registry`.
    pub fn with_metrics(mut self, registry: &Registry) -> Self {
        self.metrics = Some(SecurityMetrics::new(registry));
        self
    }

    /// The TLS settings to use for a new connection (re-read if the files changed).
    pub fn tls_config(&self) -> Option<Arc<ServerConfig>> {
        let tls = self.tls.as_ref()?;
        let (config, reload_failed) = tls.current();
        if reload_failed {
            self.count_reload_error("tls");
        }
        Some(config)
    }

    /// Whether a request with this `Authorization` header may see protected endpoints.
    pub fn authorize(&self, authorization: Option<&[u8]>) -> Authorization {
        let Some(token) = &self.token else {
            return Authorization::Allowed;
        };
        let (expected, reload_failed) = token.current();
        if reload_failed {
            self.count_reload_error("auth_token");
        }
        let verdict = match authorization.and_then(bearer_credentials) {
            None => Authorization::Missing,
            Some(given) if constant_time_eq(given, expected.0.as_bytes()) => Authorization::Allowed,
            Some(_) => Authorization::Invalid,
        };
        if let Some(m) = &self.metrics {
            match verdict {
                Authorization::Missing => m.rejected.with_label_values(&["missing_token"]).inc(),
                Authorization::Invalid => m.rejected.with_label_values(&["invalid_token"]).inc(),
                Authorization::Allowed => {}
            }
        }
        verdict
    }

    /// Counts a connection whose TLS handshake failed (plaintext to the TLS port, bad client).
    pub fn count_failed_handshake(&self) {
        if let Some(m) = &self.metrics {
            m.rejected.with_label_values(&["tls_handshake"]).inc();
        }
    }

    fn count_reload_error(&self, file: &str) {
        if let Some(m) = &self.metrics {
            m.reload_errors.with_label_values(&[file]).inc();
        }
    }
}

/// The verdict on a request's credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authorization {
    Allowed,
    /// No `Authorization: Bearer …` header.
    Missing,
    /// A bearer token that is not the configured one.
    Invalid,
}

#[derive(Clone)]
struct SecurityMetrics {
    rejected: IntCounterVec,
    reload_errors: IntCounterVec,
}

impl SecurityMetrics {
    fn new(registry: &Registry) -> Self {
        let rejected = IntCounterVec::new(
            Opts::new(
                "tokentap_endpoint_rejected_total",
                "Requests and connections to the agent's endpoints refused, by reason.",
            ),
            &["reason"],
        )
        .expect("valid metric definition");
        let reload_errors = IntCounterVec::new(
            Opts::new(
                "tokentap_endpoint_reload_errors_total",
                "Changed TLS or token files that failed to load (the previous ones stay in use).",
            ),
            &["file"],
        )
        .expect("valid metric definition");
        for c in [&rejected, &reload_errors] {
            registry
                .register(Box::new(c.clone()))
                .expect("metric registered once");
        }
        Self {
            rejected,
            reload_errors,
        }
    }
}

/// The bearer token from the file (surrounding whitespace trimmed).
pub struct Token(String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// `--auth-token-file`, re-read when it changes.
pub struct TokenFile(Watched<Token>);

impl TokenFile {
    pub fn load(path: &Path) -> Result<Self, String> {
        Watched::new(vec![path.to_owned()], |paths| read_token(&paths[0])).map(Self)
    }

    fn current(&self) -> (Arc<Token>, bool) {
        self.0.current()
    }
}

fn read_token(path: &Path) -> Result<Token, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--auth-token-file {}: {e}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!(
            "--auth-token-file {}: the file is empty; put the token on one line",
            path.display()
        ));
    }
    // Header values cannot carry these; such a token could never match.
    if token.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(format!(
            "--auth-token-file {}: the token has spaces or control characters; use one line of printable characters",
            path.display()
        ));
    }
    Ok(Token(token.to_owned()))
}

/// `--tls-cert` and `--tls-key`, re-read when either changes.
pub struct TlsFiles(Watched<Arc<ServerConfig>>);

impl TlsFiles {
    pub fn load(cert: &Path, key: &Path) -> Result<Self, String> {
        Watched::new(vec![cert.to_owned(), key.to_owned()], |paths| {
            server_config(&paths[0], &paths[1]).map(Arc::new)
        })
        .map(Self)
    }

    fn current(&self) -> (Arc<ServerConfig>, bool) {
        let (config, failed) = self.0.current();
        (Arc::clone(&config), failed)
    }
}

/// A rustls server configuration from a PEM certificate chain and a PEM private key.
pub fn server_config(cert: &Path, key: &Path) -> Result<ServerConfig, String> {
    let cert_pem =
        std::fs::read(cert).map_err(|e| format!("--tls-cert {}: {e}", cert.display()))?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("--tls-cert {}: not a PEM certificate: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "--tls-cert {}: no CERTIFICATE block found; give a PEM certificate chain",
            cert.display()
        ));
    }
    let key_pem = std::fs::read(key).map_err(|e| format!("--tls-key {}: {e}", key.display()))?;
    let private_key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        format!(
            "--tls-key {}: no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {e}",
            key.display()
        )
    })?;
    // An explicit provider: another dependency enabling a second one must not make the
    // process-wide default ambiguous.
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS settings: {e}"))?
            .with_no_client_auth()
            .with_single_cert(chain, private_key)
            .map_err(|e| {
                format!(
                    "--tls-cert {} / --tls-key {}: {e}",
                    cert.display(),
                    key.display()
                )
            })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// What identifies a file's version: a swapped symlink or a rewrite changes one of these.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

fn stamps(paths: &[PathBuf]) -> Option<Vec<Stamp>> {
    paths
        .iter()
        .map(|p| {
            std::fs::metadata(p).ok().map(|m| Stamp {
                dev: m.dev(),
                ino: m.ino(),
                size: m.size(),
                mtime: m.mtime(),
                mtime_nsec: m.mtime_nsec(),
            })
        })
        .collect()
}

type Loader<T> = fn(&[PathBuf]) -> Result<T, String>;

/// A value loaded from files, reloaded when their metadata changes (checked on use: uses are
/// scrapes and connections, a few per second at most).
struct Watched<T> {
    paths: Vec<PathBuf>,
    load: Loader<T>,
    state: Mutex<(Option<Vec<Stamp>>, Arc<T>)>,
}

impl<T> Watched<T> {
    fn new(paths: Vec<PathBuf>, load: Loader<T>) -> Result<Self, String> {
        let stamp = stamps(&paths);
        let value = load(&paths)?;
        Ok(Self {
            paths,
            load,
            state: Mutex::new((stamp, Arc::new(value))),
        })
    }

    /// The current value, and whether a reload just failed.
    fn current(&self) -> (Arc<T>, bool) {
        let now = stamps(&self.paths);
        let mut state = match self.state.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        let mut failed = false;
        // A file missing mid-rotation: keep serving the old value until it is back.
        if now.is_some() && now != state.0 {
            match (self.load)(&self.paths) {
                Ok(value) => {
                    log::info!("reloaded {}", display_paths(&self.paths));
                    state.1 = Arc::new(value);
                }
                Err(e) => {
                    log::warn!("{e} (keeping the previous one)");
                    failed = true;
                }
            }
            // Not retried until the files change again (a cert written before its key).
            state.0 = now;
        }
        (Arc::clone(&state.1), failed)
    }
}

fn display_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The credentials of `Authorization: Bearer <token>` (scheme case-insensitive).
fn bearer_credentials(header: &[u8]) -> Option<&[u8]> {
    let header = header.trim_ascii();
    let (scheme, rest) = header.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || !rest.first()?.is_ascii_whitespace() {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// Compares without an early exit, so response time does not tell how much of a guess was
/// right (the length is not secret).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a
        .iter()
        .zip(b)
        .fold(0u8, |acc, (x, y)| std::hint::black_box(acc | (x ^ y)));
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_header_forms() {
        assert_eq!(bearer_credentials(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_credentials(b"bearer  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer_credentials(b"Basic abc"), None);
        assert_eq!(bearer_credentials(b"Bearerabc"), None);
        assert_eq!(bearer_credentials(b"Bearer "), None);
        assert_eq!(bearer_credentials(b""), None);
    }

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret1"));
        assert!(!constant_time_eq(b"", b"x"));
    }

    #[test]
    fn token_debug_is_redacted() {
        let t = Token("hunter2".into());
        assert!(!format!("{t:?}").contains("hunter2"));
    }
}
