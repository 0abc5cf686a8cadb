//! The embedded default store: sled, with a name index kept in the same transaction.
//!
//! Trees: `credentials` (id to record), `names` (name to id), `meta` (key
//! checks, seal counts), `usage` (id to last use).
//! Writers share a gate that a snapshot takes alone, so a backup sees one instant.
//! Writes are acknowledged only after a flush (fsync) that started after them.
//! Flushes are grouped: one fsync covers every write made before it began.
//! (`sled::Db::flush_async` is not used: with many concurrent callers it
//! exhausts sled's own I/O threads and deadlocks, as the benchmark found.)

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use sled::{Db, Tree};

use super::{Entries, ListItem, Snapshot, Store, StoreError};
use crate::record::{CredentialRecord, Usage};

use super::SEALS_META_PREFIX as SEALS_PREFIX;

/// A sled-backed [`Store`].
#[derive(Clone)]
pub struct SledStore {
    db: Db,
    flusher: std::sync::Arc<GroupFlush>,
    /// The first write error (sled keeps I/O errors sticky until a restart).
    write_error: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    /// Writers hold it shared while they change trees; a snapshot holds it alone.
    gate: std::sync::Arc<tokio::sync::RwLock<()>>,
    records: Tree,
    names: Tree,
    meta: Tree,
    usage: Tree,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore").finish_non_exhaustive()
    }
}

/// Group commit: writers number themselves, one flush at a time covers them all.
#[derive(Default)]
struct GroupFlush {
    turn: tokio::sync::Mutex<()>,
    written: AtomicU64,
    flushed: AtomicU64,
}

fn io(e: sled::Error) -> StoreError {
    match e {
        sled::Error::Io(e) => StoreError::Io(e.to_string()),
        e => StoreError::Io(e.to_string()),
    }
}

fn txn_error(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => io(e),
    }
}

fn decode(id: &str, bytes: &[u8]) -> Result<CredentialRecord, StoreError> {
    CredentialRecord::from_bytes(id, bytes).map_err(|e| StoreError::Corrupt {
        id: id.to_owned(),
        reason: e.to_string(),
    })
}

fn utf8(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

impl SledStore {
    /// Opens (or creates) the store in `dir`. Blocking: call from `spawn_blocking`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(io)?;
        Ok(SledStore {
            records: db.open_tree("credentials").map_err(io)?,
            names: db.open_tree("names").map_err(io)?,
            meta: db.open_tree("meta").map_err(io)?,
            usage: db.open_tree("usage").map_err(io)?,
            flusher: std::sync::Arc::default(),
            gate: std::sync::Arc::default(),
            write_error: std::sync::Arc::default(),
            db,
        })
    }

    /// Remembers an I/O error of a write, for [`Store::write_error`].
    fn note(&self, e: StoreError) -> StoreError {
        if let StoreError::Io(message) = &e {
            let mut slot = self
                .write_error
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if slot.is_none() {
                tracing::error!(error = %message, "the store failed to write; writes fail until the cause is fixed and the server restarted, reads go on");
                *slot = Some(message.clone());
            }
        }
        e
    }

    /// Returns once every write made before the call is on disk.
    async fn durable(&self) -> Result<(), StoreError> {
        let flusher = &self.flusher;
        // This caller's write is complete in memory; number it.
        let mine = flusher.written.fetch_add(1, Ordering::AcqRel) + 1;
        let _turn = flusher.turn.lock().await;
        if flusher.flushed.load(Ordering::Acquire) >= mine {
            // A flush that began after this write has already finished.
            return Ok(());
        }
        let covered = flusher.written.load(Ordering::Acquire);
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| StoreError::Io(format!("flush task failed: {e}")))?
            .map_err(|e| self.note(io(e)))?;
        flusher.flushed.store(covered, Ordering::Release);
        Ok(())
    }

    /// The name under which `id` is indexed, found by a scan (for records too damaged to name it).
    fn name_of(&self, id: &str) -> Result<Option<sled::IVec>, StoreError> {
        for entry in self.names.iter() {
            let (name, value) = entry.map_err(io)?;
            if value.as_ref() == id.as_bytes() {
                return Ok(Some(name));
            }
        }
        Ok(None)
    }

    fn entries(tree: &Tree) -> Result<Entries, StoreError> {
        tree.iter()
            .map(|entry| {
                let (k, v) = entry.map_err(io)?;
                Ok((utf8(&k), v.to_vec()))
            })
            .collect()
    }
}

