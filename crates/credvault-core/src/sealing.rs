//! Sealing a credential's secret, in one place: the associated data that binds
//! each record format's ciphertexts to their record (format 3: also to the version
//! and seal; format 4: also to the name), sealing under a new data key wrapped by the active master key and
//! mixed with a new erasable key kept by the store (every seal counted), opening
//! under the keyring, and rewrapping data keys, kept versions' too. It knows
//! records and keys, not providers or their HTTP clients, so restore and rewrap
//! open secrets without them.

use std::sync::{Arc, PoisonError, RwLock};

use zeroize::Zeroizing;

use crate::crypto::{Keyring, OpenError};
use crate::keys::{SealCounter, SealRefused};
use crate::record::{
    CredentialRecord, ErasableKey, SecretVersion, RECORD_FORMAT, RECORD_FORMAT_DIRECT,
    RECORD_FORMAT_VERSIONED,
};
use crate::store::Store;

fn aad(parts: &[&[u8]]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(64);
    for part in parts {
        aad.extend_from_slice(part);
        aad.push(0);
    }
    aad
}

/// The label of the subkey that authenticates records.
const RECORD_MAC_LABEL: &[u8] = b"credvault/record-mac/v1";

/// Why a record's MAC does not verify.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum MacError {
    /// The record has no MAC.
    #[error("it carries no MAC")]
    Missing,
    /// The MAC's master key is not in the keyring.
    #[error("its MAC was made by master key {0}, which the keyring lacks")]
    UnknownKey(String),
    /// The MAC does not match the record.
    #[error("its MAC does not verify: a field was changed in the store")]
    Mismatch,
}

fn record_mac(key: &crate::crypto::MasterKey, record: &CredentialRecord) -> Vec<u8> {
    use hmac::{Hmac, Mac};
    let subkey = key.derive_subkey(RECORD_MAC_LABEL);
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(subkey.as_ref())
        .expect("hmac takes any key length");
    mac.update(&record.mac_input());
    mac.finalize().into_bytes().to_vec()
}

/// Authenticates `record` as it is now under the active key (after its last change).
pub fn authenticate(keyring: &Keyring, record: &mut CredentialRecord) {
    let key = keyring.active();
    record.mac = record_mac(key, record);
    key.id().clone_into(&mut record.mac_key_id);
}

/// Checks `record`'s MAC with the key it names.
pub fn verify_mac(keyring: &Keyring, record: &CredentialRecord) -> Result<(), MacError> {
    use subtle::ConstantTimeEq as _;
    if record.mac.is_empty() {
        return Err(MacError::Missing);
    }
    let key = keyring
        .get(&record.mac_key_id)
        .ok_or_else(|| MacError::UnknownKey(record.mac_key_id.clone()))?;
    if bool::from(record_mac(key, record).ct_eq(&record.mac)) {
        Ok(())
    } else {
        Err(MacError::Mismatch)
    }
}

/// Format 1: the associated data that binds a secret sealed by a master key to its record and key.
pub fn direct_secret_aad(id: &str, provider: &str, key_id: &str) -> Vec<u8> {
    aad(&[
        b"credvault/secret/v1",
        id.as_bytes(),
        provider.as_bytes(),
        key_id.as_bytes(),
    ])
}

/// The associated data that binds a secret sealed by a data key to its record.
pub fn secret_aad(id: &str, provider: &str) -> Vec<u8> {
    aad(&[b"credvault/secret/v2", id.as_bytes(), provider.as_bytes()])
}

/// The associated data that binds a wrapped data key to its record.
pub fn data_key_aad(id: &str) -> Vec<u8> {
    aad(&[b"credvault/data-key/v1", id.as_bytes()])
}

/// Format 3: the associated data that binds a secret to its record, provider and version.
pub fn versioned_secret_aad(id: &str, provider: &str, version: u64) -> Vec<u8> {
    aad(&[
        b"credvault/secret/v3",
        id.as_bytes(),
        provider.as_bytes(),
        &version.to_be_bytes(),
    ])
}

