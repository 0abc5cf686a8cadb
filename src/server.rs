//! The server: opens the store, checks the master key, and serves the vault,
//! health and reflection services until shutdown, then drains and flushes.

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

/// Reopens the audit log on SIGHUP (after an outside logrotate moved it).
async fn reopen_audit(audit: Arc<AuditLog>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut hangups = Hangups::new();
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            () = hangups.next() => audit.reopen(),
        }
    }
}

/// Deletes the database's audit events older than `retention`: at start, then
/// every quarter of it (at least every second, at most hourly). Every replica
/// does; a deletion that finds nothing costs one indexed query.
async fn prune_audit(
    audit: Arc<AuditLog>,
    retention: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    if retention.is_zero() || !audit.in_database() {
        return;
    }
    let every = (retention / 4).clamp(Duration::from_secs(1), Duration::from_secs(3600));
    loop {
        if let Some(before) = SystemTime::now().checked_sub(retention) {
            match audit.prune(before).await {
                Ok(0) => {}
                Ok(pruned) => {
                    tracing::info!(pruned, retention = ?retention, "old audit events deleted")
                }
                Err(e) => tracing::warn!(error = %e, "old audit events could not be deleted"),
            }
        }
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// Every `every`, writes one log line and one audit event per peer (or known
/// caller) whose refused calls were only counted (see [`crate::refusals`]); once more at shutdown.
async fn summarize_refusals(
    refusals: Arc<Refusals>,
    audit: Arc<AuditLog>,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let every = every.max(Duration::from_millis(100));
    loop {
        let stopping = tokio::select! {
            _ = stop.changed() => true,
            () = tokio::time::sleep(every) => false,
        };
        for s in refusals.take() {
            let method = s.method.unwrap_or("several");
            let (caller, code, reason) = match &s.caller {
                None => {
                    tracing::warn!(
                        count = s.count,
                        peer = %s.peer,
                        reason = s.reason,
                        method,
                        interval = ?every,
                        "calls refused from this peer in the last interval, not logged one by one"
                    );
                    ("anonymous", "UNAUTHENTICATED", s.reason)
                }
                Some(caller) => {
                    tracing::warn!(
                        count = s.count,
                        caller = %caller,
                        code = s.reason,
                        method,
                        interval = ?every,
                        "calls of this caller refused in the last interval, not logged one by one"
                    );
                    let reason = "refused calls of this caller, counted in this summary";
                    (caller.as_str(), s.reason, reason)
                }
            };
            audit
                .record(&AuditEntry {
                    peer: Peer::Label(&s.peer),
                    method,
                    code,
                    reason,
                    count: s.count,
                    ..AuditEntry::new(SystemTime::now(), caller, None)
                })
                .await;
        }
        if stopping {
            return;
        }
    }
}

/// Resolves when the process gets SIGHUP (never where there are no signals).
struct Hangups(#[cfg(unix)] Option<tokio::signal::unix::Signal>);

impl Hangups {
    fn new() -> Self {
        #[cfg(unix)]
        {
            Hangups(tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok())
        }
        #[cfg(not(unix))]
        Hangups()
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        if let Some(signal) = self.0.as_mut() {
            signal.recv().await;
            return;
        }
        std::future::pending::<()>().await;
    }
}

/// Waits for SIGHUP or a change of `path`'s modification time (checked twice a
/// second); `None` once `stop` fires.
async fn next_reload(
    file: &'static str,
    path: &std::path::Path,
    seen: &mut Option<std::time::SystemTime>,
    hangups: &mut Hangups,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Option<&'static str> {
    let stamp = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    loop {
        tokio::select! {
            _ = stop.changed() => return None,
            () = hangups.next() => {
                metrics::reload_checked(file);
                *seen = stamp(path);
                return Some("SIGHUP");
            }
            () = tokio::time::sleep(Duration::from_millis(500)) => {
                metrics::reload_checked(file);
                let now = stamp(path);
                if now != *seen {
                    *seen = now;
                    return Some("the file changed");
                }
            }
        }
    }
}

/// Re-reads the callers file on SIGHUP and whenever it changes.
async fn reload_callers(
    callers: Arc<CallerRegistry>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let Some(path) = callers.path().map(std::path::Path::to_owned) else {
        return;
    };
    let mut seen = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
    let mut hangups = Hangups::new();
    while let Some(why) = next_reload("callers", &path, &mut seen, &mut hangups, &mut stop).await {
        match callers.reload() {
            Ok(count) => {
                metrics::reloaded("callers", "reloaded");
                tracing::info!(callers = count, reason = why, "callers reloaded");
            }
            Err(e) => {
                metrics::reloaded("callers", "failed");
                tracing::error!(error = %e, reason = why, "callers reload failed; keeping the previous callers")
            }
        }
    }
}

/// Re-reads the providers file on SIGHUP and whenever it changes; a file
/// with any bad declaration is refused whole and the previous set kept.
async fn reload_providers<S: Store>(
    vault: Arc<Vault<S>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let Some(path) = vault.providers().path().map(std::path::Path::to_owned) else {
        return;
    };
    let mut seen = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
    let mut hangups = Hangups::new();
    while let Some(why) = next_reload("providers", &path, &mut seen, &mut hangups, &mut stop).await
    {
        match vault.providers().reload() {
            Ok(count) => {
                // Every watched credential is read again (in chunks, behind pushes):
                // a changed declaration changes its headers at the same version,
                // and the watchers hear the new ones, or UNAVAILABLE and why.
                vault.hub().reread_all();
                metrics::reloaded("providers", "reloaded");
                tracing::info!(
                    declared = count,
                    providers = %vault.providers().current().names(),
                    reason = why,
                    "providers reloaded"
                );
            }
            Err(e) => {
                metrics::reloaded("providers", "failed");
                tracing::error!(error = %e, reason = why, "providers reload failed; keeping the previous providers")
            }
        }
    }
}

/// Re-reads the keyring on SIGHUP and whenever its file or directory changes:
/// rotation without a restart. A keyring that lacks a key the data needs is refused.
async fn reload_keyring<S: Store>(
    vault: Arc<Vault<S>>,
    source: Option<KeyringSource>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let Some(source) = source else { return };
    let mut seen = std::fs::metadata(&source.path)
        .and_then(|m| m.modified())
        .ok();
    let mut hangups = Hangups::new();
    while let Some(why) =
        next_reload("keyring", &source.path, &mut seen, &mut hangups, &mut stop).await
    {
        let before = vault.keyring();
        let outcome = match source.read() {
            Ok(keyring) => {
                let unchanged =
                    keyring.active().id() == before.active().id() && keyring.ids().eq(before.ids());
                vault
                    .replace_keyring(keyring)
                    .await
                    .map(|()| unchanged)
                    .map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        };
        metrics::reloaded(
            "keyring",
            match outcome {
                Ok(true) => "unchanged",
                Ok(false) => "reloaded",
                Err(_) => "failed",
            },
        );
        match outcome {
            Ok(true) => tracing::debug!(reason = why, "keyring read again; unchanged"),
            Ok(false) => {
                let now = vault.keyring();
                tracing::info!(
                    reason = why,
                    key_id = now.active().id(),
                    key_ids = %now.ids().collect::<Vec<_>>().join(","),
                    "keyring reloaded: new data keys are wrapped by the active key; run RewrapCredentials to move older ones"
                );
            }
            Err(e) => tracing::error!(
                error = %e,
                reason = why,
                "keyring reload failed; keeping the previous keyring"
            ),
        }
    }
}

/// How often noted secret reads (last_used_*) are written to the store.
///
/// A write per credential read in the interval: at 1 s this was 6 % of the
/// server's CPU on the hot path with 10,000 credentials read at random. This
/// server answers from memory meanwhile; a crash loses at most this much of it
/// (the audit log holds every read).
const USAGE_FLUSH_EVERY: Duration = Duration::from_secs(10);

/// Writes noted secret reads (last_used_*) to the store every [`USAGE_FLUSH_EVERY`].
async fn flush_usage<S: Store>(vault: Arc<Vault<S>>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(USAGE_FLUSH_EVERY) => {}
        }
        if let Err(e) = vault.flush_usage().await {
            tracing::warn!(error = %e, "last uses could not be recorded");
        }
    }
}

/// Purges deleted credentials whose recovery window has ended: every minute, or
/// every half window when the window is shorter.
/// How often erasable keys no record refers to are swept.
const ERASABLE_SWEEP_EVERY: Duration = Duration::from_secs(3600);
/// How old an unreferenced erasable key must be before a sweep erases it: a key
/// is stored moments before the record that refers to it.
const ERASABLE_SWEEP_GRACE: Duration = Duration::from_secs(600);

async fn purge_deleted<S: Store>(
    vault: Arc<Vault<S>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let every =
        (vault.recovery_window() / 2).clamp(Duration::from_millis(100), Duration::from_secs(60));
    let mut last_sweep: Option<Instant> = None;
    loop {
        // Keys a crash left unreferenced (PostgreSQL; sled sweeps at open), hourly.
        if last_sweep.is_none_or(|t| t.elapsed() >= ERASABLE_SWEEP_EVERY) {
            last_sweep = Some(Instant::now());
            match vault.sweep_erasable(ERASABLE_SWEEP_GRACE).await {
                Ok(0) => {}
                Ok(erased) => {
                    tracing::info!(erased, "erasable keys no record refers to were erased")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "unreferenced erasable keys could not be swept; retried later")
                }
            }
        }
        match vault.purge_due().await {
            Ok(0) => {}
            Ok(purged) => tracing::info!(
                purged,
                "deleted credentials purged at the end of their recovery window"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "deleted credentials could not be purged; retried later")
            }
        }
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// Renews this server's active-key announcement every [`keys::ANNOUNCE_EVERY`],
/// and at once when a keyring reload changed the active key.
async fn announce_active<S: Store>(
    vault: Arc<Vault<S>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut announced = (vault.keyring().active().id().to_owned(), Instant::now());
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let active = vault.keyring().active().id().to_owned();
        if active == announced.0 && announced.1.elapsed() < keys::ANNOUNCE_EVERY {
            continue;
        }
        match vault.announce_active().await {
            Ok(()) => announced = (active, Instant::now()),
            Err(e) => tracing::warn!(error = %e, "the active key could not be announced"),
        }
    }
}

/// Why the vault service is not ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unready {
    /// The audit log cannot be written, and secret reads fail closed.
    Audit,
    /// The store does not answer.
    StoreUnreachable,
    /// The store does not take writes (a full disk, a read-only database).
    StoreUnwritable,
}

