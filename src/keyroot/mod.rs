//! Key roots: what protects the master keys when no key file holds them.
//! OpenBao or Vault Transit (`transit`) or a PKCS#11 HSM (`pkcs11`) seals each
//! master key's 32 bytes when it is made and unseals them at start; the store
//! keeps only the sealed form (metadata `sealed_key/<id>`), and the unsealed keys
//! stay in this process's memory, so no secret read or write calls the root.
//!
//! Here the roots a server is configured with ([`Roots`]), what the store keeps
//! ([`SealedKey`]) and the keyring they make at start ([`Roots::keyring`]);
//! `watch` (what the last check found, and the loop that keeps the token alive
//! and follows Transit key versions); `transit` and `pkcs11`, the two clients.

use std::collections::BTreeSet;

use prost::Message;
use zeroize::Zeroizing;

use crate::crypto::{Keyring, MasterKey, KEY_LEN};
use crate::keys::{self, SEALED_KEY_PREFIX};
use crate::store::{Store, StoreError};

pub mod pkcs11;
pub mod transit;
mod watch;

pub use pkcs11::{Hsm, Pkcs11Settings};
pub use transit::{Transit, TransitAuth, TransitSettings};
pub use watch::{watch, RootState};

/// Which root seals the master key that wraps new data keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provider {
    /// The key file or environment: the active key is the keyring's own.
    File,
    /// OpenBao / Vault Transit.
    Transit,
    /// A PKCS#11 HSM.
    Pkcs11,
}

impl Provider {
    /// The name used on the command line and in sealed entries.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::File => "file",
            Provider::Transit => transit::NAME,
            Provider::Pkcs11 => pkcs11::NAME,
        }
    }
}

/// A master key as the store keeps it: sealed by a root, never in plain text.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SealedKey {
    /// The root that sealed it: `transit` or `pkcs11`.
    #[prost(string, tag = "1")]
    pub root: String,
    /// The Transit key's name, or the HSM key's label.
    #[prost(string, tag = "2")]
    pub key_name: String,
    /// The Transit ciphertext (`vault:vN:...`), or the HSM's nonce and ciphertext.
    #[prost(bytes = "vec", tag = "3")]
    pub blob: Vec<u8>,
    /// When it was made (unix seconds): the newest of a root is its active key.
    #[prost(uint64, tag = "4")]
    pub created: u64,
    /// Transit's mount path when it was sealed (empty: the one configured now).
    #[prost(string, tag = "5")]
    pub mount: String,
}

impl SealedKey {
    /// The Transit mount that opens it: its own, or `configured` for an entry without one.
    fn mount_or<'a>(&'a self, configured: &'a str) -> &'a str {
        if self.mount.is_empty() {
            configured
        } else {
            &self.mount
        }
    }
}

