//! Fleetio (fleet management): an API key and an account token, sent as
//! `Authorization: Token <api_key>` and `Account-Token: <account_token>`.
//!
//! Verification calls `GET {base}/v1/users/me`; on 401 it asks
//! `GET {base}/v1/accounts` (key only) to tell a rejected key from a rejected
//! account token.

use std::borrow::Cow;
use std::mem;

use futures_util::future::BoxFuture;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION};
use reqwest::StatusCode;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

use super::client::read_body;
use super::{
    check_token, fingerprint, Client, Field, Provider, ProviderRef, ProviderSecret, Values,
};
use crate::error::Error;
use crate::record::{Verification, VerificationStatus as Status};

/// The provider's name, as stored and shown.
pub const NAME: &str = "fleetio";
/// Fleetio's production API base URL.
pub const DEFAULT_BASE_URL: &str = "https://secure.fleetio.com/api";

/// Fleetio, as the registry holds it.
pub static PROVIDER: Fleetio = Fleetio;

const API_KEY: usize = 0;
const ACCOUNT_TOKEN: usize = 1;
const API_VERSION: usize = 2;
/// The fields of the API's `FleetioSecret`, in its order.
const FIELDS: &[Field] = &[
    Field {
        name: Cow::Borrowed("api_key"),
        secret: true,
        required: true,
    },
    Field {
        name: Cow::Borrowed("account_token"),
        secret: true,
        required: true,
    },
    Field {
        name: Cow::Borrowed("api_version"),
        secret: false,
        required: false,
    },
];

const ACCOUNT_TOKEN_HEADER: &str = "Account-Token";
const API_VERSION_HEADER: &str = "X-Api-Version";
const MIN_API_KEY_LEN: usize = 8;
/// The largest `/v1/accounts` body read; more is a provider error.
const MAX_ACCOUNTS_BODY: usize = 1 << 20;

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

/// A create or update request's Fleetio key pair, validated. The values are moved
/// into the secret, or wiped when they are refused.
pub fn secret(
    mut api_key: String,
    mut account_token: String,
    mut api_version: String,
) -> Result<ProviderSecret, Error> {
    let checked = check_token(NAME, "api_key", &api_key, MIN_API_KEY_LEN)
        .and_then(|()| check_token(NAME, "account_token", &account_token, 1))
        .and_then(|()| match api_version.as_str() {
            "" => Ok(()),
            v => check_api_version(v),
        });
    let result = checked.map(|()| {
        let values = Values::new(vec![
            mem::take(&mut api_key),
            mem::take(&mut account_token),
            mem::take(&mut api_version),
        ]);
        ProviderSecret::new(ProviderRef::Builtin(&PROVIDER), values)
    });
    // Whatever was not moved out (on error) is wiped here.
    api_key.zeroize();
    account_token.zeroize();
    result
}

/// Fleetio: `GET /v1/users/me` checks a key pair; `/v1/accounts` tells which half failed.
#[derive(Debug)]
pub struct Fleetio;

impl Provider for Fleetio {
    fn name(&self) -> &str {
        NAME
    }

    fn fields(&self) -> &[Field] {
        FIELDS
    }

    fn default_base_url(&self) -> &str {
        DEFAULT_BASE_URL
    }

    /// `Authorization`, `Account-Token` and, when set, `X-Api-Version`.
    fn headers(&self, values: &Values) -> Vec<(Cow<'static, str>, String)> {
        let mut headers = Vec::with_capacity(3);
        headers.push((
            Cow::Borrowed("Authorization"),
            format!("Token {}", values.get(API_KEY)),
        ));
        headers.push((
            Cow::Borrowed(ACCOUNT_TOKEN_HEADER),
            values.get(ACCOUNT_TOKEN).to_owned(),
        ));
        match values.get(API_VERSION) {
            "" => {}
            v => headers.push((Cow::Borrowed(API_VERSION_HEADER), v.to_owned())),
        }
        headers
    }

