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
    #[serde(default)]
    token_sha256: Option<String>,
    /// With mutual TLS: the CN, a DNS SAN or a URI SAN (a SPIFFE id) of the caller's
    /// client certificate.
    #[serde(default)]
    tls_subject: Option<String>,
    permissions: Vec<String>,
    /// Globs on credential names; absent means every credential.
    #[serde(default)]
    credentials: Option<Vec<String>>,
}

struct Entry {
    digest: [u8; 32],
    caller: Arc<Caller>,
}

/// The callers allowed in, by token digest or client-certificate subject.
pub struct Callers {
    entries: Vec<Entry>,
    /// Typed certificate names (`uri:…`, `dns:…`, `cn:…`) to the caller each names.
    subjects: std::collections::HashMap<String, Arc<Caller>>,
    /// What deserves a word at start and reload (untyped `tls_subject` entries).
    warnings: Vec<String>,
}

/// The kinds of names a client certificate carries, as `tls_subject` types them.
const SUBJECT_KINDS: [&str; 3] = ["uri:", "dns:", "cn:"];

/// The typed certificate names a `tls_subject` entry matches, and a warning for
/// an untyped one. `uri:spiffe://…`, `dns:worker.internal` and `cn:worker` match
/// that kind of name only. An untyped entry keeps its old meaning, with one
/// exception: a URI (a SPIFFE id) matches only a URI SAN, never a CN or DNS name
/// that spells it.
fn typed_subjects(name: &str, subject: &str) -> Result<(Vec<String>, Option<String>), String> {
    if let Some(kind) = SUBJECT_KINDS.iter().find(|k| subject.starts_with(**k)) {
        if subject.len() == kind.len() {
            return Err(format!(
                "caller {name:?}: tls_subject {subject:?} names nothing after {kind:?}"
            ));
        }
        return Ok((vec![subject.to_owned()], None));
    }
    let (typed, meaning) = if subject.contains("://") {
        (vec![format!("uri:{subject}")], "a URI SAN only")
    } else {
        (
            vec![format!("cn:{subject}"), format!("dns:{subject}")],
            "the certificate's CN or a DNS SAN",
        )
    };
    let warning = format!(
        "caller {name:?}: tls_subject {subject:?} has no type; it matches {meaning}. Write {:?} to say which",
        typed[0]
    );
    Ok((typed, Some(warning)))
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

/// Why callers could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CallersError {
    /// A permission name no version knows.
    /// A permission name no permission has.
    #[error("unknown permission {name:?} (known: {known})")]
    UnknownPermission {
        /// The name given.
        name: String,
        /// The names there are.
        known: String,
    },
    /// The callers text is not a valid callers file (the message says where).
    #[error("{0}")]
    Invalid(String),
    /// The callers file could not be read.
    #[error("cannot read callers file {}: {source}", path.display())]
    Read {
        /// The callers file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The callers file was read but is not valid.
    #[error("callers file {}: {why}", path.display())]
    InFile {
        /// The callers file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        why: Box<CallersError>,
    },
    /// A reload was asked for, but callers were not read from a file.
    #[error("no callers file to reload")]
    NoFile,
}

impl Callers {
    /// Parses a callers file's text.
    pub fn from_toml(text: &str) -> Result<Self, CallersError> {
        Self::parse(text).map_err(CallersError::Invalid)
    }

    fn parse(text: &str) -> Result<Self, String> {
        let file: CallersFile = toml::from_str(text).map_err(|e| e.message().to_owned())?;
        let mut names = HashSet::new();
        let mut digests = HashSet::new();
        let mut entries = Vec::with_capacity(file.caller.len());
        let mut subjects = std::collections::HashMap::new();
        let mut warnings = Vec::new();
        for entry in file.caller {
            let name = entry.name.trim().to_owned();
            if name.is_empty() {
                return Err("a caller has an empty name".into());
            }
            if !names.insert(name.clone()) {
                return Err(format!("caller {name:?} is listed twice"));
            }
            let mut permissions = 0u8;
            for p in &entry.permissions {
                permissions |= Permission::parse(p)
                    .map_err(|e| format!("caller {name:?}: {e}"))?
                    .bit();
            }
            let scope = match entry.credentials {
                None => None,
                Some(patterns) => {
                    let mut builder = globset::GlobSetBuilder::new();
                    for p in &patterns {
                        let glob = globset::GlobBuilder::new(p)
                            .literal_separator(false)
                            .build()
                            .map_err(|e| {
                                format!("caller {name:?}: bad credentials glob {p:?}: {e}")
                            })?;
                        builder.add(glob);
                    }
                    let set = builder
                        .build()
                        .map_err(|e| format!("caller {name:?}: {e}"))?;
                    Some(Scope { patterns, set })
                }
            };
            let caller = Arc::new(Caller {
                name: name.clone(),
                permissions,
                scope,
            });
            if entry.token_sha256.is_none() && entry.tls_subject.is_none() {
                return Err(format!("caller {name:?} needs token_sha256 or tls_subject"));
            }
            if let Some(hex_digest) = entry.token_sha256 {
                let digest: [u8; 32] = hex::decode(hex_digest.trim())
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
                entries.push(Entry {
                    digest,
                    caller: Arc::clone(&caller),
                });
            }
            if let Some(subject) = entry.tls_subject {
                let subject = subject.trim().to_owned();
                if subject.is_empty() {
                    return Err(format!("caller {name:?}: tls_subject is empty"));
                }
                let (typed, warning) = typed_subjects(&name, &subject)?;
                warnings.extend(warning);
                for t in typed {
                    if subjects.insert(t.clone(), Arc::clone(&caller)).is_some() {
                        return Err(format!(
                            "caller {name:?}: tls_subject {subject:?} names {t:?}, which another caller names too"
                        ));
                    }
                }
            }
        }
        Ok(Callers {
            entries,
            subjects,
            warnings,
        })
    }

    /// What deserves a word when the file comes in force (untyped `tls_subject`s).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Reads and parses a callers file.
    pub fn load(path: &Path) -> Result<Self, CallersError> {
        let text = std::fs::read_to_string(path).map_err(|source| CallersError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text).map_err(|why| CallersError::InFile {
            path: path.to_owned(),
            why: Box::new(why),
        })
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
        self.find_digest(&token_digest(token))
    }

    /// The caller whose token digest is `digest`, comparing every entry in constant time.
    fn find_digest(&self, digest: &[u8; 32]) -> Option<Arc<Caller>> {
        let mut index = 0u32;
        let mut any = Choice::from(0);
        // No early exit: every entry is compared, whichever matches.
        for (i, entry) in self.entries.iter().enumerate() {
            let hit = entry.digest.ct_eq(digest);
            index.conditional_assign(&(i as u32), hit);
            any |= hit;
        }
        bool::from(any).then(|| Arc::clone(&self.entries[index as usize].caller))
    }

    /// Authenticates a request: by its `authorization: Bearer <token>` header when
    /// present, else by the subjects (CN, DNS SANs) of a verified client certificate.
    pub fn authenticate(
        &self,
        authorization: Option<&http::HeaderValue>,
        cert_subjects: &[String],
    ) -> Result<Arc<Caller>, Error> {
        self.identify(authorization, cert_subjects)
            .map(|(caller, _)| caller)
    }

    /// As [`Callers::authenticate`], also returning what the caller proved, so that
    /// a long-lived call can ask again after the callers file is reloaded.
    pub fn identify(
        &self,
        authorization: Option<&http::HeaderValue>,
        cert_subjects: &[String],
    ) -> Result<(Arc<Caller>, Identity), Error> {
        let Some(value) = authorization else {
            // Every caller the certificate's typed names point at: one, or refused.
            let mut found: Option<(Arc<Caller>, &String)> = None;
            for s in cert_subjects {
                if let Some(c) = self.subjects.get(s) {
                    match &found {
                        Some((first, _)) if !Arc::ptr_eq(first, c) => {
                            tracing::warn!(
                                callers = %format!("{}, {}", first.name, c.name),
                                "a client certificate names more than one caller; refused"
                            );
                            return Err(Error::Unauthenticated(
                                "the client certificate names more than one caller (see tls_subject in the callers file); it is refused",
                            ));
                        }
                        Some(_) => {}
                        None => found = Some((Arc::clone(c), s)),
                    }
                }
            }
            return found
                .map(|(c, s)| (c, Identity::Subject(s.clone())))
                .ok_or(Error::Unauthenticated(
                    "missing credentials: send `authorization: Bearer <token>` metadata or a known client certificate",
                ));
        };
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
        let digest = token_digest(token);
        self.find_digest(&digest)
            .map(|caller| (caller, Identity::Token(digest)))
            .ok_or(Error::Unauthenticated("invalid bearer token"))
    }

    /// The caller that `identity` names in this set of callers, if it still does.
    pub fn reidentify(&self, identity: &Identity) -> Option<Arc<Caller>> {
        match identity {
            Identity::Token(digest) => self.find_digest(digest),
            Identity::Subject(subject) => self.subjects.get(subject).cloned(),
        }
    }
}

/// What a caller proved to be let in: a bearer token (kept as its digest) or a
/// client-certificate subject.
#[derive(Clone, PartialEq, Eq)]
pub enum Identity {
    /// The SHA-256 of the bearer token.
    Token([u8; 32]),
    /// The certificate subject that named the caller.
    Subject(String),
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Token(_) => f.write_str("Token([REDACTED])"),
            Identity::Subject(s) => f.debug_tuple("Subject").field(s).finish(),
        }
    }
}

