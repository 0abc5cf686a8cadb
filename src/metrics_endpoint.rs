//! The `/metrics` endpoint: Prometheus text over HTTP/1.1 on `--metrics-listen`,
//! behind the accept loop and connection cap of [`crate::transport`]. The
//! metrics themselves ([`crate::metrics`]) know nothing of it.

use std::net::SocketAddr;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::metrics::{
    self, MetricsError, METRICS_CONNECTIONS, METRICS_CONNECTIONS_PER_PEER, METRICS_HEADER_TIMEOUT,
};

/// The running `/metrics` endpoint; [`Endpoint::stop`] closes its port.
#[derive(Debug)]
pub(crate) struct Endpoint {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Endpoint {
    /// Stops accepting and returns once the port is closed (a scrape being answered
    /// finishes on its own). The recorder stays installed: it is the process's.
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Installs the global recorder and serves `/metrics` (Prometheus text) on `addr`
/// until [`Endpoint::stop`]. Must run inside the tokio runtime.
pub(crate) fn install(addr: SocketAddr) -> Result<Endpoint, MetricsError> {
    let handle = metrics::install_recorder(addr)?;
    let listener =
        crate::transport::bind(addr, 128).map_err(|source| MetricsError::Bind { addr, source })?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(serve(listener, handle, stopped));
    Ok(Endpoint { stop, task })
}

/// Serves `GET /metrics` over HTTP/1.1, one request per connection, each
/// connection bounded in time; histograms are drained every few seconds.
async fn serve(
    listener: tokio::net::TcpListener,
    handle: PrometheusHandle,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let upkeep = handle.clone();
    let mut upkeep_stop = stop.clone();
    let upkeep = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = upkeep_stop.wait_for(|s| *s) => return,
                () = tokio::time::sleep(Duration::from_secs(5)) => upkeep.run_upkeep(),
            }
        }
    });
    let listening = crate::transport::Listening {
        name: "metrics",
        max_connections: METRICS_CONNECTIONS,
        max_per_peer: METRICS_CONNECTIONS_PER_PEER,
        handshake_timeout: Duration::from_secs(10),
    };
    let mut stop = stop;
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    crate::transport::accept(listener, listening, stopped, move |stream, _peer, slot| {
        let handle = handle.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(
                move |request: hyper::Request<hyper::body::Incoming>| {
                    let response = if request.uri().path() == "/metrics" {
                        hyper::Response::builder()
                            .header("content-type", "text/plain; version=0.0.4")
                            .body(handle.render())
                    } else {
                        hyper::Response::builder()
                            .status(404)
                            .body("metrics are at /metrics\n".to_owned())
                    };
                    std::future::ready(response)
                },
            );
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(METRICS_HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(Duration::from_secs(30), connection).await;
            drop(slot);
        });
    })
    .await;
    let _ = upkeep.await;
}
