//! sled's last uses of credentials.

use super::*;

impl Usages for SledStore {
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
}
