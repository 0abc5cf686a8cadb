//! Create, update, delete, list and read a credential's headers: the operations on
//! the current version, each one check-and-set loop ([`Vault::change`]).

use super::*;

impl<S: Store> Vault<S> {
    /// Creates a credential in the caller's scope, its secret checked first when
    /// asked, sealed under a new data key.
    pub async fn create(
        &self,
        caller: &Caller,
        new: NewCredential,
    ) -> Result<CredentialRecord, Error> {
        caller.require_scope(&new.name, Some(&new.name))?;
        if self.store.id_for_name(&new.name).await?.is_some() {
            // Fail before asking the provider; the insert below still guards races.
            return Err(StoreError::NameTaken(new.name).into());
        }
        let verification = self.check_on_write(&new.secret, new.check).await?;
        let now = Some(record::timestamp(SystemTime::now()));
        let mut record = CredentialRecord {
            format: RECORD_FORMAT,
            id: crate::validate::new_id(),
            name: new.name,
            description: new.description,
            provider: new.secret.provider().to_owned(),
            api_key_hint: new.secret.hint(),
            create_time: now,
            update_time: now,
            version: 1,
            last_verification: verification,
            expire_time: new.expire_time,
            revision: 1,
            secret: None,
            data_key: None,
            secret_fields: Vec::new(),
            request_budget_per_minute: new.request_budget_per_minute,
            secret_version: 1,
            secret_create_time: now,
            secret_created_by: caller.name.clone(),
            ..Default::default()
        };
        self.seal_into(&mut record, &new.secret).await?;
        crate::sealing::authenticate(&self.keyring(), &mut record);
        if let Err(e) = self.store.insert(&record).await {
            self.erase_quietly(&record.id, &[record.seal_id]).await;
            return Err(e.into());
        }
        self.published(&record, false);
        metrics::credentials_changed(1.0);
        Ok(record)
    }

    /// Updates a located credential as a new version; a new secret is checked
    /// first when asked, and is unverified otherwise. A new secret keeps the one it
    /// replaces as a version (sealed as it was), up to `--keep-versions`; older
    /// ones are destroyed. `by` names the caller (kept with the version).
    pub async fn update(
        &self,
        at: &Located,
        change: Change,
        by: &str,
    ) -> Result<CredentialRecord, Error> {
        let verification = match &change.secret {
            Some(secret) => self.check_on_write(secret, change.check).await?,
            None => None,
        };
        let (change, verification) = (&change, &verification);
        // Erasable keys made by attempts of the loop below, and those the written
        // record dropped: erased once the outcome is known.
        let made: Mutex<Vec<u64>> = Mutex::default();
        let dropped: Mutex<Vec<u64>> = Mutex::default();
        let (made_ref, dropped_ref) = (&made, &dropped);
        let outcome = self
            .change(&at.id, "while it was updated", |current| async move {
                if let Some(expected) = change.expected_version {
                    if expected != current.version {
                        return Err(StoreError::VersionMismatch {
                            id: current.id.clone(),
                            expected,
                            actual: current.version,
                        }
                        .into());
                    }
                }
                let mut next = CredentialRecord::clone(&current);
                if let Some(d) = &change.description {
                    next.description.clone_from(d);
                }
                match change.expiry {
                    Expiry::Keep => {}
                    Expiry::Set(t) => next.expire_time = Some(t),
                    Expiry::Clear => next.expire_time = None,
                }
                if let Some(secret) = &change.secret {
                    if secret.provider() != current.provider {
                        return Err(Error::FailedPrecondition(format!(
                            "credential {} holds a {} secret, not a {} one; create a new credential instead",
                            current.id,
                            current.provider,
                            secret.provider()
                        )));
                    }
                    if let Some(v) = change.rollback_of {
                        if !current.history.iter().any(|h| h.version == v && !h.destroyed()) {
                            return Err(Error::FailedPrecondition(format!(
                                "version {v} of credential {} was destroyed or dropped meanwhile; it cannot be rolled back to",
                                current.id
                            )));
                        }
                    }
                    let kept = self.retire_secret(&current, &mut next, made_ref).await?;
                    next.history.insert(0, kept);
                    next.secret_version = current.version + 1;
                    next.secret_create_time = Some(record::timestamp(SystemTime::now()));
                    by.clone_into(&mut next.secret_created_by);
                    self.seal_into(&mut next, secret).await?;
                    lock(made_ref).push(next.seal_id);
                    next.api_key_hint = secret.hint();
                    next.last_verification.clone_from(verification);
                    // A rollback not verified now carries forward what was last
                    // verified of that secret (ListCredentialVersions shows it too).
                    if let (None, Some(v)) = (verification, change.rollback_of) {
                        next.last_verification = current
                            .history
                            .iter()
                            .find(|h| h.version == v)
                            .and_then(|h| h.last_verification.clone());
                    }
                    let keep = self.keep_versions.saturating_sub(1);
                    let gone: Vec<u64> = if next.history.len() > keep {
                        next.history.drain(keep..).map(|v| v.seal_id).collect()
                    } else {
                        Vec::new()
                    };
                    next.erasable.retain(|k| !gone.contains(&k.seal_id));
                    *lock(dropped_ref) = gone;
                }
                if let Some(budget) = change.request_budget_per_minute {
                    next.request_budget_per_minute = budget;
                }
                let budget_only = change.description.is_none()
                    && change.secret.is_none()
                    && matches!(change.expiry, Expiry::Keep);
                if budget_only {
                    // No header changes: the version stays, watchers still hear the budget.
                    return Ok(Edit::Write(next));
                }
                Ok(Edit::NewVersion(next))
            })
            .await;
        let made = made.into_inner().unwrap_or_else(PoisonError::into_inner);
        let dropped = dropped.into_inner().unwrap_or_else(PoisonError::into_inner);
        match outcome {
            Ok(Changed::Written(record)) => {
                let kept = record.seal_ids();
                let erase: Vec<u64> = made
                    .into_iter()
                    .filter(|s| !kept.contains(s))
                    .chain(dropped)
                    .collect();
                self.erase_quietly(&record.id, &erase).await;
                Ok(*record)
            }
            Ok(Changed::Kept(record)) => Ok(CredentialRecord::clone(&record)),
            Ok(Changed::Gone) => {
                self.erase_quietly(&at.id, &made).await;
                Err(not_found(&at.id))
            }
            Err(e) => {
                self.erase_quietly(&at.id, &made).await;
                Err(e)
            }
        }
    }

