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

    /// Refuses a POST from another origin: by `Sec-Fetch-Site` when the browser
    /// sends it, else by `Origin` against `Host`.
    fn same_origin(&self, headers: &http::HeaderMap) -> Result<(), &'static str> {
        let refused = "refused: the form was not sent from this console's own pages";
        if let Some(site) = headers.get("sec-fetch-site") {
            if site != "same-origin" && site != "none" {
                return Err(refused);
            }
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
            let scheme = if self.tls { "https" } else { "http" };
            let expected = host.map(|h| format!("{scheme}://{h}"));
            if origin.to_str().ok() != expected.as_deref() {
                return Err(refused);
            }
        }
        Ok(())
    }

    /// The session a request's cookie names, with its caller as the callers file says now.
    fn signed(&self, headers: &http::HeaderMap) -> Option<Signed> {
        let id = session::cookie(headers, SESSION_COOKIE)?;
        let session = self.sessions.get(id)?;
        match self.callers.current().reidentify(&session.identity) {
            Some(caller) => Some(Signed {
                id: id.to_owned(),
                session,
                caller,
            }),
            None => {
                // The caller was removed or its token changed: the session ends.
                self.sessions.close(id);
                None
            }
        }
    }

    /// The sign-in form, tied to this browser by a cookie (kept when it has one:
    /// two tabs, or a page's favicon request, must not undo each other's form).
    fn sign_in_page(
        &self,
        query: &HashMap<String, String>,
        conn: &Conn,
        held: Option<&str>,
        error: Option<&str>,
    ) -> Reply {
        let token = held
            .filter(|t| {
                t.len() == 43
                    && t.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
            .map_or_else(session::random_token, str::to_owned);
        let note = if query.contains_key("expired") {
            Some("Your session expired; sign in again.")
        } else if query.contains_key("signed-out") {
            Some("You are signed out.")
        } else {
            None
        };
        let certificate = self.certificate_caller(conn).map(|(c, _)| c.name.clone());
        let status = if error.is_some() {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::OK
        };
        let mut r = html(
            status,
            &pages::sign_in(&token, error, note, certificate.as_deref()),
        );
        r.headers_mut().append(
            header::SET_COOKIE,
            cookie_header(&session::set_cookie(
                SIGN_IN_COOKIE,
                &token,
                Duration::from_secs(3600),
                self.tls,
            )),
        );
        r
    }

    fn certificate_caller(&self, conn: &Conn) -> Option<(Arc<Caller>, Identity)> {
        if conn.subjects.is_empty() {
            return None;
        }
        self.callers.current().identify(None, &conn.subjects).ok()
    }

    async fn sign_in(
        &self,
        headers: &http::HeaderMap,
        form: &Form,
        conn: &Conn,
    ) -> (Reply, Option<String>) {
        let empty = HashMap::new();
        let expected = session::cookie(headers, SIGN_IN_COOKIE).unwrap_or("");
        if !session::same_token(form.get("sign_in").map_or("", |v| v.as_str()), expected) {
            return (
                self.sign_in_page(
                    &empty,
                    conn,
                    None,
                    Some("the sign-in form expired; try again"),
                ),
                None,
            );
        }
        let found = if form.contains_key("use_certificate") {
            self.certificate_caller(conn)
                .ok_or("no known client certificate was presented")
        } else {
            let token = form.get("token").map_or("", |t| t.trim());
            if token.is_empty() {
                Err("a bearer token is required")
            } else {
                let value = Zeroizing::new(format!("Bearer {token}"));
                match HeaderValue::from_str(&value) {
                    Ok(v) => self
                        .callers
                        .current()
                        .identify(Some(&v), &[])
                        .map_err(|_| "invalid bearer token"),
                    Err(_) => Err("invalid bearer token"),
                }
            }
        };
        let (caller, identity) = match found {
            Ok(found) => found,
            Err(reason) => {
                let peer = Some(conn.peer);
                let in_full = self.refusals.admit(peer, "ConsoleSignIn", reason);
                crate::metrics::refusal(reason, !in_full);
                if in_full {
                    self.audit
                        .record(&AuditEntry {
                            method: "ConsoleSignIn",
                            code: "UNAUTHENTICATED",
                            reason,
                            channel: CHANNEL,
                            ..AuditEntry::new(SystemTime::now(), "anonymous", peer)
                        })
                        .await;
                    tracing::warn!(peer = %conn.peer, error = reason, "console sign-in refused");
                }
                return (
                    self.sign_in_page(&empty, conn, Some(expected), Some(reason)),
                    None,
                );
            }
        };
        let (id, _) = match self.sessions.open(identity, &caller.name) {
            Ok(opened) => opened,
            Err(e) => {
                return (
                    html(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &pages::problem(None, "Cannot sign in", &e.to_string()),
                    ),
                    None,
                )
            }
        };
        self.audit
            .record(&AuditEntry {
                method: "ConsoleSignIn",
                code: "OK",
                channel: CHANNEL,
                ..AuditEntry::new(SystemTime::now(), &caller.name, Some(conn.peer))
            })
            .await;
        let mut r = redirect("/credentials");
        let cookies = [
            session::set_cookie(SESSION_COOKIE, &id, self.sessions.ttl(), self.tls),
            session::set_cookie(SIGN_IN_COOKIE, "", Duration::ZERO, self.tls),
        ];
        for c in cookies {
            r.headers_mut()
                .append(header::SET_COOKIE, cookie_header(&c));
        }
        (r, Some(caller.name.clone()))
    }

    async fn sign_out(&self, signed: &Signed, conn: &Conn) -> Reply {
        self.sessions.close(&signed.id);
        self.audit
            .record(&AuditEntry {
                method: "ConsoleSignOut",
                code: "OK",
                channel: CHANNEL,
                ..AuditEntry::new(SystemTime::now(), &signed.caller.name, Some(conn.peer))
            })
            .await;
        let mut r = redirect("/sign-in?signed-out=1");
        r.headers_mut().append(
            header::SET_COOKIE,
            cookie_header(&session::set_cookie(
                SESSION_COOKIE,
                "",
                Duration::ZERO,
                self.tls,
            )),
        );
        r
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

    async fn list(&self, signed: &Signed, conn: &Conn, query: &HashMap<String, String>) -> Reply {
        let status = query.get("status").cloned().unwrap_or_default();
        let statuses: Vec<i32> = match status.as_str() {
            "valid" => vec![VerificationStatus::Valid],
            "rejected" => vec![
                VerificationStatus::ApiKeyRejected,
                VerificationStatus::AccountTokenRejected,
                VerificationStatus::SecretRejected,
                VerificationStatus::Forbidden,
            ],
            "problem" => vec![
                VerificationStatus::RateLimited,
                VerificationStatus::ProviderError,
                VerificationStatus::Unreachable,
            ],
            "unverified" => vec![VerificationStatus::Unspecified],
            _ => vec![],
        }
        .into_iter()
        .map(|s| s as i32)
        .collect();
        let expiring = query.get("expiring").is_some_and(|v| v == "1");
        let page = query.get("page").cloned().unwrap_or_default();
        let request = api::ListCredentialsRequest {
            page_size: 25,
            page_token: page.clone(),
            verification_statuses: statuses,
            expire_before: expiring.then(|| {
                crate::record::timestamp(SystemTime::now() + Duration::from_secs(30 * 86_400))
            }),
            deleted: false,
        };
        let request = self.request(signed, conn, request);
        match self.call(self.service.list_credentials(request)).await {
            Ok(listed) => {
                let done = query.get("done").and_then(|d| done_text(d));
                let next = Some(listed.next_page_token.as_str()).filter(|t| !t.is_empty());
                html(
                    StatusCode::OK,
                    &pages::credentials(
                        &signed.viewer(),
                        &ListQuery { status, expiring },
                        &listed.credentials,
                        next,
                        page.is_empty(),
                        done,
                    ),
                )
            }
            Err(status) => self.failed(signed, &status),
        }
    }

    fn add_page(
        &self,
        signed: &Signed,
        provider: &str,
        form: &Form,
        errors: FieldErrors,
        status: StatusCode,
    ) -> Reply {
        let providers = (self.providers)().forms();
        if !providers.iter().any(|(n, _)| n == provider) {
            return self.refused(Some(signed), StatusCode::NOT_FOUND, "no such provider");
        }
        let get = |k: &str| form.get(k).map_or("", |v| v.as_str());
        let plain = plain_values(&providers, provider, form);
        let page = AddForm {
            providers: &providers,
            provider,
            name: get("name"),
            description: get("description"),
            expire_date: get("expire_date"),
            plain,
            // On by default; a re-shown form keeps the operator's choice.
            verify: form.is_empty() || form.contains_key("verify"),
            errors,
        };
        html(status, &pages::add(&signed.viewer(), &page))
    }

    async fn create(&self, signed: &Signed, conn: &Conn, mut form: Form) -> Reply {
        let provider = form.get("provider").cloned().unwrap_or_default();
        let catalog = (self.providers)();
        let forms = catalog.forms();
        let Some((_, fields)) = forms.iter().find(|(n, _)| *n == provider) else {
            return self.refused(Some(signed), StatusCode::NOT_FOUND, "no such provider");
        };
        let expire_time = match expiry(form.get("expire_date").map_or("", |v| v.as_str())) {
            Ok(t) => t,
            Err(e) => {
                let errors = HashMap::from([("expire_date".to_owned(), e.to_owned())]);
                form.wipe(fields);
                return self.add_page(signed, &provider, &form, errors, StatusCode::BAD_REQUEST);
            }
        };
        let plain = plain_values(&forms, &provider, &form);
        let secret_fields = form.take_fields(fields);
        // The plain values (an API version) are shown again if the form comes back.
        form.0.extend(plain);
        let request = api::CreateCredentialRequest {
            name: form.get("name").cloned().unwrap_or_default(),
            description: form.get("description").cloned().unwrap_or_default(),
            secret: Some(crate::convert::create_secret_from_fields(
                &provider,
                secret_fields,
            )),
            expire_time,
            verify: form.contains_key("verify"),
            verify_best_effort: false,
            request_budget_per_minute: 0,
        };
        let request = self.request(signed, conn, request);
        match self.call(self.service.create_credential(request)).await {
            Ok(created) => {
                let id = created.credential.map(|c| c.id).unwrap_or_default();
                redirect(&format!("/credentials/{id}?done=created"))
            }
            Err(status) => {
                let names: Vec<&str> = fields.iter().map(|f| f.name.as_ref()).collect();
                let errors = field_errors(&status, &names, &["name", "description", "expire_date"]);
                self.add_page(signed, &provider, &form, errors, http_status(status.code()))
            }
        }
    }

    /// One credential, through GetCredential as the signed-in caller.
    async fn credential(
        &self,
        signed: &Signed,
        conn: &Conn,
        id: &str,
    ) -> Result<api::Credential, tonic::Status> {
        let request = api::GetCredentialRequest {
            r#ref: Some(api::get_credential_request::Ref::Id(id.to_owned())),
        };
        self.call(
            self.service
                .get_credential(self.request(signed, conn, request)),
        )
        .await
        .map(|r| r.credential.unwrap_or_default())
    }

    /// The credential page again, with `message` by field `field` of form `form`.
    async fn form_error(
        &self,
        signed: &Signed,
        conn: &Conn,
        id: &str,
        form: &'static str,
        field: &str,
        message: String,
    ) -> Reply {
        let errors = HashMap::from([(field.to_owned(), message)]);
        self.show(
            signed,
            conn,
            id,
            None,
            HashMap::from([(form, errors)]),
            StatusCode::BAD_REQUEST,
        )
        .await
    }

    async fn show(
        &self,
        signed: &Signed,
        conn: &Conn,
        id: &str,
        done: Option<&str>,
        errors: HashMap<&'static str, FieldErrors>,
        status: StatusCode,
    ) -> Reply {
        self.show_with(signed, conn, id, done, errors, HashMap::new(), status)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn show_with(
        &self,
        signed: &Signed,
        conn: &Conn,
        id: &str,
        done: Option<&str>,
        errors: HashMap<&'static str, FieldErrors>,
        plain: HashMap<String, String>,
        status: StatusCode,
    ) -> Reply {
        let credential = match self.credential(signed, conn, id).await {
            Ok(c) => c,
            Err(status) => return self.failed(signed, &status),
        };
        // A rotation changes only what the operator changes: the fields that are
        // not secret (Fleetio's API version) start as they are now.
        let plain = if plain.is_empty() {
            credential
                .plain_fields
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        } else {
            plain
        };
        let events = if signed.caller.may(Permission::AuditRead) {
            Some(self.recent_events(signed, conn, id).await)
        } else {
            None
        };
        let versions = {
            let request = api::ListCredentialVersionsRequest {
                r#ref: Some(api::list_credential_versions_request::Ref::Id(
                    id.to_owned(),
                )),
            };
            self.call(
                self.service
                    .list_credential_versions(self.request(signed, conn, request)),
            )
            .await
            .map(|r| r.versions)
            .unwrap_or_default()
        };
        let fields = (self.providers)()
            .forms()
            .into_iter()
            .find(|(n, _)| *n == credential.provider)
            .map(|(_, f)| f)
            .unwrap_or_default();
        let page = CredentialPage {
            credential: &credential,
            fields: &fields,
            events: events.as_deref(),
            versions: &versions,
            done,
            errors,
            plain,
        };
        html(status, &pages::credential(&signed.viewer(), &page))
    }

    /// The latest 50 audit events of a credential in the last 30 days that
    /// matter, newest first: changes, verifications and secret reads; views of
    /// its metadata (the console's own page views among them) stay in the audit
    /// log, so that a few page views never push a rotation off the page.
    async fn recent_events(&self, signed: &Signed, conn: &Conn, id: &str) -> Vec<api::AuditEvent> {
        let mut events: Vec<api::AuditEvent> = Vec::new();
        let mut token = String::new();
        for _ in 0..5 {
            let request = api::ListAuditEventsRequest {
                credential_id: id.to_owned(),
                start_time: Some(crate::record::timestamp(
                    SystemTime::now() - Duration::from_secs(30 * 86_400),
                )),
                page_size: 1000,
                page_token: std::mem::take(&mut token),
                ..Default::default()
            };
            let request = self.request(signed, conn, request);
            let Ok(page) = self.call(self.service.list_audit_events(request)).await else {
                break;
            };
            events.extend(page.events.into_iter().filter(|e| !is_view(&e.method)));
            if events.len() > 50 {
                events.drain(..events.len() - 50);
            }
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        events.reverse();
        events
    }

    async fn act(
        &self,
        signed: &Signed,
        conn: &Conn,
        id: &str,
        action: &str,
        mut form: Form,
    ) -> Reply {
        let version = form.get("version").and_then(|v| v.parse::<u64>().ok());
        let (which, outcome): (&'static str, Result<&'static str, tonic::Status>) = match action {
            "verify" => {
                let request = api::VerifyCredentialRequest {
                    r#ref: Some(api::verify_credential_request::Ref::Id(id.to_owned())),
                };
                let r = self
                    .call(
                        self.service
                            .verify_credential(self.request(signed, conn, request)),
                    )
                    .await;
                ("verify", r.map(|_| "verified"))
            }
            "edit" => {
                let expire_time = match expiry(form.get("expire_date").map_or("", |v| v.as_str())) {
                    Ok(t) => t,
                    Err(e) => {
                        return self
                            .form_error(signed, conn, id, "edit", "expire_date", e.to_owned())
                            .await
                    }
                };
                // Only what the operator changed: an unchanged form makes no new version.
                let description = form
                    .get("description")
                    .filter(|d| form.get("was_description") != Some(*d))
                    .cloned();
                let was_expiry = form.get("was_expire_date").map_or("", |v| v.as_str());
                let expiry_changed = form.get("expire_date").map_or("", |v| v.trim()) != was_expiry;
                if description.is_none() && !expiry_changed {
                    return redirect(&format!("/credentials/{id}?done=unchanged"));
                }
                let request = api::UpdateCredentialRequest {
                    r#ref: Some(api::update_credential_request::Ref::Id(id.to_owned())),
                    expected_version: version,
                    description,
                    clear_expire_time: expiry_changed && expire_time.is_none(),
                    expire_time: expire_time.filter(|_| expiry_changed),
                    ..Default::default()
                };
                let r = self
                    .call(
                        self.service
                            .update_credential(self.request(signed, conn, request)),
                    )
                    .await;
                ("edit", r.map(|_| "updated"))
            }
            "rotate" => {
                let catalog = (self.providers)();
                let current = match self.credential(signed, conn, id).await {
                    Ok(c) => c.provider,
                    Err(status) => return self.failed(signed, &status),
                };
                let forms = catalog.forms();
                let fields = forms
                    .iter()
                    .find(|(n, _)| *n == current)
                    .map(|(_, f)| f.clone())
                    .unwrap_or_default();
                let plain = plain_values(&forms, &current, &form);
                let secret =
                    crate::convert::update_secret_from_fields(&current, form.take_fields(&fields));
                let request = api::UpdateCredentialRequest {
                    r#ref: Some(api::update_credential_request::Ref::Id(id.to_owned())),
                    expected_version: version,
                    secret: Some(secret),
                    verify: form.contains_key("verify"),
                    ..Default::default()
                };
                let r = self
                    .call(
                        self.service
                            .update_credential(self.request(signed, conn, request)),
                    )
                    .await;
                if let Err(status) = &r {
                    let names: Vec<&str> = fields.iter().map(|f| f.name.as_ref()).collect();
                    let errors = field_errors(status, &names, &[]);
                    return self
                        .show_with(
                            signed,
                            conn,
                            id,
                            None,
                            HashMap::from([("rotate", errors)]),
                            plain,
                            http_status(status.code()),
                        )
                        .await;
                }
                ("rotate", r.map(|_| "rotated"))
            }
            "rollback" => {
                let Some(to) = form.get("to").and_then(|v| v.parse::<u64>().ok()) else {
                    return self.refused(
                        Some(signed),
                        StatusCode::BAD_REQUEST,
                        "no version to roll back to",
                    );
                };
                let request = api::RollbackCredentialRequest {
                    r#ref: Some(api::rollback_credential_request::Ref::Id(id.to_owned())),
                    version: to,
                    expected_version: version,
                    verify: false,
                    verify_best_effort: false,
                };
                let r = self
                    .call(
                        self.service
                            .rollback_credential(self.request(signed, conn, request)),
                    )
                    .await;
                ("rollback", r.map(|_| "rolled-back"))
            }
            "delete" => {
                let name = match self.credential(signed, conn, id).await {
                    Ok(c) => c.name,
                    Err(status) => return self.failed(signed, &status),
                };
                if form.get("confirm_name").map(|n| n.trim()) != Some(name.as_str()) {
                    let message = format!("type the credential's name, {name}, to delete it");
                    return self
                        .form_error(signed, conn, id, "delete", "confirm_name", message)
                        .await;
                }
                let request = api::DeleteCredentialRequest {
                    r#ref: Some(api::delete_credential_request::Ref::Id(id.to_owned())),
                    expected_version: version,
                    force: false,
                };
                match self
                    .call(
                        self.service
                            .delete_credential(self.request(signed, conn, request)),
                    )
                    .await
                {
                    Ok(_) => return redirect("/credentials?done=deleted"),
                    Err(status) => ("delete", Err(status)),
                }
            }
            _ => return self.refused(Some(signed), StatusCode::NOT_FOUND, "no such page"),
        };
        match outcome {
            Ok(done) => redirect(&format!("/credentials/{id}?done={done}")),
            Err(status) if status.code() == Code::NotFound => self.failed(signed, &status),
            Err(status) => {
                let names = ["description", "expire_date"];
                let errors = field_errors(&status, &[], if which == "edit" { &names } else { &[] });
                self.show(
                    signed,
                    conn,
                    id,
                    None,
                    HashMap::from([(which, errors)]),
                    http_status(status.code()),
                )
                .await
            }
        }
    }
}

/// A form's fields by name; secret values are wiped when it is dropped.
#[derive(Default)]
struct Form(HashMap<String, String>);

impl std::ops::Deref for Form {
    type Target = HashMap<String, String>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Form {
    /// Takes out the values of a provider's fields (for its secret message).
    fn take_fields(&mut self, fields: &[crate::provider::Field]) -> HashMap<String, String> {
        fields
            .iter()
            .filter_map(|f| {
                self.0
                    .remove(f.name.as_ref())
                    .map(|v| (f.name.to_string(), v))
            })
            .filter(|(_, v)| !v.is_empty())
            .collect()
    }

    /// Wipes the secret fields now.
    fn wipe(&mut self, fields: &[crate::provider::Field]) {
        for f in fields.iter().filter(|f| f.secret) {
            if let Some(mut v) = self.0.remove(f.name.as_ref()) {
                zeroize::Zeroize::zeroize(&mut v);
            }
        }
    }
}

impl Drop for Form {
    fn drop(&mut self) {
        for (_, v) in self.0.iter_mut() {
            zeroize::Zeroize::zeroize(v);
        }
    }
}

/// The plain (non-secret) values of a provider's fields, to show a form again.
fn plain_values(
    providers: &[(String, Vec<crate::provider::Field>)],
    provider: &str,
    form: &Form,
) -> HashMap<String, String> {
    providers
        .iter()
        .find(|(n, _)| n == provider)
        .map(|(_, fields)| {
            fields
                .iter()
                .filter(|f| !f.secret)
                .filter_map(|f| {
                    form.get(f.name.as_ref())
                        .map(|v| (f.name.to_string(), v.clone()))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn parse(bytes: &[u8]) -> HashMap<String, String> {
    form_urlencoded::parse(bytes).into_owned().collect()
}

/// Reads a urlencoded form body of at most [`MAX_FORM_BYTES`], within ten seconds.
async fn read_form(body: Incoming) -> Result<Form, Reply> {
    let limited = Limited::new(body, MAX_FORM_BYTES);
    let collected = tokio::time::timeout(Duration::from_secs(10), limited.collect()).await;
    let bytes = match collected {
        Ok(Ok(c)) => Zeroizing::new(c.to_bytes().to_vec()),
        Ok(Err(_)) => {
            return Err(plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the form is too large (at most 64 KiB)",
            ))
        }
        Err(_) => {
            return Err(plain(
                StatusCode::REQUEST_TIMEOUT,
                "the form was not sent in time",
            ))
        }
    };
    Ok(Form(parse(&bytes)))
}

/// A date input's value as the end of that day (UTC); empty is none.
fn expiry(date: &str) -> Result<Option<prost_types::Timestamp>, &'static str> {
    let date = date.trim();
    if date.is_empty() {
        return Ok(None);
    }
    humantime::parse_rfc3339(&format!("{date}T23:59:59Z"))
        .map(|t| Some(crate::record::timestamp(t)))
        .map_err(|_| "a date such as 2027-01-31")
}

/// Puts an RPC's error next to the form field it concerns: a secret field it
/// names (a provider's rejection names the rejected value), else one of
/// `others`, else the whole form.
fn field_errors(status: &tonic::Status, secret_fields: &[&str], others: &[&str]) -> FieldErrors {
    let message = status.message();
    let field = secret_fields
        .iter()
        .chain(others)
        .copied()
        .find(|f| match *f {
            "name" => message.starts_with("name") || status.code() == Code::AlreadyExists,
            "expire_date" => message.contains("expire_time"),
            f => message.contains(f),
        })
        .unwrap_or("");
    HashMap::from([(field.to_owned(), message.to_owned())])
}

/// Whether an audited call only viewed metadata (left out of a credential's page).
fn is_view(method: &str) -> bool {
    matches!(
        method,
        "GetCredential" | "ListCredentials" | "ListCredentialVersions" | "ListAuditEvents"
    )
}

/// The text of a `done` query value (fixed words only: nothing from the request is echoed).
fn done_text(done: &str) -> Option<&'static str> {
    Some(match done {
        "created" => "Credential saved.",
        "updated" => "Changes saved.",
        "rotated" => "Secret rotated.",
        "rolled-back" => "Rolled back: the older secret is current again, as a new version.",
        "verified" => "Verified with the provider: the result is below.",
        "deleted" => "Credential deleted.",
        "unchanged" => "Nothing was changed.",
        _ => return None,
    })
}

/// The HTTP status a gRPC code shows as.
fn http_status(code: Code) -> StatusCode {
    match code {
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::FailedPrecondition => StatusCode::UNPROCESSABLE_ENTITY,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable | Code::DeadlineExceeded => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn html(status: StatusCode, markup: &maud::Markup) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(markup.0.clone())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

fn plain(status: StatusCode, text: &'static str) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn redirect(to: &str) -> Reply {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

fn cookie_header(value: &str) -> HeaderValue {
    HeaderValue::from_str(value).unwrap_or_else(|_| HeaderValue::from_static(""))
}
