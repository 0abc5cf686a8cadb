//! Storage of credential records behind a narrow, engine-neutral trait.
//!
//! The store deals in [`CredentialRecord`]s whose secrets are already sealed: it
//! never sees a plaintext secret, and it knows nothing of gRPC. Every write is
//! durable when its future resolves.
//!
//! Besides the records it keeps their *erasable keys* (one per sealed version, see
//! [`crate::record`]) where they can really be erased: sled has no way to drop a
//! value from its log, so there each credential's keys are a small file rewritten
//! whole (PostgreSQL: a table). Reads attach them to the record; records never hold
//! them. Deleted records are kept apart, whole, until they are purged.

use std::future::Future;
use std::sync::Arc;

use crate::record::{CredentialRecord, Usage};

mod erasable;
mod open;
mod postgres;
mod sled;

pub use self::open::{open, AnyStore, PostgresSettings, StoreConfig};
pub use self::postgres::{PgSettings, PgStore};
pub use self::sled::SledStore;

/// Metadata prefix of seal reservations in snapshots (`seals/<key id>`, u64 big-endian).
pub const SEALS_META_PREFIX: &str = "seals/";

/// Where sled keeps the pauses of provider accounts: `pauses/<account hex>` to the
/// end in ms since the epoch (8 bytes, big-endian).
pub const PAUSES_META_PREFIX: &str = "pauses/";

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another record holds that name.
    #[error("name {0:?} is taken")]
    NameTaken(String),
    /// No record has that id.
    #[error("record {0} not found")]
    NotFound(String),
    /// A caller's expected version is not the stored one.
    #[error("record {id} is at version {actual}, expected {expected}")]
    VersionMismatch {
        /// The credential.
        id: String,
        /// The version the write expected.
        expected: u64,
        /// The version stored.
        actual: u64,
    },
    /// A check-and-set saw another revision: the record was written meanwhile.
    #[error("record {0} was written concurrently")]
    Conflict(String),
    /// A restore target already holds data.
    #[error("the store is not empty")]
    NotEmpty,
    /// Stored bytes could not be decoded.
    /// A stored record that cannot be read.
    #[error("record {id} is corrupt: {reason}")]
    Corrupt {
        /// Its id.
        id: String,
        /// Why.
        reason: String,
    },
    /// The engine failed (I/O, disk full, read-only).
    #[error("{0}")]
    Io(String),
    /// A database store cannot reach its server (down, restarting, network, TLS).
    #[error("{0}")]
    Unreachable(String),
    /// Another process has the embedded store open (a running server).
    #[error("the store {0} is in use by another process")]
    Locked(String),
    /// The database refused a value of this write or query (SQLSTATE classes 22
    /// and 54: a bad value, a value too large): that value's fault, not the database's.
    #[error("the database refused a value: {0}")]
    Rejected(String),
}

/// What became of one item of a batch written by [`write_isolating`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Written {
    /// Committed.
    Yes,
    /// The database refused this item's own values; it was set aside, the rest written.
    SetAside(String),
    /// Not written: the database failed (an outage), not the item.
    No,
}

/// Writes `items` with `write` (one call per group, all or nothing), isolating
/// values the database refuses: a group refused for a value ([`StoreError::Rejected`])
/// is split in halves and each written again, down to the one item at fault, which
/// is set aside. One bad value costs its own item only. Any other error stops the
/// batch: what was not committed is `No`, and the error is returned beside.
pub async fn write_isolating<T, F, Fut>(
    items: &[T],
    mut write: F,
) -> (Vec<Written>, Option<StoreError>)
where
    T: Clone,
    F: FnMut(Vec<T>) -> Fut,
    Fut: Future<Output = Result<(), StoreError>>,
{
    let mut out = vec![Written::No; items.len()];
    // Ranges still to write, the next one last (so the batch keeps its order).
    let mut todo = vec![(0, items.len())];
    while let Some((lo, hi)) = todo.pop() {
        if lo == hi {
            continue;
        }
        match write(items[lo..hi].to_vec()).await {
            Ok(()) => out[lo..hi].fill(Written::Yes),
            Err(StoreError::Rejected(why)) if hi - lo == 1 => out[lo] = Written::SetAside(why),
            Err(StoreError::Rejected(_)) => {
                let mid = lo + (hi - lo) / 2;
                todo.push((mid, hi));
                todo.push((lo, mid));
            }
            Err(e) => return (out, Some(e)),
        }
    }
    (out, None)
}

