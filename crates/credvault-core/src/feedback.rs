//! What workers report of the providers' answers: pauses of rate-limited
//! provider accounts, debounced re-verification after a rejection, and request
//! budgets that all workers of an account share through leases.
//!
//! A provider account is known by a keyed fingerprint of what the provider
//! counts its limits by (Fleetio: the account token): an HMAC under a key
//! derived from the active master key, so replicas with the same keyring agree
//! on it and nothing on disk or in a log reveals the token. This server keeps
//! the pauses in force in memory; a shared store (PostgreSQL) also keeps them
//! and the budgets' counters for every replica.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::crypto::MasterKey;
use crate::provider::ProviderSecret;

/// A provider account's keyed fingerprint.
pub type Account = [u8; 32];

/// The longest pause a report can ask for (Retry-After values above are capped).
pub const MAX_PAUSE: Duration = Duration::from_secs(3600);

/// The largest Retry-After a report may carry before it is refused as absurd.
pub const MAX_REPORTED_RETRY_AFTER_SECS: u32 = 86_400;

/// The most requests one lease may ask for.
pub const MAX_LEASE_REQUEST: u32 = 10_000;

/// The largest budget an admin may set, in requests per minute.
pub const MAX_BUDGET_PER_MINUTE: u32 = 1_000_000;

/// How worker reports and budgets behave.
#[derive(Clone, Debug)]
pub struct FeedbackSettings {
    /// A credential reported rejected (401 / 403) is verified again at most once per this.
    pub verify_interval: Duration,
    /// The window a budget is counted over; Fleetio's resets at the minute.
    pub budget_window: Duration,
}

impl Default for FeedbackSettings {
    fn default() -> Self {
        FeedbackSettings {
            verify_interval: Duration::from_secs(30),
            budget_window: Duration::from_secs(60),
        }
    }
}

/// The current window of a budget, in milliseconds since the epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// The window's start (Unix milliseconds).
    pub start_ms: i64,
    /// Its end (Unix milliseconds).
    pub end_ms: i64,
}

/// Pauses in force, re-verifications under way, and (for a store of one process) budget counters.
pub struct Feedback {
    settings: FeedbackSettings,
    key: RwLock<Zeroizing<[u8; 32]>>,
    /// Account to the end of its pause, in ms since the epoch.
    pauses: RwLock<HashMap<Account, i64>>,
    /// Whether `pauses` may hold one in force (a hot-path read skips the lock when not).
    any_paused: AtomicBool,
    /// Credential id and version to when its last report-driven verification started.
    verifying: Mutex<HashMap<String, Instant>>,
    /// Account to (window start, requests granted in it), when the store keeps none.
    budgets: Mutex<HashMap<Account, (i64, u32)>>,
}

impl std::fmt::Debug for Feedback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feedback")
            .field("settings", &self.settings)
            .field("key", &"[REDACTED]")
            .finish_non_exhaustive()
    }
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    to_ms(SystemTime::now())
}

