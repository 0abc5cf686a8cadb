//! The vault's domain core, shared by the gRPC service, the re-verifier and the
//! CLI: the credential operations (create, update, delete, list, the headers read
//! and its last-use note) within a caller's scope, with the one check-and-set
//! loop that owns `version` and `revision`; sealing and opening secrets under the
//! keyring, rewrapping data keys, provider checks, and storing their results.
//! Nothing above it touches the store.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use prost_types::Timestamp;
use zeroize::Zeroizing;

use crate::auth::Caller;
use crate::crypto::{Keyring, OpenError};
use crate::error::Error;
use crate::feed::Hub;
use crate::feedback::{self, Account, Feedback, FeedbackSettings};
use crate::keys::{self, KeyringError, RewrapProgress, RewrapReport, SealCounter};
use crate::metrics::{self, Source};
use crate::provider::{Catalog, ProviderHeaders, ProviderSecret, Providers, SecretFormatError};
use crate::record::{
    self, CredentialRecord, SecretVersion, Usage, Verification, VerificationStatus, RECORD_FORMAT,
};
use crate::sealing::{SealError, Sealer};
use crate::store::{Deletion, Store, StoreError};

/// How far a reported pause must move its account's end to be written and pushed (ms).
pub const PAUSE_MOVES_MS: i64 = 1000;
/// How often a write that lost a revision race is retried.
pub const MAX_CAS_RETRIES: usize = 16;

