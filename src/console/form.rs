//! Forms: a body read to a size limit and decoded, its secret values wiped on drop,
//! a date field as an expiry, and an RPC's error put next to the field it concerns.

use super::*;

/// A form's fields by name; secret values are wiped when it is dropped.
#[derive(Default)]
pub(super) struct Form(pub(super) HashMap<String, String>);

impl std::ops::Deref for Form {
    type Target = HashMap<String, String>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Form {
    /// Takes out the values of a provider's fields (for its secret message).
    pub(super) fn take_fields(
        &mut self,
        fields: &[crate::provider::Field],
    ) -> HashMap<String, String> {
        fields
            .iter()
            .filter_map(|f| {
                self.0
                    .remove(f.name.as_ref())
                    .map(|v| (f.name.to_string(), v))
            })
            .filter(|(_, v)| !v.is_empty())
            .collect()
    }

    /// Wipes the secret fields now.
    pub(super) fn wipe(&mut self, fields: &[crate::provider::Field]) {
        for f in fields.iter().filter(|f| f.secret) {
            if let Some(mut v) = self.0.remove(f.name.as_ref()) {
                zeroize::Zeroize::zeroize(&mut v);
            }
        }
    }
}

impl Drop for Form {
    fn drop(&mut self) {
        for (_, v) in self.0.iter_mut() {
            zeroize::Zeroize::zeroize(v);
        }
    }
}

/// The plain (non-secret) values of a provider's fields, to show a form again.
pub(super) fn plain_values(
    providers: &[(String, Vec<crate::provider::Field>)],
    provider: &str,
    form: &Form,
) -> HashMap<String, String> {
    providers
        .iter()
        .find(|(n, _)| n == provider)
        .map(|(_, fields)| {
            fields
                .iter()
                .filter(|f| !f.secret)
                .filter_map(|f| {
                    form.get(f.name.as_ref())
                        .map(|v| (f.name.to_string(), v.clone()))
                })
                .collect()
        })
        .unwrap_or_default()
}

pub(super) fn parse(bytes: &[u8]) -> HashMap<String, String> {
    form_urlencoded::parse(bytes).into_owned().collect()
}

/// Reads a urlencoded form body of at most [`MAX_FORM_BYTES`], within ten seconds.
pub(super) async fn read_form(body: Incoming) -> Result<Form, Reply> {
    let limited = Limited::new(body, MAX_FORM_BYTES);
    let collected = tokio::time::timeout(Duration::from_secs(10), limited.collect()).await;
    let bytes = match collected {
        Ok(Ok(c)) => Zeroizing::new(c.to_bytes().to_vec()),
        Ok(Err(_)) => {
            return Err(plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the form is too large (at most 64 KiB)",
            ))
        }
        Err(_) => {
            return Err(plain(
                StatusCode::REQUEST_TIMEOUT,
                "the form was not sent in time",
            ))
        }
    };
    Ok(Form(parse(&bytes)))
}

/// A date input's value as the end of that day (UTC); empty is none.
pub(super) fn expiry(date: &str) -> Result<Option<prost_types::Timestamp>, &'static str> {
    let date = date.trim();
    if date.is_empty() {
        return Ok(None);
    }
    humantime::parse_rfc3339(&format!("{date}T23:59:59Z"))
        .map(|t| Some(crate::record::timestamp(t)))
        .map_err(|_| "a date such as 2027-01-31")
}

/// Puts an RPC's error next to the form field it concerns: a secret field it
/// names (a provider's rejection names the rejected value), else one of
/// `others`, else the whole form.
pub(super) fn field_errors(
    status: &tonic::Status,
    secret_fields: &[&str],
    others: &[&str],
) -> FieldErrors {
    let message = status.message();
    let field = secret_fields
        .iter()
        .chain(others)
        .copied()
        .find(|f| match *f {
            "name" => message.starts_with("name") || status.code() == Code::AlreadyExists,
            "expire_date" => message.contains("expire_time"),
            f => message.contains(f),
        })
        .unwrap_or("");
    HashMap::from([(field.to_owned(), message.to_owned())])
}
