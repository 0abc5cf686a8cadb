//! The providers file: TOML declarations read, checked and compiled into
//! [`Declared`] providers; every problem names its line.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use reqwest::header::HeaderName;
use reqwest::Method;
use serde::Deserialize;
use toml::Spanned;

use super::{Check, Declared, HeaderTemplate, Part, Request, Rule};
use crate::provider::{Field, MAX_SECRET_LEN};

/// The largest providers file read.
const MAX_FILE_SIZE: u64 = 1 << 20;
/// The most providers one file may declare.
const MAX_PROVIDERS: usize = 256;
/// The most fields or headers one provider may declare.
const MAX_PARTS: usize = 16;
/// Headers a declaration may not set: HTTP's own framing and routing.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
];

/// Why a providers file was refused.
#[derive(Debug, thiserror::Error)]
pub enum DeclarationError {
    /// The file could not be read.
    #[error("cannot read providers file {}: {source}", path.display())]
    Read {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is larger than the most a providers file may be.
    #[error("providers file {} is larger than {MAX_FILE_SIZE} bytes", path.display())]
    TooLarge {
        /// The path.
        path: PathBuf,
    },
    /// A problem at a line of the file.
    #[error("providers file {} line {line}: {why}", path.display())]
    At {
        /// The path.
        path: PathBuf,
        /// The line, from 1.
        line: usize,
        /// What is wrong.
        why: String,
    },
}

/// Reads and checks the providers file at `path`.
pub fn read_file(path: &Path) -> Result<Vec<Declared>, DeclarationError> {
    let read = |source| DeclarationError::Read {
        path: path.to_owned(),
        source,
    };
    let size = std::fs::metadata(path).map_err(read)?.len();
    if size > MAX_FILE_SIZE {
        return Err(DeclarationError::TooLarge {
            path: path.to_owned(),
        });
    }
    let text = std::fs::read_to_string(path).map_err(read)?;
    parse(&text).map_err(|(line, why)| DeclarationError::At {
        path: path.to_owned(),
        line,
        why,
    })
}

/// A problem at a line of the file.
type Problem = (usize, String);

/// Makes a [`Problem`] of a span of the file and a message.
type At<'a> = &'a dyn Fn(std::ops::Range<usize>, String) -> Problem;

/// Checks the text of a providers file; a problem names its line.
pub fn parse(text: &str) -> Result<Vec<Declared>, Problem> {
    let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    let file: FileDecl = toml::from_str(text).map_err(|e| {
        let line = e.span().map_or(1, |s| line_of(s.start));
        (line, e.message().to_owned())
    })?;
    if file.provider.len() > MAX_PROVIDERS {
        return Err((
            1,
            format!("at most {MAX_PROVIDERS} providers may be declared"),
        ));
    }
    let mut declared: Vec<Declared> = Vec::with_capacity(file.provider.len());
    for decl in file.provider {
        let at = |span: std::ops::Range<usize>, why: String| (line_of(span.start), why);
        let name = decl.get_ref().name.get_ref();
        let taken = if crate::provider::find(name).is_some() {
            Some("is built in; declare it under another name")
        } else if declared.iter().any(|d| d.name == *name) {
            Some("is declared twice")
        } else {
            None
        };
        if let Some(why) = taken {
            return Err(at(
                decl.get_ref().name.span(),
                format!("provider {name:?} {why}"),
            ));
        }
        let span = decl.span();
        declared.push(compile(decl.into_inner(), span, &at)?);
    }
    Ok(declared)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDecl {
    #[serde(default)]
    provider: Vec<Spanned<ProviderDecl>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProviderDecl {
    name: Spanned<String>,
    base_url: Spanned<String>,
    #[serde(default)]
    field: Vec<Spanned<FieldDecl>>,
    #[serde(default)]
    header: Vec<Spanned<HeaderDecl>>,
    verify: Spanned<VerifyDecl>,
    /// The field whose last 4 characters are the listing's hint (default: the first secret field).
    hint_field: Option<Spanned<String>>,
    /// The field that names the provider account, for rate limits (default: the first secret field).
    account_field: Option<Spanned<String>>,
}

fn yes() -> bool {
    true
}
fn one() -> usize {
    1
}
fn max_len() -> usize {
    MAX_SECRET_LEN
}
fn get() -> Spanned<String> {
    Spanned::new(0..0, "GET".to_owned())
}
fn ok_codes() -> Vec<u16> {
    vec![200]
}
fn unauthorized() -> Vec<u16> {
    vec![401]
}
fn forbidden() -> Vec<u16> {
    vec![403]
}
fn too_many() -> Vec<u16> {
    vec![429]
}
fn retry_after() -> String {
    "Retry-After".to_owned()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FieldDecl {
    name: Spanned<String>,
    #[serde(default = "yes")]
    secret: bool,
    #[serde(default = "yes")]
    required: bool,
    #[serde(default = "one")]
    min_length: usize,
    #[serde(default = "max_len")]
    max_length: usize,
    /// The characters a value may hold, as ranges and single characters (`A-Za-z0-9_-`).
    allowed: Option<Spanned<String>>,
    /// Used in headers when an optional plain field is left empty.
    default: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderDecl {
    name: Spanned<String>,
    value: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyDecl {
    #[serde(default = "get")]
    method: Spanned<String>,
    path: Spanned<String>,
    /// The provider's headers this request sends (default: all).
    headers: Option<Vec<Spanned<String>>>,
    #[serde(default = "ok_codes")]
    valid: Vec<u16>,
    #[serde(default = "unauthorized")]
    rejected: Vec<u16>,
    /// The field a rejection names when no diagnosis tells (default: the only, or first, secret field).
    rejected_field: Option<Spanned<String>>,
    #[serde(default = "forbidden")]
    forbidden: Vec<u16>,
    #[serde(default = "too_many")]
    rate_limited: Vec<u16>,
    #[serde(default = "retry_after")]
    retry_after_header: String,
    diagnose: Option<Spanned<DiagnoseDecl>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DiagnoseDecl {
    #[serde(default = "get")]
    method: Spanned<String>,
    path: Spanned<String>,
    headers: Option<Vec<Spanned<String>>>,
    /// The field each answer of this request shows to be the rejected one, by HTTP status.
    rejected_field: BTreeMap<String, Spanned<String>>,
}

/// Checks one `[[provider]]` declaration and makes it a provider.
fn compile(
    decl: ProviderDecl,
    span: std::ops::Range<usize>,
    at: At<'_>,
) -> Result<Declared, Problem> {
    let name = decl.name.get_ref().clone();
    let valid_name = (1..=32).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !valid_name {
        return Err(at(
            decl.name.span(),
            format!("provider name {name:?} must be 1 to 32 lowercase letters, digits, '-' or '_', starting with a letter"),
        ));
    }
    let url = reqwest::Url::parse(decl.base_url.get_ref());
    if !url
        .as_ref()
        .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.query().is_none())
    {
        return Err(at(
            decl.base_url.span(),
            format!("{name}: base_url must be an http(s) url without a query"),
        ));
    }
    if decl.field.is_empty() || decl.field.len() > MAX_PARTS {
        return Err(at(
            span,
            format!("{name}: declare 1 to {MAX_PARTS} fields ([[provider.field]])"),
        ));
    }
    let (fields, rules) = compile_fields(&name, &decl.field, at)?;
    // Where each field is declared (its `name` line), for problems that concern it.
    let field_spans: Vec<_> = decl.field.iter().map(|f| f.get_ref().name.span()).collect();
    let headers = compile_headers(&name, &decl.header, &fields, &field_spans, span, at)?;
    let check = compile_check(&name, &fields, &rules, &headers, decl.verify, at)?;
    let first_secret = fields.iter().position(|f| f.secret);
    let hint_field = match &decl.hint_field {
        Some(f) => field_index(&name, &fields, f, "hint_field", at)?,
        None => first_secret.unwrap_or(0),
    };
    let account_field = match &decl.account_field {
        Some(f) => field_index(&name, &fields, f, "account_field", at)?,
        None => first_secret.unwrap_or(0),
    };
    Ok(Declared {
        name,
        base_url: decl.base_url.into_inner(),
        fields,
        rules,
        headers,
        check,
        hint_field,
        account_field,
    })
}

/// The fields and their validation rules.
fn compile_fields(
    name: &str,
    decls: &[Spanned<FieldDecl>],
    at: At<'_>,
) -> Result<(Vec<Field>, Vec<Rule>), Problem> {
    let mut fields: Vec<Field> = Vec::new();
    let mut rules = Vec::new();
    for f in decls {
        let f_span = f.span();
        let f = f.get_ref();
        let field = f.name.get_ref();
        let valid_field = (1..=32).contains(&field.len())
            && field.starts_with(|c: char| c.is_ascii_lowercase())
            && field
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !valid_field {
            return Err(at(
                f.name.span(),
                format!("{name}: field name {field:?} must be 1 to 32 lowercase letters, digits or '_', starting with a letter"),
            ));
        }
        if fields.iter().any(|x| x.name == field.as_str()) {
            return Err(at(
                f.name.span(),
                format!("{name}: field {field:?} is declared twice"),
            ));
        }
        if f.min_length < 1 || f.min_length > f.max_length || f.max_length > MAX_SECRET_LEN {
            return Err(at(
                f_span,
                format!("{name}.{field}: lengths must satisfy 1 <= min_length <= max_length <= {MAX_SECRET_LEN}"),
            ));
        }
        let allowed = match &f.allowed {
            None => None,
            Some(a) => Some(
                char_class(a.get_ref())
                    .map_err(|why| at(a.span(), format!("{name}.{field}: allowed {why}")))?,
            ),
        };
        let default = match &f.default {
            None => None,
            Some(d) if f.secret || f.required => {
                return Err(at(
                    d.span(),
                    format!("{name}.{field}: only an optional plain field (secret = false, required = false) may have a default"),
                ))
            }
            Some(d) => {
                let value = d.get_ref();
                let fits = (f.min_length..=f.max_length).contains(&value.len())
                    && value.bytes().all(|b| {
                        b.is_ascii_graphic()
                            && allowed.as_ref().is_none_or(|set| set[usize::from(b)])
                    });
                if !fits {
                    return Err(at(
                        d.span(),
                        format!("{name}.{field}: the default does not satisfy the field's own rules"),
                    ));
                }
                Some(value.clone())
            }
        };
        fields.push(Field {
            name: Cow::Owned(field.clone()),
            secret: f.secret,
            required: f.required,
        });
        rules.push(Rule {
            min: f.min_length,
            max: f.max_length,
            allowed,
            default,
        });
    }
    Ok((fields, rules))
}

/// The header templates; every secret field must be in one.
fn compile_headers(
    name: &str,
    decls: &[Spanned<HeaderDecl>],
    fields: &[Field],
    field_spans: &[std::ops::Range<usize>],
    span: std::ops::Range<usize>,
    at: At<'_>,
) -> Result<Vec<HeaderTemplate>, Problem> {
    if decls.is_empty() || decls.len() > MAX_PARTS {
        return Err(at(
            span.clone(),
            format!("{name}: declare 1 to {MAX_PARTS} headers ([[provider.header]])"),
        ));
    }
    let mut headers: Vec<HeaderTemplate> = Vec::new();
    for h in decls {
        let h = h.get_ref();
        let header = h.name.get_ref();
        if HeaderName::from_bytes(header.as_bytes()).is_err() {
            return Err(at(
                h.name.span(),
                format!("{name}: {header:?} is not a valid header name"),
            ));
        }
        if RESERVED_HEADERS.contains(&header.to_ascii_lowercase().as_str()) {
            return Err(at(
                h.name.span(),
                format!("{name}: header {header:?} is http's own and may not be declared"),
            ));
        }
        if headers.iter().any(|x| x.name.eq_ignore_ascii_case(header)) {
            return Err(at(
                h.name.span(),
                format!("{name}: header {header:?} is declared twice"),
            ));
        }
        let what = format!("header {header}");
        let parts = template(h.value.get_ref(), fields)
            .map_err(|why| at(h.value.span(), format!("{name}: {what}: {why}")))?;
        for part in &parts {
            if let Part::Text(t) = part {
                if !t.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
                    return Err(at(
                        h.value.span(),
                        format!(
                            "{name}: {what}: a header value may hold only visible ASCII and spaces"
                        ),
                    ));
                }
            }
        }
        if parts.is_empty() {
            return Err(at(
                h.value.span(),
                format!("{name}: {what}: the value is empty"),
            ));
        }
        let secret = parts
            .iter()
            .any(|p| matches!(p, Part::Field(i) if fields[*i].secret));
        headers.push(HeaderTemplate {
            name: header.clone(),
            parts,
            secret,
        });
    }
    let unsent = (0..fields.len())
        .find(|&i| fields[i].secret && !headers.iter().any(|h| h.parts.contains(&Part::Field(i))));
    if let Some(i) = unsent {
        // The field's own line, not the provider's first.
        return Err(at(
            field_spans.get(i).cloned().unwrap_or(span),
            format!(
                "{name}: secret field {:?} is in no header, so it would never be sent",
                fields[i].name
            ),
        ));
    }

    Ok(headers)
}

/// A verification request: method, path template (plain fields only), the headers it sends.
#[allow(clippy::too_many_arguments)]
fn compile_request(
    name: &str,
    fields: &[Field],
    rules: &[Rule],
    headers: &[HeaderTemplate],
    method: &Spanned<String>,
    path: &Spanned<String>,
    sent: &Option<Vec<Spanned<String>>>,
    what: &str,
    at: At<'_>,
) -> Result<Request, Problem> {
    let method = match method.get_ref().to_ascii_uppercase().as_str() {
        "GET" => Method::GET,
        "HEAD" => Method::HEAD,
        _ => {
            return Err(at(
                method.span(),
                format!(
                    "{name}: {what}.method must be GET or HEAD (a check must not change anything)"
                ),
            ))
        }
    };
    if !path.get_ref().starts_with('/') {
        return Err(at(
            path.span(),
            format!("{name}: {what}.path must start with '/'"),
        ));
    }
    let parts = template(path.get_ref(), fields)
        .map_err(|why| at(path.span(), format!("{name}: {what}.path: {why}")))?;
    for part in &parts {
        match part {
            Part::Field(i) if !fields[*i].required && rules[*i].default.is_none() => {
                return Err(at(
                    path.span(),
                    format!(
                        "{name}: {what}.path names optional field {:?}, which has no default; give it one or leave it out of the path",
                        fields[*i].name
                    ),
                ))
            }
            Part::Field(i) if fields[*i].secret => {
                return Err(at(
                    path.span(),
                    format!(
                        "{name}: {what}.path would put secret field {:?} in a url (urls are logged by proxies); send it in a header",
                        fields[*i].name
                    ),
                ))
            }
            Part::Text(t) if !t.bytes().all(|b| b.is_ascii_graphic() && b != b'#') => {
                return Err(at(
                    path.span(),
                    format!("{name}: {what}.path may hold only visible ASCII without '#'"),
                ))
            }
            _ => {}
        }
    }
    let headers = match sent {
        None => (0..headers.len()).collect(),
        Some(list) => list
            .iter()
            .map(|s| {
                headers
                    .iter()
                    .position(|h| h.name.eq_ignore_ascii_case(s.get_ref()))
                    .ok_or_else(|| {
                        at(
                            s.span(),
                            format!(
                                "{name}: {what}.headers names undeclared header {:?}",
                                s.get_ref()
                            ),
                        )
                    })
            })
            .collect::<Result<_, _>>()?,
    };
    Ok(Request {
        method,
        path: parts,
        headers,
        declared_path: path.get_ref().clone(),
    })
}

/// The verification: its request, what each answer means, and the optional diagnosis.
fn compile_check(
    name: &str,
    fields: &[Field],
    rules: &[Rule],
    headers: &[HeaderTemplate],
    verify: Spanned<VerifyDecl>,
    at: At<'_>,
) -> Result<Check, Problem> {
    let v_span = verify.span();
    let v = verify.into_inner();
    let request = compile_request(
        name, fields, rules, headers, &v.method, &v.path, &v.headers, "verify", at,
    )?;
    let mut seen: Vec<u16> = Vec::new();
    for code in v
        .valid
        .iter()
        .chain(&v.rejected)
        .chain(&v.forbidden)
        .chain(&v.rate_limited)
    {
        if !(100..=599).contains(code) {
            return Err(at(
                v_span.clone(),
                format!("{name}: verify: {code} is not an http status"),
            ));
        }
        if seen.contains(code) {
            return Err(at(
                v_span.clone(),
                format!("{name}: verify: status {code} is given two meanings"),
            ));
        }
        seen.push(code.to_owned());
    }
    if v.valid.is_empty() {
        return Err(at(
            v_span,
            format!("{name}: verify.valid must name at least one status"),
        ));
    }
    if HeaderName::from_bytes(v.retry_after_header.as_bytes()).is_err() {
        return Err(at(
            v_span,
            format!("{name}: verify.retry_after_header is not a header name"),
        ));
    }
    let secret_count = fields.iter().filter(|f| f.secret).count();
    let rejected_field = match &v.rejected_field {
        Some(f) => field_index(name, fields, f, "verify.rejected_field", at)?,
        None if secret_count <= 1 || v.diagnose.is_some() => fields.iter().position(|f| f.secret).unwrap_or(0),
        None => {
            return Err(at(
                v_span,
                format!("{name}: verify.rejected_field is required: {secret_count} secret fields could be the rejected one (or add verify.diagnose to tell)"),
            ))
        }
    };
    let diagnose = match &v.diagnose {
        None => None,
        Some(d) => {
            let d_span = d.span();
            let d = d.get_ref();
            let req = compile_request(
                name,
                fields,
                rules,
                headers,
                &d.method,
                &d.path,
                &d.headers,
                "verify.diagnose",
                at,
            )?;
            let mut answers = Vec::new();
            for (code, field) in &d.rejected_field {
                let status = code
                    .parse::<u16>()
                    .ok()
                    .filter(|c| (100..=599).contains(c))
                    .ok_or_else(|| {
                        at(
                            field.span(),
                            format!("{name}: verify.diagnose.rejected_field: {code:?} is not an http status"),
                        )
                    })?;
                answers.push((
                    status,
                    field_index(name, fields, field, "verify.diagnose.rejected_field", at)?,
                ));
            }
            if answers.is_empty() {
                return Err(at(
                    d_span,
                    format!("{name}: verify.diagnose.rejected_field must map at least one status to a field"),
                ));
            }
            Some((req, answers))
        }
    };
    Ok(Check {
        request,
        valid: v.valid,
        rejected: v.rejected,
        rejected_field,
        forbidden: v.forbidden,
        rate_limited: v.rate_limited,
        retry_after_header: v.retry_after_header,
        diagnose,
    })
}

/// The index of the field `s` names; `what` says where it was named.
fn field_index(
    name: &str,
    fields: &[Field],
    s: &Spanned<String>,
    what: &str,
    at: At<'_>,
) -> Result<usize, Problem> {
    fields
        .iter()
        .position(|f| f.name == s.get_ref().as_str())
        .ok_or_else(|| {
            let known = fields
                .iter()
                .map(|f| &*f.name)
                .collect::<Vec<_>>()
                .join(", ");
            at(
                s.span(),
                format!(
                    "{name}: {what} names unknown field {:?} (fields: {known})",
                    s.get_ref()
                ),
            )
        })
}

/// Parses `{field}` references in a template; `{{` and `}}` stand for braces.
fn template(text: &str, fields: &[Field]) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if let Some(after) = rest.strip_prefix("{{") {
            literal.push('{');
            rest = after;
        } else if let Some(after) = rest.strip_prefix("}}") {
            literal.push('}');
            rest = after;
        } else if c == '{' {
            let end = rest
                .find('}')
                .ok_or_else(|| "a '{' is not closed (write {{ for a brace)".to_owned())?;
            let field = &rest[1..end];
            let index = fields.iter().position(|f| f.name == field).ok_or_else(|| {
                format!(
                    "the template names unknown field {field:?} (fields: {})",
                    fields
                        .iter()
                        .map(|f| &*f.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?;
            if !literal.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut literal)));
            }
            parts.push(Part::Field(index));
            rest = &rest[end + 1..];
        } else if c == '}' {
            return Err("a '}' has no '{' (write }} for a brace)".into());
        } else {
            literal.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    if !literal.is_empty() {
        parts.push(Part::Text(literal));
    }
    Ok(parts)
}

/// A character class such as `A-Za-z0-9_-`: ranges and single visible ASCII characters.
pub(super) fn char_class(spec: &str) -> Result<Box<[bool; 128]>, String> {
    let mut set = Box::new([false; 128]);
    let chars: Vec<char> = spec.chars().collect();
    if chars.is_empty() {
        return Err("is empty".into());
    }
    let mut i = 0;
    while i < chars.len() {
        let lo = chars[i];
        let (from, to) = if i + 2 < chars.len() && chars[i + 1] == '-' {
            i += 3;
            (lo, chars[i - 1])
        } else {
            i += 1;
            (lo, lo)
        };
        if !from.is_ascii_graphic() || !to.is_ascii_graphic() || from > to {
            return Err(format!(
                "{from}-{to} is not a range of visible ASCII characters"
            ));
        }
        for c in from..=to {
            set[c as usize] = true;
        }
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_field_in_no_header_is_named_at_its_own_line() {
        let text = r#"
[[provider]]
name = "acme"
base_url = "https://api.acme.example"

[[provider.field]]
name = "token"

[[provider.field]]
name = "signing_secret"

[[provider.header]]
name = "Authorization"
value = "Bearer {token}"

[provider.verify]
path = "/v1/me"
"#;
        let (line, why) = parse(text).err().unwrap();
        assert!(why.contains("\"signing_secret\" is in no header"), "{why}");
        assert_eq!(line, 10, "the line of `name = \"signing_secret\"`");
    }
}
