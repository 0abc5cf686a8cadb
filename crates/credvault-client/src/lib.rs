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
//! The parts: [`Client`] and its cache here, its [`ClientBuilder`] (`builder`),
//! the watch stream that keeps the cache current (`stream`), [`CredentialHeaders`]
//! (the answer, which writes itself into an `http::HeaderMap`), [`Error`], the
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

mod builder;
mod stream;

pub use builder::*;
use stream::*;

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