impl Unready {
    const ALL: [Unready; 3] = [
        Unready::Audit,
        Unready::StoreUnreachable,
        Unready::StoreUnwritable,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Unready::Audit => "audit",
            Unready::StoreUnreachable => "store_unreachable",
            Unready::StoreUnwritable => "store_unwritable",
        }
    }
}

/// Readiness that tells the truth: twice a second, asks the audit log whether it
/// can be written and the store whether it answers and takes a write. While the
/// vault would refuse secret reads or writes for one of these causes, the vault
/// service (what readiness probes ask) is NOT_SERVING, and it turns SERVING again
/// by itself once the cause is gone. `credvault.audit` and `credvault.store` show
/// the parts alone; `""` (liveness) turns NOT_SERVING only when a restart is what
/// would heal the store (sled keeps a write error until one).
async fn watch_readiness<S: Store>(
    store: Arc<S>,
    audit: Arc<AuditLog>,
    instance: String,
    stuck_after: Duration,
    reporter: tonic_health::server::HealthReporter,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
    let status = |ok: bool| {
        if ok {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        }
    };
    let mut shown: Option<(Vec<Unready>, bool, bool, bool)> = None;
    // Since when the audit trail has refused secret reads while the store took writes.
    let mut stuck_since: Option<Instant> = None;
    let mut last_probe = Instant::now() - Duration::from_secs(60);
    let (mut reachable, mut writable) = (Ok(()), Ok(()));
    loop {
        // The store is asked once a second; the audit log (a flag) twice.
        if last_probe.elapsed() >= Duration::from_secs(1) {
            last_probe = Instant::now();
            let timed = |r: Result<Result<(), StoreError>, _>| {
                r.unwrap_or_else(|_| Err(StoreError::Unreachable("no answer within 5 s".into())))
                    .map_err(|e| e.to_string())
            };
            reachable = timed(tokio::time::timeout(PROBE_TIMEOUT, store.ping()).await);
            writable = if reachable.is_ok() {
                timed(tokio::time::timeout(PROBE_TIMEOUT, store.probe_write(&instance)).await)
            } else {
                Err("the store does not answer".into())
            };
        }
        if *stop.borrow() {
            set_health(&reporter, ServingStatus::NotServing).await;
            return;
        }
        let audit_ok = audit.healthy();
        let mut causes = Vec::new();
        if !audit_ok && !audit.fail_open() {
            causes.push(Unready::Audit);
        }
        if reachable.is_err() {
            causes.push(Unready::StoreUnreachable);
        } else if writable.is_err() {
            causes.push(Unready::StoreUnwritable);
        }
        // The trail cannot be written while the store answers and takes writes: its
        // writer is stuck. Past `stuck_after`, only a restart is left to try.
        let store_ok = reachable.is_ok() && writable.is_ok();
        if causes == [Unready::Audit] && store_ok {
            stuck_since.get_or_insert_with(Instant::now);
        } else {
            stuck_since = None;
        }
        let stuck = stuck_since.is_some_and(|t| t.elapsed() >= stuck_after);
        let restart = !causes.is_empty() && (stuck || store.needs_restart().await);
        let now = (
            causes.clone(),
            audit_ok,
            reachable.is_ok() && writable.is_ok(),
            restart,
        );
        if shown.as_ref() != Some(&now) {
            let was = shown.as_ref().map(|s| s.0.clone()).unwrap_or_default();
            if causes.is_empty() && !was.is_empty() {
                tracing::info!("the vault service is SERVING again");
            } else if causes != was {
                let names: Vec<&str> = causes.iter().map(|c| c.as_str()).collect();
                let error = [&reachable, &writable]
                    .iter()
                    .find_map(|r| r.as_ref().err().cloned())
                    .unwrap_or_default();
                tracing::error!(
                    causes = %names.join(","),
                    store_error = %error,
                    audit_writable = audit_ok,
                    "the vault service is NOT_SERVING: readiness takes this replica out until the cause is gone"
                );
            }
            if restart && shown.as_ref().is_none_or(|s| !s.3) {
                if stuck {
                    tracing::error!(
                        stuck_after = ?stuck_after,
                        "the audit trail has refused every secret read for this long while the store takes writes: liveness is NOT_SERVING so that a supervisor restarts the server"
                    );
                } else {
                    tracing::error!(
                        "the store's writes failed and its disk takes writes again, but only a restart resumes them: liveness is NOT_SERVING so that a supervisor restarts the server"
                    );
                }
            }
            for cause in Unready::ALL {
                metrics::set_unready(cause.as_str(), causes.contains(&cause));
            }
            reporter
                .set_service_status(api::SERVICE_NAME, status(causes.is_empty()))
                .await;
            reporter
                .set_service_status(AUDIT_HEALTH_SERVICE, status(audit_ok))
                .await;
            reporter
                .set_service_status(STORE_HEALTH_SERVICE, status(now.2))
                .await;
            reporter.set_service_status("", status(!restart)).await;
            shown = Some(now);
        }
        tokio::select! {
            _ = stop.changed() => {
                // Shutdown set NOT_SERVING; a round that raced it must not undo that.
                set_health(&reporter, ServingStatus::NotServing).await;
                return;
            }
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

async fn drain_deadline(began: tokio::sync::oneshot::Receiver<()>, grace: Duration) {
    if began.await.is_ok() {
        tokio::time::sleep(grace).await;
    } else {
        std::future::pending::<()>().await;
    }
}

async fn set_health(reporter: &tonic_health::server::HealthReporter, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    reporter.set_service_status(api::SERVICE_NAME, status).await;
}