    /// The current secret of `current` as a kept version for `next`: moved as it
    /// is (format 3), or sealed anew as format 3 for its version (older formats).
    pub(super) async fn retire_secret(
        &self,
        current: &CredentialRecord,
        next: &mut CredentialRecord,
        made: &Mutex<Vec<u64>>,
    ) -> Result<SecretVersion, Error> {
        let version = if current.secret_version == 0 {
            current.version
        } else {
            current.secret_version
        };
        let mut kept = SecretVersion {
            version,
            create_time: current.secret_create_time.or(current.update_time),
            created_by: current.secret_created_by.clone(),
            api_key_hint: current.api_key_hint.clone(),
            last_verification: current.last_verification.clone(),
            secret: current.secret.clone(),
            data_key: current.data_key.clone(),
            seal_id: current.seal_id,
            secret_fields: current.secret_fields.clone(),
            destroy_time: None,
            destroyed_by: String::new(),
            // Kept as current was sealed (format 4), or sealed anew as format 4 below.
            format: RECORD_FORMAT,
        };
        if current.format != RECORD_FORMAT {
            let plaintext = self
                .sealer
                .open(current)
                .map_err(|e| damaged(&current.id, &e))?;
            let (key, (secret, data_key)) = self
                .sealer
                .seal_version(
                    &*self.store,
                    &current.id,
                    &current.name,
                    &current.provider,
                    version,
                    &plaintext,
                )
                .await?;
            lock(made).push(key.seal_id);
            kept.seal_id = key.seal_id;
            kept.secret = Some(secret);
            kept.data_key = Some(data_key);
            next.erasable.push(key);
        }
        Ok(kept)
    }

    /// Erases erasable keys; a failure is logged (the sled store erases what no
    /// record refers to at its next start).
    pub(super) async fn erase_quietly(&self, id: &str, seal_ids: &[u64]) {
        if seal_ids.is_empty() {
            return;
        }
        if let Err(e) = self.store.erase(id, seal_ids).await {
            tracing::warn!(credential_id = %id, error = %e, "erasable keys could not be erased now");
        }
    }

