//! The credential pages: the list, the add form and its create, one credential's
//! page with its recent audit events.

use super::*;

impl<T: CredentialVaultService> Console<T> {
    pub(super) async fn list(
        &self,
        signed: &Signed,
        conn: &Conn,
        query: &HashMap<String, String>,
    ) -> Reply {
        let status = query.get("status").cloned().unwrap_or_default();
        let statuses: Vec<i32> = match status.as_str() {
            "valid" => vec![VerificationStatus::Valid],
            "rejected" => vec![
                VerificationStatus::ApiKeyRejected,
                VerificationStatus::AccountTokenRejected,
                VerificationStatus::SecretRejected,
                VerificationStatus::Forbidden,
            ],
            "problem" => vec![
                VerificationStatus::RateLimited,
                VerificationStatus::ProviderError,
                VerificationStatus::Unreachable,
            ],
            "unverified" => vec![VerificationStatus::Unspecified],
            _ => vec![],
        }
        .into_iter()
        .map(|s| s as i32)
        .collect();
        let expiring = query.get("expiring").is_some_and(|v| v == "1");
        let page = query.get("page").cloned().unwrap_or_default();
        let request = api::ListCredentialsRequest {
            page_size: 25,
            page_token: page.clone(),
            verification_statuses: statuses,
            expire_before: expiring.then(|| {
                crate::record::timestamp(SystemTime::now() + Duration::from_secs(30 * 86_400))
            }),
            deleted: false,
        };
        let request = self.request(signed, conn, request);
        match self.call(self.service.list_credentials(request)).await {
            Ok(listed) => {
                let done = query.get("done").and_then(|d| done_text(d));
                let next = Some(listed.next_page_token.as_str()).filter(|t| !t.is_empty());
                html(
                    StatusCode::OK,
                    &pages::credentials(
                        &signed.viewer(),
                        &ListQuery { status, expiring },
                        &listed.credentials,
                        next,
                        page.is_empty(),
                        done,
                    ),
                )
            }
            Err(status) => self.failed(signed, &status),
        }
    }

    pub(super) fn add_page(
        &self,
        signed: &Signed,
        provider: &str,
        form: &Form,
        errors: FieldErrors,
        status: StatusCode,
    ) -> Reply {
        let providers = (self.providers)().forms();
        if !providers.iter().any(|(n, _)| n == provider) {
            return self.refused(Some(signed), StatusCode::NOT_FOUND, "no such provider");
        }
        let get = |k: &str| form.get(k).map_or("", |v| v.as_str());
        let plain = plain_values(&providers, provider, form);
        let page = AddForm {
            providers: &providers,
            provider,
            name: get("name"),
            description: get("description"),
            expire_date: get("expire_date"),
            plain,
            // On by default; a re-shown form keeps the operator's choice.
            verify: form.is_empty() || form.contains_key("verify"),
            errors,
        };
        html(status, &pages::add(&signed.viewer(), &page))
    }

    pub(super) async fn create(&self, signed: &Signed, conn: &Conn, mut form: Form) -> Reply {
        let provider = form.get("provider").cloned().unwrap_or_default();
        let catalog = (self.providers)();
        let forms = catalog.forms();
        let Some((_, fields)) = forms.iter().find(|(n, _)| *n == provider) else {
            return self.refused(Some(signed), StatusCode::NOT_FOUND, "no such provider");
        };
        let expire_time = match expiry(form.get("expire_date").map_or("", |v| v.as_str())) {
            Ok(t) => t,
            Err(e) => {
                let errors = HashMap::from([("expire_date".to_owned(), e.to_owned())]);
                form.wipe(fields);
                return self.add_page(signed, &provider, &form, errors, StatusCode::BAD_REQUEST);
            }
        };
        let plain = plain_values(&forms, &provider, &form);
        let secret_fields = form.take_fields(fields);
        // The plain values (an API version) are shown again if the form comes back.
        form.0.extend(plain);
        let request = api::CreateCredentialRequest {
            name: form.get("name").cloned().unwrap_or_default(),
            description: form.get("description").cloned().unwrap_or_default(),
            secret: Some(crate::convert::create_secret_from_fields(
                &provider,
                secret_fields,
            )),
            expire_time,
            verify: form.contains_key("verify"),
            verify_best_effort: false,
            request_budget_per_minute: 0,
        };
        let request = self.request(signed, conn, request);
        match self.call(self.service.create_credential(request)).await {
            Ok(created) => {
                let id = created.credential.map(|c| c.id).unwrap_or_default();
                redirect(&format!("/credentials/{id}?done=created"))
            }
            Err(status) => {
                let names: Vec<&str> = fields.iter().map(|f| f.name.as_ref()).collect();
                let errors = field_errors(&status, &names, &["name", "description", "expire_date"]);
                self.add_page(signed, &provider, &form, errors, http_status(status.code()))
            }
        }
    }

