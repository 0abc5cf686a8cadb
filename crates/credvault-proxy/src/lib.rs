//! credvault-proxy: an egress proxy that attaches credvault's headers to
//! workers' requests, so that a worker in any language, with any HTTP client,
//! never holds a provider key. It holds each credential's headers through the
//! vault's watch stream ([`credvault_client`]), keeps the account's pace (a
//! paused account is answered 429 at once, a budget is taken from leases) and
//! reports the provider's 401/403/429 to the vault for every worker.
//!
//! Two ways in, on one listener:
//! - **base-URL form**: `http://127.0.0.1:7070/c/<credential>/<path>?<query>` is
//!   sent to `<the credential's base_url>/<path>?<query>`;
//! - **proxy form** (`HTTP_PROXY`/`HTTPS_PROXY`, no change in the worker): a
//!   request in absolute form, or a CONNECT, to a host the routes file names
//!   ([`routes`]); for CONNECT the proxy answers TLS with a leaf minted by its own
//!   CA ([`authority`]) and reads the requests inside.
//!
//! Every request is sent only to its credential's scheme, host and port, under
//! its base path ([`target`]); hop-by-hop headers and any header the credential
//! sets are stripped from what the worker sent, the held ones attached; bodies
//! stream both ways. The parts: [`Proxy`] and [`run`] (the accept loop),
//! [`routes`], [`target`], [`authority`], [`workers`] (tokens for a shared
//! proxy), [`metrics`], [`toml_file`], [`upstream`] (the client toward the
//! providers), and the per-request log line.

pub mod authority;
pub mod metrics;
pub mod routes;
pub mod target;
pub mod toml_file;
pub mod upstream;
pub mod workers;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use credvault_client::{Client, Error as VaultError};

use crate::authority::Authority;
use crate::routes::Routes;
use crate::target::{Base, Refusal};
use crate::upstream::Upstream;
use crate::workers::{Worker, Workers};

/// A response body: the provider's, streamed, or the proxy's own text.
pub type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// The path prefix of the base-URL form.
pub const BASE_PREFIX: &str = "/c/";
/// The proxy's own endpoints (never a credential's path).
pub const HEALTH_PATH: &str = "/_credvault/healthz";
/// The proxy's own readiness endpoint (503 until every routed credential is held).
pub const READY_PATH: &str = "/_credvault/readyz";

/// How the proxy behaves.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Which credential a request in proxy form uses.
    pub routes: Routes,
    /// How long a request may wait for a paused account or a spent budget
    /// before it is answered 429 (zero: answered at once).
    pub max_wait: Duration,
    /// Connections open at once at most (more wait in the backlog).
    pub max_connections: usize,
    /// A request's headers must arrive within this.
    pub header_timeout: Duration,
    /// The most bytes of request headers.
    pub max_header_bytes: usize,
    /// Threads serving workers, each with its own runtime and its own
    /// connections to the providers (a connection is served on one thread).
    pub threads: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            routes: Routes::default(),
            max_wait: Duration::ZERO,
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            threads: std::thread::available_parallelism().map_or(1, usize::from),
        }
    }
}

/// The proxy: the vault's client, the routes, the CA, the upstream HTTP client.
pub struct Proxy {
    vault: Client,
    settings: Settings,
    authority: Arc<Authority>,
    upstream: Upstream,
    reports: Arc<Reports>,
    /// Workers' tokens: `None` serves loopback workers without one.
    workers: Option<Arc<std::sync::RwLock<Workers>>>,
    /// Base URLs already read (this thread's; a few hundred at most).
    bases: Mutex<std::collections::HashMap<String, Arc<Base>>>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy").finish_non_exhaustive()
    }
}

/// Reports of the provider's answers, one per credential and status a second
/// (a burst of 429s is one report), sent in the background.
#[derive(Default)]
struct Reports {
    last: Mutex<std::collections::HashMap<(String, u16), Instant>>,
}

