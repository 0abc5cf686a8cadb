//! Prometheus metrics of the proxy, with bounded labels: requests by form and
//! status class (and credential once its headers were held: at most the
//! client's credential cap), refusals by reason, reports by status, response
//! bytes, latency to the answer's headers, connections open. Served on
//! `--metrics-listen` at `/metrics`.

use std::net::SocketAddr;
use std::time::Duration;

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

const REQUESTS: &str = "credvault_proxy_requests_total";
const LATENCY: &str = "credvault_proxy_request_duration_seconds";
const BYTES: &str = "credvault_proxy_response_bytes_total";
const REFUSED: &str = "credvault_proxy_refused_total";
const REPORTS: &str = "credvault_proxy_reports_total";
const CONNECTIONS: &str = "credvault_proxy_connections";

/// Latency buckets from 100 µs to 30 s.
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// Why a request was answered by the proxy itself.
#[derive(Clone, Copy, Debug)]
pub enum Refused {
    /// Ambiguous framing (two Host or Content-Length headers, CL with TE).
    Framing,
    /// A path, query or host that would leave the credential's place.
    Target,
    /// No route for the host and path (or a CONNECT to an unrouted host).
    Route,
    /// No worker's token, or an unknown one.
    Token,
    /// The worker may not use that credential.
    Scope,
    /// The account is paused.
    Paused,
    /// The account's budget is spent.
    Budget,
    /// The vault refused the credential (not found, deleted, rejected, unreachable).
    Vault,
    /// The provider could not be reached.
    Upstream,
}

impl Refused {
    fn as_str(self) -> &'static str {
        match self {
            Refused::Framing => "framing",
            Refused::Target => "target",
            Refused::Route => "route",
            Refused::Token => "token",
            Refused::Scope => "scope",
            Refused::Paused => "paused",
            Refused::Budget => "budget",
            Refused::Vault => "vault",
            Refused::Upstream => "upstream",
        }
    }
}

fn class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// Whether a recorder is installed (`--metrics-listen`): without one the
/// request path builds no labels at all.
static INSTALLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn installed() -> bool {
    INSTALLED.load(std::sync::atomic::Ordering::Relaxed)
}

/// A request the provider answered.
pub fn request(form: &'static str, credential: &str, status: u16, latency: Duration) {
    if !installed() {
        return;
    }
    counter!(REQUESTS, "form" => form, "credential" => credential.to_owned(), "code" => class(status))
        .increment(1);
    histogram!(LATENCY, "form" => form).record(latency.as_secs_f64());
}

/// Bytes of a provider's answer passed on.
pub fn response_bytes(n: u64) {
    if !installed() {
        return;
    }
    counter!(BYTES).increment(n);
}

/// A request the proxy answered itself.
pub fn refused(why: Refused) {
    counter!(REFUSED, "reason" => why.as_str()).increment(1);
}

/// A report sent to the vault.
pub fn reported(status: u16) {
    let status = match status {
        401 => "401",
        403 => "403",
        _ => "429",
    };
    counter!(REPORTS, "status" => status).increment(1);
}

/// A worker's connection opened (`+1`) or closed (`-1`).
pub fn connection(delta: f64) {
    gauge!(CONNECTIONS).increment(delta);
}

/// Why metrics could not be served.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The global recorder could not be installed (one was already).
    #[error("cannot install the metrics recorder: {0}")]
    Recorder(String),
    /// The metrics address could not be bound.
    #[error("cannot listen for metrics on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Installs the recorder and serves `/metrics` on `addr`; must run inside the runtime.
pub async fn install(addr: SocketAddr) -> Result<SocketAddr, MetricsError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(LATENCY.into()),
            BUCKETS,
        )
        .and_then(|b| b.install_recorder())
        .map_err(|e| MetricsError::Recorder(e.to_string()))?;
    INSTALLED.store(true, std::sync::atomic::Ordering::Relaxed);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| MetricsError::Bind { addr, source })?;
    describe_counter!(
        REQUESTS,
        "requests the provider answered, by form, credential and status class"
    );
    describe_histogram!(
        LATENCY,
        Unit::Seconds,
        "time to the provider's answer's headers, by form"
    );
    describe_counter!(
        BYTES,
        Unit::Bytes,
        "bytes of the providers' answers passed on"
    );
    describe_counter!(REFUSED, "requests the proxy answered itself, by reason");
    describe_counter!(REPORTS, "provider answers reported to the vault, by status");
    describe_gauge!(CONNECTIONS, "workers' connections open");
    tokio::spawn(serve(listener, handle));
    Ok(bound)
}

async fn serve(listener: tokio::net::TcpListener, handle: PrometheusHandle) {
    use hyper_util::rt::TokioIo;
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(16));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = std::sync::Arc::clone(&slots).try_acquire_owned() else {
            continue;
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let handle = handle.clone();
                    async move {
                        let (status, body) = if req.uri().path() == "/metrics" {
                            (200, handle.render())
                        } else {
                            (404, "see /metrics\n".to_owned())
                        };
                        let mut response = http::Response::new(http_body_util::Full::new(
                            bytes::Bytes::from(body),
                        ));
                        *response.status_mut() =
                            http::StatusCode::from_u16(status).unwrap_or_default();
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
        });
    }
}
