//! The gRPC service: authenticates and authorises every call, validates the
//! request, converts between proto and domain types, and drives the vault core.
//!
//! Each RPC emits exactly one tracing event (method, caller, credential id,
//! code, latency); none carries a secret.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Instant, SystemTime};

use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};

use crate::api::{self, credential_vault_service_server::CredentialVaultService};
use crate::audit::{AuditEntry, AuditLog, AuditQuery};
use crate::auth::{Caller, Permission};
use crate::error::Error;
use crate::gate::Authenticated;
use crate::metrics;
use crate::provider::ProviderSecret;
use crate::record::{
    self, CredentialRecord, Usage, Verification, VerificationStatus, RECORD_FORMAT,
};
use crate::store::{Store, StoreError};
use crate::validate;
use crate::vault::{Vault, MAX_CAS_RETRIES};

/// How many records a listing reads from the store at a time (at least a page).
const LIST_SCAN_BATCH: usize = 256;

/// A credential addressed by id or by name.
enum CredentialRef {
    Id(String),
    Name(String),
}

macro_rules! credential_ref_from {
    ($($module:ident),*) => {$(
        impl From<api::$module::Ref> for CredentialRef {
            fn from(r: api::$module::Ref) -> Self {
                match r {
                    api::$module::Ref::Id(id) => CredentialRef::Id(id),
                    api::$module::Ref::Name(name) => CredentialRef::Name(name),
                }
            }
        }
    )*};
}

credential_ref_from!(
    get_credential_request,
    update_credential_request,
    delete_credential_request,
    verify_credential_request,
    get_credential_headers_request
);

fn required_ref(r: Option<impl Into<CredentialRef>>) -> Result<CredentialRef, Error> {
    r.map(Into::into)
        .ok_or_else(|| Error::invalid("the credential is required: set id or name"))
}

/// The vault's gRPC service over a store `S`.
pub struct VaultService<S> {
    vault: Arc<Vault<S>>,
    audit: Arc<AuditLog>,
}

/// One call in progress: who makes it, and what it touched (for the audit trail).
struct Call {
    caller: Arc<Caller>,
    target: Mutex<Target>,
}

#[derive(Default)]
struct Target {
    id: String,
    name: String,
    fingerprint: String,
    verification: &'static str,
}

impl Call {
    fn touch(&self, id: &str, name: &str) {
        let mut t = self.target.lock().unwrap_or_else(PoisonError::into_inner);
        id.clone_into(&mut t.id);
        name.clone_into(&mut t.name);
    }

    fn verified(&self, v: &Verification) {
        self.target
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .verification = status_name(v);
    }

    fn read_secret(&self, fingerprint: String) {
        self.target
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .fingerprint = fingerprint;
    }
}

impl<S: Store> VaultService<S> {
    /// A service over the vault core, auditing to `audit`; its callers come authenticated
    /// by the [`crate::gate`] in front of it.
    pub fn new(vault: Arc<Vault<S>>, audit: Arc<AuditLog>) -> Self {
        VaultService { vault, audit }
    }

