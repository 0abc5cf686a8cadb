//! Declared providers: an API-key provider described in the providers file
//! (TOML) instead of code: its fields, the headers to send as templates over
//! them, and how one request (and an optional second one) verifies a secret.
//!
//! ```toml
//! [[provider]]
//! name = "acme"
//! base_url = "https://api.acme.example"
//!
//! [[provider.field]]
//! name = "token"                       # secret and required unless told otherwise
//!
//! [[provider.header]]
//! name = "Authorization"
//! value = "Bearer {token}"
//!
//! [provider.verify]
//! path = "/v1/me"                      # GET; 200 valid, 401 rejected, 403 forbidden, 429 rate limited
//! ```
//!
//! Declared secrets are sealed by field name, so editing a declaration never
//! shifts a stored value into another field; a field the file no longer
//! declares stays sealed and is reported, not sent.

use std::borrow::Cow;
use std::collections::HashMap;

use futures_util::future::BoxFuture;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, ACCEPT};
use reqwest::Method;
use zeroize::{Zeroize, Zeroizing};

use super::{
    fingerprint, Client, Field, Provider, ProviderRef, ProviderSecret, SecretFormatError, Values,
};
use crate::error::Error;
use crate::record::{Verification, VerificationStatus as Status};

mod file;

pub use file::{parse, read_file, DeclarationError};

mod verify;

/// A piece of a template: text as written, or a field's value.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Field(usize),
}

/// One declared field's validation.
#[derive(Debug)]
struct Rule {
    min: usize,
    max: usize,
    /// Allowed bytes, when the declaration narrows them (always visible ASCII).
    allowed: Option<Box<[bool; 128]>>,
    default: Option<String>,
}

/// A header to send: its name and value template.
#[derive(Debug)]
struct HeaderTemplate {
    name: String,
    parts: Vec<Part>,
    /// Whether a secret field's value appears in it.
    secret: bool,
}

/// A verification request: method, path template (plain fields only), headers sent.
#[derive(Debug)]
struct Request {
    method: Method,
    path: Vec<Part>,
    headers: Vec<usize>,
    /// The path template as declared, for summaries.
    declared_path: String,
}

/// How a secret is verified: one request, the meaning of its answers, and an
/// optional second request after a rejection that tells which field is wrong.
#[derive(Debug)]
struct Check {
    request: Request,
    valid: Vec<u16>,
    rejected: Vec<u16>,
    /// The field a rejection names when no diagnosis tells.
    rejected_field: usize,
    forbidden: Vec<u16>,
    rate_limited: Vec<u16>,
    retry_after_header: String,
    /// The second request, and the field each of its answers (by status) shows wrong.
    diagnose: Option<(Request, Vec<(u16, usize)>)>,
}

/// A provider from the providers file.
#[derive(Debug)]
pub struct Declared {
    name: String,
    base_url: String,
    fields: Vec<Field>,
    rules: Vec<Rule>,
    headers: Vec<HeaderTemplate>,
    check: Check,
    hint_field: usize,
    account_field: usize,
}

/// Wipes the values of a request's field map.
pub fn wipe(fields: HashMap<String, String>) {
    for (_, mut value) in fields {
        value.zeroize();
    }
}

impl Declared {
    /// The provider's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// One line saying what the declaration does (no secret is in a declaration).
    pub fn summary(&self) -> String {
        let fields: Vec<String> = self
            .fields
            .iter()
            .map(|f| {
                let kind = if f.secret { "secret" } else { "plain" };
                let need = if f.required { "" } else { ", optional" };
                format!("{} ({kind}{need})", f.name)
            })
            .collect();
        let headers: Vec<&str> = self.headers.iter().map(|h| h.name.as_str()).collect();
        let check = &self.check.request;
        let mut verify = format!("{} {}", check.method, check.declared_path);
        if let Some((second, _)) = &self.check.diagnose {
            verify.push_str(&format!(
                ", after a rejection {} {}",
                second.method, second.declared_path
            ));
        }
        format!(
            "{} at {}: fields {}; headers {}; verify {verify}",
            self.name,
            self.base_url,
            fields.join(", "),
            headers.join(", ")
        )
    }

