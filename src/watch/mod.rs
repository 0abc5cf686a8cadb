//! Watch streams: workers hold their headers in memory and the vault pushes every
//! change to them (`WatchCredentialHeaders`).
//!
//! The change feed ([`crate::feed::Hub`]) knows which credentials are watched and
//! hears of every change. One task here ([`run_hub`]) reads each changed
//! credential once, in the order changes come, and offers what it read to every
//! stream watching it, so a thousand watchers of one credential cost one store read.
//!
//! Each stream ([`open`]) keeps, per watched credential, only the latest offer,
//! and is pulled by the transport: it renders an offer into a message only when
//! HTTP/2 flow control lets one go out, so a reader slower than the changes gets
//! the newest state, never a backlog, and costs no buffer. Headers go only when
//! the client does not hold that version's yet, each delivery of headers audited as a secret read and
//! noted as a last use. It re-checks its caller whenever the callers file is
//! reloaded, and ends at shutdown.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{watch, Notify};
use tonic::Status;

use crate::api;
use crate::audit::{AuditEntry, AuditLog};
use crate::auth::{Caller, CallerRegistry, Identity, Permission};
use crate::convert;
use crate::error::Error;
use crate::metrics;
use crate::record::CredentialRecord;
use crate::store::Store;
use crate::vault::Vault;

pub use crate::feed::{Hub, Key, WatchSettings};
use crate::feed::{Inbox, Seen, Subscription, Work, RETRY_AFTER_FAILURE};

mod reader;
mod render;

pub use reader::*;
use render::*;

/// The method name watch deliveries are audited under.
pub const METHOD: &str = "WatchCredentialHeaders";

/// Offers what was read for `keys` and notes the account it speaks for.
fn offer<S: Store>(vault: &Vault<S>, hub: &Hub, keys: &[Key], seen: &Seen) {
    let account = match seen {
        Seen::Present(record) => vault.open(record).ok().map(|s| vault.account_of(&s)),
        Seen::Gone(_) | Seen::Absent | Seen::Denied => None,
    };
    for key in keys {
        hub.note_account(key, account);
        hub.deliver(key, seen);
    }
}

/// What a stream needs besides the vault: the audit trail, the callers (to
/// re-check its own on reload), its limits and the shutdown signal.
#[derive(Clone)]
pub struct WatchContext {
    /// Where deliveries of headers are audited.
    pub audit: Arc<AuditLog>,
    /// The callers, to re-check the stream's caller on reload.
    pub callers: Arc<CallerRegistry>,
    /// The streams' limits.
    pub settings: WatchSettings,
    /// Turns true when shutdown begins: streams end with UNAVAILABLE.
    pub stopping: watch::Receiver<bool>,
}

/// The stream of a `WatchCredentialHeaders` call.
pub type WatchStream = std::pin::Pin<
    Box<
        dyn futures_util::Stream<Item = Result<api::WatchCredentialHeadersResponse, Status>> + Send,
    >,
>;

/// The caller of a watch, as authenticated at its start.
pub struct Watcher {
    /// The stream's caller.
    pub caller: Arc<Caller>,
    /// How it authenticated.
    pub identity: Identity,
    /// Its address, when known.
    pub peer: Option<SocketAddr>,
}

