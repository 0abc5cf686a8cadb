//! Fleetio (fleet management): an API key and an account token, sent as
//! `Authorization: Token <api_key>` and `Account-Token: <account_token>`.
//!
//! Verification calls `GET {base}/v1/users/me`; on 401 it asks
//! `GET {base}/v1/accounts` (key only) to tell a rejected key from a rejected
//! account token.

use std::fmt;
use std::mem;
use std::time::Duration;

use prost::Message;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, RETRY_AFTER};
use reqwest::StatusCode;
use secrecy::ExposeSecret;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::{secret, Secret};
use crate::api;
use crate::error::Error;
use crate::record::{Verification, VerificationStatus as Status};

/// The provider's name, as stored and shown.
pub const NAME: &str = "fleetio";
/// Fleetio's production API base URL.
pub const DEFAULT_BASE_URL: &str = "https://secure.fleetio.com/api";

const ACCOUNT_TOKEN: &str = "Account-Token";
const API_VERSION: &str = "X-Api-Version";
const MAX_SECRET_LEN: usize = 512;
const MIN_API_KEY_LEN: usize = 8;
/// The largest `/v1/accounts` body read; more is a provider error.
const MAX_ACCOUNTS_BODY: usize = 1 << 20;

/// A validated Fleetio key pair. Debug shows the secrets as `[REDACTED]` (secrecy).
#[derive(Debug)]
pub struct FleetioSecret {
    api_key: Secret,
    account_token: Secret,
    api_version: Option<String>,
}

/// Header-safe: visible ASCII only, so no spaces, CR or LF can split a header.
fn check_token(field: &str, value: &str, min: usize) -> Result<(), Error> {
    if value.is_empty() {
        return Err(Error::invalid(format!("fleetio.{field} is required")));
    }
    if value.len() < min || value.len() > MAX_SECRET_LEN {
        return Err(Error::invalid(format!(
            "fleetio.{field} must be {min} to {MAX_SECRET_LEN} characters long"
        )));
    }
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::invalid(format!(
            "fleetio.{field} may hold only visible ASCII characters (no spaces or control characters)"
        )));
    }
    Ok(())
}

/// `YYYY-MM-DD`, as Fleetio names its API versions.
fn check_api_version(value: &str) -> Result<(), Error> {
    let b = value.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    let ok = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && digits(0..4)
        && digits(5..7)
        && digits(8..10)
        && {
            let month = (b[5] - b'0') * 10 + (b[6] - b'0');
            let day = (b[8] - b'0') * 10 + (b[9] - b'0');
            (1..=12).contains(&month) && (1..=31).contains(&day)
        };
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "fleetio.api_version must be a date such as 2024-03-15, or empty",
        ))
    }
}

impl TryFrom<api::FleetioSecret> for FleetioSecret {
    type Error = Error;

    fn try_from(mut value: api::FleetioSecret) -> Result<Self, Error> {
        let checked = check_token("api_key", &value.api_key, MIN_API_KEY_LEN)
            .and_then(|()| check_token("account_token", &value.account_token, 1))
            .and_then(|()| match value.api_version.as_str() {
                "" => Ok(()),
                v => check_api_version(v),
            });
        let result = checked.map(|()| FleetioSecret {
            api_key: secret(mem::take(&mut value.api_key)),
            account_token: secret(mem::take(&mut value.account_token)),
            api_version: Some(mem::take(&mut value.api_version)).filter(|v| !v.is_empty()),
        });
        // Whatever was not moved out (on error) is wiped here.
        value.api_key.zeroize();
        value.account_token.zeroize();
        result
    }
}

/// The sealed form of a Fleetio secret (prost-encoded, then encrypted).
#[derive(Clone, PartialEq, Message, Zeroize, ZeroizeOnDrop)]
#[prost(skip_debug)]
struct Payload {
    #[prost(string, tag = "1")]
    api_key: String,
    #[prost(string, tag = "2")]
    account_token: String,
    #[prost(string, tag = "3")]
    api_version: String,
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Payload([REDACTED])")
    }
}