    /// Runs one RPC: authenticate, authorise, handle; then one log event, one
    /// audit event and the metrics.
    async fn rpc<Req, Resp, F, Fut>(
        &self,
        method: &'static str,
        permission: Permission,
        request: Request<Req>,
        handle: F,
    ) -> Result<Response<Resp>, Status>
    where
        F: FnOnce(Arc<Call>, Req) -> Fut,
        Fut: Future<Output = Result<Resp, Error>>,
    {
        let start = Instant::now();
        let peer = request.remote_addr();
        // One event per call, with every field on it (no span: entering and
        // recording one per call would cost the hot path for nothing).
        let mut call = None;
        let result = async {
            // The gate authenticated the call from its headers, before its body was read.
            let Some(Authenticated(caller)) = request.extensions().get::<Authenticated>().cloned()
            else {
                return Err(Error::Internal(
                    "a call reached the vault service without passing the gate".into(),
                ));
            };
            let this = Arc::new(Call {
                caller: Arc::clone(&caller),
                target: Mutex::default(),
            });
            call = Some(Arc::clone(&this));
            caller.require(permission)?;
            handle(this, request.into_inner()).await
        }
        .await;
        let target = call.as_ref().map_or_else(Target::default, |call| {
            std::mem::take(&mut *call.target.lock().unwrap_or_else(PoisonError::into_inner))
        });
        let caller = call
            .as_ref()
            .map_or("anonymous", |c| c.caller.name.as_str());
        let entry = AuditEntry {
            method,
            credential_id: &target.id,
            credential_name: &target.name,
            code: metrics::code_name(result.as_ref().err().map_or(Code::Ok, Error::code)),
            secret_fingerprint: &target.fingerprint,
            ..AuditEntry::new(SystemTime::now(), caller, peer)
        };
        // A secret leaves only once its event has reached the operating system (or
        // the disk, with --audit-sync fsync); if it cannot be written, it does not
        // leave. Every other event is queued and written moments later.
        let result = if result.is_ok() && !target.fingerprint.is_empty() {
            match self.audit.record_secret_read(&entry).await {
                Ok(()) => result,
                Err(e) => Err(e),
            }
        } else {
            self.audit.record(&entry).await;
            result
        };
        let elapsed = start.elapsed();
        let code = result.as_ref().err().map_or(Code::Ok, Error::code);
        metrics::rpc(method, code, elapsed);
        let latency_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let (verification, credential_id) = (target.verification, target.id.as_str());
        macro_rules! rpc_event {
            ($level:ident, $message:literal $(, $extra:tt)*) => {
                tracing::$level!(
                    method,
                    caller,
                    credential_id,
                    verification,
                    code = ?code,
                    latency_us,
                    $($extra,)*
                    $message
                )
            };
        }
        match &result {
            Ok(_) => rpc_event!(info, "rpc done"),
            Err(e @ (Error::DataLoss(_) | Error::Internal(_) | Error::Unavailable(_))) => {
                let error = e.to_string();
                rpc_event!(error, "rpc failed", error)
            }
            Err(e @ (Error::Unauthenticated(_) | Error::PermissionDenied(_))) => {
                let error = e.to_string();
                rpc_event!(warn, "rpc refused", error)
            }
            Err(e) => {
                let error = e.to_string();
                rpc_event!(info, "rpc rejected", error)
            }
        }
        result.map(Response::new).map_err(Status::from)
    }

    /// The id a reference points at, within the caller's scope.
    ///
    /// A scoped caller gets the same `PERMISSION_DENIED` for a credential outside
    /// its scope as for one that does not exist, so it learns no names or ids.
    async fn resolve_id(&self, call: &Call, r: &CredentialRef) -> Result<String, Error> {
        self.locate(call, r).await.map(|(id, _)| id)
    }

    /// The id a reference points at, and the record when the scope check had to read it.
    async fn locate(
        &self,
        call: &Call,
        r: &CredentialRef,
    ) -> Result<(String, Option<Arc<CredentialRecord>>), Error> {
        let caller = &call.caller;
        // The audit trail names what was asked for, found or not.
        match r {
            CredentialRef::Id(id) => {
                call.touch(id, "");
                validate::id(id)?;
                if !caller.is_scoped() {
                    return Ok((id.clone(), None));
                }
                // A store that fails answers UNAVAILABLE, not "out of scope".
                let record = self.vault.store().get_shared(id).await?;
                caller.require_scope(id, record.as_ref().map(|r| r.name.as_str()))?;
                Ok((id.clone(), record))
            }
            CredentialRef::Name(name) => {
                call.touch("", name);
                validate::name(name)?;
                caller.require_scope(name, Some(name))?;
                let id =
                    self.vault.store().id_for_name(name).await?.ok_or_else(|| {
                        Error::NotFound(format!("no credential is named {name:?}"))
                    })?;
                call.touch(&id, name);
                Ok((id, None))
            }
        }
    }

    /// The record a reference points at, within the caller's scope.
    async fn resolve(
        &self,
        call: &Call,
        r: &CredentialRef,
    ) -> Result<Arc<CredentialRecord>, Error> {
        let record = match self.locate(call, r).await? {
            (_, Some(record)) => record,
            (id, None) => self
                .vault
                .store()
                .get_shared(&id)
                .await?
                .ok_or_else(|| Error::NotFound(format!("credential {id} not found")))?,
        };
        call.touch(&record.id, &record.name);
        Ok(record)
    }

