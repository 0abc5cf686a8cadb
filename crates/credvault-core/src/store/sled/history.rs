//! sled's deleted records and erasable keys (files rewritten whole, see `erasable`).

use super::*;

impl History for SledStore {
    async fn delete_keeping(
        &self,
        id: &str,
        expected_version: Option<u64>,
        deletion: &Deletion,
        stamp: &crate::store::Stamp,
    ) -> Result<CredentialRecord, StoreError> {
        let gate = self.gate.read().await;
        let written = self.cache.writing(Some(id));
        let kept = (&self.records, &self.names, &self.deleted)
            .transaction(|(records, names, deleted)| {
                let abort = ConflictableTransactionError::Abort;
                let bytes = records
                    .remove(id.as_bytes())?
                    .ok_or_else(|| abort(StoreError::NotFound(id.to_owned())))?;
                let mut record = decode(id, &bytes).map_err(abort)?;
                if let Some(expected) = expected_version {
                    if record.version != expected {
                        return Err(abort(StoreError::VersionMismatch {
                            id: id.to_owned(),
                            expected,
                            actual: record.version,
                        }));
                    }
                }
                if names.get(record.name.as_bytes())?.as_deref() == Some(id.as_bytes()) {
                    names.remove(record.name.as_bytes())?;
                }
                record.mark_deleted(
                    deletion.delete_time,
                    deletion.purge_time,
                    &deletion.deleted_by,
                );
                stamp(&mut record);
                deleted.insert(id.as_bytes(), record.to_bytes())?;
                Ok(record)
            })
            .map_err(|e| self.note(txn_error(e)))?;
        self.usage.remove(id.as_bytes()).map_err(io)?;
        drop((written, gate));
        self.durable().await?;
        Ok(self.attach(kept))
    }
    async fn deleted(&self, id: &str) -> Result<Option<CredentialRecord>, StoreError> {
        match self.deleted.get(id).map_err(io)? {
            None => Ok(None),
            Some(bytes) => Ok(Some(self.attach(decode(id, &bytes)?))),
        }
    }
    async fn list_deleted(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ListItem>, StoreError> {
        self.scan(&self.deleted, after, limit)
    }
    async fn undelete(
        &self,
        id: &str,
        stamp: &crate::store::Stamp,
    ) -> Result<CredentialRecord, StoreError> {
        let gate = self.gate.read().await;
        let written = self.cache.writing(Some(id));
        let back = (&self.records, &self.names, &self.deleted)
            .transaction(|(records, names, deleted)| {
                let abort = ConflictableTransactionError::Abort;
                let bytes = deleted
                    .get(id.as_bytes())?
                    .ok_or_else(|| abort(StoreError::NotFound(id.to_owned())))?;
                let mut record = decode(id, &bytes).map_err(abort)?;
                if names.get(record.name.as_bytes())?.is_some() {
                    return Err(abort(StoreError::NameTaken(record.name.clone())));
                }
                deleted.remove(id.as_bytes())?;
                record.mark_undeleted();
                stamp(&mut record);
                records.insert(id.as_bytes(), record.to_bytes())?;
                names.insert(record.name.as_bytes(), id.as_bytes())?;
                Ok(record)
            })
            .map_err(|e| self.note(txn_error(e)))?;
        drop((written, gate));
        self.durable().await?;
        Ok(self.attach(back))
    }
    async fn replace_deleted(
        &self,
        record: &CredentialRecord,
        expected_revision: u64,
    ) -> Result<(), StoreError> {
        let bytes = record.to_bytes();
        {
            let _gate = self.gate.read().await;
            self.deleted
                .transaction(|deleted| {
                    let abort = ConflictableTransactionError::Abort;
                    let current = deleted
                        .get(record.id.as_bytes())?
                        .ok_or_else(|| abort(StoreError::NotFound(record.id.clone())))?;
                    let current = decode(&record.id, &current).map_err(abort)?;
                    if current.revision != expected_revision {
                        return Err(abort(StoreError::Conflict(record.id.clone())));
                    }
                    deleted.insert(record.id.as_bytes(), bytes.as_slice())?;
                    Ok(())
                })
                .map_err(|e| self.note(txn_error(e)))?;
        }
        self.durable().await
    }
    async fn purge(&self, id: &str) -> Result<(), StoreError> {
        {
            let _gate = self.gate.read().await;
            if self
                .deleted
                .remove(id.as_bytes())
                .map_err(|e| self.note(io(e)))?
                .is_none()
            {
                return Err(StoreError::NotFound(id.to_owned()));
            }
        }
        self.durable().await?;
        self.update_keys(id, Vec::clear).await
    }
    async fn put_erasable(&self, id: &str, seal_id: u64, key: &[u8; 32]) -> Result<(), StoreError> {
        let _gate = self.gate.read().await;
        let key = zeroize::Zeroizing::new(*key);
        self.update_keys(id, move |list| {
            list.retain(|(s, _)| *s != seal_id);
            list.push((seal_id, key));
        })
        .await
    }
    async fn erase(&self, id: &str, seal_ids: &[u64]) -> Result<(), StoreError> {
        let _gate = self.gate.read().await;
        let gone = seal_ids.to_vec();
        self.update_keys(id, move |list| list.retain(|(s, _)| !gone.contains(s)))
            .await
    }
}