/// The names a client certificate (DER) speaks for, typed by where they stand:
/// `cn:` its subject CN, `dns:` its DNS SANs and `uri:` its URI SANs (SPIFFE ids
/// such as `spiffe://cluster.local/ns/ingest/sa/worker`, what service meshes
/// issue), so that a CN can never pass for a SPIFFE id. The certificate was already verified against
/// `--client-ca` by the TLS layer, which also refuses one whose extended key usage
/// does not allow client authentication.
pub fn certificate_subjects(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let mut names: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(|cn| format!("cn:{cn}")))
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(dns) => {
                    names.push(format!("dns:{dns}"))
                }
                x509_parser::extensions::GeneralName::URI(uri) => names.push(format!("uri:{uri}")),
                _ => {}
            }
        }
    }
    names
}

/// The live set of callers, replaced whole on reload.
#[derive(Debug)]
pub struct CallerRegistry {
    current: std::sync::RwLock<Arc<Callers>>,
    path: Option<std::path::PathBuf>,
    /// Counts reloads, so long-lived calls learn of each one.
    reloads: tokio::sync::watch::Sender<u64>,
}

impl CallerRegistry {
    /// A registry that reloads from `path` (or never, without one).
    pub fn new(callers: Callers, path: Option<std::path::PathBuf>) -> Self {
        for w in callers.warnings() {
            tracing::warn!("{w}");
        }
        CallerRegistry {
            current: std::sync::RwLock::new(Arc::new(callers)),
            path,
            reloads: tokio::sync::watch::channel(0).0,
        }
    }

    /// Changes each time a new set of callers comes in force.
    pub fn reloads(&self) -> tokio::sync::watch::Receiver<u64> {
        self.reloads.subscribe()
    }

    /// The callers now in force.
    pub fn current(&self) -> Arc<Callers> {
        Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// The file the callers come from, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Re-reads the callers file; on any error keeps the current set and says why.
    pub fn reload(&self) -> Result<usize, CallersError> {
        let path = self.path.as_deref().ok_or(CallersError::NoFile)?;
        let callers = Callers::load(path)?;
        for w in callers.warnings() {
            tracing::warn!("{w}");
        }
        let count = callers.len();
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(callers);
        self.reloads.send_modify(|n| *n += 1);
        Ok(count)
    }
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
