//! The server: opens the store, checks the master key, and serves the vault,
//! health and reflection services until shutdown, then drains and flushes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tonic_health::ServingStatus;

use crate::api::{self, credential_vault_service_server::CredentialVaultServiceServer};
use crate::config::Config;
use crate::crypto::MasterKey;
use crate::metrics;
use crate::provider::Providers;
use crate::reverify;
use crate::service::VaultService;
use crate::store::{SledStore, Store, StoreError};
use crate::vault::Vault;

/// The largest request message accepted; larger ones answer `INVALID_ARGUMENT`.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The data directory could not be opened.
    #[error("cannot open the data directory {dir}: {source}")]
    Open { dir: String, source: StoreError },
    /// The store failed while checking or flushing.
    #[error("the credential store failed: {0}")]
    Store(#[from] StoreError),
    /// The data was sealed with another master key.
    #[error("the master key does not open this data directory: it was created with key id {data_key_id}, but the key given has id {given_key_id}; start with the key it was created with")]
    WrongMasterKey {
        data_key_id: String,
        given_key_id: String,
    },
    /// Records exist but no key-check value does: the directory is not one credvault made whole.
    #[error("the data directory holds credentials but no key-check value; it was not made by credvault or is damaged")]
    MissingKeyCheck,
    /// A provider client could not be built.
    #[error("{0}")]
    Provider(String),
    /// gRPC transport or reflection setup failed.
    #[error("grpc server error: {0}")]
    Transport(String),
}

/// Opens the sled store in `dir` and checks it against `key` (creating the key check when new).
pub async fn open_store(dir: &std::path::Path, key: &MasterKey) -> Result<SledStore, ServeError> {
    let path = dir.join("db");
    let store = tokio::task::spawn_blocking(move || SledStore::open(&path))
        .await
        .map_err(|e| ServeError::Transport(format!("store open task failed: {e}")))?
        .map_err(|source| ServeError::Open {
            dir: dir.display().to_string(),
            source,
        })?;
    check_key(&store, key).await?;
    Ok(store)
}

async fn check_key<S: Store>(store: &S, key: &MasterKey) -> Result<(), ServeError> {
    match store.key_check().await? {
        Some(check) if key.matches(&check) => Ok(()),
        Some(check) => Err(ServeError::WrongMasterKey {
            data_key_id: check.key_id,
            given_key_id: key.id().to_owned(),
        }),
        None if store.count().await? > 0 => Err(ServeError::MissingKeyCheck),
        None => Ok(store.set_key_check(&key.key_check()).await?),
    }
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
    let (reporter, health) = tonic_health::server::health_reporter();
    set_health(&reporter, ServingStatus::NotServing).await;

    if let Some(addr) = config.metrics_listen {
        metrics::install(addr).map_err(ServeError::Transport)?;
    }
    let key = Arc::new(config.master_key);
    let store = Arc::new(open_store(&config.data_dir, &key).await?);
    let providers = Providers::new(&config.providers).map_err(ServeError::Provider)?;
    let count = store.count().await?;
    let vault = Arc::new(Vault::new(Arc::clone(&store), Arc::clone(&key), providers));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let reverifier = tokio::spawn(reverify::run(
        Arc::clone(&vault),
        config.reverify.clone(),
        stop_rx,
    ));
    let service = VaultService::new(vault, Arc::new(config.callers));

    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(api::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|e| ServeError::Transport(e.to_string()))?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| ServeError::Transport(e.to_string()))?;

    let addr = listener
        .local_addr()
        .map_err(|e| ServeError::Transport(e.to_string()))?;
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));

    metrics::set_credentials(count);
    set_health(&reporter, ServingStatus::Serving).await;
    let metrics_addr = config
        .metrics_listen
        .map_or_else(|| "off".to_owned(), |a| a.to_string());
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        %addr,
        data_dir = %config.data_dir.display(),
        credentials = count,
        key_id = key.id(),
        tls = false,
        audit = false,
        metrics = %metrics_addr,
        reverify_interval = ?config.reverify.interval,
        "credvault serving"
    );

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
            tracing::info!("no longer accepting connections; finishing in-flight calls");
            let _ = began_tx.send(());
        }
    };
    let serve = Server::builder()
        .layer(tower::layer::layer_fn(OversizedIsInvalid))
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            CredentialVaultServiceServer::new(service).max_decoding_message_size(MAX_REQUEST_BYTES),
        )
        .serve_with_incoming_shutdown(incoming, signal);
    let grace = config.shutdown_grace;
    tokio::select! {
        served = serve => served.map_err(|e| ServeError::Transport(e.to_string()))?,
        () = drain_deadline(began_rx, grace) => {
            tracing::warn!(?grace, "drain took longer than the grace period; closing the remaining connections");
        }
    }
    if reverifier.await.is_err() {
        tracing::error!("the re-verifier task failed");
    }
    store.flush().await?;
    tracing::info!("store flushed; stopped");
    Ok(())
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

/// Answers `INVALID_ARGUMENT` instead of tonic's `OUT_OF_RANGE` for a request
/// message over [`MAX_REQUEST_BYTES`] (the only source of `OUT_OF_RANGE` here).
#[derive(Clone)]
struct OversizedIsInvalid<S>(S);

impl<S, B, RB> tower::Service<http::Request<B>> for OversizedIsInvalid<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let response = self.0.call(request);
        Box::pin(async move {
            let mut response = response.await?;
            let headers = response.headers_mut();
            if headers.get("grpc-status").is_some_and(|v| v == "11") {
                headers.insert("grpc-status", http::HeaderValue::from_static("3"));
                headers.insert(
                    "grpc-message",
                    http::HeaderValue::from_static(
                        "request%20message%20too%20large%3A%20the%20limit%20is%2064%20KiB",
                    ),
                );
            }
            Ok(response)
        })
    }
}