impl Store for SledStore {
    async fn meta(&self, prefix: &str) -> Result<Entries, StoreError> {
        self.meta
            .scan_prefix(prefix.as_bytes())
            .map(|entry| {
                let (k, v) = entry.map_err(io)?;
                Ok((utf8(&k), v.to_vec()))
            })
            .collect()
    }

    async fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        {
            let _gate = self.gate.read().await;
            self.meta
                .insert(key.as_bytes(), value)
                .map_err(|e| self.note(io(e)))?;
        }
        self.durable().await
    }

    async fn remove_meta(&self, key: &str) -> Result<(), StoreError> {
        {
            let _gate = self.gate.read().await;
            self.meta
                .remove(key.as_bytes())
                .map_err(|e| self.note(io(e)))?;
        }
        self.durable().await
    }

    async fn get(&self, id: &str) -> Result<Option<CredentialRecord>, StoreError> {
        match self.records.get(id).map_err(io)? {
            None => Ok(None),
            Some(bytes) => decode(id, &bytes).map(Some),
        }
    }

    async fn id_for_name(&self, name: &str) -> Result<Option<String>, StoreError> {
        Ok(self.names.get(name).map_err(io)?.map(|v| utf8(&v)))
    }

    async fn list(&self, after: Option<&str>, limit: usize) -> Result<Vec<ListItem>, StoreError> {
        let iter = match after {
            Some(after) => self.records.range::<&[u8], _>((
                std::ops::Bound::Excluded(after.as_bytes()),
                std::ops::Bound::Unbounded,
            )),
            None => self.records.iter(),
        };
        iter.take(limit)
            .map(|entry| {
                let (key, value) = entry.map_err(io)?;
                let id = utf8(&key);
                let record = decode(&id, &value);
                Ok((id, record))
            })
            .collect()
    }

    async fn count(&self) -> Result<usize, StoreError> {
        Ok(self.records.len())
    }

    async fn insert(&self, record: &CredentialRecord) -> Result<(), StoreError> {
        let bytes = record.to_bytes();
        let gate = self.gate.read().await;
        (&self.records, &self.names)
            .transaction(|(records, names)| {
                if names.get(record.name.as_bytes())?.is_some() {
                    return Err(ConflictableTransactionError::Abort(StoreError::NameTaken(
                        record.name.clone(),
                    )));
                }
                records.insert(record.id.as_bytes(), bytes.as_slice())?;
                names.insert(record.name.as_bytes(), record.id.as_bytes())?;
                Ok(())
            })
            .map_err(|e| self.note(txn_error(e)))?;
        drop(gate);
        self.durable().await
    }

    async fn replace(
        &self,
        record: &CredentialRecord,
        expected_revision: u64,
    ) -> Result<(), StoreError> {
        let bytes = record.to_bytes();
        let gate = self.gate.read().await;
        self.records
            .transaction(|records| {
                let current = records.get(record.id.as_bytes())?.ok_or_else(|| {
                    ConflictableTransactionError::Abort(StoreError::NotFound(record.id.clone()))
                })?;
                let current =
                    decode(&record.id, &current).map_err(ConflictableTransactionError::Abort)?;
                if current.revision != expected_revision {
                    return Err(ConflictableTransactionError::Abort(StoreError::Conflict(
                        record.id.clone(),
                    )));
                }
                records.insert(record.id.as_bytes(), bytes.as_slice())?;
                Ok(())
            })
            .map_err(|e| self.note(txn_error(e)))?;
        drop(gate);
        self.durable().await
    }

    async fn delete(&self, id: &str, expected_version: Option<u64>) -> Result<(), StoreError> {
        let gate = self.gate.read().await;
        // A record too damaged to decode is still deletable (without a version check).
        let damaged_name = match self.records.get(id).map_err(io)? {
            None => return Err(StoreError::NotFound(id.to_owned())),
            Some(bytes) => match decode(id, &bytes) {
                Ok(_) => None,
                Err(e) if expected_version.is_some() => return Err(e),
                Err(_) => self.name_of(id)?,
            },
        };
        (&self.records, &self.names)
            .transaction(|(records, names)| {
                let bytes = records.remove(id.as_bytes())?.ok_or_else(|| {
                    ConflictableTransactionError::Abort(StoreError::NotFound(id.to_owned()))
                })?;
                let name = match decode(id, &bytes) {
                    Ok(current) => {
                        if let Some(expected) = expected_version {
                            if current.version != expected {
                                return Err(ConflictableTransactionError::Abort(
                                    StoreError::VersionMismatch {
                                        id: id.to_owned(),
                                        expected,
                                        actual: current.version,
                                    },
                                ));
                            }
                        }
                        Some(sled::IVec::from(current.name.as_bytes()))
                    }
                    Err(e) if expected_version.is_some() => {
                        return Err(ConflictableTransactionError::Abort(e))
                    }
                    Err(_) => damaged_name.clone(),
                };
                if let Some(name) = name {
                    if names.get(&name)?.as_deref() == Some(id.as_bytes()) {
                        names.remove(name)?;
                    }
                }
                Ok(())
            })
            .map_err(|e| self.note(txn_error(e)))?;
        self.usage.remove(id.as_bytes()).map_err(io)?;
        drop(gate);
        self.durable().await
    }

    async fn usage(&self, id: &str) -> Result<Option<Usage>, StoreError> {
        match self.usage.get(id).map_err(io)? {
            None => Ok(None),
            // Usage is advisory: an unreadable entry reads as none.
            Some(bytes) => Ok(prost::Message::decode(bytes.as_ref()).ok()),
        }
    }

    async fn record_usage(&self, batch: &[(String, Usage)]) -> Result<(), StoreError> {
        {
            let _gate = self.gate.read().await;
            for (id, usage) in batch {
                if self
                    .records
                    .contains_key(id)
                    .map_err(|e| self.note(io(e)))?
                {
                    self.usage
                        .insert(id.as_bytes(), prost::Message::encode_to_vec(usage))
                        .map_err(|e| self.note(io(e)))?;
                }
            }
        }
        self.durable().await
    }

    async fn reserve_seals(&self, key_id: &str, count: u64) -> Result<u64, StoreError> {
        let key = format!("{SEALS_PREFIX}{key_id}");
        let total = {
            let _gate = self.gate.read().await;
            self.meta
                .update_and_fetch(key.as_bytes(), |old| {
                    let before = old
                        .and_then(|b| <[u8; 8]>::try_from(b).ok())
                        .map_or(0, u64::from_be_bytes);
                    Some(before.saturating_add(count).to_be_bytes().to_vec())
                })
                .map_err(|e| self.note(io(e)))?
                .and_then(|b| <[u8; 8]>::try_from(b.as_ref()).ok())
                .map_or(0, u64::from_be_bytes)
        };
        self.durable().await?;
        Ok(total)
    }

    async fn seal_reservations(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.meta
            .scan_prefix(SEALS_PREFIX.as_bytes())
            .map(|entry| {
                let (k, v) = entry.map_err(io)?;
                let key = utf8(&k);
                let total = <[u8; 8]>::try_from(v.as_ref())
                    .map(u64::from_be_bytes)
                    .map_err(|_| StoreError::Corrupt {
                        id: key.clone(),
                        reason: "the seal count is not readable".into(),
                    })?;
                Ok((key[SEALS_PREFIX.len()..].to_owned(), total))
            })
            .collect()
    }

    async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let _alone = self.gate.write().await;
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            Ok(Snapshot {
                records: Self::entries(&this.records)?,
                meta: Self::entries(&this.meta)?,
                usage: Self::entries(&this.usage)?,
            })
        })
        .await
        .map_err(|e| StoreError::Io(format!("snapshot task failed: {e}")))?
    }

    async fn restore(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        let mut names = Vec::with_capacity(snapshot.records.len());
        for (id, bytes) in &snapshot.records {
            // A record damaged before the snapshot is restored as it was, unnamed.
            if let Ok(record) = decode(id, bytes) {
                names.push((record.name, id));
            }
        }
        {
            let _alone = self.gate.write().await;
            if !self.records.is_empty() || !self.meta.is_empty() {
                return Err(StoreError::NotEmpty);
            }
            for (id, bytes) in &snapshot.records {
                self.records
                    .insert(id.as_bytes(), bytes.as_slice())
                    .map_err(|e| self.note(io(e)))?;
            }
            for (name, id) in names {
                if self
                    .names
                    .insert(name.as_bytes(), id.as_bytes())
                    .map_err(|e| self.note(io(e)))?
                    .is_some()
                {
                    return Err(StoreError::NameTaken(name));
                }
            }
            for (key, value) in &snapshot.meta {
                self.meta
                    .insert(key.as_bytes(), value.as_slice())
                    .map_err(|e| self.note(io(e)))?;
            }
            for (id, value) in &snapshot.usage {
                self.usage
                    .insert(id.as_bytes(), value.as_slice())
                    .map_err(|e| self.note(io(e)))?;
            }
        }
        self.durable().await
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.durable().await
    }

    fn write_error(&self) -> Option<String> {
        self.write_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}