    /// A secret from a request's named fields, validated; errors never echo a value.
    pub fn secret_from(
        self: &std::sync::Arc<Self>,
        mut given: HashMap<String, String>,
    ) -> Result<ProviderSecret, Error> {
        let name = &self.name;
        if let Some(unknown) = given
            .keys()
            .find(|k| !self.fields.iter().any(|f| f.name == k.as_str()))
        {
            let shown = crate::escape::capped(unknown, 64).into_owned();
            let known = self
                .fields
                .iter()
                .map(|f| &*f.name)
                .collect::<Vec<_>>()
                .join(", ");
            wipe(given);
            return Err(Error::invalid(format!(
                "{name} has no field \"{shown}\" (fields: {known})"
            )));
        }
        let mut values = Vec::with_capacity(self.fields.len());
        let mut problem = None;
        for (field, rule) in self.fields.iter().zip(&self.rules) {
            let value = given.remove(&*field.name).unwrap_or_default();
            if problem.is_none() {
                problem = check(name, field, rule, &value).err();
            }
            values.push(value);
        }
        let values = Values::new(values);
        match problem {
            Some(e) => Err(e),
            None => Ok(ProviderSecret::new(
                ProviderRef::Declared(std::sync::Arc::clone(self)),
                values,
            )),
        }
    }

    /// The value of field `i` for a header: its own, else its default.
    fn value<'a>(&'a self, values: &'a Values, i: usize) -> &'a str {
        match values.get(i) {
            "" => self.rules[i].default.as_deref().unwrap_or(""),
            v => v,
        }
    }

    /// A template filled in; `None` when it names an empty field without a default.
    fn render(&self, parts: &[Part], values: &Values, escape: bool) -> Option<Zeroizing<String>> {
        let mut out = Zeroizing::new(String::new());
        for part in parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Field(i) => match self.value(values, *i) {
                    "" => return None,
                    v if escape => percent_encode(v, &mut out),
                    v => out.push_str(v),
                },
            }
        }
        Some(out)
    }
}

/// Checks one field's value against its rule; the message names the field, never the value.
fn check(provider: &str, field: &Field, rule: &Rule, value: &str) -> Result<(), Error> {
    let f = &field.name;
    if value.is_empty() {
        return if field.required {
            Err(Error::invalid(format!("{provider}.{f} is required")))
        } else {
            Ok(())
        };
    }
    if value.len() < rule.min || value.len() > rule.max {
        return Err(Error::invalid(format!(
            "{provider}.{f} must be {} to {} characters long",
            rule.min, rule.max
        )));
    }
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::invalid(format!(
            "{provider}.{f} may hold only visible ASCII characters (no spaces or control characters)"
        )));
    }
    if let Some(set) = &rule.allowed {
        if !value.bytes().all(|b| set[usize::from(b)]) {
            return Err(Error::invalid(format!(
                "{provider}.{f} holds a character its declaration does not allow"
            )));
        }
    }
    Ok(())
}

