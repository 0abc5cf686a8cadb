//! A declaration's parts compiled and checked: fields and their character rules,
//! header templates, the verification request and what its answers mean.

use super::*;

/// The fields and their validation rules.
pub(super) fn compile_fields(
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
pub(super) fn compile_headers(
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
pub(super) fn compile_request(
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
pub(super) fn compile_check(
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
pub(super) fn field_index(
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
pub(super) fn template(text: &str, fields: &[Field]) -> Result<Vec<Part>, String> {
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
pub(in crate::provider::declared) fn char_class(spec: &str) -> Result<Box<[bool; 128]>, String> {
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
