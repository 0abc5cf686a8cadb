//! A credential's headers as a worker holds them.

use std::fmt;

use http::{HeaderMap, HeaderName, HeaderValue};
use zeroize::Zeroizing;

use crate::proto;
use crate::Error;

/// The headers to send with one credential, and where: what
/// [`crate::Client::headers`] returns. Debug shows header names, never values;
/// the values are wiped from memory when the last copy is dropped.
#[derive(Clone)]
pub struct CredentialHeaders {
    credential_id: String,
    name: String,
    version: u64,
    /// What the vault made the headers from besides the credential (its provider's declaration).
    headers_revision: u64,
    base_url: String,
    headers: Vec<(HeaderName, Zeroizing<String>)>,
    verification: Option<proto::Verification>,
}

impl fmt::Debug for CredentialHeaders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialHeaders")
            .field("credential_id", &self.credential_id)
            .field("name", &self.name)
            .field("version", &self.version)
            .field("headers_revision", &self.headers_revision)
            .field("base_url", &self.base_url)
            .field(
                "headers",
                &self
                    .headers
                    .iter()
                    .map(|(n, _)| (n.as_str(), "[REDACTED]"))
                    .collect::<Vec<_>>(),
            )
            .field("verification", &self.verification)
            .finish()
    }
}

impl CredentialHeaders {
    /// From the vault's answer; header names and values must be valid HTTP.
    pub(crate) fn new(
        credential_id: String,
        name: String,
        version: u64,
        base_url: String,
        headers: Vec<proto::Header>,
        verification: Option<proto::Verification>,
    ) -> Result<Self, Error> {
        let headers = headers
            .into_iter()
            .map(|h| {
                let value = Zeroizing::new(h.value);
                HeaderValue::from_str(&value).map_err(|_| {
                    Error::Unavailable(format!(
                        "the vault sent an invalid value for header {:?}",
                        h.name
                    ))
                })?;
                let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| {
                    Error::Unavailable(format!(
                        "the vault sent an invalid header name {:?}",
                        h.name
                    ))
                })?;
                Ok((name, value))
            })
            .collect::<Result<_, Error>>()?;
        Ok(CredentialHeaders {
            credential_id,
            name,
            version,
            headers_revision: 0,
            base_url,
            headers,
            verification,
        })
    }

    /// The same headers, made at `revision` of their provider's declaration.
    pub(crate) fn at_revision(mut self, revision: u64) -> Self {
        self.headers_revision = revision;
        self
    }

    /// The same headers with another verification.
    pub(crate) fn with_verification(&self, verification: Option<proto::Verification>) -> Self {
        CredentialHeaders {
            verification,
            ..self.clone()
        }
    }

    /// The credential's id (`cred_...`).
    pub fn credential_id(&self) -> &str {
        &self.credential_id
    }

    /// The credential's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The credential's version; it grows with every change of the credential.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// What the vault made these headers from besides the credential: a digest of
    /// its provider's declaration (0 for a built-in provider). A providers-file
    /// reload can change the headers at the same [`Self::version`]; this changes with them.
    pub fn headers_revision(&self) -> u64 {
        self.headers_revision
    }

    /// The value of the header `name` (any case), e.g. `get("authorization")`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.as_str().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The provider's API base URL, e.g. `https://secure.fleetio.com/api`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The headers to send, in order, as name and value.
    pub fn iter(&self) -> impl Iterator<Item = (&HeaderName, &str)> {
        self.headers.iter().map(|(n, v)| (n, v.as_str()))
    }

    /// How many headers there are.
    pub fn len(&self) -> usize {
        self.headers.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.headers.is_empty()
    }

    /// The provider's latest verdict on the secret, as the vault recorded it.
    pub fn verification(&self) -> Option<&proto::Verification> {
        self.verification.as_ref()
    }

    /// Writes the headers into `map`, replacing any of the same names; the values
    /// are marked sensitive (HTTP/2 clients keep them out of header compression
    /// tables, and `http`'s Debug hides them).
    pub fn apply_to(&self, map: &mut HeaderMap) {
        for (name, value) in &self.headers {
            if let Ok(mut v) = HeaderValue::from_str(value) {
                v.set_sensitive(true);
                map.insert(name.clone(), v);
            }
        }
    }

    /// The headers as a new map (see [`CredentialHeaders::apply_to`]).
    pub fn to_header_map(&self) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(self.headers.len());
        self.apply_to(&mut map);
        map
    }
}
