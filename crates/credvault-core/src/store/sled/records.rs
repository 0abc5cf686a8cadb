//! sled's live records: the credentials tree, its name index and the read cache.

use super::*;

impl Records for SledStore {
    async fn get(&self, id: &str) -> Result<Option<CredentialRecord>, StoreError> {
        Ok(self.get_shared(id).await?.map(Arc::unwrap_or_clone))
    }
    async fn get_shared(&self, id: &str) -> Result<Option<Arc<CredentialRecord>>, StoreError> {
        if let Some(record) = self.cache.lookup(id) {
            return Ok(Some(record));
        }
        let epoch = self.cache.epoch.load(Ordering::SeqCst);
        match self.records.get(id).map_err(io)? {
            None => Ok(None),
            Some(bytes) => {
                let record = Arc::new(self.attach(decode(id, &bytes)?));
                self.cache.fill(&record, epoch);
                Ok(Some(record))
            }
        }
    }
    async fn id_for_name(&self, name: &str) -> Result<Option<String>, StoreError> {
        Ok(self.names.get(name).map_err(io)?.map(|v| utf8(&v)))
    }
    async fn list(&self, after: Option<&str>, limit: usize) -> Result<Vec<ListItem>, StoreError> {
        self.scan(&self.records, after, limit)
    }
    async fn count(&self) -> Result<usize, StoreError> {
        Ok(self.records.len())
    }
    async fn insert(&self, record: &CredentialRecord) -> Result<(), StoreError> {
        let bytes = record.to_bytes();
        let gate = self.gate.read().await;
        let written = self.cache.writing(Some(&record.id));
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
        drop((written, gate));
        self.durable().await
    }
    async fn replace(
        &self,
        record: &CredentialRecord,
        expected_revision: u64,
    ) -> Result<(), StoreError> {
        let bytes = record.to_bytes();
        let gate = self.gate.read().await;
        let written = self.cache.writing(Some(&record.id));
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
        drop((written, gate));
        self.durable().await
    }
    async fn delete(&self, id: &str, expected_version: Option<u64>) -> Result<(), StoreError> {
        let gate = self.gate.read().await;
        let written = self.cache.writing(Some(id));
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
        drop((written, gate));
        self.durable().await?;
        self.update_keys(id, Vec::clear).await
    }
}
