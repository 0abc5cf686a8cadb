//! Providers: for each third-party API, the shape of its secret, the headers a
//! worker sends, and how a secret is checked against the real API.
//!
//! A provider is a [`Provider`]: it declares its name, its secret's fields
//! (which of them are secret), its default base URL, the headers it sends, how
//! it verifies a secret and how it names a rejected value. The vault, the
//! service and the record format know providers only through this trait and the
//! [`registry!`] below. Adding an API-key provider is one module beside
//! [`fleetio`], one line in the registry, and its `<Provider>Secret` message in
//! the proto (one arm in each request's `secret` oneof).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use futures_util::future::BoxFuture;
use secrecy::{ExposeSecret, SecretBox};
use zeroize::Zeroizing;

use crate::api;
use crate::error::Error;
use crate::record::{Verification, VerificationStatus};

mod client;
pub mod fleetio;

pub use client::{Client, MAX_RETRY_AFTER_SECONDS};

/// A secret string: redacted in Debug, no Display, zeroized on drop.
pub type Secret = SecretBox<String>;

/// Wraps a string as a [`Secret`] without copying it.
pub fn secret(value: String) -> Secret {
    SecretBox::new(Box::new(value))
}

/// One field of a provider's secret, as its proto message names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    /// The field's name in the provider's proto message (`api_key`).
    pub name: &'static str,
    /// Whether the value is secret (never shown) or plain (an API version).
    pub secret: bool,
    /// Whether a secret is whole without it.
    pub required: bool,
}

/// One third-party API credvault keeps secrets for.
///
/// Fields are sealed in declaration order (field `i` as protobuf string tag
/// `i + 1`), so a provider may append fields but never reorder them.
pub trait Provider: Send + Sync + 'static {
    /// The name stored with each credential and shown by the API (`fleetio`).
    fn name(&self) -> &'static str;
    /// The fields of its secret, in its proto message's order.
    fn fields(&self) -> &'static [Field];
    /// Its production API base URL.
    fn default_base_url(&self) -> &'static str;
    /// The headers a worker sends with `values`, in order.
    fn headers(&self, values: &Values) -> Vec<(Cow<'static, str>, String)>;
    /// Checks `values` against the real API through `client`. Never fails:
    /// problems are a status.
    fn verify<'a>(&'a self, client: &'a Client, values: &'a Values) -> BoxFuture<'a, Verification>;

    /// The status a definite rejection of `field` carries: by default
    /// `SECRET_REJECTED`, with the field named in the verification.
    fn rejected_status(&self, field: &str) -> VerificationStatus {
        let _ = field;
        VerificationStatus::SecretRejected
    }
    /// The non-secret hint shown in listings: the last 4 characters of the first field.
    fn hint(&self, values: &Values) -> String {
        let key = values.get(0);
        let start = key.char_indices().rev().nth(3).map_or(0, |(i, _)| i);
        key[start..].to_owned()
    }
    /// A fingerprint of the provider account the secret speaks for (rate limits
    /// are per account; by default the first field); kept in memory only, never logged.
    fn account_key(&self, values: &Values) -> [u8; 32] {
        fingerprint(self.name(), values.get(0))
    }
}

/// A SHA-256 of `value` under a per-provider label.
pub fn fingerprint(provider: &str, value: &str) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(b"credvault/rate-limit/");
    hasher.update(provider.as_bytes());
    hasher.update(b"\0");
    hasher.update(value.as_bytes());
    hasher.finalize().into()
}

/// The values of a secret, in its provider's field order; an unset field is empty.
pub struct Values(Vec<Secret>);

impl Values {
    /// Values from strings in field order (taken, not copied).
    pub fn new(values: Vec<String>) -> Self {
        Values(values.into_iter().map(secret).collect())
    }

    /// The value of field `index` (empty when unset or out of range).
    pub fn get(&self, index: usize) -> &str {
        self.0.get(index).map_or("", |s| s.expose_secret().as_str())
    }

    /// The sealed form: field `i` as protobuf string tag `i + 1`, unset fields left out.
    fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut buf = Zeroizing::new(Vec::new());
        for (i, value) in self.0.iter().enumerate() {
            let value = value.expose_secret();
            if !value.is_empty() {
                let tag = u32::try_from(i + 1).unwrap_or(u32::MAX);
                prost::encoding::string::encode(tag, value, &mut *buf);
            }
        }
        buf
    }

    /// Reads the sealed form back for `fields`; unknown tags are skipped.
    fn decode(fields: &[Field], mut bytes: &[u8]) -> Result<Self, SecretFormatError> {
        use prost::encoding::{decode_key, skip_field, string, DecodeContext, WireType};
        let mut values: Vec<String> = vec![String::new(); fields.len()];
        while !bytes.is_empty() {
            let (tag, wire) = decode_key(&mut bytes).map_err(|_| SecretFormatError::Malformed)?;
            let slot = usize::try_from(tag)
                .ok()
                .and_then(|t| t.checked_sub(1))
                .filter(|_| wire == WireType::LengthDelimited)
                .and_then(|i| values.get_mut(i));
            let read = match slot {
                Some(value) => string::merge(wire, value, &mut bytes, DecodeContext::default()),
                None => skip_field(wire, tag, &mut bytes, DecodeContext::default()),
            };
            if read.is_err() {
                // What was read so far is wiped as the Values drop.
                drop(Values::new(values));
                return Err(SecretFormatError::Malformed);
            }
        }
        let values = Values::new(values);
        match fields
            .iter()
            .enumerate()
            .find(|(i, f)| f.required && values.get(*i).is_empty())
        {
            Some((_, f)) => Err(SecretFormatError::Missing(f.name)),
            None => Ok(values),
        }
    }
}

