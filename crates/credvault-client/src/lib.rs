//! credvault-client: the worker's side of credvault. A worker asks for a
//! credential's headers by name; the first ask fetches them once (however many
//! tasks ask at that moment) and adds the credential to the client's one
//! `WatchCredentialHeaders` stream; every later ask is a read from memory, and
//! the vault pushes every change (a rotation, a deletion, a new verification)
//! into that memory as it happens.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let client = credvault_client::Client::builder("http://credvault:50051")
//!     .token(std::env::var("CREDVAULT_TOKEN")?)
//!     .build()?;
//! // The same, from $CREDVAULT_ADDR and $CREDVAULT_TOKEN:
//! let client = credvault_client::Client::from_env()?.build()?;
//! let headers = client.headers("fleetio-acme").await?;
//! let mut map = http::HeaderMap::new();
//! headers.apply_to(&mut map);
//! let url = format!("{}/v1/vehicles", headers.base_url());
//! # Ok(()) }
//! ```
//!
//! What it promises:
//! - **Current while connected.** While the stream is up, a change the vault
//!   acknowledged reaches the client's memory as soon as the server pushes it
//!   (milliseconds on one network).
//! - **Bounded staleness.** When the stream breaks, the client reconnects with
//!   jittered exponential backoff and resumes with the versions it holds, so an
//!   update made meanwhile is delivered on reconnection. Meanwhile the last good
//!   headers are served for at most [`ClientBuilder::max_staleness`], then
//!   [`Error::Stale`]. A stream that stalls silently is found by HTTP/2
//!   keepalive pings (every 20 s, 10 s to answer).
//! - **Never after deletion or denial.** A credential the vault says was deleted,
//!   or that the caller may no longer read, is never served from memory again;
//!   only a new answer from the vault brings a name back (a credential created
//!   again under it, access granted again).
//!
//! - **One account, one pace.** A worker reports what the provider answered
//!   ([`Client::report`]); a 429 pauses the provider account for every worker
//!   (pushed through the stream), a 401 or 403 has the vault verify the key
//!   again and, once it is found rejected, [`Client::headers`] fails with
//!   [`Error::Rejected`] until an admin rotates it. [`Client::acquire`] waits
//!   out a pause and takes each request from the account's request budget,
//!   leased from the vault a few requests at a time.
//!
//! The parts: [`Client`] and its [`ClientBuilder`], [`CredentialHeaders`] (the
//! answer, which writes itself into an `http::HeaderMap`), [`Error`], the
//! reports and leases of [`budget`], and [`proto`], the generated
//! `credvault.v1` types for anything else.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::{ArcSwap, ArcSwapOption};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{watch, Notify};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use zeroize::Zeroizing;

pub mod budget;
mod error;
mod headers;
pub mod proto;

pub use budget::{retry_after, Report};
pub use error::Error;
pub use headers::CredentialHeaders;
pub use tonic::transport::{Certificate, Identity};

type Vault = proto::credential_vault_service_client::CredentialVaultServiceClient<
    InterceptedService<Channel, Bearer>,
>;