impl FleetioSecret {
    /// The last 4 characters of the API key.
    pub fn hint(&self) -> String {
        let key = self.api_key.expose_secret();
        key[key.len().saturating_sub(4)..].to_owned()
    }

    pub(super) fn account_key(&self) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        hasher.update(b"credvault/rate-limit/fleetio\0");
        hasher.update(self.account_token.expose_secret().as_bytes());
        hasher.finalize().into()
    }

    pub(super) fn to_plaintext(&self) -> Zeroizing<Vec<u8>> {
        let payload = Payload {
            api_key: self.api_key.expose_secret().clone(),
            account_token: self.account_token.expose_secret().clone(),
            api_version: self.api_version.clone().unwrap_or_default(),
        };
        Zeroizing::new(payload.encode_to_vec())
    }

    pub(super) fn from_plaintext(bytes: &[u8]) -> Result<Self, String> {
        let mut payload = Payload::decode(bytes)
            .map_err(|_| "the opened secret is not a fleetio secret".to_owned())?;
        if payload.api_key.is_empty() || payload.account_token.is_empty() {
            return Err("the opened fleetio secret is incomplete".into());
        }
        let version = mem::take(&mut payload.api_version);
        Ok(FleetioSecret {
            api_key: secret(mem::take(&mut payload.api_key)),
            account_token: secret(mem::take(&mut payload.account_token)),
            api_version: Some(version).filter(|v| !v.is_empty()),
        })
    }

    /// `Authorization`, `Account-Token` and, when set, `X-Api-Version`.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = Vec::with_capacity(3);
        headers.push((
            "Authorization",
            format!("Token {}", self.api_key.expose_secret()),
        ));
        headers.push((ACCOUNT_TOKEN, self.account_token.expose_secret().clone()));
        if let Some(v) = &self.api_version {
            headers.push((API_VERSION, v.clone()));
        }
        headers
    }

    /// The request headers for a check; secret values are marked sensitive.
    fn request_headers(&self, with_account_token: bool) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(ACCEPT, HeaderValue::from_static("application/json"));
        // Values were checked to be visible ASCII, so these conversions hold.
        let auth = Zeroizing::new(format!("Token {}", self.api_key.expose_secret()));
        if let Ok(mut v) = HeaderValue::from_str(&auth) {
            v.set_sensitive(true);
            map.insert(AUTHORIZATION, v);
        }
        if with_account_token {
            if let Ok(mut v) = HeaderValue::from_str(self.account_token.expose_secret()) {
                v.set_sensitive(true);
                map.insert(ACCOUNT_TOKEN, v);
            }
        }
        if let Some(version) = self
            .api_version
            .as_deref()
            .and_then(|v| HeaderValue::from_str(v).ok())
        {
            map.insert(API_VERSION, version);
        }
        map
    }
}

/// The Fleetio API client used for verification.
#[derive(Debug)]
pub struct Fleetio {
    http: reqwest::Client,
    base_url: String,
    timeout: Duration,
}

impl Fleetio {
    /// A client for the API at `base_url` (http or https).
    pub fn new(http: reqwest::Client, base_url: &str, timeout: Duration) -> Result<Self, String> {
        let url = reqwest::Url::parse(base_url)
            .map_err(|e| format!("fleetio base url {base_url:?} is not a url: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") || url.query().is_some() {
            return Err(format!(
                "fleetio base url {base_url:?} must be an http(s) url without a query"
            ));
        }
        Ok(Fleetio {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
            timeout,
        })
    }

    /// The API base URL workers send requests to.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    async fn get(
        &self,
        path: &str,
        s: &FleetioSecret,
        with_account_token: bool,
    ) -> reqwest::Result<reqwest::Response> {
        self.http
            .get(format!("{}{path}", self.base_url))
            .headers(s.request_headers(with_account_token))
            .send()
            .await
    }

    fn unreachable(&self, err: &reqwest::Error) -> Verification {
        let message = if err.is_timeout() {
            format!("fleetio did not answer within {:?}", self.timeout)
        } else if err.is_connect() {
            format!("could not connect to fleetio at {}", self.base_url)
        } else {
            "the request to fleetio failed before an answer came".to_owned()
        };
        Verification::now(Status::Unreachable, 0, message)
    }

