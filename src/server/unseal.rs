//! Before serving with key roots: the master keys are asked of OpenBao/Vault
//! Transit or the HSM, and until they answer, the gRPC port serves health alone
//! (the vault service NOT_SERVING, any other call UNAVAILABLE), retrying with a
//! backoff and a log line per try. A fatal answer (no such key, a wrong PIN)
//! stops the start.

use std::pin::Pin;

use super::*;
use crate::config::{Joined, KeyRootSettings};

/// The first wait between tries, doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// The longest wait between tries.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How long the first try may take before the waiting ports open.
const QUICK_ANSWER: Duration = Duration::from_secs(1);
/// Connections the waiting port takes at once (probes and early clients).
const WAITING_CONNECTIONS: usize = 256;

/// The ports the server will serve on, bound already.
#[derive(Clone, Copy)]
pub(super) struct Ports<'a> {
    /// The gRPC port.
    pub(super) grpc: &'a TcpListener,
    /// The plaintext health-only port, if configured.
    pub(super) health: Option<&'a TcpListener>,
}

/// Asks the roots for the keyring until they give it; `None` when `shutdown`
/// came first. Meanwhile a health-only server answers on duplicates of `ports`.
pub(super) async fn wait_for_roots<S: Store>(
    store: &S,
    config: &Config,
    settings: &KeyRootSettings,
    ports: Ports<'_>,
    mut shutdown: Pin<&mut impl Future<Output = ()>>,
) -> Result<Option<Keyring>, ServeError> {
    let roots = &settings.roots;
    let file = config.keyring.as_deref();
    // A root that answers within a moment costs no second server; one that takes
    // longer (a connection timing out) gets the waiting ports opened meanwhile.
    let first = roots.keyring(store, file);
    tokio::pin!(first);
    let (first, waiting) = tokio::select! {
        answer = &mut first => (answer, None),
        () = tokio::time::sleep(QUICK_ANSWER) => {
            let waiting = WaitingPort::start(config, ports)?;
            tokio::select! {
                answer = &mut first => (answer, Some(waiting)),
                () = shutdown.as_mut() => {
                    waiting.stop().await;
                    return Ok(None);
                }
            }
        }
    };
    let mut error = match first {
        Ok(keyring) => {
            if let Some(waiting) = waiting {
                waiting.stop().await;
            }
            roots.state.confirmed();
            return Ok(Some(keyring));
        }
        Err(e) if e.is_fatal() => {
            if let Some(waiting) = waiting {
                waiting.stop().await;
            }
            return Err(e.into());
        }
        Err(e) => e,
    };
    let waiting = match waiting {
        Some(waiting) => waiting,
        None => WaitingPort::start(config, ports)?,
    };
    let mut backoff = FIRST_BACKOFF;
    let outcome = loop {
        tracing::warn!(
            error = %error,
            retry_in = ?backoff,
            "waiting for the key root to unseal the master keys: the vault service is NOT_SERVING until it answers"
        );
        tokio::select! {
            () = shutdown.as_mut() => break Ok(None),
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
        // A try that hangs (a root timing out) does not hold up a shutdown.
        let attempt = tokio::select! {
            () = shutdown.as_mut() => break Ok(None),
            attempt = roots.keyring(store, file) => attempt,
        };
        match attempt {
            Ok(keyring) => {
                tracing::info!(roots = %roots.names(), "the key root answered: the master keys are unsealed");
                roots.state.confirmed();
                break Ok(Some(keyring));
            }
            Err(e) if e.is_fatal() => break Err(e),
            Err(e) => error = e,
        }
    };
    waiting.stop().await;
    Ok(outcome?)
}

/// What the roots added to the key file's keyring, for a reload of the file to keep.
pub(super) fn joined(keyring: &Keyring, config: &Config) -> Joined {
    let from_file: Vec<&str> = config
        .keyring
        .as_deref()
        .map(|k| k.ids().collect())
        .unwrap_or_default();
    let roots = &config
        .key_roots
        .as_ref()
        .expect("joined only with roots")
        .roots;
    Joined {
        keys: keyring
            .keys()
            .filter(|k| !from_file.contains(&k.id()))
            .cloned()
            .collect(),
        active: (roots.provider != crate::keyroot::Provider::File)
            .then(|| keyring.active().id().to_owned()),
    }
}

/// The health-only servers on the ports while the roots are asked.
struct WaitingPort {
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl WaitingPort {
    fn start(config: &Config, ports: Ports<'_>) -> Result<Self, ServeError> {
        let (reporter, health) = tonic_health::server::health_reporter();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let listening = |name| transport::Listening {
            name,
            max_connections: WAITING_CONNECTIONS,
            max_per_peer: 0,
            handshake_timeout: config.transport.handshake_timeout,
        };
        let tls = config
            .tls
            .as_ref()
            .map(transport::tls_acceptor)
            .transpose()?;
        let health = health.max_decoding_message_size(MAX_PUBLIC_REQUEST_BYTES);
        let duplicate =
            |l: &TcpListener| duplicate(l).map_err(|e| ServeError::Transport(e.to_string()));
        let router = || {
            Server::builder()
                .layer(tower::layer::layer_fn(Unavailable))
                .add_service(health.clone())
        };
        let until = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        let mut tasks = Vec::new();
        let grpc = duplicate(ports.grpc)?;
        let (router_grpc, stop_grpc) = (router(), until(stopped.clone()));
        let grpc_listening = listening("grpc");
        tasks.push(tokio::spawn(async move {
            // The process is alive (liveness SERVING) but serves no secret yet.
            reporter
                .set_service_status("", ServingStatus::Serving)
                .await;
            reporter
                .set_service_status(api::SERVICE_NAME, ServingStatus::NotServing)
                .await;
            let served = match tls {
                None => {
                    router_grpc
                        .serve_with_incoming_shutdown(
                            transport::incoming(grpc, grpc_listening),
                            stop_grpc,
                        )
                        .await
                }
                Some(acceptor) => {
                    router_grpc
                        .serve_with_incoming_shutdown(
                            transport::incoming_tls(grpc, grpc_listening, acceptor),
                            stop_grpc,
                        )
                        .await
                }
            };
            if let Err(e) = served {
                tracing::warn!(error = %e, "the gRPC port's wait for the key root failed");
            }
        }));
        if let Some(health_port) = ports.health {
            let port = duplicate(health_port)?;
            let (router_health, stop_health) = (router(), until(stopped));
            let health_listening = listening("health");
            tasks.push(tokio::spawn(async move {
                if let Err(e) = router_health
                    .serve_with_incoming_shutdown(
                        transport::incoming(port, health_listening),
                        stop_health,
                    )
                    .await
                {
                    tracing::warn!(error = %e, "the health port's wait for the key root failed");
                }
            }));
        }
        Ok(WaitingPort { stop, tasks })
    }

    /// Stops them: GOAWAY to their clients, at most a few seconds for their calls.
    async fn stop(self) {
        let _ = self.stop.send(true);
        for mut task in self.tasks {
            if tokio::time::timeout(Duration::from_secs(5), &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
    }
}

/// A second handle on the same listening socket.
fn duplicate(listener: &TcpListener) -> std::io::Result<TcpListener> {
    #[cfg(unix)]
    {
        use std::os::fd::AsFd;
        let fd = listener.as_fd().try_clone_to_owned()?;
        let std = std::net::TcpListener::from(fd);
        std.set_nonblocking(true)?;
        TcpListener::from_std(std)
    }
    #[cfg(not(unix))]
    {
        let _ = listener;
        Err(std::io::Error::other("key roots need a unix host"))
    }
}

/// Answers every call but health's UNAVAILABLE while the master keys are sealed.
#[derive(Clone)]
struct Unavailable<S>(S);

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S> tower::Service<http::Request<tonic::body::Body>> for Unavailable<S>
where
    S: tower::Service<
        http::Request<tonic::body::Body>,
        Response = http::Response<tonic::body::Body>,
    >,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        if request.uri().path().starts_with("/grpc.health.v1.Health/") {
            return Box::pin(self.0.call(request));
        }
        let status = tonic::Status::unavailable(
            "the vault is waiting for its key root (OpenBao/Vault Transit or the HSM) to unseal the master keys; try again",
        );
        Box::pin(std::future::ready(Ok(status.into_http())))
    }
}
