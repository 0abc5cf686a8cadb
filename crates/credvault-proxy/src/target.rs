//! Where a request may go: only to its credential's own scheme, host and port,
//! under its base path. Anything that could lead elsewhere (a `..` segment, in
//! any encoding, a backslash, an empty segment, an encoded slash, a control
//! character, another host) is refused before a byte is sent upstream.

use http::uri::{Authority, PathAndQuery, Scheme, Uri};

/// A refused target: the status to answer and why (shown to the worker).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The HTTP status to answer.
    pub status: u16,
    /// Why, for the worker (never a header value).
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

/// A credential's base URL, read into what a request is built from: the
/// scheme, the authority, the host in lower case, the port (or the scheme's)
/// and the path without its trailing `/`.
#[derive(Clone, Debug)]
pub struct Base {
    scheme: Scheme,
    authority: Authority,
    host: String,
    port: u16,
    path: String,
}

impl Base {
    /// Reads `base_url`: `http` or `https`, a host, no user, query or fragment.
    pub fn parse(base_url: &str) -> Result<Base, Refusal> {
        let bad = |why: &str| Refusal {
            status: 502,
            message: format!("the credential's base_url {base_url:?} is not one to send to: {why}"),
        };
        let uri: Uri = base_url.parse().map_err(|_| bad("not a URL"))?;
        let scheme = uri.scheme().cloned().ok_or_else(|| bad("no scheme"))?;
        let default_port = match scheme.as_str() {
            "https" => 443,
            "http" => 80,
            _ => return Err(bad("the scheme is neither http nor https")),
        };
        let authority = uri.authority().cloned().ok_or_else(|| bad("no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("it names a user"));
        }
        if authority.host().is_empty() {
            return Err(bad("no host"));
        }
        if uri.query().is_some() || base_url.contains('#') {
            return Err(bad("it holds a query or a fragment"));
        }
        Ok(Base {
            host: authority.host().to_ascii_lowercase(),
            port: authority.port_u16().unwrap_or(default_port),
            path: uri.path().trim_end_matches('/').to_owned(),
            scheme,
            authority,
        })
    }

    /// The host, in lower case (an IPv6 address in brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port, or the scheme's.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The path, without its trailing `/` (empty for the root).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Whether `host` (as a worker wrote it, any case, IPv6 with or without
    /// brackets) is this base's host.
    pub fn has_host(&self, host: &str) -> bool {
        let bare = |h: &str| h.trim_start_matches('[').trim_end_matches(']').to_owned();
        bare(&self.host).eq_ignore_ascii_case(&bare(host))
    }

    /// The URI to send to: this base's origin and path, then `rest` (the
    /// worker's path below the base, raw, starting with `/` or empty) and
    /// `query` (raw). Anything that could lead elsewhere is refused.
    pub fn uri(&self, rest: &str, query: Option<&str>) -> Result<Uri, Refusal> {
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
        let mut path_and_query = String::with_capacity(
            self.path.len() + rest.len() + query.map_or(0, |q| q.len() + 1) + 1,
        );
        path_and_query.push_str(&self.path);
        path_and_query.push_str(rest);
        if path_and_query.is_empty() {
            path_and_query.push('/');
        }
        if let Some(q) = query.filter(|q| !q.is_empty()) {
            path_and_query.push('?');
            path_and_query.push_str(q);
        }
        let path_and_query = PathAndQuery::try_from(path_and_query)
            .map_err(|_| Refusal::bad("the path or query is not one a URI may hold"))?;
        // What the parser made of it must still be the credential's own place.
        let under_base = self.path.is_empty()
            || path_and_query.path() == self.path
            || path_and_query
                .path()
                .strip_prefix(self.path.as_str())
                .is_some_and(|below| below.starts_with('/'));
        if !under_base || path_and_query.query() != query.filter(|q| !q.is_empty()) {
            return Err(Refusal::forbidden(
                "the request would leave the credential's base URL",
            ));
        }
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
            .map_err(|_| Refusal::bad("the path or query is not one a URI may hold"))
    }

    /// The part of `path` below this base's path, for a request in proxy form
    /// (its own host already checked against the credential's): `None` when the
    /// path is not under it.
    pub fn below<'a>(&self, path: &'a str) -> Option<&'a str> {
        if self.path.is_empty() {
            return Some(path);
        }
        let rest = path.strip_prefix(self.path.as_str())?;
        (rest.is_empty() || rest.starts_with('/')).then_some(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "https://secure.fleetio.com/api";

    #[test]
    fn a_plain_path_and_query_go_under_the_base() {
        let base = Base::parse(BASE).unwrap();
        let uri = base
            .uri("/v1/users/me", Some("page=2&per_page=50"))
            .unwrap();
        assert_eq!(
            uri.to_string(),
            "https://secure.fleetio.com/api/v1/users/me?page=2&per_page=50"
        );
        assert_eq!(base.uri("", None).unwrap().path(), "/api");
        assert_eq!(
            base.uri("/", Some("")).unwrap().to_string(),
            "https://secure.fleetio.com/api/"
        );
        assert_eq!(base.uri("/v1/a%20b", None).unwrap().path(), "/api/v1/a%20b");
        let root = Base::parse("http://127.0.0.1:8080/").unwrap();
        assert_eq!(
            root.uri("", None).unwrap().to_string(),
            "http://127.0.0.1:8080/"
        );
        assert_eq!(
            (root.host(), root.port(), root.path()),
            ("127.0.0.1", 8080, "")
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
                Base::parse(BASE).unwrap().uri(rest, None).is_err(),
                "{rest:?} was let through"
            );
        }
        let base = Base::parse(BASE).unwrap();
        assert!(base.uri("/v1", Some("a=1\r\nX: y")).is_err());
        assert!(base.uri("/v1", Some("a=%00")).is_err());
        assert!(base.uri("/v1", Some("a=1#frag")).is_err());
    }

    #[test]
    fn below_base_strips_the_base_path_at_a_boundary() {
        let base = Base::parse(BASE).unwrap();
        assert_eq!(base.below("/api/v1/users"), Some("/v1/users"));
        assert_eq!(base.below("/api"), Some(""));
        assert_eq!(base.below("/apix"), None);
        assert_eq!(base.below("/other"), None);
    }

    #[test]
    fn a_base_url_must_be_an_origin_and_a_path() {
        let base = Base::parse("https://Secure.Fleetio.com:8443/api/").unwrap();
        assert_eq!(
            (base.host(), base.port(), base.path()),
            ("secure.fleetio.com", 8443, "/api")
        );
        assert!(base.has_host("SECURE.fleetio.COM"));
        assert!(!base.has_host("fleetio.com"));
        let v6 = Base::parse("http://[::1]:9000/x").unwrap();
        assert!(v6.has_host("::1") && v6.has_host("[::1]"));
        for bad in [
            "",
            "secure.fleetio.com/api",
            "ftp://secure.fleetio.com/api",
            "https://user:pw@secure.fleetio.com/api",
            "https://secure.fleetio.com/api?x=1",
            "https://secure.fleetio.com/api#x",
            "https:///api",
        ] {
            assert!(Base::parse(bad).is_err(), "{bad:?} was taken");
        }
    }
}