/// Adds `authorization: Bearer <token>` to every call (or nothing, under mTLS).
#[derive(Clone)]
struct Bearer(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// How a [`Client`] is made: the vault's endpoint, a token and/or TLS, and its timing.
pub struct ClientBuilder {
    endpoint: String,
    token: Option<Zeroizing<String>>,
    tls: Option<ClientTlsConfig>,
    max_staleness: Duration,
    request_timeout: Duration,
    connect_timeout: Duration,
    backoff: (Duration, Duration),
    max_credentials: usize,
    lease_size: u32,
    acquire_timeout: Duration,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "[REDACTED]"))
            .field("tls", &self.tls.is_some())
            .field("max_staleness", &self.max_staleness)
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    /// The caller's bearer token (its `headers.read` permission is what counts).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(Zeroizing::new(token.into()));
        self
    }

    /// TLS to the vault: the CA to trust (`tls.ca_certificate(...)`), and for mutual
    /// TLS the client certificate (`tls.identity(...)`), which may stand in for the token.
    pub fn tls(mut self, tls: ClientTlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// How long the last good headers are served while the vault is out of reach
    /// (default 5 minutes); after that, [`Error::Stale`].
    pub fn max_staleness(mut self, max: Duration) -> Self {
        self.max_staleness = max;
        self
    }

    /// Longest wait for a first fetch (default 10 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Longest wait for a connection (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The reconnection backoff: the first delay and the longest (default 100 ms
    /// and 10 s); each wait is drawn at random up to the current delay.
    pub fn backoff(mut self, first: Duration, max: Duration) -> Self {
        self.backoff = (first.max(Duration::from_millis(1)), max.max(first));
        self
    }

    /// The most credentials the client watches (default 1000, the server's default
    /// limit per stream).
    pub fn max_credentials(mut self, max: usize) -> Self {
        self.max_credentials = max.max(1);
        self
    }

    /// How many budgeted requests [`Client::acquire`] leases from the vault at a
    /// time (default 10; the vault grants at most a tenth of a window's budget).
    pub fn lease_size(mut self, n: u32) -> Self {
        self.lease_size = n.clamp(1, 10_000);
        self
    }

    /// The longest [`Client::acquire`] waits for a pause to end or the budget
    /// to allow a request (default 60 s); past it, it fails saying until when.
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// Makes the client; it connects lazily, on the first ask. Must be called
    /// inside a tokio runtime (the watch stream runs on it).
    pub fn build(self) -> Result<Client, Error> {
        let invalid = |what: String| Error::InvalidArgument(what);
        let (uri, https) = endpoint_uri(&self.endpoint)?;
        let mut endpoint = Endpoint::from_shared(uri)
            .map_err(|e| {
                invalid(format!(
                    "the endpoint {:?} is not valid: {e}",
                    self.endpoint
                ))
            })?
            .connect_timeout(self.connect_timeout)
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        // https:// alone trusts the public web roots, as a browser would.
        let tls = match self.tls {
            Some(tls) => Some(tls),
            None if https => Some(ClientTlsConfig::new().with_webpki_roots()),
            None => None,
        };
        if let Some(tls) = tls {
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| invalid(format!("the TLS settings are not valid: {e}")))?;
        }
        let token = self.token.or_else(|| {
            std::env::var(TOKEN_ENV)
                .ok()
                .filter(|t| !t.is_empty())
                .map(Zeroizing::new)
        });
        let token = match &token {
            Some(t) => Some(
                format!("Bearer {}", t.as_str())
                    .parse::<MetadataValue<Ascii>>()
                    .map_err(|_| invalid("the token holds characters a header cannot".into()))?,
            ),
            None => None,
        };
        let vault =
            proto::credential_vault_service_client::CredentialVaultServiceClient::with_interceptor(
                endpoint.connect_lazy(),
                Bearer(token),
            );
        let inner = Arc::new(Inner {
            vault,
            max_staleness: self.max_staleness,
            request_timeout: self.request_timeout,
            backoff: self.backoff,
            max_credentials: self.max_credentials,
            lease_size: self.lease_size,
            acquire_timeout: self.acquire_timeout,
            state: Mutex::new(State::default()),
            views: ArcSwap::from_pointee(HashMap::new()),
            changed: Notify::new(),
            stats: Counters::default(),
        });
        let task = tokio::spawn(watch_loop(Arc::clone(&inner)));
        Ok(Client {
            inner,
            _task: Arc::new(AbortOnDrop(task)),
        })
    }
}

/// Counts of what a client did, for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// First fetches (`GetCredentialHeaders` calls).
    pub fetches: u64,
    /// Watch streams opened (first, resumes and restarts for new credentials).
    pub streams: u64,
    /// Watch messages received.
    pub messages: u64,
    /// Watch messages that carried new headers.
    pub updates: u64,
}

#[derive(Default)]
struct Counters {
    fetches: AtomicU64,
    streams: AtomicU64,
    messages: AtomicU64,
    updates: AtomicU64,
}

/// The worker's handle on the vault: cheap to clone, one watch stream for all clones.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    _task: Arc<AbortOnDrop>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.inner.lock();
        f.debug_struct("Client")
            .field("watched", &state.watched)
            .field("connected", &state.connected)
            .finish_non_exhaustive()
    }
}