/// Format 4: the associated data that binds a secret to its record, its name, its provider and version.
pub fn named_secret_aad(id: &str, name: &str, provider: &str, version: u64) -> Vec<u8> {
    aad(&[
        b"credvault/secret/v4",
        id.as_bytes(),
        name.as_bytes(),
        provider.as_bytes(),
        &version.to_be_bytes(),
    ])
}

/// The associated data of a format 3 or 4 secret of `record` at `version`.
fn bound_secret_aad(format: u32, record: &CredentialRecord, version: u64) -> Vec<u8> {
    if format == RECORD_FORMAT {
        named_secret_aad(&record.id, &record.name, &record.provider, version)
    } else {
        versioned_secret_aad(&record.id, &record.provider, version)
    }
}

/// Format 3: the associated data that binds a wrapped data key to its record and seal.
pub fn sealed_data_key_aad(id: &str, seal_id: u64) -> Vec<u8> {
    aad(&[
        b"credvault/data-key/v2",
        id.as_bytes(),
        &seal_id.to_be_bytes(),
    ])
}

/// Opens a record's secret with `keyring`: the plaintext its provider encoded.
pub fn open_record(
    keyring: &Keyring,
    record: &CredentialRecord,
) -> Result<Zeroizing<Vec<u8>>, OpenError> {
    let secret = record.secret.as_ref().ok_or(OpenError::Failed)?;
    if record.format == RECORD_FORMAT || record.format == RECORD_FORMAT_VERSIONED {
        let data_key = record.data_key.as_ref().ok_or(OpenError::Failed)?;
        return keyring.open_envelope_mixed(
            data_key,
            &sealed_data_key_aad(&record.id, record.seal_id),
            secret,
            &bound_secret_aad(record.format, record, record.secret_version),
            record.erasable_key(record.seal_id),
        );
    }
    if record.format == RECORD_FORMAT_DIRECT {
        let aad = direct_secret_aad(&record.id, &record.provider, &secret.key_id);
        keyring
            .get(&secret.key_id)
            .ok_or_else(|| OpenError::UnknownKey(secret.key_id.clone()))
            .and_then(|key| key.open(secret, &aad))
    } else {
        let data_key = record.data_key.as_ref().ok_or(OpenError::Failed)?;
        keyring.open_envelope(
            data_key,
            &data_key_aad(&record.id),
            secret,
            &secret_aad(&record.id, &record.provider),
        )
    }
}

/// Opens a kept version of a record's secret; [`OpenError::Erased`] once destroyed.
pub fn open_version(
    keyring: &Keyring,
    record: &CredentialRecord,
    version: &SecretVersion,
) -> Result<Zeroizing<Vec<u8>>, OpenError> {
    let (Some(secret), Some(data_key)) = (&version.secret, &version.data_key) else {
        return Err(OpenError::Erased);
    };
    keyring.open_envelope_mixed(
        data_key,
        &sealed_data_key_aad(&record.id, version.seal_id),
        secret,
        &bound_secret_aad(version.format, record, version.version),
        record.erasable_key(version.seal_id),
    )
}

/// A new seal id: random, never 0.
fn new_seal_id() -> u64 {
    loop {
        let id = rand::random::<u64>();
        if id != 0 {
            return id;
        }
    }
}

/// Why a record could not be sealed or rewrapped.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// Its secret could not be opened (to rewrap it).
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The active key may not seal again, or its count could not be kept.
    #[error(transparent)]
    Refused(#[from] SealRefused),
}

/// The keyring in use and the count of its seals.
pub struct Sealer {
    keyring: RwLock<Arc<Keyring>>,
    seals: SealCounter,
}

impl Sealer {
    /// A sealer over a keyring whose check against the store has passed.
    pub fn new(keyring: impl Into<Arc<Keyring>>, seals: SealCounter) -> Self {
        Sealer {
            keyring: RwLock::new(keyring.into()),
            seals,
        }
    }

