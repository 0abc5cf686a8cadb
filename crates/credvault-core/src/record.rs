//! The stored record format: prost messages with an explicit format number.
//!
//! A record holds a credential's metadata in the clear and its secret under
//! envelope encryption (see [`crate::crypto`]): the secret sealed by a random
//! data key, the data key wrapped by a master key. Both are bound to the
//! record's id (and the secret to its provider) by [`crate::sealing`], so they
//! cannot be moved to another record. Format 3 also mixes a per-version
//! *erasable key* into the key that seals the secret: that key is kept outside the record
//! (see [`crate::store`]), so erasing it destroys every copy of that version's ciphertext,
//! wherever the engine left one (sled's log segments, PostgreSQL's dead rows). Format 4
//! (written now) binds the secret to the credential's name as well, which scopes match
//! on. Formats 1 (sealed directly by the master key), 2 (no erasable key) and 3 are still
//! read; a rewrap upgrades them.
//!
//! A record keeps the secrets it replaced as [`SecretVersion`]s (newest first), each
//! sealed like the current one; a deleted record is kept whole, with when it goes for good.

use std::time::SystemTime;

use prost::Message;
use prost_types::Timestamp;

use crate::crypto::Sealed;

/// The format number written into every record; a reader refuses others. Format
/// 4 binds the secret to the credential's name as well (its associated data).
pub const RECORD_FORMAT: u32 = 4;
/// The format before names were bound: id, provider and version in the associated data.
pub const RECORD_FORMAT_VERSIONED: u32 = 3;
/// The format before erasable keys: a data key wrapped by the master key.
pub const RECORD_FORMAT_ENVELOPE: u32 = 2;
/// The oldest format: the secret sealed directly by the master key (no data key).
pub const RECORD_FORMAT_DIRECT: u32 = 1;

/// One credential as stored.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CredentialRecord {
    /// Always [`RECORD_FORMAT`] for records this version writes.
    #[prost(uint32, tag = "1")]
    pub format: u32,
    /// A random id, never reused.
    #[prost(string, tag = "2")]
    pub id: String,
    /// The unique name callers use.
    #[prost(string, tag = "3")]
    pub name: String,
    /// Free text for operators (at most 1 KiB).
    #[prost(string, tag = "4")]
    pub description: String,
    /// The provider name, e.g. `fleetio`.
    #[prost(string, tag = "5")]
    pub provider: String,
    /// The last 4 characters of the provider's key (its hint field), to tell keys apart.
    #[prost(string, tag = "6")]
    pub api_key_hint: String,
    /// When the credential was created.
    #[prost(message, optional, tag = "7")]
    pub create_time: Option<Timestamp>,
    /// When it last changed.
    #[prost(message, optional, tag = "8")]
    pub update_time: Option<Timestamp>,
    /// Starts at 1; grows by one on every change of description, secret or expiry.
    #[prost(uint64, tag = "9")]
    pub version: u64,
    /// The last check against the provider's API, if any.
    #[prost(message, optional, tag = "10")]
    pub last_verification: Option<Verification>,
    /// The provider secret, sealed with AES-256-GCM by the data key (format 1: by the master key).
    #[prost(message, optional, tag = "11")]
    pub secret: Option<Sealed>,
    /// When the key is known to expire, if an admin said so.
    #[prost(message, optional, tag = "12")]
    pub expire_time: Option<Timestamp>,
    /// The record's random data key, wrapped by the master key it names (format 2).
    #[prost(message, optional, tag = "13")]
    pub data_key: Option<Sealed>,
    /// Grows on every write, including ones that leave `version` alone (a
    /// verification result, a rewrap); the store's check-and-set compares it.
    #[prost(uint64, tag = "14")]
    pub revision: u64,
    /// The names of the fields the sealed secret sets (declared providers; plain
    /// metadata), to report fields a later declaration drops or adds.
    #[prost(string, repeated, tag = "15")]
    pub secret_fields: Vec<String>,
    /// The provider account's request budget, shared through leases (0: none).
    #[prost(uint32, tag = "16")]
    pub request_budget_per_minute: u32,
    /// The secrets this one replaced, newest first (at most `--keep-versions` - 1).
    #[prost(message, repeated, tag = "17")]
    pub history: Vec<SecretVersion>,
    /// The version that made the current secret current (0: written before history was kept).
    #[prost(uint64, tag = "18")]
    pub secret_version: u64,
    /// When, and by which caller, the current secret was written.
    #[prost(message, optional, tag = "19")]
    pub secret_create_time: Option<Timestamp>,
    /// The caller that wrote the current secret.
    #[prost(string, tag = "20")]
    pub secret_created_by: String,
    /// Format 3: names the erasable key mixed into the current secret's sealing key.
    #[prost(uint64, tag = "21")]
    pub seal_id: u64,
    /// A deleted record: when it was deleted, by whom, and when it is purged for good.
    #[prost(message, optional, tag = "22")]
    pub delete_time: Option<Timestamp>,
    /// When a deleted record is purged for good.
    #[prost(message, optional, tag = "23")]
    pub purge_time: Option<Timestamp>,
    /// The caller that deleted it.
    #[prost(string, tag = "24")]
    pub deleted_by: String,
    /// HMAC-SHA256 over every other field ([`CredentialRecord::mac_input`]) under a
    /// record subkey of the master key `mac_key_id`: the store cannot change a
    /// field the vault acts on (a name, a history marker, a verification, an
    /// expiry, a revision) unnoticed.
    #[prost(bytes = "vec", tag = "25")]
    pub mac: Vec<u8>,
    /// The id of the master key whose subkey made [`CredentialRecord::mac`].
    #[prost(string, tag = "26")]
    pub mac_key_id: String,
    /// The erasable keys of this record's versions, as the store read them (never
    /// written into the record: [`CredentialRecord::to_bytes`] leaves them out).
    #[prost(message, repeated, tag = "30")]
    pub erasable: Vec<ErasableKey>,
}

