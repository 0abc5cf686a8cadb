//! One credential's page: its metadata, verification, versions, recent events and forms.

use super::*;

/// What a credential page shows besides the credential.
pub struct CredentialPage<'a> {
    /// The credential shown.
    pub credential: &'a api::Credential,
    /// Its provider's fields.
    pub fields: &'a [Field],
    /// Its audit events, when the caller may read them.
    pub events: Option<&'a [api::AuditEvent]>,
    /// The secret versions it keeps, newest first.
    pub versions: &'a [api::CredentialVersion],
    /// What was just done, to say so.
    pub done: Option<&'a str>,
    /// Errors by form: `edit`, `rotate`, `verify` or `delete`, then by field.
    pub errors: HashMap<&'static str, FieldErrors>,
    /// Its plain (non-secret) fields.
    pub plain: HashMap<String, String>,
}

/// One credential, with what the viewer may do to it.
pub fn credential(viewer: &Viewer<'_>, page: &CredentialPage<'_>) -> Markup {
    let c = page.credential;
    let now = now_secs();
    let none = FieldErrors::new();
    let errors = |form: &str| page.errors.get(form).unwrap_or(&none);
    let (status, class) = status_text(c.last_verification.as_ref());
    let expire_date = c
        .expire_time
        .as_ref()
        .map(|t| when(Some(t))[..10].to_owned())
        .unwrap_or_default();
    let action = |what: &str| format!("/credentials/{}/{what}", c.id);
    layout(
        &c.name,
        Some(viewer),
        html! {
            h1 { (c.name) }
            @if let Some(d) = page.done { (notice("ok", d)) }
            // A refused action says so at the top, where the page opens.
            @for (form, heading) in [("edit", "h-edit"), ("rotate", "h-rotate"), ("verify", "h-verify"),
                                     ("delete", "h-delete"), ("rollback", "h-versions")] {
                @if let Some(e) = page.errors.get(form).filter(|e| !e.is_empty()) {
                    (error_summary(heading, e))
                }
            }
            dl.facts {
                dt { "Id" } dd { code { (c.id) } }
                dt { "Description" } dd { @if c.description.is_empty() { "—" } @else { (c.description) } }
                dt { "Provider" } dd { (c.provider) }
                dt { "Key" } dd { code { "…" (c.api_key_hint) } }
                @for f in page.fields.iter().filter(|f| !f.secret) {
                    dt { (field_label(&f.name)) }
                    dd { @match c.plain_fields.get(f.name.as_ref()) {
                        Some(v) => code { (v) },
                        None => "not set",
                    } }
                }
                dt { "Version" } dd { (c.version) }
                dt { "Verification" } dd {
                    span.status.(class) { (status) }
                    @if let Some(v) = &c.last_verification {
                        " · checked " (when(v.check_time.as_ref()))
                        @if !v.message.is_empty() { br; small { (v.message) } }
                    }
                }
                dt { "Expires" } dd class=(expiry_class(c.expire_time.as_ref(), now)) {
                    @if c.expire_time.is_some() { (when(c.expire_time.as_ref())) } @else { "not set" }
                }
                dt { "Last use" } dd {
                    (when(c.last_used_time.as_ref()))
                    @if !c.last_used_by.is_empty() { " by " (c.last_used_by) }
                }
                dt { "Updated" } dd { (when(c.update_time.as_ref())) }
            }
            @if viewer.may_verify {
                section aria-labelledby="h-verify" {
                    h2 id="h-verify" { "Verify now" }
                    @if let Some(e) = errors("verify").get("") { (notice("error", &humane(e))) }
                    form method="post" action=(action("verify")) {
                        (csrf(viewer))
                        button type="submit" { "Verify with " (c.provider) }
                    }
                }
            }
            @if viewer.may_write {
                section aria-labelledby="h-edit" {
                    h2 id="h-edit" { "Edit" }
                    @let e = errors("edit");
                    @if let Some(m) = e.get("") { (notice("error", &humane(m))) }
                    form method="post" action=(action("edit")) {
                        (csrf(viewer))
                        input type="hidden" name="version" value=(c.version);
                        input type="hidden" name="was_description" value=(c.description);
                        input type="hidden" name="was_expire_date" value=(expire_date);
                        div.field {
                            label for="f-description" { "Description" }
                            textarea id="f-description" name="description" rows="2"
                                aria-invalid=[e.contains_key("description").then_some("true")] { (c.description) }
                            (field_error(e, "description"))
                        }
                        (input(e, "expire_date", "Key expires on (empty: not set)", "date", &expire_date, false, None))
                        button type="submit" { "Save changes" }
                    }
                }
                section aria-labelledby="h-rotate" {
                    h2 id="h-rotate" { "Rotate the secret" }
                    @let e = errors("rotate");
                    @if let Some(m) = e.get("") { (notice("error", &humane(m))) }
                    form method="post" action=(action("rotate")) {
                        (csrf(viewer))
                        input type="hidden" name="version" value=(c.version);
                        (secret_inputs(&c.provider, page.fields, &page.plain, e))
                        div.field.inline {
                            input id="f-rotate-verify" type="checkbox" name="verify" value="1" checked;
                            label for="f-rotate-verify" { "Verify with " (c.provider) " before saving" }
                        }
                        button type="submit" { "Rotate" }
                    }
                }
                section aria-labelledby="h-delete" {
                    h2 id="h-delete" { "Delete" }
                    @let e = errors("delete");
                    @if let Some(m) = e.get("") { (notice("error", &humane(m))) }
                    form method="post" action=(action("delete")) {
                        (csrf(viewer))
                        input type="hidden" name="version" value=(c.version);
                        (input(e, "confirm_name", &format!("Type {} to confirm", c.name), "text", "", true,
                            Some("Workers lose this credential at once.")))
                        button.danger type="submit" { "Delete credential" }
                    }
                }
            }
            @if !page.versions.is_empty() {
                section aria-labelledby="h-versions" {
                    h2 id="h-versions" { "Versions" }
                    @if let Some(m) = errors("rollback").get("") { (notice("error", &humane(m))) }
                    table {
                        caption.visually-hidden { "Secret versions, newest first" }
                        thead { tr {
                            th scope="col" { "Version" } th scope="col" { "Key" } th scope="col" { "Written" }
                            th scope="col" { "Verification" } th scope="col" { "State" }
                            @if viewer.may_write { th scope="col" { "Roll back" } }
                        } }
                        tbody {
                            @for v in page.versions {
                                @let (vstatus, vclass) = status_text(v.verification.as_ref());
                                tr {
                                    td { (v.version) }
                                    td { code { "…" (v.api_key_hint) } }
                                    td { (when(v.create_time.as_ref())) @if !v.created_by.is_empty() { br; small { "by " (v.created_by) } } }
                                    td { span.status.(vclass) { (vstatus) } }
                                    td {
                                        @if v.current { "current" }
                                        @else if v.destroyed { "destroyed " (when(v.destroy_time.as_ref())) }
                                        @else { "kept" }
                                    }
                                    @if viewer.may_write {
                                        td {
                                            @if !v.current && !v.destroyed {
                                                form method="post" action=(action("rollback")) {
                                                    (csrf(viewer))
                                                    input type="hidden" name="version" value=(c.version);
                                                    input type="hidden" name="to" value=(v.version);
                                                    button type="submit" { "Roll back to " (v.version) }
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if let Some(events) = page.events {
                section aria-labelledby="h-audit" {
                    h2 id="h-audit" { "Audit events" }
                    p.hint { "Changes, verifications and secret reads; views of the credential are in the audit log." }
                    @if events.is_empty() { p.empty { "No events in the last 30 days." } } @else {
                        table {
                            caption.visually-hidden { "Audit events, newest first" }
                            thead { tr {
                                th scope="col" { "Time" } th scope="col" { "Caller" } th scope="col" { "Call" }
                                th scope="col" { "Outcome" } th scope="col" { "Via" }
                            } }
                            tbody {
                                @for ev in events {
                                    tr {
                                        td { (when(ev.time.as_ref())) }
                                        td { (ev.caller) }
                                        td { (ev.method) @if !ev.reason.is_empty() { br; small { (ev.reason) } } }
                                        td { (ev.code) }
                                        td { @if ev.channel.is_empty() { "gRPC" } @else { (ev.channel) } }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}
