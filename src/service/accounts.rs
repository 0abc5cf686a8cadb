//! Workers' reports of the provider's answers, and the account's budget leases.

use super::*;

impl<S: Store> VaultService<S> {
    /// A worker's report of a provider's answer (see [`crate::feedback`]); the vault decides.
    pub(super) async fn report(
        &self,
        call: Arc<Call>,
        req: api::ReportProviderResponseRequest,
    ) -> Result<api::ReportProviderResponseResponse, Error> {
        let report = Report {
            http_status: req.http_status,
            retry_after_seconds: req.retry_after_seconds,
            version: req.version,
        };
        report.check()?;
        let record = self.resolve(&call, &required_ref(req.r#ref)?).await?;
        let outcome = self.vault.report(record, report).await?;
        let name = outcome.action.name();
        call.note(if report.retry_after_seconds > 0 {
            format!(
                "reported {} (retry-after {}s): {name}",
                report.http_status, report.retry_after_seconds
            )
        } else {
            format!("reported {}: {name}", report.http_status)
        });
        let action = match outcome.action {
            ReportAction::Paused => api::ReportAction::Paused,
            ReportAction::Verifying => api::ReportAction::Verifying,
            ReportAction::AlreadyVerified => api::ReportAction::AlreadyVerified,
            ReportAction::Stale => api::ReportAction::Stale,
            ReportAction::Ignored => api::ReportAction::Ignored,
        };
        Ok(api::ReportProviderResponseResponse {
            action: action as i32,
            paused_until: outcome.paused_until_ms.map(timestamp_ms),
            message: outcome.message,
        })
    }

    /// A lease of requests from the credential's account budget.
    pub(super) async fn acquire(
        &self,
        call: Arc<Call>,
        req: api::AcquireRequestTokensRequest,
    ) -> Result<api::AcquireRequestTokensResponse, Error> {
        vault::check_lease(req.count)?;
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
