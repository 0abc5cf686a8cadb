//! A provider's API client: its base URL, the shared HTTP client, and the
//! verification outcomes every HTTP API shares (unreachable, 429, unexpected).

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::StatusCode;
use std::time::Duration;
use zeroize::Zeroizing;

use super::ProviderError;
use crate::record::{Verification, VerificationStatus as Status};

/// The longest pause a `Retry-After` can ask for: one bad header must not hold
/// a credential's checks back for days.
pub const MAX_RETRY_AFTER_SECONDS: u32 = 3600;

/// One provider's API, as verification reaches it.
#[derive(Debug)]
pub struct Client {
    provider: String,
    http: reqwest::Client,
    base_url: String,
    timeout: Duration,
}

impl Client {
    /// A client for `provider`'s API at `base_url` (http or https, no query).
    pub fn new(
        provider: &str,
        http: reqwest::Client,
        base_url: &str,
        timeout: Duration,
    ) -> Result<Self, ProviderError> {
        let bad = |why: String| ProviderError::BaseUrl {
            provider: provider.to_owned(),
            url: base_url.to_owned(),
            why,
        };
        let url = reqwest::Url::parse(base_url).map_err(|e| bad(format!("is not a url: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.query().is_some() {
            return Err(bad("must be an http(s) url without a query".into()));
        }
        Ok(Client {
            provider: provider.to_owned(),
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
            timeout,
        })
    }

    /// The API base URL workers send requests to.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// `GET {base}{path}` with `headers` (whose secret values the provider marked sensitive).
    pub async fn get(&self, path: &str, headers: HeaderMap) -> reqwest::Result<reqwest::Response> {
        self.request(reqwest::Method::GET, path, headers).await
    }

    /// `{method} {base}{path}` with `headers`, without a body.
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        headers: HeaderMap,
    ) -> reqwest::Result<reqwest::Response> {
        self.http
            .request(method, format!("{}{path}", self.base_url))
            .headers(headers)
            .send()
            .await
    }

    /// The outcome of a request that got no answer.
    pub fn unreachable(&self, err: &reqwest::Error) -> Verification {
        let provider = &self.provider;
        let message = if err.is_timeout() {
            format!("{provider} did not answer within {:?}", self.timeout)
        } else if err.is_connect() {
            format!("could not connect to {provider} at {}", self.base_url)
        } else {
            format!("the request to {provider} failed before an answer came")
        };
        Verification::now(Status::Unreachable, 0, message)
    }

    /// The outcome of a 429, with its `Retry-After` (seconds) capped at an hour.
    pub fn rate_limited(&self, headers: &HeaderMap) -> Verification {
        self.rate_limited_by(headers, RETRY_AFTER.as_str(), 429)
    }

    /// The outcome of a rate limit (HTTP `code`), its delay in seconds read
    /// from the header `retry_header` and capped at an hour.
    pub fn rate_limited_by(
        &self,
        headers: &HeaderMap,
        retry_header: &str,
        code: u16,
    ) -> Verification {
        let provider = &self.provider;
        let asked = headers
            .get(retry_header)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let seconds = asked.map(|s| {
            u32::try_from(s.min(u64::from(MAX_RETRY_AFTER_SECONDS)))
                .unwrap_or(MAX_RETRY_AFTER_SECONDS)
        });
        let message = match (asked, seconds) {
            (Some(a), Some(s)) if a > u64::from(s) => format!(
                "{provider} rate limited the check ({code}); retry after {s} s (it asked for {a} s, capped at an hour)"
            ),
            (_, Some(s)) => format!("{provider} rate limited the check ({code}); retry after {s} s"),
            _ => format!("{provider} rate limited the check ({code})"),
        };
        Verification::now(Status::RateLimited, code, message).with_retry_after(seconds.unwrap_or(0))
    }

    /// The outcome of an answer the provider's API does not document.
    pub fn unexpected(&self, code: StatusCode) -> Verification {
        let provider = &self.provider;
        let message = if code.is_server_error() {
            format!("{provider} failed with http {}", code.as_u16())
        } else if code.is_redirection() {
            format!(
                "{provider} answered with a redirect (http {}), which is not followed",
                code.as_u16()
            )
        } else {
            format!("{provider} answered with unexpected http {}", code.as_u16())
        };
        Verification::now(Status::ProviderError, code.as_u16(), message)
    }
}

/// Reads a response body of at most `limit` bytes into wiped memory.
pub(super) async fn read_body(
    mut resp: reqwest::Response,
    limit: usize,
) -> Result<Zeroizing<Vec<u8>>, String> {
    let mut body = Zeroizing::new(Vec::new());
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|_| "the body could not be read".to_owned())?
    {
        if body.len() + chunk.len() > limit {
            return Err(format!("the body is larger than {limit} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_capped_at_an_hour() {
        let client = Client::new(
            "acme",
            reqwest::Client::new(),
            "http://127.0.0.1:9",
            Duration::from_secs(1),
        )
        .unwrap();
        for (header, want) in [
            ("7", 7),
            ("3600", 3600),
            ("999999", 3600),
            ("99999999999999999999", 0),
            ("soon", 0),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(RETRY_AFTER, header.parse().unwrap());
            let v = client.rate_limited(&headers);
            assert_eq!(v.retry_after_seconds, want, "Retry-After: {header}");
        }
        for bad in ["ftp://x", "http://x/?a=1", "not a url"] {
            assert!(Client::new("acme", reqwest::Client::new(), bad, Duration::ZERO).is_err());
        }
    }
}
