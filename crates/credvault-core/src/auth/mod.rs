//! Callers and permissions: bearer tokens checked in constant time against the
//! SHA-256 digests listed in the callers file. Tokens themselves are never stored.
//!
//! Here permissions, a caller and its scope, and tokens; `callers` (the callers
//! file), `identity` (what a request presented) and `registry` (the callers in
//! force, reloaded).

use std::collections::HashSet;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use rand::RngCore;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};
use zeroize::Zeroizing;

use crate::error::Error;

mod callers;
mod identity;
mod registry;

pub use callers::*;
pub use identity::*;
pub use registry::*;

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
    /// Read the audit trail.
    AuditRead,
    /// Rewrap data keys under the active master key.
    KeysManage,
    /// Take backups (encrypted snapshots of the whole store).
    BackupRead,
}

impl Permission {
    /// Every permission, in documentation order.
    pub const ALL: [Permission; 7] = [
        Permission::CredentialsRead,
        Permission::CredentialsWrite,
        Permission::CredentialsVerify,
        Permission::HeadersRead,
        Permission::AuditRead,
        Permission::KeysManage,
        Permission::BackupRead,
    ];

    /// The name used in the callers file, e.g. `headers.read`.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::CredentialsRead => "credentials.read",
            Permission::CredentialsWrite => "credentials.write",
            Permission::CredentialsVerify => "credentials.verify",
            Permission::HeadersRead => "headers.read",
            Permission::AuditRead => "audit.read",
            Permission::KeysManage => "keys.manage",
            Permission::BackupRead => "backup.read",
        }
    }

    /// Parses a permission name.
    pub fn parse(name: &str) -> Result<Self, CallersError> {
        Permission::ALL
            .into_iter()
            .find(|p| p.as_str() == name)
            .ok_or_else(|| {
                let known: Vec<_> = Permission::ALL.iter().map(|p| p.as_str()).collect();
                CallersError::UnknownPermission {
                    name: name.to_owned(),
                    known: known.join(", "),
                }
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
    /// Globs on credential names the caller may touch; `None` means all.
    scope: Option<Scope>,
}

/// A caller's credential scope: globs on names.
struct Scope {
    patterns: Vec<String>,
    set: globset::GlobSet,
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.patterns).finish()
    }
}

impl Caller {
    /// Whether the caller's scope is limited (so unknown ids must not be told from hidden ones).
    pub fn is_scoped(&self) -> bool {
        self.scope.is_some()
    }

    /// Whether the caller may touch the credential named `name`.
    pub fn in_scope(&self, name: &str) -> bool {
        self.scope.as_ref().is_none_or(|s| s.set.is_match(name))
    }

    /// Fails with `PERMISSION_DENIED` unless `name` is in the caller's scope.
    /// The message is the same whether or not such a credential exists.
    pub fn require_scope(&self, shown: &str, name: Option<&str>) -> Result<(), Error> {
        match name {
            Some(name) if self.in_scope(name) => Ok(()),
            _ => Err(Error::PermissionDenied(format!(
                "caller {:?} may not access credential {shown:?}",
                self.name
            ))),
        }
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    fn callers(token: &str, perms: &[Permission]) -> Callers {
        Callers::from_toml(&callers_entry("worker", token, perms)).unwrap()
    }

    fn md(value: &str) -> Option<http::HeaderValue> {
        Some(value.parse().unwrap())
    }

    #[test]
    fn minted_tokens_authenticate_with_their_permissions() {
        let token = mint_token();
        let c = callers(&token, &[Permission::HeadersRead]);
        let caller = c
            .authenticate(md(&format!("Bearer {}", token.as_str())).as_ref(), &[])
            .unwrap();
        assert_eq!(caller.name, "worker");
        assert!(caller.may(Permission::HeadersRead));
        assert!(caller.require(Permission::CredentialsWrite).is_err());
        assert!(c.authenticate(md("Bearer cv_wrong").as_ref(), &[]).is_err());
        assert!(c.authenticate(md(token.as_str()).as_ref(), &[]).is_err());
        assert!(c.authenticate(None, &[]).is_err());
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
    fn scopes_and_subjects() {
        let digest = "ab".repeat(32);
        let c = Callers::from_toml(&format!(
            "[[caller]]\nname = \"acme\"\ntoken_sha256 = \"{digest}\"\npermissions = []\ncredentials = [\"fleetio-acme-*\", \"fleetio-beta\"]\n\
             [[caller]]\nname = \"mtls\"\ntls_subject = \"worker.internal\"\npermissions = [\"headers.read\"]\n"
        ))
        .unwrap();
        let acme = &c.entries[0].caller;
        assert!(acme.is_scoped());
        assert!(acme.in_scope("fleetio-acme-1") && acme.in_scope("fleetio-beta"));
        assert!(!acme.in_scope("fleetio-betamax") && !acme.in_scope("other"));
        let by_cert = c
            .authenticate(None, &["cn:nope".into(), "dns:worker.internal".into()])
            .unwrap();
        assert_eq!(by_cert.name, "mtls");
        assert!(!by_cert.is_scoped() && by_cert.in_scope("anything"));
        assert!(c.authenticate(None, &["cn:nope".into()]).is_err());
        // An untyped entry keeps its meaning (CN or DNS SAN), with a warning.
        assert_eq!(
            c.authenticate(None, &["cn:worker.internal".into()])
                .unwrap()
                .name,
            "mtls"
        );
        assert_eq!(c.warnings().len(), 1, "{:?}", c.warnings());
    }

    #[test]
    fn a_spiffe_id_matches_a_uri_san_only_and_an_ambiguous_certificate_is_refused() {
        let c = Callers::from_toml(
            "[[caller]]\nname = \"mesh\"\ntls_subject = \"spiffe://cluster.local/ns/i/sa/w\"\npermissions = [\"headers.read\"]\n\
             [[caller]]\nname = \"typed\"\ntls_subject = \"uri:spiffe://cluster.local/ns/i/sa/typed\"\npermissions = [\"headers.read\"]\n\
             [[caller]]\nname = \"ops\"\ntls_subject = \"cn:ops\"\npermissions = [\"credentials.read\"]\n",
        )
        .unwrap();
        // A CN or DNS SAN that spells a SPIFFE id is no URI SAN.
        assert!(c
            .authenticate(None, &["cn:spiffe://cluster.local/ns/i/sa/w".into()])
            .is_err());
        assert!(c
            .authenticate(None, &["dns:spiffe://cluster.local/ns/i/sa/w".into()])
            .is_err());
        assert_eq!(
            c.authenticate(None, &["uri:spiffe://cluster.local/ns/i/sa/w".into()])
                .unwrap()
                .name,
            "mesh"
        );
        assert!(c
            .authenticate(None, &["cn:spiffe://cluster.local/ns/i/sa/typed".into()])
            .is_err());
        assert!(
            c.authenticate(None, &["dns:ops".into()]).is_err(),
            "cn: matches the CN only"
        );
        // One certificate, two callers: refused.
        let both = c.authenticate(
            None,
            &[
                "cn:ops".into(),
                "uri:spiffe://cluster.local/ns/i/sa/typed".into(),
            ],
        );
        assert!(
            matches!(both, Err(Error::Unauthenticated(m)) if m.contains("more than one caller"))
        );
        assert!(Callers::from_toml(
            "[[caller]]\nname = \"x\"\ntls_subject = \"uri:\"\npermissions = []\n"
        )
        .is_err());
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
