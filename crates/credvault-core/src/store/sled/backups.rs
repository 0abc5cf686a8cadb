//! sled's snapshots and restores.

use super::*;

impl Backups for SledStore {
    async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let _alone = self.gate.write().await;
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            Ok(Snapshot {
                records: Self::entries(&this.records)?,
                meta: Self::entries(&this.meta)?,
                usage: Self::entries(&this.usage)?,
                deleted: Self::entries(&this.deleted)?,
                erasable: this.keys.entries(),
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
            let _written = self.cache.writing(None);
            if !self.records.is_empty() || !self.meta.is_empty() || !self.deleted.is_empty() {
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
            for (id, bytes) in &snapshot.deleted {
                self.deleted
                    .insert(id.as_bytes(), bytes.as_slice())
                    .map_err(|e| self.note(io(e)))?;
            }
        }
        self.durable().await?;
        let mut by_id: HashMap<&str, crate::store::erasable::Keys> = HashMap::new();
        for (key, value) in &snapshot.erasable {
            let (Some((id, seal)), Ok(bytes)) = (
                crate::store::parse_erasable_entry_key(key),
                <[u8; 32]>::try_from(value.as_slice()),
            ) else {
                return Err(StoreError::Corrupt {
                    id: key.clone(),
                    reason: "not an erasable key".into(),
                });
            };
            by_id
                .entry(id)
                .or_default()
                .push((seal, zeroize::Zeroizing::new(bytes)));
        }
        for (id, list) in by_id {
            self.update_keys(id, move |keys| *keys = list).await?;
        }
        Ok(())
    }
}
