//! The vault's domain core, shared by the gRPC service and the re-verifier:
//! sealing and opening secrets, provider checks, and storing their results.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use zeroize::Zeroizing;

use crate::crypto::{MasterKey, Sealed};
use crate::error::Error;
use crate::metrics::{self, Source};
use crate::provider::{ProviderHeaders, ProviderSecret, Providers};
use crate::record::{self, secret_aad, CredentialRecord, Usage, Verification, VerificationStatus};
use crate::store::{Store, StoreError};

/// How often a write that lost a version race is retried.
pub const MAX_CAS_RETRIES: usize = 16;

/// The store, the master key and the providers, with the operations on them.
pub struct Vault<S> {
    store: Arc<S>,
    key: Arc<MasterKey>,
    providers: Providers,
    /// Secret reads not yet written to the store (flushed in batches).
    pending_usage: Mutex<HashMap<String, Usage>>,
}

impl<S: Store> Vault<S> {
    /// A vault over an opened store whose key check has passed.
    pub fn new(store: Arc<S>, key: Arc<MasterKey>, providers: Providers) -> Self {
        Vault {
            store,
            key,
            providers,
            pending_usage: Mutex::new(HashMap::new()),
        }
    }

    /// Notes a read of the credential's secret, in memory (see [`Vault::flush_usage`]).
    pub fn note_use(&self, id: &str, caller: &str) {
        let usage = Usage {
            time: Some(record::timestamp(SystemTime::now())),
            caller: caller.to_owned(),
        };
        self.pending_usage
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.to_owned(), usage);
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

    /// Seals `secret` for the record `id` under the master key.
    pub fn seal(&self, id: &str, secret: &ProviderSecret) -> Sealed {
        let aad = secret_aad(id, secret.provider(), self.key.id());
        self.key.seal(&aad, &secret.to_plaintext())
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
        let damaged = || {
            Error::DataLoss(format!(
                "the secret of credential {} cannot be decrypted: the stored record is damaged or was sealed with another master key",
                record.id
            ))
        };
        let sealed = record.secret.as_ref().ok_or_else(damaged)?;
        let aad = secret_aad(&record.id, &record.provider, &sealed.key_id);
        let plaintext = self.key.open(sealed, &aad).map_err(|_| damaged())?;
        let secret =
            ProviderSecret::from_plaintext(&record.provider, &plaintext).map_err(|_| damaged())?;
        Ok((secret, plaintext))
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
            match self.store.replace(&next, current.version).await {
                Ok(()) => return Ok(next),
                Err(StoreError::VersionMismatch { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Aborted(
            "the credential kept changing while its verification was stored; retry".into(),
        ))
    }
}