/// A secret a newer one replaced, sealed as it was (format 3), or destroyed.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SecretVersion {
    /// The record version that made this secret current.
    #[prost(uint64, tag = "1")]
    pub version: u64,
    /// When this secret was written.
    #[prost(message, optional, tag = "2")]
    pub create_time: Option<Timestamp>,
    /// The caller that wrote it.
    #[prost(string, tag = "3")]
    pub created_by: String,
    /// The hint of its key (the last 4 characters).
    #[prost(string, tag = "4")]
    pub api_key_hint: String,
    /// The last verification recorded while it was current.
    #[prost(message, optional, tag = "5")]
    pub last_verification: Option<Verification>,
    /// The sealed secret and its wrapped data key; both gone once destroyed.
    #[prost(message, optional, tag = "6")]
    pub secret: Option<Sealed>,
    /// The data key that seals `secret`, wrapped by a master key.
    #[prost(message, optional, tag = "7")]
    pub data_key: Option<Sealed>,
    /// Names its erasable key.
    #[prost(uint64, tag = "8")]
    pub seal_id: u64,
    /// The names of the secret's fields (for a declared provider's drift report).
    #[prost(string, repeated, tag = "9")]
    pub secret_fields: Vec<String>,
    /// When, and by whom, it was destroyed (its secret and key are gone).
    #[prost(message, optional, tag = "10")]
    pub destroy_time: Option<Timestamp>,
    /// The caller that destroyed it.
    #[prost(string, tag = "11")]
    pub destroyed_by: String,
    /// How its secret is bound: [`RECORD_FORMAT`] (to the name too), or 0 for
    /// a version sealed as format 3 (id, provider and version).
    #[prost(uint32, tag = "12")]
    pub format: u32,
}

impl SecretVersion {
    /// Whether its secret was destroyed.
    pub fn destroyed(&self) -> bool {
        self.secret.is_none()
    }
}