impl Reports {
    fn due(&self, name: &str, status: u16) -> bool {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        if last.len() > 10_000 {
            last.retain(|_, t| now.duration_since(*t) < Duration::from_secs(1));
        }
        match last.get(&(name.to_owned(), status)) {
            Some(t) if now.duration_since(*t) < Duration::from_secs(1) => false,
            _ => {
                last.insert((name.to_owned(), status), now);
                true
            }
        }
    }
}

/// The headers a hop removes (RFC 9110 §7.6.1), and the proxy's own.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, and those `Connection` names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most requests and answers hold none: one pass over the names says so.
    if !headers.keys().any(|k| HOP_BY_HOP.contains(k)) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

fn text(status: u16, message: &str) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from(format!("credvault-proxy: {message}\n")))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn refused(r: &Refusal) -> Response<Body> {
    text(r.status, &r.message)
}

/// A paused account or a spent budget: 429 with `Retry-After`.
fn too_many(message: &str, wait: Duration) -> Response<Body> {
    let mut response = text(429, message);
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    response
}

/// Where a request is going, once its form is read.
struct Target {
    credential: String,
    /// Proxy form: the host and port the worker addressed (checked against the credential's).
    addressed: Option<(String, Option<u16>)>,
    /// The path (below the base path, for the base-URL form) and query, raw.
    path: String,
    query: Option<String>,
}

/// The connection a request came on: a tunnel (CONNECT) names its host and port.
#[derive(Clone, Debug)]
struct Origin {
    peer: SocketAddr,
    tunnel: Option<(String, u16)>,
    /// The worker the tunnel's CONNECT authenticated.
    worker: Option<Worker>,
}

impl Proxy {
    /// A proxy over `vault` (a client of the vault), with `settings` and the CA.
    pub fn new(
        vault: Client,
        settings: Settings,
        authority: Arc<Authority>,
        upstream: Upstream,
    ) -> Self {
        Proxy {
            vault,
            settings,
            authority,
            upstream,
            reports: Arc::default(),
            workers: None,
            bases: Mutex::default(),
        }
    }

    /// The same proxy requiring a worker's token on every request (any peer may connect).
    pub fn with_workers(mut self, workers: Workers) -> Self {
        self.workers = Some(Arc::new(std::sync::RwLock::new(workers)));
        self
    }

    /// The same proxy (the vault's client, the tokens, the reports shared)
    /// with connections to the providers of its own, for another thread.
    fn for_thread(&self) -> Proxy {
        Proxy {
            vault: self.vault.clone(),
            settings: self.settings.clone(),
            authority: Arc::clone(&self.authority),
            upstream: self.upstream.fresh(),
            reports: Arc::clone(&self.reports),
            workers: self.workers.clone(),
            bases: Mutex::default(),
        }
    }

    /// Replaces the workers' tokens (SIGHUP); tunnels open keep the worker they began with.
    pub fn reload_workers(&self, workers: Workers) {
        if let Some(current) = &self.workers {
            *current
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = workers;
        }
    }

    /// The worker a request's `Proxy-Authorization` names: `Ok(None)` when no
    /// token is required, `Err` (407) when one is and this is not a known one.
    fn worker_of(&self, req: &Request<Incoming>) -> Result<Option<Worker>, Box<Response<Body>>> {
        let Some(workers) = &self.workers else {
            return Ok(None);
        };
        let header = req
            .headers()
            .get(header::PROXY_AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let workers = workers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match workers.authenticate(header) {
            Some(w) => Ok(Some(w.clone())),
            None => {
                let mut response = text(
                    407,
                    "a worker's token is required: Proxy-Authorization: Bearer <token> (or HTTPS_PROXY=http://name:token@host:port)",
                );
                response.headers_mut().insert(
                    header::PROXY_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"credvault-proxy\""),
                );
                Err(Box::new(response))
            }
        }
    }

    /// Whether a peer may connect: any, with workers' tokens; else loopback only.
    pub fn admits(&self, peer: &SocketAddr) -> bool {
        self.workers.is_some() || peer.ip().is_loopback()
    }

