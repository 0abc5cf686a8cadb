//! AES-256-GCM envelope encryption: a keyring of master keys (key-encryption
//! keys) wraps per-record random data keys, which seal the secrets.
//!
//! Associated data binds every ciphertext to the record it belongs to.

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

/// Why a master key or keyring could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A key id is empty, too long or holds characters other than `A-Za-z0-9._-`.
    #[error("key id {0:?} is not valid: use 1 to 64 of A-Z a-z 0-9 . _ -")]
    BadId(String),
    /// Two keys of a keyring share an id.
    #[error("the keyring lists key id {0} twice")]
    DuplicateId(String),
    /// The keyring holds no key.
    #[error("the keyring holds no key")]
    Empty,
    /// The key chosen as active is not in the keyring.
    #[error("the active key id {0} is not in the keyring")]
    UnknownActive(String),
    /// The text is not base64.
    #[error("the master key is not valid base64 (make one with `credvault keygen`)")]
    NotBase64,
    /// The key decodes to the wrong number of bytes.
    #[error("the master key must be {KEY_LEN} bytes, base64-encoded; this one is {0} bytes (make one with `credvault keygen`)")]
    WrongLength(usize),
}

/// Why sealed data could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// It names a master key the keyring does not hold.
    #[error("it was sealed with master key {0}, which is not in the keyring")]
    UnknownKey(String),
    /// Opened with the wrong key, or altered, or moved to another record.
    #[error("authentication of the sealed data failed")]
    Failed,
    /// Its erasable key is gone: the version was destroyed (or the key file lost).
    #[error("its erasable key is gone")]
    Erased,
}

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

/// The master key: seals and opens secrets. Its Debug shows the key id only; a
/// clone is wiped on drop like the original.
#[derive(Clone)]
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
    /// Makes a key from its raw bytes; its id is a fingerprint of them.
    pub fn from_bytes(bytes: &[u8; KEY_LEN]) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"credvault/key-id/v1\0");
        hasher.update(bytes);
        Self::with_id(hex::encode(&hasher.finalize()[..8]), bytes)
    }

    /// Makes a key from its raw bytes under an id chosen by the operator.
    fn with_id(id: String, bytes: &[u8; KEY_LEN]) -> Self {
        let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(bytes));
        MasterKey {
            id,
            cipher,
            derive: Zeroizing::new(*bytes),
        }
    }

    /// Parses a base64 key (surrounding whitespace ignored); its id is its fingerprint.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        let raw = decode_key(text)?;
        Ok(Self::from_bytes(&raw))
    }

    /// Parses a base64 key that the keyring names `id`.
    pub fn from_base64_named(id: &str, text: &str) -> Result<Self, KeyError> {
        if !valid_key_id(id) {
            return Err(KeyError::BadId(id.to_owned()));
        }
        let raw = decode_key(text)?;
        Ok(Self::with_id(id.to_owned(), &raw))
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
        if sealed.key_id != self.id {
            return Err(OpenError::Failed);
        }
        open_with(&self.cipher, sealed, aad)
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

fn decode_key(text: &str) -> Result<Zeroizing<[u8; KEY_LEN]>, KeyError> {
    let bytes = Zeroizing::new(B64.decode(text.trim()).map_err(|_| KeyError::NotBase64)?);
    let raw: &[u8; KEY_LEN] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| KeyError::WrongLength(bytes.len()))?;
    Ok(Zeroizing::new(*raw))
}

/// Whether `id` may name a key: 1 to 64 of `A-Za-z0-9._-`.
pub fn valid_key_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The sealing key of a format 3 secret: its data key XOR its erasable key, a
/// two-of-two split of a uniformly random key. The data key (wrapped by the master
/// key in the record, and in any old copy of it) and the erasable key (kept where
/// it can be erased) are independent and uniform, so either alone says nothing of
/// the sealing key: once the erasable key is gone, no copy of the ciphertext opens.
fn mix(erasable: &[u8], data_key: &[u8]) -> Zeroizing<[u8; KEY_LEN]> {
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    for (k, (e, d)) in key.iter_mut().zip(erasable.iter().zip(data_key)) {
        *k = e ^ d;
    }
    key
}

/// 32 fresh random bytes: an erasable key.
pub fn erasable_key() -> Zeroizing<[u8; KEY_LEN]> {
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    OsRng.fill_bytes(key.as_mut());
    key
}

fn open_with(
    cipher: &Aes256Gcm,
    sealed: &Sealed,
    aad: &[u8],
) -> Result<Zeroizing<Vec<u8>>, OpenError> {
    if sealed.nonce.len() != NONCE_LEN {
        return Err(OpenError::Failed);
    }
    cipher
        .decrypt(
            Nonce::from_slice(&sealed.nonce),
            Payload {
                msg: &sealed.ciphertext,
                aad,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| OpenError::Failed)
}

/// A secret under envelope encryption: its data key wrapped by a master key, and
/// the secret sealed by that data key.
#[derive(Clone, Debug, PartialEq)]
pub struct Envelope {
    /// The random data key, sealed by the master key named in its `key_id`.
    pub data_key: Sealed,
    /// The secret, sealed by the data key (`key_id` empty).
    pub secret: Sealed,
}

/// The master keys a vault knows: one active for new seals, the others kept to open older data.
pub struct Keyring {
    keys: Vec<MasterKey>,
    active: usize,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("ids", &self.ids().collect::<Vec<_>>())
            .field("active", &self.active().id())
            .finish()
    }
}

