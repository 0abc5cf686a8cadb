//! Rewrap: every data key sealed again under the active master key, online, in batches.

use super::*;

impl<S: Store> Vault<S> {
    /// Re-seals every record's data key under the active master key, online, in
    /// batches of `batch` (the records of a batch concurrently, so one fsync
    /// covers many). `progress` hears after each batch and stops the rewrap by
    /// returning false. At the end, drops the key checks of master keys no record
    /// depends on any more.
    pub async fn rewrap(
        &self,
        batch: usize,
        mut progress: impl FnMut(&RewrapProgress) -> bool,
    ) -> Result<RewrapReport, Error> {
        let mut report = RewrapReport {
            progress: RewrapProgress {
                total: self.store.count().await? as u64,
                ..Default::default()
            },
            ..Default::default()
        };
        let mut after: Option<String> = None;
        loop {
            let page = self.store.list(after.as_deref(), batch.max(1)).await?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            let outcomes =
                futures_util::future::join_all(page.into_iter().map(|(id, item)| async move {
                    let outcome = match item {
                        Ok(_) => self.rewrap_one(&id).await,
                        Err(e) => Err(e.into()),
                    };
                    (id, outcome)
                }))
                .await;
            for (id, outcome) in outcomes {
                report.progress.scanned += 1;
                match outcome {
                    Ok(Rewrapped::Now(keys)) => {
                        report.progress.rewrapped += 1;
                        for key in keys {
                            *report.referenced.entry(key).or_default() += 1;
                        }
                    }
                    Ok(Rewrapped::Already(keys)) => {
                        for key in keys {
                            *report.referenced.entry(key).or_default() += 1;
                        }
                    }
                    Ok(Rewrapped::Gone) => {}
                    Err(e) => {
                        tracing::warn!(credential_id = %id, error = %e, "rewrap skipped a record");
                        // A record that cannot be opened may still need its old keys.
                        if let Ok(Some(record)) = self.store.get(&id).await {
                            for key in record.master_key_ids() {
                                *report.referenced.entry(key).or_default() += 1;
                            }
                        } else {
                            *report.referenced.entry("unknown".into()).or_default() += 1;
                        }
                        report.progress.failed.push(id);
                    }
                }
            }
            if !progress(&report.progress) {
                return Err(Error::Aborted(
                    "the rewrap was stopped; run it again to finish (it is safe to repeat)".into(),
                ));
            }
            tokio::task::yield_now().await;
        }
        // Deleted credentials too: a key may retire only when nothing recoverable needs it.
        self.rewrap_deleted(batch, &mut report).await?;
        let active = self.keyring().active().id().to_owned();
        report.retired = keys::retire_unused(&*self.store, &active, &report.referenced).await?;
        report.active_key_id = active;
        Ok(report)
    }

    pub(super) async fn rewrap_one(&self, id: &str) -> Result<Rewrapped, Error> {
        let outcome = self
            .change(
                id,
                "during the rewrap (run it again)",
                |record| async move {
                    match self.sealer.rewrap(&*self.store, &record).await {
                        Ok(Some(next)) => Ok(Edit::Write(next)),
                        Ok(None) => Ok(Edit::Keep),
                        Err(SealError::Open(e)) => Err(damaged(&record.id, &e)),
                        Err(SealError::Refused(e)) => Err(e.into()),
                    }
                },
            )
            .await?;
        Ok(match outcome {
            Changed::Kept(record) => Rewrapped::Already(record.master_key_ids()),
            Changed::Written(record) => Rewrapped::Now(record.master_key_ids()),
            Changed::Gone => Rewrapped::Gone,
        })
    }

    /// Rewraps the deleted credentials, counting the keys they depend on.
    pub(super) async fn rewrap_deleted(
        &self,
        batch: usize,
        report: &mut RewrapReport,
    ) -> Result<(), Error> {
        let mut after: Option<String> = None;
        loop {
            let page = self
                .store
                .list_deleted(after.as_deref(), batch.max(1))
                .await?;
            let Some((last, _)) = page.last() else {
                return Ok(());
            };
            after = Some(last.clone());
            for (id, item) in page {
                let keys = match item {
                    Ok(record) => match self.sealer.rewrap(&*self.store, &record).await {
                        Ok(Some(mut next)) => {
                            crate::sealing::authenticate(&self.keyring(), &mut next);
                            match self.store.replace_deleted(&next, record.revision).await {
                                Ok(()) => next.master_key_ids(),
                                Err(e) => {
                                    tracing::warn!(credential_id = %id, error = %e, "rewrap skipped a deleted record");
                                    record.master_key_ids()
                                }
                            }
                        }
                        Ok(None) => record.master_key_ids(),
                        Err(e) => {
                            tracing::warn!(credential_id = %id, error = %e, "rewrap skipped a deleted record");
                            record.master_key_ids()
                        }
                    },
                    Err(_) => vec!["unknown".to_owned()],
                };
                for key in keys {
                    *report.referenced.entry(key).or_default() += 1;
                }
            }
        }
    }
}
