//! The store's capabilities, one trait each: [`Records`], [`History`] (deleted records
//! and erasable keys), [`Usages`], [`Accounts`] (pauses, budgets), [`Meta`] (metadata,
//! seal reservations), [`Backups`], [`Health`] and [`Replicas`] (audit table, change
//! feed). [`Store`] is all of them; each backend implements them in a file per trait.

use super::*;

/// The live records: read by id or name, listed, counted, and written by
/// check-and-set on their revision.
pub trait Records: Send + Sync + 'static {
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
}

/// Deleted records kept apart until purged, and the erasable keys of sealed versions.
pub trait History: Send + Sync + 'static {
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
}

/// Each credential's last use, written in batches.
pub trait Usages: Send + Sync + 'static {
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
}

/// Provider accounts' pauses and request budgets, shared by replicas when the store is.
pub trait Accounts: Send + Sync + 'static {
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
}

/// Small metadata entries (key checks, marks) and the seals reserved per master key.
pub trait Meta: Send + Sync + 'static {
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
}

/// Every stored byte at one instant, and its restore into an empty store.
pub trait Backups: Send + Sync + 'static {
    /// Every stored byte at one instant: writes wait while it is taken.
    fn snapshot(&self) -> impl Future<Output = Result<Snapshot, StoreError>> + Send;

    /// Loads a snapshot into this store, which must be empty; durable when it resolves.
    fn restore(&self, snapshot: &Snapshot) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Durability and the store's state: flush, write errors, reachability, restarts.
pub trait Health: Send + Sync + 'static {
    /// Makes every acknowledged write durable (called at shutdown).
    fn flush(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The I/O error that stopped writes, if one did (reads may go on).
    fn write_error(&self) -> Option<String>;

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

    /// Whether only a restart can make the store writable again, and would now:
    /// its writes failed for good in this process, and the disk takes writes again.
    fn needs_restart(&self) -> impl Future<Output = bool> + Send {
        async { false }
    }
}

/// What a store shared by replicas adds: their common audit table and a feed of
/// every replica's writes.
pub trait Replicas: Send + Sync + 'static {
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
}

/// A credential store. Ids order records by creation time.
pub trait Store:
    Records + History + Usages + Accounts + Meta + Backups + Health + Replicas
{
}

impl<T> Store for T where
    T: Records + History + Usages + Accounts + Meta + Backups + Health + Replicas
{
}
