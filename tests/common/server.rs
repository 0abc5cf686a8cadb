//! The real server in this process on 127.0.0.1:0, its options, and authenticated clients.

use super::*;

/// Which store a test server runs on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TestStore {
    #[default]
    Sled,
    /// A new database on the shared test cluster (see [`postgres::PgCluster`]).
    Postgres,
}

/// Adds `authorization: Bearer <token>` to every call (or nothing).
#[derive(Clone)]
pub struct Bearer(pub Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

pub type Client = CredentialVaultServiceClient<InterceptedService<Channel, Bearer>>;

/// The callers every test server knows: one per permission, an admin and a no-permission caller.
pub struct Tokens {
    pub admin: String,
    pub reader: String,
    pub writer: String,
    pub verifier: String,
    pub worker: String,
    pub nobody: String,
}

impl Tokens {
    pub(crate) fn new() -> Self {
        let t = || mint_token().as_str().to_owned();
        Tokens {
            admin: t(),
            reader: t(),
            writer: t(),
            verifier: t(),
            worker: t(),
            nobody: t(),
        }
    }

    pub fn callers_toml(&self) -> String {
        [
            callers_entry("admin", &self.admin, &Permission::ALL),
            callers_entry("reader", &self.reader, &[Permission::CredentialsRead]),
            callers_entry("writer", &self.writer, &[Permission::CredentialsWrite]),
            callers_entry("verifier", &self.verifier, &[Permission::CredentialsVerify]),
            callers_entry("worker", &self.worker, &[Permission::HeadersRead]),
            callers_entry("nobody", &self.nobody, &[]),
        ]
        .join("\n")
    }
}

/// How to start a test server.
pub struct Options {
    pub fleetio_base_url: String,
    pub request_timeout: Duration,
    /// The keyring's text: one base64 key, or `id = base64` lines.
    pub key_b64: String,
    /// Read the keyring from this file instead (and again when it changes).
    pub keyring_file: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    /// The store; with Postgres, a new database unless `database_url` is given.
    pub store: TestStore,
    /// A database to use (e.g. to share one between replicas).
    pub database_url: Option<String>,
    /// The CA of the database's TLS certificate.
    pub database_ca_file: Option<PathBuf>,
    pub reverify: credvault::reverify::ReverifySettings,
    /// More `[[caller]]` entries for the callers file.
    pub extra_callers: String,
    /// The audit log path (default: in the data dir).
    pub audit_log: Option<PathBuf>,
    pub audit_fail_open: bool,
    /// Connection and HTTP/2 limits.
    pub transport: credvault::transport::TransportSettings,
    /// What a secret read waits for.
    pub audit_sync: credvault::audit::AuditSync,
    /// How often the audit trail signs a digest.
    pub audit_digests: credvault::trail::DigestPolicy,
    /// How long the database keeps audit events.
    pub audit_retention: Duration,
    /// The providers file (declared providers).
    pub providers_file: Option<PathBuf>,
    /// Base URLs of other providers than Fleetio, by name.
    pub base_urls: Vec<(String, String)>,
    /// Watch stream limits and resync interval.
    pub watch: credvault::watch::WatchSettings,
    pub feedback: credvault::feedback::FeedbackSettings,
    /// Secret versions kept per credential, and how long deleted ones stay recoverable.
    pub keep_versions: usize,
    pub recovery_window: Duration,
    /// How long a stuck audit trail leaves liveness SERVING.
    pub liveness_stuck_after: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            fleetio_base_url: "http://127.0.0.1:9/api".into(),
            request_timeout: Duration::from_millis(800),
            key_b64: MasterKey::generate_base64().as_str().to_owned(),
            keyring_file: None,
            data_dir: None,
            store: TestStore::Sled,
            database_url: None,
            database_ca_file: None,
            // Off unless a test turns it on.
            reverify: credvault::reverify::ReverifySettings {
                interval: Duration::ZERO,
                concurrency: 4,
            },
            extra_callers: String::new(),
            audit_log: None,
            audit_fail_open: false,
            transport: Default::default(),
            audit_sync: Default::default(),
            audit_digests: Default::default(),
            audit_retention: Duration::ZERO,
            providers_file: None,
            base_urls: Vec::new(),
            watch: Default::default(),
            feedback: Default::default(),
            keep_versions: credvault::vault::DEFAULT_KEEP_VERSIONS,
            recovery_window: credvault::vault::DEFAULT_RECOVERY_WINDOW,
            liveness_stuck_after: Duration::from_secs(120),
        }
    }
}