/// How many records a listing reads from the store at a time (at least a page).
const LIST_SCAN_BATCH: usize = 256;

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
    id: String,
    /// The record, when the scope check had to read it.
    record: Option<Arc<CredentialRecord>>,
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
    fn matches(&self, r: &CredentialRecord) -> bool {
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

/// What a check-and-set step makes of the current record.
enum Edit {
    /// Leave it as it is.
    Keep,
    /// Write this record (the revision grows).
    Write(CredentialRecord),
    /// Write this record as a new version (the version, revision and update time change).
    NewVersion(CredentialRecord),
}

/// What a check-and-set loop ended with.
enum Changed {
    /// The step left the record as it was.
    Kept(Arc<CredentialRecord>),
    /// The record as written.
    Written(Box<CredentialRecord>),
    /// There is no such record (any more).
    Gone,
}

/// What a rewrap did to one record.
enum Rewrapped {
    /// It depended on other keys and now depends on these.
    Now(Vec<String>),
    /// It depended on the active key already.
    Already(Vec<String>),
    /// It was deleted meanwhile.
    Gone,
}

/// The store, the keyring and the providers, with the operations on them.
pub struct Vault<S> {
    store: Arc<S>,
    sealer: Sealer,
    providers: Providers,
    /// Secret reads not yet written to the store (flushed in batches).
    pending_usage: Mutex<HashMap<String, Usage>>,
    /// This process's name in active-key announcements (see [`keys::announce_active`]).
    instance: String,
    /// Who watches which credential; told of every write.
    hub: Arc<Hub>,
    /// Workers' reports of the providers' answers: pauses, re-verifications, budgets.
    feedback: Feedback,
    /// Secret versions kept per credential, the current one included (at least 1).
    keep_versions: usize,
    /// How long a deleted credential stays recoverable (zero: deleted at once).
    recovery_window: std::time::Duration,
    /// The highest revision this server has seen of each credential: a stored
    /// record below it was put back behind the vault's back (a replayed row, a
    /// restored snapshot) and is refused, never served or pushed.
    /// Shared with the audit trail, whose `marks` lines record them.
    marks: Arc<crate::trail::Marks>,
    /// Whether every record must carry a MAC: set once the start-up pass has
    /// authenticated the records written before MACs (see [`Vault::authenticate_all`]).
    macs_required: std::sync::atomic::AtomicBool,
    /// The record allocations whose MAC was verified (the store's cache hands out
    /// the same `Arc` until the record changes): a hit costs no HMAC.
    verified: Mutex<HashMap<String, std::sync::Weak<CredentialRecord>>>,
}

impl<S: Store> Vault<S> {
    /// A vault over an opened store whose keyring check has passed.
    pub fn new(store: Arc<S>, keyring: Keyring, seals: SealCounter, providers: Providers) -> Self {
        let feedback = Feedback::new(FeedbackSettings::default(), keyring.active());
        Vault {
            store,
            feedback,
            sealer: Sealer::new(keyring, seals),
            providers,
            pending_usage: Mutex::new(HashMap::new()),
            marks: Arc::default(),
            macs_required: std::sync::atomic::AtomicBool::new(false),
            verified: Mutex::new(HashMap::new()),
            instance: uuid::Uuid::now_v7().simple().to_string(),
            hub: Arc::default(),
            keep_versions: DEFAULT_KEEP_VERSIONS,
            recovery_window: DEFAULT_RECOVERY_WINDOW,
        }
    }

    /// The same vault keeping `keep_versions` secret versions per credential and
    /// deleted credentials for `recovery_window`.
    pub fn with_history(
        mut self,
        keep_versions: usize,
        recovery_window: std::time::Duration,
    ) -> Self {
        self.keep_versions = keep_versions.max(1);
        self.recovery_window = recovery_window;
        self
    }

    /// How long a deleted credential stays recoverable.
    pub fn recovery_window(&self) -> std::time::Duration {
        self.recovery_window
    }

    /// The same vault with these report and budget settings.
    pub fn with_feedback(mut self, settings: FeedbackSettings) -> Self {
        self.feedback = Feedback::new(settings, self.keyring().active());
        self
    }

    /// Pauses, re-verifications under way and budgets.
    pub fn feedback(&self) -> &Feedback {
        &self.feedback
    }

    /// The provider account a secret speaks for.
    pub fn account_of(&self, secret: &ProviderSecret) -> Account {
        self.feedback.account(secret)
    }

    /// The end of the pause of the account `record` speaks for, while one is in
    /// force (opens the secret only when some account is paused).
    pub fn paused_until(&self, record: &CredentialRecord) -> Option<i64> {
        if !self.feedback.any_paused() {
            return None;
        }
        self.paused_for(&self.open(record).ok()?)
    }

    /// The end of the pause of the account `secret` speaks for, while one is in force.
    fn paused_for(&self, secret: &ProviderSecret) -> Option<i64> {
        if !self.feedback.any_paused() {
            return None;
        }
        self.feedback
            .paused_until(&self.account_of(secret), feedback::now_ms())
    }

    /// Pauses `account` until `until_ms` for every server sharing the store and
    /// every watcher of its credentials; the end in force. A store that cannot
    /// take the pause leaves it in force on this server alone.
    pub async fn pause(&self, account: Account, until_ms: i64) -> i64 {
        // The same 429 reported by many workers (or again and again) moves the end
        // by milliseconds: news only when it moves by a second or more.
        if let Some(current) = self.feedback.paused_until(&account, feedback::now_ms()) {
            if until_ms < current + PAUSE_MOVES_MS {
                metrics::pause_unchanged();
                return current;
            }
        }
        let until = match self.store.put_pause(&account, until_ms).await {
            Ok(stored) => stored.unwrap_or(until_ms),
            Err(e) => {
                // Still paused here: this replica's workers stop at once.
                tracing::warn!(error = %e, "a pause could not be shared with the other replicas; it holds on this one");
                until_ms
            }
        };
        if self.feedback.note_pause(account, until) {
            self.hub.account_changed(account);
        }
        self.feedback
            .paused_until(&account, feedback::now_ms())
            .unwrap_or(until)
    }

    /// Takes in a pause another server made (heard through the store).
    pub fn heard_pause(&self, account: Account, until_ms: i64) {
        if self.feedback.note_pause(account, until_ms) {
            self.hub.account_changed(account);
        }
    }

    /// Reads the pauses a shared store holds, for any this server missed.
    pub async fn resync_pauses(&self) -> Result<(), Error> {
        let stored = self.store.pauses(feedback::now_ms()).await?;
        for account in self.feedback.merge_pauses(&stored) {
            self.hub.account_changed(account);
        }
        Ok(())
    }

    /// Takes up to `want` requests from the budget of `record`'s account: for
    /// every replica when the store is shared, else in this process's memory.
    pub async fn take_tokens(&self, record: &CredentialRecord, want: u32) -> Result<Grant, Error> {
        let account = self.account_of(&self.open(record)?);
        let now = feedback::now_ms();
        let ms = |d: i64| u32::try_from(d.max(0)).unwrap_or(u32::MAX);
        if let Some(until) = self.feedback.paused_until(&account, now) {
            return Ok(Grant {
                granted: 0,
                valid_for_ms: 0,
                retry_after_ms: ms(until - now),
                paused_until_ms: Some(until),
            });
        }
        let window = self.feedback.window(now);
        let per_minute = record.request_budget_per_minute;
        if per_minute == 0 {
            // No budget: everything asked for, until the window ends.
            return Ok(Grant {
                granted: want,
                valid_for_ms: ms(window.end_ms - now),
                retry_after_ms: 0,
                paused_until_ms: None,
            });
        }
        let limit = self.feedback.per_window(per_minute);
        let want = want.min(Feedback::lease_cap(limit));
        let granted = match self
            .store
            .take_budget(&account, window.start_ms, want, limit)
            .await?
        {
            Some(granted) => granted,
            None => self.feedback.take_local(account, window, want, limit),
        };
        metrics::budget_tokens(granted, want);
        Ok(Grant {
            granted,
            valid_for_ms: if granted > 0 {
                ms(window.end_ms - now)
            } else {
                0
            },
            retry_after_ms: if granted > 0 {
                0
            } else {
                ms(window.end_ms - now).max(1)
            },
            paused_until_ms: None,
        })
    }

    /// The watch hub, told of every write this vault makes.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// The record with this id, as stored now, whatever the caller (for the watch hub).
    pub async fn peek(&self, id: &str) -> Result<Option<Arc<CredentialRecord>>, Error> {
        self.fetch(id).await
    }

    /// The stored record of `id`, refused when it is older than one this server
    /// has seen (see [`Vault::check_fresh`]).
    async fn fetch(&self, id: &str) -> Result<Option<Arc<CredentialRecord>>, Error> {
        let record = self.store.get_shared(id).await?;
        if let Some(record) = &record {
            self.check_mac_shared(record)?;
            self.check_fresh(record)?;
        }
        Ok(record)
    }

    /// [`Vault::check_mac`], once per record allocation: an `Arc` is immutable, so
    /// the same one verified before needs no second HMAC.
    fn check_mac_shared(&self, record: &Arc<CredentialRecord>) -> Result<(), Error> {
        let seen = lock(&self.verified)
            .get(&record.id)
            .and_then(std::sync::Weak::upgrade)
            .is_some_and(|v| Arc::ptr_eq(&v, record));
        if seen {
            return Ok(());
        }
        self.check_mac(record)?;
        if !record.mac.is_empty() {
            lock(&self.verified).insert(record.id.clone(), Arc::downgrade(record));
        }
        Ok(())
    }

    /// Refuses a record whose MAC does not verify (`DATA_LOSS`, counted and
    /// logged): a field was changed in the store behind the vault's back. A
    /// record without a MAC passes only until the start-up pass has authenticated
    /// the ones written before MACs.
    fn check_mac(&self, record: &CredentialRecord) -> Result<(), Error> {
        use std::sync::atomic::Ordering;
        match crate::sealing::verify_mac(&self.keyring(), record) {
            Ok(()) => Ok(()),
            Err(crate::sealing::MacError::Missing)
                if !self.macs_required.load(Ordering::Acquire) =>
            {
                Ok(())
            }
            Err(e) => {
                metrics::record_refused("mac");
                tracing::error!(credential_id = %record.id, error = %e, "a stored record fails its MAC: it was changed behind the vault's back; refused");
                Err(Error::DataLoss(format!(
                    "the stored record of credential {} was changed behind the vault's back ({e}); it is not served. Restore it from a backup or delete it",
                    record.id
                )))
            }
        }
    }

    /// What a store calls on a record it marks deleted or undeleted itself.
    fn stamp(&self) -> crate::store::Stamp {
        let keyring = self.keyring();
        Arc::new(move |record| crate::sealing::authenticate(&keyring, record))
    }

    /// Authenticates every record written before records carried MACs (live and
    /// deleted), then requires a MAC of every record read: run once at start.
    /// How many it authenticated.
    pub async fn authenticate_all(&self) -> Result<usize, Error> {
        let mut done = 0;
        let mut after: Option<String> = None;
        loop {
            let items = self.store.list(after.as_deref(), LIST_SCAN_BATCH).await?;
            let read = items.len();
            for (id, item) in items {
                // Every live record's revision starts the marks the audit trail records.
                if let Ok(record) = &item {
                    if self.check_fresh(record).is_err() {
                        after = Some(id);
                        continue;
                    }
                }
                if item.is_ok_and(|r| r.mac.is_empty()) {
                    match self
                        .change(&id, "while it was authenticated", |current| async move {
                            if current.mac.is_empty() {
                                Ok(Edit::Write(CredentialRecord::clone(&current)))
                            } else {
                                Ok(Edit::Keep)
                            }
                        })
                        .await
                    {
                        Ok(Changed::Written(_)) => done += 1,
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(credential_id = %id, error = %e, "a record could not be authenticated")
                        }
                    }
                }
                after = Some(id);
            }
            if read < LIST_SCAN_BATCH {
                break;
            }
        }
        let mut after: Option<String> = None;
        loop {
            let items = self
                .store
                .list_deleted(after.as_deref(), LIST_SCAN_BATCH)
                .await?;
            let read = items.len();
            for (id, item) in items {
                if let Some(record) = item.ok().filter(|r| r.mac.is_empty()) {
                    let mut next = record.clone();
                    crate::sealing::authenticate(&self.keyring(), &mut next);
                    match self.store.replace_deleted(&next, record.revision).await {
                        Ok(()) => done += 1,
                        Err(e) => {
                            tracing::warn!(credential_id = %id, error = %e, "a deleted record could not be authenticated")
                        }
                    }
                }
                after = Some(id);
            }
            if read < LIST_SCAN_BATCH {
                break;
            }
        }
        self.macs_required
            .store(true, std::sync::atomic::Ordering::Release);
        if done > 0 {
            tracing::info!(
                records = done,
                "records written before MACs are now authenticated"
            );
        }
        Ok(done)
    }

    /// Refuses a record whose revision is below the highest this server has seen
    /// of it (`DATA_LOSS`, counted and logged): revisions only grow, so a lower
    /// one was written back from a snapshot, a backup or an old row. Else notes it.
    fn check_fresh(&self, record: &CredentialRecord) -> Result<(), Error> {
        match self.marks.check(&record.id, record.revision) {
            Ok(()) => Ok(()),
            Err(seen) => {
                metrics::record_refused("replayed");
                tracing::error!(
                    credential_id = %record.id,
                    revision = record.revision,
                    seen,
                    "a stored record is older than one this server has served: it was put back behind the vault's back (a replayed row or a restored snapshot); refused"
                );
                Err(Error::DataLoss(format!(
                    "the stored record of credential {} (revision {}) is older than one this server has seen (revision {seen}): it was put back behind the vault's back; it is not served. Restore the credential's latest state or rotate it",
                    record.id, record.revision
                )))
            }
        }
    }

    /// Notes that `id` is now at `revision` (a write of this server), or, with
    /// `reset`, at exactly that (an undelete brings back a lower revision).
    fn mark(&self, id: &str, revision: u64, reset: bool) {
        self.marks.note(id, revision, reset);
    }

    /// The high-water marks this vault keeps, shared with the audit trail.
    pub fn marks(&self) -> Arc<crate::trail::Marks> {
        Arc::clone(&self.marks)
    }

    /// The same vault keeping its high-water marks in `marks` (the audit trail's).
    pub fn with_marks(mut self, marks: Arc<crate::trail::Marks>) -> Self {
        self.marks = marks;
        self
    }

    /// The id of the credential named `name` now, whatever the caller (for the watch hub).
    pub async fn peek_name(&self, name: &str) -> Result<Option<String>, Error> {
        Ok(self.store.id_for_name(name).await?)
    }

    /// This process's name in active-key announcements.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The keyring in use.
    pub fn keyring(&self) -> Arc<Keyring> {
        self.sealer.keyring()
    }

    /// Switches to another keyring, once it is checked to hold every key the data needs.
    ///
    /// The new active key is announced before its key check is written, so a
    /// rewrap running meanwhile (here or on another replica) cannot retire it.
    pub async fn replace_keyring(&self, keyring: Keyring) -> Result<(), KeyringError> {
        let store = &*self.store;
        keys::announce_active(store, &self.instance, keyring.active().id()).await?;
        if let Err(e) = keys::check_keyring(store, &keyring).await {
            // Refused: the key in use stays announced.
            let current = self.keyring();
            keys::announce_active(store, &self.instance, current.active().id()).await?;
            return Err(e);
        }
        self.feedback.set_key(keyring.active());
        self.sealer.set_keyring(keyring);
        // Account fingerprints follow the active key: the hub learns them again.
        self.hub.resync();
        Ok(())
    }

    /// Finds the credential a reference points at, within the caller's scope.
    ///
    /// A scoped caller gets the same `PERMISSION_DENIED` for a credential outside
    /// its scope as for one that does not exist, so it learns no names or ids.
    pub async fn locate(&self, caller: &Caller, r: &CredentialRef) -> Result<Located, Error> {
        match r {
            CredentialRef::Id(id) => {
                if !caller.is_scoped() {
                    return Ok(Located {
                        id: id.clone(),
                        record: None,
                    });
                }
                // A store that fails answers UNAVAILABLE, not "out of scope".
                let record = self.fetch(id).await?;
                caller.require_scope(id, record.as_ref().map(|r| r.name.as_str()))?;
                Ok(Located {
                    id: id.clone(),
                    record,
                })
            }
            CredentialRef::Name(name) => {
                caller.require_scope(name, Some(name))?;
                let id =
                    self.store.id_for_name(name).await?.ok_or_else(|| {
                        Error::NotFound(format!("no credential is named {name:?}"))
                    })?;
                Ok(Located { id, record: None })
            }
        }
    }

    /// The record of a located credential.
    pub async fn record(&self, at: &Located) -> Result<Arc<CredentialRecord>, Error> {
        match &at.record {
            Some(record) => Ok(Arc::clone(record)),
            None => self.fetch(&at.id).await?.ok_or_else(|| not_found(&at.id)),
        }
    }

    /// Creates a credential in the caller's scope, its secret checked first when
    /// asked, sealed under a new data key.
    pub async fn create(
        &self,
        caller: &Caller,
        new: NewCredential,
    ) -> Result<CredentialRecord, Error> {
        caller.require_scope(&new.name, Some(&new.name))?;
        if self.store.id_for_name(&new.name).await?.is_some() {
            // Fail before asking the provider; the insert below still guards races.
            return Err(StoreError::NameTaken(new.name).into());
        }
        let verification = self.check_on_write(&new.secret, new.check).await?;
        let now = Some(record::timestamp(SystemTime::now()));
        let mut record = CredentialRecord {
            format: RECORD_FORMAT,
            id: crate::validate::new_id(),
            name: new.name,
            description: new.description,
            provider: new.secret.provider().to_owned(),
            api_key_hint: new.secret.hint(),
            create_time: now,
            update_time: now,
            version: 1,
            last_verification: verification,
            expire_time: new.expire_time,
            revision: 1,
            secret: None,
            data_key: None,
            secret_fields: Vec::new(),
            request_budget_per_minute: new.request_budget_per_minute,
            secret_version: 1,
            secret_create_time: now,
            secret_created_by: caller.name.clone(),
            ..Default::default()
        };
        self.seal_into(&mut record, &new.secret).await?;
        crate::sealing::authenticate(&self.keyring(), &mut record);
        if let Err(e) = self.store.insert(&record).await {
            self.erase_quietly(&record.id, &[record.seal_id]).await;
            return Err(e.into());
        }
        self.mark(&record.id, record.revision, false);
        self.hub.changed(&record.id, &record.name);
        metrics::credentials_changed(1.0);
        Ok(record)
    }

    /// Updates a located credential as a new version; a new secret is checked
    /// first when asked, and is unverified otherwise. A new secret keeps the one it
    /// replaces as a version (sealed as it was), up to `--keep-versions`; older
    /// ones are destroyed. `by` names the caller (kept with the version).
    pub async fn update(
        &self,
        at: &Located,
        change: Change,
        by: &str,
    ) -> Result<CredentialRecord, Error> {
        let verification = match &change.secret {
            Some(secret) => self.check_on_write(secret, change.check).await?,
            None => None,
        };
        let (change, verification) = (&change, &verification);
        // Erasable keys made by attempts of the loop below, and those the written
        // record dropped: erased once the outcome is known.
        let made: Mutex<Vec<u64>> = Mutex::default();
        let dropped: Mutex<Vec<u64>> = Mutex::default();
        let (made_ref, dropped_ref) = (&made, &dropped);
        let outcome = self
            .change(&at.id, "while it was updated", |current| async move {
                if let Some(expected) = change.expected_version {
                    if expected != current.version {
                        return Err(StoreError::VersionMismatch {
                            id: current.id.clone(),
                            expected,
                            actual: current.version,
                        }
                        .into());
                    }
                }
                let mut next = CredentialRecord::clone(&current);
                if let Some(d) = &change.description {
                    next.description.clone_from(d);
                }
                match change.expiry {
                    Expiry::Keep => {}
                    Expiry::Set(t) => next.expire_time = Some(t),
                    Expiry::Clear => next.expire_time = None,
                }
                if let Some(secret) = &change.secret {
                    if secret.provider() != current.provider {
                        return Err(Error::FailedPrecondition(format!(
                            "credential {} holds a {} secret, not a {} one; create a new credential instead",
                            current.id,
                            current.provider,
                            secret.provider()
                        )));
                    }
                    if let Some(v) = change.rollback_of {
                        if !current.history.iter().any(|h| h.version == v && !h.destroyed()) {
                            return Err(Error::FailedPrecondition(format!(
                                "version {v} of credential {} was destroyed or dropped meanwhile; it cannot be rolled back to",
                                current.id
                            )));
                        }
                    }
                    let kept = self.retire_secret(&current, &mut next, made_ref).await?;
                    next.history.insert(0, kept);
                    next.secret_version = current.version + 1;
                    next.secret_create_time = Some(record::timestamp(SystemTime::now()));
                    by.clone_into(&mut next.secret_created_by);
                    self.seal_into(&mut next, secret).await?;
                    lock(made_ref).push(next.seal_id);
                    next.api_key_hint = secret.hint();
                    next.last_verification.clone_from(verification);
                    // A rollback not verified now carries forward what was last
                    // verified of that secret (ListCredentialVersions shows it too).
                    if let (None, Some(v)) = (verification, change.rollback_of) {
                        next.last_verification = current
                            .history
                            .iter()
                            .find(|h| h.version == v)
                            .and_then(|h| h.last_verification.clone());
                    }
                    let keep = self.keep_versions.saturating_sub(1);
                    let gone: Vec<u64> = if next.history.len() > keep {
                        next.history.drain(keep..).map(|v| v.seal_id).collect()
                    } else {
                        Vec::new()
                    };
                    next.erasable.retain(|k| !gone.contains(&k.seal_id));
                    *lock(dropped_ref) = gone;
                }
                if let Some(budget) = change.request_budget_per_minute {
                    next.request_budget_per_minute = budget;
                }
                let budget_only = change.description.is_none()
                    && change.secret.is_none()
                    && matches!(change.expiry, Expiry::Keep);
                if budget_only {
                    // No header changes: the version stays, watchers still hear the budget.
                    return Ok(Edit::Write(next));
                }
                Ok(Edit::NewVersion(next))
            })
            .await;
        let made = made.into_inner().unwrap_or_else(PoisonError::into_inner);
        let dropped = dropped.into_inner().unwrap_or_else(PoisonError::into_inner);
        match outcome {
            Ok(Changed::Written(record)) => {
                let kept = record.seal_ids();
                let erase: Vec<u64> = made
                    .into_iter()
                    .filter(|s| !kept.contains(s))
                    .chain(dropped)
                    .collect();
                self.erase_quietly(&record.id, &erase).await;
                Ok(*record)
            }
            Ok(Changed::Kept(record)) => Ok(CredentialRecord::clone(&record)),
            Ok(Changed::Gone) => {
                self.erase_quietly(&at.id, &made).await;
                Err(not_found(&at.id))
            }
            Err(e) => {
                self.erase_quietly(&at.id, &made).await;
                Err(e)
            }
        }
    }

    /// The current secret of `current` as a kept version for `next`: moved as it
    /// is (format 3), or sealed anew as format 3 for its version (older formats).
    async fn retire_secret(
        &self,
        current: &CredentialRecord,
        next: &mut CredentialRecord,
        made: &Mutex<Vec<u64>>,
    ) -> Result<SecretVersion, Error> {
        let version = if current.secret_version == 0 {
            current.version
        } else {
            current.secret_version
        };
        let mut kept = SecretVersion {
            version,
            create_time: current.secret_create_time.or(current.update_time),
            created_by: current.secret_created_by.clone(),
            api_key_hint: current.api_key_hint.clone(),
            last_verification: current.last_verification.clone(),
            secret: current.secret.clone(),
            data_key: current.data_key.clone(),
            seal_id: current.seal_id,
            secret_fields: current.secret_fields.clone(),
            destroy_time: None,
            destroyed_by: String::new(),
            // Kept as current was sealed (format 4), or sealed anew as format 4 below.
            format: RECORD_FORMAT,
        };
        if current.format != RECORD_FORMAT {
            let plaintext = self
                .sealer
                .open(current)
                .map_err(|e| damaged(&current.id, &e))?;
            let (key, (secret, data_key)) = self
                .sealer
                .seal_version(
                    &*self.store,
                    &current.id,
                    &current.name,
                    &current.provider,
                    version,
                    &plaintext,
                )
                .await?;
            lock(made).push(key.seal_id);
            kept.seal_id = key.seal_id;
            kept.secret = Some(secret);
            kept.data_key = Some(data_key);
            next.erasable.push(key);
        }
        Ok(kept)
    }

    /// Erases erasable keys; a failure is logged (the sled store erases what no
    /// record refers to at its next start).
    async fn erase_quietly(&self, id: &str, seal_ids: &[u64]) {
        if seal_ids.is_empty() {
            return;
        }
        if let Err(e) = self.store.erase(id, seal_ids).await {
            tracing::warn!(credential_id = %id, error = %e, "erasable keys could not be erased now");
        }
    }

    /// Makes the secret of kept version `version` current again, as a new version
    /// (checked with the provider first when asked).
    pub async fn rollback(
        &self,
        at: &Located,
        version: u64,
        expected_version: Option<u64>,
        check: CheckOnWrite,
        by: &str,
    ) -> Result<CredentialRecord, Error> {
        let record = self.record(at).await?;
        let id = &record.id;
        let entry = match record.history.iter().find(|v| v.version == version) {
            Some(v) if v.destroyed() => {
                return Err(Error::FailedPrecondition(format!(
                    "version {version} of credential {id} was destroyed; it cannot be rolled back to"
                )))
            }
            Some(v) => v,
            None if version == record.secret_version => {
                return Err(Error::FailedPrecondition(format!(
                    "version {version} is the current secret of credential {id} already"
                )))
            }
            None => {
                return Err(Error::NotFound(format!(
                    "credential {id} keeps no version {version} (ListCredentialVersions shows those it keeps)"
                )))
            }
        };
        let plaintext = crate::sealing::open_version(&self.keyring(), &record, entry)
            .map_err(|e| damaged(id, &e))?;
        let secret = self
            .providers
            .current()
            .read(&record.provider, &plaintext)
            .map_err(|e| unreadable(&record, &e))?;
        let change = Change {
            description: None,
            expiry: Expiry::Keep,
            secret: Some(secret),
            check,
            expected_version,
            request_budget_per_minute: None,
            rollback_of: Some(version),
        };
        self.update(at, change, by).await
    }

    /// Destroys kept version `version` for good: its sealed secret leaves the
    /// record and its erasable key is erased. The current version cannot be.
    pub async fn destroy_version(
        &self,
        at: &Located,
        version: u64,
        by: &str,
    ) -> Result<SecretVersion, Error> {
        let outcome = self
            .change(&at.id, "while a version was destroyed", |current| async move {
                let id = &current.id;
                if version == current.secret_version {
                    return Err(Error::FailedPrecondition(format!(
                        "version {version} is the current secret of credential {id}; rotate or roll back first, then destroy it"
                    )));
                }
                let Some(i) = current.history.iter().position(|v| v.version == version) else {
                    return Err(Error::NotFound(format!(
                        "credential {id} keeps no version {version}"
                    )));
                };
                if current.history[i].destroyed() {
                    return Ok(Edit::Keep);
                }
                let mut next = CredentialRecord::clone(&current);
                let v = &mut next.history[i];
                v.secret = None;
                v.data_key = None;
                v.destroy_time = Some(record::timestamp(SystemTime::now()));
                by.clone_into(&mut v.destroyed_by);
                let seal_id = v.seal_id;
                next.erasable.retain(|k| k.seal_id != seal_id);
                Ok(Edit::Write(next))
            })
            .await?;
        let record = match outcome {
            Changed::Written(record) => *record,
            Changed::Kept(record) => CredentialRecord::clone(&record),
            Changed::Gone => return Err(not_found(&at.id)),
        };
        let entry = record
            .history
            .iter()
            .find(|v| v.version == version)
            .cloned()
            .ok_or_else(|| not_found(&at.id))?;
        // Erased now, or the call fails (and is safe to repeat).
        self.store
            .erase(&record.id, &[entry.seal_id])
            .await
            .map_err(|e| {
                Error::Unavailable(format!(
                    "version {version} left the record but its key could not be erased ({e}); retry"
                ))
            })?;
        Ok(entry)
    }

    /// Deletes a located credential, if it is at `expected_version` when one is
    /// given: at once it is served no more and its name is free; it stays
    /// recoverable by id until the returned purge time, unless `force` (or a zero
    /// recovery window) deletes it for good, erasing every version's key.
    pub async fn delete(
        &self,
        at: &Located,
        expected_version: Option<u64>,
        force: bool,
        by: &str,
    ) -> Result<Option<prost_types::Timestamp>, Error> {
        // The name tells watchers of the name; the record may be gone already.
        let deleting = self.record(at).await.ok();
        let name = deleting.as_ref().map(|r| r.name.clone());
        let purge_time = if force || self.recovery_window.is_zero() {
            self.store.delete(&at.id, expected_version).await?;
            None
        } else {
            let now = SystemTime::now();
            let deletion = Deletion {
                delete_time: record::timestamp(now),
                purge_time: record::timestamp(now + self.recovery_window),
                deleted_by: by.to_owned(),
            };
            match self
                .store
                .delete_keeping(&at.id, expected_version, &deletion, &self.stamp())
                .await
            {
                Ok(kept) => kept.purge_time,
                // A record too damaged to read cannot be brought back: it goes for good.
                Err(StoreError::Corrupt { .. }) if expected_version.is_none() => {
                    self.store.delete(&at.id, None).await?;
                    None
                }
                Err(e) => return Err(e.into()),
            }
        };
        // Its live row, put back later, is older than this deletion: refused.
        if let Some(r) = &deleting {
            self.mark(&r.id, r.revision + 1, false);
        }
        self.hub
            .changed(&at.id, name.as_deref().unwrap_or_default());
        metrics::credentials_changed(-1.0);
        Ok(purge_time)
    }

    /// Purges a credential in its recovery window at once (`DeleteCredential`
    /// with `force` on a deleted credential: a leaked key made unrecoverable
    /// early), within the caller's scope. `None` when no deleted credential has `id`.
    pub async fn purge_deleted(&self, caller: &Caller, id: &str) -> Result<Option<()>, Error> {
        let Some(deleted) = self.store.deleted(id).await? else {
            return Ok(None);
        };
        caller.require_scope(id, Some(&deleted.name))?;
        match self.store.purge(id).await {
            Ok(()) | Err(StoreError::NotFound(_)) => Ok(Some(())),
            Err(e) => Err(e.into()),
        }
    }

    /// Purges `id` now, best effort (the background purge retries).
    async fn purge_now(&self, id: &str) {
        if let Err(e) = self.store.purge(id).await {
            if !matches!(e, StoreError::NotFound(_)) {
                tracing::warn!(credential_id = %id, error = %e, "a deleted credential past its purge time could not be purged yet; retried later");
            }
        }
    }

    /// Brings back a deleted credential (by id, within its recovery window) with
    /// its history, when its name is still free.
    pub async fn undelete(&self, caller: &Caller, id: &str) -> Result<CredentialRecord, Error> {
        let gone = || {
            Error::NotFound(format!(
                "no deleted credential has id {id} (never deleted, purged, or deleted with force)"
            ))
        };
        let Some(deleted) = self.store.deleted(id).await? else {
            if caller.is_scoped() {
                // The same answer as for one out of scope: ids are not probed.
                caller.require_scope(id, None)?;
            }
            return Err(gone());
        };
        caller.require_scope(id, Some(&deleted.name))?;
        // A deleted record changed in the store is not brought back (nor re-authenticated).
        self.check_mac(&deleted)?;
        // Its recovery window has ended: it is gone now, whether or not the
        // background purge has come by yet (and it goes now).
        if purge_due(&deleted, &record::timestamp(SystemTime::now())) {
            self.purge_now(id).await;
            return Err(gone());
        }
        let back = match self.store.undelete(id, &self.stamp()).await {
            Ok(back) => back,
            Err(StoreError::NameTaken(name)) => {
                return Err(Error::AlreadyExists(format!(
                    "the name {name:?} was taken by another credential after {id} was deleted; delete or rename that one first"
                )))
            }
            Err(StoreError::NotFound(_)) => return Err(gone()),
            Err(e) => return Err(e.into()),
        };
        self.mark(&back.id, back.revision, true);
        self.hub.changed(&back.id, &back.name);
        metrics::credentials_changed(1.0);
        Ok(back)
    }

    /// Up to `size` deleted credentials in the caller's scope, in id order after `after`.
    pub async fn list_deleted(
        &self,
        caller: &Caller,
        mut after: Option<String>,
        size: usize,
    ) -> Result<Page, Error> {
        let batch = LIST_SCAN_BATCH.max(size + 1);
        let mut records: Vec<CredentialRecord> = Vec::new();
        let mut more = false;
        'scan: loop {
            let items = self.store.list_deleted(after.as_deref(), batch).await?;
            let read = items.len();
            let now = record::timestamp(SystemTime::now());
            for (id, record) in items {
                // Past its purge time it is not recoverable: not listed either.
                if let Some(record) = record.ok().filter(|r| !purge_due(r, &now)) {
                    if caller.in_scope(&record.name) {
                        if records.len() == size {
                            more = true;
                            break 'scan;
                        }
                        records.push(record);
                    }
                }
                after = Some(id);
            }
            if read < batch {
                break;
            }
        }
        Ok(Page {
            records,
            usages: HashMap::new(),
            next_after: after.filter(|_| more),
        })
    }

    /// Erases erasable keys no record refers to that are older than `grace` (see
    /// [`Store::sweep_erasable`]); how many.
    pub async fn sweep_erasable(&self, grace: std::time::Duration) -> Result<u64, Error> {
        Ok(self.store.sweep_erasable(grace).await?)
    }

    /// Purges the deleted credentials whose recovery window has ended: each
    /// record and every version's erasable key go for good. How many went.
    pub async fn purge_due(&self) -> Result<usize, Error> {
        let now = record::timestamp(SystemTime::now());
        let mut after: Option<String> = None;
        let mut purged = 0;
        loop {
            let items = self
                .store
                .list_deleted(after.as_deref(), LIST_SCAN_BATCH)
                .await?;
            let read = items.len();
            for (id, record) in items {
                let due = record.as_ref().is_ok_and(|r| purge_due(r, &now));
                if due {
                    match self.store.purge(&id).await {
                        Ok(()) | Err(StoreError::NotFound(_)) => purged += 1,
                        Err(e) => {
                            tracing::warn!(credential_id = %id, error = %e, "a deleted credential could not be purged; retried later")
                        }
                    }
                }
                after = Some(id);
            }
            if read < LIST_SCAN_BATCH {
                return Ok(purged);
            }
        }
    }

    /// Up to `size` records in the caller's scope that pass `filter`, in id
    /// order after `after`, with their last uses.
    pub async fn list(
        &self,
        caller: &Caller,
        filter: &ListFilter,
        mut after: Option<String>,
        size: usize,
    ) -> Result<Page, Error> {
        let batch = LIST_SCAN_BATCH.max(size + 1);
        let mut records: Vec<CredentialRecord> = Vec::new();
        let mut more = false;
        'scan: loop {
            let items = self.store.list(after.as_deref(), batch).await?;
            let read = items.len();
            for (id, record) in items {
                // A record changed behind the vault's back is left out (and logged).
                let record = record
                    .map_err(Error::from)
                    .and_then(|r| self.check_mac(&r).map(|()| r));
                match record {
                    Ok(record) if filter.matches(&record) && caller.in_scope(&record.name) => {
                        if records.len() == size {
                            more = true;
                            break 'scan;
                        }
                        records.push(record);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!(credential_id = %id, error = %e, "unreadable record left out of a listing");
                    }
                }
                after = Some(id);
            }
            if read < batch {
                break;
            }
        }
        // Last uses for the whole page at once (one query on PostgreSQL, not one per row).
        let ids: Vec<String> = records.iter().map(|r| r.id.clone()).collect();
        let usages = self.last_uses(&ids).await;
        Ok(Page {
            records,
            usages,
            next_after: after.filter(|_| more),
        })
    }

    /// Up to `limit` records of any scope in id order after `after` (for sweeps).
    pub async fn scan(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<crate::store::ListItem>, Error> {
        Ok(self.store.list(after, limit).await?)
    }

    /// Opens a record's secret for `reader`: the headers to send and the opened
    /// bytes (to fingerprint for the audit trail); notes the read as a last use.
    pub fn read_headers(
        &self,
        record: &CredentialRecord,
        reader: &str,
    ) -> Result<HeadersRead, Error> {
        let (secret, plaintext) = self.open_with_plaintext(record)?;
        let headers = self.providers.current().headers(&secret).ok_or_else(|| {
            unreadable(
                record,
                &SecretFormatError::UnknownProvider(record.provider.clone()),
            )
        })?;
        let paused_until_ms = self.paused_for(&secret);
        self.note_use(&record.id, reader);
        Ok(HeadersRead {
            headers,
            plaintext,
            paused_until_ms,
        })
    }

    /// Every stored byte at one instant, for a backup.
    pub async fn snapshot(&self) -> Result<crate::store::Snapshot, Error> {
        Ok(self.store.snapshot().await?)
    }

    /// Makes every acknowledged write durable.
    pub async fn flush(&self) -> Result<(), Error> {
        Ok(self.store.flush().await?)
    }

    /// Announces again which master key this process uses (see [`keys::announce_active`]).
    pub async fn announce_active(&self) -> Result<(), StoreError> {
        let active = self.keyring().active().id().to_owned();
        keys::announce_active(&*self.store, &self.instance, &active).await
    }

    /// Reads, changes and writes one record with check-and-set, retrying when
    /// another write won the race. The one place that moves `revision` (on
    /// every write) and `version` and `update_time` (on a new version).
    async fn change<F, Fut>(&self, id: &str, what: &str, mut edit: F) -> Result<Changed, Error>
    where
        F: FnMut(Arc<CredentialRecord>) -> Fut,
        Fut: Future<Output = Result<Edit, Error>>,
    {
        for _ in 0..MAX_CAS_RETRIES {
            let Some(current) = self.fetch(id).await? else {
                return Ok(Changed::Gone);
            };
            let (mut next, new_version) = match edit(Arc::clone(&current)).await? {
                Edit::Keep => return Ok(Changed::Kept(current)),
                Edit::Write(next) => (next, false),
                Edit::NewVersion(next) => (next, true),
            };
            next.revision = current.revision + 1;
            if new_version {
                next.version = current.version + 1;
                next.update_time = Some(record::timestamp(SystemTime::now()));
            }
            crate::sealing::authenticate(&self.keyring(), &mut next);
            match self.store.replace(&next, current.revision).await {
                Ok(()) => {
                    self.mark(&next.id, next.revision, false);
                    self.hub.changed(&next.id, &next.name);
                    return Ok(Changed::Written(Box::new(next)));
                }
                // Written meanwhile: read it again (and decide again).
                Err(StoreError::Conflict(_)) => continue,
                Err(StoreError::NotFound(_)) => return Ok(Changed::Gone),
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Aborted(format!(
            "credential {id} kept changing {what}; retry"
        )))
    }

    /// Notes a read of the credential's secret, in memory (see [`Vault::flush_usage`]).
    pub fn note_use(&self, id: &str, caller: &str) {
        let time = Some(record::timestamp(SystemTime::now()));
        let mut pending = self
            .pending_usage
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Most reads repeat a credential already noted: update it in place.
        match pending.get_mut(id) {
            Some(usage) => {
                usage.time = time;
                if usage.caller != caller {
                    caller.clone_into(&mut usage.caller);
                }
            }
            None => {
                let caller = caller.to_owned();
                pending.insert(id.to_owned(), Usage { time, caller });
            }
        }
    }

    /// The last read of a credential's secret, noted or stored.
    pub async fn last_use(&self, id: &str) -> Option<Usage> {
        let pending = self
            .pending_usage
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned();
        match pending {
            Some(usage) => Some(usage),
            None => self.store.usage(id).await.ok().flatten(),
        }
    }

    /// The last uses of several credentials, noted or stored, in one store query.
    pub async fn last_uses(&self, ids: &[String]) -> std::collections::HashMap<String, Usage> {
        let mut found = self.store.usages(ids).await.unwrap_or_default();
        let pending = self
            .pending_usage
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for id in ids {
            if let Some(u) = pending.get(id) {
                found.insert(id.clone(), u.clone());
            }
        }
        found
    }

    /// Writes the noted reads to the store in one batch; returns how many.
    pub async fn flush_usage(&self) -> Result<usize, Error> {
        let batch: Vec<(String, Usage)> = std::mem::take(
            &mut *self
                .pending_usage
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
        .into_iter()
        .collect();
        if batch.is_empty() {
            return Ok(0);
        }
        // One credential's bad row costs that row only (see `write_isolating`).
        let (written, failure) = crate::store::write_isolating(&batch, |group| async move {
            self.store.record_usage(&group).await
        })
        .await;
        for ((id, _), w) in batch.iter().zip(&written) {
            if let crate::store::Written::SetAside(why) = w {
                metrics::row_set_aside("usage");
                tracing::warn!(credential_id = %id, error = %why, "the database refused a last-use row; it is set aside");
            }
        }
        if let Some(e) = failure {
            return Err(e.into());
        }
        Ok(batch.len())
    }

    /// Seals `secret` into `record` (whose id and provider are set) under a new
    /// data key, wrapped by the active master key.
    pub async fn seal_into(
        &self,
        record: &mut CredentialRecord,
        secret: &ProviderSecret,
    ) -> Result<(), Error> {
        self.sealer
            .seal(&*self.store, record, &secret.to_plaintext())
            .await?;
        // Built-in providers' fields are compiled in; a declared one's may change.
        record.secret_fields = if secret.is_declared() {
            secret.set_fields()
        } else {
            Vec::new()
        };
        Ok(())
    }

    /// The providers in use now (built in and declared).
    pub fn providers(&self) -> &Providers {
        &self.providers
    }

    /// Opens a record's secret; `DATA_LOSS` if it is damaged or sealed by another key.
    pub fn open(&self, record: &CredentialRecord) -> Result<ProviderSecret, Error> {
        self.open_with_plaintext(record).map(|(secret, _)| secret)
    }

    /// Opens a record's secret, also returning the opened bytes (e.g. to fingerprint them).
    pub fn open_with_plaintext(
        &self,
        record: &CredentialRecord,
    ) -> Result<(ProviderSecret, Zeroizing<Vec<u8>>), Error> {
        self.open_in(&self.providers.current(), record)
    }

    /// Opens a record's secret as `catalog`'s provider of its name reads it.
    fn open_in(
        &self,
        catalog: &Catalog,
        record: &CredentialRecord,
    ) -> Result<(ProviderSecret, Zeroizing<Vec<u8>>), Error> {
        let plaintext = self
            .sealer
            .open(record)
            .map_err(|e| damaged(&record.id, &e))?;
        let secret = catalog
            .read(&record.provider, &plaintext)
            .map_err(|e| unreadable(record, &e))?;
        Ok((secret, plaintext))
    }

    /// Re-seals every record's data key under the active master key, online, in
    /// batches of `batch` (the records of a batch concurrently, so one fsync
    /// covers many). `progress` hears after each batch and stops the rewrap by
    /// returning false. At the end, drops the key checks of master keys no record
    /// depends on any more.
    pub async fn rewrap(
        &self,
        batch: usize,
        mut progress: impl FnMut(&RewrapProgress) -> bool,
    ) -> Result<RewrapReport, Error> {
        let mut report = RewrapReport {
            progress: RewrapProgress {
                total: self.store.count().await? as u64,
                ..Default::default()
            },
            ..Default::default()
        };
        let mut after: Option<String> = None;
        loop {
            let page = self.store.list(after.as_deref(), batch.max(1)).await?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            let outcomes =
                futures_util::future::join_all(page.into_iter().map(|(id, item)| async move {
                    let outcome = match item {
                        Ok(_) => self.rewrap_one(&id).await,
                        Err(e) => Err(e.into()),
                    };
                    (id, outcome)
                }))
                .await;
            for (id, outcome) in outcomes {
                report.progress.scanned += 1;
                match outcome {
                    Ok(Rewrapped::Now(keys)) => {
                        report.progress.rewrapped += 1;
                        for key in keys {
                            *report.referenced.entry(key).or_default() += 1;
                        }
                    }
                    Ok(Rewrapped::Already(keys)) => {
                        for key in keys {
                            *report.referenced.entry(key).or_default() += 1;
                        }
                    }
                    Ok(Rewrapped::Gone) => {}
                    Err(e) => {
                        tracing::warn!(credential_id = %id, error = %e, "rewrap skipped a record");
                        // A record that cannot be opened may still need its old keys.
                        if let Ok(Some(record)) = self.store.get(&id).await {
                            for key in record.master_key_ids() {
                                *report.referenced.entry(key).or_default() += 1;
                            }
                        } else {
                            *report.referenced.entry("unknown".into()).or_default() += 1;
                        }
                        report.progress.failed.push(id);
                    }
                }
            }
            if !progress(&report.progress) {
                return Err(Error::Aborted(
                    "the rewrap was stopped; run it again to finish (it is safe to repeat)".into(),
                ));
            }
            tokio::task::yield_now().await;
        }
        // Deleted credentials too: a key may retire only when nothing recoverable needs it.
        self.rewrap_deleted(batch, &mut report).await?;
        let active = self.keyring().active().id().to_owned();
        report.retired = keys::retire_unused(&*self.store, &active, &report.referenced).await?;
        report.active_key_id = active;
        Ok(report)
    }

    async fn rewrap_one(&self, id: &str) -> Result<Rewrapped, Error> {
        let outcome = self
            .change(
                id,
                "during the rewrap (run it again)",
                |record| async move {
                    match self.sealer.rewrap(&*self.store, &record).await {
                        Ok(Some(next)) => Ok(Edit::Write(next)),
                        Ok(None) => Ok(Edit::Keep),
                        Err(SealError::Open(e)) => Err(damaged(&record.id, &e)),
                        Err(SealError::Refused(e)) => Err(e.into()),
                    }
                },
            )
            .await?;
        Ok(match outcome {
            Changed::Kept(record) => Rewrapped::Already(record.master_key_ids()),
            Changed::Written(record) => Rewrapped::Now(record.master_key_ids()),
            Changed::Gone => Rewrapped::Gone,
        })
    }

    /// Rewraps the deleted credentials, counting the keys they depend on.
    async fn rewrap_deleted(&self, batch: usize, report: &mut RewrapReport) -> Result<(), Error> {
        let mut after: Option<String> = None;
        loop {
            let page = self
                .store
                .list_deleted(after.as_deref(), batch.max(1))
                .await?;
            let Some((last, _)) = page.last() else {
                return Ok(());
            };
            after = Some(last.clone());
            for (id, item) in page {
                let keys = match item {
                    Ok(record) => match self.sealer.rewrap(&*self.store, &record).await {
                        Ok(Some(mut next)) => {
                            crate::sealing::authenticate(&self.keyring(), &mut next);
                            match self.store.replace_deleted(&next, record.revision).await {
                                Ok(()) => next.master_key_ids(),
                                Err(e) => {
                                    tracing::warn!(credential_id = %id, error = %e, "rewrap skipped a deleted record");
                                    record.master_key_ids()
                                }
                            }
                        }
                        Ok(None) => record.master_key_ids(),
                        Err(e) => {
                            tracing::warn!(credential_id = %id, error = %e, "rewrap skipped a deleted record");
                            record.master_key_ids()
                        }
                    },
                    Err(_) => vec!["unknown".to_owned()],
                };
                for key in keys {
                    *report.referenced.entry(key).or_default() += 1;
                }
            }
        }
    }

    /// Asks the provider about `secret`, counting the outcome by `source`.
    pub async fn check(&self, secret: &ProviderSecret, source: Source) -> Verification {
        let verification = self.providers.verify(secret).await;
        metrics::verification(secret.provider(), verification.status().name(), source);
        verification
    }

    /// Checks a secret before it is written when `check` asks to: the result to store with it.
    async fn check_on_write(
        &self,
        secret: &ProviderSecret,
        check: CheckOnWrite,
    ) -> Result<Option<Verification>, Error> {
        match check {
            CheckOnWrite::No => Ok(None),
            CheckOnWrite::Strict => self.check_before_write(secret, false).await.map(Some),
            CheckOnWrite::BestEffort => self.check_before_write(secret, true).await.map(Some),
        }
    }

    /// Checks a secret before it is written: `Ok` with the result when it may be stored.
    ///
    /// A definite rejection fails with `FAILED_PRECONDITION` naming the rejected
    /// value; an inconclusive check fails with `UNAVAILABLE` unless `best_effort`.
    pub async fn check_before_write(
        &self,
        secret: &ProviderSecret,
        best_effort: bool,
    ) -> Result<Verification, Error> {
        let verification = self.check(secret, Source::Write).await;
        let provider = secret.provider();
        let rejected = |what: &str| {
            Error::FailedPrecondition(format!(
                "{provider} rejected the {what}, so nothing was stored: {}",
                verification.message
            ))
        };
        match verification.status() {
            VerificationStatus::Valid => Ok(verification),
            VerificationStatus::ApiKeyRejected
            | VerificationStatus::AccountTokenRejected
            | VerificationStatus::SecretRejected => Err(rejected(
                Some(verification.rejected_field.as_str())
                    .filter(|f| !f.is_empty())
                    .unwrap_or("secret"),
            )),
            VerificationStatus::Forbidden => Err(rejected("secret (forbidden)")),
            VerificationStatus::RateLimited
            | VerificationStatus::Unreachable
            | VerificationStatus::ProviderError
            | VerificationStatus::Unspecified => {
                if best_effort {
                    Ok(verification)
                } else {
                    Err(Error::Unavailable(format!(
                        "could not verify with {provider}, so nothing was stored: {}; retry, or set verify_best_effort to store it anyway",
                        verification.message
                    )))
                }
            }
        }
    }

    /// Checks a stored credential and records the result; returns it and the record as stored.
    pub async fn verify_record(
        &self,
        record: &CredentialRecord,
        source: Source,
    ) -> Result<(Verification, CredentialRecord), Error> {
        let verification = {
            let secret = self.open(record)?;
            self.check(&secret, source).await
        };
        let stored = self.record_verification(record, &verification).await?;
        Ok((verification, stored))
    }

    /// Stores a verification on the credential, unless its secret changed meanwhile.
    pub async fn record_verification(
        &self,
        verified: &CredentialRecord,
        verification: &Verification,
    ) -> Result<CredentialRecord, Error> {
        let outcome = self
            .change(
                &verified.id,
                "while its verification was stored",
                |current| async move {
                    if current.secret != verified.secret {
                        // A rotation won the race: this result speaks of the old secret.
                        return Ok(Edit::Keep);
                    }
                    let mut next = CredentialRecord::clone(&current);
                    next.last_verification = Some(verification.clone());
                    Ok(Edit::Write(next))
                },
            )
            .await?;
        match outcome {
            Changed::Kept(current) => Ok(CredentialRecord::clone(&current)),
            Changed::Written(next) => Ok(*next),
            Changed::Gone => Err(Error::NotFound(format!(
                "credential {} was deleted during verification",
                verified.id
            ))),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn not_found(id: &str) -> Error {
    Error::NotFound(format!("credential {id} not found"))
}

/// Why an opened secret cannot be used: its provider is not declared now or
/// requires a field it lacks (both `FAILED_PRECONDITION`: nothing is lost), or
/// the bytes are not its provider's format (`DATA_LOSS`).
fn unreadable(record: &CredentialRecord, why: &SecretFormatError) -> Error {
    let (id, provider) = (&record.id, &record.provider);
    match why {
        SecretFormatError::UnknownProvider(_) => Error::FailedPrecondition(format!(
            "credential {id} is for provider {provider:?}, which is neither built in nor declared in the providers file now; its secret stays sealed until the provider is declared again"
        )),
        SecretFormatError::Missing(field) => Error::FailedPrecondition(format!(
            "credential {id} lacks {provider}.{field}, which the provider's declaration now requires; update its secret"
        )),
        SecretFormatError::Malformed => damaged(id, &OpenError::Failed),
    }
}

fn damaged(id: &str, why: &OpenError) -> Error {
    match why {
        OpenError::UnknownKey(key_id) => Error::DataLoss(format!(
            "the secret of credential {id} cannot be decrypted: it was sealed with master key {key_id}, which is not in the keyring"
        )),
        OpenError::Erased => Error::DataLoss(format!(
            "the secret of credential {id} cannot be decrypted: its erasable key is gone (the version was destroyed, or the store's key files were lost)"
        )),
        OpenError::Failed => Error::DataLoss(format!(
            "the secret of credential {id} cannot be decrypted: the stored record is damaged or was sealed with another master key"
        )),
    }
}

/// Whether a deleted record's recovery window has ended at `now`.
fn purge_due(record: &CredentialRecord, now: &Timestamp) -> bool {
    record
        .purge_time
        .is_some_and(|t| (t.seconds, t.nanos) <= (now.seconds, now.nanos))
}