/// Appends `value` with every byte outside RFC 3986's unreserved set percent-encoded.
fn percent_encode(value: &str, out: &mut String) {
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

impl Provider for Declared {
    fn name(&self) -> &str {
        &self.name
    }

    fn fields(&self) -> &[Field] {
        &self.fields
    }

    fn default_base_url(&self) -> &str {
        &self.base_url
    }

    /// Each declared header in order; one naming an empty field without a default is left out.
    fn headers(&self, values: &Values) -> Vec<(Cow<'static, str>, String)> {
        self.headers
            .iter()
            .filter_map(|h| {
                self.render(&h.parts, values, false)
                    .map(|v| (Cow::Owned(h.name.clone()), v.to_string()))
            })
            .collect()
    }

    fn verify<'a>(&'a self, client: &'a Client, values: &'a Values) -> BoxFuture<'a, Verification> {
        Box::pin(Declared::verify(self, client, values))
    }

    fn hint(&self, values: &Values) -> String {
        let value = values.get(self.hint_field);
        if self.fields.get(self.hint_field).is_some_and(|f| f.secret) {
            super::secret_hint(value)
        } else {
            // A plain field (an app id) is shown whole anywhere; its last 4 give nothing away.
            let start = value.char_indices().rev().nth(3).map_or(0, |(i, _)| i);
            value[start..].to_owned()
        }
    }

    fn account_key(&self, values: &Values) -> [u8; 32] {
        fingerprint(&self.name, values.get(self.account_field))
    }

    /// Sealed by name: each set field as an entry (tag 1) of name (1) and value (2).
    fn encode(&self, values: &Values) -> Zeroizing<Vec<u8>> {
        use prost::encoding::{encode_key, encode_varint, string, WireType};
        let mut buf = Zeroizing::new(Vec::new());
        for (i, field) in self.fields.iter().enumerate() {
            let value = values.get(i);
            if value.is_empty() {
                continue;
            }
            let mut entry = Zeroizing::new(Vec::new());
            string::encode(1, &field.name.to_string(), &mut *entry);
            string::encode(2, &value.to_owned(), &mut *entry);
            encode_key(1, WireType::LengthDelimited, &mut *buf);
            encode_varint(entry.len() as u64, &mut *buf);
            buf.extend_from_slice(&entry);
        }
        buf
    }

    /// Reads entries back by name; a stored field no longer declared is noted, not an error.
    fn decode(&self, mut bytes: &[u8]) -> Result<Values, SecretFormatError> {
        use prost::encoding::WireType;
        use prost::encoding::{decode_key, decode_varint, skip_field, string, DecodeContext};
        let mut values: Vec<String> = vec![String::new(); self.fields.len()];
        let mut undeclared = Vec::new();
        let malformed = |values: Vec<String>| {
            drop(Values::new(values));
            SecretFormatError::Malformed
        };
        while !bytes.is_empty() {
            let Ok((tag, wire)) = decode_key(&mut bytes) else {
                return Err(malformed(values));
            };
            if tag != 1 || wire != WireType::LengthDelimited {
                if skip_field(wire, tag, &mut bytes, DecodeContext::default()).is_err() {
                    return Err(malformed(values));
                }
                continue;
            }
            let len = decode_varint(&mut bytes)
                .ok()
                .and_then(|l| usize::try_from(l).ok())
                .filter(|&l| l <= bytes.len());
            let Some(len) = len else {
                return Err(malformed(values));
            };
            let (mut entry, rest) = bytes.split_at(len);
            bytes = rest;
            let mut name = String::new();
            let mut value = Zeroizing::new(String::new());
            while !entry.is_empty() {
                let read = decode_key(&mut entry).and_then(|(tag, wire)| match tag {
                    1 => string::merge(wire, &mut name, &mut entry, DecodeContext::default()),
                    2 => string::merge(wire, &mut value, &mut entry, DecodeContext::default()),
                    _ => skip_field(wire, tag, &mut entry, DecodeContext::default()),
                });
                if read.is_err() {
                    return Err(malformed(values));
                }
            }
            match self.fields.iter().position(|f| f.name == name) {
                Some(i) => values[i] = std::mem::take(&mut *value),
                None => undeclared.push(name),
            }
        }
        let values = Values::new(values).with_undeclared(undeclared);
        match self
            .fields
            .iter()
            .enumerate()
            .find(|(i, f)| f.required && values.get(*i).is_empty())
        {
            Some((_, f)) => Err(SecretFormatError::Missing(f.name.to_string())),
            None => Ok(values),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::file::char_class;
    use super::*;

    const ACME: &str = r#"
[[provider]]
name = "acme"
base_url = "http://127.0.0.1:9/api"

[[provider.field]]
name = "token"
allowed = "A-Za-z0-9_-"

[[provider.field]]
name = "region"
secret = false
required = false
default = "eu"

[[provider.header]]
name = "Authorization"
value = "Bearer {token}"

[[provider.header]]
name = "X-Region"
value = "{region}"

[provider.verify]
path = "/v1/{region}/me"
"#;

    fn acme() -> std::sync::Arc<Declared> {
        std::sync::Arc::new(parse(ACME).unwrap().remove(0))
    }

    fn given(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_declaration_renders_headers_and_validates_fields() {
        let p = acme();
        let s = p.secret_from(given(&[("token", "tok_123456")])).unwrap();
        let headers: Vec<_> = s
            .headers()
            .into_iter()
            .map(|(n, v)| (n.into_owned(), v))
            .collect();
        assert_eq!(
            headers,
            [
                ("Authorization".to_owned(), "Bearer tok_123456".to_owned()),
                ("X-Region".to_owned(), "eu".to_owned())
            ]
        );
        // A 10-character secret is too short to hint at; a longer one shows its last 4.
        assert_eq!(s.hint(), "");
        let long = p
            .secret_from(given(&[("token", "tok_1234567890")]))
            .unwrap();
        assert_eq!(long.hint(), "7890");
        for (fields, want) in [
            (vec![], "acme.token is required"),
            (
                vec![("token", "a b")],
                "acme.token may hold only visible ASCII",
            ),
            (vec![("token", "a+b")], "acme.token holds a character"),
            (
                vec![("token", "ok"), ("tokn", "x")],
                "acme has no field \"tokn\"",
            ),
        ] {
            let err = p.secret_from(given(&fields)).unwrap_err().to_string();
            assert!(err.starts_with(want), "{err}");
            assert!(!err.contains("a b") && !err.contains("a+b"), "{err}");
        }
    }

    #[test]
    fn sealed_by_name_and_a_dropped_field_is_reported() {
        let p = acme();
        let s = p
            .secret_from(given(&[("token", "tok_1"), ("region", "us")]))
            .unwrap();
        let bytes = s.to_plaintext();
        // The same provider without its region field still reads the token.
        let without = ACME
            .replace("value = \"{region}\"", "value = \"fixed\"")
            .replace("/v1/{region}/me", "/v1/me")
            .replace(
                "[[provider.field]]\nname = \"region\"\nsecret = false\nrequired = false\ndefault = \"eu\"\n",
                "",
            );
        let narrower = parse(&without).unwrap().remove(0);
        let back = narrower.decode(&bytes).unwrap();
        assert_eq!(back.get(0), "tok_1");
        assert_eq!(back.undeclared(), ["region"]);
        assert!(matches!(
            narrower.decode(&[0x0a, 0x09, 0x0a]),
            Err(SecretFormatError::Malformed)
        ));
    }

    #[test]
    fn bad_declarations_name_their_line() {
        for (edit, line, want) in [
            (("{token}\"", "{tokn}\""), 18, "unknown field \"tokn\""),
            (("/v1/{region}/me", "/v1/me?t={token}"), 25, "in a url"),
            (
                ("default = \"eu\"\n", ""),
                24,
                "optional field \"region\", which has no default",
            ),
            (
                ("name = \"X-Region\"", "name = \"authorization\""),
                21,
                "declared twice",
            ),
            (("name = \"acme\"", "name = \"fleetio\""), 3, "built in"),
            (
                ("secret = false\n", "secret = false\nsecrets = 1\n"),
                13,
                "unknown field `secrets`",
            ),
            (
                ("allowed = \"A-Za-z0-9_-\"", "allowed = \"z-a\""),
                8,
                "allowed z-a",
            ),
        ] {
            let text = ACME.replace(edit.0, edit.1);
            let (at, why) = parse(&text).map(|_| ()).unwrap_err();
            assert!(why.contains(want), "{why}");
            assert_eq!(at, line, "{why}");
        }
        let (line, why) = parse(&format!("{ACME}{ACME}")).map(|_| ()).unwrap_err();
        assert!(
            why.contains("declared twice") && line == 28,
            "{line}: {why}"
        );
    }

    proptest::proptest! {
        #[test]
        fn any_field_map_is_refused_or_taken_without_echo(
            fields in proptest::collection::hash_map("[a-z_]{1,8}", "\\PC{0,600}", 0..4),
        ) {
            let p = acme();
            let values: Vec<String> = fields.values().filter(|v| v.len() >= 6).cloned().collect();
            if let Err(e) = p.secret_from(fields) {
                proptest::prop_assert!(matches!(e, Error::InvalidArgument(_)));
                let message = e.to_string();
                for v in values {
                    proptest::prop_assert!(!message.contains(&v), "{message}");
                }
            }
        }
    }

    #[test]
    fn char_classes_read_ranges_and_a_trailing_dash() {
        let set = char_class("a-c_-").unwrap();
        let allowed: String = (0u8..128)
            .filter(|&b| set[usize::from(b)])
            .map(char::from)
            .collect();
        assert_eq!(allowed, "-_abc");
    }
}
