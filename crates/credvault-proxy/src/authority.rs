//! The proxy's own certificate authority, for `HTTPS_PROXY`: a worker's CONNECT
//! to a routed host is answered with TLS under a leaf certificate minted for
//! that host, which the worker trusts by adding the CA (`credvault-proxy ca`
//! prints it) to its trust store. The CA's key is made on first start, kept in
//! `--ca-dir` (mode 0600, the directory 0700), and never leaves it; leaves live
//! in memory, one per host.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

/// Why the CA could not be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    /// The directory or a file in it could not be read or written.
    #[error("cannot use the CA directory {path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A file there is not a CA certificate or key this proxy can use.
    #[error("the CA in {path} cannot be read: {message}")]
    Invalid {
        /// The path.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// The CA and the leaves minted so far.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
    leaves: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").finish_non_exhaustive()
    }
}

/// Leaves minted at most (hosts are bounded by the routes; this bounds a bug).
const MAX_LEAVES: usize = 4096;

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

impl Authority {
    /// The CA in `dir` (`ca.pem`, `ca.key`), made there first if there is none.
    pub fn load_or_create(dir: &Path) -> Result<Self, AuthorityError> {
        let shown = dir.display().to_string();
        let io = |source| AuthorityError::Io {
            path: shown.clone(),
            source,
        };
        let invalid = |message: String| AuthorityError::Invalid {
            path: shown.clone(),
            message,
        };
        let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
        if !cert_path.exists() {
            {
                let mut builder = std::fs::DirBuilder::new();
                builder.recursive(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::DirBuilderExt;
                    builder.mode(0o700);
                }
                builder.create(dir).map_err(io)?;
            }
            let key = KeyPair::generate().map_err(|e| invalid(e.to_string()))?;
            let mut params =
                CertificateParams::new(Vec::<String>::new()).map_err(|e| invalid(e.to_string()))?;
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let now = time::OffsetDateTime::now_utc();
            params.not_before = now - time::Duration::hours(1);
            params.not_after = now + time::Duration::days(3650);
            params.distinguished_name.push(
                DnType::CommonName,
                format!("credvault-proxy local CA {}", now.unix_timestamp()),
            );
            let cert = params
                .self_signed(&key)
                .map_err(|e| invalid(e.to_string()))?;
            write_private(&key_path, &key.serialize_pem()).map_err(io)?;
            write_private(&cert_path, &cert.pem()).map_err(io)?;
            tracing::info!(dir = %shown, "made the proxy's local CA; trust ca.pem in the workers (credvault-proxy ca prints it)");
        }
        let ca_pem = std::fs::read_to_string(&cert_path).map_err(io)?;
        let key_pem = std::fs::read_to_string(&key_path).map_err(io)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| invalid(format!("ca.key: {e}")))?;
        let issuer =
            Issuer::from_ca_cert_pem(&ca_pem, key).map_err(|e| invalid(format!("ca.pem: {e}")))?;
        Ok(Authority {
            issuer,
            ca_pem,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            leaves: Mutex::new(HashMap::new()),
        })
    }

    /// The CA certificate (PEM), for the workers' trust stores.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The leaf of `host`, minted on first use (valid a week; the proxy mints
    /// again after a restart).
    pub fn leaf(&self, host: &str) -> Result<Arc<CertifiedKey>, String> {
        let mut leaves = self
            .leaves
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(leaf) = leaves.get(host) {
            return Ok(Arc::clone(leaf));
        }
        let key = KeyPair::generate().map_err(|e| e.to_string())?;
        let mut params =
            CertificateParams::new(vec![host.to_owned()]).map_err(|e| e.to_string())?;
        params.distinguished_name.push(DnType::CommonName, host);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(7);
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| e.to_string())?;
        let der_key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signing = self
            .provider
            .key_provider
            .load_private_key(der_key)
            .map_err(|e| e.to_string())?;
        let leaf = Arc::new(CertifiedKey::new(
            vec![
                cert.der().clone(),
                CertificateDer::from_pem_slice_ca(&self.ca_pem)?,
            ],
            signing,
        ));
        if leaves.len() >= MAX_LEAVES {
            leaves.clear();
        }
        leaves.insert(host.to_owned(), Arc::clone(&leaf));
        Ok(leaf)
    }

    /// A TLS server configuration that presents `host`'s leaf (HTTP/2 or 1.1 by ALPN).
    pub fn server_config(&self, host: &str) -> Result<Arc<rustls::ServerConfig>, String> {
        let leaf = self.leaf(host)?;
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Fixed(leaf)));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// Presents one leaf whatever the SNI (the CONNECT named the host).
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl rustls::server::ResolvesServerCert for Fixed {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }
}

/// The DER of the first certificate of a PEM text.
trait FromPemCa: Sized {
    fn from_pem_slice_ca(pem: &str) -> Result<Self, String>;
}

impl FromPemCa for CertificateDer<'static> {
    fn from_pem_slice_ca(pem: &str) -> Result<Self, String> {
        use rustls::pki_types::pem::PemObject;
        CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| e.to_string())
    }
}
