//! The gate in front of every service: a tower layer that authenticates each vault
//! call from its headers, refuses unauthenticated calls without handing their body
//! to a handler (recording floods of them per peer, see [`crate::refusals`]), caps the
//! long-lived streams anyone may open (health Watch, reflection), answers a
//! request that takes longer than `--request-timeout` with DEADLINE_EXCEEDED, and
//! gives transport errors their proper codes.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use http_body::Body as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::body::Body;
use tonic::{Code, Status};

use crate::audit::{AuditEntry, AuditLog};
use crate::auth::{certificate_subjects, Caller, CallerRegistry, Identity};
use crate::error::Error;
use crate::metrics;
use crate::refusals::Refusals;
use crate::transport;

/// The largest vault request message; larger ones answer `INVALID_ARGUMENT`.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// The largest health or reflection request message (their requests are a few names).
pub const MAX_PUBLIC_REQUEST_BYTES: usize = 4 * 1024;
/// Health Watch and reflection streams open at once, server-wide: they need no
/// caller and live as long as the client wants.
pub const MAX_UNAUTHENTICATED_STREAMS: usize = 1024;

/// The longest a refused call's body is waited for before the refusal goes out.
pub const REFUSAL_DRAIN: Duration = Duration::from_secs(1);

const VAULT_PREFIX: &str = "/credvault.v1.CredentialVaultService/";

/// Every RPC of `credvault.v1.CredentialVaultService` (a unit test checks this
/// against the proto), as the static names metrics and the audit trail use.
pub const VAULT_METHODS: &[&str] = &[
    "CreateCredential",
    "GetCredential",
    "ListCredentials",
    "UpdateCredential",
    "DeleteCredential",
    "UndeleteCredential",
    "ListCredentialVersions",
    "RollbackCredential",
    "DestroyCredentialVersion",
    "VerifyCredential",
    "GetCredentialHeaders",
    "WatchCredentialHeaders",
    "ReportProviderResponse",
    "AcquireRequestTokens",
    "ListAuditEvents",
    "RewrapCredentials",
    "BackupVault",
];

/// The caller the gate authenticated, handed to the vault service in the request's
/// extensions, with what it proved (for streams that re-check it on reload).
#[derive(Clone, Debug)]
pub struct Authenticated(pub Arc<Caller>, pub Identity);

/// Where a call that did not come through the gate came in (the web console,
/// which signs its callers in itself): its channel name for the audit trail and
/// the browser's address.
#[derive(Clone, Copy, Debug)]
pub struct Via {
    /// The listener the call came on.
    pub channel: &'static str,
    /// The peer's address, when known.
    pub peer: Option<SocketAddr>,
}

/// What a request path names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    /// A vault RPC: a caller is required.
    Vault(&'static str),
    /// A stream anyone may open and keep: health Watch, reflection.
    PublicStream,
    /// Health Check, or an unknown path (tonic answers UNIMPLEMENTED).
    Public,
}

impl Route {
    fn of(path: &str) -> Route {
        if let Some(method) = path.strip_prefix(VAULT_PREFIX) {
            return VAULT_METHODS
                .iter()
                .find(|m| **m == method)
                .map_or(Route::Public, |m| Route::Vault(m));
        }
        match path {
            "/grpc.health.v1.Health/Watch"
            | "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
            | "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo" => {
                Route::PublicStream
            }
            _ => Route::Public,
        }
    }

    fn method(self) -> &'static str {
        match self {
            Route::Vault(m) => m,
            Route::PublicStream | Route::Public => "public",
        }
    }
}

/// What the gate needs: who may call, where refusals go, and its limits.
pub struct GateState {
    callers: Arc<CallerRegistry>,
    audit: Arc<AuditLog>,
    refusals: Arc<Refusals>,
    request_timeout: Duration,
    public_streams: Arc<Semaphore>,
}

/// The gate as a tower layer (for `Server::builder().layer(...)`).
#[derive(Clone)]
pub struct Gate(Arc<GateState>);

impl Gate {
    /// A gate admitting `callers`, recording refusals in `audit` through `refusals`.
    pub fn new(
        callers: Arc<CallerRegistry>,
        audit: Arc<AuditLog>,
        refusals: Arc<Refusals>,
        request_timeout: Duration,
    ) -> Self {
        Gate(Arc::new(GateState {
            callers,
            audit,
            refusals,
            request_timeout,
            public_streams: Arc::new(Semaphore::new(MAX_UNAUTHENTICATED_STREAMS)),
        }))
    }
}

