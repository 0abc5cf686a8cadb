//! History: rollback, destroying a kept version, deleted credentials (undelete within
//! the window, purge after it) and the erasable keys that make a purge final.

use super::*;

impl<S: Store> Vault<S> {
    /// Makes the secret of kept version `version` current again, as a new version
    /// (checked with the provider first when asked).
    pub async fn rollback(
        &self,
        at: &Located,
        version: u64,
        expected_version: Option<u64>,
        check: CheckOnWrite,
        by: &str,
    ) -> Result<CredentialRecord, Error> {
        let record = self.record(at).await?;
        let id = &record.id;
        let entry = match record.history.iter().find(|v| v.version == version) {
            Some(v) if v.destroyed() => {
                return Err(Error::FailedPrecondition(format!(
                    "version {version} of credential {id} was destroyed; it cannot be rolled back to"
                )))
            }
            Some(v) => v,
            None if version == record.secret_version => {
                return Err(Error::FailedPrecondition(format!(
                    "version {version} is the current secret of credential {id} already"
                )))
            }
            None => {
                return Err(Error::NotFound(format!(
                    "credential {id} keeps no version {version} (ListCredentialVersions shows those it keeps)"
                )))
            }
        };
        let plaintext = crate::sealing::open_version(&self.keyring(), &record, entry)
            .map_err(|e| damaged(id, &e))?;
        let secret = self
            .providers
            .current()
            .read(&record.provider, &plaintext)
            .map_err(|e| unreadable(&record, &e))?;
        let change = Change {
            description: None,
            expiry: Expiry::Keep,
            secret: Some(secret),
            check,
            expected_version,
            request_budget_per_minute: None,
            rollback_of: Some(version),
        };
        self.update(at, change, by).await
    }

    /// Destroys kept version `version` for good: its sealed secret leaves the
    /// record and its erasable key is erased. The current version cannot be.
    pub async fn destroy_version(
        &self,
        at: &Located,
        version: u64,
        by: &str,
    ) -> Result<SecretVersion, Error> {
        let outcome = self
            .change(&at.id, "while a version was destroyed", |current| async move {
                let id = &current.id;
                if version == current.secret_version {
                    return Err(Error::FailedPrecondition(format!(
                        "version {version} is the current secret of credential {id}; rotate or roll back first, then destroy it"
                    )));
                }
                let Some(i) = current.history.iter().position(|v| v.version == version) else {
                    return Err(Error::NotFound(format!(
                        "credential {id} keeps no version {version}"
                    )));
                };
                if current.history[i].destroyed() {
                    return Ok(Edit::Keep);
                }
                let mut next = CredentialRecord::clone(&current);
                let v = &mut next.history[i];
                v.secret = None;
                v.data_key = None;
                v.destroy_time = Some(record::timestamp(SystemTime::now()));
                by.clone_into(&mut v.destroyed_by);
                let seal_id = v.seal_id;
                next.erasable.retain(|k| k.seal_id != seal_id);
                Ok(Edit::Write(next))
            })
            .await?;
        let record = match outcome {
            Changed::Written(record) => *record,
            Changed::Kept(record) => CredentialRecord::clone(&record),
            Changed::Gone => return Err(not_found(&at.id)),
        };
        let entry = record
            .history
            .iter()
            .find(|v| v.version == version)
            .cloned()
            .ok_or_else(|| not_found(&at.id))?;
        // Erased now, or the call fails (and is safe to repeat).
        self.store
            .erase(&record.id, &[entry.seal_id])
            .await
            .map_err(|e| {
                Error::Unavailable(format!(
                    "version {version} left the record but its key could not be erased ({e}); retry"
                ))
            })?;
        Ok(entry)
    }

    /// Purges a credential in its recovery window at once (`DeleteCredential`
    /// with `force` on a deleted credential: a leaked key made unrecoverable
    /// early), within the caller's scope. `None` when no deleted credential has `id`.
    pub async fn purge_deleted(&self, caller: &Caller, id: &str) -> Result<Option<()>, Error> {
        let Some(deleted) = self.store.deleted(id).await? else {
            return Ok(None);
        };
        caller.require_scope(id, Some(&deleted.name))?;
        match self.store.purge(id).await {
            Ok(()) | Err(StoreError::NotFound(_)) => Ok(Some(())),
            Err(e) => Err(e.into()),
        }
    }

