//! The change feed of watched credentials: the [`Hub`] knows which credentials
//! are watched (by id or by name) and hears of every change. The vault publishes
//! its own writes to it, a database store other replicas' writes (PostgreSQL
//! `LISTEN`), and a periodic resync covers a notification that was lost; the
//! watch streams ([`crate::watch`]) subscribe to it. It knows nothing of the
//! vault, the store or gRPC.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;

use crate::error::Error;
use crate::metrics;
use crate::record::CredentialRecord;

/// The limits and timing of watch streams.
#[derive(Clone, Debug)]
pub struct WatchSettings {
    /// Credentials one stream may watch.
    pub max_credentials: usize,
    /// Streams one caller may hold open on this server at once.
    pub max_streams_per_caller: usize,
    /// Credentials one caller may watch, summed over all its streams.
    pub max_keys_per_caller: usize,
    /// Credentials watched on this server, summed over every stream.
    pub max_keys: usize,
    /// How often every watched credential is read again, whatever was heard:
    /// the bound on how long a lost change notification leaves a watcher stale.
    pub resync_interval: Duration,
}

impl Default for WatchSettings {
    fn default() -> Self {
        WatchSettings {
            max_credentials: 1000,
            max_streams_per_caller: 1024,
            max_keys_per_caller: 10_000,
            max_keys: 100_000,
            resync_interval: Duration::from_secs(30),
        }
    }
}

/// Watched keys read again per turn of a resync (or of new watches' first reads),
/// between which changes to push go first.
const READ_CHUNK: usize = 128;

/// How soon a credential the store could not read is read again.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// What a watch names: a credential id, or a name that may come to name another.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Key {
    /// A credential id.
    Id(String),
    /// A credential name (which may come to name another credential).
    Name(String),
}

/// What the hub read of a watched credential.
#[derive(Clone)]
pub enum Seen {
    /// The credential as stored.
    Present(Arc<CredentialRecord>),
    /// Reading this id found nothing: the credential is gone (ids are never reused).
    Gone(String),
    /// No credential has the watched name.
    Absent,
    /// The caller may not watch it (a name outside its scope; offered by the stream itself).
    Denied,
}

/// A piece of work for the hub's reader.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Work {
    /// A write to this credential (id and name).
    Changed(String, String),
    /// Read a watched key again (a new watcher, a resync).
    Refresh(Key),
    /// A provider account's pause changed: offer every watched credential of it again.
    Account(crate::feedback::Account),
}

/// The offers waiting for one stream, one place per watched credential (the latest wins).
pub struct Inbox {
    /// The latest offer per watched credential (by the stream's slot for it).
    pub offers: Mutex<Vec<Option<Seen>>>,
    /// Wakes the stream when an offer arrives.
    pub notify: Notify,
}

impl Inbox {
    /// Puts `seen` in the stream's place `slot` (replacing an older offer) and wakes it.
    pub fn offer(&self, slot: usize, seen: &Seen) {
        if let Some(place) = self
            .offers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(slot)
        {
            *place = Some(seen.clone());
        }
        self.notify.notify_one();
    }

    /// Takes one waiting offer, the first at or after `cursor` (then moved past
    /// it), so that a busy credential cannot starve the others.
    pub fn take_one(&self, cursor: &mut usize) -> Option<(usize, Seen)> {
        let mut offers = self.offers.lock().unwrap_or_else(PoisonError::into_inner);
        let n = offers.len();
        for k in 0..n {
            let i = (*cursor + k) % n;
            if let Some(seen) = offers[i].take() {
                *cursor = (i + 1) % n;
                return Some((i, seen));
            }
        }
        None
    }
}

/// One stream's subscription to one key.
pub struct Subscriber {
    /// The stream's number.
    pub stream: u64,
    /// The key's place in the stream's inbox.
    pub slot: usize,
    /// Where the stream's offers go.
    pub inbox: Arc<Inbox>,
}

