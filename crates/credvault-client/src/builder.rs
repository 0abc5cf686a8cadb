//! Building a client: the vault's address (or `CREDVAULT_ADDR`), the token (or
//! `CREDVAULT_TOKEN`), TLS, and the channel with its bearer interceptor.

use super::*;

pub(super) type Vault = proto::credential_vault_service_client::CredentialVaultServiceClient<
    InterceptedService<Channel, Bearer>,
>;

/// Adds `authorization: Bearer <token>` to every call (or nothing, under mTLS).
#[derive(Clone)]
pub(super) struct Bearer(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// How a [`Client`] is made: the vault's endpoint, a token and/or TLS, and its timing.
pub struct ClientBuilder {
    pub(crate) endpoint: String,
    pub(crate) token: Option<Zeroizing<String>>,
    pub(crate) tls: Option<ClientTlsConfig>,
    pub(crate) max_staleness: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) backoff: (Duration, Duration),
    pub(crate) max_credentials: usize,
    pub(crate) lease_size: u32,
    pub(crate) acquire_timeout: Duration,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "[REDACTED]"))
            .field("tls", &self.tls.is_some())
            .field("max_staleness", &self.max_staleness)
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    /// The caller's bearer token (its `headers.read` permission is what counts).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(Zeroizing::new(token.into()));
        self
    }

    /// TLS to the vault: the CA to trust (`tls.ca_certificate(...)`), and for mutual
    /// TLS the client certificate (`tls.identity(...)`), which may stand in for the token.
    pub fn tls(mut self, tls: ClientTlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// How long the last good headers are served while the vault is out of reach
    /// (default 5 minutes); after that, [`Error::Stale`].
    pub fn max_staleness(mut self, max: Duration) -> Self {
        self.max_staleness = max;
        self
    }

    /// Longest wait for a first fetch (default 10 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Longest wait for a connection (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The reconnection backoff: the first delay and the longest (default 100 ms
    /// and 10 s); each wait is drawn at random up to the current delay.
    pub fn backoff(mut self, first: Duration, max: Duration) -> Self {
        self.backoff = (first.max(Duration::from_millis(1)), max.max(first));
        self
    }

    /// The most credentials the client watches (default 1000, the server's default
    /// limit per stream).
    pub fn max_credentials(mut self, max: usize) -> Self {
        self.max_credentials = max.max(1);
        self
    }

    /// How many budgeted requests [`Client::acquire`] leases from the vault at a
    /// time (default 10; the vault grants at most a tenth of a window's budget).
    pub fn lease_size(mut self, n: u32) -> Self {
        self.lease_size = n.clamp(1, 10_000);
        self
    }

    /// The longest [`Client::acquire`] waits for a pause to end or the budget
    /// to allow a request (default 60 s); past it, it fails saying until when.
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// Makes the client; it connects lazily, on the first ask. Must be called
    /// inside a tokio runtime (the watch stream runs on it).
    pub fn build(self) -> Result<Client, Error> {
        let invalid = |what: String| Error::InvalidArgument(what);
        let (uri, https) = endpoint_uri(&self.endpoint)?;
        let mut endpoint = Endpoint::from_shared(uri)
            .map_err(|e| {
                invalid(format!(
                    "the endpoint {:?} is not valid: {e}",
                    self.endpoint
                ))
            })?
            .connect_timeout(self.connect_timeout)
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        // https:// alone trusts the public web roots, as a browser would.
        let tls = match self.tls {
            Some(tls) => Some(tls),
            None if https => Some(ClientTlsConfig::new().with_webpki_roots()),
            None => None,
        };
        if let Some(tls) = tls {
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| invalid(format!("the TLS settings are not valid: {e}")))?;
        }
        let token = self.token.or_else(|| {
            std::env::var(TOKEN_ENV)
                .ok()
                .filter(|t| !t.is_empty())
                .map(Zeroizing::new)
        });
        let token = match &token {
            Some(t) => Some(
                format!("Bearer {}", t.as_str())
                    .parse::<MetadataValue<Ascii>>()
                    .map_err(|_| invalid("the token holds characters a header cannot".into()))?,
            ),
            None => None,
        };
        let vault =
            proto::credential_vault_service_client::CredentialVaultServiceClient::with_interceptor(
                endpoint.connect_lazy(),
                Bearer(token),
            );
        let inner = Arc::new(Inner {
            vault,
            max_staleness: self.max_staleness,
            request_timeout: self.request_timeout,
            backoff: self.backoff,
            max_credentials: self.max_credentials,
            lease_size: self.lease_size,
            acquire_timeout: self.acquire_timeout,
            state: Mutex::new(State::default()),
            views: ArcSwap::from_pointee(HashMap::new()),
            changed: Notify::new(),
            stats: Counters::default(),
        });
        let task = tokio::spawn(watch_loop(Arc::clone(&inner)));
        Ok(Client {
            inner,
            _task: Arc::new(AbortOnDrop(task)),
        })
    }
}

/// Where the vault is when no endpoint is given ([`Client::from_env`]), as hvac reads `VAULT_ADDR`.
pub const ADDR_ENV: &str = "CREDVAULT_ADDR";

/// The caller's token when none is given, as hvac reads `VAULT_TOKEN`.
pub const TOKEN_ENV: &str = "CREDVAULT_TOKEN";

/// The URI to dial for an endpoint as the Python client takes it too:
/// `host:port`, `http://host:port` or `https://host:port` (TLS); whether it is
/// `https`. Any other form fails here, saying why.
pub(super) fn endpoint_uri(given: &str) -> Result<(String, bool), Error> {
    let text = given.trim().trim_end_matches('/');
    let (scheme, rest) = match text.split_once("://") {
        Some((scheme @ ("http" | "https"), rest)) => (scheme, rest),
        Some((scheme, _)) => {
            return Err(Error::InvalidArgument(format!(
                "the vault address {given:?} has scheme {scheme:?}: use host:port, http://host:port or https://host:port"
            )))
        }
        None => ("http", text),
    };
    let ok = rest.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty() && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())
    }) && !rest.contains('/');
    if !ok {
        return Err(Error::InvalidArgument(format!(
            "the vault address {given:?} is not host:port (e.g. credvault:50051)"
        )));
    }
    Ok((format!("{scheme}://{rest}"), scheme == "https"))
}
