//! Providers: for each third-party API, the shape of its secret, the headers a
//! worker sends, and how a secret is checked against the real API.
//!
//! A provider is a [`Provider`]: it declares its name, its secret's fields
//! (which of them are secret), its default base URL, the headers it sends, how
//! it verifies a secret and how it names a rejected value. The vault, the
//! service and the record format know providers only through this trait, the
//! registry ([`BUILTIN`]) and the [`Catalog`] of the providers in use.
//!
//! Built-in providers are modules ([`fleetio`]): one module, one line in the
//! registry, a `<Provider>Secret` message in the proto and its line in the
//! server's request registry (`src/convert/secret.rs`). Declared providers
//! ([`declared`]) come from the providers file and need no code: their secrets
//! arrive as a `GenericSecret` (provider name plus named fields).
//!
//! Here the trait and the registry; `secret` (a provider's secret, sealed and
//! opened as one), `catalog` (the providers in use, their headers and drift),
//! `client` (the shared HTTP outcomes).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Deref;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use futures_util::future::BoxFuture;
use secrecy::{ExposeSecret, SecretBox};
use zeroize::Zeroizing;

use crate::error::Error;
use crate::record::{Verification, VerificationStatus};

mod catalog;
mod client;
pub mod declared;
pub mod fleetio;
mod secret;

pub use client::{Client, MAX_RETRY_AFTER_SECONDS};

pub use catalog::*;
pub use secret::*;

/// A secret string: redacted in Debug, no Display, zeroized on drop.
pub type Secret = SecretBox<String>;

/// Wraps a string as a [`Secret`] without copying it.
pub fn secret(value: String) -> Secret {
    SecretBox::new(Box::new(value))
}

/// One field of a provider's secret, as its proto message names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    /// The field's name in the provider's proto message (`api_key`).
    pub name: Cow<'static, str>,
    /// Whether the value is secret (never shown) or plain (an API version).
    pub secret: bool,
    /// Whether a secret is whole without it.
    pub required: bool,
}

/// One third-party API credvault keeps secrets for.
///
/// By default fields are sealed in declaration order (field `i` as protobuf
/// string tag `i + 1`), so a built-in provider may append fields but never
/// reorder them; declared providers seal by field name instead.
pub trait Provider: Send + Sync + 'static {
    /// The name stored with each credential and shown by the API (`fleetio`).
    fn name(&self) -> &str;
    /// The fields of its secret, in its proto message's order.
    fn fields(&self) -> &[Field];
    /// Its production API base URL.
    fn default_base_url(&self) -> &str;
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
        secret_hint(values.get(0))
    }
    /// A fingerprint of the provider account the secret speaks for (rate limits
    /// are per account; by default the first field); kept in memory only, never logged.
    fn account_key(&self, values: &Values) -> [u8; 32] {
        fingerprint(self.name(), values.get(0))
    }
    /// The sealed form of `values`: by default field `i` as protobuf string tag `i + 1`.
    fn encode(&self, values: &Values) -> Zeroizing<Vec<u8>> {
        values.encode()
    }
    /// Reads the sealed form back.
    fn decode(&self, bytes: &[u8]) -> Result<Values, SecretFormatError> {
        Values::decode(self.fields(), bytes)
    }
}

/// A provider as a secret holds it: a built-in one or one from the providers file.
#[derive(Clone)]
pub enum ProviderRef {
    /// Compiled in (the registry).
    Builtin(&'static dyn Provider),
    /// Declared in the providers file; the declaration in use when the secret was read.
    Declared(Arc<declared::Declared>),
}

impl Deref for ProviderRef {
    type Target = dyn Provider;
    fn deref(&self) -> &Self::Target {
        match self {
            ProviderRef::Builtin(p) => *p,
            ProviderRef::Declared(p) => &**p,
        }
    }
}

/// The shortest secret whose last 4 characters a hint shows: of a shorter one, 4
/// characters are too large a share to give away.
pub const MIN_HINTED_SECRET: usize = 12;

/// The last 4 characters of a secret, to tell keys apart; nothing for a secret
/// shorter than [`MIN_HINTED_SECRET`] characters.
pub fn secret_hint(secret: &str) -> String {
    if secret.chars().count() < MIN_HINTED_SECRET {
        return String::new();
    }
    let start = secret.char_indices().rev().nth(3).map_or(0, |(i, _)| i);
    secret[start..].to_owned()
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

/// The built-in provider named `name`.
pub fn find(name: &str) -> Option<&'static dyn Provider> {
    BUILTIN.iter().copied().find(|p| p.name() == name)
}

/// Checks a header-bound secret value: present when `min > 0`, `min` to 512
/// characters, visible ASCII only (so no space, CR or LF can split a header).
/// Errors name `provider.field`, never the value.
pub fn check_token(provider: &str, field: &str, value: &str, min: usize) -> Result<(), Error> {
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

/// The longest value a secret field may hold.
pub const MAX_SECRET_LEN: usize = 512;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_round_trip_and_skip_unknown_tags() {
        const FIELDS: &[Field] = &[
            Field {
                name: Cow::Borrowed("key"),
                secret: true,
                required: true,
            },
            Field {
                name: Cow::Borrowed("extra"),
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
            Err(SecretFormatError::Missing(f)) if f == "key"
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

#[cfg(test)]
mod hint_tests {
    use super::*;

    #[test]
    fn a_hint_shows_the_last_four_of_a_long_secret_and_nothing_of_a_short_one() {
        assert_eq!(secret_hint("key-00000001"), "0001");
        assert_eq!(secret_hint("key-0000001"), "", "11 characters: no hint");
        assert_eq!(secret_hint(""), "");
        assert_eq!(secret_hint("ééééééééééé😀"), "ééé😀");
    }
}