    /// The vault's client.
    pub fn vault(&self) -> &Client {
        &self.vault
    }

    /// A base URL, read once (the credential's held headers name it on every request).
    fn base(&self, base_url: &str) -> Result<Arc<Base>, Refusal> {
        let mut bases = self
            .bases
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(base) = bases.get(base_url) {
            return Ok(Arc::clone(base));
        }
        let base = Arc::new(Base::parse(base_url)?);
        if bases.len() >= 4096 {
            bases.clear();
        }
        bases.insert(base_url.to_owned(), Arc::clone(&base));
        Ok(base)
    }

    /// Whether every routed credential's headers are held (asked of the vault once).
    pub async fn ready(&self) -> Result<(), String> {
        for name in self.settings.routes.credentials() {
            match tokio::time::timeout(Duration::from_secs(2), self.vault.headers(&name)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(format!("{name}: {e}")),
                Err(_) => return Err(format!("{name}: the vault did not answer in time")),
            }
        }
        Ok(())
    }

    /// Answers one request (boxed: a CONNECT serves the requests inside its
    /// tunnel through this again).
    fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        origin: Origin,
    ) -> std::pin::Pin<Box<dyn Future<Output = Response<Body>> + Send>> {
        Box::pin(async move {
            let began = Instant::now();
            // Framing a hop could read two ways is refused, not guessed at.
            let headers = req.headers();
            if headers.get_all(header::HOST).iter().count() > 1
                || headers.contains_key(header::TRANSFER_ENCODING)
                    && headers.contains_key(header::CONTENT_LENGTH)
                || headers.get_all(header::CONTENT_LENGTH).iter().count() > 1
            {
                let r = Refusal {
                    status: 400,
                    message: "ambiguous framing: two Host or Content-Length headers, or Content-Length with Transfer-Encoding".into(),
                };
                log_refused(&req, &origin, &r);
                metrics::refused(metrics::Refused::Framing);
                return refused(&r);
            }
            if req.method() == Method::CONNECT {
                return self.connect(req, origin).await;
            }
            match (
                req.uri().path(),
                origin.tunnel.is_none() && req.uri().scheme().is_none(),
            ) {
                (HEALTH_PATH, true) => return text(200, "SERVING"),
                (READY_PATH, true) => {
                    return match self.ready().await {
                        Ok(()) => text(200, "SERVING"),
                        Err(e) => text(503, &format!("NOT_SERVING: {e}")),
                    }
                }
                _ => {}
            }
            // Inside a tunnel the CONNECT said who the worker is; else this request does.
            let worker = match &origin.tunnel {
                Some(_) => origin.worker.clone(),
                None => match self.worker_of(&req) {
                    Ok(w) => w,
                    Err(response) => {
                        metrics::refused(metrics::Refused::Token);
                        return *response;
                    }
                },
            };
            let target = match self.target(&req, &origin) {
                Ok(t) => t,
                Err(r) => {
                    log_refused(&req, &origin, &r);
                    metrics::refused(if r.message.starts_with(NO_ROUTE) {
                        metrics::Refused::Route
                    } else {
                        metrics::Refused::Target
                    });
                    return refused(&r);
                }
            };
            if let Some(w) = &worker {
                if !w.may_use(&target.credential) {
                    let r = Refusal {
                        status: 403,
                        message: format!(
                            "worker {} may not use credential {}",
                            w.name, target.credential
                        ),
                    };
                    log_refused(&req, &origin, &r);
                    metrics::refused(metrics::Refused::Scope);
                    return refused(&r);
                }
            }
            self.forward(req, &target, &origin, began).await
        })
    }

    /// Reads which credential a request uses and where it points.
    fn target(&self, req: &Request<Incoming>, origin: &Origin) -> Result<Target, Refusal> {
        let uri = req.uri();
        let query = uri.query().map(str::to_owned);
        let path = uri.path();
        let host_header = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned);
        // Inside a tunnel: the CONNECT named the host; the requests must agree.
        if let Some((host, port)) = &origin.tunnel {
            if let Some(authority) = uri.authority() {
                if !authority.host().eq_ignore_ascii_case(host) {
                    return Err(Refusal {
                        status: 421,
                        message: format!(
                            "the request names host {:?} inside a tunnel to {host}",
                            authority.host()
                        ),
                    });
                }
            }
            if let Some(h) = &host_header {
                if !same_host(h, host, *port) {
                    return Err(Refusal {
                        status: 421,
                        message: "the Host header does not name the tunnel's host".into(),
                    });
                }
            }
            let route = self
                .settings
                .routes
                .find(host, *port, path)
                .ok_or_else(|| no_route(host.as_ref(), path))?;
            return Ok(Target {
                credential: route.credential.clone(),
                addressed: Some((host.clone(), Some(*port))),
                path: path.to_owned(),
                query,
            });
        }
        // Absolute form: a plain-HTTP request through HTTP_PROXY.
        if let Some(authority) = uri.authority() {
            if uri.scheme_str() != Some("http") {
                return Err(Refusal {
                    status: 400,
                    message:
                        "only http:// requests come in absolute form (https:// comes by CONNECT)"
                            .into(),
                });
            }
            let host = authority.host().to_ascii_lowercase();
            let port = authority.port_u16();
            if let Some(h) = &host_header {
                if !same_host(h, &host, port.unwrap_or(80)) {
                    return Err(Refusal {
                        status: 400,
                        message: "the Host header does not name the request's host".into(),
                    });
                }
            }
            let route = self
                .settings
                .routes
                .find(&host, port.unwrap_or(80), path)
                .or_else(|| self.settings.routes.find(&host, port.unwrap_or(443), path))
                .ok_or_else(|| no_route(host.as_ref(), path))?;
            return Ok(Target {
                credential: route.credential.clone(),
                addressed: Some((host, port)),
                path: path.to_owned(),
                query,
            });
        }
        // Base-URL form: /c/<credential>/<path>.
        let Some(rest) = path.strip_prefix(BASE_PREFIX) else {
            return Err(Refusal {
                status: 404,
                message: format!("send requests to {BASE_PREFIX}<credential>/<path>, or use this proxy as HTTP_PROXY/HTTPS_PROXY"),
            });
        };
        let (name, below) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if !routes::valid_credential_name(name) {
            return Err(Refusal {
                status: 400,
                message: "the credential name is not one (1 to 128 of A-Z a-z 0-9 . _ -)".into(),
            });
        }
        Ok(Target {
            credential: name.to_owned(),
            addressed: None,
            path: below.to_owned(),
            query,
        })
    }

    /// Answers a CONNECT to a routed host: 200, then TLS under a minted leaf.
    async fn connect(self: Arc<Self>, req: Request<Incoming>, origin: Origin) -> Response<Body> {
        if origin.tunnel.is_some() {
            return text(400, "CONNECT inside a tunnel");
        }
        let Some(authority) = req.uri().authority().cloned() else {
            return text(400, "CONNECT needs host:port");
        };
        let host = authority.host().to_ascii_lowercase();
        let port = authority.port_u16().unwrap_or(443);
        let worker = match self.worker_of(&req) {
            Ok(w) => w,
            Err(response) => {
                metrics::refused(metrics::Refused::Token);
                return *response;
            }
        };
        if !self.settings.routes.routes_host(&host, port) || !self.credential_at(&host, port).await
        {
            tracing::info!(method = "CONNECT", host = %host, port, peer = %origin.peer, status = 403u16, "refused: CONNECT to an unrouted host");
            metrics::refused(metrics::Refused::Route);
            return text(
                403,
                &format!("CONNECT to {host}:{port}: no route names this host and port"),
            );
        }
        let config = match self.authority.server_config(&host) {
            Ok(c) => c,
            Err(e) => return text(500, &format!("cannot mint a certificate for {host}: {e}")),
        };
        let proxy = Arc::clone(&self);
        tokio::spawn(async move {
            let upgraded = match hyper::upgrade::on(req).await {
                Ok(u) => u,
                Err(e) => {
                    tracing::debug!(error = %e, "a CONNECT was not upgraded");
                    return;
                }
            };
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            let handshake = tokio::time::timeout(
                proxy.settings.header_timeout,
                acceptor.accept(TokioIo::new(upgraded)),
            )
            .await;
            let tls = match handshake {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::info!(host = %host, error = %e, "TLS with a worker failed (does it trust the proxy's CA?)");
                    return;
                }
                Err(_) => return,
            };
            let inner = Origin {
                peer: origin.peer,
                tunnel: Some((host, port)),
                worker,
            };
            proxy.serve_io(TokioIo::new(tls), inner).await;
        });
        Response::new(
            http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
    }

    /// Whether a credential routed for `host` has its base URL at `host`:`port`.
    async fn credential_at(&self, host: &str, port: u16) -> bool {
        let names: Vec<String> = self
            .settings
            .routes
            .iter()
            .filter(|r| r.host.eq_ignore_ascii_case(host))
            .map(|r| r.credential.clone())
            .collect();
        for name in names {
            if let Ok(held) = self.vault.headers(&name).await {
                if let Ok(base) = Base::parse(held.base_url()) {
                    if base.has_host(host) && base.port() == port {
                        return true;
                    }
                }
            }
        }
        false
    }

    /// Sends a request to its credential's provider and streams the answer back.
    async fn forward(
        &self,
        req: Request<Incoming>,
        target: &Target,
        origin: &Origin,
        began: Instant,
    ) -> Response<Body> {
        let name = &target.credential;
        let held = match self.acquire(name).await {
            Ok(h) => h,
            Err(response) => {
                log_line(&req, name, "-", response.status().as_u16(), began, origin);
                return response;
            }
        };
        let base = match self.base(held.base_url()) {
            Ok(b) => b,
            Err(r) => {
                metrics::refused(metrics::Refused::Target);
                return refused(&r);
            }
        };
        // Proxy form: the worker's host must be the credential's own.
        let rest = match &target.addressed {
            None => Some(target.path.as_str()),
            Some((host, port)) => {
                let same = base.has_host(host)
                    && port
                        .is_none_or(|p| p == base.port() || (p == 80 && origin.tunnel.is_none()));
                if !same {
                    metrics::refused(metrics::Refused::Target);
                    return text(
                        403,
                        &format!(
                            "credential {name} is for {}, not {host}: the request is not sent",
                            base.host()
                        ),
                    );
                }
                base.below(&target.path)
            }
        };
        let Some(rest) = rest else {
            metrics::refused(metrics::Refused::Target);
            return text(
                403,
                &format!(
                    "the path is outside credential {name}'s base path {}",
                    base.path()
                ),
            );
        };
        let uri = match base.uri(rest, target.query.as_deref()) {
            Ok(u) => u,
            Err(r) => {
                log_line(&req, name, base.host(), r.status, began, origin);
                metrics::refused(metrics::Refused::Target);
                return refused(&r);
            }
        };
        let (mut parts, body) = req.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        parts.headers.remove(header::HOST);
        // What the credential sets is its alone: the worker's own values go.
        for (k, v) in held.iter() {
            if let Ok(mut v) = HeaderValue::from_str(v) {
                // Never indexed by HTTP/2 header compression.
                v.set_sensitive(true);
                parts.headers.insert(k.clone(), v);
            }
        }
        // The provider's side speaks its own version (HTTP/2 by ALPN, or HTTP/1.1).
        parts.version = http::Version::HTTP_11;
        parts.uri = uri;
        parts.extensions = http::Extensions::new();
        let method = parts.method.clone();
        let path_shown = parts.uri.path().to_owned();
        let upstream = match self.upstream.send(Request::from_parts(parts, body)).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(credential = %name, host = %base.host(), error = %e, "the provider could not be reached");
                metrics::refused(metrics::Refused::Upstream);
                log_parts(
                    &method,
                    name,
                    base.host(),
                    &path_shown,
                    502,
                    0,
                    began,
                    &origin.peer,
                );
                return text(
                    502,
                    &format!("the provider at {} could not be reached: {e}", base.host()),
                );
            }
        };
        let status = upstream.status().as_u16();
        let form = match (&origin.tunnel, &target.addressed) {
            (Some(_), _) => "tunnel",
            (None, Some(_)) => "proxy",
            (None, None) => "base",
        };
        metrics::request(form, name, status, began.elapsed());
        if matches!(status, 401 | 403 | 429) && self.reports.due(name, status) {
            let retry_after = credvault_client::budget::retry_after(upstream.headers());
            let vault = self.vault.clone();
            let name = name.clone();
            tokio::spawn(async move {
                match vault.report(&name, status, retry_after).await {
                    Ok(_) => metrics::reported(status),
                    Err(e) => {
                        tracing::warn!(credential = %name, status, error = %e, "the provider's answer could not be reported to the vault")
                    }
                }
            });
        }
        let (mut head, body) = upstream.into_parts();
        strip_hop_by_hop(&mut head.headers);
        head.extensions = http::Extensions::new();
        let body = Counted {
            body,
            log: LogOnEnd {
                method,
                credential: name.clone(),
                host: base.host().to_owned(),
                path: path_shown,
                status,
                bytes: 0,
                began,
                peer: origin.peer,
            },
        };
        Response::from_parts(head, body.boxed_unsync())
    }

    /// The credential's headers once a request may go: at once, or within
    /// `--max-wait` of a pause or a spent budget; else the answer to give.
    async fn acquire(
        &self,
        name: &str,
    ) -> Result<Arc<credvault_client::CredentialHeaders>, Response<Body>> {
        let deadline = Instant::now() + self.settings.max_wait;
        loop {
            let wait = match self.vault.try_acquire(name).await {
                Ok(h) => return Ok(h),
                Err(VaultError::Paused { until }) => {
                    let wait = until.duration_since(SystemTime::now()).unwrap_or_default();
                    if Instant::now() + wait > deadline {
                        metrics::refused(metrics::Refused::Paused);
                        return Err(too_many(
                            &format!("the provider account of credential {name} is paused (the provider answered 429); retry after the pause"),
                            wait,
                        ));
                    }
                    wait
                }
                Err(VaultError::BudgetSpent { retry_after }) => {
                    if Instant::now() + retry_after > deadline {
                        metrics::refused(metrics::Refused::Budget);
                        return Err(too_many(
                            &format!("credential {name}'s request budget for this minute is spent"),
                            retry_after,
                        ));
                    }
                    retry_after
                }
                Err(e) => {
                    metrics::refused(metrics::Refused::Vault);
                    return Err(vault_refusal(name, &e));
                }
            };
            tokio::time::sleep(wait + Duration::from_millis(2)).await;
        }
    }

    /// Serves one connection (HTTP/1.1 or HTTP/2) until it closes.
    async fn serve_io<I>(self: Arc<Self>, io: I, origin: Origin)
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.settings.header_timeout)
            .max_buf_size(self.settings.max_header_bytes.max(8192));
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(self.settings.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(256);
        let proxy = Arc::clone(&self);
        // A connection that sends no request within the header timeout is closed
        // (hyper's own timeout starts only once it knows HTTP/1 from HTTP/2).
        let started = Arc::new(tokio::sync::Notify::new());
        let first = Arc::clone(&started);
        let service = hyper::service::service_fn(move |req| {
            first.notify_one();
            let proxy = Arc::clone(&proxy);
            let origin = origin.clone();
            async move { Ok::<_, Infallible>(proxy.handle(req, origin).await) }
        });
        let connection = builder.serve_connection_with_upgrades(io, service);
        tokio::pin!(connection);
        let deadline = tokio::time::sleep(self.settings.header_timeout);
        tokio::select! {
            result = &mut connection => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "a worker's connection ended with an error");
                }
                return;
            }
            () = started.notified() => {}
            () = deadline => {
                tracing::debug!("a connection sent no request in time; closed");
                return;
            }
        }
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "a worker's connection ended with an error");
        }
    }
}

