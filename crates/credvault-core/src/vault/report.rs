//! Workers' reports of a provider's answers, decided: a 429 pauses the account for
//! every worker, a 401 or 403 of the version in force starts one verification per
//! interval and version, an older version's is stale, anything else is counted.
//! And the checks on a budget lease's size.

use super::*;

/// A worker's report of a provider's answer to a request made with a credential.
#[derive(Clone, Copy, Debug)]
pub struct Report {
    /// The provider's HTTP status.
    pub http_status: u32,
    /// The provider's `Retry-After`, in seconds (0: none).
    pub retry_after_seconds: u32,
    /// The credential's version the request was made with (0: not said).
    pub version: u64,
}

/// What the vault did with a report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportAction {
    /// A 429: the account is paused for every worker.
    Paused,
    /// A 401 or 403: the credential is being verified with the provider.
    Verifying,
    /// A 401 or 403 of a credential verified refused within the interval, or being verified.
    AlreadyVerified,
    /// A 401 or 403 of a version rotated since.
    Stale,
    /// Any other status: counted, nothing to do.
    Ignored,
}

impl ReportAction {
    /// The action's name in metrics and audit notes.
    pub fn name(self) -> &'static str {
        match self {
            ReportAction::Paused => "paused",
            ReportAction::Verifying => "verifying",
            ReportAction::AlreadyVerified => "already_verified",
            ReportAction::Stale => "stale",
            ReportAction::Ignored => "ignored",
        }
    }
}

/// The vault's answer to a report.
#[derive(Clone, Debug)]
pub struct ReportOutcome {
    /// What was done.
    pub action: ReportAction,
    /// The account's pause, if one holds (Unix milliseconds).
    pub paused_until_ms: Option<i64>,
    /// What was done, for the worker's log.
    pub message: String,
}

impl Report {
    /// Refuses a status that is not HTTP's, or an implausible `Retry-After` (checked
    /// before the credential is looked up).
    pub fn check(&self) -> Result<(), Error> {
        let status = self.http_status;
        if !(100..=599).contains(&status) {
            return Err(Error::invalid(format!(
                "http_status {status} is not an HTTP status (100 to 599)"
            )));
        }
        if self.retry_after_seconds > feedback::MAX_REPORTED_RETRY_AFTER_SECS {
            return Err(Error::invalid(format!(
                "retry_after_seconds {} is not a plausible Retry-After (at most {}; pauses are capped at an hour)",
                self.retry_after_seconds,
                feedback::MAX_REPORTED_RETRY_AFTER_SECS
            )));
        }
        Ok(())
    }

    /// The status's class in metrics: `401`, `403`, `429`, `2xx`, `4xx`, `5xx`.
    pub fn class(&self) -> &'static str {
        match self.http_status {
            401 => "401",
            403 => "403",
            429 => "429",
            200..=299 => "2xx",
            400..=499 => "4xx",
            500..=599 => "5xx",
            _ => "other",
        }
    }
}

/// Refuses a budget lease of no requests, or of more than one lease may take.
pub fn check_lease(count: u32) -> Result<(), Error> {
    if count == 0 || count > feedback::MAX_LEASE_REQUEST {
        return Err(Error::invalid(format!(
            "count {count} is out of range: ask for 1 to {} requests",
            feedback::MAX_LEASE_REQUEST
        )));
    }
    Ok(())
}

impl<S: Store> Vault<S> {
    /// Acts on a worker's report about `record` (already checked with
    /// [`Report::check`] and resolved within the caller's scope).
    pub async fn report(
        self: &Arc<Self>,
        record: Arc<CredentialRecord>,
        report: Report,
    ) -> Result<ReportOutcome, Error> {
        report.check()?;
        let status = report.http_status;
        let mut paused_until_ms = None;
        let (action, message) = match status {
            429 => {
                let secret = self.open(&record)?;
                let account = self.account_of(&secret);
                drop(secret);
                let until = feedback::pause_end(feedback::now_ms(), report.retry_after_seconds);
                let until = self.pause(account, until).await;
                paused_until_ms = Some(until);
                metrics::pause();
                (
                    ReportAction::Paused,
                    format!(
                        "the {} account of credential {} is paused until {} for every worker",
                        record.provider,
                        record.id,
                        record::timestamp(feedback::from_ms(until))
                    ),
                )
            }
            401 | 403 if report.version != 0 && report.version < record.version => (
                ReportAction::Stale,
                format!(
                    "credential {} is at version {}; the {status} was for version {}, rotated since",
                    record.id, record.version, report.version
                ),
            ),
            401 | 403 => self.verify_reported(record.clone()),
            _ => (
                ReportAction::Ignored,
                format!("a {status} needs nothing of the vault; counted"),
            ),
        };
        if paused_until_ms.is_none() {
            paused_until_ms = self.paused_until(&record);
        }
        metrics::report(report.class(), action.name());
        Ok(ReportOutcome {
            action,
            paused_until_ms,
            message,
        })
    }

    /// A reported 401 or 403: verifies the credential in the background unless it
    /// was found refused within the interval (by any replica) or is being verified.
    fn verify_reported(self: &Arc<Self>, record: Arc<CredentialRecord>) -> (ReportAction, String) {
        let interval = self.feedback.settings().verify_interval;
        // A recent VALID is checked again: the report is news.
        let recently = record.last_verification.as_ref().is_some_and(|v| {
            (v.status().is_rejection() || v.status() == VerificationStatus::Forbidden)
                && v.check_time
                    .and_then(|t| SystemTime::try_from(t).ok())
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age < interval)
        });
        // Per version: a rotation's new secret is verified afresh.
        let key = format!("{}@{}", record.id, record.version);
        if recently || !self.feedback.start_verification(&key) {
            return (
                ReportAction::AlreadyVerified,
                format!(
                    "credential {} was verified within {}s (or is being verified); watchers have its status",
                    record.id,
                    interval.as_secs()
                ),
            );
        }
        let message = format!(
            "credential {} is being verified with {}; watchers hear the result",
            record.id, record.provider
        );
        let vault = Arc::clone(self);
        tokio::spawn(async move {
            match vault.verify_record(&record, Source::Report).await {
                Ok((v, _)) => tracing::info!(
                    credential_id = %record.id,
                    verification = v.status().name(),
                    "a reported rejection was verified"
                ),
                Err(e) => tracing::warn!(
                    credential_id = %record.id,
                    error = %e,
                    "a reported rejection could not be verified"
                ),
            }
        });
        (ReportAction::Verifying, message)
    }
}
