//! The server: opens the store, checks the master key, and serves the vault,
//! health and reflection services until shutdown, then drains and flushes.
//!
//! Here [`run`] and the wiring; the background loops in `tasks`, readiness in
//! `readiness`.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::net::TcpListener;
use tonic::transport::Server;
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
mod tasks;

use readiness::*;
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
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    if let Some(addr) = config.metrics_listen {
        crate::metrics_endpoint::install(addr)?;
    }
    let store = open_store(&config.store, &config.keyring).await?;
    serve(store, listener, config, shutdown).await
}

/// [`run`] on a store opened by the caller (e.g. one wrapped to inject faults in
/// tests): the keyring is checked against it, `config.store` is not looked at.
pub async fn run_with_store<S: Store>(
    store: S,
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    keys::check_keyring(&store, &config.keyring).await?;
    serve(store, listener, config, shutdown).await
}

async fn serve<S: Store>(
    store: S,
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let (reporter, health) = tonic_health::server::health_reporter();
    set_health(&reporter, ServingStatus::NotServing).await;
    let store = Arc::new(store);
    let seals = SealCounter::load(&*store).await?;
    let providers = Providers::new(&config.providers)?;
    let count = store.count().await?;
    // With a database, it keeps the trail of every replica; a file is a second
    // device when --audit-log names one. Without, the file is the trail.
    let table = store.audit_table();
    let audit_path = match (&config.audit_log, &table) {
        (Some(path), _) => Some(path.clone()),
        (None, Some(_)) => None,
        (None, None) => Some(config.data_dir.join("audit.jsonl")),
    };
    // The highest revision seen of each credential: the vault refuses a record
    // below it, and the audit trail records them under its signed digests.
    let marks = Arc::new(crate::trail::Marks::default());
    let audit = Arc::new(AuditLog::open(
        &AuditSettings {
            path: audit_path,
            fail_open: config.audit_fail_open,
            max_file_size: config.audit_max_file_size,
            max_files: config.audit_max_files,
            sync: config.audit_sync,
            queue: crate::audit::DEFAULT_QUEUE,
            digests: config.audit_digests,
            marks: Some(Arc::clone(&marks)),
        },
        table,
        config.keyring.active(),
    )?);
    let key_ids = config.keyring.ids().collect::<Vec<_>>().join(",");
    let vault = Arc::new(
        Vault::new(Arc::clone(&store), config.keyring, seals, providers)
            .with_feedback(config.feedback.clone())
            .with_history(config.keep_versions, config.recovery_window)
            .with_marks(marks),
    );
    // Pauses of provider accounts reported before this start (they outlive a restart).
    if let Err(e) = vault.resync_pauses().await {
        tracing::warn!(error = %e, "the pauses of provider accounts could not be read at start");
    }
    // Records written before records carried MACs are authenticated once; from
    // then on a record without one is refused as changed behind the vault's back.
    if let Err(e) = vault.authenticate_all().await {
        // Records without a MAC keep being served until a pass succeeds.
        tracing::warn!(error = %e, "records written before MACs could not all be authenticated at start; retried every 10 s");
        let vault = Arc::clone(&vault);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                match vault.authenticate_all().await {
                    Ok(_) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "records could not be authenticated yet; retried in 10 s")
                    }
                }
            }
        });
    }
    // This server's announcement of its active key (see `keys::announce_active`).
    keys::announce_active(&*store, vault.instance(), vault.keyring().active().id()).await?;
    let callers = Arc::new(CallerRegistry::new(
        config.callers,
        config.callers_file.clone(),
    ));
    let refusals = Arc::new(Refusals::new());
    // `stop` ends background work at SIGTERM; `drained` closes the health-only port after the drain delay.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (drained_tx, drained_rx) = tokio::sync::watch::channel(false);
    let background = [
        tokio::spawn(reverify::run(
            Arc::clone(&vault),
            config.reverify.clone(),
            stop_rx.clone(),
        )),
        tokio::spawn(reload_callers(Arc::clone(&callers), stop_rx.clone())),
        tokio::spawn(reload_providers(Arc::clone(&vault), stop_rx.clone())),
        tokio::spawn(reload_keyring(
            Arc::clone(&vault),
            config.keyring_source.clone(),
            stop_rx.clone(),
        )),
        tokio::spawn(flush_usage(Arc::clone(&vault), stop_rx.clone())),
        tokio::spawn(purge_deleted(Arc::clone(&vault), stop_rx.clone())),
        tokio::spawn(announce_active(Arc::clone(&vault), stop_rx.clone())),
        tokio::spawn(reopen_audit(Arc::clone(&audit), stop_rx.clone())),
        tokio::spawn(prune_audit(
            Arc::clone(&audit),
            config.audit_retention,
            stop_rx.clone(),
        )),
        tokio::spawn(summarize_refusals(
            Arc::clone(&refusals),
            Arc::clone(&audit),
            config.refusal_summary_interval,
            stop_rx.clone(),
        )),
        tokio::spawn(crate::watch::run_hub(
            Arc::clone(&vault),
            config.watch.resync_interval,
            stop_rx.clone(),
        )),
        tokio::spawn(watch_readiness(
            Arc::clone(&store),
            Arc::clone(&audit),
            vault.instance().to_owned(),
            config.liveness_stuck_after,
            reporter.clone(),
            stop_rx.clone(),
        )),
    ];
    let gate = Gate::new(
        Arc::clone(&callers),
        Arc::clone(&audit),
        Arc::clone(&refusals),
        config.transport.request_timeout,
    );
    // Other replicas' writes reach this server's watchers through the database.
    let listener_task = {
        let vault = Arc::clone(&vault);
        store.listen_changes(
            Arc::new(move |change: store::StoreChange<'_>| match change {
                store::StoreChange::Record { id, name } => vault.hub().changed(id, name),
                store::StoreChange::Pause { account, until_ms } => {
                    vault.heard_pause(account, until_ms);
                }
                store::StoreChange::Resync => {
                    vault.hub().resync();
                    let vault = Arc::clone(&vault);
                    tokio::spawn(async move {
                        if let Err(e) = vault.resync_pauses().await {
                            tracing::warn!(error = %e, "the pauses of provider accounts could not be read");
                        }
                    });
                }
            }),
            stop_rx.clone(),
        )
    };
    let service = VaultService::new(
        Arc::clone(&vault),
        crate::watch::WatchContext {
            audit: Arc::clone(&audit),
            callers: Arc::clone(&callers),
            settings: config.watch.clone(),
            stopping: stop_rx.clone(),
        },
    )
    .with_refusals(Arc::clone(&refusals));

    let service = Arc::new(service);
    let console = match &config.console {
        Some(settings) => {
            let listener = transport::bind(settings.listen, config.transport.listen_backlog)
                .map_err(|e| {
                    ServeError::Transport(format!("cannot listen on {}: {e}", settings.listen))
                })?;
            let bound = listener
                .local_addr()
                .map_err(|e| ServeError::Transport(e.to_string()))?;
            let tls = config
                .tls
                .as_ref()
                .map(|t| transport::tls_acceptor_for(t, b"http/1.1"))
                .transpose()?;
            let catalog: crate::console::CatalogSource = {
                let vault = Arc::clone(&vault);
                Arc::new(move || vault.providers().current())
            };
            let console = Arc::new(crate::console::Console::new(
                Arc::clone(&service),
                Arc::clone(&callers),
                catalog,
                Arc::clone(&audit),
                Arc::clone(&refusals),
                settings,
                config.transport.request_timeout,
                tls.is_some(),
            ));
            let task = tokio::spawn(console.serve(
                listener,
                tls,
                config.transport.handshake_timeout,
                stop_rx.clone(),
            ));
            Some((bound, task))
        }
        None => None,
    };

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

    // Connections: a cap below the descriptor limit, raised to the hard limit first.
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
    let health_only = match config.health_listen {
        Some(health_addr) => {
            let listener = transport::bind(health_addr, limits.listen_backlog).map_err(|e| {
                ServeError::Transport(format!("cannot listen on {health_addr}: {e}"))
            })?;
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
                    .layer(gate.clone())
                    .add_service(health)
                    .serve_with_incoming_shutdown(incoming, async move {
                        let _ = drained.wait_for(|s| *s).await;
                    }),
            );
            Some((bound, server))
        }
        None => None,
    };

    metrics::set_credentials(count);
    set_health(&reporter, ServingStatus::Serving).await;
    let shown =
        |a: Option<std::net::SocketAddr>| a.map_or_else(|| "off".to_owned(), |a| a.to_string());
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        %addr,
        health_addr = %shown(health_only.as_ref().map(|(a, _)| *a)),
        data_dir = %config.data_dir.display(),
        credentials = count,
        key_id = vault.keyring().active().id(),
        key_ids = %key_ids,
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
        max_connections,
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
    let drain_delay = config.drain_delay;
    let signal = {
        let reporter = reporter.clone();
        async move {
            shutdown.await;
            set_health(&reporter, ServingStatus::NotServing).await;
            let _ = stop_tx.send(true);
            tracing::info!(drain_delay = ?drain_delay, "shutdown requested: health is NOT_SERVING; still serving during the drain delay");
            tokio::time::sleep(drain_delay).await;
            let _ = drained_tx.send(true);
            tracing::info!("no longer accepting connections; finishing in-flight calls");
            let _ = began_tx.send(());
        }
    };
    let router = builder()
        .layer(gate)
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            CredentialVaultServiceServer::from_arc(service)
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
    tokio::select! {
        served = serve => served.map_err(|e| transport_error(&e))?,
        () = drain_deadline(began_rx, grace) => {
            tracing::warn!(?grace, "drain took longer than the grace period; closing the remaining connections");
        }
    }
    for task in background.into_iter().chain(listener_task) {
        if task.await.is_err() {
            tracing::error!("a background task failed");
        }
    }
    if let Some((_, server)) = health_only {
        let _ = server.await;
    }
    if let Some((_, console)) = console {
        console.abort();
    }
    if let Err(e) = vault.flush_usage().await {
        tracing::warn!(error = %e, "last uses could not be recorded at shutdown");
    }
    if let Err(e) = keys::withdraw_active(&*store, vault.instance()).await {
        tracing::warn!(error = %e, "the active-key announcement could not be withdrawn");
    }
    // The closing digest: a trail that ends with it was not cut short.
    if !audit.close().await {
        tracing::error!("the audit log could not be flushed at shutdown");
    }
    store.flush().await?;
    tracing::info!("store flushed; stopped");
    Ok(())
}

/// Connections the health-only port holds at once (probes open one at a time).
const HEALTH_PORT_CONNECTIONS: usize = 64;

/// Streams a client may open and reset at once before GOAWAY (the classic rapid
/// reset, CVE-2023-44487; h2's own default, set here so that it is explicit).
const MAX_PENDING_ACCEPT_RESETS: usize = 20;

async fn drain_deadline(began: tokio::sync::oneshot::Receiver<()>, grace: Duration) {
    if began.await.is_ok() {
        tokio::time::sleep(grace).await;
    } else {
        std::future::pending::<()>().await;
    }
}
