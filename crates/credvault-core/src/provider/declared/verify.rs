//! A declared provider's check: its request rendered from the secret, sent, and the
//! answer read by the declaration (valid, rejected, forbidden, rate limited), with
//! the diagnosis request that tells which field was refused.

use super::*;

impl Declared {
    /// The request headers of a check, secret ones marked sensitive.
    pub(super) fn request_headers(&self, request: &Request, values: &Values) -> HeaderMap {
        let mut map = HeaderMap::new();
        if !self
            .headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("accept"))
        {
            map.insert(ACCEPT, HeaderValue::from_static("application/json"));
        }
        for &i in &request.headers {
            let h = &self.headers[i];
            let Some(value) = self.render(&h.parts, values, false) else {
                continue;
            };
            // Names and values were checked at load and on write.
            if let (Ok(name), Ok(mut value)) = (
                HeaderName::from_bytes(h.name.as_bytes()),
                HeaderValue::from_str(&value),
            ) {
                value.set_sensitive(h.secret);
                map.append(name, value);
            }
        }
        map
    }

    /// Sends one check; no answer (or a path that cannot be filled in) is the outcome as `Err`.
    pub(super) async fn send(
        &self,
        client: &Client,
        request: &Request,
        values: &Values,
    ) -> Result<reqwest::Response, Verification> {
        // The declaration was checked to fill every path field (required or defaulted).
        let Some(path) = self.render(&request.path, values, true) else {
            return Err(Verification::now(
                Status::ProviderError,
                0,
                format!("{}: the check's path names an empty field", self.name),
            ));
        };
        client
            .request(
                request.method.clone(),
                &path,
                self.request_headers(request, values),
            )
            .await
            .map_err(|e| client.unreachable(&e))
    }

    pub(super) fn rejected(&self, field: usize, http: u16, message: String) -> Verification {
        let field = &self.fields[field].name;
        Verification::rejected(Status::SecretRejected, field, http, message)
    }

    pub(super) async fn verify(&self, client: &Client, values: &Values) -> Verification {
        let name = &self.name;
        let resp = match self.send(client, &self.check.request, values).await {
            Ok(r) => r,
            Err(outcome) => return outcome,
        };
        let code = resp.status().as_u16();
        if self.check.valid.contains(&code) {
            Verification::now(
                Status::Valid,
                code,
                format!("{name} accepted the secret ({code})"),
            )
        } else if self.check.rejected.contains(&code) {
            match &self.check.diagnose {
                None => self.rejected(
                    self.check.rejected_field,
                    code,
                    format!(
                        "{name} rejected the {} ({code})",
                        self.fields[self.check.rejected_field].name
                    ),
                ),
                Some((request, answers)) => {
                    self.diagnose(client, values, code, request, answers).await
                }
            }
        } else if self.check.forbidden.contains(&code) {
            Verification::now(
                Status::Forbidden,
                code,
                format!("{name} knows the secret but denies it access ({code})"),
            )
        } else if self.check.rate_limited.contains(&code) {
            client.rate_limited_by(resp.headers(), &self.check.retry_after_header, code)
        } else {
            client.unexpected(resp.status())
        }
    }

    /// After a rejection (`first`): the second request tells which field is wrong.
    pub(super) async fn diagnose(
        &self,
        client: &Client,
        values: &Values,
        first: u16,
        request: &Request,
        answers: &[(u16, usize)],
    ) -> Verification {
        let name = &self.name;
        let resp = match self.send(client, request, values).await {
            Ok(r) => r,
            Err(outcome) => {
                let why = outcome.message;
                return self.rejected(
                    self.check.rejected_field,
                    first,
                    format!("{name} rejected the secret ({first}); which field is wrong is unknown: {why}"),
                );
            }
        };
        let code = resp.status().as_u16();
        match answers.iter().find(|(c, _)| *c == code) {
            Some(&(_, field)) => self.rejected(
                field,
                first,
                format!(
                    "{name} rejected the secret ({first}); the second check ({code}) shows the {} is wrong",
                    self.fields[field].name
                ),
            ),
            None if self.check.rate_limited.contains(&code) => {
                client.rate_limited_by(resp.headers(), &self.check.retry_after_header, code)
            }
            None => client.unexpected(resp.status()),
        }
    }
}
