//! The gRPC service: authenticates and authorises every call, validates the
//! request, converts between proto and domain types, and drives the store.
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
use crate::crypto::{MasterKey, Sealed};
use crate::error::Error;
use crate::provider::{ProviderSecret, Providers};
use crate::record::{
    self, secret_aad, CredentialRecord, Verification, VerificationStatus, RECORD_FORMAT,
};
use crate::store::{Store, StoreError};
use crate::validate;

/// How often an update without `expected_version` retries after losing a race.
const MAX_CAS_RETRIES: usize = 16;

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
    store: Arc<S>,
    key: Arc<MasterKey>,
    callers: Arc<Callers>,
    providers: Arc<Providers>,
}

impl<S: Store> VaultService<S> {
    /// A service over an opened store whose key check has passed.
    pub fn new(
        store: Arc<S>,
        key: Arc<MasterKey>,
        callers: Arc<Callers>,
        providers: Arc<Providers>,
    ) -> Self {
        VaultService {
            store,
            key,
            callers,
            providers,
        }
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
            let latency_us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
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
        let id = match r {
            CredentialRef::Id(id) => {
                validate::id(id)?;
                id.clone()
            }
            CredentialRef::Name(name) => {
                validate::name(name)?;
                self.store
                    .id_for_name(name)
                    .await?
                    .ok_or_else(|| Error::NotFound(format!("no credential is named {name:?}")))?
            }
        };
        Span::current().record("credential_id", id.as_str());
        Ok(id)
    }

    /// The record a reference points at.
    async fn resolve(&self, r: &CredentialRef) -> Result<CredentialRecord, Error> {
        let id = self.resolve_id(r).await?;
        self.store
            .get(&id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("credential {id} not found")))
    }

    fn seal(&self, id: &str, secret: &ProviderSecret) -> Sealed {
        let aad = secret_aad(id, secret.provider(), self.key.id());
        self.key.seal(&aad, &secret.to_plaintext())
    }

    fn open(&self, record: &CredentialRecord) -> Result<ProviderSecret, Error> {
        let damaged = || {
            Error::DataLoss(format!(
                "the secret of credential {} cannot be decrypted: the stored record is damaged or was sealed with another master key",
                record.id
            ))
        };
        let sealed = record.secret.as_ref().ok_or_else(damaged)?;
        let aad = secret_aad(&record.id, &record.provider, &sealed.key_id);
        let plaintext = self.key.open(sealed, &aad).map_err(|_| damaged())?;
        ProviderSecret::from_plaintext(&record.provider, &plaintext).map_err(|_| damaged())
    }

    async fn create(
        &self,
        req: api::CreateCredentialRequest,
    ) -> Result<api::CreateCredentialResponse, Error> {
        validate::name(&req.name)?;
        validate::description(&req.description)?;
        let secret = req
            .secret
            .map(ProviderSecret::try_from)
            .transpose()?
            .ok_or_else(|| Error::invalid("a secret is required: set fleetio"))?;
        let id = validate::new_id();
        Span::current().record("credential_id", id.as_str());
        let now = Some(record::timestamp(SystemTime::now()));
        let record = CredentialRecord {
            format: RECORD_FORMAT,
            secret: Some(self.seal(&id, &secret)),
            id,
            name: req.name,
            description: req.description,
            provider: secret.provider().to_owned(),
            api_key_hint: secret.hint(),
            create_time: now,
            update_time: now,
            version: 1,
            last_verification: None,
        };
        self.store.insert(&record).await?;
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
        let after = validate::parse_page_token(&req.page_token)?;
        let mut items = self.store.list(after.as_deref(), size + 1).await?;
        let more = items.len() > size;
        items.truncate(size);
        let next_page_token = match items.last() {
            Some((last, _)) if more => validate::page_token(last),
            _ => String::new(),
        };
        let credentials = items
            .into_iter()
            .filter_map(|(id, record)| match record {
                Ok(record) => Some(to_api(&record)),
                Err(e) => {
                    tracing::error!(credential_id = %id, error = %e, "unreadable record left out of a listing");
                    None
                }
            })
            .collect();
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
        let secret = req.secret.map(ProviderSecret::try_from).transpose()?;
        if req.description.is_none() && secret.is_none() {
            return Err(Error::invalid(
                "nothing to update: set description and/or a new secret",
            ));
        }
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
            if let Some(secret) = &secret {
                if secret.provider() != current.provider {
                    return Err(Error::FailedPrecondition(format!(
                        "credential {} holds a {} secret, not a {} one; create a new credential instead",
                        current.id,
                        current.provider,
                        secret.provider()
                    )));
                }
                next.secret = Some(self.seal(&next.id, secret));
                next.api_key_hint = secret.hint();
                // The new secret has not been checked yet.
                next.last_verification = None;
            }
            next.version += 1;
            next.update_time = Some(record::timestamp(SystemTime::now()));
            match self.store.replace(&next, current.version).await {
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
        self.store.delete(&id, req.expected_version).await?;
        Ok(api::DeleteCredentialResponse {})
    }

    async fn verify(
        &self,
        req: api::VerifyCredentialRequest,
    ) -> Result<api::VerifyCredentialResponse, Error> {
        let record = self.resolve(&required_ref(req.r#ref)?).await?;
        let verification = {
            let secret = self.open(&record)?;
            self.providers.verify(&secret).await
        };
        let shown = verification_to_api(&verification);
        Span::current().record("verification", shown.status().as_str_name());
        let stored = self.record_verification(&record, &verification).await?;
        Ok(api::VerifyCredentialResponse {
            verification: Some(shown),
            credential: Some(to_api(&stored)),
        })
    }

    /// Stores a verification on the credential, unless its secret changed meanwhile.
    async fn record_verification(
        &self,
        verified: &CredentialRecord,
        verification: &Verification,
    ) -> Result<CredentialRecord, Error> {
        for _ in 0..MAX_CAS_RETRIES {
            let current = self.store.get(&verified.id).await?.ok_or_else(|| {
                Error::NotFound(format!(
                    "credential {} was deleted during verification",
                    verified.id
                ))
            })?;
            if current.secret != verified.secret {
                // A rotation won the race: this result speaks of the old secret.
                return Ok(current);
            }
            let mut next = current.clone();
            next.last_verification = Some(verification.clone());
            match self.store.replace(&next, current.version).await {
                Ok(()) => return Ok(next),
                Err(StoreError::VersionMismatch { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Aborted(
            "the credential kept changing while its verification was stored; retry".into(),
        ))
    }

    async fn headers(
        &self,
        req: api::GetCredentialHeadersRequest,
    ) -> Result<api::GetCredentialHeadersResponse, Error> {
        let record = self.resolve(&required_ref(req.r#ref)?).await?;
        let secret = self.open(&record)?;
        let out = self.providers.headers(&secret);
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
