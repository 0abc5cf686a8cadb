//! What the vault's operations take and answer: how a call names a credential, a new
//! credential, a change, a page of a listing, the headers read, a lease.

use super::*;

/// A credential addressed by id or by name.
#[derive(Clone, Debug)]
pub enum CredentialRef {
    /// By id.
    Id(String),
    /// By name.
    Name(String),
}

/// A credential found within a caller's scope: only [`Vault::locate`] makes one,
/// so holding one proves the scope check passed.
pub struct Located {
    pub(super) id: String,
    /// The record, when the scope check had to read it.
    pub(super) record: Option<Arc<CredentialRecord>>,
}

impl Located {
    /// The credential's id.
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// Whether a new secret is checked with its provider before it is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckOnWrite {
    /// Written unchecked.
    No,
    /// Written only if the provider accepts it.
    Strict,
    /// Refused if the provider rejects it, written if the check is inconclusive.
    BestEffort,
}

impl CheckOnWrite {
    /// From the request flags `verify` and `verify_best_effort`.
    pub fn new(verify: bool, best_effort: bool) -> Self {
        match (verify, best_effort) {
            (false, _) => CheckOnWrite::No,
            (true, false) => CheckOnWrite::Strict,
            (true, true) => CheckOnWrite::BestEffort,
        }
    }
}

/// A credential to create.
pub struct NewCredential {
    /// The unique name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// When it expires, if it does.
    pub expire_time: Option<Timestamp>,
    /// The provider's secret.
    pub secret: ProviderSecret,
    /// Whether to check it with the provider first.
    pub check: CheckOnWrite,
    /// The account's request budget per minute (0: none).
    pub request_budget_per_minute: u32,
}

/// What an update does to the expiry.
#[derive(Clone, Copy, Debug)]
pub enum Expiry {
    /// Leave the expiry as it is.
    Keep,
    /// Set it.
    Set(Timestamp),
    /// Remove it.
    Clear,
}

/// An update of a credential: each field left `None` (or `Keep`) stays as it is.
pub struct Change {
    /// A new description, if any.
    pub description: Option<String>,
    /// What to do with the expiry.
    pub expiry: Expiry,
    /// A new secret, if any.
    pub secret: Option<ProviderSecret>,
    /// Whether to check a new secret with the provider first.
    pub check: CheckOnWrite,
    /// Refuse the update unless the credential is at this version.
    pub expected_version: Option<u64>,
    /// A new request budget per minute (0 removes it); alone, it leaves the version as it is.
    pub request_budget_per_minute: Option<u32>,
    /// The kept version whose secret this is (a rollback): refused if it was destroyed meanwhile.
    pub rollback_of: Option<u64>,
}

/// How many secret versions a credential keeps by default (the current one included).
pub const DEFAULT_KEEP_VERSIONS: usize = 10;
/// How long a deleted credential stays recoverable by default.
pub const DEFAULT_RECOVERY_WINDOW: std::time::Duration =
    std::time::Duration::from_secs(7 * 24 * 3600);

/// A credential's headers as read for a worker.
pub struct HeadersRead {
    /// The headers to send, and where.
    pub headers: ProviderHeaders,
    /// The opened secret's bytes, to fingerprint for the audit trail.
    pub plaintext: Zeroizing<Vec<u8>>,
    /// The end of the account's pause, in ms since the epoch, while one is in force.
    pub paused_until_ms: Option<i64>,
}

/// What a lease request got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    /// Requests granted (at most those asked for).
    pub granted: u32,
    /// How long the granted requests stay good, in ms.
    pub valid_for_ms: u32,
    /// With nothing granted: when to ask again, in ms.
    pub retry_after_ms: u32,
    /// The account's pause, if one holds (Unix milliseconds).
    pub paused_until_ms: Option<i64>,
}

/// The filters of a listing (empty: everything in scope).
#[derive(Default)]
pub struct ListFilter {
    /// Only credentials whose last verification has one of these statuses.
    pub statuses: Vec<VerificationStatus>,
    /// Only credentials that expire before this time.
    pub expire_before: Option<Timestamp>,
}

impl ListFilter {
    pub(super) fn matches(&self, r: &CredentialRecord) -> bool {
        let status = r
            .last_verification
            .as_ref()
            .map_or(VerificationStatus::Unspecified, Verification::status);
        let status_ok = self.statuses.is_empty() || self.statuses.contains(&status);
        let expiry_ok = match (self.expire_before, r.expire_time) {
            (None, _) => true,
            (Some(before), Some(t)) => (t.seconds, t.nanos) < (before.seconds, before.nanos),
            (Some(_), None) => false,
        };
        status_ok && expiry_ok
    }
}

/// One page of a listing.
pub struct Page {
    /// The records of the page.
    pub records: Vec<CredentialRecord>,
    /// The last use of each record on the page that has one.
    pub usages: HashMap<String, Usage>,
    /// The id to continue after, when there is more.
    pub next_after: Option<String>,
}
