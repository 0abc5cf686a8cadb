//! The server's metrics (requests by method and code, latency, connections,
//! refusals, watch streams, reloads, the console, readiness) and the Prometheus
//! recorder that holds them with the core's (credentials, seals, verifications,
//! reports, pauses, budgets: `credvault_core::metrics`, re-exported here), served
//! on `--metrics-listen` by `metrics_endpoint`.

use std::net::SocketAddr;
use std::time::Duration;

pub use credvault_core::metrics::*;
use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

const REQUESTS: &str = "credvault_requests_total";
const LATENCY: &str = "credvault_request_duration_seconds";
const AUDIT_FAILURES: &str = "credvault_audit_write_failures_total";
const CONNECTIONS_OPEN: &str = "credvault_connections_open";
const CONNECTIONS: &str = "credvault_connections_total";
const CONNECTIONS_REFUSED: &str = "credvault_connections_refused_total";
const ACCEPT_ERRORS: &str = "credvault_accept_errors_total";
const RESETS_SENT: &str = "credvault_http2_resets_sent_total";
const GOAWAYS_SENT: &str = "credvault_http2_goaways_sent_total";
const REFUSALS: &str = "credvault_refusals_total";
const REFUSALS_SUMMARIZED: &str = "credvault_refusals_summarized_total";
const TIMEOUTS: &str = "credvault_request_timeouts_total";
const STREAMS_REFUSED: &str = "credvault_unauthenticated_streams_refused_total";
const UNREADY: &str = "credvault_unready";
const KEY_ROOT_CONFIRMED: &str = "credvault_key_root_last_confirmed_timestamp_seconds";
const RELOAD_CHECKS: &str = "credvault_reload_checks_total";
const RELOADS: &str = "credvault_reloads_total";
const WATCH_MESSAGES: &str = "credvault_watch_messages_total";
const WATCH_READS: &str = "credvault_watch_reads_total";
const WATCH_ENDED: &str = "credvault_watch_streams_ended_total";
const CONSOLE_REQUESTS: &str = "credvault_console_requests_total";
const CONSOLE_SESSIONS: &str = "credvault_console_sessions";

/// Latency buckets from 100 µs to 10 s.
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];

/// Connections the metrics port holds at once (a scraper needs one).
pub const METRICS_CONNECTIONS: usize = 16;
/// Connections one peer may hold on the metrics port, so idle ones cannot blind a scraper.
pub const METRICS_CONNECTIONS_PER_PEER: usize = 4;
/// Time a metrics connection has to send its request's headers.
pub const METRICS_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Why `/metrics` could not be served.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The global recorder could not be installed.
    /// The recorder could not be installed.
    #[error("cannot serve metrics on {addr}: {why}")]
    Recorder {
        /// The metrics address.
        addr: SocketAddr,
        /// Why.
        why: String,
    },
    /// The metrics address could not be bound.
    #[error("cannot serve metrics on {addr}: {source}")]
    Bind {
        /// The metrics address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Installs the global recorder (`addr` names the endpoint that will serve it,
/// for the error); the endpoint itself is `metrics_endpoint`.
pub fn install_recorder(addr: SocketAddr) -> Result<PrometheusHandle, MetricsError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(LATENCY.into()),
            BUCKETS,
        )
        .and_then(|b| b.install_recorder())
        .map_err(|e| MetricsError::Recorder {
            addr,
            why: e.to_string(),
        })?;
    credvault_core::metrics::describe();
    describe_counter!(REQUESTS, "gRPC requests handled, by method and status code");
    describe_histogram!(LATENCY, Unit::Seconds, "gRPC request latency, by method");
    describe_counter!(
        CONSOLE_REQUESTS,
        "web console requests answered, by HTTP status"
    );
    describe_gauge!(CONSOLE_SESSIONS, "web console sessions open");
    describe_gauge!(CONNECTIONS_OPEN, "open client connections, by listener");
    describe_counter!(CONNECTIONS, "client connections accepted, by listener");
    describe_counter!(
        CONNECTIONS_REFUSED,
        "connections closed before serving: over the cap (limit), no TLS and HTTP/2 preface in time (handshake_timeout), a failed handshake, or not HTTP/2"
    );
    describe_counter!(
        ACCEPT_ERRORS,
        "accept(2) failures such as EMFILE, each followed by a short backoff"
    );
    describe_counter!(
        RESETS_SENT,
        "HTTP/2 RST_STREAM frames sent, by error code (FLOW_CONTROL_ERROR, PROTOCOL_ERROR: resets a client provoked)"
    );
    describe_counter!(
        GOAWAYS_SENT,
        "HTTP/2 GOAWAY frames sent, by error code (ENHANCE_YOUR_CALM: a connection cut for abuse)"
    );
    describe_counter!(
        REFUSALS,
        "calls refused for want of a valid caller, by reason"
    );
    describe_counter!(
        REFUSALS_SUMMARIZED,
        "refused calls logged and audited only in a per-peer (or per-caller) summary, not one by one"
    );
    describe_counter!(
        TIMEOUTS,
        "requests answered DEADLINE_EXCEEDED by --request-timeout, by method"
    );
    describe_gauge!(
        UNREADY,
        "1 while the vault service is NOT_SERVING for this cause: audit, store_unreachable, store_unwritable, key_root"
    );
    describe_gauge!(
        KEY_ROOT_CONFIRMED,
        Unit::Seconds,
        "when the key root (Transit, the HSM) last confirmed the master keys, in unix seconds"
    );
    describe_counter!(
        STREAMS_REFUSED,
        "health Watch and reflection streams refused over the server-wide cap"
    );
    describe_counter!(
        RELOAD_CHECKS,
        "looks at a reloadable file (callers, keyring) for a change, and SIGHUPs"
    );
    describe_counter!(
        RELOADS,
        "reads of a reloadable file (callers, keyring), by outcome: reloaded, unchanged, failed (the previous one is kept)"
    );
    describe_counter!(
        WATCH_MESSAGES,
        "watch stream messages sent, by state (present, not_found, deleted, permission_denied, unavailable)"
    );
    describe_counter!(
        WATCH_READS,
        "store reads of watched credentials, by cause: change (a write heard of) or refresh (a new watcher, a resync)"
    );
    describe_counter!(
        WATCH_ENDED,
        "watch streams ended, by reason: client, unavailable (shutdown), unauthenticated, permission_denied, error"
    );
    Ok(handle)
}

