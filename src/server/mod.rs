//! The server: opens the store, checks the master key, and serves the vault,
//! health and reflection services until shutdown, then drains and flushes.
//!
//! Here [`run`] (mini-redis's `run(listener, config, shutdown)`) and the
//! listeners; `services` (every service wired once, in the shape of quickwit's
//! services struct, and the background tasks started from it), `tasks` (those
//! loops), `readiness` (health follows the store and the trail) and `shutdown`
//! (the drain, then the last writes).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::api::{self, credential_vault_service_server::CredentialVaultServiceServer};
use crate::audit::{AuditEntry, AuditLog, AuditSettings, Peer};
use crate::auth::CallerRegistry;
use crate::config::{Config, KeyringSource};
use crate::crypto::Keyring;
use crate::gate::{Gate, MAX_PUBLIC_REQUEST_BYTES};
use crate::keys::{self, KeyringError, SealCounter};
use crate::metrics;
use crate::provider::Providers;
use crate::refusals::Refusals;
use crate::reverify;
use crate::service::VaultService;
use crate::store::{self, AnyStore, Store, StoreConfig, StoreError};
use crate::transport;
use crate::vault::Vault;

mod readiness;
mod reload;
mod services;
mod shutdown;
mod tasks;
mod unseal;

use readiness::*;
use reload::Hangups;
use services::*;
use shutdown::*;
use tasks::*;

/// The health service name that reports whether the audit log can be written.
pub const AUDIT_HEALTH_SERVICE: &str = "credvault.audit";
/// The health service name that reports whether the store can be written
/// (NOT_SERVING after a write I/O error such as a full disk; reads go on).
pub const STORE_HEALTH_SERVICE: &str = "credvault.store";

