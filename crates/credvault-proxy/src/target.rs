//! Where a request may go: only to its credential's own scheme, host and port,
//! under its base path. Anything that could lead elsewhere (a `..` segment, in
//! any encoding, a backslash, an empty segment, an encoded slash, a control
//! character, another host) is refused before a byte is sent upstream.

use reqwest::Url;

/// A refused target: the status to answer and why (shown to the worker).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub message: String,
}

impl Refusal {
    fn bad(message: impl Into<String>) -> Self {
        Refusal {
            status: 400,
            message: message.into(),
        }
    }

    fn forbidden(message: impl Into<String>) -> Self {
        Refusal {
            status: 403,
            message: message.into(),
        }
    }
}

/// Checks a raw (still percent-encoded) path or query for what could escape.
fn check_raw(raw: &str, what: &str) -> Result<(), Refusal> {
    if raw
        .bytes()
        .any(|b| b.is_ascii_control() || b == b' ' || b == b'\\' || b >= 0x80)
    {
        return Err(Refusal::bad(format!(
            "the {what} holds a control character, a space, a backslash or a raw non-ASCII byte"
        )));
    }
    let bytes = raw.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            let Some(value) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) else {
                return Err(Refusal::bad(format!(
                    "the {what} holds a malformed percent escape"
                )));
            };
            if what == "path" && matches!(value, b'.' | b'/' | b'\\' | b'%')
                || value.is_ascii_control()
            {
                return Err(Refusal::bad(format!(
                    "the {what} holds an encoded dot, slash, backslash, percent or control character (%{:02X})",
                    value
                )));
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    Ok(())
}

/// The URL to send to: `base_url`'s origin and path, then `rest` (the worker's
/// path below the base, raw, starting with `/` or empty) and `query` (raw).
pub fn upstream_url(base_url: &str, rest: &str, query: Option<&str>) -> Result<Url, Refusal> {
    let base = Url::parse(base_url).map_err(|e| Refusal {
        status: 502,
        message: format!("the credential's base_url {base_url:?} is not a URL: {e}"),
    })?;
    if !rest.is_empty() && !rest.starts_with('/') {
        return Err(Refusal::bad("the path must begin with /"));
    }
    check_raw(rest, "path")?;
    if let Some(q) = query {
        check_raw(q, "query")?;
    }
    let segments: Vec<&str> = rest.split('/').skip(1).collect();
    for (i, segment) in segments.iter().enumerate() {
        if *segment == "." || *segment == ".." {
            return Err(Refusal::forbidden(
                "the path holds a . or .. segment: it may not leave the credential's base path",
            ));
        }
        if segment.is_empty() && i + 1 < segments.len() {
            return Err(Refusal::bad("the path holds an empty segment (//)"));
        }
    }
    let base_path = base.path().trim_end_matches('/');
    let mut url = base.clone();
    url.set_path(&format!("{base_path}{rest}"));
    url.set_query(query.filter(|q| !q.is_empty()));
    url.set_fragment(None);
    // What the parser made of it must still be the credential's own place.
    let same_origin = url.scheme() == base.scheme()
        && url.host_str() == base.host_str()
        && url.port_or_known_default() == base.port_or_known_default();
    let under_base = url.path() == base_path
        || url.path().starts_with(&format!("{base_path}/"))
        || base_path.is_empty();
    if !same_origin || !under_base {
        return Err(Refusal::forbidden(
            "the request would leave the credential's base URL",
        ));
    }
    Ok(url)
}

/// The part of `path` below `base_url`'s path, for a request in proxy form
/// (its own host already checked against the credential's): `None` when the
/// path is not under it.
pub fn below_base<'a>(base_url: &Url, path: &'a str) -> Option<&'a str> {
    let base_path = base_url.path().trim_end_matches('/');
    if base_path.is_empty() {
        return Some(path);
    }
    let rest = path.strip_prefix(base_path)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "https://secure.fleetio.com/api";

    #[test]
    fn a_plain_path_and_query_go_under_the_base() {
        let url = upstream_url(BASE, "/v1/users/me", Some("page=2&per_page=50")).unwrap();
        assert_eq!(
            url.as_str(),
            "https://secure.fleetio.com/api/v1/users/me?page=2&per_page=50"
        );
        assert_eq!(upstream_url(BASE, "", None).unwrap().path(), "/api");
        assert_eq!(
            upstream_url(BASE, "/v1/a%20b", None).unwrap().path(),
            "/api/v1/a%20b"
        );
    }

    #[test]
    fn every_way_out_is_refused() {
        for rest in [
            "/../admin",
            "/v1/../../x",
            "/./v1",
            "/%2e%2e/admin",
            "/%2E%2E/admin",
            "/.%2e/admin",
            "/%252e%252e/admin",
            "/v1%2f..%2fadmin",
            "/v1\\..\\admin",
            "//evil.example/x",
            "/v1//x",
            "/v1\r\nHost: evil",
            "/v1%0d%0aX: y",
            "/v1 x",
            "v1/users",
            "/caf\u{e9}",
            "/x%zz",
        ] {
            assert!(
                upstream_url(BASE, rest, None).is_err(),
                "{rest:?} was let through"
            );
        }
        assert!(upstream_url(BASE, "/v1", Some("a=1\r\nX: y")).is_err());
        assert!(upstream_url(BASE, "/v1", Some("a=%00")).is_err());
    }

    #[test]
    fn below_base_strips_the_base_path_at_a_boundary() {
        let base = Url::parse(BASE).unwrap();
        assert_eq!(below_base(&base, "/api/v1/users"), Some("/v1/users"));
        assert_eq!(below_base(&base, "/api"), Some(""));
        assert_eq!(below_base(&base, "/apix"), None);
        assert_eq!(below_base(&base, "/other"), None);
    }
}
