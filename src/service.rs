//! The gRPC service: authenticates and authorises every call, validates the
//! request, converts between proto and domain types, and drives the vault core.
//!
//! Each RPC emits exactly one tracing event (method, caller, credential id,
//! code, latency); none carries a secret.

use std::future::Future;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tonic::{Code, Request, Response, Status};
use tracing::{field, Instrument, Span};

use crate::api::{self, credential_vault_service_server::CredentialVaultService};
use crate::auth::{Caller, Callers, Permission};
use crate::error::Error;
use crate::metrics;
use crate::provider::ProviderSecret;
use crate::record::{self, CredentialRecord, Verification, VerificationStatus, RECORD_FORMAT};
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
    callers: Arc<Callers>,
}

impl<S: Store> VaultService<S> {
    /// A service over the vault core, admitting `callers`.
    pub fn new(vault: Arc<Vault<S>>, callers: Arc<Callers>) -> Self {
        VaultService { vault, callers }
    }

    /// Runs one RPC: authenticate, authorise, handle, and log one event.
    async fn rpc<Req, Resp, F, Fut>(
        &self,
        method: &'static str,
        permission: Permission,
        request: Request<Req>,
        handle: F,
    ) -> Result<Response<Resp>, Status>
    where
        F: FnOnce(Req) -> Fut,
        Fut: Future<Output = Result<Resp, Error>>,
    {
        let start = Instant::now();
        let span = tracing::info_span!(
            "rpc",
            method,
            caller = field::Empty,
            credential_id = field::Empty,
            verification = field::Empty,
        );
        async move {
            let result = async {
                let caller: Arc<Caller> = self
                    .callers
                    .authenticate(request.metadata())
                    .inspect_err(|_| {
                        Span::current().record("caller", "anonymous");
                    })?;
                Span::current().record("caller", caller.name.as_str());
                caller.require(permission)?;
                handle(request.into_inner()).await
            }
            .await;
            let elapsed = start.elapsed();
            let latency_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
            metrics::rpc(
                method,
                result.as_ref().err().map_or(Code::Ok, Error::code),
                elapsed,
            );
            match &result {
                Ok(_) => tracing::info!(code = ?Code::Ok, latency_us, "rpc done"),
                Err(e @ (Error::DataLoss(_) | Error::Internal(_) | Error::Unavailable(_))) => {
                    tracing::error!(code = ?e.code(), latency_us, error = %e, "rpc failed")
                }
                Err(e @ (Error::Unauthenticated(_) | Error::PermissionDenied(_))) => {
                    tracing::warn!(code = ?e.code(), latency_us, error = %e, "rpc refused")
                }
                Err(e) => tracing::info!(code = ?e.code(), latency_us, error = %e, "rpc rejected"),
            }
            result.map(Response::new).map_err(Status::from)
        }
        .instrument(span)
        .await
    }

    /// The id a reference points at (checked to exist only by the caller's next step).
    async fn resolve_id(&self, r: &CredentialRef) -> Result<String, Error> {
        let id =
            match r {
                CredentialRef::Id(id) => {
                    validate::id(id)?;
                    id.clone()
                }
                CredentialRef::Name(name) => {
                    validate::name(name)?;
                    self.vault.store().id_for_name(name).await?.ok_or_else(|| {
                        Error::NotFound(format!("no credential is named {name:?}"))
                    })?
                }
            };
        Span::current().record("credential_id", id.as_str());
        Ok(id)
    }