/// How every "no route" refusal begins (the metrics count those as `route`).
const NO_ROUTE: &str = "no route for ";

/// The refusal of a request no route names.
fn no_route(host: &str, path: &str) -> Refusal {
    Refusal {
        status: 403,
        message: format!("{NO_ROUTE}{host}{path}"),
    }
}

/// Whether a `Host` header names `host` (its port, when given, `port`).
fn same_host(header: &str, host: &str, port: u16) -> bool {
    let (h, p) = match header.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
            (h, p.parse::<u16>().ok())
        }
        _ => (header, None),
    };
    let bare = |s: &str| {
        s.trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase()
    };
    bare(h) == bare(host) && p.is_none_or(|p| p == port)
}

/// What the vault's answer means for the worker.
fn vault_refusal(name: &str, e: &VaultError) -> Response<Body> {
    let (status, what) = match e {
        VaultError::NotFound(_) => (404, "the vault has no credential of that name"),
        VaultError::Deleted(_) => (410, "the credential was deleted"),
        VaultError::Rejected(_) => (
            502,
            "the provider rejected the credential's key; an admin must rotate it",
        ),
        VaultError::PermissionDenied(_) | VaultError::Unauthenticated(_) => {
            (502, "the proxy may not read this credential from the vault")
        }
        VaultError::Stale { .. } | VaultError::Unavailable(_) => (
            503,
            "the vault cannot be reached and the headers held are too old",
        ),
        VaultError::InvalidArgument(_) => (400, "the credential name is not valid"),
        _ => (502, "the vault refused the credential"),
    };
    tracing::info!(credential = %name, status, error = %e, "a request was refused for its credential");
    text(status, &format!("credential {name}: {what}"))
}

