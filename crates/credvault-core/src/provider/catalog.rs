//! The providers in use: their settings (base URLs, the HTTP client), the catalog of
//! built-in and declared providers with each one's revision, the headers a secret
//! makes, and a credential's drift from its provider's declaration.

use super::*;

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
pub(super) struct Entry {
    pub(super) provider: ProviderRef,
    pub(super) client: Client,
    /// What the headers of this provider's credentials are made from (see
    /// [`Catalog::headers_revision`]).
    pub(super) revision: u64,
}

/// The headers revision of a provider no longer in the catalog.
pub const NO_PROVIDER_REVISION: u64 = u64::MAX;

/// A digest of how `provider` makes headers at `base_url`: 0 for a built-in one
/// (compiled in), else the first 8 bytes of SHA-256 over its declaration as
/// parsed. The same declaration gives the same revision on every replica and
/// after a restart, so a client's held (version, revision) stays comparable.
pub(super) fn revision_of(provider: &ProviderRef, base_url: &str) -> u64 {
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
    pub(super) entries: Vec<Entry>,
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

    pub(super) fn entry(&self, name: &str) -> Option<&Entry> {
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

    /// A generic secret: the fields of the declared provider named `provider`, by
    /// name, validated (wiped when refused).
    pub fn generic_secret(
        &self,
        provider: &str,
        fields: HashMap<String, String>,
    ) -> Result<ProviderSecret, Error> {
        match self.find(provider) {
            Some(ProviderRef::Declared(p)) => p.secret_from(fields),
            Some(ProviderRef::Builtin(p)) => {
                declared::wipe(fields);
                Err(Error::invalid(format!(
                    "provider {:?} is built in: set its own secret message ({}) instead of generic",
                    p.name(),
                    p.name()
                )))
            }
            None if provider.is_empty() => {
                declared::wipe(fields);
                Err(Error::invalid("generic.provider is required"))
            }
            None => {
                declared::wipe(fields);
                Err(Error::invalid(format!(
                    "no provider is named \"{}\" (known: {})",
                    crate::escape::capped(provider, 64),
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
    pub(super) http: reqwest::Client,
    pub(super) settings: ProviderSettings,
    pub(super) current: RwLock<Arc<Catalog>>,
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

    pub(super) fn catalog(
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
