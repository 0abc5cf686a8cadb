//! Sealing a credential's secret, in one place: the associated data that binds
//! each record format's ciphertexts to their record, sealing under a new data key
//! wrapped by the active master key (every seal counted), opening under the
//! keyring, and rewrapping a data key. It knows records and keys, not providers
//! or their HTTP clients, so restore and rewrap open secrets without them.

use std::sync::{Arc, PoisonError, RwLock};

use zeroize::Zeroizing;

use crate::crypto::{Keyring, OpenError};
use crate::keys::{SealCounter, SealRefused};
use crate::record::{CredentialRecord, RECORD_FORMAT, RECORD_FORMAT_DIRECT};
use crate::store::Store;

fn aad(parts: &[&[u8]]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(64);
    for part in parts {
        aad.extend_from_slice(part);
        aad.push(0);
    }
    aad
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

/// Opens a record's secret with `keyring`: the plaintext its provider encoded.
pub fn open_record(
    keyring: &Keyring,
    record: &CredentialRecord,
) -> Result<Zeroizing<Vec<u8>>, OpenError> {
    let secret = record.secret.as_ref().ok_or(OpenError::Failed)?;
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
    pub fn new(keyring: Keyring, seals: SealCounter) -> Self {
        Sealer {
            keyring: RwLock::new(Arc::new(keyring)),
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

    /// Seals `plaintext` into `record` (whose id and provider are set) under a
    /// new data key, wrapped by the active master key; the seal is counted first.
    pub async fn seal<S: Store>(
        &self,
        store: &S,
        record: &mut CredentialRecord,
        plaintext: &[u8],
    ) -> Result<(), SealRefused> {
        let keyring = self.keyring();
        self.seals.count(store, keyring.active().id()).await?;
        let envelope = keyring.seal_envelope(
            &data_key_aad(&record.id),
            &secret_aad(&record.id, &record.provider),
            plaintext,
        );
        record.format = RECORD_FORMAT;
        record.secret = Some(envelope.secret);
        record.data_key = Some(envelope.data_key);
        Ok(())
    }

    /// Opens a record's secret with the keyring in use.
    pub fn open(&self, record: &CredentialRecord) -> Result<Zeroizing<Vec<u8>>, OpenError> {
        open_record(&self.keyring(), record)
    }

    /// The record with its data key wrapped by the active master key (a format 1
    /// record sealed anew), or `None` when it is already.
    pub async fn rewrap<S: Store>(
        &self,
        store: &S,
        record: &CredentialRecord,
    ) -> Result<Option<CredentialRecord>, SealError> {
        let keyring = self.keyring();
        let active = keyring.active().id();
        if record.format == RECORD_FORMAT && record.master_key_id() == active {
            return Ok(None);
        }
        let mut next = record.clone();
        if record.format == RECORD_FORMAT_DIRECT {
            let plaintext = open_record(&keyring, record)?;
            self.seal(store, &mut next, &plaintext).await?;
        } else {
            let data_key = record.data_key.as_ref().ok_or(OpenError::Failed)?;
            self.seals.count(store, active).await?;
            next.data_key = Some(keyring.rewrap(data_key, &data_key_aad(&record.id))?);
        }
        Ok(Some(next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aad_parts_cannot_run_together() {
        assert_ne!(secret_aad("ab", "c"), secret_aad("a", "bc"));
        assert_ne!(
            direct_secret_aad("ab", "c", "k"),
            direct_secret_aad("a", "bc", "k")
        );
        assert_ne!(data_key_aad("a"), secret_aad("a", ""));
    }
}