impl<S> tower::Layer<S> for Gate {
    type Service = GateService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GateService {
            inner,
            state: Arc::clone(&self.0),
        }
    }
}

/// The gate around one service.
#[derive(Clone)]
pub struct GateService<S> {
    inner: S,
    state: Arc<GateState>,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S> tower::Service<http::Request<Body>> for GateService<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let start = Instant::now();
        let route = Route::of(request.uri().path());
        let mut stream_permit = None;
        let mut caller = None;
        match route {
            Route::Vault(method) => match self.state.authenticate(&request) {
                Ok((c, identity)) => {
                    caller = Some(Arc::clone(&c));
                    request.extensions_mut().insert(Authenticated(c, identity));
                }
                Err(reason) => {
                    let peer = transport::peer_addr(&request);
                    let state = Arc::clone(&self.state);
                    return Box::pin(async move {
                        state.drain(request.into_body()).await;
                        Ok(state.refuse(method, peer, reason, start).await)
                    });
                }
            },
            Route::PublicStream => {
                match Arc::clone(&self.state.public_streams).try_acquire_owned() {
                    Ok(permit) => stream_permit = Some(permit),
                    Err(_) => {
                        metrics::unauthenticated_stream_refused();
                        let status = Status::resource_exhausted(format!(
                            "too many health watch and reflection streams are open on this server (at most {MAX_UNAUTHENTICATED_STREAMS}); retry later"
                        ));
                        let state = Arc::clone(&self.state);
                        return Box::pin(async move {
                            state.drain(request.into_body()).await;
                            Ok(status.into_http())
                        });
                    }
                }
            }
            Route::Public => {}
        }
        let peer = caller.as_ref().and(transport::peer_addr(&request));
        // The clone was not polled ready; the one that was takes the call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let state = Arc::clone(&self.state);
        Box::pin(async move {
            let mut response = if state.request_timeout.is_zero() {
                inner.call(request).await?
            } else {
                match tokio::time::timeout(state.request_timeout, inner.call(request)).await {
                    Ok(response) => response?,
                    Err(_) => {
                        return Ok(state.timed_out(route, caller.as_deref(), peer, start).await)
                    }
                }
            };
            proper_codes(&mut response, route);
            Ok(match stream_permit {
                Some(permit) => response.map(|body| {
                    Body::new(Guarded {
                        body,
                        _permit: permit,
                    })
                }),
                None => response,
            })
        })
    }
}

impl GateState {
    /// Reads a refused request's body to its end (discarding it) before the answer,
    /// for at most [`REFUSAL_DRAIN`] and [`MAX_REQUEST_BYTES`]. Answering before the
    /// body is in would make a well-behaved client's DATA frames arrive on a closed
    /// stream, and hyper counts each as a reset the client provoked: enough of them
    /// and it cuts the connection with GOAWAY ENHANCE_YOUR_CALM.
    async fn drain(&self, mut body: Body) {
        let within = match self.request_timeout {
            t if t.is_zero() => REFUSAL_DRAIN,
            t => REFUSAL_DRAIN.min(t),
        };
        let _ = tokio::time::timeout(within, async {
            let mut seen = 0;
            while let Some(Ok(frame)) =
                std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
            {
                seen += frame.data_ref().map_or(0, |d| d.len());
                if seen > MAX_REQUEST_BYTES + 5 {
                    return;
                }
            }
        })
        .await;
    }

