//! Console sessions: a random id in an HttpOnly, SameSite=Strict cookie, kept in
//! memory by its digest, with what the caller proved at sign-in (never the token),
//! a per-session CSRF token, and an absolute expiry. Bounded: at most
//! [`MAX_SESSIONS_PER_CALLER`] per caller (the oldest goes) and a server-wide cap.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::auth::Identity;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "credvault_session";
/// The cookie that ties the sign-in form to the browser that loaded it.
pub const SIGN_IN_COOKIE: &str = "credvault_sign_in";
/// Sessions one caller may hold at once; a new sign-in ends its oldest.
pub const MAX_SESSIONS_PER_CALLER: usize = 16;

/// A fresh random token (32 bytes, base64url).
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Whether two tokens are equal, in constant time.
pub fn same_token(a: &str, b: &str) -> bool {
    !a.is_empty() && a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

fn digest(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

/// One signed-in browser.
#[derive(Clone, Debug)]
pub struct Session {
    /// What the caller proved at sign-in, looked up again on every request.
    pub identity: Identity,
    /// The caller's name at sign-in.
    pub caller: String,
    /// The token every form of this session carries.
    pub csrf: String,
    /// When it ends.
    pub expires: Instant,
    created: Instant,
}

/// Why a session was not made.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Every session slot is taken.
    #[error("too many console sessions are open on this server; try again later")]
    Full,
}

/// Every open session.
pub struct Sessions {
    ttl: Duration,
    max: usize,
    open: Mutex<HashMap<[u8; 32], Session>>,
}

impl Sessions {
    /// Sessions that last `ttl` from sign-in, at most `max` at once.
    pub fn new(ttl: Duration, max: usize) -> Self {
        Sessions {
            ttl,
            max,
            open: Mutex::default(),
        }
    }

    /// How long a session lasts.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Opens a session for `caller`: its id (for the cookie) and the session.
    pub fn open(
        &self,
        identity: Identity,
        caller: &str,
    ) -> Result<(String, Session), SessionError> {
        let now = Instant::now();
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.retain(|_, s| s.expires > now);
        let mut mine: Vec<([u8; 32], Instant)> = open
            .iter()
            .filter(|(_, s)| s.caller == caller)
            .map(|(k, s)| (*k, s.created))
            .collect();
        if mine.len() >= MAX_SESSIONS_PER_CALLER {
            mine.sort_by_key(|(_, created)| *created);
            for (key, _) in &mine[..=mine.len() - MAX_SESSIONS_PER_CALLER] {
                open.remove(key);
            }
        }
        if open.len() >= self.max {
            return Err(SessionError::Full);
        }
        let id = random_token();
        let session = Session {
            identity,
            caller: caller.to_owned(),
            csrf: random_token(),
            expires: now + self.ttl,
            created: now,
        };
        open.insert(digest(&id), session.clone());
        Ok((id, session))
    }

    /// The session with this id, unless it expired (then it is forgotten).
    pub fn get(&self, id: &str) -> Option<Session> {
        let key = digest(id);
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        match open.get(&key) {
            Some(s) if s.expires > Instant::now() => Some(s.clone()),
            Some(_) => {
                open.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Ends a session.
    pub fn close(&self, id: &str) {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&digest(id));
    }

    /// How many sessions are open (expired ones included until they are swept).
    pub fn len(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether no session is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The value of cookie `name` in a request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Strict, path `/`, Secure under TLS;
/// `max_age` zero removes the cookie.
pub fn set_cookie(name: &str, value: &str, max_age: Duration, secure: bool) -> String {
    format!(
        "{name}={value}; Path=/; Max-Age={}; HttpOnly; SameSite=Strict{}",
        max_age.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_and_are_capped_per_caller() {
        let sessions = Sessions::new(Duration::from_millis(50), 100);
        let (id, s) = sessions.open(Identity::Subject("a".into()), "a").unwrap();
        assert_eq!(sessions.get(&id).unwrap().csrf, s.csrf);
        assert!(sessions.get("other").is_none());
        std::thread::sleep(Duration::from_millis(60));
        assert!(sessions.get(&id).is_none(), "expired");
        let ids: Vec<String> = (0..MAX_SESSIONS_PER_CALLER + 3)
            .map(|_| sessions.open(Identity::Subject("b".into()), "b").unwrap().0)
            .collect();
        assert_eq!(sessions.len(), MAX_SESSIONS_PER_CALLER);
        assert!(sessions.get(&ids[0]).is_none(), "the oldest went");
        assert!(sessions.get(ids.last().unwrap()).is_some());
        let full = Sessions::new(Duration::from_secs(60), 2);
        full.open(Identity::Subject("c".into()), "c").unwrap();
        full.open(Identity::Subject("d".into()), "d").unwrap();
        assert!(full.open(Identity::Subject("e".into()), "e").is_err());
    }

    #[test]
    fn cookies_are_read_and_tokens_compared() {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::COOKIE,
            "x=1; credvault_session=abc".parse().unwrap(),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&h, "y"), None);
        assert!(same_token("abc", "abc"));
        assert!(!same_token("abc", "abd"));
        assert!(!same_token("", ""));
    }
}