pub use crate::gate::MAX_REQUEST_BYTES;

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The data directory could not be opened.
    /// The store could not be opened.
    #[error("cannot open the data directory {dir}: {source}")]
    Open {
        /// The data directory or database.
        dir: String,
        /// Why.
        source: StoreError,
    },
    /// The store failed while checking or flushing.
    #[error("the credential store failed: {0}")]
    Store(#[from] StoreError),
    /// The keyring does not hold every key the data needs.
    #[error(transparent)]
    Keys(#[from] KeyringError),
    /// The audit log could not be opened.
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditOpenError),
    /// `/metrics` could not be served.
    #[error(transparent)]
    Metrics(#[from] metrics::MetricsError),
    /// The TLS settings could not be loaded.
    #[error(transparent)]
    Tls(#[from] transport::TlsError),
    /// A provider client could not be built.
    #[error(transparent)]
    Provider(#[from] crate::provider::ProviderError),
    /// The configuration lacks something (a master key).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A key root refused to unseal the master keys (a wrong key name, PIN...).
    #[error("the key root cannot unseal the master keys: {0}")]
    KeyRoot(#[from] crate::keyroot::RootError),
    /// gRPC transport or reflection setup failed.
    #[error("grpc server error: {0}")]
    Transport(String),
}

/// Opens the configured store (see [`store::open`]) and checks the keyring
/// against it, recording the active key's check when new.
pub async fn open_store(config: &StoreConfig, keyring: &Keyring) -> Result<AnyStore, ServeError> {
    let store = store::open(config).await.map_err(|source| match config {
        StoreConfig::Sled { dir } => ServeError::Open {
            dir: dir.display().to_string(),
            source,
        },
        StoreConfig::Postgres(_) => ServeError::Store(source),
    })?;
    keys::check_keyring(&store, keyring).await?;
    Ok(store)
}

/// Serves on `listener` until `shutdown` resolves, then drains in-flight calls and flushes the store.
///
/// Health answers SERVING for `""` and the vault service once the store is open
/// and the master key checked, and NOT_SERVING from the moment shutdown begins.
/// With key roots, the vault service is NOT_SERVING (and its RPCs UNAVAILABLE)
/// while they are asked for the master keys, until they answer (see `unseal`).
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let endpoint = match config.metrics_listen {
        Some(addr) => Some(crate::metrics_endpoint::install(addr)?),
        None => None,
    };
    let served = async {
        let store = store::open(&config.store)
            .await
            .map_err(|source| match &config.store {
                StoreConfig::Sled { dir } => ServeError::Open {
                    dir: dir.display().to_string(),
                    source,
                },
                StoreConfig::Postgres(_) => ServeError::Store(source),
            })?;
        run_with_store(store, listener, config, shutdown).await
    }
    .await;
    // The metrics port closes with the server (after the last writes were counted).
    if let Some(endpoint) = endpoint {
        endpoint.stop().await;
    }
    served
}

/// [`run`] on a store opened by the caller (e.g. one wrapped to inject faults in
/// tests): the keyring is checked against it, `config.store` is not looked at.
pub async fn run_with_store<S: Store>(
    store: S,
    listener: TcpListener,
    mut config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let mut shutdown = std::pin::pin!(shutdown);
    // SIGHUP is taken from here on, so one during an unseal wait (a logrotate's) is
    // ignored, not the end of the process; the reload tasks take it once serving.
    drop(Hangups::new());
    // The health-only port is bound first: with key roots, probes find it while
    // the master keys are awaited (Kubernetes' startup and liveness probes ask it).
    let health_listener = match config.health_listen {
        Some(addr) => Some(
            transport::bind(addr, config.transport.listen_backlog)
                .map_err(|e| ServeError::Transport(format!("cannot listen on {addr}: {e}")))?,
        ),
        None => None,
    };
    let keyring = match &config.key_roots {
        Some(roots) => {
            let ports = unseal::Ports {
                grpc: &listener,
                health: health_listener.as_ref(),
            };
            let Some(keyring) =
                unseal::wait_for_roots(&store, &config, roots, ports, shutdown.as_mut()).await?
            else {
                return Ok(());
            };
            let joined = unseal::joined(&keyring, &config);
            if let Some(source) = &mut config.keyring_source {
                source.joined = Some(joined);
            }
            Arc::new(keyring)
        }
        None => config
            .keyring
            .clone()
            .ok_or(crate::config::ConfigError::NoKeyring)?,
    };
    keys::check_keyring(&store, &keyring).await?;
    serve(store, listener, health_listener, config, keyring, shutdown).await
}

async fn serve<S: Store>(
    store: S,
    listener: TcpListener,
    health_listener: Option<TcpListener>,
    config: Config,
    keyring: Arc<Keyring>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let (reporter, health) = tonic_health::server::health_reporter();
    set_health(&reporter, ServingStatus::NotServing).await;
    // `stop` ends background work at SIGTERM; `drained` closes the health-only port after the drain delay.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (drained_tx, drained_rx) = tokio::sync::watch::channel(false);
    let services = Services::wire(store, &config, keyring, &stop_rx).await?;
    let tasks = services.spawn_tasks(&config, &reporter, &stop_rx);
    let console = services.start_console(&config, &stop_rx)?;

    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(api::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let transport_error = |e: &dyn std::fmt::Display| ServeError::Transport(e.to_string());
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|e| transport_error(&e))?
        .max_decoding_message_size(MAX_PUBLIC_REQUEST_BYTES);
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| transport_error(&e))?
        .max_decoding_message_size(MAX_PUBLIC_REQUEST_BYTES);
    let health = health.max_decoding_message_size(MAX_PUBLIC_REQUEST_BYTES);

    let limits = &config.transport;
    let (listening, fd_limit) = grpc_listening(&config);
    let tls = config
        .tls
        .as_ref()
        .map(transport::tls_acceptor)
        .transpose()?;

    let addr = listener.local_addr().map_err(|e| transport_error(&e))?;
    let builder = || {
        Server::builder()
            .max_concurrent_streams(limits.max_concurrent_streams)
            .http2_max_local_error_reset_streams(Some(limits.max_local_error_resets))
            .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_ACCEPT_RESETS))
            .http2_keepalive_interval(Some(limits.keepalive_interval).filter(|d| !d.is_zero()))
            .http2_keepalive_timeout(Some(limits.keepalive_timeout))
    };
    // With TLS, probes that speak plaintext only get a health-only port.
    let health_only = match health_listener {
        Some(listener) => {
            let bound = listener.local_addr().map_err(|e| transport_error(&e))?;
            let incoming = transport::incoming(
                listener,
                transport::Listening {
                    name: "health",
                    max_connections: HEALTH_PORT_CONNECTIONS,
                    max_per_peer: 0,
                    handshake_timeout: limits.handshake_timeout,
                },
            );
            let mut drained = drained_rx;
            let health = health.clone();
            let server = tokio::spawn(
                builder()
                    .layer(services.gate.clone())
                    .add_service(health)
                    .serve_with_incoming_shutdown(incoming, async move {
                        let _ = drained.wait_for(|s| *s).await;
                    }),
            );
            Some((bound, server))
        }
        None => None,
    };

    metrics::set_credentials(services.count);
    set_health(&reporter, ServingStatus::Serving).await;
    let shown =
        |a: Option<std::net::SocketAddr>| a.map_or_else(|| "off".to_owned(), |a| a.to_string());
    let vault = &services.vault;
    let audit = &services.audit;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        %addr,
        health_addr = %shown(health_only.as_ref().map(|(a, _)| *a)),
        data_dir = %config.data_dir.display(),
        credentials = services.count,
        key_id = vault.keyring().active().id(),
        key_ids = %vault.keyring().ids().collect::<Vec<_>>().join(","),
        key_roots = %config.key_roots.as_ref().map_or_else(|| "none".to_owned(), |r| r.roots.names()),
        tls = config.tls.is_some(),
        mutual_tls = config.tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
        audit = %audit.devices(),
        audit_sync = audit.sync().as_str(),
        audit_fail_open = audit.fail_open(),
        metrics = %shown(config.metrics_listen),
        console = %shown(console.as_ref().map(|(a, _)| *a)),
        reverify_interval = ?config.reverify.interval,
        fd_limit_before = fd_limit.map_or(0, |l| l.before),
        fd_limit = fd_limit.map_or(0, |l| l.soft),
        fd_limit_hard = fd_limit.map_or(0, |l| l.hard),
        max_connections = listening.max_connections,
        max_concurrent_streams = limits.max_concurrent_streams,
        request_timeout = ?limits.request_timeout,
        "credvault serving"
    );
    if audit.fail_open() {
        tracing::warn!(
            "--audit-fail-open: secret reads go on even while the audit log cannot be written"
        );
    }

    let (began_tx, began_rx) = tokio::sync::oneshot::channel::<()>();
    let signals = Signals {
        stop: stop_tx,
        drained: drained_tx,
        began: began_tx,
    };
    let signal = signal(shutdown, reporter.clone(), signals, config.drain_delay);
    let router = builder()
        .layer(services.gate.clone())
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            CredentialVaultServiceServer::from_arc(Arc::clone(&services.service))
                .max_decoding_message_size(MAX_REQUEST_BYTES),
        );
    let serve = async move {
        match tls {
            None => {
                router
                    .serve_with_incoming_shutdown(transport::incoming(listener, listening), signal)
                    .await
            }
            Some(acceptor) => {
                router
                    .serve_with_incoming_shutdown(
                        transport::incoming_tls(listener, listening, acceptor),
                        signal,
                    )
                    .await
            }
        }
    };
    let grace = config.shutdown_grace;
    // The configuration's hold on the keyring it started with ends here: a master
    // key a reload removes is dropped (and wiped) with the vault's last reference.
    drop(config);
    tokio::select! {
        served = serve => served.map_err(|e| transport_error(&e))?,
        () = drain_deadline(began_rx, grace) => {
            tracing::warn!(?grace, "drain took longer than the grace period; closing the remaining connections");
        }
    }
    if let Some((_, server)) = health_only {
        let _ = server.await;
    }
    if let Some((_, console)) = console {
        console.abort();
    }
    services.close(tasks).await
}

