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

mod accounts;
mod crud;
mod history;
mod model;
mod report;
mod rewrap;
mod usage;
mod verify;

pub use model::*;
pub use report::*;

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
    pub fn new(
        store: Arc<S>,
        keyring: impl Into<Arc<Keyring>>,
        seals: SealCounter,
        providers: Providers,
    ) -> Self {
        let keyring = keyring.into();
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

    /// The store it reads and writes.
    pub fn store(&self) -> &Arc<S> {
        &self.store
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
        // The mark before the read: a write that ends while the read is under way
        // may mark a revision the read did not see (a race, not a replay).
        let floor = self.marks.seen(id);
        let record = self.store.get_shared(id).await?;
        if let Some(record) = &record {
            self.check_mac_shared(record)?;
            self.check_fresh(record, floor)?;
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
                    if self
                        .check_fresh(record, self.marks.seen(&record.id))
                        .is_err()
                    {
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

    /// Refuses a record whose revision is below `floor`, the highest this server
    /// had seen of it when the read began (`DATA_LOSS`, counted and logged):
    /// revisions only grow, so a lower one was written back from a snapshot, a
    /// backup or an old row. Else notes it.
    fn check_fresh(&self, record: &CredentialRecord, floor: Option<u64>) -> Result<(), Error> {
        match self.marks.check(&record.id, record.revision, floor) {
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

    /// A record this server wrote: its revision marked (see [`Vault::mark`]) and
    /// the change published to the feed, for the watchers.
    fn published(&self, record: &CredentialRecord, reset: bool) {
        self.mark(&record.id, record.revision, reset);
        self.hub.changed(&record.id, &record.name);
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
                    self.published(&next, false);
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
