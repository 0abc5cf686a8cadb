//! Page tokens of `ListCredentials`: opaque, sealed and bound to who asked what.
//!
//! A listing continues after the last record it read, which may be a credential
//! outside a scoped caller's scope: a plain token would tell the caller that id.
//! So the id is sealed with AES-256-GCM under a subkey of the active master key,
//! and the caller's name and the query (deleted or not, statuses, expiry bound)
//! are its associated data: a token reveals nothing, cannot be forged or edited,
//! and serves only the caller and the query it was issued for. Replicas sharing
//! the keyring accept each other's tokens; after a key rotation an old token is
//! refused, and the listing starts again.

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};

use crate::crypto::MasterKey;

/// A token this vault did not issue for this caller and query (or issued under a
/// master key rotated since).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("page_token is not one this vault issued for this caller and query (or the master key was rotated since); start again from an empty page_token")]
pub struct InvalidToken;

/// The label of the subkey that seals page tokens.
const SUBKEY: &[u8] = b"credvault/page-token/v1";
const NONCE_LEN: usize = 12;

/// Who asked for a listing, and what: what a token is bound to.
pub struct Query<'a> {
    /// The caller the token was given to.
    pub caller: &'a str,
    /// Whether the listing shows deleted credentials.
    pub deleted: bool,
    /// The verification statuses it filters on.
    pub statuses: &'a [i32],
    /// The expiry bound it filters on (seconds, nanoseconds).
    pub expire_before: Option<(i64, i32)>,
}

impl Query<'_> {
    fn associated_data(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(SUBKEY);
        out.extend_from_slice(&(self.caller.len() as u64).to_be_bytes());
        out.extend_from_slice(self.caller.as_bytes());
        out.push(u8::from(self.deleted));
        out.extend_from_slice(&(self.statuses.len() as u64).to_be_bytes());
        for s in self.statuses {
            out.extend_from_slice(&s.to_be_bytes());
        }
        match self.expire_before {
            Some((seconds, nanos)) => {
                out.push(1);
                out.extend_from_slice(&seconds.to_be_bytes());
                out.extend_from_slice(&nanos.to_be_bytes());
            }
            None => out.push(0),
        }
        out
    }
}

fn cipher(key: &MasterKey) -> Aes256Gcm {
    let subkey = key.derive_subkey(SUBKEY);
    Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(subkey.as_ref()))
}

/// The token of the page after `last_id`, for `query`, sealed under `key`.
pub fn seal(key: &MasterKey, query: &Query<'_>, last_id: &str) -> String {
    let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
    let aad = query.associated_data();
    // Sealing a few bytes with a fresh nonce cannot fail; an empty token (the
    // first page again) is the safe answer if it ever did.
    let Ok(sealed) = cipher(key).encrypt(
        &nonce,
        Payload {
            msg: last_id.as_bytes(),
            aad: &aad,
        },
    ) else {
        return String::new();
    };
    let mut out = nonce.to_vec();
    out.extend_from_slice(&sealed);
    URL_SAFE_NO_PAD.encode(out)
}

/// The id a token continues after (`None` for an empty token, the first page).
pub fn open(
    key: &MasterKey,
    query: &Query<'_>,
    token: &str,
) -> Result<Option<String>, InvalidToken> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || InvalidToken;
    if token.len() > 256 {
        return Err(invalid());
    }
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    if bytes.len() <= NONCE_LEN {
        return Err(invalid());
    }
    let (nonce, sealed) = bytes.split_at(NONCE_LEN);
    let aad = query.associated_data();
    let plain = cipher(key)
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: sealed,
                aad: &aad,
            },
        )
        .map_err(|_| invalid())?;
    // Sealed by this vault: the id inside is one it wrote.
    String::from_utf8(plain).map(Some).map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn new_key() -> MasterKey {
        MasterKey::from_base64(&MasterKey::generate_base64()).unwrap()
    }

    fn query(caller: &str) -> Query<'_> {
        Query {
            caller,
            deleted: false,
            statuses: &[],
            expire_before: None,
        }
    }

    #[test]
    fn a_token_opens_for_its_caller_and_query_only() {
        let key = new_key();
        let id = "cred_0190a1b2c3d4e5f60718293a4b5c6d7e".to_owned();
        let token = seal(&key, &query("acme-reader"), &id);
        assert!(
            !token.contains(&id[5..]),
            "the id is not readable in {token}"
        );
        assert_eq!(open(&key, &query("acme-reader"), &token).unwrap(), Some(id));
        assert!(open(&key, &query("other"), &token).is_err());
        let deleted = Query {
            deleted: true,
            ..query("acme-reader")
        };
        assert!(open(&key, &deleted, &token).is_err());
        assert!(open(&new_key(), &query("acme-reader"), &token).is_err());
        assert_eq!(open(&key, &query("x"), "").unwrap(), None);
    }

    proptest! {
        #[test]
        fn any_other_token_is_invalid_argument(text in ".{0,300}") {
            let key = new_key();
            let opened = open(&key, &query("c"), &text);
            prop_assert!(opened == Err(InvalidToken) || text.is_empty());
        }
    }
}