    /// Checks the key pair against `GET /v1/users/me`.
    pub async fn verify(&self, s: &FleetioSecret) -> Verification {
        let resp = match self.get("/v1/users/me", s, true).await {
            Ok(r) => r,
            Err(e) => return self.unreachable(&e),
        };
        let code = resp.status();
        match code {
            c if c.is_success() => Verification::now(
                Status::Valid,
                c.as_u16(),
                "fleetio accepted the api key and account token",
            ),
            StatusCode::UNAUTHORIZED => self.tell_key_from_token(s).await,
            StatusCode::FORBIDDEN => Verification::now(
                Status::Forbidden,
                403,
                "fleetio knows the key pair but denies it access to the account (403)",
            ),
            StatusCode::TOO_MANY_REQUESTS => rate_limited(resp.headers()),
            c => unexpected(c),
        }
    }

    /// After a 401: does the key itself work, and is the token among its accounts?
    async fn tell_key_from_token(&self, s: &FleetioSecret) -> Verification {
        let resp = match self.get("/v1/accounts", s, false).await {
            Ok(r) => r,
            Err(e) => {
                let why = self.unreachable(&e).message;
                return Verification::now(
                    Status::ApiKeyRejected,
                    401,
                    format!("fleetio rejected the key pair (401); whether the key or the account token is wrong is unknown: {why}"),
                );
            }
        };
        match resp.status() {
            StatusCode::OK => match read_account_tokens(resp).await {
                Ok(tokens) => {
                    let listed = tokens
                        .iter()
                        .any(|t| bool::from(t.as_bytes().ct_eq(s.account_token.expose_secret().as_bytes())));
                    if listed {
                        Verification::now(
                            Status::ProviderError,
                            401,
                            "fleetio rejected the key pair (401) although it lists the account token for this key",
                        )
                    } else {
                        Verification::now(
                            Status::AccountTokenRejected,
                            401,
                            "the api key works but the account token is not one of its accounts",
                        )
                    }
                }
                Err(why) => Verification::now(
                    Status::ProviderError,
                    200,
                    format!("fleetio rejected the key pair (401) and its account list was unreadable: {why}"),
                ),
            },
            StatusCode::UNAUTHORIZED => Verification::now(Status::ApiKeyRejected, 401, "fleetio rejects the api key (401)"),
            StatusCode::FORBIDDEN => Verification::now(
                Status::AccountTokenRejected,
                401,
                "the api key is accepted (it may not list accounts) but fleetio rejected the account token",
            ),
            StatusCode::TOO_MANY_REQUESTS => rate_limited(resp.headers()),
            c => unexpected(c),
        }
    }
}

/// The longest pause a `Retry-After` can ask for: one bad header must not hold
/// a credential's checks back for days.
pub const MAX_RETRY_AFTER_SECONDS: u32 = 3600;

fn rate_limited(headers: &HeaderMap) -> Verification {
    let asked = headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let seconds = asked.map(|s| {
        u32::try_from(s.min(u64::from(MAX_RETRY_AFTER_SECONDS))).unwrap_or(MAX_RETRY_AFTER_SECONDS)
    });
    let message = match (asked, seconds) {
        (Some(a), Some(s)) if a > u64::from(s) => format!(
            "fleetio rate limited the check (429); retry after {s} s (it asked for {a} s, capped at an hour)"
        ),
        (_, Some(s)) => format!("fleetio rate limited the check (429); retry after {s} s"),
        _ => "fleetio rate limited the check (429)".to_owned(),
    };
    Verification::now(Status::RateLimited, 429, message).with_retry_after(seconds.unwrap_or(0))
}

fn unexpected(code: StatusCode) -> Verification {
    let message = if code.is_server_error() {
        format!("fleetio failed with http {}", code.as_u16())
    } else if code.is_redirection() {
        format!(
            "fleetio answered with a redirect (http {}), which is not followed",
            code.as_u16()
        )
    } else {
        format!("fleetio answered with unexpected http {}", code.as_u16())
    };
    Verification::now(Status::ProviderError, code.as_u16(), message)
}