/// Stops the watch task when the last clone of the client goes.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Inner {
    vault: Vault,
    max_staleness: Duration,
    request_timeout: Duration,
    backoff: (Duration, Duration),
    max_credentials: usize,
    lease_size: u32,
    acquire_timeout: Duration,
    state: Mutex<State>,
    /// What a hit reads, without the lock: each held name's servable view,
    /// published under the lock after every change of its entry.
    views: ArcSwap<HashMap<String, Arc<ArcSwapOption<View>>>>,
    /// Rung when a credential is added to the watch.
    changed: Notify,
    stats: Counters,
}

/// A held credential as a hit serves it: the headers in one copy per stripe
/// (each its own allocation, so readers on different cores do not share the
/// reference count's cache line), and what decides whether they may be served.
struct View {
    stripes: Vec<Arc<CredentialHeaders>>,
    live: bool,
    good_at: Instant,
    suspended: bool,
    rejected: Option<Error>,
}

/// Copies of a view's headers: one per core, at most 16.
fn stripes() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(16)))
}

/// This thread's stripe (below [`stripes`]).
fn stripe() -> usize {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    thread_local! {
        static MINE: usize = NEXT.fetch_add(1, Ordering::Relaxed) as usize % stripes();
    }
    MINE.with(|m| *m)
}

#[derive(Default)]
struct State {
    entries: HashMap<String, Entry>,
    /// The names the stream watches, in the order of its request.
    watched: Vec<String>,
    /// Whether a stream is up now.
    connected: bool,
}

/// The answer of a first fetch, as its waiters receive it.
type Fetched = Option<Result<Arc<CredentialHeaders>, Error>>;

enum Entry {
    /// A first fetch is under way; ask its channel.
    Fetching(watch::Receiver<Fetched>),
    /// Headers held.
    Held(Held),
    /// Never served from memory: deleted, denied, not found.
    Gone(Error),
}

struct Held {
    headers: Arc<CredentialHeaders>,
    /// Confirmed current by the stream that is up now.
    live: bool,
    /// When they were last known to be current.
    good_at: Instant,
    /// The vault ended the stream for a narrowed access: not served until a new
    /// stream confirms them.
    suspended: bool,
    /// The account is paused until then (a worker reported a 429).
    paused_until: Option<SystemTime>,
    /// The account's request budget per minute (0: none).
    budget: u32,
    /// Budgeted requests leased from the vault and not yet spent.
    lease: budget::Lease,
}

impl Held {
    fn new(headers: Arc<CredentialHeaders>, live: bool) -> Self {
        Held {
            headers,
            live,
            good_at: Instant::now(),
            suspended: false,
            paused_until: None,
            budget: 0,
            lease: budget::Lease::default(),
        }
    }

