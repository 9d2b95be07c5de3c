//! TLS for the agent's own outgoing connections: the Kubernetes API and an OTLP collector.
//!
//! One place that turns a CA bundle into a rustls client configuration (ring provider, TLS 1.2
//! and 1.3, server certificates verified against the bundle, no client certificate) and
//! connects with it.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, ServerName, pem::PemObject},
};
use tokio::net::TcpStream;
use tokio_rustls::{TlsConnector, client::TlsStream};

/// Where distributions keep the system's CA bundle (Debian and distroless, Fedora/RHEL,
/// Alpine and others).
pub const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// The system's CA bundle: the first of [`SYSTEM_CA_BUNDLES`] that exists.
pub fn system_ca_bundle() -> Option<PathBuf> {
    SYSTEM_CA_BUNDLES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// A client configuration trusting the certificates in the PEM file `ca_file`. The error is
/// one line naming the file.
pub fn client_config(ca_file: &Path) -> Result<Arc<ClientConfig>, String> {
    let bad = |e: &dyn std::fmt::Display| format!("{}: {e}", ca_file.display());
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file).map_err(|e| bad(&e))? {
        roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
    }
    if roots.is_empty() {
        return Err(format!("{}: no PEM certificates in it", ca_file.display()));
    }
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The TLS handshake on `tcp` with `host`, whose certificate must name it.
pub async fn connect(
    config: Arc<ClientConfig>,
    host: &str,
    tcp: TcpStream,
) -> Result<TlsStream<TcpStream>, String> {
    let name = ServerName::try_from(host.to_owned()).map_err(|e| format!("{host}: {e}"))?;
    TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())
}

/// A test CA and a server for it, shared by the tests of the agent's TLS clients.
#[cfg(test)]
pub(crate) mod test_support {
    use std::sync::Arc;

    /// A CA and a server certificate for 127.0.0.1 signed by it: `(CA PEM, server config)`.
    pub(crate) fn tls_server_config() -> (String, rustls::ServerConfig) {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca =
            CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key")).expect("CA");
        let leaf_key = KeyPair::generate().expect("key");
        let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .expect("leaf params")
            .signed_by(&leaf_key, &ca)
            .expect("leaf");
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
        .expect("server config");
        (ca.pem(), config)
    }
}