/// Starts a watch of `request`'s credentials for `watcher`: validates the
/// request, takes a place under the caller's stream limit and spawns the stream.
pub fn open<S: Store>(
    vault: &Arc<Vault<S>>,
    ctx: &WatchContext,
    watcher: Watcher,
    request: api::WatchCredentialHeadersRequest,
) -> Result<WatchStream, Error> {
    if *ctx.stopping.borrow() {
        return Err(Error::Unavailable(
            "the server is shutting down; reconnect to another replica".into(),
        ));
    }
    let max = ctx.settings.max_credentials;
    if request.credentials.is_empty() {
        return Err(Error::invalid(
            "credentials is empty: name at least one credential to watch",
        ));
    }
    if request.credentials.len() > max {
        return Err(Error::invalid(format!(
            "a stream may watch at most {max} credentials (--watch-max-credentials), not {}",
            request.credentials.len()
        )));
    }
    let mut slots = Vec::with_capacity(request.credentials.len());
    let mut seen_keys = HashSet::new();
    for (i, w) in request.credentials.into_iter().enumerate() {
        let key = match w.r#ref {
            Some(api::watched_credential::Ref::Id(id)) => {
                crate::validate::id(&id)
                    .map_err(|e| Error::invalid(format!("credentials[{i}]: {e}")))?;
                Key::Id(id)
            }
            Some(api::watched_credential::Ref::Name(name)) => {
                crate::validate::name(&name)
                    .map_err(|e| Error::invalid(format!("credentials[{i}]: {e}")))?;
                Key::Name(name)
            }
            None => return Err(Error::invalid(format!("credentials[{i}]: set id or name"))),
        };
        if !seen_keys.insert(key.clone()) {
            return Err(Error::invalid(format!(
                "credentials[{i}] repeats a credential watched before it"
            )));
        }
        let rev = w.known_headers_revision;
        let held = match (&key, w.known_version) {
            (_, 0) => None,
            (Key::Id(id), v) => Some((id.clone(), v, rev)),
            (Key::Name(_), v) if !w.known_credential_id.is_empty() => {
                crate::validate::id(&w.known_credential_id).map_err(|e| {
                    Error::invalid(format!("credentials[{i}].known_credential_id: {e}"))
                })?;
                Some((w.known_credential_id, v, rev))
            }
            (Key::Name(_), _) => {
                return Err(Error::invalid(format!(
                    "credentials[{i}]: known_version with a name needs known_credential_id"
                )))
            }
        };
        slots.push(Slot::new(key, held));
    }
    // A name outside a scoped caller's scope is refused without looking it up.
    for slot in &mut slots {
        if let Key::Name(name) = &slot.key {
            if !watcher.caller.in_scope(name) {
                slot.denied = true;
            }
        }
    }
    let inbox = Arc::new(Inbox {
        offers: Mutex::new(vec![None; slots.len()]),
        notify: Notify::new(),
    });
    let keys: Vec<Option<Key>> = slots
        .iter()
        .map(|s| (!s.denied).then(|| s.key.clone()))
        .collect();
    let subscription = vault
        .hub()
        .subscribe(&watcher.caller.name, &keys, &inbox, &ctx.settings)?;
    // Slots refused for scope are reported like any other state.
    for (i, slot) in slots.iter().enumerate() {
        if slot.denied {
            inbox.offer(i, &Seen::Denied);
        }
    }
    let mut reloads = ctx.callers.reloads();
    reloads.mark_unchanged();
    let stream = Stream {
        vault: Arc::clone(vault),
        audit: Arc::clone(&ctx.audit),
        callers: Arc::clone(&ctx.callers),
        reloads,
        stopping: ctx.stopping.clone(),
        watcher,
        slots,
        inbox,
        cursor: 0,
        ended: None,
        _subscription: subscription,
    };
    // Pulled by the transport: a message is rendered only when it can be sent.
    Ok(Box::pin(futures_util::stream::unfold(
        Some(stream),
        |stream| async move {
            let mut stream = stream?;
            match stream.next().await {
                Ok(message) => Some((Ok(message), Some(stream))),
                Err(e) => Some((Err(stream.end(e)), None)),
            }
        },
    )))
}

/// What was last reported of a slot, so that nothing is said twice.
#[derive(Clone, Debug, PartialEq)]
enum Reported {
    Present {
        id: String,
        version: u64,
        /// The headers revision (see `Catalog::headers_revision`).
        revision: u64,
        verification: Option<(i32, i32, String)>,
        paused_until_ms: Option<i64>,
        budget: u32,
    },
    NotFound,
    Deleted(String),
    Denied,
    Unavailable {
        id: String,
        revision: u64,
        headers_revision: u64,
    },
}

/// One watched credential within a stream.
struct Slot {
    key: Key,
    /// Refused for the caller's scope: reported once, never looked at.
    denied: bool,
    /// The credential id and version whose headers the client holds.
    /// (credential id, version, headers revision) of the headers the client holds.
    held: Option<(String, u64, u64)>,
    /// The credential the slot follows now, and its name.
    current: Option<(String, String)>,
    reported: Option<Reported>,
    /// A watched id whose credential was deleted: nothing more to say.
    ended: bool,
}

impl Slot {
    fn new(key: Key, held: Option<(String, u64, u64)>) -> Self {
        Slot {
            key,
            denied: false,
            held,
            current: None,
            reported: None,
            ended: false,
        }
    }
}

