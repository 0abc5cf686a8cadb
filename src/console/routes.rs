//! The console's routes, on axum's router (already compiled in through tonic's
//! router feature; no crate added): the public pages (style sheet, sign-in), then
//! every other page behind the session layer. In front of all of them, outermost
//! first: the answer's security headers, metrics and log line; methods other than
//! GET, HEAD and POST refused; a POST from another origin refused before its body
//! is read. A signed-in POST's form is read to its limit and its CSRF token
//! checked by the [`Checked`] extractor before the handler runs.

use axum::extract::{FromRequest, Path, RawQuery, Request as Incoming, State};
use axum::middleware::{self as mw, Next};
use axum::routing::{get, post};
use axum::{Extension, Router};

use super::*;

/// The console, as every handler's state.
type App<T> = Arc<Console<T>>;

/// The caller a response was for, for the log line (set by the session layer and sign-in).
#[derive(Clone)]
struct CallerName(String);

impl<T: CredentialVaultService> Console<T> {
    /// Every route of the console, with its layers.
    pub(super) fn router(self: &Arc<Self>) -> Router {
        let signed = Router::new()
            .route("/", get(|| async { redirect("/credentials") }))
            .route("/sign-out", post(sign_out::<T>))
            .route("/credentials", get(list::<T>))
            .route("/credentials/new", get(add_page::<T>).post(create::<T>))
            .route("/credentials/{id}", get(show::<T>))
            .route("/credentials/{id}/{action}", post(act::<T>))
            .fallback(no_such_page::<T>)
            .layer(mw::from_fn_with_state(Arc::clone(self), session::<T>))
            .with_state(Arc::clone(self));
        Router::new()
            .route("/static/console.css", get(style))
            .route(
                "/favicon.ico",
                get(|| async { plain(StatusCode::NOT_FOUND, "no icon") }),
            )
            .route("/sign-in", get(sign_in_page::<T>).post(sign_in::<T>))
            .fallback_service(signed)
            .layer(mw::from_fn_with_state(Arc::clone(self), same_origin::<T>))
            .layer(mw::from_fn(methods))
            .layer(mw::from_fn_with_state(Arc::clone(self), answer::<T>))
            .with_state(Arc::clone(self))
    }
}

/// A signed-in POST's form: read to its limit, its CSRF token the session's.
struct Checked(Form);

impl<T: CredentialVaultService> FromRequest<App<T>> for Checked {
    type Rejection = Reply;

    async fn from_request(request: Incoming, console: &App<T>) -> Result<Self, Reply> {
        let signed = request.extensions().get::<Arc<Signed>>().cloned();
        let form = read_form(request.into_body()).await?;
        let Some(signed) = signed else {
            // Only routes behind the session layer take a checked form.
            return Err(plain(StatusCode::FORBIDDEN, "not signed in"));
        };
        let token = form.get("csrf").map_or("", |v| v.as_str());
        if !session::same_token(token, &signed.session.csrf) {
            return Err(console.refused(
                Some(&signed),
                StatusCode::FORBIDDEN,
                "the form's CSRF token is missing or stale; reload the page and try again",
            ));
        }
        Ok(Checked(form))
    }
}

/// A form sent before signing in (the sign-in form, which carries its own token).
struct Unsigned(Form);

impl<S: Send + Sync> FromRequest<S> for Unsigned {
    type Rejection = Reply;

    async fn from_request(request: Incoming, _: &S) -> Result<Self, Reply> {
        read_form(request.into_body()).await.map(Unsigned)
    }
}

/// The query string's values by name.
fn query(raw: Option<String>) -> HashMap<String, String> {
    parse(raw.unwrap_or_default().as_bytes())
}

/// Security headers on every answer, the console's metrics, and the log line.
async fn answer<T: CredentialVaultService>(
    State(console): State<App<T>>,
    request: Incoming,
    next: Next,
) -> Reply {
    let start = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let peer = request.extensions().get::<Conn>().map(|c| c.peer);
    let mut reply = next.run(request).await;
    let caller = reply.extensions_mut().remove::<CallerName>();
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
    if console.tls {
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
    }
    crate::metrics::console_request(reply.status().as_u16());
    crate::metrics::console_sessions(console.sessions.len());
    // A request's path is the sender's text: escaped and capped. Requests of no
    // signed-in caller (sign-in pages, unknown cookies, probes) are counted in
    // the metrics and logged at debug only, so a flood of them writes no log.
    let path = crate::escape::shown(&path);
    let peer = peer.map(|p| p.to_string()).unwrap_or_default();
    let latency_us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
    match caller {
        Some(CallerName(caller)) => tracing::info!(
            method = %method,
            path = %path,
            status = reply.status().as_u16(),
            caller,
            peer,
            latency_us,
            "console request"
        ),
        None => tracing::debug!(
            method = %method,
            path = %path,
            status = reply.status().as_u16(),
            caller = "anonymous",
            peer,
            latency_us,
            "console request"
        ),
    }
    reply
}