/// The gRPC port's listening settings: a connection cap below the descriptor
/// limit (raised to the hard limit first), and that limit.
fn grpc_listening(config: &Config) -> (transport::Listening, Option<transport::FdLimit>) {
    let limits = &config.transport;
    let fd_limit = transport::raise_fd_limit();
    let database_connections = match &config.store {
        StoreConfig::Postgres(pg) => pg.pool.max_connections,
        StoreConfig::Sled { .. } => 0,
    };
    let reserved = transport::reserved_fds(database_connections)
        + if config.health_listen.is_some() {
            HEALTH_PORT_CONNECTIONS as u64
        } else {
            0
        };
    let max_connections = transport::connection_cap(limits.max_connections, fd_limit, reserved);
    if max_connections < limits.max_connections {
        tracing::warn!(
            wanted = limits.max_connections,
            max_connections,
            fd_limit = fd_limit.map_or(0, |l| l.soft),
            "the file descriptor limit holds the connection cap below --max-connections"
        );
    }
    let listening = transport::Listening {
        name: "grpc",
        max_connections,
        // Workers of a node may share one address (NAT): no cap per peer here.
        max_per_peer: 0,
        handshake_timeout: limits.handshake_timeout,
    };
    (listening, fd_limit)
}

/// Connections the health-only port holds at once (probes open one at a time).
const HEALTH_PORT_CONNECTIONS: usize = 64;

/// Streams a client may open and reset at once before GOAWAY (the classic rapid
/// reset, CVE-2023-44487; h2's own default, set here so that it is explicit).
const MAX_PENDING_ACCEPT_RESETS: usize = 20;