/// A time as milliseconds since the epoch.
pub fn to_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Milliseconds since the epoch as a time.
pub fn from_ms(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// When a pause that starts at `now_ms` ends: after `retry_after_secs` (capped
/// at [`MAX_PAUSE`]), or without one, when the next minute starts (Fleetio's
/// window resets at the minute).
pub fn pause_end(now_ms: i64, retry_after_secs: u32) -> i64 {
    if retry_after_secs == 0 {
        return (now_ms / 60_000 + 1) * 60_000;
    }
    let secs = u64::from(retry_after_secs).min(MAX_PAUSE.as_secs());
    now_ms + i64::try_from(secs * 1000).unwrap_or(i64::MAX)
}

impl Feedback {
    /// Feedback state keyed from `key` (the active master key).
    pub fn new(settings: FeedbackSettings, key: &MasterKey) -> Self {
        Feedback {
            settings,
            key: RwLock::new(Self::derive(key)),
            pauses: RwLock::default(),
            any_paused: AtomicBool::new(false),
            verifying: Mutex::default(),
            budgets: Mutex::default(),
        }
    }

    fn derive(key: &MasterKey) -> Zeroizing<[u8; 32]> {
        key.derive_subkey(b"credvault/provider-account/v1")
    }

    /// The settings in use.
    pub fn settings(&self) -> &FeedbackSettings {
        &self.settings
    }

    /// Keys account fingerprints from a new active master key (after a keyring reload).
    pub fn set_key(&self, key: &MasterKey) {
        *self.key.write().unwrap_or_else(PoisonError::into_inner) = Self::derive(key);
    }

    /// The account `secret` speaks for.
    pub fn account(&self, secret: &ProviderSecret) -> Account {
        let key = self.key.read().unwrap_or_else(PoisonError::into_inner);
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(key.as_ref()).expect("hmac takes any key length");
        mac.update(&secret.account_key());
        mac.finalize().into_bytes().into()
    }

    /// Whether any account may be paused now (one atomic load).
    pub fn any_paused(&self) -> bool {
        self.any_paused.load(Ordering::Relaxed)
    }

    /// The end of `account`'s pause, if one is in force at `now_ms`.
    pub fn paused_until(&self, account: &Account, now_ms: i64) -> Option<i64> {
        if !self.any_paused() {
            return None;
        }
        self.pauses
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(account)
            .copied()
            .filter(|until| *until > now_ms)
    }

    /// Notes a pause of `account` until `until_ms` (the later end wins); whether it changed.
    pub fn note_pause(&self, account: Account, until_ms: i64) -> bool {
        let now = now_ms();
        if until_ms <= now {
            return false;
        }
        let mut pauses = self.pauses.write().unwrap_or_else(PoisonError::into_inner);
        // Ended pauses go when a new one comes (there are few at a time).
        pauses.retain(|_, until| *until > now);
        let changed = match pauses.get(&account) {
            Some(current) if *current >= until_ms => false,
            _ => {
                pauses.insert(account, until_ms);
                true
            }
        };
        self.any_paused.store(!pauses.is_empty(), Ordering::Relaxed);
        changed
    }

    /// Takes in the pauses a shared store holds (a resync); returns the accounts
    /// whose pause this server did not know of.
    pub fn merge_pauses(&self, stored: &[(Account, i64)]) -> Vec<Account> {
        stored
            .iter()
            .filter(|(account, until)| self.note_pause(*account, *until))
            .map(|(account, _)| *account)
            .collect()
    }

    /// Whether a report-driven verification of `key` (a credential at a version:
    /// a rotation starts afresh) may start now; if so, it counts as started (at
    /// most one per key per `verify_interval`).
    pub fn start_verification(&self, key: &str) -> bool {
        let interval = self.settings.verify_interval;
        let mut started = self
            .verifying
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if started.get(key).is_some_and(|at| at.elapsed() < interval) {
            return false;
        }
        if started.len() >= 1024 {
            started.retain(|_, at| at.elapsed() < interval);
        }
        started.insert(key.to_owned(), Instant::now());
        true
    }

    /// The budget window `now_ms` falls in (aligned on the epoch, so on the minute for 60 s).
    pub fn window(&self, now_ms: i64) -> Window {
        let len = i64::try_from(self.settings.budget_window.as_millis())
            .unwrap_or(60_000)
            .max(1);
        let start_ms = now_ms - now_ms.rem_euclid(len);
        Window {
            start_ms,
            end_ms: start_ms + len,
        }
    }

    /// The requests a window allows for a budget of `per_minute`.
    pub fn per_window(&self, per_minute: u32) -> u32 {
        let ms = self.settings.budget_window.as_millis().max(1);
        let n = u128::from(per_minute) * ms / 60_000;
        u32::try_from(n).unwrap_or(u32::MAX).max(1)
    }

    /// The most one lease may take of a window's `limit`: a tenth, so that
    /// one worker cannot hoard the window.
    pub fn lease_cap(limit: u32) -> u32 {
        limit.div_ceil(10).max(1)
    }

    /// Takes up to `want` of `limit` requests from `account`'s counter for
    /// `window` in this process's memory (a store of one process); how many it got.
    pub fn take_local(&self, account: Account, window: Window, want: u32, limit: u32) -> u32 {
        let mut budgets = self.budgets.lock().unwrap_or_else(PoisonError::into_inner);
        if budgets.len() >= 4096 && !budgets.contains_key(&account) {
            budgets.retain(|_, (start, _)| *start >= window.start_ms);
        }
        let entry = budgets.entry(account).or_insert((window.start_ms, 0));
        if entry.0 < window.start_ms {
            *entry = (window.start_ms, 0);
        }
        let granted = want.min(limit.saturating_sub(entry.1));
        entry.1 += granted;
        granted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feedback(window: Duration) -> Feedback {
        Feedback::new(
            FeedbackSettings {
                verify_interval: Duration::from_millis(200),
                budget_window: window,
            },
            &MasterKey::from_bytes(&[7; 32]),
        )
    }

    #[test]
    fn pauses_keep_the_later_end_and_lapse() {
        let f = feedback(Duration::from_secs(60));
        let a = [1; 32];
        let now = now_ms();
        assert!(!f.any_paused());
        assert!(f.note_pause(a, now + 10_000));
        assert!(
            !f.note_pause(a, now + 5_000),
            "an earlier end changes nothing"
        );
        assert!(f.note_pause(a, now + 20_000));
        assert_eq!(f.paused_until(&a, now), Some(now + 20_000));
        assert_eq!(f.paused_until(&[2; 32], now), None);
        assert_eq!(f.paused_until(&a, now + 20_000), None, "ended");
        assert!(
            !f.note_pause([3; 32], now - 1),
            "a pause in the past is no pause"
        );
        assert_eq!(
            f.merge_pauses(&[(a, now + 20_000), ([4; 32], now + 1_000)]),
            vec![[4; 32]]
        );
    }

    #[test]
    fn pause_ends_cap_at_an_hour_and_default_to_the_next_minute() {
        let now = 1_800_000_030_500;
        assert_eq!(pause_end(now, 30), now + 30_000);
        assert_eq!(pause_end(now, 86_400), now + 3_600_000);
        assert_eq!(pause_end(now, 0), 1_800_000_060_000);
    }

    #[test]
    fn verifications_start_once_per_interval() {
        let f = feedback(Duration::from_secs(60));
        assert!(f.start_verification("cred_a"));
        assert!(!f.start_verification("cred_a"));
        assert!(f.start_verification("cred_b"));
        std::thread::sleep(Duration::from_millis(250));
        assert!(f.start_verification("cred_a"));
    }

    #[test]
    fn local_budgets_grant_up_to_the_limit_per_window() {
        let f = feedback(Duration::from_secs(1));
        assert_eq!(f.per_window(600), 10);
        assert_eq!(f.per_window(1), 1, "at least one per window");
        assert_eq!(Feedback::lease_cap(10), 1);
        assert_eq!(Feedback::lease_cap(25), 3);
        let w = f.window(10_500);
        assert_eq!(
            w,
            Window {
                start_ms: 10_000,
                end_ms: 11_000
            }
        );
        let a = [9; 32];
        assert_eq!(f.take_local(a, w, 6, 10), 6);
        assert_eq!(f.take_local(a, w, 6, 10), 4);
        assert_eq!(f.take_local(a, w, 6, 10), 0);
        assert_eq!(f.take_local([8; 32], w, 6, 10), 6, "accounts count apart");
        let next = f.window(11_000);
        assert_eq!(f.take_local(a, next, 6, 10), 6, "a new window, a new count");
    }

    #[test]
    fn accounts_follow_the_account_token_and_the_master_key() {
        use crate::provider::{fleetio, ProviderRef, Values};
        let secret = |key: &str, token: &str| {
            ProviderSecret::new(
                ProviderRef::Builtin(&fleetio::PROVIDER),
                Values::new(vec![key.into(), token.into(), String::new()]),
            )
        };
        let f = feedback(Duration::from_secs(60));
        let a = f.account(&secret("key-1", "acct-1"));
        assert_eq!(
            a,
            f.account(&secret("key-2", "acct-1")),
            "same account token"
        );
        assert_ne!(a, f.account(&secret("key-1", "acct-2")));
        f.set_key(&MasterKey::from_bytes(&[8; 32]));
        assert_ne!(a, f.account(&secret("key-1", "acct-1")), "keyed");
    }
}