    fn verify<'a>(&'a self, client: &'a Client, values: &'a Values) -> BoxFuture<'a, Verification> {
        Box::pin(verify(client, values))
    }

    /// Fleetio's two fields keep the names they had before the generic form.
    fn rejected_status(&self, field: &str) -> Status {
        match field {
            "api_key" => Status::ApiKeyRejected,
            "account_token" => Status::AccountTokenRejected,
            _ => Status::SecretRejected,
        }
    }

    /// Rate limits are per account: the account token names it.
    fn account_key(&self, values: &Values) -> [u8; 32] {
        fingerprint(NAME, values.get(ACCOUNT_TOKEN))
    }
}

/// A rejection of `field`, under the status Fleetio names it with.
fn rejected(field: &str, http: u16, message: impl Into<String>) -> Verification {
    Verification::rejected(PROVIDER.rejected_status(field), field, http, message)
}

/// The request headers for a check; secret values are marked sensitive.
fn request_headers(values: &Values, with_account_token: bool) -> HeaderMap {
    let mut map = HeaderMap::new();
    map.insert(ACCEPT, HeaderValue::from_static("application/json"));
    // Values were checked to be visible ASCII, so these conversions hold.
    let auth = Zeroizing::new(format!("Token {}", values.get(API_KEY)));
    if let Ok(mut v) = HeaderValue::from_str(&auth) {
        v.set_sensitive(true);
        map.insert(AUTHORIZATION, v);
    }
    if with_account_token {
        if let Ok(mut v) = HeaderValue::from_str(values.get(ACCOUNT_TOKEN)) {
            v.set_sensitive(true);
            map.insert(ACCOUNT_TOKEN_HEADER, v);
        }
    }
    if let Ok(version) = HeaderValue::from_str(values.get(API_VERSION)) {
        if !version.is_empty() {
            map.insert(API_VERSION_HEADER, version);
        }
    }
    map
}

/// Checks the key pair against `GET /v1/users/me`.
async fn verify(client: &Client, values: &Values) -> Verification {
    let resp = match client
        .get("/v1/users/me", request_headers(values, true))
        .await
    {
        Ok(r) => r,
        Err(e) => return client.unreachable(&e),
    };
    let code = resp.status();
    match code {
        c if c.is_success() => Verification::now(
            Status::Valid,
            c.as_u16(),
            "fleetio accepted the api key and account token",
        ),
        StatusCode::UNAUTHORIZED => tell_key_from_token(client, values).await,
        StatusCode::FORBIDDEN => Verification::now(
            Status::Forbidden,
            403,
            "fleetio knows the key pair but denies it access to the account (403)",
        ),
        StatusCode::TOO_MANY_REQUESTS => client.rate_limited(resp.headers()),
        c => client.unexpected(c),
    }
}

