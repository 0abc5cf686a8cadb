//! The keyring against the store: key checks that pin each master key id to its
//! bytes, the per-key count of seals, and the rewrap of data keys after a rotation.
//!
//! Invariant: every master key id that some record depends on has a key check in
//! the store. A key gets its check before it seals anything (when it becomes
//! active) and loses it only when a full rewrap found no record still using it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use prost::Message;

use crate::crypto::{Keyring, Sealed};
use crate::store::{Store, StoreError};

/// Prefix of the metadata entries that hold key checks (`key_check/<id>`; a
/// lone `key_check` entry is the one check of a store made before keyrings).
pub const KEY_CHECK_PREFIX: &str = "key_check";
/// Prefix of the metadata entries that hold master keys sealed by a key root
/// (`sealed_key/<id>`): dropped with their key check when no record uses the key.
pub const SEALED_KEY_PREFIX: &str = "sealed_key/";
/// How many seals one durable reservation covers.
const SEAL_RESERVATION: u64 = 1 << 16;
/// Random 96-bit nonces are safe for 2^32 seals per key (NIST SP 800-38D, 8.3).
pub const SEAL_LIMIT: u64 = 1 << 32;
/// Past this many seals a key is reported as due for rotation.
pub const SEAL_WARNING: u64 = 1 << 31;

/// Why a keyring does not fit the data.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    /// The data depends on a key the keyring lacks.
    #[error("the master key does not open this data directory: its data needs key id {needed}, which the keyring (key ids: {held}) lacks; add that key to the keyring")]
    MissingKey {
        /// The key id the data needs.
        needed: String,
        /// The key ids the keyring holds.
        held: String,
    },
    /// A key of the keyring has the id of a key the data knows, but other bytes.
    #[error("the master key does not open this data directory: the keyring's key {id} is not the key the data knows by that id")]
    WrongKey {
        /// The key id.
        id: String,
    },
    /// Records exist but no key check does: the directory is not one credvault made whole.
    #[error("the data directory holds credentials but no key-check value; it was not made by credvault or is damaged")]
    MissingKeyCheck,
    /// A key check could not be read or written.
    #[error("the credential store failed: {0}")]
    Store(#[from] StoreError),
}

/// The key checks in the store: (metadata key, check).
pub async fn key_checks<S: Store>(store: &S) -> Result<Vec<(String, Sealed)>, StoreError> {
    store
        .meta(KEY_CHECK_PREFIX)
        .await?
        .into_iter()
        .map(|(key, bytes)| {
            Sealed::decode(bytes.as_slice())
                .map(|check| (key.clone(), check))
                .map_err(|_| StoreError::Corrupt {
                    id: key,
                    reason: "the key-check value is not readable".into(),
                })
        })
        .collect()
}

/// Checks that `keyring` holds, byte for byte, every key the data needs, and
/// records a key check for its active key if it has none yet.
pub async fn check_keyring<S: Store>(store: &S, keyring: &Keyring) -> Result<(), KeyringError> {
    let checks = key_checks(store).await?;
    if checks.is_empty() && store.count().await? > 0 {
        return Err(KeyringError::MissingKeyCheck);
    }
    keyring_holds(keyring, checks.iter().map(|(_, c)| c))?;
    let active = keyring.active();
    if !checks.iter().any(|(_, c)| c.key_id == active.id()) {
        let key = format!("{KEY_CHECK_PREFIX}/{}", active.id());
        store
            .put_meta(&key, &active.key_check().encode_to_vec())
            .await?;
    }
    Ok(())
}