    /// The record a reference points at.
    async fn resolve(&self, r: &CredentialRef) -> Result<CredentialRecord, Error> {
        let id = self.resolve_id(r).await?;
        self.vault
            .store()
            .get(&id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("credential {id} not found")))
    }

    /// Checks a secret before writing it when the request asks to.
    async fn check_if_asked(
        &self,
        secret: &ProviderSecret,
        verify: bool,
        best_effort: bool,
    ) -> Result<Option<Verification>, Error> {
        if !verify {
            return Ok(None);
        }
        let verification = self.vault.check_before_write(secret, best_effort).await?;
        Span::current().record("verification", status_name(&verification));
        Ok(Some(verification))
    }

    async fn create(
        &self,
        req: api::CreateCredentialRequest,
    ) -> Result<api::CreateCredentialResponse, Error> {
        validate::name(&req.name)?;
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
            .check_if_asked(&secret, req.verify, req.verify_best_effort)
            .await?;
        let id = validate::new_id();
        Span::current().record("credential_id", id.as_str());
        let now = Some(record::timestamp(SystemTime::now()));
        let record = CredentialRecord {
            format: RECORD_FORMAT,
            secret: Some(self.vault.seal(&id, &secret)),
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
        };
        self.vault.store().insert(&record).await?;
        metrics::credentials_changed(1.0);
        Ok(api::CreateCredentialResponse {
            credential: Some(to_api(&record)),
        })
    }

    async fn get(
        &self,
        req: api::GetCredentialRequest,
    ) -> Result<api::GetCredentialResponse, Error> {
        let record = self.resolve(&required_ref(req.r#ref)?).await?;
        Ok(api::GetCredentialResponse {
            credential: Some(to_api(&record)),
        })
    }

    async fn list(
        &self,
        req: api::ListCredentialsRequest,
    ) -> Result<api::ListCredentialsResponse, Error> {
        let size = validate::page_size(req.page_size)?;
        let filter = ListFilter::new(&req)?;
        let batch = LIST_SCAN_BATCH.max(size + 1);
        let mut cursor = validate::parse_page_token(&req.page_token)?;
        let mut credentials = Vec::new();
        let mut more = false;
        'scan: loop {
            let items = self.vault.store().list(cursor.as_deref(), batch).await?;
            let read = items.len();
            for (id, record) in items {
                match record {
                    Ok(record) if filter.matches(&record) => {
                        if credentials.len() == size {
                            more = true;
                            break 'scan;
                        }
                        credentials.push(to_api(&record));
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
        Ok(api::ListCredentialsResponse {
            credentials,
            next_page_token,
        })
    }

    async fn update(
        &self,
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
                self.check_if_asked(secret, req.verify, req.verify_best_effort)
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
            let current = self.resolve(&r).await?;
            if let Some(expected) = req.expected_version {
                if expected != current.version {
                    return Err(StoreError::VersionMismatch {
                        id: current.id,
                        expected,
                        actual: current.version,
                    }
                    .into());
                }
            }
            let mut next = current.clone();
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
                next.secret = Some(self.vault.seal(&next.id, secret));
                next.api_key_hint = secret.hint();
                // A new secret is unverified unless it was just checked.
                next.last_verification.clone_from(&verification);
            }
            next.version += 1;
            next.update_time = Some(record::timestamp(SystemTime::now()));
            match self.vault.store().replace(&next, current.version).await {
                Ok(()) => {
                    return Ok(api::UpdateCredentialResponse {
                        credential: Some(to_api(&next)),
                    })
                }
                Err(StoreError::VersionMismatch { .. }) if req.expected_version.is_none() => {
                    continue
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Aborted(
            "the credential kept changing while it was updated; retry".into(),
        ))
    }

    async fn delete(
        &self,
        req: api::DeleteCredentialRequest,
    ) -> Result<api::DeleteCredentialResponse, Error> {
        let id = self.resolve_id(&required_ref(req.r#ref)?).await?;
        self.vault.store().delete(&id, req.expected_version).await?;
        metrics::credentials_changed(-1.0);
        Ok(api::DeleteCredentialResponse {})
    }

    async fn verify(
        &self,
        req: api::VerifyCredentialRequest,
    ) -> Result<api::VerifyCredentialResponse, Error> {
        let record = self.resolve(&required_ref(req.r#ref)?).await?;
        let (verification, stored) = self
            .vault
            .verify_record(&record, metrics::Source::Rpc)
            .await?;
        Span::current().record("verification", status_name(&verification));
        Ok(api::VerifyCredentialResponse {
            verification: Some(verification_to_api(&verification)),
            credential: Some(to_api(&stored)),
        })
    }

    async fn headers(
        &self,
        req: api::GetCredentialHeadersRequest,
    ) -> Result<api::GetCredentialHeadersResponse, Error> {
        let record = self.resolve(&required_ref(req.r#ref)?).await?;
        let secret = self.vault.open(&record)?;
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
            credential_id: record.id,
            version: record.version,
        })
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
fn to_api(r: &CredentialRecord) -> api::Credential {
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
    async fn create_credential(
        &self,
        request: Request<api::CreateCredentialRequest>,
    ) -> Result<Response<api::CreateCredentialResponse>, Status> {
        self.rpc(
            "CreateCredential",
            Permission::CredentialsWrite,
            request,
            |r| self.create(r),
        )
        .await
    }

    async fn get_credential(
        &self,
        request: Request<api::GetCredentialRequest>,
    ) -> Result<Response<api::GetCredentialResponse>, Status> {
        self.rpc("GetCredential", Permission::CredentialsRead, request, |r| {
            self.get(r)
        })
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
            |r| self.list(r),
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
            |r| self.update(r),
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
            |r| self.delete(r),
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
            |r| self.verify(r),
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
            |r| self.headers(r),
        )
        .await
    }
}
