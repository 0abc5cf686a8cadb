//! The operator console: a web application on its own listener (`--console-listen`),
//! over TLS with the server's certificate when TLS is configured. Operators sign in
//! with a caller's bearer token (or client certificate), then list, add, verify,
//! edit, rotate and delete credentials in plain HTML forms (no script at all).
//!
//! The console is one more client of the vault service: every action is the RPC
//! itself, called in-process with the signed-in caller, so permissions, scopes,
//! validation and the audit trail are the RPC's own (audited with channel
//! `console`). Sessions live in memory ([`session`]); every form carries the
//! session's CSRF token, and a POST from another origin is refused.
//!
//! Here the listener and the connection; `routes` (axum's router: the pages, the
//! session layer, the checks in front), `signin` (signing in and out),
//! `credentials` (the list, add and credential pages), `actions` (a credential's
//! actions), `form` (form bodies), `reply` (the answers), `pages` (the HTML) and
//! `session` (sessions and CSRF).

pub mod pages;
pub mod session;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::{header, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Limited};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tonic::Code;
use tower::Service as _;
use zeroize::Zeroizing;

use crate::api;
use crate::api::credential_vault_service_server::CredentialVaultService;
use crate::audit::{AuditEntry, AuditLog};
use crate::auth::{certificate_subjects, Caller, CallerRegistry, Identity, Permission};
use crate::gate::{Authenticated, Via};
use crate::provider::Catalog;
use crate::record::VerificationStatus;
use crate::refusals::Refusals;
use crate::transport;

use self::pages::{AddForm, CredentialPage, FieldErrors, ListQuery, Viewer};
use self::session::{Session, Sessions, SESSION_COOKIE, SIGN_IN_COOKIE};

mod actions;
mod credentials;
mod form;
mod reply;
mod routes;
mod signin;

use form::*;
use reply::*;

/// The console's style sheet (the only asset; no fonts, scripts or CDNs).
const STYLE: &str = include_str!("console.css");
/// The largest form body accepted.
const MAX_FORM_BYTES: usize = 64 * 1024;
/// Open console connections at most.
pub const MAX_CONNECTIONS: usize = 256;
/// Open console connections one peer (an address, an IPv6 /64) may hold: a browser
/// opens six, so one peer's slow requests cannot hold the console from the others.
pub const MAX_CONNECTIONS_PER_PEER: usize = 32;
/// Time a connection has to send a request's headers (each request of a kept-alive one).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection may live (browsers reconnect).
const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);
/// The audit channel of console calls.
pub const CHANNEL: &str = "console";
/// The Content-Security-Policy of every response: own style sheet, no script at all.
pub const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Where and how the console is served.
#[derive(Clone, Debug)]
pub struct ConsoleSettings {
    /// Where to listen (HTTP, or HTTPS when the server has TLS).
    pub listen: SocketAddr,
    /// How long a session lasts from sign-in.
    pub session_ttl: Duration,
    /// Sessions open at once, server-wide.
    pub max_sessions: usize,
}

/// The providers in use now (they reload).
pub type CatalogSource = Arc<dyn Fn() -> Arc<Catalog> + Send + Sync>;

/// What a console needs from the server.
pub struct Console<T> {
    service: Arc<T>,
    callers: Arc<CallerRegistry>,
    providers: CatalogSource,
    audit: Arc<AuditLog>,
    refusals: Arc<Refusals>,
    sessions: Sessions,
    request_timeout: Duration,
    tls: bool,
}

/// The connection a request came on.
#[derive(Clone)]
struct Conn {
    peer: SocketAddr,
    /// The verified client certificate's subjects, under mutual TLS.
    subjects: Arc<Vec<String>>,
}

/// A signed-in request's caller.
struct Signed {
    id: String,
    session: Session,
    caller: Arc<Caller>,
}