/// The hub's state, under its lock.
#[derive(Default)]
pub struct HubState {
    /// The streams watching each key.
    pub subscribers: HashMap<Key, Vec<Subscriber>>,
    /// The provider account of the credential each watched key last read as,
    /// so that a pause re-reads only the keys of its account.
    pub accounts: HashMap<Key, crate::feedback::Account>,
    /// Changes to push (writes, pauses): read before any other work.
    pub pending: HashSet<Work>,
    /// Keys of new watches to read for their first message, in chunks.
    pub fresh: std::collections::VecDeque<Key>,
    /// Keys of the resync under way, read in chunks after everything else.
    pub resync: std::collections::VecDeque<Key>,
    /// Streams and watched keys each caller holds.
    pub held: HashMap<String, Held>,
    /// The number the next stream gets.
    pub next_stream: u64,
    /// Streams open.
    pub streams: usize,
    /// Keys watched over every stream.
    pub keys: usize,
}

/// What one caller holds on this server.
#[derive(Clone, Copy, Debug, Default)]
pub struct Held {
    /// Streams open.
    pub streams: usize,
    /// Keys watched over them.
    pub keys: usize,
}

impl HubState {
    /// Gives memory back after a flood of watches closed (a map keeps its capacity).
    pub fn shrink(&mut self) {
        fn shrunk<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>) {
            if map.capacity() > 1024 && map.len() * 4 < map.capacity() {
                map.shrink_to_fit();
            }
        }
        shrunk(&mut self.subscribers);
        shrunk(&mut self.accounts);
        shrunk(&mut self.held);
        if self.pending.capacity() > 1024 && self.pending.len() * 4 < self.pending.capacity() {
            self.pending.shrink_to_fit();
        }
        for queue in [&mut self.fresh, &mut self.resync] {
            if queue.capacity() > 1024 && queue.len() * 4 < queue.capacity() {
                queue.shrink_to_fit();
            }
        }
    }
}

/// Who watches what, and the changes not yet read.
#[derive(Default)]
pub struct Hub {
    /// Who watches what, and the work pending.
    pub state: Mutex<HubState>,
    /// Wakes the reader when work arrives.
    pub wake: Notify,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("Hub")
            .field("streams", &state.streams)
            .field("keys", &state.subscribers.len())
            .field("pending", &state.pending.len())
            .finish()
    }
}

/// A stream's place in the hub; dropping it unsubscribes and frees the caller's slot.
pub struct Subscription {
    /// The hub subscribed to.
    pub hub: Arc<Hub>,
    /// The stream's number.
    pub stream: u64,
    /// The keys it watches.
    pub keys: Vec<Key>,
    /// The caller holding it.
    pub caller: String,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut state = self.hub.lock();
        for key in &self.keys {
            if let Some(subs) = state.subscribers.get_mut(key) {
                subs.retain(|s| s.stream != self.stream);
                if subs.is_empty() {
                    state.subscribers.remove(key);
                    state.accounts.remove(key);
                }
            }
        }
        if let Some(held) = state.held.get_mut(&self.caller) {
            held.streams -= 1;
            held.keys -= self.keys.len();
            if held.streams == 0 {
                state.held.remove(&self.caller);
            }
        }
        state.streams -= 1;
        state.keys -= self.keys.len();
        metrics::watch_streams(state.streams);
        metrics::watch_keys(state.keys);
        state.shrink();
    }
}

impl Hub {
    /// The hub's state, locked (a poisoned lock is taken over, not propagated).
    pub fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Tells the hub a credential was written (created, changed or deleted).
    /// Costs a map lookup when nobody watches it.
    pub fn changed(&self, id: &str, name: &str) {
        let mut state = self.lock();
        let watched = state.subscribers.contains_key(&Key::Id(id.to_owned()))
            || state.subscribers.contains_key(&Key::Name(name.to_owned()));
        if watched
            && state
                .pending
                .insert(Work::Changed(id.to_owned(), name.to_owned()))
        {
            drop(state);
            self.wake.notify_one();
        }
    }

    /// Tells the hub a provider account's pause changed: every watched
    /// credential of that account is offered again, with the pause.
    pub fn account_changed(&self, account: crate::feedback::Account) {
        let mut state = self.lock();
        if !state.subscribers.is_empty() && state.pending.insert(Work::Account(account)) {
            drop(state);
            self.wake.notify_one();
        }
    }