/// A watch stream sent a message reporting `state`.
pub fn watch_message(state: &'static str) {
    counter!(WATCH_MESSAGES, "state" => state).increment(1);
}

/// The watch hub read a watched credential, for `cause`.
pub fn watch_read(cause: &'static str) {
    counter!(WATCH_READS, "cause" => cause).increment(1);
}

/// A watch stream ended, for `reason`.
pub fn watch_ended(reason: &'static str) {
    counter!(WATCH_ENDED, "reason" => reason).increment(1);
}

/// A reloadable file (`callers`, `keyring`) was looked at for a change.
pub fn reload_checked(file: &'static str) {
    counter!(RELOAD_CHECKS, "file" => file).increment(1);
}

/// A reloadable file was read again: `reloaded`, `unchanged` or `failed`.
pub fn reloaded(file: &'static str, outcome: &'static str) {
    counter!(RELOADS, "file" => file, "outcome" => outcome).increment(1);
}

/// Records one answered console request.
pub fn console_request(status: u16) {
    let status = match status {
        200 => "200",
        303 => "303",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        409 => "409",
        413 => "413",
        422 => "422",
        _ if status >= 500 => "5xx",
        _ => "other",
    };
    counter!(CONSOLE_REQUESTS, "status" => status).increment(1);
}

/// Sets the number of open console sessions.
pub fn console_sessions(open: usize) {
    gauge!(CONSOLE_SESSIONS).set(open as f64);
}

/// Records one handled RPC. A no-op when no recorder is installed.
pub fn rpc(method: &'static str, code: tonic::Code, elapsed: Duration) {
    counter!(REQUESTS, "method" => method, "code" => code_name(code)).increment(1);
    histogram!(LATENCY, "method" => method).record(elapsed.as_secs_f64());
}

/// Counts an audit batch that could not be written.
pub fn audit_write_failed() {
    counter!(AUDIT_FAILURES).increment(1);
}

/// Counts a connection accepted on `listener`, now open.
pub fn connection_opened(listener: &'static str) {
    counter!(CONNECTIONS, "listener" => listener).increment(1);
    gauge!(CONNECTIONS_OPEN, "listener" => listener).increment(1.0);
}

/// Counts a connection of `listener` closed.
pub fn connection_closed(listener: &'static str) {
    gauge!(CONNECTIONS_OPEN, "listener" => listener).decrement(1.0);
}

/// Counts a connection closed before it was served, and why.
pub fn connection_refused(listener: &'static str, reason: &'static str) {
    counter!(CONNECTIONS_REFUSED, "listener" => listener, "reason" => reason).increment(1);
}

/// Counts a failed accept(2).
pub fn accept_error(listener: &'static str) {
    counter!(ACCEPT_ERRORS, "listener" => listener).increment(1);
}

/// Counts a RST_STREAM the server sent.
pub fn http2_reset_sent(listener: &'static str, code: &'static str) {
    counter!(RESETS_SENT, "listener" => listener, "code" => code).increment(1);
}

/// Counts a GOAWAY the server sent.
pub fn http2_goaway_sent(listener: &'static str, code: &'static str) {
    counter!(GOAWAYS_SENT, "listener" => listener, "code" => code).increment(1);
}

/// Counts a call refused for want of a valid caller; `summarized` when it was not
/// logged and audited on its own.
pub fn refusal(reason: &'static str, summarized: bool) {
    counter!(REFUSALS, "reason" => reason).increment(1);
    if summarized {
        counter!(REFUSALS_SUMMARIZED).increment(1);
    }
}

/// Counts a known caller's refused call recorded only in its per-caller summary.
pub fn refusal_summarized() {
    counter!(REFUSALS_SUMMARIZED).increment(1);
}

/// Counts a request answered DEADLINE_EXCEEDED by the server's own timeout.
pub fn request_timed_out(method: &'static str) {
    counter!(TIMEOUTS, "method" => method).increment(1);
}

/// Sets whether `cause` holds the vault service NOT_SERVING.
pub fn set_unready(cause: &'static str, holds: bool) {
    gauge!(UNREADY, "cause" => cause).set(if holds { 1.0 } else { 0.0 });
}

/// Records that the key roots confirmed the master keys now.
pub fn key_root_confirmed() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    gauge!(KEY_ROOT_CONFIRMED).set(now);
}

/// Counts an unauthenticated stream refused over the cap.
pub fn unauthenticated_stream_refused() {
    counter!(STREAMS_REFUSED).increment(1);
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
