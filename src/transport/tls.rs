//! TLS of the gRPC port: its settings, the acceptor (with client certificates and
//! their revocation lists for mutual TLS), and why it could not be made.

use super::*;

/// TLS settings of the gRPC port.
#[derive(Clone, Debug)]
pub struct TlsSettings {
    /// PEM certificate chain of the server.
    pub cert: PathBuf,
    /// PEM private key of the server.
    pub key: PathBuf,
    /// PEM CA bundle for client certificates (mutual TLS); optional for clients.
    pub client_ca: Option<PathBuf>,
    /// PEM certificate revocation lists of those CAs: a revoked client certificate is refused.
    pub client_crl: Option<PathBuf>,
}

/// The TLS acceptor of the gRPC port: the server's certificate, and with a client
/// CA, optional client certificates (callers may also come with tokens).
pub fn tls_acceptor(tls: &TlsSettings) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
    tls_acceptor_for(tls, b"h2")
}

/// The same certificate and client CA for another protocol (ALPN `alpn`): the
/// web console speaks `http/1.1`.
pub fn tls_acceptor_for(
    tls: &TlsSettings,
    alpn: &[u8],
) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|source| TlsError::Read {
            path: p.to_owned(),
            source,
        })
    };
    let invalid = |p: &std::path::Path, why: String| TlsError::Invalid {
        path: p.to_owned(),
        why,
    };
    let certs = |p: &std::path::Path| -> Result<Vec<CertificateDer<'static>>, TlsError> {
        let pem = read(p)?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(p, format!("not a PEM certificate: {e}")))?;
        if certs.is_empty() {
            return Err(invalid(p, "holds no PEM certificate".into()));
        }
        Ok(certs)
    };
    let chain = certs(&tls.cert)?;
    let key = PrivateKeyDer::from_pem_slice(&read(&tls.key)?)
        .map_err(|e| invalid(&tls.key, format!("not a PEM private key: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?;
    let builder = match &tls.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certs(ca)? {
                roots
                    .add(cert)
                    .map_err(|e| invalid(ca, format!("bad CA certificate: {e}")))?;
            }
            // Client certificates identify callers when presented; token callers need none.
            let mut verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .allow_unauthenticated();
            if let Some(path) = &tls.client_crl {
                use rustls::pki_types::CertificateRevocationListDer;
                let pem = read(path)?;
                let crls = CertificateRevocationListDer::pem_slice_iter(&pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| invalid(path, format!("not a PEM CRL: {e}")))?;
                if crls.is_empty() {
                    return Err(invalid(
                        path,
                        "holds no PEM certificate revocation list".into(),
                    ));
                }
                // The client's own certificate is checked; one whose CA has no list is refused.
                verifier = verifier.with_crls(crls).only_check_end_entity_revocation();
            }
            let verifier = verifier.build().map_err(|e| invalid(ca, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| invalid(&tls.cert, e.to_string()))?;
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Why the TLS settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A PEM file does not hold what it should.
    #[error("{}: {why}", path.display())]
    Invalid {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// rustls refused the configuration.
    #[error("tls setup failed: {0}")]
    Setup(String),
}
