//! Workers' reports of the provider's answers, and the account's budget leases.

use super::*;

impl<S: Store> VaultService<S> {
    /// A worker's report of a provider's answer (see [`crate::feedback`]).
    pub(super) async fn report(
        &self,
        call: Arc<Call>,
        req: api::ReportProviderResponseRequest,
    ) -> Result<api::ReportProviderResponseResponse, Error> {
        let status = req.http_status;
        if !(100..=599).contains(&status) {
            return Err(Error::invalid(format!(
                "http_status {status} is not an HTTP status (100 to 599)"
            )));
        }
        if req.retry_after_seconds > MAX_REPORTED_RETRY_AFTER_SECS {
            return Err(Error::invalid(format!(
                "retry_after_seconds {} is not a plausible Retry-After (at most {MAX_REPORTED_RETRY_AFTER_SECS}; pauses are capped at an hour)",
                req.retry_after_seconds
            )));
        }
        let record = self.resolve(&call, &required_ref(req.r#ref)?).await?;
        let class = match status {
            401 => "401",
            403 => "403",
            429 => "429",
            200..=299 => "2xx",
            400..=499 => "4xx",
            500..=599 => "5xx",
            _ => "other",
        };
        let mut paused_until_ms = None;
        let (action, message) = match status {
            429 => {
                let secret = self.vault.open(&record)?;
                let account = self.vault.account_of(&secret);
                drop(secret);
                let until = feedback::pause_end(feedback::now_ms(), req.retry_after_seconds);
                let until = self.vault.pause(account, until).await;
                paused_until_ms = Some(until);
                metrics::pause();
                (
                    api::ReportAction::Paused,
                    format!(
                        "the {} account of credential {} is paused until {} for every worker",
                        record.provider,
                        record.id,
                        rfc3339(until)
                    ),
                )
            }
            401 | 403 if req.version != 0 && req.version < record.version => (
                api::ReportAction::Stale,
                format!(
                    "credential {} is at version {}; the {status} was for version {}, rotated since",
                    record.id, record.version, req.version
                ),
            ),
            401 | 403 => {
                let interval = self.vault.feedback().settings().verify_interval;
                // Already found refused within the interval (by any replica): nothing
                // new to learn. A recent VALID is checked again: the report is news.
                let recently = record.last_verification.as_ref().is_some_and(|v| {
                    (v.status().is_rejection() || v.status() == VerificationStatus::Forbidden)
                        && v.check_time
                            .and_then(|t| SystemTime::try_from(t).ok())
                            .and_then(|t| t.elapsed().ok())
                            .is_some_and(|age| age < interval)
                });
                // Per version: a rotation's new secret is verified afresh.
                let key = format!("{}@{}", record.id, record.version);
                if recently || !self.vault.feedback().start_verification(&key) {
                    (
                        api::ReportAction::AlreadyVerified,
                        format!(
                            "credential {} was verified within {}s (or is being verified); watchers have its status",
                            record.id,
                            interval.as_secs()
                        ),
                    )
                } else {
                    let vault = Arc::clone(&self.vault);
                    let reported = Arc::clone(&record);
                    tokio::spawn(async move {
                        match vault.verify_record(&reported, metrics::Source::Report).await {
                            Ok((v, _)) => tracing::info!(
                                credential_id = %reported.id,
                                verification = v.status().name(),
                                "a reported rejection was verified"
                            ),
                            Err(e) => tracing::warn!(
                                credential_id = %reported.id,
                                error = %e,
                                "a reported rejection could not be verified"
                            ),
                        }
                    });
                    (
                        api::ReportAction::Verifying,
                        format!(
                            "credential {} is being verified with {}; watchers hear the result",
                            record.id, record.provider
                        ),
                    )
                }
            }
            _ => (
                api::ReportAction::Ignored,
                format!("a {status} needs nothing of the vault; counted"),
            ),
        };
        if paused_until_ms.is_none() {
            paused_until_ms = self.vault.paused_until(&record);
        }
        let action_name = match action {
            api::ReportAction::Paused => "paused",
            api::ReportAction::Verifying => "verifying",
            api::ReportAction::AlreadyVerified => "already_verified",
            api::ReportAction::Stale => "stale",
            api::ReportAction::Ignored | api::ReportAction::Unspecified => "ignored",
        };
        metrics::report(class, action_name);
        call.note(if req.retry_after_seconds > 0 {
            format!(
                "reported {status} (retry-after {}s): {action_name}",
                req.retry_after_seconds
            )
        } else {
            format!("reported {status}: {action_name}")
        });
        Ok(api::ReportProviderResponseResponse {
            action: action as i32,
            paused_until: paused_until_ms.map(timestamp_ms),
            message,
        })
    }

    /// A lease of requests from the credential's account budget.
    pub(super) async fn acquire(
        &self,
        call: Arc<Call>,
        req: api::AcquireRequestTokensRequest,
    ) -> Result<api::AcquireRequestTokensResponse, Error> {
        if req.count == 0 || req.count > MAX_LEASE_REQUEST {
            return Err(Error::invalid(format!(
                "count {} is out of range: ask for 1 to {MAX_LEASE_REQUEST} requests",
                req.count
            )));
        }
        let record = self.resolve(&call, &required_ref(req.r#ref)?).await?;
        let grant = self.vault.take_tokens(&record, req.count).await?;
        Ok(api::AcquireRequestTokensResponse {
            granted: grant.granted,
            valid_for_ms: grant.valid_for_ms,
            retry_after_ms: grant.retry_after_ms,
            paused_until: grant.paused_until_ms.map(timestamp_ms),
            request_budget_per_minute: record.request_budget_per_minute,
        })
    }
}