    /// A record as the API shows it, with its last use.
    async fn show(&self, record: &CredentialRecord) -> api::Credential {
        let usage = self.vault.last_use(&record.id).await;
        to_api(record, usage.as_ref())
    }

    /// Checks a secret before writing it when the request asks to.
    async fn check_if_asked(
        &self,
        call: &Call,
        secret: &ProviderSecret,
        verify: bool,
        best_effort: bool,
    ) -> Result<Option<Verification>, Error> {
        if !verify {
            return Ok(None);
        }
        let verification = self.vault.check_before_write(secret, best_effort).await?;
        call.verified(&verification);
        Ok(Some(verification))
    }

    async fn create(
        &self,
        call: Arc<Call>,
        req: api::CreateCredentialRequest,
    ) -> Result<api::CreateCredentialResponse, Error> {
        validate::name(&req.name)?;
        call.caller.require_scope(&req.name, Some(&req.name))?;
        validate::description(&req.description)?;
        let expire_time = req.expire_time.map(validate::timestamp).transpose()?;
        let secret = req
            .secret
            .map(ProviderSecret::try_from)
            .transpose()?
            .ok_or_else(|| Error::invalid("a secret is required: set fleetio"))?;
        if self.vault.store().id_for_name(&req.name).await?.is_some() {
            // Fail before asking the provider; the insert below still guards races.
            return Err(StoreError::NameTaken(req.name).into());
        }
        let verification = self
            .check_if_asked(&call, &secret, req.verify, req.verify_best_effort)
            .await?;
        let id = validate::new_id();
        call.touch(&id, &req.name);
        let now = Some(record::timestamp(SystemTime::now()));
        let mut record = CredentialRecord {
            format: RECORD_FORMAT,
            id,
            name: req.name,
            description: req.description,
            provider: secret.provider().to_owned(),
            api_key_hint: secret.hint(),
            create_time: now,
            update_time: now,
            version: 1,
            last_verification: verification,
            expire_time,
            revision: 1,
            secret: None,
            data_key: None,
        };
        self.vault.seal_into(&mut record, &secret).await?;
        self.vault.store().insert(&record).await?;
        metrics::credentials_changed(1.0);
        Ok(api::CreateCredentialResponse {
            credential: Some(to_api(&record, None)),
        })
    }

