//! The vault's domain core, shared by the gRPC service, the re-verifier and the
//! CLI: sealing and opening secrets under the keyring, rewrapping data keys,
//! provider checks, and storing their results.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::SystemTime;

use zeroize::Zeroizing;

use crate::crypto::{Keyring, OpenError};
use crate::error::Error;
use crate::keys::{self, KeyringError, RewrapProgress, RewrapReport, SealCounter};
use crate::metrics::{self, Source};
use crate::provider::{ProviderHeaders, ProviderSecret, Providers};
use crate::record::{
    self, data_key_aad, direct_secret_aad, secret_aad, CredentialRecord, Usage, Verification,
    VerificationStatus, RECORD_FORMAT, RECORD_FORMAT_DIRECT,
};
use crate::store::{Store, StoreError};

/// How often a write that lost a revision race is retried.
pub const MAX_CAS_RETRIES: usize = 16;

/// What a rewrap did to one record.
enum Rewrapped {
    /// It depended on another key and now depends on this one.
    Now(String),
    /// It depended on the active key already.
    Already(String),
    /// It was deleted meanwhile.
    Gone,
}

/// The store, the keyring and the providers, with the operations on them.
pub struct Vault<S> {
    store: Arc<S>,
    keyring: RwLock<Arc<Keyring>>,
    seals: SealCounter,
    providers: Providers,
    /// Secret reads not yet written to the store (flushed in batches).
    pending_usage: Mutex<HashMap<String, Usage>>,
    /// This process's name in active-key announcements (see [`keys::announce_active`]).
    instance: String,
}

impl<S: Store> Vault<S> {
    /// A vault over an opened store whose keyring check has passed.
    pub fn new(store: Arc<S>, keyring: Keyring, seals: SealCounter, providers: Providers) -> Self {
        Vault {
            store,
            keyring: RwLock::new(Arc::new(keyring)),
            seals,
            providers,
            pending_usage: Mutex::new(HashMap::new()),
            instance: uuid::Uuid::now_v7().simple().to_string(),
        }
    }

