//! sled's metadata entries and seal reservations.

use super::*;

impl Meta for SledStore {
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
}
