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
use crate::auth::{Caller, Identity, Permission};
use crate::convert::verification_to_api;
use crate::error::Error;
use crate::feedback::{
    self, MAX_BUDGET_PER_MINUTE, MAX_LEASE_REQUEST, MAX_REPORTED_RETRY_AFTER_SECS,
};
use crate::gate::{Authenticated, Via};
use crate::metrics;
use crate::page_token;
use crate::provider::Catalog;
use crate::record::{self, CredentialRecord, Usage, Verification, VerificationStatus};
use crate::refusals::Refusals;
use crate::store::Store;
use crate::validate;
use crate::vault::{
    Change, CheckOnWrite, CredentialRef, Expiry, HeadersRead, ListFilter, Located, NewCredential,
    Vault,
};
use crate::watch::{self, WatchContext, WatchStream, Watcher};

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
    get_credential_headers_request,
    report_provider_response_request,
    acquire_request_tokens_request,
    list_credential_versions_request,
    rollback_credential_request,
    destroy_credential_version_request
);

fn required_ref(r: Option<impl Into<CredentialRef>>) -> Result<CredentialRef, Error> {
    r.map(Into::into)
        .ok_or_else(|| Error::invalid("the credential is required: set id or name"))
}

/// The vault's gRPC service over a store `S`.
pub struct VaultService<S> {
    vault: Arc<Vault<S>>,
    audit: Arc<AuditLog>,
    watch: WatchContext,
    /// Known callers' refused calls beyond the first few per interval are only counted.
    refusals: Arc<Refusals>,
}

/// One call in progress: who makes it, and what it touched (for the audit trail).
struct Call {
    caller: Arc<Caller>,
    /// What the caller proved (for a stream that re-checks it on reload).
    identity: Identity,
    peer: Option<std::net::SocketAddr>,
    target: Mutex<Target>,
}

#[derive(Default)]
struct Target {
    id: String,
    name: String,
    fingerprint: String,
    verification: &'static str,
    /// What the call did, for the audit trail (a report: what was reported and done).
    note: String,
}

impl Call {
    /// Notes what the call named, as the audit trail and the log may record it
    /// (a caller's raw value escaped and capped: it may not be valid yet).
    fn touch(&self, id: &str, name: &str) {
        let mut t = self.target.lock().unwrap_or_else(PoisonError::into_inner);
        crate::escape::shown(id).as_ref().clone_into(&mut t.id);
        crate::escape::shown(name).as_ref().clone_into(&mut t.name);
    }

    fn verified(&self, v: &Verification) {
        self.target
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .verification = status_name(v);
    }

    fn note(&self, note: String) {
        self.target
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .note = note;
    }

    fn read_secret(&self, fingerprint: String) {
        self.target
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .fingerprint = fingerprint;
    }
}

impl<S: Store> VaultService<S> {
    /// A service over the vault core, auditing to `watch.audit`; its callers come
    /// authenticated by the [`crate::gate`] in front of it.
    pub fn new(vault: Arc<Vault<S>>, watch: WatchContext) -> Self {
        VaultService {
            vault,
            audit: Arc::clone(&watch.audit),
            watch,
            refusals: Arc::new(Refusals::new()),
        }
    }