/// Why opened bytes are not a provider's secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretFormatError {
    #[error("no provider is named {0:?}")]
    UnknownProvider(String),
    #[error("the opened secret is not in the provider's format")]
    Malformed,
    #[error("the opened secret lacks its {0}")]
    Missing(&'static str),
}

/// A provider secret, validated and ready to seal or use.
pub struct ProviderSecret {
    provider: &'static dyn Provider,
    values: Values,
}

impl fmt::Debug for ProviderSecret {
    /// Plain fields are shown, secret ones redacted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("ProviderSecret");
        s.field("provider", &self.provider.name());
        for (i, field) in self.provider.fields().iter().enumerate() {
            if field.secret {
                s.field(field.name, &"[REDACTED]");
            } else {
                s.field(field.name, &self.values.get(i));
            }
        }
        s.finish()
    }
}

impl ProviderSecret {
    /// A secret of `provider` from values its module validated.
    pub fn new(provider: &'static dyn Provider, values: Values) -> Self {
        ProviderSecret { provider, values }
    }

    /// The provider's name as stored and shown (`fleetio`).
    pub fn provider(&self) -> &'static str {
        self.provider.name()
    }

    /// The non-secret hint shown in listings.
    pub fn hint(&self) -> String {
        self.provider.hint(&self.values)
    }

    /// A fingerprint of the provider account the secret speaks for.
    pub fn account_key(&self) -> [u8; 32] {
        self.provider.account_key(&self.values)
    }

    /// The headers a worker sends with this secret.
    pub fn headers(&self) -> Vec<(Cow<'static, str>, String)> {
        self.provider.headers(&self.values)
    }

    /// The bytes to seal.
    pub fn to_plaintext(&self) -> Zeroizing<Vec<u8>> {
        self.values.encode()
    }

    /// Reads opened bytes back as the secret of the provider named `provider`.
    pub fn from_plaintext(provider: &str, bytes: &[u8]) -> Result<Self, SecretFormatError> {
        let provider = find(provider)
            .ok_or_else(|| SecretFormatError::UnknownProvider(provider.to_owned()))?;
        let values = Values::decode(provider.fields(), bytes)?;
        Ok(ProviderSecret { provider, values })
    }
}

/// The registry: the built-in providers and the arms of the requests' `secret`
/// oneofs. Each line is `OneofArm => module`, the module exposing `PROVIDER`
/// (its [`Provider`]) and `TryFrom<api::<Provider>Secret> for ProviderSecret`.
macro_rules! registry {
    ($($arm:ident => $module:ident),+ $(,)?) => {
        /// Every built-in provider.
        pub static BUILTIN: &[&'static dyn Provider] = &[$(&$module::PROVIDER),+];

        /// The secret oneof of a create request, validated by its provider.
        impl TryFrom<api::create_credential_request::Secret> for ProviderSecret {
            type Error = Error;
            fn try_from(value: api::create_credential_request::Secret) -> Result<Self, Error> {
                match value {
                    $(api::create_credential_request::Secret::$arm(s) => s.try_into(),)+
                }
            }
        }

        /// The secret oneof of an update request, validated by its provider.
        impl TryFrom<api::update_credential_request::Secret> for ProviderSecret {
            type Error = Error;
            fn try_from(value: api::update_credential_request::Secret) -> Result<Self, Error> {
                match value {
                    $(api::update_credential_request::Secret::$arm(s) => s.try_into(),)+
                }
            }
        }
    };
}

registry! {
    Fleetio => fleetio,
}

/// The built-in provider named `name`.
pub fn find(name: &str) -> Option<&'static dyn Provider> {
    BUILTIN.iter().copied().find(|p| p.name() == name)
}

/// The names of the built-in providers, as a request's `secret` oneof sets them (`fleetio`).
pub fn names() -> String {
    BUILTIN
        .iter()
        .map(|p| p.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks a header-bound secret value: present when `min > 0`, `min` to 512
/// characters, visible ASCII only (so no space, CR or LF can split a header).
/// Errors name `provider.field`, never the value.
pub fn check_token(provider: &str, field: &str, value: &str, min: usize) -> Result<(), Error> {
    const MAX_SECRET_LEN: usize = 512;
    if value.is_empty() {
        return Err(Error::invalid(format!("{provider}.{field} is required")));
    }
    if value.len() < min || value.len() > MAX_SECRET_LEN {
        return Err(Error::invalid(format!(
            "{provider}.{field} must be {min} to {MAX_SECRET_LEN} characters long"
        )));
    }
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::invalid(format!(
            "{provider}.{field} may hold only visible ASCII characters (no spaces or control characters)"
        )));
    }
    Ok(())
}

