//! The routes file: which credential a request in proxy form uses, by the host
//! it is sent to and an optional path prefix. Checked whole at start
//! (`credvault-proxy check`): a file with one bad route is refused.
//!
//! ```toml
//! [[route]]
//! host = "secure.fleetio.com"      # the host the worker sends to (port 443/80 by scheme)
//! path_prefix = "/api"             # optional: only paths under it
//! credential = "fleetio-acme"      # the credential whose headers are attached
//! ```

use std::path::Path;

const WHAT: &str = "the routes file";

/// Why a routes file was refused.
#[derive(Debug, thiserror::Error)]
pub enum RoutesError {
    /// The file could not be read or is not TOML.
    #[error(transparent)]
    File(#[from] crate::toml_file::FileError),
    /// A route is not one (its host, prefix or credential name).
    #[error("the routes file {path}, route {index}: {message}")]
    Route {
        /// The routes file.
        path: String,
        /// The route's place in the file, from 1.
        index: usize,
        /// What is wrong with it.
        message: String,
    },
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    route: Vec<RawRoute>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    host: String,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    path_prefix: Option<String>,
    credential: String,
}

/// One route: requests to `host` (and `port`, when given) under `path_prefix` use `credential`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// Lowercase host name or address.
    pub host: String,
    /// The port, when the route names one (else any).
    pub port: Option<u16>,
    /// A path prefix ("/api"), matched at a segment boundary; "" matches every path.
    pub path_prefix: String,
    /// The credential's name in the vault.
    pub credential: String,
}

/// Every route, most specific first (longest prefix).
#[derive(Clone, Debug, Default)]
pub struct Routes {
    routes: Vec<Route>,
}

/// Whether `name` is a credential name as the vault takes it (1 to 128 of `A-Za-z0-9._-`).
pub fn valid_credential_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

impl Routes {
    /// Reads and checks the routes file at `path`.
    pub fn read(path: &Path) -> Result<Self, RoutesError> {
        let (text, shown) = crate::toml_file::read(path, WHAT)?;
        Self::parse(&text, &shown)
    }

    /// Parses routes from `text` (`path` names it in errors).
    pub fn parse(text: &str, path: &str) -> Result<Self, RoutesError> {
        let file: File = crate::toml_file::parse(text, WHAT, path)?;
        let mut routes = Vec::with_capacity(file.route.len());
        for (i, raw) in file.route.into_iter().enumerate() {
            let bad = |message: String| RoutesError::Route {
                path: path.to_owned(),
                index: i + 1,
                message,
            };
            let host = raw.host.trim().to_ascii_lowercase();
            if !valid_host(&host) {
                return Err(bad(format!("host {:?} is not a host name", raw.host)));
            }
            if !valid_credential_name(&raw.credential) {
                return Err(bad(format!(
                    "credential {:?} is not a credential name (1 to 128 of A-Z a-z 0-9 . _ -)",
                    raw.credential
                )));
            }
            let prefix = raw.path_prefix.unwrap_or_default();
            let prefix = prefix.trim_end_matches('/').to_owned();
            if !prefix.is_empty()
                && (!prefix.starts_with('/')
                    || prefix.contains("..")
                    || prefix.contains('%')
                    || prefix.bytes().any(|b| b.is_ascii_control() || b == b'?'))
            {
                return Err(bad(format!(
                    "path_prefix {prefix:?} must be a plain absolute path such as /api"
                )));
            }
            let route = Route {
                host,
                port: raw.port,
                path_prefix: prefix,
                credential: raw.credential,
            };
            if routes.iter().any(|r: &Route| {
                r.host == route.host && r.port == route.port && r.path_prefix == route.path_prefix
            }) {
                return Err(bad(format!(
                    "host {} and path_prefix {:?} are routed twice",
                    route.host, route.path_prefix
                )));
            }
            routes.push(route);
        }
        routes.sort_by_key(|r| std::cmp::Reverse(r.path_prefix.len()));
        Ok(Routes { routes })
    }

    /// The route of a request to `host`:`port` for `path` (origin form, no query).
    pub fn find(&self, host: &str, port: u16, path: &str) -> Option<&Route> {
        self.routes.iter().find(|r| {
            r.host.eq_ignore_ascii_case(host)
                && r.port.is_none_or(|p| p == port)
                && under(path, &r.path_prefix)
        })
    }

    /// Whether any route names `host`:`port` (what CONNECT asks for).
    pub fn routes_host(&self, host: &str, port: u16) -> bool {
        self.routes
            .iter()
            .any(|r| r.host.eq_ignore_ascii_case(host) && r.port.is_none_or(|p| p == port))
    }

    /// The credentials the routes name, each once.
    pub fn credentials(&self) -> Vec<String> {
        let mut names: Vec<String> = self.routes.iter().map(|r| r.credential.clone()).collect();
        names.sort();
        names.dedup();
        names
    }

    /// Every route.
    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }

    /// Whether there is no route.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

/// Whether `path` is `prefix` or under it at a segment boundary.
fn under(path: &str, prefix: &str) -> bool {
    prefix.is_empty()
        || path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_host_port_and_prefix_most_specific_first() {
        let routes = Routes::parse(
            r#"
            [[route]]
            host = "secure.fleetio.com"
            credential = "fleetio-any"
            [[route]]
            host = "Secure.Fleetio.com"
            path_prefix = "/api/"
            credential = "fleetio-api"
            "#,
            "t",
        )
        .unwrap();
        let find = |path| {
            routes
                .find("secure.fleetio.com", 443, path)
                .map(|r| r.credential.as_str())
        };
        assert_eq!(find("/api/v1/users/me"), Some("fleetio-api"));
        assert_eq!(find("/api"), Some("fleetio-api"));
        assert_eq!(find("/apix"), Some("fleetio-any"));
        assert_eq!(find("/"), Some("fleetio-any"));
        assert!(routes.find("other.example", 443, "/").is_none());
        assert_eq!(routes.credentials(), ["fleetio-any", "fleetio-api"]);
    }

    #[test]
    fn a_bad_route_is_named() {
        for (text, says) in [
            ("[[route]]\nhost = \"a b\"\ncredential = \"x\"", "not a host name"),
            ("[[route]]\nhost = \"h\"\ncredential = \"x y\"", "not a credential name"),
            ("[[route]]\nhost = \"h\"\npath_prefix = \"/a/../b\"\ncredential = \"x\"", "plain absolute path"),
            ("[[route]]\nhost = \"h\"\ncredential = \"x\"\nextra = 1", "not valid TOML"),
            ("[[route]]\nhost = \"h\"\ncredential = \"x\"\n[[route]]\nhost = \"h\"\ncredential = \"y\"", "routed twice"),
        ] {
            let e = Routes::parse(text, "routes.toml").unwrap_err().to_string();
            assert!(e.contains(says), "{text}: {e}");
        }
    }
}
