//! sled's pauses of provider accounts (budgets are counted in memory: one process).

use super::*;

impl Accounts for SledStore {
    async fn put_pause(
        &self,
        account: &[u8; 32],
        until_ms: i64,
    ) -> Result<Option<i64>, StoreError> {
        let key = format!("{PAUSES_PREFIX}{}", hex::encode(account));
        let stored = {
            let _gate = self.gate.read().await;
            // The later end wins, atomically against a concurrent report.
            self.meta
                .update_and_fetch(key.as_bytes(), |old| {
                    let old = old
                        .and_then(|v| <[u8; 8]>::try_from(v).ok())
                        .map(i64::from_be_bytes);
                    Some(
                        old.map_or(until_ms, |o| o.max(until_ms))
                            .to_be_bytes()
                            .to_vec(),
                    )
                })
                .map_err(|e| self.note(io(e)))?
        };
        self.durable().await?;
        Ok(stored
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map(i64::from_be_bytes))
    }
    async fn pauses(&self, now_ms: i64) -> Result<Vec<([u8; 32], i64)>, StoreError> {
        let mut live = Vec::new();
        for (key, value) in self.meta(PAUSES_PREFIX).await? {
            let account = hex::decode(&key[PAUSES_PREFIX.len()..])
                .ok()
                .and_then(|a| <[u8; 32]>::try_from(a).ok());
            let until = <[u8; 8]>::try_from(value.as_slice())
                .ok()
                .map(i64::from_be_bytes);
            match (account, until) {
                (Some(account), Some(until)) if until > now_ms => live.push((account, until)),
                // Ended (or unreadable): gone, so the tree does not grow.
                _ => self.remove_meta(&key).await?,
            }
        }
        Ok(live)
    }
}
