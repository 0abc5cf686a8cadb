//! Opening the configured store: [`StoreConfig`] names it, [`open`] opens it as
//! an [`AnyStore`], the one store type the server runs on.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret;

use super::{
    Accounts, AuditTable, Backups, Entries, Health, History, ListItem, Meta, PgSettings, PgStore,
    Records, Replicas, SledStore, Snapshot, StoreError, Usages,
};
use crate::record::{CredentialRecord, Usage};

/// Which store holds the credentials.
#[derive(Clone, Debug)]
pub enum StoreConfig {
    /// The embedded default: sled under `db/` in the data directory (one replica).
    Sled {
        /// The data directory.
        dir: PathBuf,
    },
    /// PostgreSQL, shared by any number of replicas.
    Postgres(PostgresSettings),
}

/// How to reach PostgreSQL.
#[derive(Clone, Debug)]
pub struct PostgresSettings {
    /// The connection URL; it may hold a password, so it is never shown.
    pub url: secrecy::SecretString,
    /// Pool size and connection timeout.
    pub pool: PgSettings,
    /// How long opening waits for the database to answer.
    pub startup_wait: Duration,
}

/// The store `config` names, open: sled (its directory locked against a second
/// process: [`StoreError::Locked`]), or PostgreSQL connected and its schema
/// migrated (waiting up to `startup_wait` for the server to answer).
pub async fn open(config: &StoreConfig) -> Result<AnyStore, StoreError> {
    match config {
        StoreConfig::Sled { dir } => {
            let path = dir.join("db");
            tokio::task::spawn_blocking(move || SledStore::open(&path))
                .await
                .map_err(|e| StoreError::Io(format!("the store open task failed: {e}")))?
                .map(AnyStore::Sled)
        }
        StoreConfig::Postgres(settings) => {
            let store = PgStore::connect(settings.url.expose_secret(), &settings.pool)?;
            let deadline = tokio::time::Instant::now() + settings.startup_wait;
            loop {
                match store.migrate().await {
                    Ok(applied) => {
                        if !applied.is_empty() {
                            tracing::info!(?applied, "database schema migrated");
                        }
                        return Ok(AnyStore::Postgres(Arc::new(store)));
                    }
                    Err(StoreError::Unreachable(e)) if tokio::time::Instant::now() < deadline => {
                        tracing::warn!(error = %e, "waiting for the database");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    }
}

/// One of the stores, chosen at run time.
#[derive(Debug)]
pub enum AnyStore {
    /// The embedded store.
    Sled(SledStore),
    /// The database store (shared, for its audit table).
    Postgres(Arc<PgStore>),
}

macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            AnyStore::Sled($s) => $e,
            AnyStore::Postgres($s) => $e,
        }
    };
}

impl Records for AnyStore {
    async fn get(&self, id: &str) -> Result<Option<CredentialRecord>, StoreError> {
        each!(self, s => s.get(id).await)
    }
    async fn get_shared(&self, id: &str) -> Result<Option<Arc<CredentialRecord>>, StoreError> {
        each!(self, s => s.get_shared(id).await)
    }
    async fn id_for_name(&self, name: &str) -> Result<Option<String>, StoreError> {
        each!(self, s => s.id_for_name(name).await)
    }
    async fn list(&self, after: Option<&str>, limit: usize) -> Result<Vec<ListItem>, StoreError> {
        each!(self, s => s.list(after, limit).await)
    }
    async fn count(&self) -> Result<usize, StoreError> {
        each!(self, s => s.count().await)
    }
    async fn insert(&self, record: &CredentialRecord) -> Result<(), StoreError> {
        each!(self, s => s.insert(record).await)
    }
    async fn replace(&self, record: &CredentialRecord, expected: u64) -> Result<(), StoreError> {
        each!(self, s => s.replace(record, expected).await)
    }
    async fn delete(&self, id: &str, expected_version: Option<u64>) -> Result<(), StoreError> {
        each!(self, s => s.delete(id, expected_version).await)
    }
}

impl History for AnyStore {
    async fn delete_keeping(
        &self,
        id: &str,
        expected_version: Option<u64>,
        deletion: &super::Deletion,
        stamp: &super::Stamp,
    ) -> Result<CredentialRecord, StoreError> {
        each!(self, s => s.delete_keeping(id, expected_version, deletion, stamp).await)
    }
    async fn deleted(&self, id: &str) -> Result<Option<CredentialRecord>, StoreError> {
        each!(self, s => s.deleted(id).await)
    }
    async fn list_deleted(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ListItem>, StoreError> {
        each!(self, s => s.list_deleted(after, limit).await)
    }
    async fn undelete(
        &self,
        id: &str,
        stamp: &super::Stamp,
    ) -> Result<CredentialRecord, StoreError> {
        each!(self, s => s.undelete(id, stamp).await)
    }
    async fn replace_deleted(
        &self,
        record: &CredentialRecord,
        expected: u64,
    ) -> Result<(), StoreError> {
        each!(self, s => s.replace_deleted(record, expected).await)
    }
    async fn purge(&self, id: &str) -> Result<(), StoreError> {
        each!(self, s => s.purge(id).await)
    }
    async fn put_erasable(&self, id: &str, seal_id: u64, key: &[u8; 32]) -> Result<(), StoreError> {
        each!(self, s => s.put_erasable(id, seal_id, key).await)
    }
    async fn erase(&self, id: &str, seal_ids: &[u64]) -> Result<(), StoreError> {
        each!(self, s => s.erase(id, seal_ids).await)
    }
    async fn sweep_erasable(&self, grace: Duration) -> Result<u64, StoreError> {
        each!(self, s => s.sweep_erasable(grace).await)
    }
}

impl Usages for AnyStore {
    async fn usage(&self, id: &str) -> Result<Option<Usage>, StoreError> {
        each!(self, s => s.usage(id).await)
    }
    async fn usages(
        &self,
        ids: &[String],
    ) -> Result<std::collections::HashMap<String, Usage>, StoreError> {
        each!(self, s => s.usages(ids).await)
    }
    async fn record_usage(&self, batch: &[(String, Usage)]) -> Result<(), StoreError> {
        each!(self, s => s.record_usage(batch).await)
    }
}

impl Accounts for AnyStore {
    async fn put_pause(
        &self,
        account: &[u8; 32],
        until_ms: i64,
    ) -> Result<Option<i64>, StoreError> {
        each!(self, s => s.put_pause(account, until_ms).await)
    }
    async fn pauses(&self, now_ms: i64) -> Result<Vec<([u8; 32], i64)>, StoreError> {
        each!(self, s => s.pauses(now_ms).await)
    }
    async fn take_budget(
        &self,
        account: &[u8; 32],
        window_start_ms: i64,
        want: u32,
        limit: u32,
    ) -> Result<Option<u32>, StoreError> {
        each!(self, s => s.take_budget(account, window_start_ms, want, limit).await)
    }
}

impl Meta for AnyStore {
    async fn meta(&self, prefix: &str) -> Result<Entries, StoreError> {
        each!(self, s => s.meta(prefix).await)
    }
    async fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        each!(self, s => s.put_meta(key, value).await)
    }
    async fn remove_meta(&self, key: &str) -> Result<(), StoreError> {
        each!(self, s => s.remove_meta(key).await)
    }
    async fn reserve_seals(&self, key_id: &str, count: u64) -> Result<u64, StoreError> {
        each!(self, s => s.reserve_seals(key_id, count).await)
    }
    async fn seal_reservations(&self) -> Result<Vec<(String, u64)>, StoreError> {
        each!(self, s => s.seal_reservations().await)
    }
}

impl Backups for AnyStore {
    async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        each!(self, s => s.snapshot().await)
    }
    async fn restore(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        each!(self, s => s.restore(snapshot).await)
    }
}