/// One erasable key: 32 random bytes, named by the seal they belong to.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ErasableKey {
    /// The seal this key belongs to ([`SecretVersion::seal_id`]).
    #[prost(uint64, tag = "1")]
    pub seal_id: u64,
    /// The key's 32 bytes (wiped on drop).
    #[prost(bytes = "vec", tag = "2")]
    pub key: Vec<u8>,
}

impl Drop for ErasableKey {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key);
    }
}

/// The last read of a credential's secret.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Usage {
    /// When the secret was last read.
    #[prost(message, optional, tag = "1")]
    pub time: Option<Timestamp>,
    /// The caller's name.
    #[prost(string, tag = "2")]
    pub caller: String,
}

/// What the provider said of a credential.
///
/// A provider that rejects one of a secret's values says which in the
/// verification's `rejected_field`, with [`SecretRejected`](Self::SecretRejected);
/// `ApiKeyRejected` and `AccountTokenRejected` are the names Fleetio's two fields
/// had before the generic form, kept so its results read as they always did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum VerificationStatus {
    /// Not recorded.
    Unspecified = 0,
    /// The provider accepted the credential.
    Valid = 1,
    /// The provider rejected the API key.
    ApiKeyRejected = 2,
    /// The provider rejected the account token.
    AccountTokenRejected = 3,
    /// The key is valid but may not read the checked resource.
    Forbidden = 4,
    /// The provider answered 429.
    RateLimited = 5,
    /// The provider answered with an error of its own (5xx, an unexpected status).
    ProviderError = 6,
    /// The provider could not be reached.
    Unreachable = 7,
    /// The provider rejected a secret field (declared providers).
    SecretRejected = 8,
}

impl VerificationStatus {
    /// The name the API gives this status, e.g. `VERIFICATION_STATUS_VALID`.
    pub fn name(self) -> &'static str {
        match self {
            VerificationStatus::Unspecified => "VERIFICATION_STATUS_UNSPECIFIED",
            VerificationStatus::Valid => "VERIFICATION_STATUS_VALID",
            VerificationStatus::ApiKeyRejected => "VERIFICATION_STATUS_API_KEY_REJECTED",
            VerificationStatus::AccountTokenRejected => {
                "VERIFICATION_STATUS_ACCOUNT_TOKEN_REJECTED"
            }
            VerificationStatus::Forbidden => "VERIFICATION_STATUS_FORBIDDEN",
            VerificationStatus::RateLimited => "VERIFICATION_STATUS_RATE_LIMITED",
            VerificationStatus::ProviderError => "VERIFICATION_STATUS_PROVIDER_ERROR",
            VerificationStatus::Unreachable => "VERIFICATION_STATUS_UNREACHABLE",
            VerificationStatus::SecretRejected => "VERIFICATION_STATUS_SECRET_REJECTED",
        }
    }

    /// Whether the provider definitely refused one of the secret's values.
    pub fn is_rejection(self) -> bool {
        matches!(
            self,
            VerificationStatus::ApiKeyRejected
                | VerificationStatus::AccountTokenRejected
                | VerificationStatus::SecretRejected
        )
    }
}

/// The outcome of one check of a credential against its provider.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Verification {
    /// A [`VerificationStatus`], as its number.
    #[prost(enumeration = "VerificationStatus", tag = "1")]
    pub status: i32,
    /// The HTTP status that decided; 0 when the provider was not reached.
    #[prost(int32, tag = "2")]
    pub http_status: i32,
    /// Human-readable, never a secret.
    #[prost(string, tag = "3")]
    pub message: String,
    /// The provider's `Retry-After`, in seconds (0: none).
    #[prost(uint32, tag = "4")]
    pub retry_after_seconds: u32,
    /// When the check was made.
    #[prost(message, optional, tag = "5")]
    pub check_time: Option<Timestamp>,
    /// With a rejection: the secret field the provider refused (e.g. `api_key`).
    #[prost(string, tag = "6")]
    pub rejected_field: String,
}

