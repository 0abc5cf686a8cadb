//! Verification against the provider's API: on demand, before a write, and recorded.

use super::*;

impl<S: Store> Vault<S> {
    /// Asks the provider about `secret`, counting the outcome by `source`.
    pub async fn check(&self, secret: &ProviderSecret, source: Source) -> Verification {
        let verification = self.providers.verify(secret).await;
        metrics::verification(secret.provider(), verification.status().name(), source);
        verification
    }

    /// Checks a secret before it is written when `check` asks to: the result to store with it.
    pub(super) async fn check_on_write(
        &self,
        secret: &ProviderSecret,
        check: CheckOnWrite,
    ) -> Result<Option<Verification>, Error> {
        match check {
            CheckOnWrite::No => Ok(None),
            CheckOnWrite::Strict => self.check_before_write(secret, false).await.map(Some),
            CheckOnWrite::BestEffort => self.check_before_write(secret, true).await.map(Some),
        }
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
            VerificationStatus::ApiKeyRejected
            | VerificationStatus::AccountTokenRejected
            | VerificationStatus::SecretRejected => Err(rejected(
                Some(verification.rejected_field.as_str())
                    .filter(|f| !f.is_empty())
                    .unwrap_or("secret"),
            )),
            VerificationStatus::Forbidden => Err(rejected("secret (forbidden)")),
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
        let outcome = self
            .change(
                &verified.id,
                "while its verification was stored",
                |current| async move {
                    if current.secret != verified.secret {
                        // A rotation won the race: this result speaks of the old secret.
                        return Ok(Edit::Keep);
                    }
                    let mut next = CredentialRecord::clone(&current);
                    next.last_verification = Some(verification.clone());
                    Ok(Edit::Write(next))
                },
            )
            .await?;
        match outcome {
            Changed::Kept(current) => Ok(CredentialRecord::clone(&current)),
            Changed::Written(next) => Ok(*next),
            Changed::Gone => Err(Error::NotFound(format!(
                "credential {} was deleted during verification",
                verified.id
            ))),
        }
    }
}
