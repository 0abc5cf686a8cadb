//! The accept loop ([`run`]) and the threads it hands connections to, each a
//! single-threaded runtime with its own connections to the providers.

use super::*;

impl Proxy {
    /// Serves one connection (HTTP/1.1 or HTTP/2) until it closes.
    pub(super) async fn serve_io<I>(self: Arc<Self>, io: I, origin: Origin)
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.settings.header_timeout)
            .max_buf_size(self.settings.max_header_bytes.max(8192));
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(self.settings.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(256);
        let proxy = Arc::clone(&self);
        // A connection that sends no request within the header timeout is closed
        // (hyper's own timeout starts only once it knows HTTP/1 from HTTP/2).
        let started = Arc::new(tokio::sync::Notify::new());
        let first = Arc::clone(&started);
        let service = hyper::service::service_fn(move |req| {
            first.notify_one();
            let proxy = Arc::clone(&proxy);
            let origin = origin.clone();
            async move { Ok::<_, Infallible>(proxy.handle(req, origin).await) }
        });
        let connection = builder.serve_connection_with_upgrades(io, service);
        tokio::pin!(connection);
        let deadline = tokio::time::sleep(self.settings.header_timeout);
        tokio::select! {
            result = &mut connection => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "a worker's connection ended with an error");
                }
                return;
            }
            () = started.notified() => {}
            () = deadline => {
                tracing::debug!("a connection sent no request in time; closed");
                return;
            }
        }
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "a worker's connection ended with an error");
        }
    }
}

/// A connection accepted (its peer, its slot), on its way to a thread.
pub(super) type Accepted = (
    std::net::TcpStream,
    SocketAddr,
    tokio::sync::OwnedSemaphorePermit,
);

/// One of the threads serving workers: a single-threaded runtime with its own
/// connections to the providers, as Envoy's workers, so that a request is
/// served start to end on one thread, without a lock or a wake-up shared
/// with another (on two cores: a third less CPU per request over HTTP/2,
/// BENCHMARKS.md).
pub(super) struct Lane {
    pub(super) accepted: tokio::sync::mpsc::UnboundedSender<Accepted>,
    pub(super) open: Arc<std::sync::atomic::AtomicUsize>,
}

/// Serves workers on `listener` until `shutdown` resolves: each connection in
/// its own task on the least busy of `threads` threads, at most
/// `max_connections` at once. Without workers' tokens only loopback peers are
/// served (a worker beside the proxy).
pub async fn run(
    listener: tokio::net::TcpListener,
    proxy: Arc<Proxy>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let slots = Arc::new(tokio::sync::Semaphore::new(
        proxy.settings.max_connections.max(1),
    ));
    let mut lanes = Vec::new();
    for i in 0..proxy.settings.threads.max(1) {
        lanes.push(lane(i, Arc::new(proxy.for_thread()))?);
    }
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => return Ok(()),
            permit = Arc::clone(&slots).acquire_owned() => permit.map_err(std::io::Error::other)?,
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if !proxy.admits(&peer) {
            tracing::warn!(peer = %peer, "refused a connection from outside this host (without --tokens-file the proxy serves loopback workers only)");
            continue;
        }
        let _ = stream.set_nodelay(true);
        let Some(lane) = lanes
            .iter()
            .min_by_key(|l| l.open.load(std::sync::atomic::Ordering::Relaxed))
        else {
            continue;
        };
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "an accepted connection could not be handed to a thread");
                continue;
            }
        };
        lane.open.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let _ = lane.accepted.send((stream, peer, permit));
    }
}

/// Starts thread `i`: it serves the connections sent to it until the sender is dropped.
pub(super) fn lane(i: usize, proxy: Arc<Proxy>) -> std::io::Result<Lane> {
    let (accepted, mut arriving) = tokio::sync::mpsc::unbounded_channel::<Accepted>();
    let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = Arc::clone(&open);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name(format!("credvault-proxy-{i}"))
        .spawn(move || {
            runtime.block_on(async move {
                while let Some((stream, peer, permit)) = arriving.recv().await {
                    let stream = match tokio::net::TcpStream::from_std(stream) {
                        Ok(s) => s,
                        Err(e) => {
                            count.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                            tracing::warn!(error = %e, "a connection could not join its thread");
                            continue;
                        }
                    };
                    let proxy = Arc::clone(&proxy);
                    let count = Arc::clone(&count);
                    metrics::connection(1.0);
                    tokio::spawn(async move {
                        let _permit = permit;
                        let _closed = OnDrop(|| {
                            count.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                            metrics::connection(-1.0);
                        });
                        proxy
                            .serve_io(
                                TokioIo::new(stream),
                                Origin {
                                    peer,
                                    tunnel: None,
                                    worker: None,
                                },
                            )
                            .await;
                    });
                }
            });
        })?;
    Ok(Lane { accepted, open })
}