    /// This process's name in active-key announcements.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The keyring in use.
    pub fn keyring(&self) -> Arc<Keyring> {
        Arc::clone(&self.keyring.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Switches to another keyring, once it is checked to hold every key the data needs.
    ///
    /// The new active key is announced before its key check is written, so a
    /// rewrap running meanwhile (here or on another replica) cannot retire it.
    pub async fn replace_keyring(&self, keyring: Keyring) -> Result<(), KeyringError> {
        let store = &*self.store;
        keys::announce_active(store, &self.instance, keyring.active().id()).await?;
        if let Err(e) = keys::check_keyring(store, &keyring).await {
            // Refused: the key in use stays announced.
            let current = self.keyring();
            keys::announce_active(store, &self.instance, current.active().id()).await?;
            return Err(e);
        }
        *self.keyring.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keyring);
        Ok(())
    }

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
        self.store.record_usage(&batch).await?;
        Ok(batch.len())
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Seals `secret` into `record` (whose id and provider are set) under a new
    /// data key, wrapped by the active master key.
    pub async fn seal_into(
        &self,
        record: &mut CredentialRecord,
        secret: &ProviderSecret,
    ) -> Result<(), Error> {
        let keyring = self.keyring();
        self.seals
            .count(&*self.store, keyring.active().id())
            .await?;
        let envelope = keyring.seal_envelope(
            &data_key_aad(&record.id),
            &secret_aad(&record.id, secret.provider()),
            &secret.to_plaintext(),
        );
        record.format = RECORD_FORMAT;
        record.secret = Some(envelope.secret);
        record.data_key = Some(envelope.data_key);
        Ok(())
    }

    /// Opens a record's secret; `DATA_LOSS` if it is damaged or sealed by another key.
    pub fn open(&self, record: &CredentialRecord) -> Result<ProviderSecret, Error> {
        self.open_with_plaintext(record).map(|(secret, _)| secret)
    }

    /// Opens a record's secret, also returning the opened bytes (e.g. to fingerprint them).
    pub fn open_with_plaintext(
        &self,
        record: &CredentialRecord,
    ) -> Result<(ProviderSecret, Zeroizing<Vec<u8>>), Error> {
        let plaintext = self.open_plaintext(record)?;
        let secret = ProviderSecret::from_plaintext(&record.provider, &plaintext)
            .map_err(|_| damaged(&record.id, &OpenError::Failed))?;
        Ok((secret, plaintext))
    }

    fn open_plaintext(&self, record: &CredentialRecord) -> Result<Zeroizing<Vec<u8>>, Error> {
        let keyring = self.keyring();
        let missing = || damaged(&record.id, &OpenError::Failed);
        let secret = record.secret.as_ref().ok_or_else(missing)?;
        let opened = if record.format == RECORD_FORMAT_DIRECT {
            let aad = direct_secret_aad(&record.id, &record.provider, &secret.key_id);
            keyring
                .get(&secret.key_id)
                .ok_or_else(|| OpenError::UnknownKey(secret.key_id.clone()))
                .and_then(|key| key.open(secret, &aad))
        } else {
            let data_key = record.data_key.as_ref().ok_or_else(missing)?;
            keyring.open_envelope(
                data_key,
                &data_key_aad(&record.id),
                secret,
                &secret_aad(&record.id, &record.provider),
            )
        };
        opened.map_err(|e| damaged(&record.id, &e))
    }

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
                        Ok(record) => self.rewrap_one(record).await,
                        Err(e) => Err(e.into()),
                    };
                    (id, outcome)
                }))
                .await;
            for (id, outcome) in outcomes {
                report.progress.scanned += 1;
                match outcome {
                    Ok(Rewrapped::Now(key)) => {
                        report.progress.rewrapped += 1;
                        *report.referenced.entry(key).or_default() += 1;
                    }
                    Ok(Rewrapped::Already(key)) => *report.referenced.entry(key).or_default() += 1,
                    Ok(Rewrapped::Gone) => {}
                    Err(e) => {
                        tracing::warn!(credential_id = %id, error = %e, "rewrap skipped a record");
                        // A record that cannot be opened may still need its old key.
                        if let Ok(Some(record)) = self.store.get(&id).await {
                            *report
                                .referenced
                                .entry(record.master_key_id().to_owned())
                                .or_default() += 1;
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
        let active = self.keyring().active().id().to_owned();
        report.retired = keys::retire_unused(&*self.store, &active, &report.referenced).await?;
        report.active_key_id = active;
        Ok(report)
    }

    async fn rewrap_one(&self, mut record: CredentialRecord) -> Result<Rewrapped, Error> {
        for _ in 0..MAX_CAS_RETRIES {
            let keyring = self.keyring();
            let active = keyring.active().id().to_owned();
            if record.format == RECORD_FORMAT && record.master_key_id() == active {
                return Ok(Rewrapped::Already(active));
            }
            let mut next = record.clone();
            if record.format == RECORD_FORMAT_DIRECT {
                let (secret, _) = self.open_with_plaintext(&record)?;
                self.seal_into(&mut next, &secret).await?;
            } else {
                let data_key = record
                    .data_key
                    .as_ref()
                    .ok_or_else(|| damaged(&record.id, &OpenError::Failed))?;
                self.seals.count(&*self.store, &active).await?;
                next.data_key = Some(
                    keyring
                        .rewrap(data_key, &data_key_aad(&record.id))
                        .map_err(|e| damaged(&record.id, &e))?,
                );
            }
            next.revision = record.revision + 1;
            match self.store.replace(&next, record.revision).await {
                Ok(()) => return Ok(Rewrapped::Now(next.master_key_id().to_owned())),
                Err(StoreError::Conflict(_)) => match self.store.get(&record.id).await? {
                    Some(current) => record = current,
                    None => return Ok(Rewrapped::Gone),
                },
                Err(StoreError::NotFound(_)) => return Ok(Rewrapped::Gone),
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Aborted(format!(
            "credential {} kept changing during the rewrap; run it again",
            record.id
        )))
    }

    /// The headers a worker sends with `secret`.
    pub fn headers(&self, secret: &ProviderSecret) -> ProviderHeaders<'_> {
        self.providers.headers(secret)
    }

    /// Asks the provider about `secret`, counting the outcome by `source`.
    pub async fn check(&self, secret: &ProviderSecret, source: Source) -> Verification {
        let verification = self.providers.verify(secret).await;
        metrics::verification(secret.provider(), verification.status().name(), source);
        verification
    }

    /// Checks a secret before it is written: `Ok` with the result when it may be stored.
    ///
    /// A definite rejection fails with `FAILED_PRECONDITION` naming the rejected
    /// value; an inconclusive check fails with `UNAVAILABLE` unless `best_effort`.
    pub async fn check_before_write(
        &self,
        secret: &ProviderSecret,
        best_effort: bool,
    ) -> Result<Verification, Error> {
        let verification = self.check(secret, Source::Write).await;
        let provider = secret.provider();
        let rejected = |what: &str| {
            Error::FailedPrecondition(format!(
                "{provider} rejected the {what}, so nothing was stored: {}",
                verification.message
            ))
        };
        match verification.status() {
            VerificationStatus::Valid => Ok(verification),
            VerificationStatus::ApiKeyRejected => Err(rejected("api_key")),
            VerificationStatus::AccountTokenRejected => Err(rejected("account_token")),
            VerificationStatus::Forbidden => Err(rejected("key pair (forbidden)")),
            VerificationStatus::RateLimited
            | VerificationStatus::Unreachable
            | VerificationStatus::ProviderError
            | VerificationStatus::Unspecified => {
                if best_effort {
                    Ok(verification)
                } else {
                    Err(Error::Unavailable(format!(
                        "could not verify with {provider}, so nothing was stored: {}; retry, or set verify_best_effort to store it anyway",
                        verification.message
                    )))
                }
            }
        }
    }

    /// Checks a stored credential and records the result; returns it and the record as stored.
    pub async fn verify_record(
        &self,
        record: &CredentialRecord,
        source: Source,
    ) -> Result<(Verification, CredentialRecord), Error> {
        let verification = {
            let secret = self.open(record)?;
            self.check(&secret, source).await
        };
        let stored = self.record_verification(record, &verification).await?;
        Ok((verification, stored))
    }

    /// Stores a verification on the credential, unless its secret changed meanwhile.
    pub async fn record_verification(
        &self,
        verified: &CredentialRecord,
        verification: &Verification,
    ) -> Result<CredentialRecord, Error> {
        for _ in 0..MAX_CAS_RETRIES {
            let current = self.store.get(&verified.id).await?.ok_or_else(|| {
                Error::NotFound(format!(
                    "credential {} was deleted during verification",
                    verified.id
                ))
            })?;
            if current.secret != verified.secret {
                // A rotation won the race: this result speaks of the old secret.
                return Ok(current);
            }
            let mut next = current.clone();
            next.last_verification = Some(verification.clone());
            next.revision = current.revision + 1;
            match self.store.replace(&next, current.revision).await {
                Ok(()) => return Ok(next),
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Aborted(
            "the credential kept changing while its verification was stored; retry".into(),
        ))
    }
}

fn damaged(id: &str, why: &OpenError) -> Error {
    match why {
        OpenError::UnknownKey(key_id) => Error::DataLoss(format!(
            "the secret of credential {id} cannot be decrypted: it was sealed with master key {key_id}, which is not in the keyring"
        )),
        OpenError::Failed => Error::DataLoss(format!(
            "the secret of credential {id} cannot be decrypted: the stored record is damaged or was sealed with another master key"
        )),
    }
}
