//! A PKCS#11 HSM as a key root: a non-extractable AES-256 key in a token seals
//! and opens master keys with AES-GCM inside the HSM (`cryptoki`; tested with
//! SoftHSM2). Every call runs on a blocking thread, one session at a time.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use rand::RngCore;
use zeroize::Zeroizing;

use super::RootError;
use crate::crypto::{KEY_LEN, NONCE_LEN};

/// The root's name in sealed entries and messages.
pub const NAME: &str = "pkcs11";
/// Associated data of every seal, so a blob made for something else does not open.
const AAD: &[u8] = b"credvault/sealed-master-key/v1";

/// Which module, token and key, and the PIN.
#[derive(Clone)]
pub struct Pkcs11Settings {
    /// The PKCS#11 module (a shared library), e.g. /usr/lib/softhsm/libsofthsm2.so.
    pub module: PathBuf,
    /// The label of the token (slot) holding the key.
    pub token_label: String,
    /// The label of the AES key that seals master keys.
    pub key_label: String,
    /// The user PIN.
    pub pin: Arc<Zeroizing<String>>,
}

impl std::fmt::Debug for Pkcs11Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Settings")
            .field("module", &self.module)
            .field("token_label", &self.token_label)
            .field("key_label", &self.key_label)
            .finish_non_exhaustive()
    }
}

/// An open, logged-in session on the token, and the key's handle.
struct Open {
    session: Session,
    key: ObjectHandle,
}

/// A PKCS#11 token holding the sealing key.
pub struct Hsm {
    settings: Pkcs11Settings,
    context: Mutex<Option<Pkcs11>>,
    open: Mutex<Option<Open>>,
}

impl std::fmt::Debug for Hsm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hsm")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

fn fatal(why: impl std::fmt::Display) -> RootError {
    RootError::Fatal {
        root: NAME,
        why: why.to_string(),
    }
}

/// A PKCS#11 failure as a root error: a wrong PIN or a missing key is fatal (a
/// retried PIN would lock the token), the rest worth another try.
fn classify(what: &str, e: CkError) -> RootError {
    match e {
        CkError::Pkcs11(RvError::PinIncorrect | RvError::PinInvalid | RvError::PinLenRange, _) => {
            fatal(format!(
                "{what}: the PIN is wrong (credvault does not try again: a token locks after repeated failures)"
            ))
        }
        CkError::Pkcs11(RvError::PinLocked | RvError::PinExpired, _) => {
            fatal(format!("{what}: the token's PIN is locked or expired"))
        }
        CkError::LibraryLoading(e) => fatal(format!("{what}: cannot load the module: {e}")),
        CkError::Pkcs11(
            RvError::EncryptedDataInvalid | RvError::EncryptedDataLenRange | RvError::DataInvalid,
            _,
        ) => fatal(format!("{what}: the HSM refused the sealed key (another key sealed it, or it was altered)")),
        e => RootError::Unreachable {
            root: NAME,
            why: format!("{what}: {e}"),
        },
    }
}

/// Why a key could not be found by its label.
enum Found {
    /// The token failed.
    Error(CkError),
    /// More than one key has the label.
    Several(usize),
}

/// The AES key of the token labelled `label`, if there is one.
fn find_labelled(session: &Session, label: &str) -> Result<Option<ObjectHandle>, Found> {
    let found = session
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Label(label.as_bytes().to_vec()),
        ])
        .map_err(Found::Error)?;
    match found.as_slice() {
        [] => Ok(None),
        [key] => Ok(Some(*key)),
        _ => Err(Found::Several(found.len())),
    }
}

impl Hsm {
    /// A token handle for `settings` (the module is loaded at the first call).
    pub fn new(settings: Pkcs11Settings) -> Self {
        Hsm {
            settings,
            context: Mutex::new(None),
            open: Mutex::new(None),
        }
    }

    /// The key's label.
    pub fn key_label(&self) -> &str {
        &self.settings.key_label
    }