fn log_refused(req: &Request<Incoming>, origin: &Origin, r: &Refusal) {
    tracing::info!(
        method = %req.method(),
        path = %shown_path(req.uri().path()),
        peer = %origin.peer,
        status = r.status,
        reason = %r.message,
        "refused"
    );
}

/// A path as a log line shows it: at most 256 bytes, control characters escaped.
fn shown_path(path: &str) -> String {
    let mut out: String = path
        .chars()
        .take(256)
        .flat_map(char::escape_default)
        .collect();
    if path.len() > 256 {
        out.push('…');
    }
    out
}

/// The log line of a request answered before its body streamed.
fn log_line(
    req: &Request<Incoming>,
    credential: &str,
    host: &str,
    status: u16,
    began: Instant,
    origin: &Origin,
) {
    log_parts(
        req.method(),
        credential,
        host,
        req.uri().path(),
        status,
        0,
        began,
        &origin.peer,
    );
}

#[allow(clippy::too_many_arguments)]
fn log_parts(
    method: &Method,
    credential: &str,
    host: &str,
    path: &str,
    status: u16,
    bytes: u64,
    began: Instant,
    peer: &SocketAddr,
) {
    tracing::info!(
        method = %method,
        credential = %credential,
        host = %host,
        path = %shown_path(path),
        status,
        bytes,
        latency_ms = began.elapsed().as_secs_f64() * 1000.0,
        peer = %peer,
        "request"
    );
}