impl Keyring {
    /// A keyring of one key, which is active.
    pub fn single(key: MasterKey) -> Self {
        Keyring {
            keys: vec![key],
            active: 0,
        }
    }

    /// A keyring of `keys`; the active one is `active` if given, else the last.
    pub fn new(keys: Vec<MasterKey>, active: Option<&str>) -> Result<Self, KeyError> {
        for (i, key) in keys.iter().enumerate() {
            if keys[..i].iter().any(|k| k.id == key.id) {
                return Err(KeyError::DuplicateId(key.id.clone()));
            }
        }
        let active = match active {
            Some(id) => keys
                .iter()
                .position(|k| k.id == id)
                .ok_or_else(|| KeyError::UnknownActive(id.to_owned()))?,
            None => keys.len().checked_sub(1).ok_or(KeyError::Empty)?,
        };
        Ok(Keyring { keys, active })
    }

    /// The key that seals new data.
    pub fn active(&self) -> &MasterKey {
        &self.keys[self.active]
    }

    /// The key with this id, if held.
    pub fn get(&self, id: &str) -> Option<&MasterKey> {
        self.keys.iter().find(|k| k.id == id)
    }

    /// Every key held, in keyring order.
    pub fn keys(&self) -> impl Iterator<Item = &MasterKey> {
        self.keys.iter()
    }

