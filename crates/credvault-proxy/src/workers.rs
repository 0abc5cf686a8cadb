//! Workers' tokens, for a proxy shared beyond loopback: each worker presents
//! its token in `Proxy-Authorization` (`Bearer <token>`, or `Basic` with the
//! token as the password, which is what `HTTPS_PROXY=http://name:token@host:port`
//! sends) and may use only the credentials its entry names (globs). The file
//! holds SHA-256 digests of the tokens, never a token; it is re-read on SIGHUP.
//!
//! ```toml
//! [[worker]]
//! name = "ingest-eu"
//! token_sha256 = "9f86d0…"          # credvault-proxy token prints the entry
//! credentials = ["fleetio-*"]
//! ```

use std::path::Path;

use base64::{engine::general_purpose::STANDARD as B64, Engine as _};
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

const WHAT: &str = "the tokens file";

/// Why a tokens file was refused.
#[derive(Debug, thiserror::Error)]
pub enum WorkersError {
    /// The file could not be read or is not TOML.
    #[error(transparent)]
    File(#[from] crate::toml_file::FileError),
    /// A worker's entry is not one (its name, digest or credential globs).
    #[error("the tokens file {path}, worker {index}: {message}")]
    Entry {
        /// The tokens file.
        path: String,
        /// The entry's place in the file, from 1.
        index: usize,
        /// What is wrong with it.
        message: String,
    },
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    worker: Vec<RawWorker>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorker {
    name: String,
    token_sha256: String,
    credentials: Vec<String>,
}

/// One worker: its name (for logs), its token's digest, the credentials it may use.
#[derive(Clone, Debug)]
pub struct Worker {
    /// The worker's name, for logs and refusals.
    pub name: String,
    digest: [u8; 32],
    credentials: globset::GlobSet,
    patterns: Vec<String>,
}

impl Worker {
    /// Whether the worker may use credential `name`.
    pub fn may_use(&self, name: &str) -> bool {
        self.credentials.is_match(name)
    }

    /// Its credential patterns, as the file names them.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }
}

/// Every worker of the tokens file.
#[derive(Clone, Debug, Default)]
pub struct Workers {
    workers: Vec<Worker>,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Workers {
    /// Reads and checks the tokens file at `path`.
    pub fn read(path: &Path) -> Result<Self, WorkersError> {
        let (text, shown) = crate::toml_file::read(path, WHAT)?;
        Self::parse(&text, &shown)
    }

    /// Parses the workers of `text` (`path` names it in errors).
    pub fn parse(text: &str, path: &str) -> Result<Self, WorkersError> {
        let file: File = crate::toml_file::parse(text, WHAT, path)?;
        let mut workers = Vec::with_capacity(file.worker.len());
        for (i, raw) in file.worker.into_iter().enumerate() {
            let bad = |message: String| WorkersError::Entry {
                path: path.to_owned(),
                index: i + 1,
                message,
            };
            if raw.name.trim().is_empty() || raw.name.len() > 128 {
                return Err(bad("name must be 1 to 128 characters".into()));
            }
            let digest = hex::decode(raw.token_sha256.trim())
                .ok()
                .and_then(|d| <[u8; 32]>::try_from(d).ok())
                .ok_or_else(|| bad("token_sha256 must be 64 hex digits".into()))?;
            if raw.credentials.is_empty() {
                return Err(bad("credentials must name at least one pattern".into()));
            }
            let mut set = globset::GlobSetBuilder::new();
            for pattern in &raw.credentials {
                let glob = globset::GlobBuilder::new(pattern)
                    .literal_separator(true)
                    .build()
                    .map_err(|e| bad(format!("credentials pattern {pattern:?}: {e}")))?;
                set.add(glob);
            }
            let credentials = set.build().map_err(|e| bad(e.to_string()))?;
            if workers.iter().any(|w: &Worker| w.digest == digest) {
                return Err(bad("the same token is listed twice".into()));
            }
            workers.push(Worker {
                name: raw.name,
                digest,
                credentials,
                patterns: raw.credentials,
            });
        }
        Ok(Workers { workers })
    }

    /// The worker a `Proxy-Authorization` value names, if its token is known
    /// (every entry compared, in constant time each).
    pub fn authenticate(&self, header: Option<&str>) -> Option<&Worker> {
        let token = token_of(header?)?;
        let presented = digest(&token);
        let mut found = None;
        for w in &self.workers {
            if bool::from(w.digest.ct_eq(&presented)) {
                found = Some(w);
            }
        }
        found
    }

    /// How many workers the file lists.
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// Whether the file lists none.
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }
}

/// The token of a `Proxy-Authorization` value: `Bearer <token>`, or `Basic`
/// whose password (or, without one, user) is the token.
fn token_of(header: &str) -> Option<String> {
    let (scheme, rest) = header.trim().split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return (!rest.is_empty()).then(|| rest.to_owned());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = B64.decode(rest).ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let token = match text.split_once(':') {
            Some((_, password)) if !password.is_empty() => password.to_owned(),
            Some((user, _)) => user.to_owned(),
            None => text,
        };
        return (!token.is_empty()).then_some(token);
    }
    None
}

/// A fresh token (32 random bytes, URL-safe base64) and its tokens-file entry.
pub fn mint(name: &str, credentials: &[String]) -> (String, String) {
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    let entry = format!(
        "[[worker]]\nname = {}\ntoken_sha256 = \"{}\"\ncredentials = [{}]\n",
        toml_string(name),
        hex::encode(digest(&token)),
        credentials
            .iter()
            .map(|c| toml_string(c))
            .collect::<Vec<_>>()
            .join(", ")
    );
    (token, entry)
}

fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minted_token_authenticates_by_bearer_and_basic_and_is_scoped() {
        let (token, entry) = mint("ingest-eu", &["fleetio-*".into()]);
        let workers = Workers::parse(&entry, "t").unwrap();
        let w = workers
            .authenticate(Some(&format!("Bearer {token}")))
            .unwrap();
        assert_eq!(w.name, "ingest-eu");
        assert!(w.may_use("fleetio-acme") && !w.may_use("stripe-acme"));
        let basic = B64.encode(format!("ingest-eu:{token}"));
        assert!(workers
            .authenticate(Some(&format!("Basic {basic}")))
            .is_some());
        assert!(workers.authenticate(Some("Bearer wrong")).is_none());
        assert!(workers.authenticate(None).is_none());
        assert!(!entry.contains(&token), "the file holds no token");
    }

    #[test]
    fn a_bad_entry_is_named() {
        for (text, says) in [
            (
                "[[worker]]\nname = \"a\"\ntoken_sha256 = \"zz\"\ncredentials = [\"x\"]",
                "64 hex",
            ),
            (
                "[[worker]]\nname = \"a\"\ntoken_sha256 = \"00\"\ncredentials = []",
                "64 hex",
            ),
            (
                &format!(
                    "[[worker]]\nname = \"a\"\ntoken_sha256 = \"{}\"\ncredentials = []",
                    "0".repeat(64)
                ),
                "at least one",
            ),
        ] {
            let e = Workers::parse(text, "tokens.toml").unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        }
    }
}
