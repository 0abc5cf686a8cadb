//! The add-a-credential form.

use super::*;

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