    /// The keyring in use.
    pub fn keyring(&self) -> Arc<Keyring> {
        Arc::clone(&self.keyring.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Uses `keyring` from now on (checked by the caller).
    pub fn set_keyring(&self, keyring: Keyring) {
        *self.keyring.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keyring);
    }

    /// Seals `plaintext` into `record` (whose id, name, provider and `secret_version`
    /// are set) as format 4: a new data key wrapped by the active master key, mixed
    /// with a new erasable key that the store keeps (durably, before the record
    /// is written). The seal is counted first.
    pub async fn seal<S: Store>(
        &self,
        store: &S,
        record: &mut CredentialRecord,
        plaintext: &[u8],
    ) -> Result<(), SealRefused> {
        let (seal_id, envelope) = self
            .seal_version(
                store,
                &record.id,
                &record.name,
                &record.provider,
                record.secret_version,
                plaintext,
            )
            .await?;
        record.format = RECORD_FORMAT;
        record.seal_id = seal_id.seal_id;
        record.secret = Some(envelope.0);
        record.data_key = Some(envelope.1);
        record.erasable.push(seal_id);
        Ok(())
    }

    /// Seals `plaintext` as version `version` of credential `id` named `name`:
    /// its erasable key (stored) and its sealed secret and wrapped data key.
    #[allow(clippy::too_many_arguments)]
    pub async fn seal_version<S: Store>(
        &self,
        store: &S,
        id: &str,
        name: &str,
        provider: &str,
        version: u64,
        plaintext: &[u8],
    ) -> Result<(ErasableKey, (crate::crypto::Sealed, crate::crypto::Sealed)), SealRefused> {
        let keyring = self.keyring();
        self.seals.count(store, keyring.active().id()).await?;
        let seal_id = new_seal_id();
        let erasable = crate::crypto::erasable_key();
        store
            .put_erasable(id, seal_id, &erasable)
            .await
            .map_err(SealRefused::Store)?;
        let envelope = keyring.seal_envelope_mixed(
            &sealed_data_key_aad(id, seal_id),
            &named_secret_aad(id, name, provider, version),
            plaintext,
            &erasable,
        );
        Ok((
            ErasableKey {
                seal_id,
                key: erasable.to_vec(),
            },
            (envelope.secret, envelope.data_key),
        ))
    }

    /// Opens a record's secret with the keyring in use.
    pub fn open(&self, record: &CredentialRecord) -> Result<Zeroizing<Vec<u8>>, OpenError> {
        open_record(&self.keyring(), record)
    }

    /// The record with every data key (its own, its kept versions') wrapped by
    /// the active master key, a format 1, 2 or 3 record sealed anew as format 4
    /// (bound to its name), or `None` when it is so already.
    pub async fn rewrap<S: Store>(
        &self,
        store: &S,
        record: &CredentialRecord,
    ) -> Result<Option<CredentialRecord>, SealError> {
        let keyring = self.keyring();
        let active = keyring.active().id();
        let current_ok = record.format == RECORD_FORMAT && record.master_key_id() == active;
        let history_ok = record
            .history
            .iter()
            .all(|v| v.data_key.as_ref().is_none_or(|k| k.key_id == active));
        // A record authenticated by another key is rewritten, to carry its MAC
        // forward under the active one (the write authenticates it).
        if current_ok && history_ok && record.mac_key_id == active {
            return Ok(None);
        }
        let mut next = record.clone();
        if record.format != RECORD_FORMAT {
            let plaintext = open_record(&keyring, record)?;
            if next.secret_version == 0 {
                next.secret_version = next.version;
            }
            self.seal(store, &mut next, &plaintext).await?;
            // A format 3 secret's own erasable key goes with its old seal (the
            // store erases keys no record refers to), unless a kept version uses it.
            if record.format == RECORD_FORMAT_VERSIONED
                && !record.history.iter().any(|v| v.seal_id == record.seal_id)
            {
                next.erasable.retain(|k| k.seal_id != record.seal_id);
            }
        } else if !current_ok {
            let data_key = record.data_key.as_ref().ok_or(OpenError::Failed)?;
            self.seals.count(store, active).await?;
            next.data_key =
                Some(keyring.rewrap(data_key, &sealed_data_key_aad(&record.id, record.seal_id))?);
        }
        for v in &mut next.history {
            let Some(data_key) = &v.data_key else {
                continue;
            };
            if data_key.key_id == active {
                continue;
            }
            self.seals.count(store, active).await?;
            v.data_key =
                Some(keyring.rewrap(data_key, &sealed_data_key_aad(&record.id, v.seal_id))?);
        }
        Ok(Some(next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::prelude::*;

    #[test]
    fn aad_parts_cannot_run_together() {
        assert_ne!(secret_aad("ab", "c"), secret_aad("a", "bc"));
        assert_ne!(
            direct_secret_aad("ab", "c", "k"),
            direct_secret_aad("a", "bc", "k")
        );
        assert_ne!(data_key_aad("a"), secret_aad("a", ""));
        assert_ne!(
            named_secret_aad("a", "bc", "p", 1),
            named_secret_aad("ab", "c", "p", 1)
        );
    }

    #[tokio::test]
    async fn a_secret_is_bound_to_its_name_and_rewrap_upgrades_format_3() {
        use crate::crypto::MasterKey;
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::SledStore::open(dir.path()).unwrap();
        let keyring =
            Keyring::single(MasterKey::from_base64(&MasterKey::generate_base64()).unwrap());
        let sealer = Sealer::new(keyring, SealCounter::load(&store).await.unwrap());
        let mut record = CredentialRecord {
            id: "cred_a".into(),
            name: "prod-fleet".into(),
            provider: "fleetio".into(),
            version: 1,
            secret_version: 1,
            ..Default::default()
        };
        sealer.seal(&store, &mut record, b"secret").await.unwrap();
        assert_eq!(record.format, RECORD_FORMAT);
        assert_eq!(&*sealer.open(&record).unwrap(), b"secret");
        // Renamed in the store: the secret no longer opens, whatever the MAC says.
        let renamed = CredentialRecord {
            name: "acme-fleet".into(),
            ..record.clone()
        };
        assert!(sealer.open(&renamed).is_err());

        // A format 3 record (id, provider and version bound) opens, and a rewrap
        // seals it anew as format 4, its old seal's erasable key left behind.
        let keyring = sealer.keyring();
        let (seal_id, erasable) = (7, crate::crypto::erasable_key());
        store
            .put_erasable("cred_a", seal_id, &erasable)
            .await
            .unwrap();
        let envelope = keyring.seal_envelope_mixed(
            &sealed_data_key_aad("cred_a", seal_id),
            &versioned_secret_aad("cred_a", "fleetio", 1),
            b"old",
            &erasable,
        );
        let old = CredentialRecord {
            format: RECORD_FORMAT_VERSIONED,
            seal_id,
            secret: Some(envelope.secret),
            data_key: Some(envelope.data_key),
            erasable: vec![ErasableKey {
                seal_id,
                key: erasable.to_vec(),
            }],
            ..record.clone()
        };
        assert_eq!(&*sealer.open(&old).unwrap(), b"old");
        let new = sealer
            .rewrap(&store, &old)
            .await
            .unwrap()
            .expect("upgraded");
        assert_eq!(new.format, RECORD_FORMAT);
        assert_ne!(new.seal_id, seal_id);
        assert!(new.erasable.iter().all(|k| k.seal_id != seal_id));
        assert_eq!(&*sealer.open(&new).unwrap(), b"old");
        let renamed = CredentialRecord {
            name: "acme-fleet".into(),
            ..new
        };
        assert!(sealer.open(&renamed).is_err());
    }
}