impl Verification {
    /// A verification made now.
    pub fn now(status: VerificationStatus, http_status: u16, message: impl Into<String>) -> Self {
        Verification {
            status: status as i32,
            http_status: i32::from(http_status),
            message: message.into(),
            retry_after_seconds: 0,
            check_time: Some(timestamp(SystemTime::now())),
            rejected_field: String::new(),
        }
    }

    /// A rejection of the secret field `field`, made now, under the status its
    /// provider names that field's rejection with.
    pub fn rejected(
        status: VerificationStatus,
        field: &str,
        http_status: u16,
        message: impl Into<String>,
    ) -> Self {
        let mut v = Verification::now(status, http_status, message);
        v.rejected_field = field.to_owned();
        v
    }

    /// The same verification with a Retry-After delay.
    pub fn with_retry_after(mut self, seconds: u32) -> Self {
        self.retry_after_seconds = seconds;
        self
    }
}

/// Why stored bytes could not be read as a record.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The bytes are not a record.
    #[error("not a valid record encoding")]
    Malformed,
    /// A record format this version does not know.
    #[error("record format {0} is not known to this version of credvault")]
    UnknownFormat(u32),
    /// The record stored under `key` says it is `found`.
    #[error("record holds id {found} under key {key}")]
    WrongId {
        /// The store's key.
        key: String,
        /// The id the record holds.
        found: String,
    },
    /// A record without its sealed secret.
    #[error("record has no sealed secret")]
    NoSecret,
    /// A record without its wrapped data key.
    #[error("record has no wrapped data key")]
    NoDataKey,
}

impl CredentialRecord {
    /// Encodes the record for storage.
    pub fn to_bytes(&self) -> Vec<u8> {
        if self.erasable.is_empty() {
            return self.encode_to_vec();
        }
        // Erasable keys live outside the record, where they can be erased.
        let mut bare = self.clone();
        bare.erasable.clear();
        bare.encode_to_vec()
    }

    /// The bytes its MAC covers: the record as stored, less the MAC itself (and
    /// the erasable keys, which live outside it).
    pub fn mac_input(&self) -> Vec<u8> {
        let mut bare = self.clone();
        bare.mac.clear();
        bare.mac_key_id.clear();
        bare.erasable.clear();
        bare.encode_to_vec()
    }

    /// Marks the record deleted (kept until `purge_time`); a new revision.
    pub fn mark_deleted(&mut self, delete_time: Timestamp, purge_time: Timestamp, by: &str) {
        self.delete_time = Some(delete_time);
        self.purge_time = Some(purge_time);
        by.clone_into(&mut self.deleted_by);
        self.revision += 1;
    }

    /// Clears the marks of a deleted record brought back; a new revision.
    pub fn mark_undeleted(&mut self) {
        self.delete_time = None;
        self.purge_time = None;
        self.deleted_by.clear();
        self.revision += 1;
    }

    /// The erasable key of seal `seal_id`, as the store attached it.
    pub fn erasable_key(&self, seal_id: u64) -> Option<&[u8]> {
        self.erasable
            .iter()
            .find(|k| k.seal_id == seal_id)
            .map(|k| k.key.as_slice())
    }

    /// Every seal id this record's secrets depend on (current and kept versions).
    pub fn seal_ids(&self) -> Vec<u64> {
        std::iter::once(self.seal_id)
            .chain(
                self.history
                    .iter()
                    .filter(|v| !v.destroyed())
                    .map(|v| v.seal_id),
            )
            .filter(|id| *id != 0)
            .collect()
    }

    /// The master keys this record depends on: its own and its kept versions'.
    pub fn master_key_ids(&self) -> Vec<String> {
        let mut ids = vec![self.master_key_id().to_owned()];
        if !self.mac_key_id.is_empty() && !ids.contains(&self.mac_key_id) {
            ids.push(self.mac_key_id.clone());
        }
        for v in &self.history {
            if let Some(k) = &v.data_key {
                if !ids.contains(&k.key_id) {
                    ids.push(k.key_id.clone());
                }
            }
        }
        ids
    }

