//! The callers file: callers by token digest or certificate subject, with their
//! permissions and scopes, read and checked as a whole.

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CallersFile {
    #[serde(default)]
    pub(super) caller: Vec<CallerEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CallerEntry {
    pub(super) name: String,
    #[serde(default)]
    pub(super) token_sha256: Option<String>,
    /// With mutual TLS: the CN, a DNS SAN or a URI SAN (a SPIFFE id) of the caller's
    /// client certificate.
    #[serde(default)]
    pub(super) tls_subject: Option<String>,
    pub(super) permissions: Vec<String>,
    /// Globs on credential names; absent means every credential.
    #[serde(default)]
    pub(super) credentials: Option<Vec<String>>,
}

pub(super) struct Entry {
    pub(super) digest: [u8; 32],
    pub(super) caller: Arc<Caller>,
}

/// The callers allowed in, by token digest or client-certificate subject.
pub struct Callers {
    pub(super) entries: Vec<Entry>,
    /// Typed certificate names (`uri:…`, `dns:…`, `cn:…`) to the caller each names.
    subjects: std::collections::HashMap<String, Arc<Caller>>,
    /// What deserves a word at start and reload (untyped `tls_subject` entries).
    warnings: Vec<String>,
}

/// The kinds of names a client certificate carries, as `tls_subject` types them.
pub(super) const SUBJECT_KINDS: [&str; 3] = ["uri:", "dns:", "cn:"];

/// The typed certificate names a `tls_subject` entry matches, and a warning for
/// an untyped one. `uri:spiffe://…`, `dns:worker.internal` and `cn:worker` match
/// that kind of name only. An untyped entry keeps its old meaning, with one
/// exception: a URI (a SPIFFE id) matches only a URI SAN, never a CN or DNS name
/// that spells it.
pub(super) fn typed_subjects(
    name: &str,
    subject: &str,
) -> Result<(Vec<String>, Option<String>), String> {
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
    /// A reload found the callers file blank: more likely a write in progress
    /// than a decision to refuse everyone.
    #[error(
        "callers file {} is empty (a write in progress?); to refuse every caller, leave only a comment in it",
        path.display()
    )]
    Blank {
        /// The callers file.
        path: std::path::PathBuf,
    },
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
        Self::from_file(path, false)
    }

    /// Reads a callers file again: as [`Callers::load`], but a blank file is refused.
    pub fn reload(path: &Path) -> Result<Self, CallersError> {
        Self::from_file(path, true)
    }

    fn from_file(path: &Path, refuse_blank: bool) -> Result<Self, CallersError> {
        let text = std::fs::read_to_string(path).map_err(|source| CallersError::Read {
            path: path.to_owned(),
            source,
        })?;
        if refuse_blank && text.trim().is_empty() {
            return Err(CallersError::Blank {
                path: path.to_owned(),
            });
        }
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
