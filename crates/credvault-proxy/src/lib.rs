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
//! stream both ways. The parts: [`Proxy`] here, `request` (a request's form,
//! credential and target), `forward` (pace, headers, bodies, reports), `log` (the
//! per-request line), `lanes` ([`run`], the accept loop and its threads),
//! [`routes`], [`target`], [`authority`], [`workers`] (tokens for a shared
//! proxy), [`metrics`], [`toml_file`] and [`upstream`] (the client toward the
//! providers).

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

mod forward;
mod lanes;
mod log;
mod request;

use forward::*;
pub use lanes::*;
use log::*;

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
}
