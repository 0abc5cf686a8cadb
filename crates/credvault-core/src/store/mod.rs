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
mod traits;

pub use self::open::{open, AnyStore, PostgresSettings, StoreConfig};
pub use self::postgres::{PgSettings, PgStore};
pub use self::sled::SledStore;
pub use self::traits::*;

/// The capability traits, unnamed: `use store::prelude::*` lets code call any
/// store method on a concrete store ([`AnyStore`], [`SledStore`]) as on an `S: Store`.
pub mod prelude {
    pub use super::traits::{
        Accounts as _, Backups as _, Health as _, History as _, Meta as _, Records as _,
        Replicas as _, Usages as _,
    };
}

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
