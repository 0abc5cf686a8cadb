//! The provider's side: one pooled HTTP client (hyper's, HTTP/1.1 or HTTP/2 by
//! ALPN) over verified TLS (rustls, the Web PKI roots plus `--upstream-ca-file`),
//! which never follows a redirect and never reads a proxy from the environment.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::Uri;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;

/// Why the upstream client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The CA file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The CA file is not PEM certificates.
    #[error("{path}: not a PEM CA bundle: {reason}")]
    Pem {
        /// The path.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A certificate in it is not one rustls takes as a root.
    #[error("{path}: a certificate the TLS library refuses as a root: {reason}")]
    Root {
        /// The path.
        path: String,
        /// Why rustls refused it.
        reason: String,
    },
    /// The TLS configuration could not be built.
    #[error("cannot set up TLS: {0}")]
    Tls(String),
}

/// The connector: TCP (no Nagle), then TLS for `https://`, within a deadline.
type Connector = Timed<HttpsConnector<HttpConnector>>;

/// The client every proxied request goes out through.
#[derive(Clone, Debug)]
pub struct Upstream {
    client: hyper_util::client::legacy::Client<Connector, Incoming>,
    tls: Arc<rustls::ClientConfig>,
    connect_timeout: Duration,
    idle_timeout: Duration,
}

impl Upstream {
    /// A client trusting the Web PKI roots and those in `ca_file` (a PEM
    /// bundle), connecting (TCP and TLS) within `connect_timeout`, keeping idle
    /// connections `idle_timeout`.
    pub fn new(
        ca_file: Option<&std::path::Path>,
        connect_timeout: Duration,
        idle_timeout: Duration,
    ) -> Result<Upstream, UpstreamError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = ca_file {
            let shown = path.display().to_string();
            let pem = std::fs::read(path).map_err(|source| UpstreamError::Read {
                path: shown.clone(),
                source,
            })?;
            let certs = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| UpstreamError::Pem {
                    path: shown.clone(),
                    reason: e.to_string(),
                })?;
            if certs.is_empty() {
                return Err(UpstreamError::Pem {
                    path: shown,
                    reason: "no certificate in it".into(),
                });
            }
            for cert in certs {
                roots.add(cert).map_err(|e| UpstreamError::Root {
                    path: shown.clone(),
                    reason: e.to_string(),
                })?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| UpstreamError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Upstream::with_tls(
            Arc::new(tls),
            connect_timeout,
            idle_timeout,
        ))
    }

    /// The same client with a pool of its own (for another of the proxy's
    /// threads: a connection is used by the thread that made it).
    pub fn fresh(&self) -> Upstream {
        Upstream::with_tls(
            Arc::clone(&self.tls),
            self.connect_timeout,
            self.idle_timeout,
        )
    }

    fn with_tls(
        tls: Arc<rustls::ClientConfig>,
        connect_timeout: Duration,
        idle_timeout: Duration,
    ) -> Upstream {
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(connect_timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*tls).clone())
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(tcp);
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_idle_timeout(idle_timeout)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(Timed {
                inner: https,
                limit: connect_timeout,
            });
        Upstream {
            client,
            tls,
            connect_timeout,
            idle_timeout,
        }
    }

    /// Sends `request` (its URI absolute) and answers the provider's response
    /// head, its body still to stream; the error says why, in one line.
    pub async fn send(
        &self,
        request: http::Request<Incoming>,
    ) -> Result<http::Response<Incoming>, String> {
        self.client.request(request).await.map_err(|e| chain(&e))
    }
}

/// An error and its causes, as one line: `a: b: c` (each said once).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let said = s.to_string();
        if !out.contains(&said) {
            out.push_str(": ");
            out.push_str(&said);
        }
        source = s.source();
    }
    out
}

/// A connector that gives up after `limit` (TCP and TLS together: a provider
/// that accepts and then stalls the handshake costs one request, not a task forever).
#[derive(Clone, Debug)]
pub struct Timed<C> {
    inner: C,
    limit: Duration,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<C> tower_service::Service<Uri> for Timed<C>
where
    C: tower_service::Service<Uri> + Send,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<C::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let limit = self.limit;
        let connecting = self.inner.call(uri);
        Box::pin(async move {
            match tokio::time::timeout(limit, connecting).await {
                Ok(result) => result.map_err(Into::into),
                Err(_) => Err(format!(
                    "no connection within {}",
                    humantime::format_duration(limit)
                )
                .into()),
            }
        })
    }
}