    /// Decodes a stored record and checks that it is whole and belongs under `id`.
    pub fn from_bytes(id: &str, bytes: &[u8]) -> Result<Self, DecodeError> {
        let record = CredentialRecord::decode(bytes).map_err(|_| DecodeError::Malformed)?;
        if ![
            RECORD_FORMAT,
            RECORD_FORMAT_VERSIONED,
            RECORD_FORMAT_ENVELOPE,
            RECORD_FORMAT_DIRECT,
        ]
        .contains(&record.format)
        {
            return Err(DecodeError::UnknownFormat(record.format));
        }
        if record.id != id {
            return Err(DecodeError::WrongId {
                key: id.to_owned(),
                found: record.id,
            });
        }
        if record.secret.is_none() {
            return Err(DecodeError::NoSecret);
        }
        if record.format != RECORD_FORMAT_DIRECT && record.data_key.is_none() {
            return Err(DecodeError::NoDataKey);
        }
        Ok(record)
    }

    /// The id of the master key this record's secret depends on.
    pub fn master_key_id(&self) -> &str {
        let sealed = match self.format {
            RECORD_FORMAT_DIRECT => self.secret.as_ref(),
            _ => self.data_key.as_ref(),
        };
        sealed.map_or("", |s| s.key_id.as_str())
    }
}

/// A protobuf timestamp for a point in time.
pub fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sealing::{data_key_aad, secret_aad};
    use proptest::prelude::*;

    fn sample() -> CredentialRecord {
        CredentialRecord {
            format: RECORD_FORMAT,
            id: "cred_1".into(),
            name: "n".into(),
            version: 1,
            secret: Some(Sealed::default()),
            data_key: Some(Sealed::default()),
            ..Default::default()
        }
    }

    #[test]
    fn round_trip_and_checks() {
        let r = sample();
        assert_eq!(
            CredentialRecord::from_bytes("cred_1", &r.to_bytes()).unwrap(),
            r
        );
        assert!(matches!(
            CredentialRecord::from_bytes("cred_2", &r.to_bytes()),
            Err(DecodeError::WrongId { .. })
        ));
        let mut future = r.clone();
        future.format = 9;
        assert!(matches!(
            CredentialRecord::from_bytes("cred_1", &future.to_bytes()),
            Err(DecodeError::UnknownFormat(9))
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_are_data_loss_never_a_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            if let Err(e) = CredentialRecord::from_bytes("cred_1", &bytes) {
                let stored = crate::store::StoreError::Corrupt {
                    id: "cred_1".into(),
                    reason: e.to_string(),
                };
                prop_assert!(matches!(crate::error::Error::from(stored), crate::error::Error::DataLoss(_)));
            }
        }

        #[test]
        fn any_damage_to_an_envelope_fails_to_open_never_panics(
            index in any::<prop::sample::Index>(),
            bit in 0u8..8,
            part in 0usize..4,
        ) {
            use crate::crypto::{Keyring, MasterKey};
            let ring = Keyring::single(MasterKey::from_base64(&MasterKey::generate_base64()).unwrap());
            let (ka, sa) = (data_key_aad("cred_1"), secret_aad("cred_1", "fleetio"));
            let mut env = ring.seal_envelope(&ka, &sa, b"api key and account token");
            let target = match part {
                0 => &mut env.data_key.ciphertext,
                1 => &mut env.data_key.nonce,
                2 => &mut env.secret.ciphertext,
                _ => &mut env.secret.nonce,
            };
            let i = index.index(target.len());
            target[i] ^= 1 << bit;
            prop_assert!(ring.open_envelope(&env.data_key, &ka, &env.secret, &sa).is_err());
        }

        #[test]
        fn mutated_records_never_panic(
            index in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let mut bytes = sample().to_bytes();
            let i = index.index(bytes.len());
            bytes[i] = byte;
            let _ = CredentialRecord::from_bytes("cred_1", &bytes);
            bytes.truncate(i);
            let _ = CredentialRecord::from_bytes("cred_1", &bytes);
        }
    }
}