    /// Loads the module once per process.
    fn context(&self) -> Result<Pkcs11, RootError> {
        let mut held = self.context.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(context) = held.as_ref() {
            return Ok(context.clone());
        }
        let context = Pkcs11::new(&self.settings.module).map_err(|e| {
            fatal(format!(
                "cannot load the PKCS#11 module {}: {e}",
                self.settings.module.display()
            ))
        })?;
        match context.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) => {}
            Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => return Err(classify("C_Initialize", e)),
        }
        *held = Some(context.clone());
        Ok(context)
    }

    /// Opens a logged-in read-write session on the token named by its label.
    fn session(&self) -> Result<Session, RootError> {
        let context = self.context()?;
        let slots = context
            .get_slots_with_token()
            .map_err(|e| classify("C_GetSlotList", e))?;
        let slot = slots
            .into_iter()
            .find(|slot| {
                context
                    .get_token_info(*slot)
                    .is_ok_and(|info| info.label().trim_end() == self.settings.token_label)
            })
            .ok_or_else(|| {
                fatal(format!(
                    "no token labelled {:?} in {}",
                    self.settings.token_label,
                    self.settings.module.display()
                ))
            })?;
        let session = context
            .open_rw_session(slot)
            .map_err(|e| classify("C_OpenSession", e))?;
        let pin = AuthPin::new(self.settings.pin.as_str().into());
        match session.login(UserType::User, Some(&pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(session),
            Err(e) => Err(classify(
                &format!("login to token {:?}", self.settings.token_label),
                e,
            )),
        }
    }

    fn find_key(&self, session: &Session) -> Result<Option<ObjectHandle>, RootError> {
        find_labelled(session, &self.settings.key_label).map_err(|e| match e {
            Found::Error(e) => classify("C_FindObjects", e),
            Found::Several(n) => fatal(format!(
                "the token holds {n} AES keys labelled {:?}; label one key only",
                self.settings.key_label
            )),
        })
    }

    /// Runs `f` on the open session, opening it (and finding the key) first if
    /// needed; a session the token dropped is opened again once.
    fn with_key<T>(
        &self,
        f: impl Fn(&Session, ObjectHandle) -> Result<T, CkError>,
        what: &str,
    ) -> Result<T, RootError> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        for attempt in 0..2 {
            if open.is_none() {
                let session = self.session()?;
                let key = self.find_key(&session)?.ok_or_else(|| {
                    fatal(format!(
                        "the token {:?} holds no AES key labelled {:?} (make one with `credvault pkcs11-keygen`)",
                        self.settings.token_label, self.settings.key_label
                    ))
                })?;
                *open = Some(Open { session, key });
            }
            let held = open.as_ref().expect("opened above");
            match f(&held.session, held.key) {
                Ok(value) => return Ok(value),
                Err(CkError::Pkcs11(
                    RvError::SessionHandleInvalid
                    | RvError::SessionClosed
                    | RvError::DeviceRemoved
                    | RvError::TokenNotPresent
                    | RvError::UserNotLoggedIn
                    | RvError::ObjectHandleInvalid
                    | RvError::KeyHandleInvalid,
                    _,
                )) if attempt == 0 => *open = None,
                Err(e) => {
                    *open = None;
                    return Err(classify(what, e));
                }
            }
        }
        Err(fatal(format!(
            "{what}: the token keeps dropping the session"
        )))
    }

    /// Checks that the token answers and holds the key.
    pub fn check(&self) -> Result<(), RootError> {
        self.with_key(
            |session, _| session.get_session_info().map(|_| ()),
            "C_GetSessionInfo",
        )
    }

    /// Seals a master key's bytes: nonce, then ciphertext and tag.
    pub fn seal(&self, raw: &[u8; KEY_LEN]) -> Result<Vec<u8>, RootError> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let sealed = self.with_key(
            |session, key| {
                let mut iv = nonce;
                let params = GcmParams::new(&mut iv, AAD, 128.into())?;
                session.encrypt(&Mechanism::AesGcm(params), key, raw)
            },
            "C_Encrypt",
        )?;
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&sealed);
        Ok(blob)
    }

    /// Opens a blob made by [`Hsm::seal`] with the token's key labelled `label`
    /// (this root's own, or an older one of the same token).
    pub fn unseal(&self, label: &str, blob: &[u8]) -> Result<Zeroizing<[u8; KEY_LEN]>, RootError> {
        if blob.len() <= NONCE_LEN {
            return Err(fatal("the sealed key is too short"));
        }
        let (nonce, ciphertext) = blob.split_at(NONCE_LEN);
        let own = label == self.settings.key_label;
        // `None`: the token holds no single key of that label.
        let opened = self.with_key(
            |session, key| {
                let key = if own {
                    key
                } else {
                    match find_labelled(session, label) {
                        Ok(Some(key)) => key,
                        Ok(None) | Err(Found::Several(_)) => return Ok(None),
                        Err(Found::Error(e)) => return Err(e),
                    }
                };
                let mut iv = [0u8; NONCE_LEN];
                iv.copy_from_slice(nonce);
                let params = GcmParams::new(&mut iv, AAD, 128.into())?;
                session
                    .decrypt(&Mechanism::AesGcm(params), key, ciphertext)
                    .map(Some)
            },
            "C_Decrypt",
        )?;
        let plain = Zeroizing::new(opened.ok_or_else(|| {
            fatal(format!(
                "the token {:?} holds no single AES key labelled {label:?}, which sealed a master key the store keeps",
                self.settings.token_label
            ))
        })?);
        let raw: [u8; KEY_LEN] = plain
            .as_slice()
            .try_into()
            .map_err(|_| fatal(format!("the unsealed key is not {KEY_LEN} bytes")))?;
        Ok(Zeroizing::new(raw))
    }

    /// Makes the sealing key in the token: AES-256, sensitive, never extractable,
    /// good for encrypt and decrypt only. Refuses if a key has this label already.
    pub fn generate(&self) -> Result<(), RootError> {
        let session = self.session()?;
        if self.find_key(&session)?.is_some() {
            return Err(fatal(format!(
                "the token {:?} already holds a key labelled {:?}",
                self.settings.token_label, self.settings.key_label
            )));
        }
        session
            .generate_key(
                &Mechanism::AesKeyGen,
                &[
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::KeyType(KeyType::AES),
                    Attribute::ValueLen((KEY_LEN as u64).into()),
                    Attribute::Label(self.settings.key_label.as_bytes().to_vec()),
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(false),
                    Attribute::Encrypt(true),
                    Attribute::Decrypt(true),
                    Attribute::Wrap(false),
                    Attribute::Unwrap(false),
                ],
            )
            .map_err(|e| classify("C_GenerateKey", e))?;
        Ok(())
    }
}