/// GET, HEAD and POST only; anything else is refused before routing.
async fn methods(request: Incoming, next: Next) -> Reply {
    let method = request.method();
    if method != Method::GET && method != Method::HEAD && method != Method::POST {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    }
    next.run(request).await
}

/// Before any body is read: a POST must come from this console's own pages.
async fn same_origin<T: CredentialVaultService>(
    State(console): State<App<T>>,
    request: Incoming,
    next: Next,
) -> Reply {
    if request.method() == Method::POST {
        if let Err(why) = console.same_origin(request.headers()) {
            return console.refused(None, StatusCode::FORBIDDEN, why);
        }
    }
    next.run(request).await
}

/// Every page but the public ones needs a session: without one, the sign-in
/// page (saying so when the cookie named an ended one).
async fn session<T: CredentialVaultService>(
    State(console): State<App<T>>,
    mut request: Incoming,
    next: Next,
) -> Reply {
    let Some(signed) = console.signed(request.headers()) else {
        let expired = session::cookie(request.headers(), SESSION_COOKIE).is_some();
        if !expired {
            return redirect("/sign-in");
        }
        return to_sign_in("/sign-in?expired=1", console.tls);
    };
    let name = signed.caller.name.clone();
    request.extensions_mut().insert(Arc::new(signed));
    let mut reply = next.run(request).await;
    reply.extensions_mut().insert(CallerName(name));
    reply
}

/// The style sheet (the only asset).
async fn style() -> Reply {
    let mut reply = Reply::new(axum::body::Body::from(STYLE));
    reply.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/css; charset=utf-8"),
    );
    reply
}

async fn sign_in_page<T: CredentialVaultService>(
    State(console): State<App<T>>,
    Extension(conn): Extension<Conn>,
    RawQuery(raw): RawQuery,
    headers: http::HeaderMap,
) -> Reply {
    let held = session::cookie(&headers, SIGN_IN_COOKIE);
    console.sign_in_page(&query(raw), &conn, held, None)
}

async fn sign_in<T: CredentialVaultService>(
    State(console): State<App<T>>,
    Extension(conn): Extension<Conn>,
    headers: http::HeaderMap,
    Unsigned(form): Unsigned,
) -> Reply {
    let (mut reply, caller) = console.sign_in(&headers, &form, &conn).await;
    if let Some(caller) = caller {
        reply.extensions_mut().insert(CallerName(caller));
    }
    reply
}

async fn sign_out<T: CredentialVaultService>(
    State(console): State<App<T>>,
    Extension(conn): Extension<Conn>,
    Extension(signed): Extension<Arc<Signed>>,
    Checked(_): Checked,
) -> Reply {
    console.sign_out(&signed, &conn).await
}

async fn list<T: CredentialVaultService>(
    State(console): State<App<T>>,
    Extension(conn): Extension<Conn>,
    Extension(signed): Extension<Arc<Signed>>,
    RawQuery(raw): RawQuery,
) -> Reply {
    console.list(&signed, &conn, &query(raw)).await
}

async fn add_page<T: CredentialVaultService>(
    State(console): State<App<T>>,
    Extension(signed): Extension<Arc<Signed>>,
    RawQuery(raw): RawQuery,
) -> Reply {
    if !signed.caller.may(Permission::CredentialsWrite) {
        return console.refused(
            Some(&signed),
            StatusCode::FORBIDDEN,
            "your caller may not create credentials (it lacks credentials.write)",
        );
    }
    let query = query(raw);
    let provider = query.get("provider").map_or("fleetio", |p| p.as_str());
    console.add_page(
        &signed,
        provider,
        &Form::default(),
        FieldErrors::new(),
        StatusCode::OK,
    )
}

async fn create<T: CredentialVaultService>(
    State(console): State<App<T>>,
    Extension(conn): Extension<Conn>,
    Extension(signed): Extension<Arc<Signed>>,
    Checked(form): Checked,
) -> Reply {
    console.create(&signed, &conn, form).await
}

async fn show<T: CredentialVaultService>(
    State(console): State<App<T>>,
    Extension(conn): Extension<Conn>,
    Extension(signed): Extension<Arc<Signed>>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Reply {
    let done = query(raw).get("done").and_then(|d| done_text(d));
    console
        .show(&signed, &conn, &id, done, HashMap::new(), StatusCode::OK)
        .await
}

async fn act<T: CredentialVaultService>(
    State(console): State<App<T>>,
    Extension(conn): Extension<Conn>,
    Extension(signed): Extension<Arc<Signed>>,
    Path((id, action)): Path<(String, String)>,
    Checked(form): Checked,
) -> Reply {
    console.act(&signed, &conn, &id, &action, form).await
}

async fn no_such_page<T: CredentialVaultService>(
    State(console): State<App<T>>,
    Extension(signed): Extension<Arc<Signed>>,
) -> Reply {
    console.refused(Some(&signed), StatusCode::NOT_FOUND, "no such page")
}
