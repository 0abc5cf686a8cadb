//! The per-request log line (once the response body ends) and refusals' lines.

use super::*;

pub(super) fn log_refused(req: &Request<Incoming>, origin: &Origin, r: &Refusal) {
    tracing::info!(
        method = %req.method(),
        path = %shown_path(req.uri().path()),
        peer = %origin.peer,
        status = r.status,
        reason = %r.message,
        "refused"
    );
}

/// A path as a log line shows it: at most 256 bytes, control characters escaped.
pub(super) fn shown_path(path: &str) -> String {
    let mut out: String = path
        .chars()
        .take(256)
        .flat_map(char::escape_default)
        .collect();
    if path.len() > 256 {
        out.push('…');
    }
    out
}

/// The log line of a request answered before its body streamed.
pub(super) fn log_line(
    req: &Request<Incoming>,
    credential: &str,
    host: &str,
    status: u16,
    began: Instant,
    origin: &Origin,
) {
    log_parts(
        req.method(),
        credential,
        host,
        req.uri().path(),
        status,
        0,
        began,
        &origin.peer,
    );
}

#[allow(clippy::too_many_arguments)]
pub(super) fn log_parts(
    method: &Method,
    credential: &str,
    host: &str,
    path: &str,
    status: u16,
    bytes: u64,
    began: Instant,
    peer: &SocketAddr,
) {
    tracing::info!(
        method = %method,
        credential = %credential,
        host = %host,
        path = %shown_path(path),
        status,
        bytes,
        latency_ms = began.elapsed().as_secs_f64() * 1000.0,
        peer = %peer,
        "request"
    );
}

/// Writes a request's log line when its answer's body ends (or is dropped):
/// method, credential, host, path without query, status, bytes, latency. Never a header value.
pub(super) struct LogOnEnd {
    pub(super) method: Method,
    pub(super) credential: String,
    pub(super) host: String,
    pub(super) path: String,
    pub(super) status: u16,
    pub(super) bytes: u64,
    pub(super) began: Instant,
    pub(super) peer: SocketAddr,
}

impl Drop for LogOnEnd {
    fn drop(&mut self) {
        metrics::response_bytes(self.bytes);
        log_parts(
            &self.method,
            &self.credential,
            &self.host,
            &self.path,
            self.status,
            self.bytes,
            self.began,
            &self.peer,
        );
    }
}