/// Why a root could not seal, unseal or confirm.
#[derive(Debug, thiserror::Error)]
pub enum RootError {
    /// It does not answer (or answers 5xx): worth trying again.
    #[error("{root} is unreachable: {why}")]
    Unreachable {
        /// `transit` or `pkcs11`.
        root: &'static str,
        /// Why.
        why: String,
    },
    /// It answers, but refuses this vault: a revoked or expired token, a policy.
    #[error("{root} refused credvault: {why}")]
    Denied {
        /// `transit` or `pkcs11`.
        root: &'static str,
        /// Why.
        why: String,
    },
    /// Misconfigured: a key that does not exist, a wrong PIN, an unreadable file.
    #[error("{root}: {why}")]
    Fatal {
        /// `transit` or `pkcs11`.
        root: &'static str,
        /// Why.
        why: String,
    },
    /// The store could not be read or written.
    #[error("the credential store failed: {0}")]
    Store(#[from] StoreError),
}

impl RootError {
    /// Whether starting again cannot help: the configuration must change.
    pub fn is_fatal(&self) -> bool {
        matches!(self, RootError::Fatal { .. })
    }
}

/// The roots a server is configured with, and which seals its active key.
#[derive(Debug)]
pub struct Roots {
    /// Which root seals the active master key (`File`: the key file's active key).
    pub provider: Provider,
    /// Transit, when configured.
    pub transit: Option<Transit>,
    /// The HSM, when configured.
    pub pkcs11: Option<Hsm>,
    /// What the last check found (for readiness).
    pub state: RootState,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Roots {
    /// Roots as configured; `provider` must be one of them (or `File`).
    pub fn new(provider: Provider, transit: Option<Transit>, pkcs11: Option<Hsm>) -> Self {
        Roots {
            provider,
            transit,
            pkcs11,
            state: RootState::default(),
        }
    }

    /// The configured roots' names, for the log.
    pub fn names(&self) -> String {
        let mut names = Vec::new();
        if self.transit.is_some() {
            names.push(transit::NAME);
        }
        if self.pkcs11.is_some() {
            names.push(pkcs11::NAME);
        }
        names.join(",")
    }

    /// Checks every configured root: Transit's token is valid (and renewed) and
    /// its key exists; the HSM's token opens with the PIN and holds the key.
    /// Answers the Transit key's latest version, when Transit is configured.
    pub async fn check(&self) -> Result<Option<u64>, RootError> {
        let latest = match &self.transit {
            Some(transit) => {
                transit.renew().await?;
                Some(transit.key_version().await?)
            }
            None => None,
        };
        if let Some(hsm) = &self.pkcs11 {
            blocking(hsm, Hsm::check).await?;
        }
        Ok(latest)
    }

    async fn seal(&self, provider: Provider, raw: &[u8; KEY_LEN]) -> Result<SealedKey, RootError> {
        let (key_name, blob) = match provider {
            Provider::Transit => {
                let transit = self.transit.as_ref().expect("checked by the caller");
                (
                    transit.key_name().to_owned(),
                    transit.seal(raw).await?.into_bytes(),
                )
            }
            Provider::Pkcs11 => {
                let hsm = self.pkcs11.as_ref().expect("checked by the caller");
                let raw = Zeroizing::new(*raw);
                let blob = blocking(hsm, move |hsm| hsm.seal(&raw)).await?;
                (hsm.key_label().to_owned(), blob)
            }
            Provider::File => unreachable!("the file root seals nothing"),
        };
        let mount = match (provider, &self.transit) {
            (Provider::Transit, Some(transit)) => transit.mount().to_owned(),
            _ => String::new(),
        };
        Ok(SealedKey {
            root: provider.as_str().to_owned(),
            key_name,
            blob,
            created: unix_now(),
            mount,
        })
    }

    async fn unseal(&self, id: &str, sealed: &SealedKey) -> Result<Option<MasterKey>, RootError> {
        let raw = match sealed.root.as_str() {
            transit::NAME => match &self.transit {
                Some(transit) => {
                    let text = std::str::from_utf8(&sealed.blob).map_err(|_| RootError::Fatal {
                        root: transit::NAME,
                        why: format!("the sealed master key {id} is not a Transit ciphertext"),
                    })?;
                    transit
                        .unseal(sealed.mount_or(transit.mount()), &sealed.key_name, text)
                        .await?
                }
                None => return Ok(None),
            },
            pkcs11::NAME => match &self.pkcs11 {
                Some(hsm) => {
                    let (label, blob) = (sealed.key_name.clone(), sealed.blob.clone());
                    blocking(hsm, move |hsm| hsm.unseal(&label, &blob)).await?
                }
                None => return Ok(None),
            },
            _ => return Ok(None),
        };
        let key = MasterKey::from_bytes(&raw);
        if key.id() != id {
            return Err(RootError::Fatal {
                root: if sealed.root == transit::NAME { transit::NAME } else { pkcs11::NAME },
                why: format!("the sealed master key {id} opened to another key: the store's entry was altered"),
            });
        }
        Ok(Some(key))
    }

    /// The sealed master keys among metadata entries: (id, entry).
    fn sealed_in(meta: Vec<(String, Vec<u8>)>) -> Result<Vec<(String, SealedKey)>, RootError> {
        let mut out = Vec::new();
        for (meta_key, bytes) in meta {
            let Some(id) = meta_key.strip_prefix(SEALED_KEY_PREFIX) else {
                continue;
            };
            let sealed = SealedKey::decode(bytes.as_slice()).map_err(|_| StoreError::Corrupt {
                id: meta_key.clone(),
                reason: "the sealed master key is not readable".into(),
            })?;
            out.push((id.to_owned(), sealed));
        }
        Ok(out)
    }

    /// The sealed master keys in the store: (id, entry).
    async fn sealed<S: Store>(store: &S) -> Result<Vec<(String, SealedKey)>, RootError> {
        Self::sealed_in(store.meta(SEALED_KEY_PREFIX).await?)
    }

    /// The keyring to serve with: `file`'s keys (if any) and every sealed key in
    /// the store that a configured root opens; a sealed key the data needs whose
    /// root is not configured is an error. With a KMS provider, its newest key is
    /// active, made (and sealed, and stored) here on the first start.
    pub async fn keyring<S: Store>(
        &self,
        store: &S,
        file: Option<&Keyring>,
    ) -> Result<Keyring, RootError> {
        self.check().await?;
        let needed: BTreeSet<String> = keys::key_checks(store)
            .await?
            .into_iter()
            .map(|(_, check)| check.key_id)
            .collect();
        let (mut keys, own) = self
            .open_all(Self::sealed(store).await?, &needed, file)
            .await?;
        let active = match (self.provider, own) {
            (Provider::File, _) => file.map(|k| k.active().id().to_owned()),
            (_, Some(id)) => Some(id),
            (provider, None) => {
                let mut raw = Zeroizing::new([0u8; KEY_LEN]);
                rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, raw.as_mut());
                let sealed = self.seal(provider, &raw).await?;
                let key = MasterKey::from_bytes(&raw);
                let id = key.id().to_owned();
                store
                    .put_meta(&format!("{SEALED_KEY_PREFIX}{id}"), &sealed.encode_to_vec())
                    .await?;
                tracing::info!(key_id = %id, root = provider.as_str(), key_name = %sealed.key_name, "made a new master key, sealed by the key root; it wraps new data keys (run RewrapCredentials to move older ones)");
                keys.push(key);
                Some(id)
            }
        };
        self.ring(keys, active)
    }