/// Checks that `keyring` holds, byte for byte, the key of every check.
pub fn keyring_holds<'a>(
    keyring: &Keyring,
    checks: impl IntoIterator<Item = &'a Sealed>,
) -> Result<(), KeyringError> {
    for check in checks {
        match keyring.get(&check.key_id) {
            None => {
                return Err(KeyringError::MissingKey {
                    needed: check.key_id.clone(),
                    held: keyring.ids().collect::<Vec<_>>().join(", "),
                })
            }
            Some(key) if !key.matches(check) => {
                return Err(KeyringError::WrongKey {
                    id: check.key_id.clone(),
                })
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Prefix of the metadata entries where each running server announces its
/// active key: `active/<instance>` holds `<key id> <unix seconds>`.
const ACTIVE_PREFIX: &str = "active/";
/// How often a server renews its announcement.
pub const ANNOUNCE_EVERY: std::time::Duration = std::time::Duration::from_secs(30);
/// An announcement older than this is a server that is gone.
const ANNOUNCEMENT_TTL: u64 = 120;

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Records that server `instance` wraps new data keys with `key_id`, so a
/// rewrap elsewhere does not retire that key while this server still uses it.
pub async fn announce_active<S: Store>(
    store: &S,
    instance: &str,
    key_id: &str,
) -> Result<(), StoreError> {
    let value = format!("{key_id} {}", unix_now());
    store
        .put_meta(&format!("{ACTIVE_PREFIX}{instance}"), value.as_bytes())
        .await
}

/// Withdraws server `instance`'s announcement (at shutdown).
pub async fn withdraw_active<S: Store>(store: &S, instance: &str) -> Result<(), StoreError> {
    store
        .remove_meta(&format!("{ACTIVE_PREFIX}{instance}"))
        .await
}

/// The key ids that running servers (this one included) announced as active within the TTL.
async fn announced_active<S: Store>(store: &S) -> Result<BTreeSet<String>, StoreError> {
    let now = unix_now();
    Ok(store
        .meta(ACTIVE_PREFIX)
        .await?
        .into_iter()
        .filter_map(|(_, value)| {
            let text = String::from_utf8(value).ok()?;
            let (key_id, at) = text.split_once(' ')?;
            let at: u64 = at.parse().ok()?;
            (now.saturating_sub(at) <= ANNOUNCEMENT_TTL).then(|| key_id.to_owned())
        })
        .collect())
}

/// Drops the key checks of keys no record uses any more; never the active key's,
/// nor one that a running server announced as its active key.
///
/// The checks are read before the announcements, and a server announces a new
/// active key before it writes that key's check: so a check seen here for a key
/// about to become active always comes with its announcement.
pub async fn retire_unused<S: Store>(
    store: &S,
    active: &str,
    referenced: &BTreeMap<String, u64>,
) -> Result<Vec<String>, StoreError> {
    let checks = key_checks(store).await?;
    let in_use = announced_active(store).await?;
    let mut retired = Vec::new();
    for (meta_key, check) in checks {
        let id = &check.key_id;
        if id != active && !referenced.contains_key(id) && !in_use.contains(id) {
            store.remove_meta(&meta_key).await?;
            store
                .remove_meta(&format!("{SEALED_KEY_PREFIX}{id}"))
                .await?;
            retired.push(check.key_id);
        }
    }
    Ok(retired)
}

/// Why a seal was refused.
#[derive(Debug, thiserror::Error)]
pub enum SealRefused {
    /// The key has sealed as much as random nonces allow.
    #[error("master key {0} has sealed {SEAL_LIMIT} data keys, the most random 96-bit nonces allow; add a new key to the keyring, make it active and rewrap")]
    Exhausted(String),
    /// The count could not be made durable.
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// The block of seal numbers this process may use for one key: `next..end`.
#[derive(Clone, Copy, Debug, Default)]
struct Block {
    next: u64,
    end: u64,
}

/// Seals made by each master key, counted in blocks reserved atomically in the
/// store: several processes sharing a store never reuse a number, and a crash
/// can only over-count, never under-count.
#[derive(Debug)]
pub struct SealCounter {
    blocks: tokio::sync::Mutex<HashMap<String, Block>>,
    warning: u64,
    limit: u64,
    block: u64,
}

impl SealCounter {
    /// A counter with the real thresholds; reports keys already past the warning.
    pub async fn load<S: Store>(store: &S) -> Result<Self, StoreError> {
        Self::load_with_limits(store, SEAL_WARNING, SEAL_LIMIT, SEAL_RESERVATION).await
    }

    /// As [`SealCounter::load`], with other thresholds and block size (for tests).
    pub async fn load_with_limits<S: Store>(
        store: &S,
        warning: u64,
        limit: u64,
        block: u64,
    ) -> Result<Self, StoreError> {
        for (id, reserved) in store.seal_reservations().await? {
            if reserved >= warning {
                tracing::warn!(key_id = %id, seals = reserved, "{}", due(&id, reserved));
            }
            crate::metrics::set_seals(&id, reserved);
        }
        Ok(SealCounter {
            blocks: tokio::sync::Mutex::new(HashMap::new()),
            warning,
            limit,
            block,
        })
    }

    /// Counts one seal by `key_id`, or refuses it past the limit.
    pub async fn count<S: Store>(&self, store: &S, key_id: &str) -> Result<(), SealRefused> {
        let mut blocks = self.blocks.lock().await;
        let block = blocks.entry(key_id.to_owned()).or_default();
        if block.next >= block.end {
            let end = store.reserve_seals(key_id, self.block).await?;
            let start = end.saturating_sub(self.block);
            if start < self.warning && end >= self.warning {
                tracing::warn!(key_id, seals = end, "{}", due(key_id, end));
            }
            crate::metrics::set_seals(key_id, end);
            *block = Block { next: start, end };
        }
        if block.next >= self.limit {
            return Err(SealRefused::Exhausted(key_id.to_owned()));
        }
        block.next += 1;
        Ok(())
    }
}

fn due(id: &str, seals: u64) -> String {
    format!(
        "master key {id} has sealed {seals} data keys; random nonces are safe for {SEAL_LIMIT}: add a new key to the keyring, make it active and rewrap"
    )
}

/// How far a rewrap has come.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RewrapProgress {
    /// Records when the rewrap began (new ones are scanned too).
    pub total: u64,
    /// Records looked at so far.
    pub scanned: u64,
    /// Records whose data key was re-sealed under the active key.
    pub rewrapped: u64,
    /// Ids of records that could not be read or opened (left as they were).
    pub failed: Vec<String>,
}

/// The outcome of a finished rewrap.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RewrapReport {
    /// The final counts.
    pub progress: RewrapProgress,
    /// The active key's id.
    pub active_key_id: String,
    /// Records per master key id that still depend on it.
    pub referenced: BTreeMap<String, u64>,
    /// Key ids no record depends on any more; their key checks were dropped,
    /// and they may be removed from the keyring.
    pub retired: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::prelude::*;
    use crate::store::SledStore;

    fn store(dir: &std::path::Path) -> SledStore {
        SledStore::open(&dir.join("db")).unwrap()
    }

    #[tokio::test]
    async fn seals_are_counted_durably_and_refused_past_the_limit() {
        let dir = tempfile::TempDir::new().unwrap();
        {
            let s = store(dir.path());
            let counter = SealCounter::load_with_limits(&s, 3, 5, 2).await.unwrap();
            for _ in 0..5 {
                counter.count(&s, "k1").await.unwrap();
            }
            assert!(matches!(
                counter.count(&s, "k1").await,
                Err(SealRefused::Exhausted(id)) if id == "k1"
            ));
            // Another key has its own budget.
            counter.count(&s, "k2").await.unwrap();
            // A second process on the same store gets other numbers, and the limit holds.
            let other = SealCounter::load_with_limits(&s, 3, 5, 2).await.unwrap();
            assert!(other.count(&s, "k1").await.is_err());
            other.count(&s, "k2").await.unwrap();
            s.flush().await.unwrap();
        }
        // After a restart (or a crash) a key never counts fewer seals than it made.
        let s = store(dir.path());
        let reserved: HashMap<String, u64> =
            s.seal_reservations().await.unwrap().into_iter().collect();
        assert!(reserved["k1"] >= 5 && reserved["k2"] >= 4, "{reserved:?}");
        let counter = SealCounter::load_with_limits(&s, 3, 5, 2).await.unwrap();
        assert!(counter.count(&s, "k1").await.is_err());
    }

    #[tokio::test]
    async fn key_checks_pin_ids_to_bytes_and_retire_only_unused_keys() {
        use crate::crypto::MasterKey;
        let dir = tempfile::TempDir::new().unwrap();
        let s = store(dir.path());
        let (a, b) = (MasterKey::generate_base64(), MasterKey::generate_base64());
        let named = |id: &str, k: &str| MasterKey::from_base64_named(id, k).unwrap();
        check_keyring(&s, &Keyring::single(named("k1", &a)))
            .await
            .unwrap();
        // k1 with other bytes is refused; a ring without k1 is refused.
        assert!(matches!(
            check_keyring(&s, &Keyring::single(named("k1", &b))).await,
            Err(KeyringError::WrongKey { .. })
        ));
        assert!(matches!(
            check_keyring(&s, &Keyring::single(named("k2", &b))).await,
            Err(KeyringError::MissingKey { needed, .. }) if needed == "k1"
        ));
        let both = Keyring::new(vec![named("k1", &a), named("k2", &b)], None).unwrap();
        check_keyring(&s, &both).await.unwrap();
        let in_use = BTreeMap::from([("k1".to_owned(), 1)]);
        assert!(retire_unused(&s, "k2", &in_use).await.unwrap().is_empty());
        let in_use = BTreeMap::from([("k2".to_owned(), 1)]);
        // Another server still wraps with k1: not retired while its announcement is fresh.
        announce_active(&s, "other", "k1").await.unwrap();
        assert!(retire_unused(&s, "k2", &in_use).await.unwrap().is_empty());
        withdraw_active(&s, "other").await.unwrap();
        assert_eq!(retire_unused(&s, "k2", &in_use).await.unwrap(), vec!["k1"]);
        check_keyring(&s, &Keyring::single(named("k2", &b)))
            .await
            .unwrap();
    }
}
