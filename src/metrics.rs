//! Prometheus metrics: requests by method and code, latency histograms, the
//! number of credentials, and verification outcomes, served on `--metrics-listen`.

use std::net::SocketAddr;
use std::time::Duration;

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit,
};
use metrics_exporter_prometheus::PrometheusBuilder;

const REQUESTS: &str = "credvault_requests_total";
const LATENCY: &str = "credvault_request_duration_seconds";
const CREDENTIALS: &str = "credvault_credentials";
const VERIFICATIONS: &str = "credvault_verifications_total";
const AUDIT_FAILURES: &str = "credvault_audit_write_failures_total";
const SEALS: &str = "credvault_master_key_seals";

/// Latency buckets from 100 µs to 10 s.
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];

/// Where a verification was asked for.
#[derive(Clone, Copy, Debug)]
pub enum Source {
    /// `VerifyCredential`.
    Rpc,
    /// `verify: true` on a create or update.
    Write,
    /// The background re-verifier.
    Background,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::Rpc => "rpc",
            Source::Write => "write",
            Source::Background => "background",
        }
    }
}

/// Installs the global recorder and serves `/metrics` (Prometheus text) on `addr`.
/// Must run inside the tokio runtime.
pub fn install(addr: SocketAddr) -> Result<(), String> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(LATENCY.into()),
            BUCKETS,
        )
        .and_then(|b| b.install())
        .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
    describe_counter!(REQUESTS, "gRPC requests handled, by method and status code");
    describe_histogram!(LATENCY, Unit::Seconds, "gRPC request latency, by method");
    describe_gauge!(CREDENTIALS, "credentials stored");
    describe_gauge!(
        SEALS,
        "data keys sealed by each master key (rotate well before 2^32)"
    );
    describe_counter!(
        VERIFICATIONS,
        "provider checks, by provider, status and source"
    );
    Ok(())
}

/// Records one handled RPC. A no-op when no recorder is installed.
pub fn rpc(method: &'static str, code: tonic::Code, elapsed: Duration) {
    counter!(REQUESTS, "method" => method, "code" => code_name(code)).increment(1);
    histogram!(LATENCY, "method" => method).record(elapsed.as_secs_f64());
}

/// Sets the number of stored credentials.
pub fn set_credentials(count: usize) {
    gauge!(CREDENTIALS).set(count as f64);
}

/// Adds `delta` to the number of stored credentials.
pub fn credentials_changed(delta: f64) {
    gauge!(CREDENTIALS).increment(delta);
}

/// Sets how many data keys a master key has sealed.
pub fn set_seals(key_id: &str, seals: u64) {
    gauge!(SEALS, "key_id" => key_id.to_owned()).set(seals as f64);
}

/// Counts an audit batch that could not be written.
pub fn audit_write_failed() {
    counter!(AUDIT_FAILURES).increment(1);
}

/// Records one provider check.
pub fn verification(provider: &'static str, status: &'static str, source: Source) {
    counter!(VERIFICATIONS, "provider" => provider, "status" => status, "source" => source.as_str()).increment(1);
}

/// The canonical upper-case name of a gRPC code, e.g. `PERMISSION_DENIED`.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}
