//! A worker's reports of the provider's answers, and the requests it may send:
//! pauses waited out, budgets spent from leases taken from the vault.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::HeaderMap;

use crate::{proto, Client, CredentialHeaders, Entry, Error};

/// Budgeted requests leased from the vault and not yet spent.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Lease {
    remaining: u32,
    /// When they lapse (the end of the vault's budget window, measured from
    /// when the lease was asked for, so never later than the vault meant).
    until: Option<Instant>,
}

impl Lease {
    /// Spends one leased request, if one is left and still good.
    fn spend(&mut self) -> bool {
        match self.until {
            Some(until) if self.remaining > 0 && Instant::now() < until => {
                self.remaining -= 1;
                true
            }
            _ => false,
        }
    }
}

/// What the vault did with a report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// Paused the account, started a verification, or nothing.
    pub action: proto::ReportAction,
    /// The end of the account's pause, while one is in force.
    pub paused_until: Option<SystemTime>,
    /// What was done, in words.
    pub message: String,
}

/// The delay a provider's `Retry-After` header asks for (seconds or an HTTP date).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or_default())
}

/// The rejection a credential's last verification records, as the error `headers()` gives.
pub(crate) fn rejection(headers: &CredentialHeaders) -> Option<Error> {
    use proto::VerificationStatus as S;
    let v = headers.verification()?;
    match v.status() {
        S::ApiKeyRejected | S::AccountTokenRejected | S::SecretRejected => {
            let field = if v.rejected_field.is_empty() {
                "secret"
            } else {
                v.rejected_field.as_str()
            };
            Some(Error::Rejected(format!(
                "the provider rejected credential {:?}'s {field} (HTTP {}): {}; its headers are not served until an admin rotates it",
                headers.name(),
                v.http_status,
                v.message
            )))
        }
        _ => None,
    }
}

/// What `acquire` found for a credential.
enum Step {
    Go(Arc<CredentialHeaders>),
    Paused(SystemTime),
    Refill(Arc<CredentialHeaders>),
}