/// One audit event as a database stores it: its JSON line and the fields listings filter on.
#[derive(Clone, Debug)]
pub struct AuditRow {
    /// When the call was answered.
    pub time: std::time::SystemTime,
    /// The caller's name.
    pub caller: String,
    /// The credential's id.
    pub credential_id: String,
    /// The credential's name.
    pub credential_name: String,
    /// The event's JSON line with its chain fields (see [`crate::trail`]).
    pub line: String,
    /// The writer's chain and the line's place in it.
    pub chain: String,
    /// Its place in its chain.
    pub chain_seq: i64,
    /// A line of the chain's own (a digest or marks), not an event: listings skip it.
    pub proof: bool,
}

/// What a listing of the database's audit trail asks for (empty: any).
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    /// Only events of this credential id.
    pub credential_id: Option<String>,
    /// Only events of this credential name.
    pub credential_name: Option<String>,
    /// Only events of this caller.
    pub caller: Option<String>,
    /// Only events at or after this time.
    pub start: Option<std::time::SystemTime>,
    /// Only events before this time.
    pub end: Option<std::time::SystemTime>,
    /// Also the chain's own lines (digests, marks): for `credvault audit verify`.
    pub proofs: bool,
}

/// A boxed future, for the object-safe [`AuditTable`].
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An audit trail kept by the database that every replica shares.
pub trait AuditTable: Send + Sync + 'static {
    /// Appends rows in one transaction; they are committed when it resolves.
    fn append_audit(&self, rows: Vec<AuditRow>) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Up to `limit` lines matching `filter` after sequence number `after`, oldest
    /// first, each with its sequence number.
    fn list_audit(
        &self,
        filter: AuditFilter,
        after: i64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<(i64, String)>, StoreError>>;

    /// Deletes the events from before `before`; how many went.
    fn prune_audit(&self, before: std::time::SystemTime) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// Whether a row could be appended now, leaving nothing behind (a row inserted
    /// and rolled back): how a trail that failed learns it is writable again
    /// when it has no row of its own left to write.
    fn probe_audit(&self) -> BoxFuture<'_, Result<(), StoreError>>;
}

/// One row of a listing: the record's key and the record, or why it could not be read.
pub type ListItem = (String, Result<CredentialRecord, StoreError>);

/// Raw (key, value) entries of one part of the store.
pub type Entries = Vec<(String, Vec<u8>)>;

/// Every stored byte at one point in time, still encrypted: for backups.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Record id to encoded record.
    pub records: Entries,
    /// Metadata (key checks, seal counts).
    pub meta: Entries,
    /// Credential id to its encoded last use.
    pub usage: Entries,
    /// Deleted record id to encoded record (recoverable until purged).
    pub deleted: Entries,
    /// `<credential id>/<seal id>` to its erasable key (32 bytes).
    pub erasable: Entries,
}

/// The key of an erasable key in a [`Snapshot`].
pub fn erasable_entry_key(id: &str, seal_id: u64) -> String {
    format!("{id}/{seal_id}")
}

/// The credential id and seal id an erasable entry's key names.
pub fn parse_erasable_entry_key(key: &str) -> Option<(&str, u64)> {
    let (id, seal) = key.rsplit_once('/')?;
    Some((id, seal.parse().ok()?))
}

/// What a store calls on a record it changes itself (marking it deleted or
/// undeleted: a new revision) before writing it: the vault authenticates it again.
pub type Stamp = std::sync::Arc<dyn Fn(&mut CredentialRecord) + Send + Sync>;

/// How a deleted record is kept: when it was deleted, by whom, and when it is purged.
#[derive(Clone, Debug)]
pub struct Deletion {
    /// When it was deleted.
    pub delete_time: prost_types::Timestamp,
    /// When it is purged for good.
    pub purge_time: prost_types::Timestamp,
    /// The caller that deleted it.
    pub deleted_by: String,
}

