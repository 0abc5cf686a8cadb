//! The gRPC service: authenticates and authorises every call, validates the
//! request, converts between proto and domain types, and drives the vault core.
//!
//! Each RPC emits exactly one tracing event (method, caller, credential id,
//! code, latency); none carries a secret.
//!
//! Here: the service, its one call path ([`VaultService`]'s `rpc`: authenticate,
//! authorise, audit, log) and the trait that maps each RPC onto it; the RPCs
//! themselves by concern in `credentials`, `accounts`, `streams` and `admin`; the
//! proto conversions in [`crate::convert`].

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Instant, SystemTime};

use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};

mod accounts;
mod admin;
mod credentials;
mod rpcs;
mod streams;

use admin::*;

use crate::api::{self, credential_vault_service_server::CredentialVaultService};
use crate::audit::{AuditEntry, AuditLog, AuditQuery};
use crate::auth::{Caller, Identity, Permission};
use crate::convert::{
    self, audit_to_api, status_name, timestamp_ms, to_api, verification_to_api, version_to_api,
};
use crate::error::Error;
use crate::feedback::MAX_BUDGET_PER_MINUTE;
use crate::gate::{Authenticated, Via};
use crate::metrics;
use crate::page_token;
use crate::record::{CredentialRecord, Verification, VerificationStatus};
use crate::refusals::Refusals;
use crate::store::Store;
use crate::validate;
use crate::vault::{
    self, Change, CheckOnWrite, CredentialRef, Expiry, HeadersRead, ListFilter, Located,
    NewCredential, Report, ReportAction, Vault,
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
pub(crate) struct VaultService<S> {
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
    pub(crate) fn new(vault: Arc<Vault<S>>, watch: WatchContext) -> Self {
        VaultService {
            vault,
            audit: Arc::clone(&watch.audit),
            watch,
            refusals: Arc::new(Refusals::new()),
        }
    }

    /// Counts refused calls of known callers in `refusals` (the server's own, summarized there).
    pub(crate) fn with_refusals(mut self, refusals: Arc<Refusals>) -> Self {
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
            if summarized_refusal(convert::code(e))
                && !self
                    .refusals
                    .admit_caller(caller, method, metrics::code_name(convert::code(e)))
            {
                let code = convert::code(e);
                metrics::rpc(method, code, start.elapsed());
                metrics::refusal_summarized();
                return Err(convert::status(result.err().unwrap_or_else(|| {
                    Error::Internal("a refusal without an error".into())
                })));
            }
        }
        let entry = AuditEntry {
            method,
            credential_id: &target.id,
            credential_name: &target.name,
            code: metrics::code_name(result.as_ref().err().map_or(Code::Ok, convert::code)),
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
        let code = result.as_ref().err().map_or(Code::Ok, convert::code);
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
        result.map(Response::new).map_err(convert::status)
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
}

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

fn query_clone(q: &AuditQuery) -> AuditQuery {
    AuditQuery {
        credential_id: q.credential_id.clone(),
        credential_name: q.credential_name.clone(),
        caller: q.caller.clone(),
        start: q.start,
        end: q.end,
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
