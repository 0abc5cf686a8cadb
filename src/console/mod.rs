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
//! Here the listener, the connection and the routes; `signin` (signing in and out),
//! `credentials` (the list, add and credential pages), `actions` (a credential's
//! actions), `form` (form bodies), `reply` (the answers), `pages` (the HTML) and
//! `session` (sessions and CSRF).

pub mod pages;
pub mod session;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use tokio::net::TcpListener;
use tonic::Code;
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

type Reply = Response<Full<Bytes>>;

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
        transport::accept(listener, listening, stopped, move |stream, peer, slot| {
            let console = Arc::clone(&self);
            let tls = tls.clone();
            tokio::spawn(async move {
                match tls {
                    None => {
                        let conn = Conn {
                            peer,
                            subjects: Arc::default(),
                        };
                        console.connection(stream, conn).await;
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
                        console.connection(stream, conn).await;
                    }
                }
                drop(slot);
            });
        })
        .await;
    }

    async fn connection<IO>(self: Arc<Self>, io: IO, conn: Conn)
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let service = hyper::service::service_fn(move |request| {
            let console = Arc::clone(&self);
            let conn = conn.clone();
            async move { Ok::<_, Infallible>(console.handle(request, &conn).await) }
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .max_buf_size(64 * 1024)
            .serve_connection(hyper_util::rt::TokioIo::new(io), service);
        let _ = tokio::time::timeout(CONNECTION_LIFETIME, connection).await;
    }

    /// Answers one request, with the security headers every answer carries.
    async fn handle(&self, request: Request<Incoming>, conn: &Conn) -> Reply {
        let start = Instant::now();
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let (mut reply, caller) = self.route(request, conn).await;
        let headers = reply.headers_mut();
        let fixed = [
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::X_FRAME_OPTIONS, "DENY"),
            // Not no-referrer: with it a browser sends `Origin: null` on its own forms.
            (header::REFERRER_POLICY, "same-origin"),
            (header::CACHE_CONTROL, "no-store"),
        ];
        for (name, value) in fixed {
            headers.insert(name, HeaderValue::from_static(value));
        }
        if self.tls {
            headers.insert(
                header::STRICT_TRANSPORT_SECURITY,
                HeaderValue::from_static("max-age=31536000"),
            );
        }
        crate::metrics::console_request(reply.status().as_u16());
        crate::metrics::console_sessions(self.sessions.len());
        // A request's path is the sender's text: escaped and capped. Requests of no
        // signed-in caller (sign-in pages, unknown cookies, probes) are counted in
        // the metrics and logged at debug only, so a flood of them writes no log.
        let path = crate::escape::shown(&path);
        let latency_us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
        match caller.as_deref() {
            Some(caller) => tracing::info!(
                method = %method,
                path = %path,
                status = reply.status().as_u16(),
                caller,
                peer = %conn.peer,
                latency_us,
                "console request"
            ),
            None => tracing::debug!(
                method = %method,
                path = %path,
                status = reply.status().as_u16(),
                caller = "anonymous",
                peer = %conn.peer,
                latency_us,
                "console request"
            ),
        }
        reply
    }

    async fn route(&self, request: Request<Incoming>, conn: &Conn) -> (Reply, Option<String>) {
        let (parts, body) = request.into_parts();
        let segments: Vec<&str> = parts
            .uri
            .path()
            .trim_matches('/')
            .split('/')
            .filter(|s| !s.is_empty())
            .collect();
        let query = parse(parts.uri.query().unwrap_or("").as_bytes());
        let post = parts.method == Method::POST;
        if !post && parts.method != Method::GET && parts.method != Method::HEAD {
            return (
                plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
                None,
            );
        }
        // Before any body is read: a POST must come from this console's own pages.
        if post {
            if let Err(why) = self.same_origin(&parts.headers) {
                return (self.refused(None, StatusCode::FORBIDDEN, why), None);
            }
        }
        match (post, segments.as_slice()) {
            (false, ["static", "console.css"]) => {
                let mut r = Response::new(Full::new(Bytes::from_static(STYLE.as_bytes())));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/css; charset=utf-8"),
                );
                return (r, None);
            }
            (false, ["favicon.ico"]) => return (plain(StatusCode::NOT_FOUND, "no icon"), None),
            (false, ["sign-in"]) => {
                let held = session::cookie(&parts.headers, SIGN_IN_COOKIE);
                return (self.sign_in_page(&query, conn, held, None), None);
            }
            (true, ["sign-in"]) => {
                let form = match read_form(body).await {
                    Ok(form) => form,
                    Err(reply) => return (reply, None),
                };
                return self.sign_in(&parts.headers, &form, conn).await;
            }
            _ => {}
        }
        // Everything else needs a session.
        let Some(signed) = self.signed(&parts.headers) else {
            let expired = session::cookie(&parts.headers, SESSION_COOKIE).is_some();
            let to = if expired {
                "/sign-in?expired=1"
            } else {
                "/sign-in"
            };
            let mut r = redirect(to);
            if expired {
                r.headers_mut().append(
                    header::SET_COOKIE,
                    cookie_header(&session::set_cookie(
                        SESSION_COOKIE,
                        "",
                        Duration::ZERO,
                        self.tls,
                    )),
                );
            }
            return (r, None);
        };
        let name = Some(signed.caller.name.clone());
        let form = if post {
            match read_form(body).await {
                Ok(form) => {
                    let token = form.get("csrf").map_or("", |v| v.as_str());
                    if !session::same_token(token, &signed.session.csrf) {
                        return (
                            self.refused(
                                Some(&signed),
                                StatusCode::FORBIDDEN,
                                "the form's CSRF token is missing or stale; reload the page and try again",
                            ),
                            name,
                        );
                    }
                    form
                }
                Err(reply) => return (reply, name),
            }
        } else {
            Form::default()
        };
        let reply = match (post, segments.as_slice()) {
            (false, []) => redirect("/credentials"),
            (true, ["sign-out"]) => self.sign_out(&signed, conn).await,
            (false, ["credentials"]) => self.list(&signed, conn, &query).await,
            (false, ["credentials", "new"]) if !signed.caller.may(Permission::CredentialsWrite) => {
                self.refused(
                    Some(&signed),
                    StatusCode::FORBIDDEN,
                    "your caller may not create credentials (it lacks credentials.write)",
                )
            }
            (false, ["credentials", "new"]) => {
                let provider = query.get("provider").map_or("fleetio", |p| p.as_str());
                self.add_page(
                    &signed,
                    provider,
                    &Form::default(),
                    FieldErrors::new(),
                    StatusCode::OK,
                )
            }
            (true, ["credentials", "new"]) => self.create(&signed, conn, form).await,
            (false, ["credentials", id]) => {
                let done = query.get("done").and_then(|d| done_text(d));
                self.show(&signed, conn, id, done, HashMap::new(), StatusCode::OK)
                    .await
            }
            (true, ["credentials", id, action]) => self.act(&signed, conn, id, action, form).await,
            _ => self.refused(Some(&signed), StatusCode::NOT_FOUND, "no such page"),
        };
        (reply, name)
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
