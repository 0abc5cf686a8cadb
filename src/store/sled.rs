//! The embedded default store: sled, with a name index kept in the same transaction.
//!
//! Trees: `credentials` (id to record), `names` (name to id), `meta` (key check),
//! `usage` (id to last use).
//! Writes are acknowledged only after a flush (fsync) that started after them.
//! Flushes are grouped: one fsync covers every write made before it began.
//! (`sled::Db::flush_async` is not used: with many concurrent callers it
//! exhausts sled's own I/O threads and deadlocks, as the benchmark found.)

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use sled::{Db, Tree};

use super::{ListItem, Store, StoreError};
use crate::crypto::Sealed;
use crate::record::{CredentialRecord, Usage};

const KEY_CHECK: &[u8] = b"key_check";

/// A sled-backed [`Store`].
#[derive(Clone)]
pub struct SledStore {
    db: Db,
    flusher: std::sync::Arc<GroupFlush>,
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
    StoreError::Io(e.to_string())
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
            db,
        })
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
            .map_err(io)?;
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
}

impl Store for SledStore {
    async fn key_check(&self) -> Result<Option<Sealed>, StoreError> {
        match self.meta.get(KEY_CHECK).map_err(io)? {
            None => Ok(None),
            Some(bytes) => prost::Message::decode(bytes.as_ref())
                .map(Some)
                .map_err(|_| StoreError::Corrupt {
                    id: "key_check".into(),
                    reason: "the key-check value is not readable".into(),
                }),
        }
    }

    async fn set_key_check(&self, check: &Sealed) -> Result<(), StoreError> {
        let bytes = prost::Message::encode_to_vec(check);
        self.meta
            .compare_and_swap(KEY_CHECK, None as Option<&[u8]>, Some(bytes))
            .map_err(io)?
            .map_err(|_| StoreError::Io("a key-check value is set already".into()))?;
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
            .map_err(txn_error)?;
        self.durable().await
    }

    async fn replace(
        &self,
        record: &CredentialRecord,
        expected_version: u64,
    ) -> Result<(), StoreError> {
        let bytes = record.to_bytes();
        self.records
            .transaction(|records| {
                let current = records.get(record.id.as_bytes())?.ok_or_else(|| {
                    ConflictableTransactionError::Abort(StoreError::NotFound(record.id.clone()))
                })?;
                let current =
                    decode(&record.id, &current).map_err(ConflictableTransactionError::Abort)?;
                if current.version != expected_version {
                    return Err(ConflictableTransactionError::Abort(
                        StoreError::VersionMismatch {
                            id: record.id.clone(),
                            expected: expected_version,
                            actual: current.version,
                        },
                    ));
                }
                records.insert(record.id.as_bytes(), bytes.as_slice())?;
                Ok(())
            })
            .map_err(txn_error)?;
        self.durable().await
    }

    async fn delete(&self, id: &str, expected_version: Option<u64>) -> Result<(), StoreError> {
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
            .map_err(txn_error)?;
        self.usage.remove(id.as_bytes()).map_err(io)?;
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
        for (id, usage) in batch {
            if self.records.contains_key(id).map_err(io)? {
                self.usage
                    .insert(id.as_bytes(), prost::Message::encode_to_vec(usage))
                    .map_err(io)?;
            }
        }
        self.durable().await
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.durable().await
    }
}
