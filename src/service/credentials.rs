//! The RPCs on one credential and its history: create, get, list, update, delete,
//! undelete, versions, rollback, destroy a version, verify, and the headers read.

use super::*;

impl<S: Store> VaultService<S> {
    pub(super) async fn create(
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
            .map(|s| convert::create_secret(&providers, s))
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

    pub(super) async fn get(
        &self,
        call: Arc<Call>,
        req: api::GetCredentialRequest,
    ) -> Result<api::GetCredentialResponse, Error> {
        let record = self.resolve(&call, &required_ref(req.r#ref)?).await?;
        Ok(api::GetCredentialResponse {
            credential: Some(self.show(&record).await),
        })
    }

    pub(super) async fn list(
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

    pub(super) async fn update(
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
        let secret = req
            .secret
            .map(|s| convert::update_secret(&providers, s))
            .transpose()?;
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

    pub(super) async fn delete(
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

    pub(super) async fn undelete(
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

    pub(super) async fn versions(
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

    pub(super) async fn rollback(
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

    pub(super) async fn destroy_version(
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

    pub(super) async fn verify(
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

    pub(super) async fn headers(
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