    /// The keyring that opens a store's data, for commands on a stopped server or
    /// a backup: `file`'s keys and every sealed key among `meta` (a store's or a
    /// backup's metadata) that a configured root opens; nothing is made or stored.
    pub async fn open_keyring(
        &self,
        meta: Vec<(String, Vec<u8>)>,
        file: Option<&Keyring>,
    ) -> Result<Keyring, RootError> {
        self.check().await?;
        let needed: BTreeSet<String> = meta
            .iter()
            .filter(|(k, _)| k.starts_with(keys::KEY_CHECK_PREFIX))
            .filter_map(|(_, v)| crate::crypto::Sealed::decode(v.as_slice()).ok())
            .map(|check| check.key_id)
            .collect();
        let (keys, own) = self.open_all(Self::sealed_in(meta)?, &needed, file).await?;
        let active = own
            .or_else(|| file.map(|k| k.active().id().to_owned()))
            .or_else(|| keys.last().map(|k| k.id().to_owned()));
        self.ring(keys, active)
    }

    fn ring(&self, keys: Vec<MasterKey>, active: Option<String>) -> Result<Keyring, RootError> {
        Keyring::new(keys, active.as_deref()).map_err(|e| RootError::Fatal {
            root: self.provider.as_str(),
            why: e.to_string(),
        })
    }

    /// `file`'s keys and the sealed keys the configured roots open, and the id of
    /// the newest one the active provider sealed. A key in `needed` that no
    /// configured root opens is an error.
    async fn open_all(
        &self,
        sealed_keys: Vec<(String, SealedKey)>,
        needed: &BTreeSet<String>,
        file: Option<&Keyring>,
    ) -> Result<(Vec<MasterKey>, Option<String>), RootError> {
        let mut keys: Vec<MasterKey> = file
            .map(|k| k.keys().cloned().collect())
            .unwrap_or_default();
        let mut active: Option<(u64, String)> = None;
        for (id, sealed) in sealed_keys {
            let ours = sealed.root == self.provider.as_str()
                && self.own_key_name() == Some(sealed.key_name.as_str())
                && self
                    .transit
                    .as_ref()
                    .filter(|_| self.provider == Provider::Transit)
                    .is_none_or(|t| sealed.mount_or(t.mount()) == t.mount());
            match self.unseal(&id, &sealed).await? {
                Some(key) => {
                    if ours && active.as_ref().is_none_or(|(at, _)| sealed.created >= *at) {
                        active = Some((sealed.created, id.clone()));
                    }
                    if !keys.iter().any(|k| k.id() == key.id()) {
                        keys.push(key);
                    }
                }
                None if needed.contains(&id) && !keys.iter().any(|k| k.id() == id) => {
                    return Err(RootError::Fatal {
                        root: if sealed.root == transit::NAME { transit::NAME } else { pkcs11::NAME },
                        why: format!(
                            "the data needs master key {id}, sealed by {} key {:?}, and that root is not configured here (see docs/key-roots.md)",
                            sealed.root, sealed.key_name
                        ),
                    });
                }
                None => {}
            }
        }
        Ok((keys, active.map(|(_, id)| id)))
    }

    /// The key name the active provider seals with.
    fn own_key_name(&self) -> Option<&str> {
        match self.provider {
            Provider::Transit => self.transit.as_ref().map(Transit::key_name),
            Provider::Pkcs11 => self.pkcs11.as_ref().map(Hsm::key_label),
            Provider::File => None,
        }
    }

