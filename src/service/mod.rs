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

mod call;

use call::*;

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
