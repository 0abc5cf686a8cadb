//! AES-256-GCM sealing under the master key, with associated data that binds a
//! ciphertext to the record it belongs to.

use std::fmt;

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::{engine::general_purpose::STANDARD as B64, Engine};
use rand::RngCore;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Length of a master key in bytes (AES-256).
pub const KEY_LEN: usize = 32;
/// Length of an AES-GCM nonce in bytes (96 bits, fresh and random per seal).
pub const NONCE_LEN: usize = 12;

const KEY_CHECK_PLAINTEXT: &[u8] = b"credvault key check v1";
const KEY_CHECK_AAD: &[u8] = b"credvault/key-check/v1";

/// Why a master key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The text is not base64.
    #[error("the master key is not valid base64 (make one with `credvault keygen`)")]
    NotBase64,
    /// The key decodes to the wrong number of bytes.
    #[error("the master key must be {KEY_LEN} bytes, base64-encoded; this one is {0} bytes (make one with `credvault keygen`)")]
    WrongLength(usize),
}

/// A ciphertext opened with the wrong key, or altered, or moved to another record.
#[derive(Debug, thiserror::Error)]
#[error("authentication of the sealed data failed")]
pub struct OpenError;

/// A sealed secret as stored: which key sealed it, the nonce and the ciphertext with its tag.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Sealed {
    /// The id of the master key that sealed it.
    #[prost(string, tag = "1")]
    pub key_id: String,
    /// The 96-bit nonce.
    #[prost(bytes = "vec", tag = "2")]
    pub nonce: Vec<u8>,
    /// AES-256-GCM ciphertext followed by the 128-bit tag.
    #[prost(bytes = "vec", tag = "3")]
    pub ciphertext: Vec<u8>,
}

/// The master key: seals and opens secrets. Its Debug shows the key id only.
pub struct MasterKey {
    id: String,
    cipher: Aes256Gcm,
    /// Key for deriving purpose-bound subkeys (HMAC-SHA256 of the raw key and a label).
    derive: Zeroizing<[u8; KEY_LEN]>,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl MasterKey {
    /// Makes a key from its raw bytes.
    pub fn from_bytes(bytes: &[u8; KEY_LEN]) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"credvault/key-id/v1\0");
        hasher.update(bytes);
        let id = hex::encode(&hasher.finalize()[..8]);
        let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(bytes));
        MasterKey {
            id,
            cipher,
            derive: Zeroizing::new(*bytes),
        }
    }

    /// Parses a base64 key (surrounding whitespace ignored).
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        let bytes = Zeroizing::new(B64.decode(text.trim()).map_err(|_| KeyError::NotBase64)?);
        let raw: &[u8; KEY_LEN] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| KeyError::WrongLength(bytes.len()))?;
        Ok(Self::from_bytes(raw))
    }

    /// Generates a fresh random key, returned as base64 text for a key file.
    pub fn generate_base64() -> Zeroizing<String> {
        let mut raw = Zeroizing::new([0u8; KEY_LEN]);
        OsRng.fill_bytes(raw.as_mut());
        Zeroizing::new(B64.encode(raw.as_ref()))
    }

    /// A 256-bit subkey for one purpose, named by `label` (HMAC-SHA256 keyed by the master key).
    pub fn derive_subkey(&self, label: &[u8]) -> Zeroizing<[u8; KEY_LEN]> {
        use hmac::{Hmac, Mac};
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.derive.as_ref())
            .expect("hmac takes any key length");
        mac.update(label);
        Zeroizing::new(mac.finalize().into_bytes().into())
    }

    /// The key id: a 16-hex-digit fingerprint that names the key without revealing it.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Seals `plaintext` with a fresh random nonce; `aad` must be given again to open it.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Sealed {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let ciphertext = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            // Encryption fails only for inputs beyond GCM's 64 GiB limit.
            .expect("aes-gcm encryption of a bounded plaintext cannot fail");
        Sealed {
            key_id: self.id.clone(),
            nonce: nonce.to_vec(),
            ciphertext,
        }
    }

    /// Opens a sealed value; fails if the key, the aad, or any byte differs.
    pub fn open(&self, sealed: &Sealed, aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, OpenError> {
        if sealed.key_id != self.id || sealed.nonce.len() != NONCE_LEN {
            return Err(OpenError);
        }
        self.cipher
            .decrypt(
                Nonce::from_slice(&sealed.nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| OpenError)
    }

    /// A key-check value: proof, kept beside the data, of which key the data needs.
    pub fn key_check(&self) -> Sealed {
        self.seal(KEY_CHECK_AAD, KEY_CHECK_PLAINTEXT)
    }

    /// Whether `check` was made by this key.
    pub fn matches(&self, check: &Sealed) -> bool {
        self.open(check, KEY_CHECK_AAD)
            .map(|p| p.as_slice() == KEY_CHECK_PLAINTEXT)
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> MasterKey {
        MasterKey::from_base64(&MasterKey::generate_base64()).unwrap()
    }

    #[test]
    fn seal_open_round_trip_and_binding() {
        let k = key();
        let sealed = k.seal(b"record-a", b"secret");
        assert_eq!(k.open(&sealed, b"record-a").unwrap().as_slice(), b"secret");
        assert!(
            k.open(&sealed, b"record-b").is_err(),
            "aad binds the record"
        );
        let mut flipped = sealed.clone();
        flipped.ciphertext[0] ^= 1;
        assert!(k.open(&flipped, b"record-a").is_err(), "tamper detected");
        assert!(
            key().open(&sealed, b"record-a").is_err(),
            "other key refused"
        );
    }

    #[test]
    fn nonces_are_fresh() {
        let k = key();
        assert_ne!(k.seal(b"", b"x").nonce, k.seal(b"", b"x").nonce);
    }

    #[test]
    fn key_check_tells_keys_apart() {
        let (a, b) = (key(), key());
        assert!(a.matches(&a.key_check()));
        assert!(!b.matches(&a.key_check()));
        assert_ne!(a.id(), b.id());
    }

    #[test]
    fn bad_keys_are_refused_without_echo() {
        let err = MasterKey::from_base64("not base64!!")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("not base64!!"));
        assert!(matches!(
            MasterKey::from_base64(&B64.encode([1u8; 16])),
            Err(KeyError::WrongLength(16))
        ));
        assert!(format!("{:?}", key()).starts_with("MasterKey { id:"));
    }
}