impl Signed {
    fn viewer(&self) -> Viewer<'_> {
        Viewer {
            caller: &self.caller.name,
            csrf: &self.session.csrf,
            may_write: self.caller.may(Permission::CredentialsWrite),
            may_verify: self.caller.may(Permission::CredentialsVerify),
            may_audit: self.caller.may(Permission::AuditRead),
        }
    }
}

/// An answer of the console.
type Reply = axum::response::Response;

impl<T: CredentialVaultService> Console<T> {
    /// A console over `service`, signing in `callers`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        service: Arc<T>,
        callers: Arc<CallerRegistry>,
        providers: CatalogSource,
        audit: Arc<AuditLog>,
        refusals: Arc<Refusals>,
        settings: &ConsoleSettings,
        request_timeout: Duration,
        tls: bool,
    ) -> Self {
        Console {
            service,
            callers,
            providers,
            audit,
            refusals,
            sessions: Sessions::new(settings.session_ttl, settings.max_sessions),
            request_timeout,
            tls,
        }
    }

    /// Serves the console on `listener` until `stop` turns true.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
        handshake_timeout: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let listening = transport::Listening {
            name: "console",
            max_connections: MAX_CONNECTIONS,
            max_per_peer: MAX_CONNECTIONS_PER_PEER,
            handshake_timeout,
        };
        let stopped = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        let router = self.router();
        transport::accept(listener, listening, stopped, move |stream, peer, slot| {
            let router = router.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                match tls {
                    None => {
                        let conn = Conn {
                            peer,
                            subjects: Arc::default(),
                        };
                        Self::connection(router, stream, conn).await;
                    }
                    Some(acceptor) => {
                        let Ok(Ok(stream)) =
                            tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await
                        else {
                            crate::metrics::connection_refused("console", "handshake_failed");
                            return;
                        };
                        let subjects = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .map(|c| certificate_subjects(c))
                            .unwrap_or_default();
                        let conn = Conn {
                            peer,
                            subjects: Arc::new(subjects),
                        };
                        Self::connection(router, stream, conn).await;
                    }
                }
                drop(slot);
            });
        })
        .await;
    }

    async fn connection<IO>(router: axum::Router, io: IO, conn: Conn)
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(conn.clone());
            let mut router = router.clone();
            async move { router.call(request).await }
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .max_buf_size(64 * 1024)
            .serve_connection(hyper_util::rt::TokioIo::new(io), service);
        let _ = tokio::time::timeout(CONNECTION_LIFETIME, connection).await;
    }

    /// A vault RPC's request, as the signed-in caller, through the console.
    fn request<M>(&self, signed: &Signed, conn: &Conn, message: M) -> tonic::Request<M> {
        let mut request = tonic::Request::new(message);
        request.extensions_mut().insert(Authenticated(
            Arc::clone(&signed.caller),
            signed.session.identity.clone(),
        ));
        request.extensions_mut().insert(Via {
            channel: CHANNEL,
            peer: Some(conn.peer),
        });
        request
    }

    /// Runs one RPC under the server's request timeout.
    async fn call<R>(
        &self,
        rpc: impl std::future::Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    ) -> Result<R, tonic::Status> {
        let within = if self.request_timeout.is_zero() {
            Duration::from_secs(3600)
        } else {
            self.request_timeout
        };
        match tokio::time::timeout(within, rpc).await {
            Ok(result) => result.map(tonic::Response::into_inner),
            Err(_) => Err(tonic::Status::deadline_exceeded(
                "the request did not complete in time; retry",
            )),
        }
    }

    fn refused(&self, signed: Option<&Signed>, status: StatusCode, text: &str) -> Reply {
        let viewer = signed.map(Signed::viewer);
        let title = match status {
            StatusCode::FORBIDDEN => "Refused",
            StatusCode::NOT_FOUND => "Not found",
            _ => "Something went wrong",
        };
        html(status, &pages::problem(viewer.as_ref(), title, text))
    }

    /// A failed RPC as a page.
    fn failed(&self, signed: &Signed, status: &tonic::Status) -> Reply {
        self.refused(Some(signed), http_status(status.code()), status.message())
    }
}
