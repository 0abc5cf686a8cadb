//! The console's pages, as HTML (maud escapes every value): the layout, sign-in,
//! the credentials list, the add form, a credential with its forms and audit
//! events. Secret inputs are write-only: never filled in, `autocomplete=off`.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use maud::{html, Markup, DOCTYPE};

use crate::api;
use crate::provider::Field;
use crate::record::VerificationStatus;

mod add;
mod credential;
mod list;

pub use add::*;
pub use credential::*;
pub use list::*;

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

fn verification_cell(c: &api::Credential) -> Markup {
    let (text, class) = status_text(c.last_verification.as_ref());
    html! {
        span.status.(class) { (text) }
        @if let Some(v) = &c.last_verification {
            br; small { (when(v.check_time.as_ref())) }
        }
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