    async fn get(
        &self,
        call: Arc<Call>,
        req: api::GetCredentialRequest,
    ) -> Result<api::GetCredentialResponse, Error> {
        let record = self.resolve(&call, &required_ref(req.r#ref)?).await?;
        Ok(api::GetCredentialResponse {
            credential: Some(self.show(&record).await),
        })
    }

    async fn list(
        &self,
        call: Arc<Call>,
        req: api::ListCredentialsRequest,
    ) -> Result<api::ListCredentialsResponse, Error> {
        let size = validate::page_size(req.page_size)?;
        let filter = ListFilter::new(&req)?;
        let batch = LIST_SCAN_BATCH.max(size + 1);
        let mut cursor = validate::parse_page_token(&req.page_token)?;
        let mut page: Vec<CredentialRecord> = Vec::new();
        let mut more = false;
        'scan: loop {
            let items = self.vault.store().list(cursor.as_deref(), batch).await?;
            let read = items.len();
            for (id, record) in items {
                match record {
                    Ok(record) if filter.matches(&record) && call.caller.in_scope(&record.name) => {
                        if page.len() == size {
                            more = true;
                            break 'scan;
                        }
                        page.push(record);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!(credential_id = %id, error = %e, "unreadable record left out of a listing");
                    }
                }
                cursor = Some(id);
            }
            if read < batch {
                break;
            }
        }
        let next_page_token = match cursor {
            Some(last) if more => validate::page_token(&last),
            _ => String::new(),
        };
        // Last uses for the whole page at once (one query on PostgreSQL, not one per row).
        let ids: Vec<String> = page.iter().map(|r| r.id.clone()).collect();
        let usages = self.vault.last_uses(&ids).await;
        let credentials = page.iter().map(|r| to_api(r, usages.get(&r.id))).collect();
        Ok(api::ListCredentialsResponse {
            credentials,
            next_page_token,
        })
    }

    async fn update(
        &self,
        call: Arc<Call>,
        req: api::UpdateCredentialRequest,
    ) -> Result<api::UpdateCredentialResponse, Error> {
        let r = required_ref(req.r#ref)?;
        if let Some(d) = &req.description {
            validate::description(d)?;
        }
        let expire_time = req.expire_time.map(validate::timestamp).transpose()?;
        if expire_time.is_some() && req.clear_expire_time {
            return Err(Error::invalid(
                "set expire_time or clear_expire_time, not both",
            ));
        }
        let secret = req.secret.map(ProviderSecret::try_from).transpose()?;
        if req.description.is_none()
            && secret.is_none()
            && expire_time.is_none()
            && !req.clear_expire_time
        {
            return Err(Error::invalid(
                "nothing to update: set description, a new secret, expire_time or clear_expire_time",
            ));
        }
        let verification = match &secret {
            Some(secret) => {
                self.check_if_asked(&call, secret, req.verify, req.verify_best_effort)
                    .await?
            }
            None if req.verify => {
                return Err(Error::invalid(
                    "verify checks a new secret: set one, or call VerifyCredential to check the stored one",
                ))
            }
            None => None,
        };
        for _ in 0..MAX_CAS_RETRIES {
            let current = self.resolve(&call, &r).await?;
            if let Some(expected) = req.expected_version {
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
            if let Some(d) = &req.description {
                next.description.clone_from(d);
            }
            if expire_time.is_some() || req.clear_expire_time {
                next.expire_time = expire_time;
            }
            if let Some(secret) = &secret {
                if secret.provider() != current.provider {
                    return Err(Error::FailedPrecondition(format!(
                        "credential {} holds a {} secret, not a {} one; create a new credential instead",
                        current.id,
                        current.provider,
                        secret.provider()
                    )));
                }
                self.vault.seal_into(&mut next, secret).await?;
                next.api_key_hint = secret.hint();
                // A new secret is unverified unless it was just checked.
                next.last_verification.clone_from(&verification);
            }
            next.version += 1;
            next.revision = current.revision + 1;
            next.update_time = Some(record::timestamp(SystemTime::now()));
            match self.vault.store().replace(&next, current.revision).await {
                Ok(()) => {
                    return Ok(api::UpdateCredentialResponse {
                        credential: Some(self.show(&next).await),
                    })
                }
                // Written meanwhile: read it again (and check expected_version again).
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Aborted(
            "the credential kept changing while it was updated; retry".into(),
        ))
    }

    async fn delete(
        &self,
        call: Arc<Call>,
        req: api::DeleteCredentialRequest,
    ) -> Result<api::DeleteCredentialResponse, Error> {
        let id = self.resolve_id(&call, &required_ref(req.r#ref)?).await?;
        self.vault.store().delete(&id, req.expected_version).await?;
        metrics::credentials_changed(-1.0);
        Ok(api::DeleteCredentialResponse {})
    }

    async fn verify(
        &self,
        call: Arc<Call>,
        req: api::VerifyCredentialRequest,
    ) -> Result<api::VerifyCredentialResponse, Error> {
        let record = self.resolve(&call, &required_ref(req.r#ref)?).await?;
        let (verification, stored) = self
            .vault
            .verify_record(&record, metrics::Source::Rpc)
            .await?;
        call.verified(&verification);
        Ok(api::VerifyCredentialResponse {
            verification: Some(verification_to_api(&verification)),
            credential: Some(self.show(&stored).await),
        })
    }

    async fn headers(
        &self,
        call: Arc<Call>,
        req: api::GetCredentialHeadersRequest,
    ) -> Result<api::GetCredentialHeadersResponse, Error> {
        let record = self.resolve(&call, &required_ref(req.r#ref)?).await?;
        self.audit.admit_secret_read()?;
        let (secret, plaintext) = self.vault.open_with_plaintext(&record)?;
        call.read_secret(self.audit.fingerprint(&plaintext));
        drop(plaintext);
        self.vault.note_use(&record.id, &call.caller.name);
        let out = self.vault.headers(&secret);
        Ok(api::GetCredentialHeadersResponse {
            headers: out
                .headers
                .into_iter()
                .map(|(name, value)| api::Header {
                    name: name.to_owned(),
                    value,
                })
                .collect(),
            base_url: out.base_url.to_owned(),
            credential_id: record.id.clone(),
            version: record.version,
        })
    }
}

impl<S: Store> VaultService<S> {
    async fn audit_events(
        &self,
        call: Arc<Call>,
        req: api::ListAuditEventsRequest,
    ) -> Result<api::ListAuditEventsResponse, Error> {
        let size = match req.page_size {
            n if n < 0 => return Err(Error::invalid("page_size must not be negative")),
            0 => 100,
            n => (n as usize).min(1000),
        };
        let from = validate::parse_audit_token(&req.page_token)?;
        let time = |t: Option<prost_types::Timestamp>| -> Result<Option<SystemTime>, Error> {
            t.map(validate::timestamp).transpose().map(|t| {
                t.and_then(|t| {
                    SystemTime::UNIX_EPOCH
                        .checked_add(std::time::Duration::new(t.seconds as u64, t.nanos as u32))
                })
            })
        };
        let nonempty = |s: String| Some(s).filter(|s| !s.is_empty());
        let query = AuditQuery {
            credential_id: nonempty(req.credential_id),
            credential_name: nonempty(req.credential_name),
            caller: nonempty(req.caller),
            start: time(req.start_time)?,
            end: time(req.end_time)?,
        };
        // A scoped auditor sees events of its credentials only; it reads page by page
        // until it has a page of those, or the log ends.
        let mut events = Vec::new();
        let mut cursor = from;
        let next = loop {
            let (batch, next) = self.audit.list(query_clone(&query), cursor, size).await?;
            for e in batch {
                if call.caller.in_scope(&e.credential_name) || !call.caller.is_scoped() {
                    events.push(audit_to_api(e));
                }
            }
            match next {
                Some(n) if events.len() < size => cursor = Some(n),
                other => break other,
            }
        };
        Ok(api::ListAuditEventsResponse {
            events,
            next_page_token: next.map(validate::audit_token).unwrap_or_default(),
        })
    }
}

/// The size of the chunks a backup streams in.
const BACKUP_CHUNK: usize = 64 * 1024;

impl<S: Store> VaultService<S> {
    /// Starts a rewrap in the background; its progress streams to the caller.
    async fn rewrap(
        &self,
        call: Arc<Call>,
        req: api::RewrapCredentialsRequest,
    ) -> Result<ReceiverStream<Result<api::RewrapCredentialsResponse, Status>>, Error> {
        require_unscoped(&call, "a rewrap")?;
        let batch = match req.batch_size {
            0 => 100,
            n @ 1..=1000 => n as usize,
            n => {
                return Err(Error::invalid(format!(
                    "batch_size must be 1 to 1000 (or 0 for 100), not {n}"
                )))
            }
        };
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let vault = Arc::clone(&self.vault);
        let caller = call.caller.name.clone();
        tokio::spawn(async move {
            let progress_tx = tx.clone();
            let outcome = vault
                .rewrap(batch, |p| {
                    // A slow reader misses some progress messages, never the last.
                    !matches!(
                        progress_tx.try_send(Ok(rewrap_to_api(p))),
                        Err(tokio::sync::mpsc::error::TrySendError::Closed(_))
                    )
                })
                .await;
            let last = match outcome {
                Ok(report) => {
                    tracing::info!(
                        caller,
                        scanned = report.progress.scanned,
                        rewrapped = report.progress.rewrapped,
                        failed = report.progress.failed.len(),
                        active_key_id = %report.active_key_id,
                        key_ids = ?report.referenced,
                        retired = ?report.retired,
                        "rewrap finished"
                    );
                    let mut last = rewrap_to_api(&report.progress);
                    last.done = true;
                    last.active_key_id = report.active_key_id;
                    last.key_id_credentials = report.referenced.into_iter().collect();
                    last.retired_key_ids = report.retired;
                    Ok(last)
                }
                Err(e) => {
                    tracing::warn!(caller, error = %e, "rewrap stopped");
                    Err(Status::from(e))
                }
            };
            let _ = tx.send(last).await;
        });
        Ok(ReceiverStream::new(rx))
    }

    /// Takes a consistent snapshot and streams it as a backup file.
    async fn backup(
        &self,
        call: Arc<Call>,
        _req: api::BackupVaultRequest,
    ) -> Result<BackupStream, Error> {
        require_unscoped(&call, "a backup")?;
        let snapshot = self.vault.store().snapshot().await?;
        let credentials = snapshot.records.len();
        let bytes = tokio::task::spawn_blocking(move || crate::backup::encode(snapshot))
            .await
            .map_err(|e| Error::Internal(format!("backup encoding task failed: {e}")))?;
        tracing::info!(
            caller = %call.caller.name,
            credentials,
            bytes = bytes.len(),
            "backup snapshot taken"
        );
        let chunks: Vec<_> = bytes
            .chunks(BACKUP_CHUNK)
            .map(|c| Ok(api::BackupVaultResponse { chunk: c.to_vec() }))
            .collect();
        Ok(tokio_stream::iter(chunks))
    }
}

type BackupStream =
    tokio_stream::Iter<std::vec::IntoIter<Result<api::BackupVaultResponse, Status>>>;

/// Whole-store operations are refused to callers limited to some credentials.
fn require_unscoped(call: &Call, what: &str) -> Result<(), Error> {
    if call.caller.is_scoped() {
        return Err(Error::PermissionDenied(format!(
            "{what} covers every credential; caller {:?} is limited to some",
            call.caller.name
        )));
    }
    Ok(())
}

fn rewrap_to_api(p: &crate::keys::RewrapProgress) -> api::RewrapCredentialsResponse {
    api::RewrapCredentialsResponse {
        total: p.total,
        scanned: p.scanned,
        rewrapped: p.rewrapped,
        failed_credential_ids: p.failed.clone(),
        ..Default::default()
    }
}

fn query_clone(q: &AuditQuery) -> AuditQuery {
    AuditQuery {
        credential_id: q.credential_id.clone(),
        credential_name: q.credential_name.clone(),
        caller: q.caller.clone(),
        start: q.start,
        end: q.end,
    }
}

fn audit_to_api(e: crate::audit::AuditEvent) -> api::AuditEvent {
    api::AuditEvent {
        time: e.system_time().map(record::timestamp),
        caller: e.caller,
        peer: e.peer,
        method: e.method,
        credential_id: e.credential_id,
        credential_name: e.credential_name,
        code: e.code,
        secret_fingerprint: e.secret_fingerprint,
        reason: e.reason,
        count: e.count,
    }
}

/// The filters of a listing.
struct ListFilter {
    statuses: Vec<VerificationStatus>,
    expire_before: Option<(i64, i32)>,
}

impl ListFilter {
    fn new(req: &api::ListCredentialsRequest) -> Result<Self, Error> {
        let statuses = req
            .verification_statuses
            .iter()
            .map(|&s| {
                VerificationStatus::try_from(s).map_err(|_| {
                    Error::invalid(format!("verification_statuses holds an unknown status {s}"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let expire_before = req
            .expire_before
            .map(validate::timestamp)
            .transpose()?
            .map(|t| (t.seconds, t.nanos));
        Ok(ListFilter {
            statuses,
            expire_before,
        })
    }

    fn matches(&self, r: &CredentialRecord) -> bool {
        let status = r
            .last_verification
            .as_ref()
            .map_or(VerificationStatus::Unspecified, Verification::status);
        let status_ok = self.statuses.is_empty() || self.statuses.contains(&status);
        let expiry_ok = match (self.expire_before, r.expire_time) {
            (None, _) => true,
            (Some(before), Some(t)) => (t.seconds, t.nanos) < before,
            (Some(_), None) => false,
        };
        status_ok && expiry_ok
    }
}

/// The API name of a verification's status, for logs.
fn status_name(v: &Verification) -> &'static str {
    v.status().name()
}

/// A record's metadata as the API shows it.
fn to_api(r: &CredentialRecord, usage: Option<&Usage>) -> api::Credential {
    api::Credential {
        id: r.id.clone(),
        name: r.name.clone(),
        description: r.description.clone(),
        provider: r.provider.clone(),
        api_key_hint: r.api_key_hint.clone(),
        create_time: r.create_time,
        update_time: r.update_time,
        last_verification: r.last_verification.as_ref().map(verification_to_api),
        version: r.version,
        expire_time: r.expire_time,
        last_used_time: usage.and_then(|u| u.time),
        last_used_by: usage.map(|u| u.caller.clone()).unwrap_or_default(),
    }
}

fn verification_to_api(v: &Verification) -> api::Verification {
    use api::VerificationStatus as A;
    let status =
        match VerificationStatus::try_from(v.status).unwrap_or(VerificationStatus::Unspecified) {
            VerificationStatus::Unspecified => A::Unspecified,
            VerificationStatus::Valid => A::Valid,
            VerificationStatus::ApiKeyRejected => A::ApiKeyRejected,
            VerificationStatus::AccountTokenRejected => A::AccountTokenRejected,
            VerificationStatus::Forbidden => A::Forbidden,
            VerificationStatus::RateLimited => A::RateLimited,
            VerificationStatus::ProviderError => A::ProviderError,
            VerificationStatus::Unreachable => A::Unreachable,
        };
    api::Verification {
        status: status as i32,
        http_status: v.http_status,
        message: v.message.clone(),
        retry_after_seconds: v.retry_after_seconds,
        check_time: v.check_time,
    }
}

#[tonic::async_trait]
impl<S: Store> CredentialVaultService for VaultService<S> {
    type RewrapCredentialsStream = ReceiverStream<Result<api::RewrapCredentialsResponse, Status>>;
    type BackupVaultStream = BackupStream;

    async fn rewrap_credentials(
        &self,
        request: Request<api::RewrapCredentialsRequest>,
    ) -> Result<Response<Self::RewrapCredentialsStream>, Status> {
        self.rpc(
            "RewrapCredentials",
            Permission::KeysManage,
            request,
            |c, r| self.rewrap(c, r),
        )
        .await
    }

    async fn backup_vault(
        &self,
        request: Request<api::BackupVaultRequest>,
    ) -> Result<Response<Self::BackupVaultStream>, Status> {
        self.rpc("BackupVault", Permission::BackupRead, request, |c, r| {
            self.backup(c, r)
        })
        .await
    }

    async fn create_credential(
        &self,
        request: Request<api::CreateCredentialRequest>,
    ) -> Result<Response<api::CreateCredentialResponse>, Status> {
        self.rpc(
            "CreateCredential",
            Permission::CredentialsWrite,
            request,
            |c, r| self.create(c, r),
        )
        .await
    }

    async fn get_credential(
        &self,
        request: Request<api::GetCredentialRequest>,
    ) -> Result<Response<api::GetCredentialResponse>, Status> {
        self.rpc(
            "GetCredential",
            Permission::CredentialsRead,
            request,
            |c, r| self.get(c, r),
        )
        .await
    }

    async fn list_credentials(
        &self,
        request: Request<api::ListCredentialsRequest>,
    ) -> Result<Response<api::ListCredentialsResponse>, Status> {
        self.rpc(
            "ListCredentials",
            Permission::CredentialsRead,
            request,
            |c, r| self.list(c, r),
        )
        .await
    }

    async fn update_credential(
        &self,
        request: Request<api::UpdateCredentialRequest>,
    ) -> Result<Response<api::UpdateCredentialResponse>, Status> {
        self.rpc(
            "UpdateCredential",
            Permission::CredentialsWrite,
            request,
            |c, r| self.update(c, r),
        )
        .await
    }

    async fn delete_credential(
        &self,
        request: Request<api::DeleteCredentialRequest>,
    ) -> Result<Response<api::DeleteCredentialResponse>, Status> {
        self.rpc(
            "DeleteCredential",
            Permission::CredentialsWrite,
            request,
            |c, r| self.delete(c, r),
        )
        .await
    }

    async fn verify_credential(
        &self,
        request: Request<api::VerifyCredentialRequest>,
    ) -> Result<Response<api::VerifyCredentialResponse>, Status> {
        self.rpc(
            "VerifyCredential",
            Permission::CredentialsVerify,
            request,
            |c, r| self.verify(c, r),
        )
        .await
    }

    async fn list_audit_events(
        &self,
        request: Request<api::ListAuditEventsRequest>,
    ) -> Result<Response<api::ListAuditEventsResponse>, Status> {
        self.rpc("ListAuditEvents", Permission::AuditRead, request, |c, r| {
            self.audit_events(c, r)
        })
        .await
    }

    async fn get_credential_headers(
        &self,
        request: Request<api::GetCredentialHeadersRequest>,
    ) -> Result<Response<api::GetCredentialHeadersResponse>, Status> {
        self.rpc(
            "GetCredentialHeaders",
            Permission::HeadersRead,
            request,
            |c, r| self.headers(c, r),
        )
        .await
    }
}