    /// Takes what the vault said of the account: its pause and its budget.
    fn account(&mut self, paused_until: Option<prost_types::Timestamp>, budget: u32) {
        self.paused_until = paused_until.and_then(|t| SystemTime::try_from(t).ok());
        self.budget = budget;
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Publishes `name`'s entry to the hit path (called under the lock after it changed).
    fn publish(&self, state: &State, name: &str) {
        let view = match state.entries.get(name) {
            Some(Entry::Held(held)) => {
                let n = stripes();
                let mut copies = Vec::with_capacity(n);
                copies.push(Arc::clone(&held.headers));
                while copies.len() < n {
                    copies.push(Arc::new(CredentialHeaders::clone(&held.headers)));
                }
                Some(Arc::new(View {
                    stripes: copies,
                    live: held.live,
                    good_at: held.good_at,
                    suspended: held.suspended,
                    rejected: budget::rejection(&held.headers),
                }))
            }
            _ => None,
        };
        let views = self.views.load();
        match views.get(name) {
            Some(slot) => slot.store(view),
            None if view.is_some() => {
                let mut next = HashMap::clone(&views);
                next.insert(name.to_owned(), Arc::new(ArcSwapOption::new(view)));
                self.views.store(Arc::new(next));
            }
            None => {}
        }
    }

    /// Publishes every entry (after a change to all of them).
    fn publish_all(&self, state: &State) {
        for name in state.entries.keys() {
            self.publish(state, name);
        }
    }

    /// Serves a published view: as [`Inner::serve`], without the lock.
    fn serve_view(&self, view: &View) -> Result<Arc<CredentialHeaders>, Error> {
        if view.suspended {
            return Err(Error::PermissionDenied(
                "the vault narrowed this caller's access; the credential is re-checked before its headers are served again".into(),
            ));
        }
        if let Some(rejected) = &view.rejected {
            return Err(rejected.clone());
        }
        let copy = || Arc::clone(view.stripes.get(stripe()).unwrap_or(&view.stripes[0]));
        // Confirmed by the stream that is up: no clock to read.
        if view.live {
            return Ok(copy());
        }
        let age = view.good_at.elapsed();
        if age <= self.max_staleness {
            Ok(copy())
        } else {
            Err(Error::Stale {
                age,
                max: self.max_staleness,
            })
        }
    }

    /// Serves held headers within the staleness bound, unless the provider rejects them.
    fn serve(&self, held: &Held) -> Result<Arc<CredentialHeaders>, Error> {
        if held.suspended {
            return Err(Error::PermissionDenied(
                "the vault narrowed this caller's access; the credential is re-checked before its headers are served again".into(),
            ));
        }
        if let Some(rejected) = budget::rejection(&held.headers) {
            return Err(rejected);
        }
        let age = held.good_at.elapsed();
        if held.live || age <= self.max_staleness {
            Ok(Arc::clone(&held.headers))
        } else {
            Err(Error::Stale {
                age,
                max: self.max_staleness,
            })
        }
    }
}

/// Where the vault is when no endpoint is given ([`Client::from_env`]), as hvac reads `VAULT_ADDR`.
pub const ADDR_ENV: &str = "CREDVAULT_ADDR";
/// The caller's token when none is given, as hvac reads `VAULT_TOKEN`.
pub const TOKEN_ENV: &str = "CREDVAULT_TOKEN";

/// The URI to dial for an endpoint as the Python client takes it too:
/// `host:port`, `http://host:port` or `https://host:port` (TLS); whether it is
/// `https`. Any other form fails here, saying why.
fn endpoint_uri(given: &str) -> Result<(String, bool), Error> {
    let text = given.trim().trim_end_matches('/');
    let (scheme, rest) = match text.split_once("://") {
        Some((scheme @ ("http" | "https"), rest)) => (scheme, rest),
        Some((scheme, _)) => {
            return Err(Error::InvalidArgument(format!(
                "the vault address {given:?} has scheme {scheme:?}: use host:port, http://host:port or https://host:port"
            )))
        }
        None => ("http", text),
    };
    let ok = rest.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty() && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())
    }) && !rest.contains('/');
    if !ok {
        return Err(Error::InvalidArgument(format!(
            "the vault address {given:?} is not host:port (e.g. credvault:50051)"
        )));
    }
    Ok((format!("{scheme}://{rest}"), scheme == "https"))
}

