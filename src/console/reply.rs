//! The console's answers: HTML, plain text, redirects, cookies, and a gRPC code as
//! an HTTP status.

use super::*;

/// The text of a `done` query value (fixed words only: nothing from the request is echoed).
pub(super) fn done_text(done: &str) -> Option<&'static str> {
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
pub(super) fn http_status(code: Code) -> StatusCode {
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

/// An HTML page.
pub(super) fn html(status: StatusCode, markup: &maud::Markup) -> Reply {
    let mut r = Reply::new(axum::body::Body::from(markup.0.clone()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

/// A line of plain text.
pub(super) fn plain(status: StatusCode, text: &'static str) -> Reply {
    let mut r = Reply::new(axum::body::Body::from(text));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// A redirect to `to` (see other).
pub(super) fn redirect(to: &str) -> Reply {
    let mut r = Reply::new(axum::body::Body::empty());
    *r.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// A Set-Cookie value (one that cannot be a header value is sent empty).
pub(super) fn cookie_header(value: &str) -> HeaderValue {
    HeaderValue::from_str(value).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// A redirect to the sign-in page `to` that also clears the session cookie.
pub(super) fn to_sign_in(to: &str, tls: bool) -> Reply {
    let mut r = redirect(to);
    r.headers_mut().append(
        header::SET_COOKIE,
        cookie_header(&session::set_cookie(
            SESSION_COOKIE,
            "",
            Duration::ZERO,
            tls,
        )),
    );
    r
}