/// Settings shared by the providers' HTTP clients.
#[derive(Clone, Debug)]
pub struct ProviderSettings {
    /// API base URLs by provider name, over each provider's default.
    pub base_urls: BTreeMap<String, String>,
    /// Longest wait for a TCP/TLS connection to a provider.
    pub connect_timeout: Duration,
    /// Longest wait for a whole verification request.
    pub request_timeout: Duration,
}

impl Default for ProviderSettings {
    fn default() -> Self {
        ProviderSettings {
            base_urls: BTreeMap::new(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// Why the providers' clients could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("no provider is named {name:?} (known: {known})")]
    Unknown { name: String, known: String },
    #[error("{provider} base url {url:?} {why}")]
    BaseUrl {
        provider: &'static str,
        url: String,
        why: String,
    },
    #[error("cannot build the provider http client: {0}")]
    Http(String),
}

/// The headers a worker sends, and where.
pub struct ProviderHeaders<'a> {
    /// Header name and value pairs, in order.
    pub headers: Vec<(Cow<'static, str>, String)>,
    /// The provider's API base URL.
    pub base_url: &'a str,
}

/// The configured providers: each built-in one with its API client.
pub struct Providers {
    clients: Vec<(&'static dyn Provider, Client)>,
}

impl fmt::Debug for Providers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.clients.iter().map(|(p, c)| (p.name(), c.base_url())))
            .finish()
    }
}

impl Providers {
    /// Builds the providers' HTTP clients; a base URL for an unknown provider is an error.
    pub fn new(settings: &ProviderSettings) -> Result<Self, ProviderError> {
        if let Some(name) = settings.base_urls.keys().find(|n| find(n).is_none()) {
            return Err(ProviderError::Unknown {
                name: name.clone(),
                known: names(),
            });
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("credvault/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.request_timeout)
            // Secret headers are never replayed to wherever a redirect points.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ProviderError::Http(e.to_string()))?;
        let clients = BUILTIN
            .iter()
            .map(|&p| {
                let url = settings
                    .base_urls
                    .get(p.name())
                    .map_or(p.default_base_url(), String::as_str);
                Client::new(p.name(), http.clone(), url, settings.request_timeout).map(|c| (p, c))
            })
            .collect::<Result<_, _>>()?;
        Ok(Providers { clients })
    }

    fn client(&self, secret: &ProviderSecret) -> &Client {
        let (_, client) = self
            .clients
            .iter()
            .find(|(p, _)| p.name() == secret.provider())
            // Every ProviderSecret names a registered provider, and each has a client.
            .unwrap_or(&self.clients[0]);
        client
    }

    /// The headers to send with `secret`, and where.
    pub fn headers(&self, secret: &ProviderSecret) -> ProviderHeaders<'_> {
        ProviderHeaders {
            headers: secret.headers(),
            base_url: self.client(secret).base_url(),
        }
    }

    /// Checks `secret` against the provider's API. Never fails: problems are a status.
    pub async fn verify(&self, secret: &ProviderSecret) -> Verification {
        secret
            .provider
            .verify(self.client(secret), &secret.values)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_round_trip_and_skip_unknown_tags() {
        const FIELDS: &[Field] = &[
            Field {
                name: "key",
                secret: true,
                required: true,
            },
            Field {
                name: "extra",
                secret: false,
                required: false,
            },
        ];
        let values = Values::new(vec!["k-1234".into(), String::new()]);
        let mut bytes = values.encode();
        // A field appended by a later version is skipped by this one.
        prost::encoding::string::encode(9, &"later".to_owned(), &mut *bytes);
        let back = Values::decode(FIELDS, &bytes).unwrap();
        assert_eq!((back.get(0), back.get(1)), ("k-1234", ""));
        assert!(matches!(
            Values::decode(
                FIELDS,
                &Values::new(vec![String::new(), "x".into()]).encode()
            ),
            Err(SecretFormatError::Missing("key"))
        ));
        assert!(matches!(
            Values::decode(FIELDS, &[0x0a, 0x05, b'a']),
            Err(SecretFormatError::Malformed)
        ));
    }

    #[test]
    fn unknown_providers_are_named() {
        let err = ProviderSecret::from_plaintext("acme", b"").unwrap_err();
        assert_eq!(err.to_string(), "no provider is named \"acme\"");
        let mut settings = ProviderSettings::default();
        settings.base_urls.insert("acme".into(), "http://x".into());
        let err = Providers::new(&settings).unwrap_err().to_string();
        assert!(err.contains("\"acme\"") && err.contains("fleetio"), "{err}");
    }
}
