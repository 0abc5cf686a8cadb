//! Last uses: who read a credential's secret last, noted in memory and written in batches.

use super::*;

impl<S: Store> Vault<S> {
    /// Notes a read of the credential's secret, in memory (see [`Vault::flush_usage`]).
    pub fn note_use(&self, id: &str, caller: &str) {
        let time = Some(record::timestamp(SystemTime::now()));
        let mut pending = self
            .pending_usage
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Most reads repeat a credential already noted: update it in place.
        match pending.get_mut(id) {
            Some(usage) => {
                usage.time = time;
                if usage.caller != caller {
                    caller.clone_into(&mut usage.caller);
                }
            }
            None => {
                let caller = caller.to_owned();
                pending.insert(id.to_owned(), Usage { time, caller });
            }
        }
    }

    /// The last read of a credential's secret, noted or stored.
    pub async fn last_use(&self, id: &str) -> Option<Usage> {
        let pending = self
            .pending_usage
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned();
        match pending {
            Some(usage) => Some(usage),
            None => self.store.usage(id).await.ok().flatten(),
        }
    }

    /// The last uses of several credentials, noted or stored, in one store query.
    pub async fn last_uses(&self, ids: &[String]) -> std::collections::HashMap<String, Usage> {
        let mut found = self.store.usages(ids).await.unwrap_or_default();
        let pending = self
            .pending_usage
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for id in ids {
            if let Some(u) = pending.get(id) {
                found.insert(id.clone(), u.clone());
            }
        }
        found
    }

    /// Writes the noted reads to the store in one batch; returns how many.
    pub async fn flush_usage(&self) -> Result<usize, Error> {
        let batch: Vec<(String, Usage)> = std::mem::take(
            &mut *self
                .pending_usage
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
        .into_iter()
        .collect();
        if batch.is_empty() {
            return Ok(0);
        }
        // One credential's bad row costs that row only (see `write_isolating`).
        let (written, failure) = crate::store::write_isolating(&batch, |group| async move {
            self.store.record_usage(&group).await
        })
        .await;
        for ((id, _), w) in batch.iter().zip(&written) {
            if let crate::store::Written::SetAside(why) = w {
                metrics::row_set_aside("usage");
                tracing::warn!(credential_id = %id, error = %why, "the database refused a last-use row; it is set aside");
            }
        }
        if let Some(e) = failure {
            return Err(e.into());
        }
        Ok(batch.len())
    }
}