/// One watch stream: what it watches, what it has told, and its signals.
struct Stream<S: Store> {
    vault: Arc<Vault<S>>,
    audit: Arc<AuditLog>,
    callers: Arc<CallerRegistry>,
    /// Changes with every callers reload.
    reloads: watch::Receiver<u64>,
    /// Turns true when shutdown begins.
    stopping: watch::Receiver<bool>,
    watcher: Watcher,
    slots: Vec<Slot>,
    inbox: Arc<Inbox>,
    /// Where the next offer is looked for (so no credential starves the others).
    cursor: usize,
    /// Why the server ended the stream, once it did.
    ended: Option<&'static str>,
    _subscription: Subscription,
}

impl<S: Store> Drop for Stream<S> {
    fn drop(&mut self) {
        metrics::watch_ended(self.ended.unwrap_or("client"));
        if self.ended.is_none() {
            tracing::debug!(caller = %self.watcher.caller.name, "watch stream closed by the client");
        }
    }
}

/// What woke a waiting stream.
enum Woken {
    Offer,
    Reload,
    Stopping,
}

impl<S: Store> Stream<S> {
    /// The status the stream ends with, logged.
    fn end(&mut self, e: Error) -> Status {
        self.ended = Some(match convert::code(&e) {
            tonic::Code::Unavailable => "unavailable",
            tonic::Code::Unauthenticated => "unauthenticated",
            tonic::Code::PermissionDenied => "permission_denied",
            _ => "error",
        });
        tracing::info!(caller = %self.watcher.caller.name, error = %e, "watch stream ended by the server");
        convert::status(e)
    }

    /// The next message: the newest state of the next credential with news,
    /// waiting for one; an error ends the stream.
    async fn next(&mut self) -> Result<api::WatchCredentialHeadersResponse, Error> {
        loop {
            if *self.stopping.borrow() {
                return Err(stopped());
            }
            let inbox = Arc::clone(&self.inbox);
            let wake = inbox.notify.notified();
            if let Some((slot, seen)) = inbox.take_one(&mut self.cursor) {
                if let Some((message, reported)) = self.render(slot, seen).await? {
                    return Ok(self.mark(message, reported));
                }
                continue;
            }
            let woken = tokio::select! {
                () = wake => Woken::Offer,
                r = self.reloads.changed() => if r.is_ok() { Woken::Reload } else { Woken::Offer },
                r = self.stopping.changed() => if r.is_ok() { Woken::Stopping } else { return Err(stopped()) },
            };
            match woken {
                Woken::Reload => self.recheck_caller()?,
                Woken::Offer | Woken::Stopping => {}
            }
        }
    }

    /// Notes what a message reports of its slot, and marks the message that
    /// completes the first report of every slot with `synced`.
    fn mark(
        &mut self,
        mut message: api::WatchCredentialHeadersResponse,
        reported: Reported,
    ) -> api::WatchCredentialHeadersResponse {
        let slot = message.index as usize;
        let was_unreported = self.slots[slot].reported.is_none();
        self.slots[slot].reported = Some(reported);
        if was_unreported && self.slots.iter().all(|s| s.reported.is_some()) {
            message.synced = true;
        }
        metrics::watch_message(state_name(message.state()));
        message
    }

    /// After a callers reload: the caller must still be known, hold
    /// `headers.read`, and have in scope every credential it follows.
    fn recheck_caller(&mut self) -> Result<(), Error> {
        let callers = self.callers.current();
        let Some(caller) = callers.reidentify(&self.watcher.identity) else {
            return Err(Error::Unauthenticated(
                "the caller was removed from the callers file; its watch streams end",
            ));
        };
        caller.require(Permission::HeadersRead)?;
        for slot in &self.slots {
            let name = match (&slot.key, &slot.current) {
                (Key::Name(name), _) => Some(name),
                (Key::Id(_), Some((_, name))) => Some(name),
                (Key::Id(_), None) => None,
            };
            if let Some(name) = name {
                if !slot.denied && !caller.in_scope(name) {
                    return Err(Error::PermissionDenied(format!(
                        "caller {:?} may no longer read credential {name:?}; its watch stream ends",
                        caller.name
                    )));
                }
            }
        }
        self.watcher.caller = caller;
        Ok(())
    }
}

/// Why a stream ends at shutdown.
fn stopped() -> Error {
    Error::Unavailable(
        "the server is shutting down; reconnect (to another replica) and resume".into(),
    )
}

/// A message to send and what it reports of its slot; `None`: nothing new.
type Rendered = Option<(api::WatchCredentialHeadersResponse, Reported)>;