impl Client {
    /// Reports the provider's answer to a request sent with `name`'s headers:
    /// the HTTP status and its `Retry-After` (see [`retry_after`]). A 429 pauses
    /// the account for every worker; a 401 or 403 has the vault verify the
    /// credential again. Reports cost no provider call; send one per answer
    /// that is not a success.
    pub async fn report(
        &self,
        name: &str,
        status: u16,
        retry_after: Option<Duration>,
    ) -> Result<Report, Error> {
        let version = match self.inner.lock().entries.get(name) {
            Some(Entry::Held(h)) => h.headers.version(),
            _ => 0,
        };
        let retry_after_seconds = retry_after.map_or(0, |d| {
            // A sub-second Retry-After still pauses for a second.
            u32::try_from(d.as_secs().max(u64::from(d.subsec_nanos() > 0))).unwrap_or(u32::MAX)
        });
        let mut request = tonic::Request::new(proto::ReportProviderResponseRequest {
            r#ref: Some(proto::report_provider_response_request::Ref::Name(
                name.to_owned(),
            )),
            http_status: u32::from(status),
            retry_after_seconds: retry_after_seconds.min(86_400),
            version,
        });
        request.set_timeout(self.inner.request_timeout);
        let answer = self
            .inner
            .vault
            .clone()
            .report_provider_response(request)
            .await?
            .into_inner();
        let paused_until = answer
            .paused_until
            .and_then(|t| SystemTime::try_from(t).ok());
        // The reporter pauses at once, before the stream says so.
        if let Some(until) = paused_until {
            if let Some(Entry::Held(h)) = self.inner.lock().entries.get_mut(name) {
                h.paused_until = Some(h.paused_until.map_or(until, |p| p.max(until)));
            }
        }
        Ok(Report {
            action: answer.action(),
            paused_until,
            message: answer.message,
        })
    }

    /// The headers of `name`, once a request may be sent with them: after the
    /// account's pause, and with one request of its budget (taken from a lease,
    /// refilled from the vault when spent). Waits at most
    /// [`crate::ClientBuilder::acquire_timeout`], then fails with
    /// [`Error::Paused`] or [`Error::BudgetSpent`], which say until when.
    pub async fn acquire(&self, name: &str) -> Result<Arc<CredentialHeaders>, Error> {
        let deadline = Instant::now() + self.inner.acquire_timeout;
        loop {
            let wait = match self.try_acquire(name).await {
                Ok(headers) => return Ok(headers),
                Err(Error::Paused { until }) => {
                    until.duration_since(SystemTime::now()).unwrap_or_default()
                }
                Err(Error::BudgetSpent { retry_after }) => retry_after,
                Err(e) => return Err(e),
            };
            let now = Instant::now();
            if now + wait > deadline {
                // Say until when, from what is known now.
                return self.try_acquire(name).await;
            }
            // A little past the boundary, so the next window has begun for the vault too.
            tokio::time::sleep(wait + Duration::from_millis(2)).await;
        }
    }

    /// [`Client::acquire`] without waiting: the headers when a request may be
    /// sent now, else [`Error::Paused`] or [`Error::BudgetSpent`] saying until when.
    pub async fn try_acquire(&self, name: &str) -> Result<Arc<CredentialHeaders>, Error> {
        match self.step(name).await? {
            Step::Go(headers) => Ok(headers),
            Step::Paused(until) => Err(Error::Paused { until }),
            Step::Refill(headers) => self.refill(name, headers).await,
        }
    }

    /// Where `name` stands: its headers (held or fetched), its pause, its lease.
    async fn step(&self, name: &str) -> Result<Step, Error> {
        let headers = self.headers(name).await?;
        let mut state = self.inner.lock();
        let Some(Entry::Held(held)) = state.entries.get_mut(name) else {
            // Changed since the read above: the headers just read still stand.
            return Ok(Step::Go(headers));
        };
        if let Some(until) = held.paused_until.filter(|u| *u > SystemTime::now()) {
            return Ok(Step::Paused(until));
        }
        if held.budget == 0 || held.lease.spend() {
            return Ok(Step::Go(headers));
        }
        Ok(Step::Refill(headers))
    }

    /// Takes a new lease from the vault and spends one request of it.
    async fn refill(
        &self,
        name: &str,
        headers: Arc<CredentialHeaders>,
    ) -> Result<Arc<CredentialHeaders>, Error> {
        let mut request = tonic::Request::new(proto::AcquireRequestTokensRequest {
            r#ref: Some(proto::acquire_request_tokens_request::Ref::Id(
                headers.credential_id().to_owned(),
            )),
            count: self.inner.lease_size,
        });
        request.set_timeout(self.inner.request_timeout);
        let asked = Instant::now();
        let grant = self
            .inner
            .vault
            .clone()
            .acquire_request_tokens(request)
            .await?
            .into_inner();
        let paused_until = grant
            .paused_until
            .and_then(|t| SystemTime::try_from(t).ok());
        let mut state = self.inner.lock();
        if let Some(Entry::Held(held)) = state.entries.get_mut(name) {
            held.budget = grant.request_budget_per_minute;
            if let Some(until) = paused_until {
                held.paused_until = Some(until);
            }
            if grant.granted > 0 {
                let until = asked + Duration::from_millis(u64::from(grant.valid_for_ms));
                let lease = &mut held.lease;
                let still = lease.until.is_some_and(|u| Instant::now() < u);
                lease.remaining = grant.granted + if still { lease.remaining } else { 0 };
                lease.until = Some(until);
                lease.spend();
                return Ok(headers);
            }
        }
        if grant.granted > 0 {
            return Ok(headers);
        }
        match paused_until {
            Some(until) => Err(Error::Paused { until }),
            None => Err(Error::BudgetSpent {
                retry_after: Duration::from_millis(u64::from(grant.retry_after_ms.max(1))),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(http::header::RETRY_AFTER, "30".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(30)));
        h.insert(
            http::header::RETRY_AFTER,
            "Sun, 06 Nov 1994 08:49:37 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO), "a date in the past");
        let soon = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(90));
        h.insert(http::header::RETRY_AFTER, soon.parse().unwrap());
        let d = retry_after(&h).unwrap();
        assert!(
            d > Duration::from_secs(85) && d <= Duration::from_secs(90),
            "{d:?}"
        );
        h.insert(http::header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn a_lease_spends_what_it_holds_until_it_lapses() {
        let mut lease = Lease::default();
        assert!(!lease.spend());
        lease.remaining = 2;
        lease.until = Some(Instant::now() + Duration::from_secs(10));
        assert!(lease.spend());
        assert!(lease.spend());
        assert!(!lease.spend());
        lease.remaining = 5;
        lease.until = Some(Instant::now() - Duration::from_millis(1));
        assert!(!lease.spend(), "lapsed");
    }
}