    /// The ids of every key held, in keyring order.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|k| k.id.as_str())
    }

    /// Seals `plaintext` under a fresh random data key, which the active master key wraps.
    ///
    /// `key_aad` binds the wrapped data key, `secret_aad` the sealed secret.
    pub fn seal_envelope(&self, key_aad: &[u8], secret_aad: &[u8], plaintext: &[u8]) -> Envelope {
        self.seal_with(key_aad, secret_aad, plaintext, None)
    }

    /// Seals under a fresh data key, mixed with `erasable` when one is given.
    fn seal_with(
        &self,
        key_aad: &[u8],
        secret_aad: &[u8],
        plaintext: &[u8],
        erasable: Option<&[u8; KEY_LEN]>,
    ) -> Envelope {
        let mut raw = Zeroizing::new([0u8; KEY_LEN]);
        OsRng.fill_bytes(raw.as_mut());
        let key = match erasable {
            Some(e) => mix(e, raw.as_ref()),
            None => raw.clone(),
        };
        let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key.as_ref()));
        // Each data key seals exactly one secret, so its random nonce never repeats.
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let ciphertext = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: secret_aad,
                },
            )
            .expect("aes-gcm encryption of a bounded plaintext cannot fail");
        Envelope {
            data_key: self.active().seal(key_aad, raw.as_ref()),
            secret: Sealed {
                key_id: String::new(),
                nonce: nonce.to_vec(),
                ciphertext,
            },
        }
    }

    fn unwrap_data_key(&self, data_key: &Sealed, key_aad: &[u8]) -> Result<Aes256Gcm, OpenError> {
        self.unwrap_mixed(data_key, key_aad, None)
    }

    /// Unwraps a data key; with an erasable key, the cipher is keyed by the data
    /// key XOR the erasable key (see `mix`), so it opens only while both exist.
    fn unwrap_mixed(
        &self,
        data_key: &Sealed,
        key_aad: &[u8],
        erasable: Option<&[u8]>,
    ) -> Result<Aes256Gcm, OpenError> {
        let master = self
            .get(&data_key.key_id)
            .ok_or_else(|| OpenError::UnknownKey(data_key.key_id.clone()))?;
        let raw = master.open(data_key, key_aad)?;
        if raw.len() != KEY_LEN {
            return Err(OpenError::Failed);
        }
        match erasable {
            None => Ok(Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&raw))),
            Some(e) if e.len() == KEY_LEN => {
                let mixed = mix(e, &raw);
                Ok(Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(mixed.as_ref())))
            }
            Some(_) => Err(OpenError::Erased),
        }
    }

    /// Seals `plaintext` under a new data key (wrapped by the active master key)
    /// mixed with `erasable` (32 bytes): see [`Keyring::open_envelope_mixed`].
    pub fn seal_envelope_mixed(
        &self,
        key_aad: &[u8],
        secret_aad: &[u8],
        plaintext: &[u8],
        erasable: &[u8; KEY_LEN],
    ) -> Envelope {
        self.seal_with(key_aad, secret_aad, plaintext, Some(erasable))
    }

    /// Opens an envelope sealed by [`Keyring::seal_envelope_mixed`]: `None` when the
    /// erasable key is gone fails with [`OpenError::Erased`].
    pub fn open_envelope_mixed(
        &self,
        data_key: &Sealed,
        key_aad: &[u8],
        secret: &Sealed,
        secret_aad: &[u8],
        erasable: Option<&[u8]>,
    ) -> Result<Zeroizing<Vec<u8>>, OpenError> {
        let erasable = erasable.ok_or(OpenError::Erased)?;
        let cipher = self.unwrap_mixed(data_key, key_aad, Some(erasable))?;
        open_with(&cipher, secret, secret_aad)
    }

    /// Opens an envelope: unwraps its data key with the master key it names, then the secret.
    pub fn open_envelope(
        &self,
        data_key: &Sealed,
        key_aad: &[u8],
        secret: &Sealed,
        secret_aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, OpenError> {
        let cipher = self.unwrap_data_key(data_key, key_aad)?;
        open_with(&cipher, secret, secret_aad)
    }

    /// Re-wraps a data key under the active master key; the secret it sealed is untouched.
    pub fn rewrap(&self, data_key: &Sealed, key_aad: &[u8]) -> Result<Sealed, OpenError> {
        let master = self
            .get(&data_key.key_id)
            .ok_or_else(|| OpenError::UnknownKey(data_key.key_id.clone()))?;
        let raw = master.open(data_key, key_aad)?;
        Ok(self.active().seal(key_aad, &raw))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mixed_envelope_opens_only_with_its_erasable_key() {
        let ring = Keyring::single(key());
        let e = erasable_key();
        let env = ring.seal_envelope_mixed(b"k", b"s", b"secret", &e);
        let open = |erasable: Option<&[u8]>| {
            ring.open_envelope_mixed(&env.data_key, b"k", &env.secret, b"s", erasable)
        };
        assert_eq!(open(Some(e.as_slice())).unwrap().as_slice(), b"secret");
        assert!(matches!(
            open(Some(erasable_key().as_slice())),
            Err(OpenError::Failed)
        ));
        assert!(matches!(open(None), Err(OpenError::Erased)));
        // The data key alone (the master key's part) opens nothing.
        assert!(ring
            .open_envelope(&env.data_key, b"k", &env.secret, b"s")
            .is_err());
    }

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
    fn envelopes_open_under_any_key_of_the_ring_and_rewrap() {
        let b64 = MasterKey::generate_base64();
        let old = Keyring::single(MasterKey::from_base64_named("k1", &b64).unwrap());
        let env = old.seal_envelope(b"dk-a", b"secret-a", b"hello");
        assert_eq!(env.data_key.key_id, "k1");
        let ring = Keyring::new(
            vec![
                MasterKey::from_base64_named("k1", &b64).unwrap(),
                MasterKey::from_base64_named("k2", &MasterKey::generate_base64()).unwrap(),
            ],
            None,
        )
        .unwrap();
        assert_eq!(ring.active().id(), "k2");
        let open = |dk: &Sealed| ring.open_envelope(dk, b"dk-a", &env.secret, b"secret-a");
        assert_eq!(open(&env.data_key).unwrap().as_slice(), b"hello");
        let rewrapped = ring.rewrap(&env.data_key, b"dk-a").unwrap();
        assert_eq!(rewrapped.key_id, "k2");
        assert_eq!(open(&rewrapped).unwrap().as_slice(), b"hello");
        assert!(matches!(
            ring.open_envelope(&env.data_key, b"dk-b", &env.secret, b"secret-a"),
            Err(OpenError::Failed)
        ));
        assert!(matches!(
            ring.open_envelope(&env.data_key, b"dk-a", &env.secret, b"secret-b"),
            Err(OpenError::Failed)
        ));
        let k2_only = Keyring::single(
            MasterKey::from_base64_named("k2", &MasterKey::generate_base64()).unwrap(),
        );
        assert!(matches!(
            k2_only.open_envelope(&env.data_key, b"dk-a", &env.secret, b"secret-a"),
            Err(OpenError::UnknownKey(id)) if id == "k1"
        ));
    }

    #[test]
    fn keyrings_refuse_bad_ids_duplicates_and_unknown_active() {
        let b64 = MasterKey::generate_base64();
        assert!(matches!(
            MasterKey::from_base64_named("a b", &b64),
            Err(KeyError::BadId(_))
        ));
        let k = |id| MasterKey::from_base64_named(id, &b64).unwrap();
        assert!(matches!(
            Keyring::new(vec![k("a"), k("a")], None),
            Err(KeyError::DuplicateId(_))
        ));
        assert!(matches!(
            Keyring::new(vec![k("a")], Some("b")),
            Err(KeyError::UnknownActive(_))
        ));
        assert!(matches!(Keyring::new(vec![], None), Err(KeyError::Empty)));
        let ring = Keyring::new(vec![k("a"), k("b")], Some("a")).unwrap();
        assert_eq!(ring.active().id(), "a");
        assert!(!format!("{ring:?}").contains(b64.as_str()));
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
