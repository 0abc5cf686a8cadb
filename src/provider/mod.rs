//! Providers: for each third-party API, the shape of its secret, the headers a
//! worker sends, and how a secret is checked against the real API.
//!
//! A provider is a [`Provider`]: it declares its name, its secret's fields
//! (which of them are secret), its default base URL, the headers it sends, how
//! it verifies a secret and how it names a rejected value. The vault, the
//! service and the record format know providers only through this trait, the
//! `registry!` below and the [`Catalog`] of the providers in use.
//!
//! Built-in providers are modules ([`fleetio`]): one module, one line in the
//! registry, and a `<Provider>Secret` message in the proto. Declared providers
//! ([`declared`]) come from the providers file and need no code: their secrets
//! arrive as a `GenericSecret` (provider name plus named fields).

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

use crate::api;
use crate::error::Error;
use crate::record::{Verification, VerificationStatus};

mod client;
pub mod declared;
pub mod fleetio;

pub use client::{Client, MAX_RETRY_AFTER_SECONDS};

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

/// The values of a secret, in its provider's field order; an unset field is empty.
pub struct Values {
    values: Vec<Secret>,
    /// Fields the sealed secret holds that its provider no longer declares
    /// (kept sealed, never sent).
    undeclared: Vec<String>,
}

impl Values {
    /// Values from strings in field order (taken, not copied).
    pub fn new(values: Vec<String>) -> Self {
        Values {
            values: values.into_iter().map(secret).collect(),
            undeclared: Vec::new(),
        }
    }

    /// The value of field `index` (empty when unset or out of range).
    pub fn get(&self, index: usize) -> &str {
        self.values
            .get(index)
            .map_or("", |s| s.expose_secret().as_str())
    }

    /// How many fields there are.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether there are no fields.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The names of stored fields the provider no longer declares.
    pub fn undeclared(&self) -> &[String] {
        &self.undeclared
    }

    /// Notes stored fields the provider no longer declares.
    fn with_undeclared(mut self, undeclared: Vec<String>) -> Self {
        self.undeclared = undeclared;
        self
    }

    /// The sealed form: field `i` as protobuf string tag `i + 1`, unset fields left out.
    fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut buf = Zeroizing::new(Vec::new());
        for (i, value) in self.values.iter().enumerate() {
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
            Some((_, f)) => Err(SecretFormatError::Missing(f.name.to_string())),
            None => Ok(values),
        }
    }
}

/// Why opened bytes are not a provider's secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretFormatError {
    /// No provider has that name.
    #[error("no provider is named {0:?}")]
    UnknownProvider(String),
    /// The bytes are not the provider's secret.
    #[error("the opened secret is not in the provider's format")]
    Malformed,
    /// A field the provider needs is absent.
    #[error("the opened secret lacks its {0}")]
    Missing(String),
}

/// A provider secret, validated and ready to seal or use.
pub struct ProviderSecret {
    provider: ProviderRef,
    values: Values,
}

impl fmt::Debug for ProviderSecret {
    /// Plain fields are shown, secret ones redacted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("ProviderSecret");
        s.field("provider", &self.provider.name());
        for (i, field) in self.provider.fields().iter().enumerate() {
            if field.secret {
                s.field(&field.name, &"[REDACTED]");
            } else {
                s.field(&field.name, &self.values.get(i));
            }
        }
        s.finish()
    }
}

impl ProviderSecret {
    /// A secret of `provider` from values it validated.
    pub fn new(provider: ProviderRef, values: Values) -> Self {
        ProviderSecret { provider, values }
    }

    /// The provider's name as stored and shown (`fleetio`).
    pub fn provider(&self) -> &str {
        self.provider.name()
    }

    /// The names of the fields this secret sets, in field order (plain metadata
    /// stored beside the sealed secret, to report fields a later declaration drops).
    pub fn set_fields(&self) -> Vec<String> {
        let fields = self.provider.fields();
        (0..self.values.len())
            .filter(|&i| !self.values.get(i).is_empty())
            .filter_map(|i| fields.get(i).map(|f| f.name.to_string()))
            .chain(self.values.undeclared().iter().cloned())
            .collect()
    }

    /// The values of the fields that are not secret and are set, by field name
    /// (Fleetio's API version): shown to operators so that a rotation keeps them.
    pub fn plain_fields(&self) -> Vec<(String, String)> {
        self.provider
            .fields()
            .iter()
            .enumerate()
            .filter(|(i, f)| !f.secret && !self.values.get(*i).is_empty())
            .map(|(i, f)| (f.name.to_string(), self.values.get(i).to_owned()))
            .collect()
    }

    /// Stored fields the provider no longer declares.
    pub fn undeclared(&self) -> &[String] {
        self.values.undeclared()
    }

