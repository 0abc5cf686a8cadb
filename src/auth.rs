//! Callers and permissions: bearer tokens checked in constant time against the
//! SHA-256 digests listed in the callers file. Tokens themselves are never stored.

use std::collections::HashSet;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use rand::RngCore;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};
use tonic::metadata::MetadataMap;
use zeroize::Zeroizing;

use crate::error::Error;

/// What a caller may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Permission {
    /// Get and List metadata.
    CredentialsRead,
    /// Create, Update, Delete.
    CredentialsWrite,
    /// Verify against the provider.
    CredentialsVerify,
    /// Read the secret headers (the workers' hot path).
    HeadersRead,
}

impl Permission {
    /// Every permission, in documentation order.
    pub const ALL: [Permission; 4] = [
        Permission::CredentialsRead,
        Permission::CredentialsWrite,
        Permission::CredentialsVerify,
        Permission::HeadersRead,
    ];

    /// The name used in the callers file, e.g. `headers.read`.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::CredentialsRead => "credentials.read",
            Permission::CredentialsWrite => "credentials.write",
            Permission::CredentialsVerify => "credentials.verify",
            Permission::HeadersRead => "headers.read",
        }
    }

    /// Parses a permission name.
    pub fn parse(name: &str) -> Result<Self, String> {
        Permission::ALL
            .into_iter()
            .find(|p| p.as_str() == name)
            .ok_or_else(|| {
                let known: Vec<_> = Permission::ALL.iter().map(|p| p.as_str()).collect();
                format!("unknown permission {name:?} (known: {})", known.join(", "))
            })
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An authenticated caller.
#[derive(Debug)]
pub struct Caller {
    /// The caller's name from the callers file; logged with every call.
    pub name: String,
    permissions: u8,
}

impl Caller {
    /// Whether the caller holds `permission`.
    pub fn may(&self, permission: Permission) -> bool {
        self.permissions & permission.bit() != 0
    }

    /// Fails with `PERMISSION_DENIED` unless the caller holds `permission`.
    pub fn require(&self, permission: Permission) -> Result<(), Error> {
        if self.may(permission) {
            Ok(())
        } else {
            Err(Error::PermissionDenied(format!(
                "caller {:?} lacks the {permission} permission",
                self.name
            )))
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CallersFile {
    #[serde(default)]
    caller: Vec<CallerEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CallerEntry {
    name: String,
    token_sha256: String,
    permissions: Vec<String>,
}

struct Entry {
    digest: [u8; 32],
    caller: Arc<Caller>,
}

/// The callers allowed in, by token digest.
pub struct Callers {
    entries: Vec<Entry>,
}

impl fmt::Debug for Callers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|e| &e.caller.name))
            .finish()
    }
}

/// The SHA-256 of a token, as the callers file lists it.
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A fresh random bearer token (`cv_` and 43 base64url characters: 256 bits).
pub fn mint_token() -> Zeroizing<String> {
    let mut raw = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(raw.as_mut());
    Zeroizing::new(format!("cv_{}", URL_SAFE_NO_PAD.encode(raw.as_ref())))
}

/// The callers-file entry for a caller holding `token`.
pub fn callers_entry(name: &str, token: &str, permissions: &[Permission]) -> String {
    let perms: Vec<String> = permissions
        .iter()
        .map(|p| format!("{:?}", p.as_str()))
        .collect();
    format!(
        "[[caller]]\nname = {name:?}\ntoken_sha256 = \"{}\"\npermissions = [{}]\n",
        hex::encode(token_digest(token)),
        perms.join(", ")
    )
}

impl Callers {
    /// Parses a callers file's text.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        let file: CallersFile = toml::from_str(text).map_err(|e| e.message().to_owned())?;
        let mut names = HashSet::new();
        let mut digests = HashSet::new();
        let mut entries = Vec::with_capacity(file.caller.len());
        for entry in file.caller {
            let name = entry.name.trim().to_owned();
            if name.is_empty() {
                return Err("a caller has an empty name".into());
            }
            if !names.insert(name.clone()) {
                return Err(format!("caller {name:?} is listed twice"));
            }
            let digest: [u8; 32] = hex::decode(entry.token_sha256.trim())
                .ok()
                .and_then(|d| d.try_into().ok())
                .ok_or_else(|| {
                    format!("caller {name:?}: token_sha256 must be 64 hex characters")
                })?;
            if !digests.insert(digest) {
                return Err(format!(
                    "caller {name:?} shares its token with another caller"
                ));
            }
            let mut permissions = 0u8;
            for p in &entry.permissions {
                permissions |= Permission::parse(p)
                    .map_err(|e| format!("caller {name:?}: {e}"))?
                    .bit();
            }
            entries.push(Entry {
                digest,
                caller: Arc::new(Caller { name, permissions }),
            });
        }
        Ok(Callers { entries })
    }

    /// Reads and parses a callers file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read callers file {}: {e}", path.display()))?;
        Self::from_toml(&text).map_err(|e| format!("callers file {}: {e}", path.display()))
    }

    /// How many callers are configured.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no caller is configured.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The caller whose token digest matches, comparing every entry in constant time.
    pub fn find(&self, token: &str) -> Option<Arc<Caller>> {
        let digest = token_digest(token);
        let mut index = 0u32;
        let mut any = Choice::from(0);
        // No early exit: every entry is compared, whichever matches.
        for (i, entry) in self.entries.iter().enumerate() {
            let hit = entry.digest.ct_eq(&digest);
            index.conditional_assign(&(i as u32), hit);
            any |= hit;
        }
        bool::from(any).then(|| Arc::clone(&self.entries[index as usize].caller))
    }

    /// Authenticates a request by its `authorization: Bearer <token>` metadata.
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Arc<Caller>, Error> {
        let value = metadata.get("authorization").ok_or(Error::Unauthenticated(
            "missing credentials: send `authorization: Bearer <token>` metadata",
        ))?;
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|t| !t.is_empty())
            .ok_or(Error::Unauthenticated(
                "malformed authorization metadata: expected `Bearer <token>`",
            ))?;
        self.find(token)
            .ok_or(Error::Unauthenticated("invalid bearer token"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn callers(token: &str, perms: &[Permission]) -> Callers {
        Callers::from_toml(&callers_entry("worker", token, perms)).unwrap()
    }

    fn md(value: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert("authorization", value.parse().unwrap());
        m
    }

    #[test]
    fn minted_tokens_authenticate_with_their_permissions() {
        let token = mint_token();
        let c = callers(&token, &[Permission::HeadersRead]);
        let caller = c
            .authenticate(&md(&format!("Bearer {}", token.as_str())))
            .unwrap();
        assert_eq!(caller.name, "worker");
        assert!(caller.may(Permission::HeadersRead));
        assert!(caller.require(Permission::CredentialsWrite).is_err());
        assert!(c.authenticate(&md("Bearer cv_wrong")).is_err());
        assert!(c.authenticate(&md(token.as_str())).is_err());
        assert!(c.authenticate(&MetadataMap::new()).is_err());
    }

    #[test]
    fn finds_the_right_caller_among_many() {
        let tokens: Vec<_> = (0..5).map(|_| mint_token()).collect();
        let text: String = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| callers_entry(&format!("c{i}"), t, &Permission::ALL))
            .collect();
        let c = Callers::from_toml(&text).unwrap();
        for (i, t) in tokens.iter().enumerate() {
            assert_eq!(c.find(t).unwrap().name, format!("c{i}"));
        }
        assert!(c.find("nope").is_none());
    }

    #[test]
    fn bad_files_are_refused() {
        let digest = "ab".repeat(32);
        for bad in [
            format!("[[caller]]\nname = \"a\"\ntoken_sha256 = \"{digest}\"\npermissions = [\"root\"]\n"),
            "[[caller]]\nname = \"a\"\ntoken_sha256 = \"abc\"\npermissions = []\n".to_owned(),
            format!("[[caller]]\nname = \"a\"\ntoken_sha256 = \"{digest}\"\npermissions = []\nextra = 1\n"),
            format!("[[caller]]\nname = \"a\"\ntoken_sha256 = \"{digest}\"\npermissions = []\n[[caller]]\nname = \"a\"\ntoken_sha256 = \"{}\"\npermissions = []\n", "cd".repeat(32)),
        ] {
            assert!(Callers::from_toml(&bad).is_err(), "{bad}");
        }
    }
}
