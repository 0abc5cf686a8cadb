//! The console's pages, as HTML (maud escapes every value): the layout, sign-in,
//! the credentials list, the add form, a credential with its forms and audit
//! events. Secret inputs are write-only: never filled in, `autocomplete=off`.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use maud::{html, Markup, DOCTYPE};

use crate::api;
use crate::provider::Field;
use crate::record::VerificationStatus;

/// Who is signed in, and what the page may offer them.
pub struct Viewer<'a> {
    /// The signed-in caller's name.
    pub caller: &'a str,
    /// The session's CSRF token, for the forms.
    pub csrf: &'a str,
    /// Whether the caller may create, change and delete.
    pub may_write: bool,
    /// Whether the caller may verify.
    pub may_verify: bool,
    /// Whether the caller may read the audit trail.
    pub may_audit: bool,
}

/// Errors of a form: by field name, and one for the whole form (`""`).
pub type FieldErrors = HashMap<String, String>;

/// The whole page around `body`.
pub fn layout(title: &str, viewer: Option<&Viewer<'_>>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · credvault" }
                link rel="stylesheet" href="/static/console.css";
            }
            body {
                header.top {
                    a.brand href="/credentials" { "credvault" }
                    @if let Some(v) = viewer {
                        nav aria-label="main" {
                            a href="/credentials" { "Credentials" }
                            @if v.may_write { a href="/credentials/new" { "Add credential" } }
                        }
                        form.signout method="post" action="/sign-out" {
                            (csrf(v))
                            span.who { "Signed in as " strong { (v.caller) } }
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

fn csrf(v: &Viewer<'_>) -> Markup {
    html! { input type="hidden" name="csrf" value=(v.csrf); }
}

/// A message above a page's content (`ok` or `error`).
pub fn notice(kind: &str, text: &str) -> Markup {
    html! { p.notice.(kind) role=(if kind == "error" { "alert" } else { "status" }) { (text) } }
}

fn field_error(errors: &FieldErrors, field: &str) -> Markup {
    html! {
        @if let Some(e) = errors.get(field) {
            p.error id={ "err-" (field) } { (humane(e)) }
        }
    }
}

/// An RPC's message with the fields it names as forms label them
/// (`fleetio rejected the account_token` → `… the account token`).
pub fn humane(message: &str) -> String {
    let mut out = message.to_owned();
    for raw in [
        "account_token",
        "api_key",
        "api_version",
        "expire_time",
        "confirm_name",
    ] {
        if out.contains(raw) {
            let label = field_label(raw);
            let label = if label.starts_with("API") {
                label
            } else {
                label.to_lowercase()
            };
            out = out.replace(raw, &label);
        }
    }
    out
}

/// What went wrong with a form, at the top of the page, focused when the page
/// opens: each problem links to its field, named as the form labels it.
fn error_summary(form_id: &str, errors: &FieldErrors) -> Markup {
    let mut problems: Vec<(&String, &String)> = errors.iter().collect();
    problems.sort();
    html! {
        div.notice.error id="problem" role="alert" tabindex="-1" autofocus {
            p { strong { "Not done." } " Nothing was changed:" }
            ul {
                @for (field, message) in problems {
                    li {
                        @if field.is_empty() {
                            a href={ "#" (form_id) } { (humane(message)) }
                        } @else {
                            a href={ "#f-" (field) } { (field_label(field)) ": " (humane(message)) }
                        }
                    }
                }
            }
        }
    }
}

/// A labelled input; its error, if any, right below it.
fn input(
    errors: &FieldErrors,
    name: &str,
    label: &str,
    kind: &str,
    value: &str,
    required: bool,
    hint: Option<&str>,
) -> Markup {
    let id = format!("f-{name}");
    let invalid = errors.contains_key(name);
    let secret = kind == "password";
    html! {
        div.field {
            label for=(id) { (label) @if !required { " " span.optional { "(optional)" } } }
            @if let Some(h) = hint { p.hint id={ "hint-" (name) } { (h) } }
            input id=(id) name=(name) type=(kind)
                value=[(!secret && !value.is_empty()).then_some(value)]
                required[required] autocomplete=(if secret { "off" } else { "on" })
                spellcheck=[secret.then_some("false")]
                aria-invalid=[invalid.then_some("true")]
                aria-describedby=[invalid.then(|| format!("err-{name}"))];
            (field_error(errors, name))
        }
    }
}

/// The inputs of a provider's secret, drawn from its fields.
pub fn secret_inputs(
    provider: &str,
    fields: &[Field],
    plain_values: &HashMap<String, String>,
    errors: &FieldErrors,
) -> Markup {
    html! {
        fieldset {
            legend { (provider) " secret" }
            @for f in fields {
                @let label = human_field(&f.name);
                @if f.secret {
                    (input(errors, &f.name, &label, "password", "", f.required,
                        Some("Write-only: paste it; it is never shown again.")))
                } @else {
                    (input(errors, &f.name, &label, "text",
                        plain_values.get(f.name.as_ref()).map_or("", String::as_str), f.required, None))
                }
            }
        }
    }
}

fn human_field(name: &str) -> String {
    match name {
        "api_version" => "API version (e.g. 2024-03-15)".into(),
        other => field_label(other),
    }
}

/// A field as a form labels it, capitalized (`account_token`: `Account token`).
fn field_label(name: &str) -> String {
    match name {
        "api_key" => "API key".into(),
        "account_token" => "Account token".into(),
        "api_version" => "API version".into(),
        "expire_date" | "expire_time" => "Key expires on".into(),
        "confirm_name" => "Name to confirm".into(),
        other => {
            let mut s = other.replace('_', " ");
            if let Some(first) = s.get_mut(..1) {
                first.make_ascii_uppercase();
            }
            s
        }
    }
}

/// The sign-in page.
pub fn sign_in(
    token: &str,
    error: Option<&str>,
    note: Option<&str>,
    certificate: Option<&str>,
) -> Markup {
    let errors: FieldErrors = error
        .map(|e| HashMap::from([("token".to_owned(), e.to_owned())]))
        .unwrap_or_default();
    layout(
        "Sign in",
        None,
        html! {
            h1 { "Sign in" }
            @if let Some(n) = note { (notice("ok", n)) }
            @if let Some(name) = certificate {
                form method="post" action="/sign-in" {
                    input type="hidden" name="sign_in" value=(token);
                    input type="hidden" name="use_certificate" value="1";
                    p { "Your client certificate names the caller " strong { (name) } "." }
                    button type="submit" { "Continue as " (name) }
                }
                p { "Or sign in with a bearer token:" }
            }
            form method="post" action="/sign-in" {
                input type="hidden" name="sign_in" value=(token);
                (input(&errors, "token", "Bearer token", "password", "", true,
                    Some("A caller's token from the callers file; the same permissions as over gRPC.")))
                button type="submit" { "Sign in" }
            }
        },
    )
}

/// A refusal or failure page.
pub fn problem(viewer: Option<&Viewer<'_>>, title: &str, text: &str) -> Markup {
    layout(
        title,
        viewer,
        html! {
            h1 { (title) }
            (notice("error", text))
            p { a href="/credentials" { "Back to the credentials" } }
        },
    )
}

/// A status as people read it, and the class that colours it.
pub fn status_text(v: Option<&api::Verification>) -> (String, &'static str) {
    let Some(v) = v else {
        return ("not verified".into(), "unverified");
    };
    let status = VerificationStatus::try_from(v.status).unwrap_or(VerificationStatus::Unspecified);
    let field = human_field(&v.rejected_field).to_lowercase();
    match status {
        VerificationStatus::Valid => ("valid".into(), "valid"),
        VerificationStatus::ApiKeyRejected => ("API key rejected".into(), "rejected"),
        VerificationStatus::AccountTokenRejected => ("account token rejected".into(), "rejected"),
        VerificationStatus::SecretRejected if v.rejected_field.is_empty() => {
            ("secret rejected".into(), "rejected")
        }
        VerificationStatus::SecretRejected => (format!("{field} rejected"), "rejected"),
        VerificationStatus::Forbidden => ("forbidden".into(), "rejected"),
        VerificationStatus::RateLimited => ("rate limited".into(), "problem"),
        VerificationStatus::ProviderError => ("provider error".into(), "problem"),
        VerificationStatus::Unreachable => ("provider unreachable".into(), "problem"),
        VerificationStatus::Unspecified => ("not verified".into(), "unverified"),
    }
}

/// A timestamp as `2026-12-05 11:20 UTC`.
pub fn when(t: Option<&prost_types::Timestamp>) -> String {
    t.and_then(|t| {
        let secs = u64::try_from(t.seconds).ok()?;
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        let text = humantime::format_rfc3339_seconds(time).to_string();
        Some(format!("{} {} UTC", &text[..10], &text[11..16]))
    })
    .unwrap_or_else(|| "never".into())
}

/// `soon` within 30 days of expiry, `expired` after it.
fn expiry_class(t: Option<&prost_types::Timestamp>, now: i64) -> &'static str {
    match t {
        Some(t) if t.seconds <= now => "expired",
        Some(t) if t.seconds <= now + 30 * 86_400 => "soon",
        _ => "",
    }
}

fn verification_cell(c: &api::Credential) -> Markup {
    let (text, class) = status_text(c.last_verification.as_ref());
    html! {
        span.status.(class) { (text) }
        @if let Some(v) = &c.last_verification {
            br; small { (when(v.check_time.as_ref())) }
        }
    }
}

/// The filters a list shows and keeps in its links.
pub struct ListQuery {
    /// The last verification's status, in words.
    pub status: String,
    /// Whether it expires within the warning window.
    pub expiring: bool,
}

/// The credentials page.
pub fn credentials(
    viewer: &Viewer<'_>,
    query: &ListQuery,
    items: &[api::Credential],
    next: Option<&str>,
    first_page: bool,
    done: Option<&str>,
) -> Markup {
    let now = now_secs();
    let filter_link = |page: &str| {
        let mut q = form_urlencoded::Serializer::new(String::new());
        if !query.status.is_empty() {
            q.append_pair("status", &query.status);
        }
        if query.expiring {
            q.append_pair("expiring", "1");
        }
        if !page.is_empty() {
            q.append_pair("page", page);
        }
        format!("/credentials?{}", q.finish())
    };
    let statuses = [
        ("", "any status"),
        ("valid", "valid"),
        ("rejected", "rejected or forbidden"),
        ("problem", "rate limited or unreachable"),
        ("unverified", "not verified"),
    ];
    layout(
        "Credentials",
        Some(viewer),
        html! {
            h1 { "Credentials" }
            @if let Some(d) = done { (notice("ok", d)) }
            form.filters method="get" action="/credentials" {
                div.field.inline {
                    label for="f-status" { "Verification" }
                    select id="f-status" name="status" {
                        @for (value, label) in statuses {
                            option value=(value) selected[query.status == value] { (label) }
                        }
                    }
                }
                div.field.inline {
                    input id="f-expiring" type="checkbox" name="expiring" value="1" checked[query.expiring];
                    label for="f-expiring" { "Expiring within 30 days" }
                }
                button type="submit" { "Filter" }
            }
            @if items.is_empty() {
                p.empty { "No credential matches." }
            } @else {
                table {
                    caption.visually-hidden { "Credentials" }
                    thead { tr {
                        th scope="col" { "Name" } th scope="col" { "Provider" } th scope="col" { "Key" }
                        th scope="col" { "Verification" } th scope="col" { "Expires" } th scope="col" { "Last use" }
                    } }
                    tbody {
                        @for c in items {
                            tr {
                                td {
                                    a href={ "/credentials/" (c.id) } { (c.name) }
                                    @if !c.description.is_empty() { br; small { (c.description) } }
                                }
                                td { (c.provider) }
                                td { code { "…" (c.api_key_hint) } }
                                td { (verification_cell(c)) }
                                td class=(expiry_class(c.expire_time.as_ref(), now)) {
                                    @if c.expire_time.is_some() { (when(c.expire_time.as_ref())) } @else { "—" }
                                }
                                td {
                                    (when(c.last_used_time.as_ref()))
                                    @if !c.last_used_by.is_empty() { br; small { "by " (c.last_used_by) } }
                                }
                            }
                        }
                    }
                }
            }
            nav.pages aria-label="pages" {
                @if !first_page { a href=(filter_link("")) { "First page" } }
                @if let Some(n) = next { a href=(filter_link(n)) rel="next" { "Next page" } }
            }
        },
    )
}

/// The provider picker and add form.
pub struct AddForm<'a> {
    /// Each provider and its fields.
    pub providers: &'a [(String, Vec<Field>)],
    /// The provider chosen.
    pub provider: &'a str,
    /// The name typed.
    pub name: &'a str,
    /// The description typed.
    pub description: &'a str,
    /// The expiry date typed (`YYYY-MM-DD`).
    pub expire_date: &'a str,
    /// The plain (non-secret) fields typed, shown again.
    pub plain: HashMap<String, String>,
    /// Whether to check with the provider before storing.
    pub verify: bool,
    /// Errors to show by their fields.
    pub errors: FieldErrors,
}

/// The add-credential page.
pub fn add(viewer: &Viewer<'_>, form: &AddForm<'_>) -> Markup {
    let fields = form
        .providers
        .iter()
        .find(|(n, _)| n == form.provider)
        .map(|(_, f)| f.as_slice())
        .unwrap_or_default();
    let errors = &form.errors;
    layout(
        "Add credential",
        Some(viewer),
        html! {
            h1 { "Add credential" }
            @if form.providers.len() > 1 {
                form.filters method="get" action="/credentials/new" {
                    div.field.inline {
                        label for="f-provider" { "Provider" }
                        select id="f-provider" name="provider" {
                            @for (name, _) in form.providers {
                                option value=(name) selected[name == form.provider] { (name) }
                            }
                        }
                    }
                    button type="submit" { "Choose" }
                }
            }
            @if let Some(e) = errors.get("") { (notice("error", &humane(e))) }
            form method="post" action="/credentials/new" {
                (csrf(viewer))
                input type="hidden" name="provider" value=(form.provider);
                (input(errors, "name", "Name", "text", form.name, true,
                    Some("Lowercase letters, digits, '.', '_' and '-'; 1 to 63 characters.")))
                div.field {
                    label for="f-description" { "Description " span.optional { "(optional)" } }
                    textarea id="f-description" name="description" rows="2"
                        aria-invalid=[errors.contains_key("description").then_some("true")] { (form.description) }
                    (field_error(errors, "description"))
                }
                (input(errors, "expire_date", "Key expires on", "date", form.expire_date, false, None))
                (secret_inputs(form.provider, fields, &form.plain, errors))
                div.field.inline {
                    input id="f-verify" type="checkbox" name="verify" value="1" checked[form.verify];
                    label for="f-verify" { "Verify with " (form.provider) " before saving" }
                }
                button type="submit" { "Save credential" }
            }
        },
    )
}

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

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