    /// The caller a request's token or client certificate names.
    fn authenticate(
        &self,
        request: &http::Request<Body>,
    ) -> Result<(Arc<Caller>, Identity), &'static str> {
        let subjects: Vec<String> = transport::peer_certs(request)
            .and_then(|certs| certs.first().map(|c| certificate_subjects(c)))
            .unwrap_or_default();
        let authorization = request.headers().get(http::header::AUTHORIZATION);
        match self.callers.current().identify(authorization, &subjects) {
            Ok(found) => Ok(found),
            Err(Error::Unauthenticated(reason)) => Err(reason),
            Err(_) => Err("invalid credentials"),
        }
    }

    /// Answers UNAUTHENTICATED; logged and audited in full, or counted for the
    /// peer's summary when it has been refused often in this interval.
    async fn refuse(
        &self,
        method: &'static str,
        peer: Option<SocketAddr>,
        reason: &'static str,
        start: Instant,
    ) -> http::Response<Body> {
        let in_full = self.refusals.admit(peer, method, reason);
        let elapsed = start.elapsed();
        metrics::rpc(method, Code::Unauthenticated, elapsed);
        metrics::refusal(reason, !in_full);
        if in_full {
            self.audit
                .record(&AuditEntry {
                    method,
                    code: "UNAUTHENTICATED",
                    reason,
                    ..AuditEntry::new(SystemTime::now(), "anonymous", peer)
                })
                .await;
            let latency_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
            tracing::warn!(
                method,
                caller = "anonymous",
                peer = %peer.map_or_else(|| "unknown".to_owned(), |p| p.to_string()),
                code = ?Code::Unauthenticated,
                latency_us,
                error = reason,
                "rpc refused"
            );
        }
        Status::unauthenticated(reason).into_http()
    }

    /// Answers DEADLINE_EXCEEDED for a request that outlived `--request-timeout`.
    async fn timed_out(
        &self,
        route: Route,
        caller: Option<&Caller>,
        peer: Option<SocketAddr>,
        start: Instant,
    ) -> http::Response<Body> {
        let method = route.method();
        metrics::request_timed_out(method);
        if let Some(caller) = caller {
            // A vault call: its caller is known, so it is logged and audited like any other.
            let elapsed = start.elapsed();
            metrics::rpc(method, Code::DeadlineExceeded, elapsed);
            self.audit
                .record(&AuditEntry {
                    method,
                    code: "DEADLINE_EXCEEDED",
                    ..AuditEntry::new(SystemTime::now(), &caller.name, peer)
                })
                .await;
            tracing::warn!(
                method,
                caller = %caller.name,
                code = ?Code::DeadlineExceeded,
                latency_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
                "rpc timed out"
            );
        }
        Status::deadline_exceeded(format!(
            "the request did not complete within {}s (--request-timeout); was its message sent whole?",
            self.request_timeout.as_secs_f64()
        ))
        .into_http()
    }
}

/// Codes for what tonic answers before a handler runs: a request over the size
/// limit is OUT_OF_RANGE and an undecodable one INTERNAL there, but both are the
/// client's fault, so they answer INVALID_ARGUMENT.
fn proper_codes(response: &mut http::Response<Body>, route: Route) {
    let headers = response.headers_mut();
    let Some(status) = headers.get("grpc-status") else {
        return;
    };
    if status == "11" {
        headers.insert("grpc-status", http::HeaderValue::from_static("3"));
        let message = match route {
            Route::Vault(_) => "request%20message%20too%20large%3A%20the%20limit%20is%2064%20KiB",
            _ => "request%20message%20too%20large%3A%20the%20limit%20is%204%20KiB",
        };
        headers.insert("grpc-message", http::HeaderValue::from_static(message));
    } else if status == "13"
        && headers
            .get("grpc-message")
            .is_some_and(|m| m.as_bytes().starts_with(b"failed%20to%20decode%20Protobuf"))
    {
        headers.insert("grpc-status", http::HeaderValue::from_static("3"));
    }
}

/// A response body that holds a place under a cap until the stream ends.
struct Guarded {
    body: Body,
    _permit: OwnedSemaphorePermit,
}

impl http_body::Body for Guarded {
    type Data = <Body as http_body::Body>::Data;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_method_list_is_the_proto_service() {
        use prost::Message;
        let fds = prost_types::FileDescriptorSet::decode(crate::api::FILE_DESCRIPTOR_SET).unwrap();
        let service = fds
            .file
            .iter()
            .flat_map(|f| &f.service)
            .find(|s| s.name() == "CredentialVaultService")
            .unwrap();
        let mut proto: Vec<&str> = service.method.iter().map(|m| m.name()).collect();
        let mut listed = VAULT_METHODS.to_vec();
        proto.sort_unstable();
        listed.sort_unstable();
        assert_eq!(proto, listed);
    }

    #[test]
    fn routes() {
        assert_eq!(
            Route::of("/credvault.v1.CredentialVaultService/GetCredentialHeaders"),
            Route::Vault("GetCredentialHeaders")
        );
        assert_eq!(
            Route::of("/credvault.v1.CredentialVaultService/Nope"),
            Route::Public
        );
        assert_eq!(Route::of("/grpc.health.v1.Health/Check"), Route::Public);
        assert_eq!(
            Route::of("/grpc.health.v1.Health/Watch"),
            Route::PublicStream
        );
        assert_eq!(
            Route::of("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"),
            Route::PublicStream
        );
    }
}