    /// The watched keys whose credential speaks for `account`.
    pub fn keys_of(&self, account: &crate::feedback::Account) -> Vec<Key> {
        let state = self.lock();
        state
            .accounts
            .iter()
            .filter(|(_, a)| *a == account)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Notes the account `key`'s credential speaks for now (`None`: no credential).
    pub fn note_account(&self, key: &Key, account: Option<crate::feedback::Account>) {
        let mut state = self.lock();
        match account {
            Some(a) if state.subscribers.contains_key(key) => {
                state.accounts.insert(key.clone(), a);
            }
            _ => {
                state.accounts.remove(key);
            }
        }
    }

    /// Reads every watched credential again (a lost notification is caught here),
    /// in chunks behind every change to push; a resync still under way goes on.
    pub fn resync(&self) {
        if self.lock().resync.is_empty() {
            self.reread_all();
        }
    }

    /// Reads every watched credential again from the start, even while a resync
    /// is under way (after a providers reload: what was read before it is stale).
    pub fn reread_all(&self) {
        let mut state = self.lock();
        let keys: Vec<Key> = state.subscribers.keys().cloned().collect();
        state.resync.clear();
        state.resync.extend(keys);
        drop(state);
        self.wake.notify_one();
    }

    /// Streams open now.
    pub fn streams(&self) -> usize {
        self.lock().streams
    }

    /// Registers a stream's keys (and asks for their current state), within the
    /// caller's stream limit.
    pub fn subscribe(
        self: &Arc<Self>,
        caller: &str,
        keys: &[Option<Key>],
        inbox: &Arc<Inbox>,
        settings: &WatchSettings,
    ) -> Result<Subscription, Error> {
        let mut state = self.lock();
        let held = state.held.get(caller).copied().unwrap_or_default();
        let wanted = keys.iter().flatten().count();
        if held.streams >= settings.max_streams_per_caller {
            return Err(Error::ResourceExhausted(format!(
                "caller {caller:?} holds {} watch streams on this server, the most allowed (--watch-max-streams-per-caller); close one, or watch more credentials per stream",
                held.streams
            )));
        }
        if held.keys + wanted > settings.max_keys_per_caller {
            return Err(Error::ResourceExhausted(format!(
                "caller {caller:?} watches {} credentials over its streams on this server; {wanted} more would pass the most allowed, {} (--watch-max-keys-per-caller): close streams it no longer reads",
                held.keys, settings.max_keys_per_caller
            )));
        }
        if state.keys + wanted > settings.max_keys {
            return Err(Error::ResourceExhausted(format!(
                "this server watches {} credentials over all streams; {wanted} more would pass the most allowed, {} (--watch-max-keys): try another replica",
                state.keys, settings.max_keys
            )));
        }
        let entry = state.held.entry(caller.to_owned()).or_default();
        entry.streams += 1;
        entry.keys += wanted;
        state.next_stream += 1;
        state.streams += 1;
        state.keys += wanted;
        metrics::watch_streams(state.streams);
        metrics::watch_keys(state.keys);
        let stream = state.next_stream;
        let mut subscribed = Vec::new();
        for (slot, key) in keys.iter().enumerate() {
            let Some(key) = key else { continue };
            state
                .subscribers
                .entry(key.clone())
                .or_default()
                .push(Subscriber {
                    stream,
                    slot,
                    inbox: Arc::clone(inbox),
                });
            state.fresh.push_back(key.clone());
            subscribed.push(key.clone());
        }
        drop(state);
        self.wake.notify_one();
        Ok(Subscription {
            hub: Arc::clone(self),
            stream,
            keys: subscribed,
            caller: caller.to_owned(),
        })
    }

    /// Offers what was read of `key` to everyone watching it.
    pub fn deliver(&self, key: &Key, seen: &Seen) {
        let state = self.lock();
        if let Some(subs) = state.subscribers.get(key) {
            for s in subs {
                s.inbox.offer(s.slot, seen);
            }
        }
    }

    /// The next work: every change to push first; else a chunk of new watches'
    /// first reads; else a chunk of the resync under way.
    pub fn take_pending(&self) -> Vec<Work> {
        let mut state = self.lock();
        if !state.pending.is_empty() {
            return state.pending.drain().collect();
        }
        let queue = if state.fresh.is_empty() {
            &mut state.resync
        } else {
            &mut state.fresh
        };
        let n = queue.len().min(READ_CHUNK);
        let chunk: Vec<Work> = queue.drain(..n).map(Work::Refresh).collect();
        if chunk.len() == n && queue.is_empty() {
            state.shrink();
        }
        chunk
    }

    /// Puts work the reader could not finish back in the queue and wakes it.
    pub fn requeue(&self, work: Vec<Work>) {
        self.lock().pending.extend(work);
        self.wake.notify_one();
    }
}
