//! Shared test helpers: the real server on an ephemeral port, authenticated
//! clients, the real binary, and a fake Fleetio API served over real HTTP.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use credvault::api::credential_vault_service_client::CredentialVaultServiceClient;
use credvault::api::{self, FleetioSecret};
use credvault::auth::{callers_entry, mint_token, Callers, Permission};
use credvault::crypto::MasterKey;
use credvault::provider::ProviderSettings;
use credvault::server::ServeError;
use credvault::Config;

pub mod h2raw;
pub mod postgres;

/// Which store a test server runs on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TestStore {
    #[default]
    Sled,
    /// A new database on the shared test cluster (see [`postgres::PgCluster`]).
    Postgres,
}
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::Channel;

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
    fn new() -> Self {
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
    /// How long the database keeps audit events.
    pub audit_retention: Duration,
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
            audit_retention: Duration::ZERO,
        }
    }
}

pub mod faulty;

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
            None => credvault::config::StoreConfig::Sled,
        };
        let config = Config {
            store,
            data_dir: data_dir.clone(),
            keyring,
            keyring_source,
            callers: Callers::from_toml(&format!(
                "{}\n{}",
                tokens.callers_toml(),
                opts.extra_callers
            ))
            .unwrap(),
            callers_file: None,
            audit_log: opts.audit_log.clone(),
            audit_retention: opts.audit_retention,
            audit_fail_open: opts.audit_fail_open,
            audit_max_file_size: 0,
            audit_max_files: 0,
            audit_sync: opts.audit_sync,
            transport: opts.transport.clone(),
            refusal_summary_interval: Duration::from_secs(10),
            tls: None,
            health_listen: None,
            providers: ProviderSettings {
                fleetio_base_url: opts.fleetio_base_url.clone(),
                connect_timeout: opts.request_timeout,
                request_timeout: opts.request_timeout,
            },
            reverify: opts.reverify.clone(),
            drain_delay: Duration::ZERO,
            shutdown_grace: Duration::from_secs(5),
            metrics_listen: None,
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

/// A Fleetio secret for requests.
pub fn fleetio(
    api_key: &str,
    account_token: &str,
    api_version: &str,
) -> api::create_credential_request::Secret {
    api::create_credential_request::Secret::Fleetio(FleetioSecret {
        api_key: api_key.into(),
        account_token: account_token.into(),
        api_version: api_version.into(),
    })
}

/// Creates a Fleetio credential through the API.
pub async fn create(
    client: &mut Client,
    name: &str,
    api_key: &str,
    account_token: &str,
) -> api::Credential {
    client
        .create_credential(api::CreateCredentialRequest {
            name: name.into(),
            description: format!("test credential {name}"),
            secret: Some(fleetio(api_key, account_token, "")),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|s| panic!("create {name}: {s:?}"))
        .into_inner()
        .credential
        .unwrap()
}

/// Creates `n` credentials: the i-th named `name(i)`, with API key `key-{i:08}`.
pub async fn create_numbered(client: &mut Client, n: usize, name: impl Fn(usize) -> String) {
    for i in 0..n {
        create(client, &name(i), &format!("key-{i:08}"), "acct").await;
    }
}

/// An update that replaces the secret of the credential named `name` (rotation).
pub fn rotation(name: &str, api_key: &str, account_token: &str) -> api::UpdateCredentialRequest {
    api::UpdateCredentialRequest {
        r#ref: Some(api::update_credential_request::Ref::Name(name.into())),
        secret: Some(api::update_credential_request::Secret::Fleetio(
            FleetioSecret {
                api_key: api_key.into(),
                account_token: account_token.into(),
                api_version: String::new(),
            },
        )),
        ..Default::default()
    }
}

pub fn by_id_get(id: &str) -> api::GetCredentialRequest {
    api::GetCredentialRequest {
        r#ref: Some(api::get_credential_request::Ref::Id(id.into())),
    }
}

pub fn by_name_get(name: &str) -> api::GetCredentialRequest {
    api::GetCredentialRequest {
        r#ref: Some(api::get_credential_request::Ref::Name(name.into())),
    }
}

pub fn headers_by_id(id: &str) -> api::GetCredentialHeadersRequest {
    api::GetCredentialHeadersRequest {
        r#ref: Some(api::get_credential_headers_request::Ref::Id(id.into())),
    }
}

/// The `Authorization` header a worker gets for the credential named `name`.
pub async fn authorization(client: &mut Client, name: &str) -> String {
    client
        .get_credential_headers(headers_by_name(name))
        .await
        .unwrap_or_else(|s| panic!("headers of {name}: {s:?}"))
        .into_inner()
        .headers[0]
        .value
        .clone()
}

/// Settings for a direct `credvault::run` on `dir` with `keys` (key file text) and no callers.
pub fn bare_config(dir: &Path, keys: &str) -> Config {
    Config {
        store: Default::default(),
        data_dir: dir.to_owned(),
        keyring: credvault::config::parse_keyring(keys, None).unwrap(),
        keyring_source: None,
        callers: Callers::from_toml("").unwrap(),
        callers_file: None,
        audit_log: None,
        audit_retention: Duration::ZERO,
        audit_fail_open: false,
        audit_max_file_size: 0,
        audit_max_files: 0,
        audit_sync: Default::default(),
        transport: Default::default(),
        refusal_summary_interval: Duration::from_secs(10),
        tls: None,
        health_listen: None,
        providers: Default::default(),
        reverify: Default::default(),
        drain_delay: Duration::ZERO,
        shutdown_grace: Duration::from_secs(1),
        metrics_listen: None,
    }
}

pub fn headers_by_name(name: &str) -> api::GetCredentialHeadersRequest {
    api::GetCredentialHeadersRequest {
        r#ref: Some(api::get_credential_headers_request::Ref::Name(name.into())),
    }
}

pub fn verify_by_name(name: &str) -> api::VerifyCredentialRequest {
    api::VerifyCredentialRequest {
        r#ref: Some(api::verify_credential_request::Ref::Name(name.into())),
    }
}

/// The header list as plain pairs.
pub fn pairs(headers: &[api::Header]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|h| (h.name.clone(), h.value.clone()))
        .collect()
}

/// Every file under `dir`, read as bytes.
pub fn all_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push((path.clone(), std::fs::read(&path).unwrap()));
            }
        }
    }
    out
}