    /// One credential, through GetCredential as the signed-in caller.
    pub(super) async fn credential(
        &self,
        signed: &Signed,
        conn: &Conn,
        id: &str,
    ) -> Result<api::Credential, tonic::Status> {
        let request = api::GetCredentialRequest {
            r#ref: Some(api::get_credential_request::Ref::Id(id.to_owned())),
        };
        self.call(
            self.service
                .get_credential(self.request(signed, conn, request)),
        )
        .await
        .map(|r| r.credential.unwrap_or_default())
    }

    /// The credential page again, with `message` by field `field` of form `form`.
    pub(super) async fn form_error(
        &self,
        signed: &Signed,
        conn: &Conn,
        id: &str,
        form: &'static str,
        field: &str,
        message: String,
    ) -> Reply {
        let errors = HashMap::from([(field.to_owned(), message)]);
        self.show(
            signed,
            conn,
            id,
            None,
            HashMap::from([(form, errors)]),
            StatusCode::BAD_REQUEST,
        )
        .await
    }

    pub(super) async fn show(
        &self,
        signed: &Signed,
        conn: &Conn,
        id: &str,
        done: Option<&str>,
        errors: HashMap<&'static str, FieldErrors>,
        status: StatusCode,
    ) -> Reply {
        self.show_with(signed, conn, id, done, errors, HashMap::new(), status)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) async fn show_with(
        &self,
        signed: &Signed,
        conn: &Conn,
        id: &str,
        done: Option<&str>,
        errors: HashMap<&'static str, FieldErrors>,
        plain: HashMap<String, String>,
        status: StatusCode,
    ) -> Reply {
        let credential = match self.credential(signed, conn, id).await {
            Ok(c) => c,
            Err(status) => return self.failed(signed, &status),
        };
        // A rotation changes only what the operator changes: the fields that are
        // not secret (Fleetio's API version) start as they are now.
        let plain = if plain.is_empty() {
            credential
                .plain_fields
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        } else {
            plain
        };
        let events = if signed.caller.may(Permission::AuditRead) {
            Some(self.recent_events(signed, conn, id).await)
        } else {
            None
        };
        let versions = {
            let request = api::ListCredentialVersionsRequest {
                r#ref: Some(api::list_credential_versions_request::Ref::Id(
                    id.to_owned(),
                )),
            };
            self.call(
                self.service
                    .list_credential_versions(self.request(signed, conn, request)),
            )
            .await
            .map(|r| r.versions)
            .unwrap_or_default()
        };
        let fields = (self.providers)()
            .forms()
            .into_iter()
            .find(|(n, _)| *n == credential.provider)
            .map(|(_, f)| f)
            .unwrap_or_default();
        let page = CredentialPage {
            credential: &credential,
            fields: &fields,
            events: events.as_deref(),
            versions: &versions,
            done,
            errors,
            plain,
        };
        html(status, &pages::credential(&signed.viewer(), &page))
    }

    /// The latest 50 audit events of a credential in the last 30 days that
    /// matter, newest first: changes, verifications and secret reads; views of
    /// its metadata (the console's own page views among them) stay in the audit
    /// log, so that a few page views never push a rotation off the page.
    pub(super) async fn recent_events(
        &self,
        signed: &Signed,
        conn: &Conn,
        id: &str,
    ) -> Vec<api::AuditEvent> {
        let mut events: Vec<api::AuditEvent> = Vec::new();
        let mut token = String::new();
        for _ in 0..5 {
            let request = api::ListAuditEventsRequest {
                credential_id: id.to_owned(),
                start_time: Some(crate::record::timestamp(
                    SystemTime::now() - Duration::from_secs(30 * 86_400),
                )),
                page_size: 1000,
                page_token: std::mem::take(&mut token),
                ..Default::default()
            };
            let request = self.request(signed, conn, request);
            let Ok(page) = self.call(self.service.list_audit_events(request)).await else {
                break;
            };
            events.extend(page.events.into_iter().filter(|e| !is_view(&e.method)));
            if events.len() > 50 {
                events.drain(..events.len() - 50);
            }
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        events.reverse();
        events
    }
}

/// Whether an audited call only viewed metadata (left out of a credential's page).
fn is_view(method: &str) -> bool {
    matches!(
        method,
        "GetCredential" | "ListCredentials" | "ListCredentialVersions" | "ListAuditEvents"
    )
}
