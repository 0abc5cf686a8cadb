//! The generated service trait: each RPC passed to its handler through the one
//! call path ([`VaultService::rpc`]: audit, metrics, refusals).

use super::*;

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
