//! The credentials list: filters, the table, expiry warnings.

use super::*;

/// `soon` within 30 days of expiry, `expired` after it.
pub(super) fn expiry_class(t: Option<&prost_types::Timestamp>, now: i64) -> &'static str {
    match t {
        Some(t) if t.seconds <= now => "expired",
        Some(t) if t.seconds <= now + 30 * 86_400 => "soon",
        _ => "",
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
