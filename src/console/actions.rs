//! A credential page's actions (verify, edit, rotate, delete and the rest), each the
//! RPC of the same name called as the signed-in caller.

use super::*;

impl<T: CredentialVaultService> Console<T> {
    pub(super) async fn act(
        &self,
        signed: &Signed,
        conn: &Conn,
        id: &str,
        action: &str,
        mut form: Form,
    ) -> Reply {
        let version = form.get("version").and_then(|v| v.parse::<u64>().ok());
        let (which, outcome): (&'static str, Result<&'static str, tonic::Status>) = match action {
            "verify" => {
                let request = api::VerifyCredentialRequest {
                    r#ref: Some(api::verify_credential_request::Ref::Id(id.to_owned())),
                };
                let r = self
                    .call(
                        self.service
                            .verify_credential(self.request(signed, conn, request)),
                    )
                    .await;
                ("verify", r.map(|_| "verified"))
            }
            "edit" => {
                let expire_time = match expiry(form.get("expire_date").map_or("", |v| v.as_str())) {
                    Ok(t) => t,
                    Err(e) => {
                        return self
                            .form_error(signed, conn, id, "edit", "expire_date", e.to_owned())
                            .await
                    }
                };
                // Only what the operator changed: an unchanged form makes no new version.
                let description = form
                    .get("description")
                    .filter(|d| form.get("was_description") != Some(*d))
                    .cloned();
                let was_expiry = form.get("was_expire_date").map_or("", |v| v.as_str());
                let expiry_changed = form.get("expire_date").map_or("", |v| v.trim()) != was_expiry;
                if description.is_none() && !expiry_changed {
                    return redirect(&format!("/credentials/{id}?done=unchanged"));
                }
                let request = api::UpdateCredentialRequest {
                    r#ref: Some(api::update_credential_request::Ref::Id(id.to_owned())),
                    expected_version: version,
                    description,
                    clear_expire_time: expiry_changed && expire_time.is_none(),
                    expire_time: expire_time.filter(|_| expiry_changed),
                    ..Default::default()
                };
                let r = self
                    .call(
                        self.service
                            .update_credential(self.request(signed, conn, request)),
                    )
                    .await;
                ("edit", r.map(|_| "updated"))
            }
            "rotate" => {
                let catalog = (self.providers)();
                let current = match self.credential(signed, conn, id).await {
                    Ok(c) => c.provider,
                    Err(status) => return self.failed(signed, &status),
                };
                let forms = catalog.forms();
                let fields = forms
                    .iter()
                    .find(|(n, _)| *n == current)
                    .map(|(_, f)| f.clone())
                    .unwrap_or_default();
                let plain = plain_values(&forms, &current, &form);
                let secret =
                    crate::convert::update_secret_from_fields(&current, form.take_fields(&fields));
                let request = api::UpdateCredentialRequest {
                    r#ref: Some(api::update_credential_request::Ref::Id(id.to_owned())),
                    expected_version: version,
                    secret: Some(secret),
                    verify: form.contains_key("verify"),
                    ..Default::default()
                };
                let r = self
                    .call(
                        self.service
                            .update_credential(self.request(signed, conn, request)),
                    )
                    .await;
                if let Err(status) = &r {
                    let names: Vec<&str> = fields.iter().map(|f| f.name.as_ref()).collect();
                    let errors = field_errors(status, &names, &[]);
                    return self
                        .show_with(
                            signed,
                            conn,
                            id,
                            None,
                            HashMap::from([("rotate", errors)]),
                            plain,
                            http_status(status.code()),
                        )
                        .await;
                }
                ("rotate", r.map(|_| "rotated"))
            }
            "rollback" => {
                let Some(to) = form.get("to").and_then(|v| v.parse::<u64>().ok()) else {
                    return self.refused(
                        Some(signed),
                        StatusCode::BAD_REQUEST,
                        "no version to roll back to",
                    );
                };
                let request = api::RollbackCredentialRequest {
                    r#ref: Some(api::rollback_credential_request::Ref::Id(id.to_owned())),
                    version: to,
                    expected_version: version,
                    verify: false,
                    verify_best_effort: false,
                };
                let r = self
                    .call(
                        self.service
                            .rollback_credential(self.request(signed, conn, request)),
                    )
                    .await;
                ("rollback", r.map(|_| "rolled-back"))
            }
            "delete" => {
                let name = match self.credential(signed, conn, id).await {
                    Ok(c) => c.name,
                    Err(status) => return self.failed(signed, &status),
                };
                if form.get("confirm_name").map(|n| n.trim()) != Some(name.as_str()) {
                    let message = format!("type the credential's name, {name}, to delete it");
                    return self
                        .form_error(signed, conn, id, "delete", "confirm_name", message)
                        .await;
                }
                let request = api::DeleteCredentialRequest {
                    r#ref: Some(api::delete_credential_request::Ref::Id(id.to_owned())),
                    expected_version: version,
                    force: false,
                };
                match self
                    .call(
                        self.service
                            .delete_credential(self.request(signed, conn, request)),
                    )
                    .await
                {
                    Ok(_) => return redirect("/credentials?done=deleted"),
                    Err(status) => ("delete", Err(status)),
                }
            }
            _ => return self.refused(Some(signed), StatusCode::NOT_FOUND, "no such page"),
        };
        match outcome {
            Ok(done) => redirect(&format!("/credentials/{id}?done={done}")),
            Err(status) if status.code() == Code::NotFound => self.failed(signed, &status),
            Err(status) => {
                let names = ["description", "expire_date"];
                let errors = field_errors(&status, &[], if which == "edit" { &names } else { &[] });
                self.show(
                    signed,
                    conn,
                    id,
                    None,
                    HashMap::from([(which, errors)]),
                    http_status(status.code()),
                )
                .await
            }
        }
    }
}