impl Client {
    /// A builder for a client of the vault at `endpoint`: `host:port`,
    /// `http://host:port`, or `https://host:port` (TLS: the public web roots, or
    /// [`ClientBuilder::tls`]). Without [`ClientBuilder::token`], `$CREDVAULT_TOKEN`.
    pub fn builder(endpoint: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            endpoint: endpoint.into(),
            token: None,
            tls: None,
            max_staleness: Duration::from_secs(300),
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            backoff: (Duration::from_millis(100), Duration::from_secs(10)),
            max_credentials: 1000,
            lease_size: 10,
            acquire_timeout: Duration::from_secs(60),
        }
    }

    /// A builder for the vault at `$CREDVAULT_ADDR`, with `$CREDVAULT_TOKEN` unless a token is set.
    pub fn from_env() -> Result<ClientBuilder, Error> {
        match std::env::var(ADDR_ENV) {
            Ok(addr) if !addr.trim().is_empty() => Ok(Self::builder(addr)),
            _ => Err(Error::InvalidArgument(format!(
                "no vault address: pass one to Client::builder or set ${ADDR_ENV}"
            ))),
        }
    }

    /// The headers of the credential named `name`: from memory once held, else
    /// fetched once (concurrent first asks share that fetch) and then watched.
    pub async fn headers(&self, name: &str) -> Result<Arc<CredentialHeaders>, Error> {
        let inner = &self.inner;
        // A hit: no lock, no shared write.
        if let Some(slot) = inner.views.load().get(name) {
            if let Some(view) = &*slot.load() {
                return inner.serve_view(view);
            }
        }
        let mut rx = {
            let mut state = inner.lock();
            match state.entries.get(name) {
                Some(Entry::Held(held)) => return inner.serve(held),
                Some(Entry::Gone(e)) => return Err(e.clone()),
                Some(Entry::Fetching(rx)) => rx.clone(),
                None => {
                    if state.watched.len() >= inner.max_credentials {
                        return Err(Error::TooManyCredentials(state.watched.len()));
                    }
                    let (tx, rx) = watch::channel(None);
                    state
                        .entries
                        .insert(name.to_owned(), Entry::Fetching(rx.clone()));
                    // Its own task: the fetch completes for every waiter even if
                    // the first asker gives up.
                    tokio::spawn(fetch(Arc::clone(inner), name.to_owned(), tx));
                    rx
                }
            }
        };
        let answer = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| Error::Rpc {
                code: tonic::Code::Cancelled,
                message: "the fetch was abandoned".into(),
            })?
            .clone();
        answer.unwrap_or_else(|| {
            Err(Error::Rpc {
                code: tonic::Code::Internal,
                message: "the fetch ended without an answer".into(),
            })
        })
    }

    /// Counts of fetches, streams and messages so far.
    pub fn stats(&self) -> Stats {
        let c = &self.inner.stats;
        Stats {
            fetches: c.fetches.load(Ordering::Relaxed),
            streams: c.streams.load(Ordering::Relaxed),
            messages: c.messages.load(Ordering::Relaxed),
            updates: c.updates.load(Ordering::Relaxed),
        }
    }

    /// Whether the watch stream is up now.
    pub fn is_connected(&self) -> bool {
        self.inner.lock().connected
    }
}

/// The first fetch of `name`: one `GetCredentialHeaders`, then the credential is watched.
async fn fetch(inner: Arc<Inner>, name: String, tx: watch::Sender<Fetched>) {
    inner.stats.fetches.fetch_add(1, Ordering::Relaxed);
    let mut request = tonic::Request::new(proto::GetCredentialHeadersRequest {
        r#ref: Some(proto::get_credential_headers_request::Ref::Name(
            name.clone(),
        )),
    });
    request.set_timeout(inner.request_timeout);
    let mut account = (None, 0);
    let answer = match inner.vault.clone().get_credential_headers(request).await {
        Ok(r) => {
            let r = r.into_inner();
            account = (r.paused_until, r.request_budget_per_minute);
            CredentialHeaders::new(
                r.credential_id,
                name.clone(),
                r.version,
                r.base_url,
                r.headers,
                None,
            )
            .map(|h| Arc::new(h.at_revision(r.headers_revision)))
        }
        Err(status) => Err(Error::from(status)),
    };
    let mut state = inner.lock();
    let watch = match &answer {
        Ok(headers) => {
            let mut held = Held::new(Arc::clone(headers), false);
            held.account(account.0, account.1);
            state.entries.insert(name.clone(), Entry::Held(held));
            true
        }
        // Watched too: the vault says when it comes to exist, or to be readable.
        Err(e @ (Error::NotFound(_) | Error::PermissionDenied(_))) => {
            state.entries.insert(name.clone(), Entry::Gone(e.clone()));
            true
        }
        // Asked again next time.
        Err(_) => {
            state.entries.remove(&name);
            false
        }
    };
    inner.publish(&state, &name);
    if watch && !state.watched.contains(&name) {
        state.watched.push(name);
        drop(state);
        inner.changed.notify_one();
    }
    tx.send_replace(Some(answer));
}

/// A random duration up to `max` ("full jitter").
fn jitter(max: Duration) -> Duration {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(max.as_nanos() as u64);
    let r = hasher.finish();
    let nanos = max.as_nanos().min(u128::from(u64::MAX)) as u64;
    Duration::from_nanos(if nanos == 0 { 0 } else { r % nanos })
}