    /// Counts refused calls of known callers in `refusals` (the server's own, summarized there).
    pub fn with_refusals(mut self, refusals: Arc<Refusals>) -> Self {
        self.refusals = refusals;
        self
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
        let via = request.extensions().get::<Via>().copied();
        let peer = request.remote_addr().or(via.and_then(|v| v.peer));
        let channel = via.map_or("", |v| v.channel);
        // One event per call, with every field on it (no span: entering and
        // recording one per call would cost the hot path for nothing).
        let mut call = None;
        let result = async {
            // The gate authenticated the call from its headers, before its body was read.
            let Some(Authenticated(caller, identity)) =
                request.extensions().get::<Authenticated>().cloned()
            else {
                return Err(Error::Internal(
                    "a call reached the vault service without passing the gate".into(),
                ));
            };
            let this = Arc::new(Call {
                caller: Arc::clone(&caller),
                identity,
                peer,
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
        // A known caller's refusals are recorded one by one only a few per interval;
        // the rest are counted into the interval's summary (one line, one event).
        if let (Some(_), Err(e)) = (&call, &result) {
            if summarized_refusal(e.code())
                && !self
                    .refusals
                    .admit_caller(caller, method, metrics::code_name(e.code()))
            {
                let code = e.code();
                metrics::rpc(method, code, start.elapsed());
                metrics::refusal_summarized();
                return Err(Status::from(result.err().unwrap_or_else(|| {
                    Error::Internal("a refusal without an error".into())
                })));
            }
        }
        let entry = AuditEntry {
            method,
            credential_id: &target.id,
            credential_name: &target.name,
            code: metrics::code_name(result.as_ref().err().map_or(Code::Ok, Error::code)),
            secret_fingerprint: &target.fingerprint,
            reason: &target.note,
            channel,
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

    /// Finds the credential a reference points at, within the caller's scope
    /// (the vault checks it); the audit trail names what was asked for, found or not.
    async fn locate(&self, call: &Call, r: &CredentialRef) -> Result<Located, Error> {
        match r {
            CredentialRef::Id(id) => {
                call.touch(id, "");
                validate::id(id)?;
            }
            CredentialRef::Name(name) => {
                call.touch("", name);
                validate::name(name)?;
            }
        }
        let at = self.vault.locate(&call.caller, r).await?;
        if let CredentialRef::Name(name) = r {
            call.touch(at.id(), name);
        }
        Ok(at)
    }

    /// The record a reference points at, within the caller's scope.
    async fn resolve(
        &self,
        call: &Call,
        r: &CredentialRef,
    ) -> Result<Arc<CredentialRecord>, Error> {
        let at = self.locate(call, r).await?;
        let record = self.vault.record(&at).await?;
        call.touch(&record.id, &record.name);
        Ok(record)
    }

    /// A record as the API shows it, with its last use.
    async fn show(&self, record: &CredentialRecord) -> api::Credential {
        let usage = self.vault.last_use(&record.id).await;
        let mut credential = to_api(record, usage.as_ref(), &self.vault.providers().current());
        // The fields that are not secret, so that a rotation can keep them (a
        // secret that cannot be opened now shows none; its metadata still shows).
        if let Ok(secret) = self.vault.open(record) {
            credential.plain_fields = secret.plain_fields().into_iter().collect();
        }
        credential
    }

    /// Notes a check on write in the call's log event.
    fn note_check(call: &Call, check: CheckOnWrite, record: &CredentialRecord) {
        if check != CheckOnWrite::No {
            if let Some(v) = &record.last_verification {
                call.verified(v);
            }
        }
    }

    async fn create(
        &self,
        call: Arc<Call>,
        req: api::CreateCredentialRequest,
    ) -> Result<api::CreateCredentialResponse, Error> {
        call.touch("", &req.name);
        validate::name(&req.name)?;
        validate::description(&req.description)?;
        let expire_time = req.expire_time.map(validate::timestamp).transpose()?;
        let providers = self.vault.providers().current();
        let secret = req
            .secret
            .map(|s| providers.create_secret(s))
            .transpose()?
            .ok_or_else(|| {
                Error::invalid(format!(
                    "a secret is required: set fleetio, or generic for a declared provider (providers: {})",
                    providers.names()
                ))
            })?;
        let check = CheckOnWrite::new(req.verify, req.verify_best_effort);
        let new = NewCredential {
            name: req.name,
            description: req.description,
            expire_time,
            secret,
            check,
            request_budget_per_minute: budget(req.request_budget_per_minute)?,
        };
        let record = self.vault.create(&call.caller, new).await?;
        call.touch(&record.id, &record.name);
        Self::note_check(&call, check, &record);
        Ok(api::CreateCredentialResponse {
            credential: Some(self.show(&record).await),
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
        let filter = list_filter(&req)?;
        // Tokens are sealed and bound to this caller and query: they reveal no id
        // (a scoped caller's listing may stop after one outside its scope).
        let keyring = self.vault.keyring();
        let query = page_token::Query {
            caller: &call.caller.name,
            deleted: req.deleted,
            statuses: &req.verification_statuses,
            expire_before: req.expire_before.map(|t| (t.seconds, t.nanos)),
        };
        let after = page_token::open(keyring.active(), &query, &req.page_token)
            .map_err(|e| Error::invalid(e.to_string()))?;
        let page = if req.deleted {
            self.vault.list_deleted(&call.caller, after, size).await?
        } else {
            self.vault.list(&call.caller, &filter, after, size).await?
        };
        let providers = self.vault.providers().current();
        Ok(api::ListCredentialsResponse {
            credentials: page
                .records
                .iter()
                .map(|r| to_api(r, page.usages.get(&r.id), &providers))
                .collect(),
            next_page_token: page
                .next_after
                .as_deref()
                .map(|last| page_token::seal(keyring.active(), &query, last))
                .unwrap_or_default(),
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
        let expiry = match (expire_time, req.clear_expire_time) {
            (Some(_), true) => {
                return Err(Error::invalid(
                    "set expire_time or clear_expire_time, not both",
                ))
            }
            (Some(t), false) => Expiry::Set(t),
            (None, true) => Expiry::Clear,
            (None, false) => Expiry::Keep,
        };
        let providers = self.vault.providers().current();
        let secret = req.secret.map(|s| providers.update_secret(s)).transpose()?;
        let request_budget_per_minute = req.request_budget_per_minute.map(budget).transpose()?;
        if req.description.is_none()
            && secret.is_none()
            && matches!(expiry, Expiry::Keep)
            && request_budget_per_minute.is_none()
        {
            return Err(Error::invalid(
                "nothing to update: set description, a new secret, expire_time, clear_expire_time or request_budget_per_minute",
            ));
        }
        if secret.is_none() && req.verify {
            return Err(Error::invalid(
                "verify checks a new secret: set one, or call VerifyCredential to check the stored one",
            ));
        }
        let check = CheckOnWrite::new(req.verify, req.verify_best_effort);
        let at = self.locate(&call, &r).await?;
        let change = Change {
            description: req.description,
            expiry,
            secret,
            check,
            expected_version: req.expected_version,
            request_budget_per_minute,
            rollback_of: None,
        };
        let record = self.vault.update(&at, change, &call.caller.name).await?;
        call.touch(&record.id, &record.name);
        Self::note_check(&call, check, &record);
        Ok(api::UpdateCredentialResponse {
            credential: Some(self.show(&record).await),
        })
    }

    async fn delete(
        &self,
        call: Arc<Call>,
        req: api::DeleteCredentialRequest,
    ) -> Result<api::DeleteCredentialResponse, Error> {
        let r = required_ref(req.r#ref)?;
        let deleted = match self.locate(&call, &r).await {
            Ok(at) => {
                self.vault
                    .delete(&at, req.expected_version, req.force, &call.caller.name)
                    .await
            }
            Err(e) => Err(e),
        };
        let purge_time = match deleted {
            Ok(purge_time) => purge_time,
            // With force, a credential already in its recovery window is purged now.
            Err(Error::NotFound(m)) if req.force => match &r {
                CredentialRef::Id(id) => {
                    if self.vault.purge_deleted(&call.caller, id).await?.is_none() {
                        return Err(Error::NotFound(m));
                    }
                    call.note("purged from its recovery window (force)".into());
                    return Ok(api::DeleteCredentialResponse { purge_time: None });
                }
                CredentialRef::Name(_) => return Err(Error::NotFound(format!(
                    "{m}; a deleted credential's name is free, so purge it by id (ListCredentials with deleted: true lists ids)"
                ))),
            },
            Err(e) => return Err(e),
        };
        if req.force {
            call.note("deleted for good (force)".into());
        }
        Ok(api::DeleteCredentialResponse { purge_time })
    }

    async fn undelete(
        &self,
        call: Arc<Call>,
        req: api::UndeleteCredentialRequest,
    ) -> Result<api::UndeleteCredentialResponse, Error> {
        call.touch(&req.id, "");
        validate::id(&req.id)?;
        let record = self.vault.undelete(&call.caller, &req.id).await?;
        call.touch(&record.id, &record.name);
        Ok(api::UndeleteCredentialResponse {
            credential: Some(self.show(&record).await),
        })
    }

    async fn versions(
        &self,
        call: Arc<Call>,
        req: api::ListCredentialVersionsRequest,
    ) -> Result<api::ListCredentialVersionsResponse, Error> {
        let record = self.resolve(&call, &required_ref(req.r#ref)?).await?;
        let current = api::CredentialVersion {
            version: if record.secret_version == 0 {
                record.version
            } else {
                record.secret_version
            },
            create_time: record.secret_create_time.or(record.update_time),
            created_by: record.secret_created_by.clone(),
            api_key_hint: record.api_key_hint.clone(),
            verification: record.last_verification.as_ref().map(verification_to_api),
            current: true,
            ..Default::default()
        };
        Ok(api::ListCredentialVersionsResponse {
            versions: std::iter::once(current)
                .chain(record.history.iter().map(version_to_api))
                .collect(),
        })
    }

    async fn rollback(
        &self,
        call: Arc<Call>,
        req: api::RollbackCredentialRequest,
    ) -> Result<api::RollbackCredentialResponse, Error> {
        let r = required_ref(req.r#ref)?;
        if req.version == 0 {
            return Err(Error::invalid(
                "version is required: the kept version to roll back to",
            ));
        }
        let check = CheckOnWrite::new(req.verify, req.verify_best_effort);
        let at = self.locate(&call, &r).await?;
        let record = self
            .vault
            .rollback(
                &at,
                req.version,
                req.expected_version,
                check,
                &call.caller.name,
            )
            .await?;
        call.touch(&record.id, &record.name);
        call.note(format!(
            "rolled back to version {} as version {}",
            req.version, record.version
        ));
        Self::note_check(&call, check, &record);
        Ok(api::RollbackCredentialResponse {
            credential: Some(self.show(&record).await),
        })
    }

    async fn destroy_version(
        &self,
        call: Arc<Call>,
        req: api::DestroyCredentialVersionRequest,
    ) -> Result<api::DestroyCredentialVersionResponse, Error> {
        let r = required_ref(req.r#ref)?;
        if req.version == 0 {
            return Err(Error::invalid(
                "version is required: the kept version to destroy",
            ));
        }
        let at = self.locate(&call, &r).await?;
        let version = self
            .vault
            .destroy_version(&at, req.version, &call.caller.name)
            .await?;
        call.note(format!("destroyed version {}", req.version));
        Ok(api::DestroyCredentialVersionResponse {
            version: Some(version_to_api(&version)),
        })
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
        let HeadersRead {
            headers: out,
            plaintext,
            paused_until_ms,
        } = self.vault.read_headers(&record, &call.caller.name)?;
        call.read_secret(self.audit.fingerprint(&plaintext));
        drop(plaintext);
        Ok(api::GetCredentialHeadersResponse {
            headers_revision: out.revision,
            paused_until: paused_until_ms.map(timestamp_ms),
            request_budget_per_minute: record.request_budget_per_minute,
            headers: out
                .headers
                .into_iter()
                .map(|(name, value)| api::Header {
                    name: name.into_owned(),
                    value,
                })
                .collect(),
            base_url: out.base_url,
            credential_id: record.id.clone(),
            version: record.version,
        })
    }
}

impl<S: Store> VaultService<S> {
    /// A worker's report of a provider's answer (see [`crate::feedback`]).
    async fn report(
        &self,
        call: Arc<Call>,
        req: api::ReportProviderResponseRequest,
    ) -> Result<api::ReportProviderResponseResponse, Error> {
        let status = req.http_status;
        if !(100..=599).contains(&status) {
            return Err(Error::invalid(format!(
                "http_status {status} is not an HTTP status (100 to 599)"
            )));
        }
        if req.retry_after_seconds > MAX_REPORTED_RETRY_AFTER_SECS {
            return Err(Error::invalid(format!(
                "retry_after_seconds {} is not a plausible Retry-After (at most {MAX_REPORTED_RETRY_AFTER_SECS}; pauses are capped at an hour)",
                req.retry_after_seconds
            )));
        }
        let record = self.resolve(&call, &required_ref(req.r#ref)?).await?;
        let class = match status {
            401 => "401",
            403 => "403",
            429 => "429",
            200..=299 => "2xx",
            400..=499 => "4xx",
            500..=599 => "5xx",
            _ => "other",
        };
        let mut paused_until_ms = None;
        let (action, message) = match status {
            429 => {
                let secret = self.vault.open(&record)?;
                let account = self.vault.account_of(&secret);
                drop(secret);
                let until = feedback::pause_end(feedback::now_ms(), req.retry_after_seconds);
                let until = self.vault.pause(account, until).await;
                paused_until_ms = Some(until);
                metrics::pause();
                (
                    api::ReportAction::Paused,
                    format!(
                        "the {} account of credential {} is paused until {} for every worker",
                        record.provider,
                        record.id,
                        rfc3339(until)
                    ),
                )
            }
            401 | 403 if req.version != 0 && req.version < record.version => (
                api::ReportAction::Stale,
                format!(
                    "credential {} is at version {}; the {status} was for version {}, rotated since",
                    record.id, record.version, req.version
                ),
            ),
            401 | 403 => {
                let interval = self.vault.feedback().settings().verify_interval;
                // Already found refused within the interval (by any replica): nothing
                // new to learn. A recent VALID is checked again: the report is news.
                let recently = record.last_verification.as_ref().is_some_and(|v| {
                    (v.status().is_rejection() || v.status() == VerificationStatus::Forbidden)
                        && v.check_time
                            .and_then(|t| SystemTime::try_from(t).ok())
                            .and_then(|t| t.elapsed().ok())
                            .is_some_and(|age| age < interval)
                });
                // Per version: a rotation's new secret is verified afresh.
                let key = format!("{}@{}", record.id, record.version);
                if recently || !self.vault.feedback().start_verification(&key) {
                    (
                        api::ReportAction::AlreadyVerified,
                        format!(
                            "credential {} was verified within {}s (or is being verified); watchers have its status",
                            record.id,
                            interval.as_secs()
                        ),
                    )
                } else {
                    let vault = Arc::clone(&self.vault);
                    let reported = Arc::clone(&record);
                    tokio::spawn(async move {
                        match vault.verify_record(&reported, metrics::Source::Report).await {
                            Ok((v, _)) => tracing::info!(
                                credential_id = %reported.id,
                                verification = v.status().name(),
                                "a reported rejection was verified"
                            ),
                            Err(e) => tracing::warn!(
                                credential_id = %reported.id,
                                error = %e,
                                "a reported rejection could not be verified"
                            ),
                        }
                    });
                    (
                        api::ReportAction::Verifying,
                        format!(
                            "credential {} is being verified with {}; watchers hear the result",
                            record.id, record.provider
                        ),
                    )
                }
            }
            _ => (
                api::ReportAction::Ignored,
                format!("a {status} needs nothing of the vault; counted"),
            ),
        };
        if paused_until_ms.is_none() {
            paused_until_ms = self.vault.paused_until(&record);
        }
        let action_name = match action {
            api::ReportAction::Paused => "paused",
            api::ReportAction::Verifying => "verifying",
            api::ReportAction::AlreadyVerified => "already_verified",
            api::ReportAction::Stale => "stale",
            api::ReportAction::Ignored | api::ReportAction::Unspecified => "ignored",
        };
        metrics::report(class, action_name);
        call.note(if req.retry_after_seconds > 0 {
            format!(
                "reported {status} (retry-after {}s): {action_name}",
                req.retry_after_seconds
            )
        } else {
            format!("reported {status}: {action_name}")
        });
        Ok(api::ReportProviderResponseResponse {
            action: action as i32,
            paused_until: paused_until_ms.map(timestamp_ms),
            message,
        })
    }

    /// A lease of requests from the credential's account budget.
    async fn acquire(
        &self,
        call: Arc<Call>,
        req: api::AcquireRequestTokensRequest,
    ) -> Result<api::AcquireRequestTokensResponse, Error> {
        if req.count == 0 || req.count > MAX_LEASE_REQUEST {
            return Err(Error::invalid(format!(
                "count {} is out of range: ask for 1 to {MAX_LEASE_REQUEST} requests",
                req.count
            )));
        }
        let record = self.resolve(&call, &required_ref(req.r#ref)?).await?;
        let grant = self.vault.take_tokens(&record, req.count).await?;
        Ok(api::AcquireRequestTokensResponse {
            granted: grant.granted,
            valid_for_ms: grant.valid_for_ms,
            retry_after_ms: grant.retry_after_ms,
            paused_until: grant.paused_until_ms.map(timestamp_ms),
            request_budget_per_minute: record.request_budget_per_minute,
        })
    }

    /// Opens a watch stream of the request's credentials (see [`crate::watch`]).
    async fn watch(
        &self,
        call: Arc<Call>,
        req: api::WatchCredentialHeadersRequest,
    ) -> Result<WatchStream, Error> {
        if let [only] = req.credentials.as_slice() {
            match &only.r#ref {
                Some(api::watched_credential::Ref::Id(id)) => call.touch(id, ""),
                Some(api::watched_credential::Ref::Name(name)) => call.touch("", name),
                None => {}
            }
        }
        let watcher = Watcher {
            caller: Arc::clone(&call.caller),
            identity: call.identity.clone(),
            peer: call.peer,
        };
        watch::open(&self.vault, &self.watch, watcher, req)
    }

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
        // Filters reach the database as query values: checked first, like any name.
        if !req.credential_id.is_empty() {
            validate::id(&req.credential_id)?;
        }
        if !req.credential_name.is_empty() {
            validate::name(&req.credential_name)?;
        }
        validate::caller_name(&req.caller)?;
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
            audit_public_key: self.audit.public_key().to_string(),
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
        let snapshot = self.vault.snapshot().await?;
        let credentials = snapshot.records.len();
        let keyring = self.vault.keyring();
        let bytes =
            tokio::task::spawn_blocking(move || crate::backup::encode(snapshot, keyring.active()))
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
/// The codes of refusals that are summarized per caller past the first few: the
/// caller's request was at fault, nothing was read or changed.
fn summarized_refusal(code: Code) -> bool {
    matches!(
        code,
        Code::PermissionDenied
            | Code::ResourceExhausted
            | Code::InvalidArgument
            | Code::NotFound
            | Code::OutOfRange
            | Code::Unauthenticated
    )
}

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
        channel: e.channel,
    }
}

/// The filters of a listing request.
fn list_filter(req: &api::ListCredentialsRequest) -> Result<ListFilter, Error> {
    let statuses = req
        .verification_statuses
        .iter()
        .map(|&s| {
            VerificationStatus::try_from(s).map_err(|_| {
                Error::invalid(format!("verification_statuses holds an unknown status {s}"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let expire_before = req.expire_before.map(validate::timestamp).transpose()?;
    Ok(ListFilter {
        statuses,
        expire_before,
    })
}

/// A budget as asked for: at most [`MAX_BUDGET_PER_MINUTE`].
fn budget(per_minute: u32) -> Result<u32, Error> {
    if per_minute > MAX_BUDGET_PER_MINUTE {
        return Err(Error::invalid(format!(
            "request_budget_per_minute {per_minute} is above the most allowed ({MAX_BUDGET_PER_MINUTE})"
        )));
    }
    Ok(per_minute)
}

/// Milliseconds since the epoch as a protobuf timestamp.
fn timestamp_ms(ms: i64) -> prost_types::Timestamp {
    record::timestamp(feedback::from_ms(ms))
}

/// Milliseconds since the epoch as RFC 3339, for messages.
fn rfc3339(ms: i64) -> String {
    timestamp_ms(ms).to_string()
}

/// The API name of a verification's status, for logs.
fn status_name(v: &Verification) -> &'static str {
    v.status().name()
}

/// A record's metadata as the API shows it.
fn to_api(r: &CredentialRecord, usage: Option<&Usage>, providers: &Catalog) -> api::Credential {
    let drift = providers.drift(&r.provider, &r.secret_fields);
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
        undeclared_fields: drift.undeclared,
        missing_fields: drift.missing,
        provider_undeclared: drift.unknown_provider,
        request_budget_per_minute: r.request_budget_per_minute,
        delete_time: r.delete_time,
        purge_time: r.purge_time,
        // Answers about one credential fill them in (`show`); listings do not.
        plain_fields: Default::default(),
    }
}

/// A kept secret version as the API shows it.
fn version_to_api(v: &record::SecretVersion) -> api::CredentialVersion {
    api::CredentialVersion {
        version: v.version,
        create_time: v.create_time,
        created_by: v.created_by.clone(),
        api_key_hint: v.api_key_hint.clone(),
        verification: v.last_verification.as_ref().map(verification_to_api),
        current: false,
        destroyed: v.destroyed(),
        destroy_time: v.destroy_time,
        destroyed_by: v.destroyed_by.clone(),
    }
}

#[tonic::async_trait]
impl<S: Store> CredentialVaultService for VaultService<S> {
    type RewrapCredentialsStream = ReceiverStream<Result<api::RewrapCredentialsResponse, Status>>;
    type BackupVaultStream = BackupStream;
    type WatchCredentialHeadersStream = WatchStream;

    async fn watch_credential_headers(
        &self,
        request: Request<api::WatchCredentialHeadersRequest>,
    ) -> Result<Response<Self::WatchCredentialHeadersStream>, Status> {
        self.rpc(
            "WatchCredentialHeaders",
            Permission::HeadersRead,
            request,
            |c, r| self.watch(c, r),
        )
        .await
    }

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

    async fn undelete_credential(
        &self,
        request: Request<api::UndeleteCredentialRequest>,
    ) -> Result<Response<api::UndeleteCredentialResponse>, Status> {
        self.rpc(
            "UndeleteCredential",
            Permission::CredentialsWrite,
            request,
            |c, r| self.undelete(c, r),
        )
        .await
    }

    async fn list_credential_versions(
        &self,
        request: Request<api::ListCredentialVersionsRequest>,
    ) -> Result<Response<api::ListCredentialVersionsResponse>, Status> {
        self.rpc(
            "ListCredentialVersions",
            Permission::CredentialsRead,
            request,
            |c, r| self.versions(c, r),
        )
        .await
    }

    async fn rollback_credential(
        &self,
        request: Request<api::RollbackCredentialRequest>,
    ) -> Result<Response<api::RollbackCredentialResponse>, Status> {
        self.rpc(
            "RollbackCredential",
            Permission::CredentialsWrite,
            request,
            |c, r| self.rollback(c, r),
        )
        .await
    }

    async fn destroy_credential_version(
        &self,
        request: Request<api::DestroyCredentialVersionRequest>,
    ) -> Result<Response<api::DestroyCredentialVersionResponse>, Status> {
        self.rpc(
            "DestroyCredentialVersion",
            Permission::CredentialsWrite,
            request,
            |c, r| self.destroy_version(c, r),
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

    async fn report_provider_response(
        &self,
        request: Request<api::ReportProviderResponseRequest>,
    ) -> Result<Response<api::ReportProviderResponseResponse>, Status> {
        self.rpc(
            "ReportProviderResponse",
            Permission::HeadersRead,
            request,
            |c, r| self.report(c, r),
        )
        .await
    }

    async fn acquire_request_tokens(
        &self,
        request: Request<api::AcquireRequestTokensRequest>,
    ) -> Result<Response<api::AcquireRequestTokensResponse>, Status> {
        self.rpc(
            "AcquireRequestTokens",
            Permission::HeadersRead,
            request,
            |c, r| self.acquire(c, r),
        )
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
