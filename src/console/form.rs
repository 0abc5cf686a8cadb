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

/// A urlencoded body or query as values by name (the last of a repeated name wins).
pub(super) fn parse(bytes: &[u8]) -> HashMap<String, String> {
    form_urlencoded::parse(bytes).into_owned().collect()
}

/// Reads a urlencoded form body of at most [`MAX_FORM_BYTES`], within ten seconds.
pub(super) async fn read_form(body: axum::body::Body) -> Result<Form, Reply> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any bytes a browser (or anyone) sends read as some form, never a panic;
        /// what a form encoder wrote reads back as written.
        #[test]
        fn any_body_parses_and_encoded_pairs_read_back(
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
            pairs in proptest::collection::btree_map("[a-z_]{1,12}", ".{0,40}", 0..8),
        ) {
            let _ = parse(&bytes);
            let encoded = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(&pairs)
                .finish();
            let read = parse(encoded.as_bytes());
            prop_assert_eq!(read.len(), pairs.len());
            for (name, value) in &pairs {
                prop_assert_eq!(read.get(name), Some(value));
            }
        }

        /// A date field: empty is no expiry, a real date is the end of that day,
        /// anything else a message naming the form expected (never the value sent).
        #[test]
        fn any_date_field_is_an_expiry_or_a_fixed_message(text in ".{0,40}") {
            match expiry(&text) {
                Ok(None) => prop_assert!(text.trim().is_empty()),
                Ok(Some(t)) => prop_assert_eq!(t.seconds.rem_euclid(86_400), 86_399),
                Err(message) => prop_assert_eq!(message, "a date such as 2027-01-31"),
            }
        }

        #[test]
        fn real_dates_end_on_their_day(y in 1971i32..2200, m in 1u32..=12, d in 1u32..=28) {
            let t = expiry(&format!("{y:04}-{m:02}-{d:02}")).unwrap().unwrap();
            let day = humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.seconds as u64),
            )
            .to_string();
            prop_assert_eq!(day, format!("{y:04}-{m:02}-{d:02}T23:59:59Z"));
        }
    }
}