    /// Whether its provider comes from the providers file.
    pub fn is_declared(&self) -> bool {
        matches!(self.provider, ProviderRef::Declared(_))
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
        self.provider.encode(&self.values)
    }

    /// Reads opened bytes back as the secret of the built-in provider named `provider`.
    pub fn from_plaintext(provider: &str, bytes: &[u8]) -> Result<Self, SecretFormatError> {
        let provider = find(provider)
            .ok_or_else(|| SecretFormatError::UnknownProvider(provider.to_owned()))?;
        let values = provider.decode(bytes)?;
        Ok(ProviderSecret {
            provider: ProviderRef::Builtin(provider),
            values,
        })
    }
}

/// The registry: the built-in providers and the arms of the requests' `secret`
/// oneofs. Each line is `OneofArm => module`, the module exposing `PROVIDER`
/// (its [`Provider`]) and `TryFrom<api::<Provider>Secret> for ProviderSecret`.
/// The `generic` arm goes to the catalog's declared providers.
macro_rules! registry {
    ($($arm:ident => $module:ident),+ $(,)?) => {
        /// Every built-in provider.
        pub static BUILTIN: &[&'static dyn Provider] = &[$(&$module::PROVIDER),+];

        impl Catalog {
            /// The secret oneof of a create request, validated by its provider.
            pub fn create_secret(
                &self,
                value: api::create_credential_request::Secret,
            ) -> Result<ProviderSecret, Error> {
                use api::create_credential_request::Secret;
                match value {
                    $(Secret::$arm(s) => s.try_into(),)+
                    Secret::Generic(s) => self.generic_secret(s),
                }
            }

            /// A create request's secret oneof from a form's fields by name (the
            /// web console), for the provider named `provider`; left unvalidated.
            pub fn create_secret_from_fields(
                &self,
                provider: &str,
                mut fields: HashMap<String, String>,
            ) -> api::create_credential_request::Secret {
                use api::create_credential_request::Secret;
                $(if provider == $module::PROVIDER.name() {
                    return Secret::$arm($module::from_fields(&mut fields));
                })+
                Secret::Generic(api::GenericSecret { provider: provider.to_owned(), fields })
            }

            /// An update request's secret oneof from a form's fields by name.
            pub fn update_secret_from_fields(
                &self,
                provider: &str,
                mut fields: HashMap<String, String>,
            ) -> api::update_credential_request::Secret {
                use api::update_credential_request::Secret;
                $(if provider == $module::PROVIDER.name() {
                    return Secret::$arm($module::from_fields(&mut fields));
                })+
                Secret::Generic(api::GenericSecret { provider: provider.to_owned(), fields })
            }

            /// The secret oneof of an update request, validated by its provider.
            pub fn update_secret(
                &self,
                value: api::update_credential_request::Secret,
            ) -> Result<ProviderSecret, Error> {
                use api::update_credential_request::Secret;
                match value {
                    $(Secret::$arm(s) => s.try_into(),)+
                    Secret::Generic(s) => self.generic_secret(s),
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

/// Settings shared by the providers' HTTP clients.
#[derive(Clone, Debug)]
pub struct ProviderSettings {
    /// API base URLs by provider name, over each provider's default.
    pub base_urls: BTreeMap<String, String>,
    /// Longest wait for a TCP/TLS connection to a provider.
    pub connect_timeout: Duration,
    /// Longest wait for a whole verification request.
    pub request_timeout: Duration,
    /// The providers file (declared providers), read at start and on reload.
    pub file: Option<PathBuf>,
}

impl Default for ProviderSettings {
    fn default() -> Self {
        ProviderSettings {
            base_urls: BTreeMap::new(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            file: None,
        }
    }
}

/// Why the providers could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// A `--provider-base-url` names no provider.
    #[error("no provider is named {name:?} (known: {known})")]
    Unknown {
        /// The name given.
        name: String,
        /// The providers there are.
        known: String,
    },
    /// A base URL that is not one to send secrets to.
    #[error("{provider} base url {url:?} {why}")]
    BaseUrl {
        /// The provider.
        provider: String,
        /// The URL given.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the provider http client: {0}")]
    Http(String),
    /// The providers file is not valid.
    #[error(transparent)]
    File(#[from] declared::DeclarationError),
    /// A reload was asked for, but no providers file was given.
    #[error("no providers file to reload")]
    NoFile,
}

/// The headers a worker sends, and where.
pub struct ProviderHeaders {
    /// Header name and value pairs, in order.
    pub headers: Vec<(Cow<'static, str>, String)>,
    /// The provider's API base URL.
    pub base_url: String,
    /// What they were made from besides the secret ([`Catalog::headers_revision`]).
    pub revision: u64,
}

/// One provider in use, with its API client.
struct Entry {
    provider: ProviderRef,
    client: Client,
    /// What the headers of this provider's credentials are made from (see
    /// [`Catalog::headers_revision`]).
    revision: u64,
}

/// The headers revision of a provider no longer in the catalog.
pub const NO_PROVIDER_REVISION: u64 = u64::MAX;

/// A digest of how `provider` makes headers at `base_url`: 0 for a built-in one
/// (compiled in), else the first 8 bytes of SHA-256 over its declaration as
/// parsed. The same declaration gives the same revision on every replica and
/// after a restart, so a client's held (version, revision) stays comparable.
fn revision_of(provider: &ProviderRef, base_url: &str) -> u64 {
    use sha2::Digest;
    match provider {
        ProviderRef::Builtin(_) => 0,
        ProviderRef::Declared(d) => {
            let digest = sha2::Sha256::digest(format!("{base_url}\n{d:?}").as_bytes());
            let mut first = [0u8; 8];
            first.copy_from_slice(&digest[..8]);
            // Never the value of a missing provider.
            u64::from_be_bytes(first).min(NO_PROVIDER_REVISION - 1)
        }
    }
}

/// The providers in use at one moment: the built-in ones, then the declared ones.
pub struct Catalog {
    entries: Vec<Entry>,
}

impl fmt::Debug for Catalog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                self.entries
                    .iter()
                    .map(|e| (e.provider.name(), e.client.base_url())),
            )
            .finish()
    }
}

impl Catalog {
    /// The built-in providers at their default base URLs (for tools without a server).
    pub fn builtin() -> Self {
        let http = reqwest::Client::new();
        let entries = BUILTIN
            .iter()
            .filter_map(|&p| {
                Client::new(p.name(), http.clone(), p.default_base_url(), Duration::ZERO)
                    .ok()
                    .map(|client| Entry {
                        provider: ProviderRef::Builtin(p),
                        client,
                        revision: 0,
                    })
            })
            .collect();
        Catalog { entries }
    }

    fn entry(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.provider.name() == name)
    }

    /// The provider named `name`, built in or declared.
    pub fn find(&self, name: &str) -> Option<ProviderRef> {
        self.entry(name).map(|e| e.provider.clone())
    }

    /// What the headers of `provider`'s credentials are made from now: changes
    /// when a reload changes its declaration ([`NO_PROVIDER_REVISION`] when it
    /// is gone). Clients compare it with the credential's version.
    pub fn headers_revision(&self, provider: &str) -> u64 {
        self.entry(provider)
            .map_or(NO_PROVIDER_REVISION, |e| e.revision)
    }

    /// The names of the providers, built-in first (`fleetio, acme`).
    pub fn names(&self) -> String {
        self.entries
            .iter()
            .map(|e| e.provider.name())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Every provider's name and secret fields, built-in first (the console's forms).
    pub fn forms(&self) -> Vec<(String, Vec<Field>)> {
        self.entries
            .iter()
            .map(|e| (e.provider.name().to_owned(), e.provider.fields().to_vec()))
            .collect()
    }

    /// How many providers are declared (not built in).
    pub fn declared(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| matches!(e.provider, ProviderRef::Declared(_)))
            .count()
    }

    /// A `GenericSecret`: the fields of a declared provider, by name, validated.
    fn generic_secret(&self, mut value: api::GenericSecret) -> Result<ProviderSecret, Error> {
        let fields = std::mem::take(&mut value.fields);
        match self.find(&value.provider) {
            Some(ProviderRef::Declared(p)) => p.secret_from(fields),
            Some(ProviderRef::Builtin(p)) => {
                declared::wipe(fields);
                Err(Error::invalid(format!(
                    "provider {:?} is built in: set its own secret message ({}) instead of generic",
                    p.name(),
                    p.name()
                )))
            }
            None if value.provider.is_empty() => {
                declared::wipe(fields);
                Err(Error::invalid("generic.provider is required"))
            }
            None => {
                declared::wipe(fields);
                Err(Error::invalid(format!(
                    "no provider is named \"{}\" (known: {})",
                    crate::escape::capped(&value.provider, 64),
                    self.names()
                )))
            }
        }
    }

    /// Reads opened bytes back as the secret of the provider named `provider`.
    pub fn read(&self, provider: &str, bytes: &[u8]) -> Result<ProviderSecret, SecretFormatError> {
        let provider = self
            .find(provider)
            .ok_or_else(|| SecretFormatError::UnknownProvider(provider.to_owned()))?;
        let values = provider.decode(bytes)?;
        Ok(ProviderSecret { provider, values })
    }

    /// The headers to send with `secret`, and where; `None` when its provider
    /// is no longer in the catalog.
    pub fn headers(&self, secret: &ProviderSecret) -> Option<ProviderHeaders> {
        let entry = self.entry(secret.provider())?;
        Some(ProviderHeaders {
            headers: secret.headers(),
            base_url: entry.client.base_url().to_owned(),
            revision: entry.revision,
        })
    }

    /// What a stored credential's plain metadata says its provider now lacks:
    /// whether the provider is known, the stored fields it no longer declares,
    /// and the fields it requires that were not stored.
    pub fn drift(&self, provider: &str, stored: &[String]) -> Drift {
        let Some(p) = self.find(provider) else {
            return Drift {
                unknown_provider: true,
                ..Drift::default()
            };
        };
        if stored.is_empty() {
            // Records of built-in providers (and older ones) carry no field list.
            return Drift::default();
        }
        let fields = p.fields();
        Drift {
            unknown_provider: false,
            undeclared: stored
                .iter()
                .filter(|s| !fields.iter().any(|f| f.name == s.as_str()))
                .cloned()
                .collect(),
            missing: fields
                .iter()
                .filter(|f| f.required && !stored.iter().any(|s| f.name == s.as_str()))
                .map(|f| f.name.to_string())
                .collect(),
        }
    }
}

/// How a stored credential and its provider's current declaration disagree.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Drift {
    /// No provider of the stored name is built in or declared.
    pub unknown_provider: bool,
    /// Stored fields the provider no longer declares (kept sealed, not sent).
    pub undeclared: Vec<String>,
    /// Fields the provider now requires that the stored secret lacks.
    pub missing: Vec<String>,
}

/// The configured providers: each built-in and declared one with its API
/// client; the declared ones are replaced whole on reload.
pub struct Providers {
    http: reqwest::Client,
    settings: ProviderSettings,
    current: RwLock<Arc<Catalog>>,
}

impl fmt::Debug for Providers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.current().fmt(f)
    }
}

impl Providers {
    /// Reads the providers file, if any, and builds each provider's HTTP client;
    /// a base URL for an unknown provider is an error.
    pub fn new(settings: &ProviderSettings) -> Result<Self, ProviderError> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("credvault/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.request_timeout)
            // Secret headers are never replayed to wherever a redirect points.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ProviderError::Http(e.to_string()))?;
        let declared = match &settings.file {
            Some(path) => declared::read_file(path)?,
            None => Vec::new(),
        };
        let catalog = Self::catalog(&http, settings, declared)?;
        if let Some(name) = settings
            .base_urls
            .keys()
            .find(|n| catalog.entry(n).is_none())
        {
            return Err(ProviderError::Unknown {
                name: name.clone(),
                known: catalog.names(),
            });
        }
        Ok(Providers {
            http,
            settings: settings.clone(),
            current: RwLock::new(Arc::new(catalog)),
        })
    }

    fn catalog(
        http: &reqwest::Client,
        settings: &ProviderSettings,
        declared: Vec<declared::Declared>,
    ) -> Result<Catalog, ProviderError> {
        let providers = BUILTIN.iter().map(|&p| ProviderRef::Builtin(p)).chain(
            declared
                .into_iter()
                .map(|d| ProviderRef::Declared(Arc::new(d))),
        );
        let entries = providers
            .map(|provider| {
                let url = settings
                    .base_urls
                    .get(provider.name())
                    .map_or(provider.default_base_url(), String::as_str);
                let client =
                    Client::new(provider.name(), http.clone(), url, settings.request_timeout)?;
                let revision = revision_of(&provider, url);
                Ok(Entry {
                    provider,
                    client,
                    revision,
                })
            })
            .collect::<Result<_, ProviderError>>()?;
        Ok(Catalog { entries })
    }

    /// The providers in use now.
    pub fn current(&self) -> Arc<Catalog> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The providers file, if any.
    pub fn path(&self) -> Option<&std::path::Path> {
        self.settings.file.as_deref()
    }

    /// Reads the providers file again; on any error the current set stays.
    /// Returns how many providers are declared now.
    pub fn reload(&self) -> Result<usize, ProviderError> {
        let path = self.settings.file.as_ref().ok_or(ProviderError::NoFile)?;
        let declared = declared::read_file(path)?;
        let catalog = Self::catalog(&self.http, &self.settings, declared)?;
        let count = catalog.declared();
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(catalog);
        Ok(count)
    }

    /// Checks `secret` against the provider's API. Never fails: problems are a status.
    pub async fn verify(&self, secret: &ProviderSecret) -> Verification {
        let catalog = self.current();
        match catalog.entry(secret.provider()) {
            Some(entry) => secret.provider.verify(&entry.client, &secret.values).await,
            None => Verification::now(
                VerificationStatus::ProviderError,
                0,
                format!(
                    "provider {:?} is no longer declared in the providers file",
                    secret.provider()
                ),
            ),
        }
    }
}

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