    /// Purges `id` now, best effort (the background purge retries).
    pub(super) async fn purge_now(&self, id: &str) {
        if let Err(e) = self.store.purge(id).await {
            if !matches!(e, StoreError::NotFound(_)) {
                tracing::warn!(credential_id = %id, error = %e, "a deleted credential past its purge time could not be purged yet; retried later");
            }
        }
    }

    /// Brings back a deleted credential (by id, within its recovery window) with
    /// its history, when its name is still free.
    pub async fn undelete(&self, caller: &Caller, id: &str) -> Result<CredentialRecord, Error> {
        let gone = || {
            Error::NotFound(format!(
                "no deleted credential has id {id} (never deleted, purged, or deleted with force)"
            ))
        };
        let Some(deleted) = self.store.deleted(id).await? else {
            if caller.is_scoped() {
                // The same answer as for one out of scope: ids are not probed.
                caller.require_scope(id, None)?;
            }
            return Err(gone());
        };
        caller.require_scope(id, Some(&deleted.name))?;
        // A deleted record changed in the store is not brought back (nor re-authenticated).
        self.check_mac(&deleted)?;
        // Its recovery window has ended: it is gone now, whether or not the
        // background purge has come by yet (and it goes now).
        if purge_due(&deleted, &record::timestamp(SystemTime::now())) {
            self.purge_now(id).await;
            return Err(gone());
        }
        let back = match self.store.undelete(id, &self.stamp()).await {
            Ok(back) => back,
            Err(StoreError::NameTaken(name)) => {
                return Err(Error::AlreadyExists(format!(
                    "the name {name:?} was taken by another credential after {id} was deleted; delete or rename that one first"
                )))
            }
            Err(StoreError::NotFound(_)) => return Err(gone()),
            Err(e) => return Err(e.into()),
        };
        self.published(&back, true);
        metrics::credentials_changed(1.0);
        Ok(back)
    }

    /// Up to `size` deleted credentials in the caller's scope, in id order after `after`.
    pub async fn list_deleted(
        &self,
        caller: &Caller,
        mut after: Option<String>,
        size: usize,
    ) -> Result<Page, Error> {
        let batch = LIST_SCAN_BATCH.max(size + 1);
        let mut records: Vec<CredentialRecord> = Vec::new();
        let mut more = false;
        'scan: loop {
            let items = self.store.list_deleted(after.as_deref(), batch).await?;
            let read = items.len();
            let now = record::timestamp(SystemTime::now());
            for (id, record) in items {
                // Past its purge time it is not recoverable: not listed either.
                if let Some(record) = record.ok().filter(|r| !purge_due(r, &now)) {
                    if caller.in_scope(&record.name) {
                        if records.len() == size {
                            more = true;
                            break 'scan;
                        }
                        records.push(record);
                    }
                }
                after = Some(id);
            }
            if read < batch {
                break;
            }
        }
        Ok(Page {
            records,
            usages: HashMap::new(),
            next_after: after.filter(|_| more),
        })
    }

    /// Erases erasable keys no record refers to that are older than `grace` (see
    /// [`Store::sweep_erasable`]); how many.
    pub async fn sweep_erasable(&self, grace: std::time::Duration) -> Result<u64, Error> {
        Ok(self.store.sweep_erasable(grace).await?)
    }

    /// Purges the deleted credentials whose recovery window has ended: each
    /// record and every version's erasable key go for good. How many went.
    pub async fn purge_due(&self) -> Result<usize, Error> {
        let now = record::timestamp(SystemTime::now());
        let mut after: Option<String> = None;
        let mut purged = 0;
        loop {
            let items = self
                .store
                .list_deleted(after.as_deref(), LIST_SCAN_BATCH)
                .await?;
            let read = items.len();
            for (id, record) in items {
                let due = record.as_ref().is_ok_and(|r| purge_due(r, &now));
                if due {
                    match self.store.purge(&id).await {
                        Ok(()) | Err(StoreError::NotFound(_)) => purged += 1,
                        Err(e) => {
                            tracing::warn!(credential_id = %id, error = %e, "a deleted credential could not be purged; retried later")
                        }
                    }
                }
                after = Some(id);
            }
            if read < LIST_SCAN_BATCH {
                return Ok(purged);
            }
        }
    }
}

/// Whether a deleted record's recovery window has ended at `now`.
pub(super) fn purge_due(record: &CredentialRecord, now: &Timestamp) -> bool {
    record
        .purge_time
        .is_some_and(|t| (t.seconds, t.nanos) <= (now.seconds, now.nanos))
}
