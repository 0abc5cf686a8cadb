//! The providers file: TOML declarations read, checked and compiled into
//! [`Declared`] providers; every problem names its line.
//!
//! Here reading and the whole declaration; `schema` (the TOML's shape) and
//! `compile` (fields, headers, the verification request).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use reqwest::header::HeaderName;
use reqwest::Method;
use serde::Deserialize;
use toml::Spanned;

use super::{Check, Declared, HeaderTemplate, Part, Request, Rule};
use crate::provider::{Field, MAX_SECRET_LEN};

mod compile;
mod schema;

#[cfg(test)]
pub(super) use compile::char_class;
use compile::*;
use schema::*;

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