/// The `token` of every account in `{"records": [...]}` or a bare array.
async fn read_account_tokens(
    mut resp: reqwest::Response,
) -> Result<Vec<Zeroizing<String>>, String> {
    let mut body = Zeroizing::new(Vec::new());
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|_| "the body could not be read".to_owned())?
    {
        if body.len() + chunk.len() > MAX_ACCOUNTS_BODY {
            return Err("the body is larger than 1 MiB".into());
        }
        body.extend_from_slice(&chunk);
    }
    parse_account_tokens(&body)
}

fn parse_account_tokens(body: &[u8]) -> Result<Vec<Zeroizing<String>>, String> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| "the body is not json".to_owned())?;
    let records = match &value {
        serde_json::Value::Array(items) => items,
        serde_json::Value::Object(map) => match map.get("records") {
            Some(serde_json::Value::Array(items)) => items,
            _ => return Err("the body has no records array".into()),
        },
        _ => return Err("the body is neither an array nor an object".into()),
    };
    Ok(records
        .iter()
        .filter_map(|r| r.get("token").and_then(|t| t.as_str()))
        .map(|t| Zeroizing::new(t.to_owned()))
        .collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn retry_after_is_capped_at_an_hour() {
        for (header, want) in [
            ("7", 7),
            ("3600", 3600),
            ("999999", 3600),
            ("99999999999999999999", 0),
            ("soon", 0),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(RETRY_AFTER, header.parse().unwrap());
            let v = super::rate_limited(&headers);
            assert_eq!(v.retry_after_seconds, want, "Retry-After: {header}");
        }
    }

    use super::*;

    fn api(key: &str, token: &str, version: &str) -> api::FleetioSecret {
        api::FleetioSecret {
            api_key: key.into(),
            account_token: token.into(),
            api_version: version.into(),
        }
    }

    #[test]
    fn validation_rejects_without_echoing() {
        for (s, field) in [
            (api("", "t", ""), "api_key"),
            (api("short", "t", ""), "api_key"),
            (api("has space in key", "t", ""), "api_key"),
            (api("key-12345678", "", ""), "account_token"),
            (api("key-12345678", "tok\r\nX: y", ""), "account_token"),
            (api("key-12345678", "tok", "2024-13-01"), "api_version"),
            (api("key-12345678", "tok", "latest"), "api_version"),
        ] {
            let err = FleetioSecret::try_from(s).unwrap_err().to_string();
            assert!(err.contains(field), "{err}");
            assert!(
                !err.contains("tok\r\n") && !err.contains("has space"),
                "{err}"
            );
        }
    }

    #[test]
    fn headers_hint_and_round_trip() {
        let s = FleetioSecret::try_from(api("key-1234abcd", "acct-9", "2024-03-15")).unwrap();
        assert_eq!(s.hint(), "abcd");
        let back = FleetioSecret::from_plaintext(&s.to_plaintext()).unwrap();
        assert_eq!(
            back.headers(),
            vec![
                ("Authorization", "Token key-1234abcd".to_owned()),
                ("Account-Token", "acct-9".to_owned()),
                ("X-Api-Version", "2024-03-15".to_owned()),
            ]
        );
        let debug = format!("{back:?}");
        assert!(
            !debug.contains("key-1234abcd") && !debug.contains("acct-9"),
            "{debug}"
        );
        let plain = FleetioSecret::try_from(api("key-1234abcd", "acct-9", "")).unwrap();
        assert_eq!(plain.headers().len(), 2);
    }

    #[test]
    fn account_lists_in_both_shapes() {
        let wrapped =
            parse_account_tokens(br#"{"records":[{"token":"a"},{"token":"b"}]}"#).unwrap();
        let bare = parse_account_tokens(br#"[{"token":"a","name":"x"}]"#).unwrap();
        assert_eq!(wrapped.len(), 2);
        assert_eq!(bare[0].as_str(), "a");
        assert!(parse_account_tokens(b"<html>").is_err());
        assert!(parse_account_tokens(br#"{"data":[]}"#).is_err());
    }
}