    /// Rewraps every Transit-sealed key behind `latest`, the Transit key's latest
    /// version (as [`Roots::check`] found it), so that operators may raise its
    /// `min_decryption_version`: how many moved.
    pub async fn follow<S: Store>(&self, store: &S, latest: u64) -> Result<usize, RootError> {
        let Some(transit) = &self.transit else {
            return Ok(0);
        };
        let mut moved = 0;
        for (id, mut sealed) in Self::sealed(store).await? {
            if sealed.root != transit::NAME
                || sealed.key_name != transit.key_name()
                || sealed.mount_or(transit.mount()) != transit.mount()
            {
                continue;
            }
            let text = String::from_utf8_lossy(&sealed.blob).into_owned();
            if transit::ciphertext_version(&text).is_some_and(|v| v >= latest) {
                continue;
            }
            let rewrapped = transit
                .rewrap(sealed.mount_or(transit.mount()), &sealed.key_name, &text)
                .await?;
            sealed.blob = rewrapped.into_bytes();
            store
                .put_meta(&format!("{SEALED_KEY_PREFIX}{id}"), &sealed.encode_to_vec())
                .await?;
            tracing::info!(key_id = %id, version = latest, "the sealed master key follows the Transit key's new version");
            moved += 1;
        }
        Ok(moved)
    }
}

/// Where each master key of `keyring` comes from: `file`, `transit:<mount>/<key>`
/// or `pkcs11:<label>` (what its sealed entry in the store names).
pub async fn key_sources<S: Store>(
    store: &S,
    keyring: &Keyring,
) -> Result<std::collections::BTreeMap<String, String>, RootError> {
    let sealed: std::collections::BTreeMap<String, SealedKey> =
        Roots::sealed(store).await?.into_iter().collect();
    Ok(keyring
        .ids()
        .map(|id| {
            let source = match sealed.get(id) {
                Some(s) if s.root == transit::NAME => {
                    format!("transit:{}/{}", s.mount_or("transit"), s.key_name)
                }
                Some(s) => format!("{}:{}", s.root, s.key_name),
                None => "file".to_owned(),
            };
            (id.to_owned(), source)
        })
        .collect())
}

/// Runs a blocking HSM call off the async threads.
async fn blocking<T: Send + 'static>(
    hsm: &Hsm,
    f: impl FnOnce(&Hsm) -> Result<T, RootError> + Send + 'static,
) -> Result<T, RootError> {
    // The HSM lives as long as the server; a scoped borrow is enough for
    // `block_in_place` on the multi-threaded runtime, and a plain call elsewhere.
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(|| f(hsm)),
        _ => f(hsm),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn readiness_follows_refusals_at_once_and_silence_only_past_the_bound() {
        let state = RootState::default();
        let bound = Duration::from_millis(50);
        // Before the first confirmation (the start waits for one), nothing is stale.
        assert_eq!(state.unready(bound), None);
        state.confirmed();
        let silent = RootError::Unreachable {
            root: transit::NAME,
            why: "connection refused".into(),
        };
        state.failed(&silent);
        assert_eq!(
            state.unready(bound),
            None,
            "silence within the bound serves"
        );
        assert!(!state.stale(bound));
        std::thread::sleep(Duration::from_millis(80));
        let why = state.unready(bound).unwrap();
        assert!(why.contains("connection refused"), "{why}");
        assert!(state.stale(bound));
        assert_eq!(state.unready(Duration::ZERO), None, "no bound: never stale");
        assert!(!state.stale(Duration::ZERO));

        state.confirmed();
        state.failed(&RootError::Denied {
            root: transit::NAME,
            why: "permission denied".into(),
        });
        let why = state.unready(Duration::ZERO).unwrap();
        assert!(why.contains("permission denied"), "{why}");
        assert!(
            !state.stale(Duration::ZERO),
            "a refusal takes readiness, not liveness"
        );
        state.confirmed();
        assert_eq!(state.unready(Duration::ZERO), None);
    }

    #[test]
    fn sealed_keys_round_trip_and_name_their_root() {
        let sealed = SealedKey {
            root: Provider::Transit.as_str().into(),
            key_name: "credvault".into(),
            blob: b"vault:v1:abc".to_vec(),
            created: 1,
            mount: "transit".into(),
        };
        let bytes = sealed.encode_to_vec();
        assert_eq!(SealedKey::decode(bytes.as_slice()).unwrap(), sealed);
        assert_eq!(Provider::Pkcs11.as_str(), "pkcs11");
        assert!(RootError::Fatal {
            root: pkcs11::NAME,
            why: "x".into()
        }
        .is_fatal());
    }
}