/// After a 401: does the key itself work, and is the token among its accounts?
async fn tell_key_from_token(client: &Client, values: &Values) -> Verification {
    let resp = match client
        .get("/v1/accounts", request_headers(values, false))
        .await
    {
        Ok(r) => r,
        Err(e) => {
            let why = client.unreachable(&e).message;
            return rejected(
                "api_key",
                401,
                format!("fleetio rejected the key pair (401); whether the key or the account token is wrong is unknown: {why}"),
            );
        }
    };
    match resp.status() {
        StatusCode::OK => match read_account_tokens(resp).await {
            Ok(tokens) => {
                let token = values.get(ACCOUNT_TOKEN).as_bytes();
                let listed = tokens
                    .iter()
                    .any(|t| bool::from(t.as_bytes().ct_eq(token)));
                if listed {
                    Verification::now(
                        Status::ProviderError,
                        401,
                        "fleetio rejected the key pair (401) although it lists the account token for this key",
                    )
                } else {
                    rejected(
                        "account_token",
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
        StatusCode::UNAUTHORIZED => rejected("api_key", 401, "fleetio rejects the api key (401)"),
        StatusCode::FORBIDDEN => rejected(
            "account_token",
            401,
            "the api key is accepted (it may not list accounts) but fleetio rejected the account token",
        ),
        StatusCode::TOO_MANY_REQUESTS => client.rate_limited(resp.headers()),
        c => client.unexpected(c),
    }
}

/// The `token` of every account in `{"records": [...]}` or a bare array.
async fn read_account_tokens(resp: reqwest::Response) -> Result<Vec<Zeroizing<String>>, String> {
    let body = read_body(resp, MAX_ACCOUNTS_BODY).await?;
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
    use super::*;

    fn checked(key: &str, token: &str, version: &str) -> Result<ProviderSecret, Error> {
        secret(key.into(), token.into(), version.into())
    }

    #[test]
    fn validation_rejects_without_echoing() {
        for (s, field) in [
            (checked("", "t", ""), "api_key"),
            (checked("short", "t", ""), "api_key"),
            (checked("has space in key", "t", ""), "api_key"),
            (checked("key-12345678", "", ""), "account_token"),
            (checked("key-12345678", "tok\r\nX: y", ""), "account_token"),
            (checked("key-12345678", "tok", "2024-13-01"), "api_version"),
            (checked("key-12345678", "tok", "latest"), "api_version"),
        ] {
            let err = s.unwrap_err().to_string();
            assert!(err.contains(field), "{err}");
            assert!(
                !err.contains("tok\r\n") && !err.contains("has space"),
                "{err}"
            );
        }
    }

    /// The sealed form of the versions before the provider trait (a prost
    /// message with tags 1, 2, 3), which stored records hold.
    #[derive(Clone, PartialEq, prost::Message)]
    struct LegacyPayload {
        #[prost(string, tag = "1")]
        api_key: String,
        #[prost(string, tag = "2")]
        account_token: String,
        #[prost(string, tag = "3")]
        api_version: String,
    }

    #[test]
    fn headers_hint_and_round_trip() {
        use prost::Message;
        let s = (checked("key-1234abcd", "acct-9", "2024-03-15")).unwrap();
        assert_eq!(s.hint(), "abcd");
        let legacy = LegacyPayload {
            api_key: "key-1234abcd".into(),
            account_token: "acct-9".into(),
            api_version: "2024-03-15".into(),
        };
        assert_eq!(*s.to_plaintext(), legacy.encode_to_vec());
        let back = ProviderSecret::from_plaintext(NAME, &legacy.encode_to_vec()).unwrap();
        assert_eq!(
            back.headers(),
            vec![
                (
                    Cow::Borrowed("Authorization"),
                    "Token key-1234abcd".to_owned()
                ),
                (Cow::Borrowed("Account-Token"), "acct-9".to_owned()),
                (Cow::Borrowed("X-Api-Version"), "2024-03-15".to_owned()),
            ]
        );
        let debug = format!("{back:?}");
        assert!(
            !debug.contains("key-1234abcd") && !debug.contains("acct-9"),
            "{debug}"
        );
        assert!(debug.contains("2024-03-15"), "{debug}");
        let plain = (checked("key-1234abcd", "acct-9", "")).unwrap();
        assert_eq!(plain.headers().len(), 2);
        let incomplete = LegacyPayload {
            api_key: "key-1234abcd".into(),
            ..Default::default()
        };
        assert!(ProviderSecret::from_plaintext(NAME, &incomplete.encode_to_vec()).is_err());
    }

    #[test]
    fn rejections_keep_fleetio_names() {
        let v = rejected("account_token", 401, "no");
        assert_eq!(v.status(), Status::AccountTokenRejected);
        assert_eq!(v.rejected_field, "account_token");
        assert_eq!(PROVIDER.rejected_status("api_key"), Status::ApiKeyRejected);
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