impl Health for AnyStore {
    async fn flush(&self) -> Result<(), StoreError> {
        each!(self, s => s.flush().await)
    }
    fn write_error(&self) -> Option<String> {
        each!(self, s => s.write_error())
    }
    async fn ping(&self) -> Result<(), StoreError> {
        each!(self, s => s.ping().await)
    }
    async fn probe_write(&self, instance: &str) -> Result<(), StoreError> {
        each!(self, s => s.probe_write(instance).await)
    }
    async fn needs_restart(&self) -> bool {
        each!(self, s => s.needs_restart().await)
    }
}

impl Replicas for AnyStore {
    fn audit_table(self: &Arc<Self>) -> Option<Arc<dyn AuditTable>> {
        match &**self {
            AnyStore::Sled(_) => None,
            AnyStore::Postgres(pg) => pg.audit_table(),
        }
    }
    fn listen_changes(
        self: &Arc<Self>,
        sink: super::ChangeSink,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        match &**self {
            AnyStore::Sled(_) => None,
            AnyStore::Postgres(pg) => pg.listen_changes(sink, stop),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// The names of the `fn`s declared in `text` (at one level of indentation).
    fn methods(text: &str) -> BTreeSet<&str> {
        text.lines()
            .filter_map(|l| {
                let l = l.strip_prefix("    ")?;
                let l = l.strip_prefix("async ").unwrap_or(l);
                let name = l.strip_prefix("fn ")?;
                name.split(['(', '<']).next()
            })
            .collect()
    }

    /// A method `AnyStore` left to the trait's default would answer for the default
    /// (PostgreSQL's sweep of erasable keys once went missing that way).
    #[test]
    fn any_store_passes_every_store_method_on() {
        let declared = methods(include_str!("traits.rs"));
        let any = include_str!("open.rs");
        let start = any.find("impl Records for AnyStore").expect("the impls");
        let end = any.find("#[cfg(test)]").expect("the tests");
        let forwarded = methods(&any[start..end]);
        let missing: Vec<_> = declared.difference(&forwarded).collect();
        assert!(declared.len() > 30, "{declared:?}");
        assert!(missing.is_empty(), "AnyStore does not forward {missing:?}");
    }
}