    /// Deletes a located credential, if it is at `expected_version` when one is
    /// given: at once it is served no more and its name is free; it stays
    /// recoverable by id until the returned purge time, unless `force` (or a zero
    /// recovery window) deletes it for good, erasing every version's key.
    pub async fn delete(
        &self,
        at: &Located,
        expected_version: Option<u64>,
        force: bool,
        by: &str,
    ) -> Result<Option<prost_types::Timestamp>, Error> {
        // The name tells watchers of the name; the record may be gone already.
        let deleting = self.record(at).await.ok();
        let name = deleting.as_ref().map(|r| r.name.clone());
        let purge_time = if force || self.recovery_window.is_zero() {
            self.store.delete(&at.id, expected_version).await?;
            None
        } else {
            let now = SystemTime::now();
            let deletion = Deletion {
                delete_time: record::timestamp(now),
                purge_time: record::timestamp(now + self.recovery_window),
                deleted_by: by.to_owned(),
            };
            match self
                .store
                .delete_keeping(&at.id, expected_version, &deletion, &self.stamp())
                .await
            {
                Ok(kept) => kept.purge_time,
                // A record too damaged to read cannot be brought back: it goes for good.
                Err(StoreError::Corrupt { .. }) if expected_version.is_none() => {
                    self.store.delete(&at.id, None).await?;
                    None
                }
                Err(e) => return Err(e.into()),
            }
        };
        // Its live row, put back later, is older than this deletion: refused.
        if let Some(r) = &deleting {
            self.mark(&r.id, r.revision + 1, false);
        }
        self.hub
            .changed(&at.id, name.as_deref().unwrap_or_default());
        metrics::credentials_changed(-1.0);
        Ok(purge_time)
    }

    /// Up to `size` records in the caller's scope that pass `filter`, in id
    /// order after `after`, with their last uses.
    pub async fn list(
        &self,
        caller: &Caller,
        filter: &ListFilter,
        mut after: Option<String>,
        size: usize,
    ) -> Result<Page, Error> {
        let batch = LIST_SCAN_BATCH.max(size + 1);
        let mut records: Vec<CredentialRecord> = Vec::new();
        let mut more = false;
        'scan: loop {
            let items = self.store.list(after.as_deref(), batch).await?;
            let read = items.len();
            for (id, record) in items {
                // A record changed behind the vault's back is left out (and logged).
                let record = record
                    .map_err(Error::from)
                    .and_then(|r| self.check_mac(&r).map(|()| r));
                match record {
                    Ok(record) if filter.matches(&record) && caller.in_scope(&record.name) => {
                        if records.len() == size {
                            more = true;
                            break 'scan;
                        }
                        records.push(record);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!(credential_id = %id, error = %e, "unreadable record left out of a listing");
                    }
                }
                after = Some(id);
            }
            if read < batch {
                break;
            }
        }
        // Last uses for the whole page at once (one query on PostgreSQL, not one per row).
        let ids: Vec<String> = records.iter().map(|r| r.id.clone()).collect();
        let usages = self.last_uses(&ids).await;
        Ok(Page {
            records,
            usages,
            next_after: after.filter(|_| more),
        })
    }

    /// Up to `limit` records of any scope in id order after `after` (for sweeps).
    pub async fn scan(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<crate::store::ListItem>, Error> {
        Ok(self.store.list(after, limit).await?)
    }

    /// Opens a record's secret for `reader`: the headers to send and the opened
    /// bytes (to fingerprint for the audit trail); notes the read as a last use.
    pub fn read_headers(
        &self,
        record: &CredentialRecord,
        reader: &str,
    ) -> Result<HeadersRead, Error> {
        let (secret, plaintext) = self.open_with_plaintext(record)?;
        let headers = self.providers.current().headers(&secret).ok_or_else(|| {
            unreadable(
                record,
                &SecretFormatError::UnknownProvider(record.provider.clone()),
            )
        })?;
        let paused_until_ms = self.paused_for(&secret);
        self.note_use(&record.id, reader);
        Ok(HeadersRead {
            headers,
            plaintext,
            paused_until_ms,
        })
    }
}