/// Why a stream ended.
enum Ended {
    /// A credential was added: restart at once with the larger set.
    Restart,
    /// The stream failed or the vault ended it.
    Failed(tonic::Status),
}

/// The client's one watch stream: (re)opened with every watched credential and
/// the version held of each, for as long as the client lives.
async fn watch_loop(inner: Arc<Inner>) {
    let mut delay = inner.backoff.0;
    loop {
        let added = inner.changed.notified();
        let (names, request) = {
            let state = inner.lock();
            let names = state.watched.clone();
            let credentials = names
                .iter()
                .map(|name| {
                    let (id, version, revision) = match state.entries.get(name) {
                        Some(Entry::Held(h)) => (
                            h.headers.credential_id().to_owned(),
                            h.headers.version(),
                            h.headers.headers_revision(),
                        ),
                        _ => (String::new(), 0, 0),
                    };
                    proto::WatchedCredential {
                        r#ref: Some(proto::watched_credential::Ref::Name(name.clone())),
                        known_version: version,
                        known_credential_id: id,
                        known_headers_revision: revision,
                    }
                })
                .collect();
            (names, proto::WatchCredentialHeadersRequest { credentials })
        };
        if names.is_empty() {
            added.await;
            continue;
        }
        drop(added);
        inner.stats.streams.fetch_add(1, Ordering::Relaxed);
        match run_stream(&inner, &names, request).await {
            Ended::Restart => {
                // Not current for every name until the new stream has reported them all.
                inner.lock().connected = false;
                continue;
            }
            Ended::Failed(status) => {
                // A stream that was whole starts the backoff over.
                if inner.lock().connected {
                    delay = inner.backoff.0;
                }
                lost(&inner, &status);
                let wait = jitter(delay);
                tracing::debug!(code = ?status.code(), message = status.message(), ?wait, "credvault watch stream lost; reconnecting");
                tokio::time::sleep(wait).await;
                delay = (delay * 2).min(inner.backoff.1);
            }
        }
    }
}

/// Runs one stream until it ends or a credential is added.
async fn run_stream(
    inner: &Inner,
    names: &[String],
    request: proto::WatchCredentialHeadersRequest,
) -> Ended {
    let mut vault = inner.vault.clone();
    let call = vault.watch_credential_headers(request);
    let response = tokio::select! {
        r = call => r,
        () = inner.changed.notified() => return Ended::Restart,
    };
    let mut stream = match response {
        Ok(r) => r.into_inner(),
        Err(status) => return Ended::Failed(status),
    };
    loop {
        let message = tokio::select! {
            m = stream.message() => m,
            () = inner.changed.notified() => return Ended::Restart,
        };
        match message {
            Ok(Some(m)) => apply(inner, names, m),
            Ok(None) => {
                return Ended::Failed(tonic::Status::unavailable(
                    "the vault ended the watch stream",
                ))
            }
            Err(status) => return Ended::Failed(status),
        }
    }
}