/// Whether `needle` occurs anywhere in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

// ---------------------------------------------------------------- fake Fleetio

/// What the fake Fleetio saw of one request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub path: String,
    pub authorization: Option<String>,
    pub account_token: Option<String>,
    pub api_version: Option<String>,
    pub user_agent: Option<String>,
}

/// How the fake answers for one API key.
#[derive(Clone)]
pub enum Behaviour {
    /// A working key with these account tokens (listed as `{"records": [...]}` or a bare array).
    Accounts { tokens: Vec<String>, bare: bool },
    /// users/me answers this status (with `Retry-After` for 429).
    Status(u16),
    /// users/me answers 200 only after this delay.
    Slow(Duration),
    /// users/me answers 302 to this URL.
    Redirect(String),
}

/// A local HTTP server that behaves like Fleetio's API for the keys it knows.
pub struct FakeFleetio {
    pub base_url: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    keys: Arc<Mutex<HashMap<String, Behaviour>>>,
    _task: JoinHandle<()>,
}

#[derive(Clone)]
struct FakeState {
    keys: Arc<Mutex<HashMap<String, Behaviour>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

fn header(h: &axum::http::HeaderMap, name: &str) -> Option<String> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

impl FakeFleetio {
    pub async fn start(keys: Vec<(&str, Behaviour)>) -> Self {
        use axum::http::{HeaderMap, StatusCode, Uri};
        use axum::response::{IntoResponse, Response};

        let state = FakeState {
            keys: Arc::new(Mutex::new(
                keys.into_iter().map(|(k, b)| (k.to_owned(), b)).collect(),
            )),
            seen: Arc::new(Mutex::new(Vec::new())),
        };
        async fn handle(
            axum::extract::State(state): axum::extract::State<FakeState>,
            uri: Uri,
            headers: HeaderMap,
        ) -> Response {
            let seen = Seen {
                path: uri.path().to_owned(),
                authorization: header(&headers, "authorization"),
                account_token: header(&headers, "account-token"),
                api_version: header(&headers, "x-api-version"),
                user_agent: header(&headers, "user-agent"),
            };
            state.seen.lock().unwrap().push(seen.clone());
            let behaviour = seen
                .authorization
                .as_deref()
                .and_then(|a| a.strip_prefix("Token "))
                .and_then(|k| state.keys.lock().unwrap().get(k).cloned());
            let Some(behaviour) = behaviour else {
                return (StatusCode::UNAUTHORIZED, r#"{"error":"unauthorized"}"#).into_response();
            };
            match (uri.path(), behaviour) {
                ("/api/v1/users/me", Behaviour::Accounts { tokens, .. }) => {
                    match seen.account_token {
                        Some(t) if tokens.contains(&t) => {
                            (StatusCode::OK, r#"{"id":1,"email":"ops@example.com"}"#)
                                .into_response()
                        }
                        _ => (StatusCode::UNAUTHORIZED, r#"{"error":"unauthorized"}"#)
                            .into_response(),
                    }
                }
                ("/api/v1/users/me", Behaviour::Status(code)) => {
                    let code = StatusCode::from_u16(code).unwrap();
                    if code == StatusCode::TOO_MANY_REQUESTS {
                        (code, [("retry-after", "7")], "slow down").into_response()
                    } else {
                        (code, "{}").into_response()
                    }
                }
                ("/api/v1/users/me", Behaviour::Redirect(to)) => {
                    (StatusCode::FOUND, [("location", to)], "").into_response()
                }
                ("/api/v1/users/me", Behaviour::Slow(delay)) => {
                    tokio::time::sleep(delay).await;
                    (StatusCode::OK, "{}").into_response()
                }
                ("/api/v1/accounts", Behaviour::Accounts { tokens, bare }) => {
                    let list: Vec<_> = tokens
                        .iter()
                        .enumerate()
                        .map(|(i, t)| serde_json::json!({"id": i, "name": format!("account {i}"), "token": t}))
                        .collect();
                    let body = if bare {
                        serde_json::json!(list)
                    } else {
                        serde_json::json!({"records": list})
                    };
                    axum::Json(body).into_response()
                }
                _ => (StatusCode::NOT_FOUND, "not found").into_response(),
            }
        }
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeFleetio {
            base_url: format!("http://{addr}/api"),
            seen: state.seen,
            keys: state.keys,
            _task: task,
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Changes (or adds) how the fake answers for `key`.
    pub fn set(&self, key: &str, behaviour: Behaviour) {
        self.keys.lock().unwrap().insert(key.to_owned(), behaviour);
    }

    /// Forgets `key`: Fleetio now rejects it.
    pub fn revoke(&self, key: &str) {
        self.keys.lock().unwrap().remove(key);
    }

    /// How many users/me checks the fake saw for `key`.
    pub fn checks_of(&self, key: &str) -> usize {
        let auth = format!("Token {key}");
        self.seen()
            .iter()
            .filter(|s| s.path == "/api/v1/users/me" && s.authorization.as_deref() == Some(&*auth))
            .count()
    }
}

/// An address nothing listens on.
pub async fn closed_port_url() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}/api")
}

// ---------------------------------------------------------------- the real binary

/// The `credvault` binary built for these tests.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_credvault")
}

/// A running `credvault serve` process and the address it reported.
pub struct Process {
    pub child: tokio::process::Child,
    pub addr: SocketAddr,
    pub stdout: Arc<Mutex<String>>,
    pub stderr: Arc<Mutex<String>>,
}

impl Process {
    /// Starts `credvault serve --listen 127.0.0.1:0 --log-format json <args>` and waits for "credvault serving".
    pub async fn serve<S: AsRef<std::ffi::OsStr>>(
        args: &[S],
        envs: &[(&str, &str)],
        cwd: &Path,
    ) -> Result<Self, String> {
        Self::start(tokio::process::Command::new(binary()), args, envs, cwd).await
    }

    /// [`Process::serve`] with the file descriptor limit (soft and hard) set to `nofile`.
    pub async fn serve_with_fd_limit<S: AsRef<std::ffi::OsStr>>(
        nofile: u64,
        args: &[S],
        envs: &[(&str, &str)],
        cwd: &Path,
    ) -> Result<Self, String> {
        let mut sh = tokio::process::Command::new("sh");
        sh.args([
            "-c",
            &format!("ulimit -n {nofile} && exec \"$0\" \"$@\""),
            binary(),
        ]);
        Self::start(sh, args, envs, cwd).await
    }

    async fn start<S: AsRef<std::ffi::OsStr>>(
        mut cmd: tokio::process::Command,
        args: &[S],
        envs: &[(&str, &str)],
        cwd: &Path,
    ) -> Result<Self, String> {
        use tokio::io::{AsyncBufReadExt, BufReader};
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
            .args(args)
            .env_remove("CREDVAULT_MASTER_KEY")
            // Tests stop at once unless they ask for a drain delay.
            .env("CREDVAULT_DRAIN_DELAY", "0s")
            .envs(envs.iter().copied())
            .current_dir(cwd)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| e.to_string())?;
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (addr_tx, mut addr_rx) = tokio::sync::mpsc::unbounded_channel::<SocketAddr>();
        {
            let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
            let out = Arc::clone(&stdout);
            tokio::spawn(async move {
                while let Ok(Some(line)) = lines.next_line().await {
                    out.lock().unwrap().push_str(&(line + "\n"));
                }
            });
        }
        {
            let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
            let err = Arc::clone(&stderr);
            tokio::spawn(async move {
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                        if v["message"] == "credvault serving" {
                            if let Some(a) = v["addr"].as_str().and_then(|a| a.parse().ok()) {
                                let _ = addr_tx.send(a);
                            }
                        }
                    }
                    err.lock().unwrap().push_str(&(line + "\n"));
                }
            });
        }
        let addr = tokio::select! {
            a = addr_rx.recv() => a,
            status = child.wait() => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                return Err(format!("credvault exited with {:?}: {}", status.ok(), stderr.lock().unwrap()));
            }
            () = tokio::time::sleep(Duration::from_secs(30)) => None,
        };
        match addr {
            Some(addr) => Ok(Process {
                child,
                addr,
                stdout,
                stderr,
            }),
            None => Err(format!(
                "credvault never reported its address: {}",
                stderr.lock().unwrap()
            )),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn client(&self, token: &str) -> Client {
        let channel = Channel::from_shared(self.url())
            .unwrap()
            .connect()
            .await
            .unwrap();
        CredentialVaultServiceClient::with_interceptor(
            channel,
            Bearer(Some(format!("Bearer {token}").parse().unwrap())),
        )
    }

    /// Sends a signal (e.g. "TERM", "KILL") to the process.
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().expect("process is running").to_string();
        let ok = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Sends SIGTERM and asserts that the process then exits successfully.
    pub async fn terminate(&mut self) {
        self.signal("TERM");
        let status = self.child.wait().await.unwrap();
        assert!(status.success(), "{status}: {}", self.stderr());
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits (up to 10 s) for a stderr line containing every one of `needles`;
    /// logs are written by a writer thread, a moment after the event.
    pub async fn wait_for_log(&self, needles: &[&str]) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let logs = self.stderr();
            if let Some(line) = logs.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
                return line.to_owned();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no log line with {needles:?} in:\n{logs}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    fn proc_status(&self, field: &str) -> u64 {
        let pid = self.child.id().expect("process is running");
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
    }

    /// Resident memory now, in MB.
    pub fn rss_mb(&self) -> f64 {
        self.proc_status("VmRSS:") as f64 / 1024.0
    }

    /// The most resident memory so far, in MB.
    pub fn peak_rss_mb(&self) -> f64 {
        self.proc_status("VmHWM:") as f64 / 1024.0
    }

    /// CPU time used so far (user and system), in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        let pid = self.child.id().expect("process is running");
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        // Fields after the command name (which is in parentheses): utime is the 12th, stime the 13th.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = rest.split(' ').collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        ticks as f64 / 100.0
    }

    /// Open file descriptors of the process.
    pub fn open_fds(&self) -> usize {
        let pid = self.child.id().expect("process is running");
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    }
}

/// A free port on 127.0.0.1 (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The value of one Prometheus series (its full name with labels), 0 when absent.
pub async fn metric(addr: &str, series: &str) -> f64 {
    let body = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A key file and a callers file written into a directory, and the flags that use them.
pub struct Setup {
    pub key: PathBuf,
    pub callers: PathBuf,
    pub tokens: Tokens,
    /// `--data-dir <dir>/data --master-key-file <key> --callers-file <callers>`.
    pub args: Vec<String>,
}

/// Writes a fresh master key and the test callers into `dir`.
pub fn write_config(dir: &Path) -> Setup {
    let key = dir.join("master.key");
    std::fs::write(&key, MasterKey::generate_base64().as_str()).unwrap();
    let tokens = Tokens::new();
    let callers = dir.join("callers.toml");
    std::fs::write(&callers, tokens.callers_toml()).unwrap();
    let path = |p: &Path| p.to_str().unwrap().to_owned();
    let args = vec![
        "--data-dir".into(),
        path(&dir.join("data")),
        "--master-key-file".into(),
        path(&key),
        "--callers-file".into(),
        path(&callers),
    ];
    Setup {
        key,
        callers,
        tokens,
        args,
    }
}

/// Runs a one-shot `credvault` command (not `serve`) and returns its output.
pub async fn run_cli(args: &[&str], envs: &[(&str, &str)]) -> std::process::Output {
    tokio::process::Command::new(binary())
        .args(args)
        .env_remove("CREDVAULT_MASTER_KEY")
        .env_remove("CREDVAULT_TOKEN")
        .envs(envs.iter().copied())
        .output()
        .await
        .unwrap()
}

/// Every message of a RewrapCredentials call, in order (panics on an error).
pub async fn rewrap_all(
    client: &mut Client,
    batch_size: u32,
) -> Vec<api::RewrapCredentialsResponse> {
    let mut stream = client
        .rewrap_credentials(api::RewrapCredentialsRequest { batch_size })
        .await
        .unwrap()
        .into_inner();
    let mut all = Vec::new();
    while let Some(m) = stream.message().await.unwrap() {
        all.push(m);
    }
    all
}