/// A write to the store that a watcher may care about, as a shared store hears of it.
#[derive(Clone, Copy, Debug)]
pub enum StoreChange<'a> {
    /// A record was created, changed or deleted (by any server).
    Record {
        /// The credential's id.
        id: &'a str,
        /// Its name.
        name: &'a str,
    },
    /// Changes may have been missed (the listening connection was re-made): read
    /// every watched record again.
    Resync,
    /// A provider account was paused (by any server) until `until_ms`.
    Pause {
        /// The account's fingerprint.
        account: [u8; 32],
        /// The pause's end (Unix milliseconds).
        until_ms: i64,
    },
}

/// Where a store reports the changes it hears of.
pub type ChangeSink = Arc<dyn Fn(StoreChange<'_>) + Send + Sync>;

/// A credential store. Ids order records by creation time.
pub trait Store: Send + Sync + 'static {
    /// Metadata entries whose keys start with `prefix` (key checks, seal counts).
    fn meta(&self, prefix: &str) -> impl Future<Output = Result<Entries, StoreError>> + Send;

    /// Sets a metadata entry, durably.
    fn put_meta(
        &self,
        key: &str,
        value: &[u8],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Removes a metadata entry, durably.
    fn remove_meta(&self, key: &str) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The record with this id, if any.
    fn get(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<CredentialRecord>, StoreError>> + Send;

    /// The record with this id, if any, for reading only: a store that caches
    /// records hands out its copy instead of a clone (the hot path's read).
    fn get_shared(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<Arc<CredentialRecord>>, StoreError>> + Send {
        async move { Ok(self.get(id).await?.map(Arc::new)) }
    }

    /// The id of the record with this name, if any.
    fn id_for_name(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;

    /// Up to `limit` records in id order, starting after `after`.
    fn list(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<ListItem>, StoreError>> + Send;

    /// How many records there are.
    fn count(&self) -> impl Future<Output = Result<usize, StoreError>> + Send;

    /// Stores a new record; fails with [`StoreError::NameTaken`] if its name is used.
    fn insert(
        &self,
        record: &CredentialRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Replaces a record (same id and name) if the stored one is at `expected_revision`;
    /// fails with [`StoreError::Conflict`] otherwise.
    fn replace(
        &self,
        record: &CredentialRecord,
        expected_revision: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Deletes a record for good with its erasable keys, if it is at
    /// `expected_version` when one is given.
    fn delete(
        &self,
        id: &str,
        expected_version: Option<u64>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Deletes a record from the live ones (its name is free at once), keeping it
    /// and its erasable keys among the deleted as `deletion` says; the record as kept.
    fn delete_keeping(
        &self,
        id: &str,
        expected_version: Option<u64>,
        deletion: &Deletion,
        stamp: &Stamp,
    ) -> impl Future<Output = Result<CredentialRecord, StoreError>> + Send;

    /// The deleted record with this id, if any.
    fn deleted(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<CredentialRecord>, StoreError>> + Send;

    /// Up to `limit` deleted records in id order, starting after `after`.
    fn list_deleted(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<ListItem>, StoreError>> + Send;

    /// Brings a deleted record back among the live ones: [`StoreError::NameTaken`]
    /// when another record holds its name now.
    fn undelete(
        &self,
        id: &str,
        stamp: &Stamp,
    ) -> impl Future<Output = Result<CredentialRecord, StoreError>> + Send;

    /// Replaces a deleted record (a rewrap) if it is at `expected_revision`.
    fn replace_deleted(
        &self,
        record: &CredentialRecord,
        expected_revision: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Removes a deleted record for good, with its erasable keys.
    fn purge(&self, id: &str) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Keeps the erasable key of seal `seal_id` of credential `id`, durably.
    fn put_erasable(
        &self,
        id: &str,
        seal_id: u64,
        key: &[u8; 32],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Erases the erasable keys of `seal_ids` of credential `id`: gone from
    /// disk (sled) or from the database when it resolves.
    fn erase(
        &self,
        id: &str,
        seal_ids: &[u64],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// When the credential's secret was last read, and by whom.
    fn usage(&self, id: &str) -> impl Future<Output = Result<Option<Usage>, StoreError>> + Send;

    /// The last uses of several credentials (those with none are left out); a
    /// database store asks once for all of them.
    fn usages(
        &self,
        ids: &[String],
    ) -> impl Future<Output = Result<std::collections::HashMap<String, Usage>, StoreError>> + Send
    {
        async move {
            let mut out = std::collections::HashMap::new();
            for id in ids {
                if let Some(u) = self.usage(id).await? {
                    out.insert(id.clone(), u);
                }
            }
            Ok(out)
        }
    }

    /// Records last uses in one batch (ids no longer stored are skipped).
    fn record_usage(
        &self,
        batch: &[(String, Usage)],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Atomically adds `count` to the seals reserved for master key `key_id`; returns the new total.
    fn reserve_seals(
        &self,
        key_id: &str,
        count: u64,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// The seals reserved so far, per master key id.
    fn seal_reservations(
        &self,
    ) -> impl Future<Output = Result<Vec<(String, u64)>, StoreError>> + Send;

    /// Every stored byte at one instant: writes wait while it is taken.
    fn snapshot(&self) -> impl Future<Output = Result<Snapshot, StoreError>> + Send;

    /// Loads a snapshot into this store, which must be empty; durable when it resolves.
    fn restore(&self, snapshot: &Snapshot) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Makes every acknowledged write durable (called at shutdown).
    fn flush(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The I/O error that stopped writes, if one did (reads may go on).
    fn write_error(&self) -> Option<String>;

    /// Erases the erasable keys, made more than `grace` ago, that no record (live
    /// or deleted) refers to: a crash can leave some between a record's write and
    /// the erasure of the keys it dropped. How many went. sled sweeps at open.
    fn sweep_erasable(
        &self,
        grace: std::time::Duration,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send {
        let _ = grace;
        async { Ok(0) }
    }

    /// Whether the store answers now (a database store asks its server).
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send {
        async { Ok(()) }
    }

    /// Whether the store can take writes now: a database store commits a small
    /// write (`instance` names the row of this server); sled says whether a write
    /// failed (its I/O errors stick until a restart).
    fn probe_write(&self, instance: &str) -> impl Future<Output = Result<(), StoreError>> + Send {
        let _ = instance;
        let error = self.write_error();
        async move { error.map_or(Ok(()), |e| Err(StoreError::Io(e))) }
    }

    /// The audit trail this store keeps for every replica, if it keeps one (PostgreSQL).
    fn audit_table(self: &Arc<Self>) -> Option<Arc<dyn AuditTable>> {
        None
    }

    /// For a store other servers write too (PostgreSQL): starts a task that tells
    /// `sink` of every write by any of them, until `stop` turns true. A store only
    /// this process writes (sled) has nothing to tell: `None`.
    fn listen_changes(
        self: &Arc<Self>,
        sink: ChangeSink,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let _ = (sink, stop);
        None
    }

    /// Keeps a pause of a provider account durably (and, for a store shared by
    /// replicas, for all of them): records that `account` is paused until
    /// `until_ms` (the later end wins), tells the other replicas, and returns the
    /// end in force. `None`: this store keeps none (memory alone holds it).
    fn put_pause(
        &self,
        account: &[u8; 32],
        until_ms: i64,
    ) -> impl Future<Output = Result<Option<i64>, StoreError>> + Send {
        let _ = (account, until_ms);
        async { Ok(None) }
    }

    /// The pauses in force after `now_ms` that the store holds (ended ones are dropped).
    fn pauses(
        &self,
        now_ms: i64,
    ) -> impl Future<Output = Result<Vec<([u8; 32], i64)>, StoreError>> + Send {
        let _ = now_ms;
        async { Ok(Vec::new()) }
    }

    /// Takes up to `want` of the `limit` requests `account` may make in the
    /// budget window starting at `window_start_ms`, for every replica at once:
    /// how many it got. `None`: this store keeps no budgets (count in memory).
    fn take_budget(
        &self,
        account: &[u8; 32],
        window_start_ms: i64,
        want: u32,
        limit: u32,
    ) -> impl Future<Output = Result<Option<u32>, StoreError>> + Send {
        let _ = (account, window_start_ms, want, limit);
        async { Ok(None) }
    }

    /// Whether only a restart can make the store writable again, and would now:
    /// its writes failed for good in this process, and the disk takes writes again.
    fn needs_restart(&self) -> impl Future<Output = bool> + Send {
        async { false }
    }
}