/// Writes a request's log line when its answer's body ends (or is dropped):
/// method, credential, host, path without query, status, bytes, latency. Never a header value.
struct LogOnEnd {
    method: Method,
    credential: String,
    host: String,
    path: String,
    status: u16,
    bytes: u64,
    began: Instant,
    peer: SocketAddr,
}

impl Drop for LogOnEnd {
    fn drop(&mut self) {
        metrics::response_bytes(self.bytes);
        log_parts(
            &self.method,
            &self.credential,
            &self.host,
            &self.path,
            self.status,
            self.bytes,
            self.began,
            &self.peer,
        );
    }
}

/// The provider's answer as it streams to the worker, counted; the log line
/// is written when it ends.
struct Counted {
    body: Incoming,
    log: LogOnEnd,
}

impl hyper::body::Body for Counted {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, std::io::Error>>> {
        let this = &mut *self;
        match std::pin::Pin::new(&mut this.body).poll_frame(cx) {
            std::task::Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.log.bytes += data.len() as u64;
                }
                std::task::Poll::Ready(Some(Ok(frame)))
            }
            std::task::Poll::Ready(Some(Err(e))) => {
                std::task::Poll::Ready(Some(Err(std::io::Error::other(e))))
            }
            other => other.map(|_| None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Runs a closure when dropped.
struct OnDrop<F: FnMut()>(F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}

/// A connection accepted (its peer, its slot), on its way to a thread.
type Accepted = (
    std::net::TcpStream,
    SocketAddr,
    tokio::sync::OwnedSemaphorePermit,
);

/// One of the threads serving workers: a single-threaded runtime with its own
/// connections to the providers, as Envoy's workers, so that a request is
/// served start to end on one thread, without a lock or a wake-up shared
/// with another (on two cores: a third less CPU per request over HTTP/2,
/// BENCHMARKS.md).
struct Lane {
    accepted: tokio::sync::mpsc::UnboundedSender<Accepted>,
    open: Arc<std::sync::atomic::AtomicUsize>,
}

/// Serves workers on `listener` until `shutdown` resolves: each connection in
/// its own task on the least busy of `threads` threads, at most
/// `max_connections` at once. Without workers' tokens only loopback peers are
/// served (a worker beside the proxy).
pub async fn run(
    listener: tokio::net::TcpListener,
    proxy: Arc<Proxy>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let slots = Arc::new(tokio::sync::Semaphore::new(
        proxy.settings.max_connections.max(1),
    ));
    let mut lanes = Vec::new();
    for i in 0..proxy.settings.threads.max(1) {
        lanes.push(lane(i, Arc::new(proxy.for_thread()))?);
    }
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => return Ok(()),
            permit = Arc::clone(&slots).acquire_owned() => permit.map_err(std::io::Error::other)?,
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if !proxy.admits(&peer) {
            tracing::warn!(peer = %peer, "refused a connection from outside this host (without --tokens-file the proxy serves loopback workers only)");
            continue;
        }
        let _ = stream.set_nodelay(true);
        let Some(lane) = lanes
            .iter()
            .min_by_key(|l| l.open.load(std::sync::atomic::Ordering::Relaxed))
        else {
            continue;
        };
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "an accepted connection could not be handed to a thread");
                continue;
            }
        };
        lane.open.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let _ = lane.accepted.send((stream, peer, permit));
    }
}