/// Takes one watch message into memory.
fn apply(inner: &Inner, names: &[String], m: proto::WatchCredentialHeadersResponse) {
    inner.stats.messages.fetch_add(1, Ordering::Relaxed);
    let Some(name) = names.get(m.index as usize) else {
        return;
    };
    let mut state = inner.lock();
    if m.synced {
        state.connected = true;
    }
    let gone = |e: Error| Entry::Gone(e);
    let next = match m.state() {
        proto::WatchState::Present if !m.headers.is_empty() => {
            match CredentialHeaders::new(
                m.credential_id,
                name.clone(),
                m.version,
                m.base_url,
                m.headers,
                m.last_verification,
            ) {
                Ok(h) => {
                    let h = h.at_revision(m.headers_revision);
                    inner.stats.updates.fetch_add(1, Ordering::Relaxed);
                    let mut held = Held::new(Arc::new(h), true);
                    held.account(m.paused_until, m.request_budget_per_minute);
                    // A rotation keeps the account: requests leased stay good.
                    if let Some(Entry::Held(old)) = state.entries.get(name) {
                        if old.headers.credential_id() == held.headers.credential_id() {
                            held.lease = old.lease;
                        }
                    }
                    Entry::Held(held)
                }
                Err(e) => {
                    tracing::warn!(credential = %name, error = %e, "credvault sent headers this client cannot use");
                    return;
                }
            }
        }
        proto::WatchState::Present => match state.entries.remove(name) {
            Some(Entry::Held(mut held))
                if held.headers.credential_id() == m.credential_id
                    && held.headers.version() == m.version
                    && held.headers.headers_revision() == m.headers_revision =>
            {
                if held.headers.verification() != m.last_verification.as_ref() {
                    held.headers = Arc::new(held.headers.with_verification(m.last_verification));
                }
                held.account(m.paused_until, m.request_budget_per_minute);
                held.live = true;
                held.suspended = false;
                held.good_at = Instant::now();
                Entry::Held(held)
            }
            // The vault thinks the client holds headers it does not: ask again.
            _ => {
                inner.publish(&state, name);
                drop(state);
                inner.changed.notify_one();
                return;
            }
        },
        proto::WatchState::NotFound => match state.entries.remove(name) {
            // A name whose credential was deleted is not found after a reconnection:
            // the deletion says more.
            Some(deleted @ Entry::Gone(Error::Deleted(_))) => deleted,
            _ => gone(Error::NotFound(m.message)),
        },
        proto::WatchState::Deleted => gone(Error::Deleted(m.message)),
        proto::WatchState::PermissionDenied => gone(Error::PermissionDenied(m.message)),
        proto::WatchState::Unavailable | proto::WatchState::Unspecified => {
            match state.entries.remove(name) {
                // Served as they are, within the staleness bound from now.
                Some(Entry::Held(mut held)) => {
                    if held.live {
                        held.good_at = Instant::now();
                    }
                    held.live = false;
                    Entry::Held(held)
                }
                Some(other) => other,
                None => gone(Error::Unavailable(m.message)),
            }
        }
    };
    state.entries.insert(name.clone(), next);
    inner.publish(&state, name);
}

/// The stream is gone: headers confirmed by it start aging (or, for a caller the
/// vault no longer knows or whose access narrowed, stop being served).
fn lost(inner: &Inner, status: &tonic::Status) {
    let mut state = inner.lock();
    state.connected = false;
    let now = Instant::now();
    for entry in state.entries.values_mut() {
        if let Entry::Held(held) = entry {
            match status.code() {
                tonic::Code::Unauthenticated => {
                    *entry = Entry::Gone(Error::Unauthenticated(status.message().to_owned()));
                }
                tonic::Code::PermissionDenied => {
                    held.suspended = true;
                    held.live = false;
                }
                _ => {
                    if held.live {
                        held.good_at = now;
                        held.live = false;
                    }
                }
            }
        }
    }
    inner.publish_all(&state);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_endpoint_form_and_the_ones_that_cannot_work() {
        for (given, uri, tls) in [
            ("vault:50051", "http://vault:50051", false),
            ("http://vault:50051", "http://vault:50051", false),
            ("http://vault:50051/", "http://vault:50051", false),
            (
                "https://vault.example:443",
                "https://vault.example:443",
                true,
            ),
            ("127.0.0.1:7", "http://127.0.0.1:7", false),
        ] {
            assert_eq!(
                endpoint_uri(given).unwrap(),
                (uri.to_owned(), tls),
                "{given}"
            );
        }
        for bad in [
            "unix:///run/credvault.sock",
            "ftp://vault:50051",
            "vault",
            "http://vault:port",
            "http://vault:1/x",
        ] {
            assert!(
                matches!(endpoint_uri(bad), Err(Error::InvalidArgument(_))),
                "{bad}"
            );
        }
    }
}

#[cfg(test)]
mod env_tests {
    use super::*;

    #[test]
    fn the_address_comes_from_the_environment_when_none_is_given() {
        // The only test of this crate that touches the environment.
        std::env::set_var(ADDR_ENV, "vault.example:50051");
        let builder = Client::from_env().unwrap();
        assert_eq!(builder.endpoint, "vault.example:50051");
        std::env::remove_var(ADDR_ENV);
        assert!(matches!(Client::from_env(), Err(Error::InvalidArgument(_))));
    }
}
