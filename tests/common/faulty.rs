//! A store that fails on purpose: it wraps the real sled or PostgreSQL store and,
//! while switched on, answers a share of its calls with an I/O error before
//! passing them on (so a failed call changes nothing), to show that every store
//! failure reaches the client as UNAVAILABLE and never as wrong data.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use credvault::record::{CredentialRecord, Usage};
use credvault::store::{
    Accounts, AuditTable, Backups, ChangeSink, Entries, Health, History, ListItem, Meta, Records,
    Replicas, Snapshot, Store, StoreError, Usages,
};

/// When to fail: one call in `every`, while `on`.
#[derive(Debug, Default)]
pub struct Faults {
    pub on: AtomicBool,
    /// Fail one call in this many (0: none).
    pub every: AtomicU64,
    calls: AtomicU64,
    /// How many calls were failed.
    pub injected: AtomicU64,
}

impl Faults {
    fn check(&self) -> Result<(), StoreError> {
        let every = self.every.load(Ordering::Relaxed);
        if !self.on.load(Ordering::Relaxed) || every == 0 {
            return Ok(());
        }
        if self.calls.fetch_add(1, Ordering::Relaxed) % every == every - 1 {
            self.injected.fetch_add(1, Ordering::Relaxed);
            return Err(StoreError::Io("injected fault".into()));
        }
        Ok(())
    }
}

/// The real store `S`, with [`Faults`].
pub struct FaultyStore<S> {
    pub inner: Arc<S>,
    pub faults: Arc<Faults>,
}

impl<S: Store> Records for FaultyStore<S> {
    async fn get(&self, id: &str) -> Result<Option<CredentialRecord>, StoreError> {
        self.faults.check()?;
        self.inner.get(id).await
    }
    async fn get_shared(&self, id: &str) -> Result<Option<Arc<CredentialRecord>>, StoreError> {
        self.faults.check()?;
        self.inner.get_shared(id).await
    }
    async fn id_for_name(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.faults.check()?;
        self.inner.id_for_name(name).await
    }
    async fn list(&self, after: Option<&str>, limit: usize) -> Result<Vec<ListItem>, StoreError> {
        self.faults.check()?;
        self.inner.list(after, limit).await
    }
    async fn count(&self) -> Result<usize, StoreError> {
        self.inner.count().await
    }
    async fn insert(&self, record: &CredentialRecord) -> Result<(), StoreError> {
        self.faults.check()?;
        self.inner.insert(record).await
    }
    async fn replace(&self, record: &CredentialRecord, expected: u64) -> Result<(), StoreError> {
        self.faults.check()?;
        self.inner.replace(record, expected).await
    }
    async fn delete(&self, id: &str, expected_version: Option<u64>) -> Result<(), StoreError> {
        self.faults.check()?;
        self.inner.delete(id, expected_version).await
    }
}

impl<S: Store> History for FaultyStore<S> {
    async fn delete_keeping(
        &self,
        id: &str,
        expected_version: Option<u64>,
        deletion: &credvault::store::Deletion,
        stamp: &credvault::store::Stamp,
    ) -> Result<CredentialRecord, StoreError> {
        self.faults.check()?;
        self.inner
            .delete_keeping(id, expected_version, deletion, stamp)
            .await
    }
    async fn deleted(&self, id: &str) -> Result<Option<CredentialRecord>, StoreError> {
        self.inner.deleted(id).await
    }
    async fn list_deleted(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<credvault::store::ListItem>, StoreError> {
        self.inner.list_deleted(after, limit).await
    }
    async fn undelete(
        &self,
        id: &str,
        stamp: &credvault::store::Stamp,
    ) -> Result<CredentialRecord, StoreError> {
        self.faults.check()?;
        self.inner.undelete(id, stamp).await
    }
    async fn replace_deleted(
        &self,
        record: &CredentialRecord,
        expected: u64,
    ) -> Result<(), StoreError> {
        self.faults.check()?;
        self.inner.replace_deleted(record, expected).await
    }
    async fn purge(&self, id: &str) -> Result<(), StoreError> {
        self.faults.check()?;
        self.inner.purge(id).await
    }
    async fn put_erasable(&self, id: &str, seal_id: u64, key: &[u8; 32]) -> Result<(), StoreError> {
        self.faults.check()?;
        self.inner.put_erasable(id, seal_id, key).await
    }
    async fn erase(&self, id: &str, seal_ids: &[u64]) -> Result<(), StoreError> {
        self.faults.check()?;
        self.inner.erase(id, seal_ids).await
    }
    async fn sweep_erasable(&self, grace: std::time::Duration) -> Result<u64, StoreError> {
        self.faults.check()?;
        self.inner.sweep_erasable(grace).await
    }
}

impl<S: Store> Usages for FaultyStore<S> {
    async fn usage(&self, id: &str) -> Result<Option<Usage>, StoreError> {
        self.inner.usage(id).await
    }
    async fn usages(
        &self,
        ids: &[String],
    ) -> Result<std::collections::HashMap<String, Usage>, StoreError> {
        self.inner.usages(ids).await
    }
    async fn record_usage(&self, batch: &[(String, Usage)]) -> Result<(), StoreError> {
        self.inner.record_usage(batch).await
    }
}

impl<S: Store> Accounts for FaultyStore<S> {
    async fn put_pause(
        &self,
        account: &[u8; 32],
        until_ms: i64,
    ) -> Result<Option<i64>, StoreError> {
        self.faults.check()?;
        self.inner.put_pause(account, until_ms).await
    }
    async fn pauses(&self, now_ms: i64) -> Result<Vec<([u8; 32], i64)>, StoreError> {
        self.faults.check()?;
        self.inner.pauses(now_ms).await
    }
    async fn take_budget(
        &self,
        account: &[u8; 32],
        window_start_ms: i64,
        want: u32,
        limit: u32,
    ) -> Result<Option<u32>, StoreError> {
        self.faults.check()?;
        self.inner
            .take_budget(account, window_start_ms, want, limit)
            .await
    }
}

impl<S: Store> Meta for FaultyStore<S> {
    async fn meta(&self, prefix: &str) -> Result<Entries, StoreError> {
        self.inner.meta(prefix).await
    }
    async fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.inner.put_meta(key, value).await
    }
    async fn remove_meta(&self, key: &str) -> Result<(), StoreError> {
        self.inner.remove_meta(key).await
    }
    async fn reserve_seals(&self, key_id: &str, count: u64) -> Result<u64, StoreError> {
        self.faults.check()?;
        self.inner.reserve_seals(key_id, count).await
    }
    async fn seal_reservations(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.inner.seal_reservations().await
    }
}

impl<S: Store> Backups for FaultyStore<S> {
    async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        self.inner.snapshot().await
    }
    async fn restore(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        self.inner.restore(snapshot).await
    }
}

impl<S: Store> Health for FaultyStore<S> {
    async fn flush(&self) -> Result<(), StoreError> {
        self.inner.flush().await
    }
    fn write_error(&self) -> Option<String> {
        self.inner.write_error()
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
    async fn probe_write(&self, instance: &str) -> Result<(), StoreError> {
        self.inner.probe_write(instance).await
    }
    async fn needs_restart(&self) -> bool {
        self.inner.needs_restart().await
    }
}

impl<S: Store> Replicas for FaultyStore<S> {
    fn audit_table(self: &Arc<Self>) -> Option<Arc<dyn AuditTable>> {
        self.inner.audit_table()
    }
    fn listen_changes(
        self: &Arc<Self>,
        sink: ChangeSink,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        self.inner.listen_changes(sink, stop)
    }
}