/// Starts thread `i`: it serves the connections sent to it until the sender is dropped.
fn lane(i: usize, proxy: Arc<Proxy>) -> std::io::Result<Lane> {
    let (accepted, mut arriving) = tokio::sync::mpsc::unbounded_channel::<Accepted>();
    let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = Arc::clone(&open);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name(format!("credvault-proxy-{i}"))
        .spawn(move || {
            runtime.block_on(async move {
                while let Some((stream, peer, permit)) = arriving.recv().await {
                    let stream = match tokio::net::TcpStream::from_std(stream) {
                        Ok(s) => s,
                        Err(e) => {
                            count.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                            tracing::warn!(error = %e, "a connection could not join its thread");
                            continue;
                        }
                    };
                    let proxy = Arc::clone(&proxy);
                    let count = Arc::clone(&count);
                    metrics::connection(1.0);
                    tokio::spawn(async move {
                        let _permit = permit;
                        let _closed = OnDrop(|| {
                            count.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                            metrics::connection(-1.0);
                        });
                        proxy
                            .serve_io(
                                TokioIo::new(stream),
                                Origin {
                                    peer,
                                    tunnel: None,
                                    worker: None,
                                },
                            )
                            .await;
                    });
                }
            });
        })?;
    Ok(Lane { accepted, open })
}