/// No store of the test's own: the server opens the configured one.
type NoStore = fn(
    PathBuf,
    Option<String>,
) -> std::future::Ready<Result<credvault::store::SledStore, ServeError>>;

/// The real server, in this process, on 127.0.0.1:0.
pub struct TestServer {
    pub addr: SocketAddr,
    pub tokens: Tokens,
    pub key_b64: String,
    pub data_dir: PathBuf,
    /// The database, when the server runs on PostgreSQL.
    pub database_url: Option<String>,
    _tmp: Option<TempDir>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), ServeError>>>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(Options::default()).await
    }

    /// A server with default options on `store`.
    pub async fn start_on(store: TestStore) -> Self {
        Self::start_with(Options {
            store,
            ..Options::default()
        })
        .await
    }

    pub async fn start_with(opts: Options) -> Self {
        Self::start_inner::<credvault::store::SledStore, NoStore, _>(opts, None).await
    }

    /// A server on a store that `open` makes (from the data dir and the database
    /// URL, when there is one), e.g. one wrapped to inject faults.
    pub async fn start_with_store<S, F, Fut>(opts: Options, open: F) -> Self
    where
        S: credvault::store::Store,
        F: FnOnce(PathBuf, Option<String>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<S, ServeError>> + Send,
    {
        Self::start_inner(opts, Some(open)).await
    }

    async fn start_inner<S, F, Fut>(opts: Options, store_override: Option<F>) -> Self
    where
        S: credvault::store::Store,
        F: FnOnce(PathBuf, Option<String>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<S, ServeError>> + Send,
    {
        let (tmp, data_dir) = match opts.data_dir.clone() {
            Some(d) => (None, d),
            None => {
                let tmp = TempDir::new().unwrap();
                let d = tmp.path().to_path_buf();
                (Some(tmp), d)
            }
        };
        let tokens = Tokens::new();
        let (keyring, keyring_source) = match &opts.keyring_file {
            Some(path) => {
                let source = credvault::config::KeyringSource {
                    path: path.clone(),
                    active: None,
                    joined: None,
                };
                (source.read().unwrap(), Some(source))
            }
            None => (
                credvault::config::parse_keyring(&opts.key_b64, None).unwrap(),
                None,
            ),
        };
        let database_url = match (opts.store, &opts.database_url) {
            (_, Some(url)) => Some(url.clone()),
            (TestStore::Postgres, None) => Some(postgres::PgCluster::shared().new_database().await),
            (TestStore::Sled, None) => None,
        };
        let database_for_open = database_url.clone();
        let store = match &database_url {
            Some(url) => {
                credvault::config::StoreConfig::Postgres(credvault::config::PostgresSettings {
                    url: url.clone().into(),
                    pool: credvault::store::PgSettings {
                        max_connections: 8,
                        timeout: Duration::from_secs(2),
                        ca_file: opts.database_ca_file.clone(),
                    },
                    startup_wait: Duration::from_secs(10),
                })
            }
            None => credvault::config::StoreConfig::Sled {
                dir: data_dir.clone(),
            },
        };
        let config = Config {
            store,
            data_dir: data_dir.clone(),
            keyring: Some(keyring.into()),
            keyring_source,
            key_roots: None,
            callers: Callers::from_toml(&format!(
                "{}\n{}",
                tokens.callers_toml(),
                opts.extra_callers
            ))
            .unwrap()
            .into(),
            callers_file: None,
            audit_log: opts.audit_log.clone(),
            audit_retention: opts.audit_retention,
            audit_fail_open: opts.audit_fail_open,
            audit_max_file_size: 0,
            audit_max_files: 0,
            audit_sync: opts.audit_sync,
            audit_digests: opts.audit_digests,
            transport: opts.transport.clone(),
            refusal_summary_interval: Duration::from_secs(10),
            tls: None,
            health_listen: None,
            providers: ProviderSettings {
                base_urls: std::iter::once(("fleetio".to_owned(), opts.fleetio_base_url.clone()))
                    .chain(opts.base_urls.iter().cloned())
                    .collect(),
                connect_timeout: opts.request_timeout,
                request_timeout: opts.request_timeout,
                file: opts.providers_file.clone(),
            },
            reverify: opts.reverify.clone(),
            drain_delay: Duration::ZERO,
            liveness_stuck_after: opts.liveness_stuck_after,
            shutdown_grace: Duration::from_secs(5),
            metrics_listen: None,
            console: None,
            keep_versions: opts.keep_versions,
            recovery_window: opts.recovery_window,
            watch: opts.watch.clone(),
            feedback: opts.feedback.clone(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            let shutdown = async {
                let _ = rx.await;
            };
            let result = match store_override {
                Some(open) => match open(config.data_dir.clone(), database_for_open).await {
                    Ok(store) => {
                        credvault::server::run_with_store(store, listener, config, shutdown).await
                    }
                    Err(e) => Err(e),
                },
                None => credvault::run(listener, config, shutdown).await,
            };
            // Shown at once: a test that fails on a closed port then says why the server stopped.
            if let Err(e) = &result {
                eprintln!("the test server on {addr} stopped: {e}");
            }
            result
        });
        TestServer {
            addr,
            tokens,
            key_b64: opts.key_b64,
            data_dir,
            database_url,
            _tmp: tmp,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn channel(&self) -> Channel {
        for _ in 0..100 {
            if let Ok(c) = Channel::from_shared(self.url()).unwrap().connect().await {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("server at {} never accepted a connection", self.addr);
    }

    /// What the server's gRPC health service says of `service` (`""`: liveness).
    pub async fn health(
        &self,
        service: &str,
    ) -> tonic_health::pb::health_check_response::ServingStatus {
        tonic_health::pb::health_client::HealthClient::new(self.channel().await)
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status()
    }

    /// A client that sends `token` (or no token at all).
    pub async fn client_with(&self, token: Option<&str>) -> Client {
        let value = token.map(|t| format!("Bearer {t}").parse().unwrap());
        CredentialVaultServiceClient::with_interceptor(self.channel().await, Bearer(value))
    }

    pub async fn admin(&self) -> Client {
        self.client_with(Some(&self.tokens.admin)).await
    }

    /// Triggers shutdown and waits for the server to drain and stop.
    pub async fn stop(mut self) -> Result<(), ServeError> {
        self.shutdown.take().unwrap().send(()).ok();
        self.handle.take().unwrap().await.unwrap()
    }

    /// Starts a server on an existing data dir with its master key.
    pub async fn reopen(data_dir: PathBuf, key_b64: String) -> Self {
        Self::start_with(Options {
            data_dir: Some(data_dir),
            key_b64,
            ..Options::default()
        })
        .await
    }

    /// Stops the server cleanly and starts it again on the same data dir and key.
    pub async fn restart(self) -> Self {
        let database_url = self.database_url.clone();
        let (result, tmp, dir, key) = self.stop_keep().await;
        result.expect("the server stopped cleanly");
        let mut server = Self::start_with(Options {
            data_dir: Some(dir),
            key_b64: key,
            database_url,
            ..Options::default()
        })
        .await;
        server._tmp = tmp;
        server
    }

    /// Stops the server but keeps its data dir for a restart.
    pub async fn stop_keep(mut self) -> (Result<(), ServeError>, Option<TempDir>, PathBuf, String) {
        self.shutdown.take().unwrap().send(()).ok();
        let result = self.handle.take().unwrap().await.unwrap();
        (
            result,
            self._tmp.take(),
            self.data_dir.clone(),
            self.key_b64.clone(),
        )
    }
}

/// Settings for a direct `credvault::run` on `dir` with `keys` (key file text) and no callers.
pub fn bare_config(dir: &Path, keys: &str) -> Config {
    Config {
        store: credvault::config::StoreConfig::Sled {
            dir: dir.to_owned(),
        },
        data_dir: dir.to_owned(),
        keyring: Some(credvault::config::parse_keyring(keys, None).unwrap().into()),
        keyring_source: None,
        key_roots: None,
        callers: Callers::from_toml("").unwrap().into(),
        callers_file: None,
        audit_log: None,
        audit_retention: Duration::ZERO,
        audit_fail_open: false,
        audit_max_file_size: 0,
        audit_max_files: 0,
        audit_sync: Default::default(),
        audit_digests: Default::default(),
        transport: Default::default(),
        refusal_summary_interval: Duration::from_secs(10),
        tls: None,
        health_listen: None,
        providers: Default::default(),
        reverify: Default::default(),
        drain_delay: Duration::ZERO,
        liveness_stuck_after: Duration::from_secs(120),
        shutdown_grace: Duration::from_secs(1),
        metrics_listen: None,
        console: None,
        keep_versions: credvault::vault::DEFAULT_KEEP_VERSIONS,
        recovery_window: credvault::vault::DEFAULT_RECOVERY_WINDOW,
        watch: Default::default(),
        feedback: Default::default(),
    }
}
