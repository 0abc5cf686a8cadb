//! Providers: for each third-party API, the shape of its secret, the headers a
//! worker sends, and how a secret is checked against the real API.
//!
//! Adding an API-key provider means one module beside [`fleetio`]: a secret type
//! (validated from its proto message, encoded for sealing), its headers and its
//! verification, plus one arm in each `match` below.

use std::time::Duration;

use secrecy::SecretBox;
use zeroize::Zeroizing;

use crate::api;
use crate::error::Error;
use crate::record::Verification;

pub mod fleetio;

/// A secret string: redacted in Debug, no Display, zeroized on drop.
pub type Secret = SecretBox<String>;

/// Wraps a string as a [`Secret`] without copying it.
pub fn secret(value: String) -> Secret {
    SecretBox::new(Box::new(value))
}

/// A provider secret, validated and ready to seal or use.
#[derive(Debug)]
pub enum ProviderSecret {
    /// A Fleetio key pair.
    Fleetio(fleetio::FleetioSecret),
}

impl ProviderSecret {
    /// The provider's name as stored and shown (`fleetio`).
    pub fn provider(&self) -> &'static str {
        match self {
            ProviderSecret::Fleetio(_) => fleetio::NAME,
        }
    }

    /// The non-secret hint shown in listings: the last 4 characters of the key.
    pub fn hint(&self) -> String {
        match self {
            ProviderSecret::Fleetio(s) => s.hint(),
        }
    }

    /// A fingerprint of the provider account the secret speaks for (rate limits
    /// are per account); kept in memory only, never logged.
    pub fn account_key(&self) -> [u8; 32] {
        match self {
            ProviderSecret::Fleetio(s) => s.account_key(),
        }
    }

    /// The bytes to seal.
    pub fn to_plaintext(&self) -> Zeroizing<Vec<u8>> {
        match self {
            ProviderSecret::Fleetio(s) => s.to_plaintext(),
        }
    }

    /// Reads opened bytes back as the secret of `provider`.
    pub fn from_plaintext(provider: &str, bytes: &[u8]) -> Result<Self, String> {
        match provider {
            fleetio::NAME => {
                fleetio::FleetioSecret::from_plaintext(bytes).map(ProviderSecret::Fleetio)
            }
            other => Err(format!("unknown provider {other:?}")),
        }
    }
}

/// The secret oneof of a create request, validated.
impl TryFrom<api::create_credential_request::Secret> for ProviderSecret {
    type Error = Error;
    fn try_from(value: api::create_credential_request::Secret) -> Result<Self, Error> {
        match value {
            api::create_credential_request::Secret::Fleetio(s) => {
                fleetio::FleetioSecret::try_from(s).map(Self::Fleetio)
            }
        }
    }
}

/// The secret oneof of an update request, validated.
impl TryFrom<api::update_credential_request::Secret> for ProviderSecret {
    type Error = Error;
    fn try_from(value: api::update_credential_request::Secret) -> Result<Self, Error> {
        match value {
            api::update_credential_request::Secret::Fleetio(s) => {
                fleetio::FleetioSecret::try_from(s).map(Self::Fleetio)
            }
        }
    }
}

/// Settings shared by the providers' HTTP clients.
#[derive(Clone, Debug)]
pub struct ProviderSettings {
    /// Fleetio's API base URL, e.g. `https://secure.fleetio.com/api`.
    pub fleetio_base_url: String,
    /// Longest wait for a TCP/TLS connection to a provider.
    pub connect_timeout: Duration,
    /// Longest wait for a whole verification request.
    pub request_timeout: Duration,
}

impl Default for ProviderSettings {
    fn default() -> Self {
        ProviderSettings {
            fleetio_base_url: fleetio::DEFAULT_BASE_URL.to_owned(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// The headers a worker sends, and where.
pub struct ProviderHeaders<'a> {
    /// Header name and value pairs, in order.
    pub headers: Vec<(&'static str, String)>,
    /// The provider's API base URL.
    pub base_url: &'a str,
}

/// The configured providers.
#[derive(Debug)]
pub struct Providers {
    fleetio: fleetio::Fleetio,
}

impl Providers {
    /// Builds the providers' HTTP clients.
    pub fn new(settings: &ProviderSettings) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("credvault/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.request_timeout)
            // Secret headers are never replayed to wherever a redirect points.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build the provider http client: {e}"))?;
        Ok(Providers {
            fleetio: fleetio::Fleetio::new(
                http,
                &settings.fleetio_base_url,
                settings.request_timeout,
            )?,
        })
    }

    /// The headers to send with `secret`.
    pub fn headers(&self, secret: &ProviderSecret) -> ProviderHeaders<'_> {
        match secret {
            ProviderSecret::Fleetio(s) => ProviderHeaders {
                headers: s.headers(),
                base_url: self.fleetio.base_url(),
            },
        }
    }

    /// Checks `secret` against the provider's API. Never fails: problems are a status.
    pub async fn verify(&self, secret: &ProviderSecret) -> Verification {
        match secret {
            ProviderSecret::Fleetio(s) => self.fleetio.verify(s).await,
        }
    }
}
