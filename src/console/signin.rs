//! Signing in and out: the sign-in page, a bearer token or client certificate
//! checked as the gate checks it, the session's cookies, and the same-origin check
//! every POST passes.

use super::*;

impl<T: CredentialVaultService> Console<T> {
    /// Refuses a POST from another origin: by `Sec-Fetch-Site` when the browser
    /// sends it, else by `Origin` against `Host`.
    pub(super) fn same_origin(&self, headers: &http::HeaderMap) -> Result<(), &'static str> {
        let refused = "refused: the form was not sent from this console's own pages";
        if let Some(site) = headers.get("sec-fetch-site") {
            if site != "same-origin" && site != "none" {
                return Err(refused);
            }
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
            let scheme = if self.tls { "https" } else { "http" };
            let expected = host.map(|h| format!("{scheme}://{h}"));
            if origin.to_str().ok() != expected.as_deref() {
                return Err(refused);
            }
        }
        Ok(())
    }

    /// The session a request's cookie names, with its caller as the callers file says now.
    pub(super) fn signed(&self, headers: &http::HeaderMap) -> Option<Signed> {
        let id = session::cookie(headers, SESSION_COOKIE)?;
        let session = self.sessions.get(id)?;
        match self.callers.current().reidentify(&session.identity) {
            Some(caller) => Some(Signed {
                id: id.to_owned(),
                session,
                caller,
            }),
            None => {
                // The caller was removed or its token changed: the session ends.
                self.sessions.close(id);
                None
            }
        }
    }

    /// The sign-in form, tied to this browser by a cookie (kept when it has one:
    /// two tabs, or a page's favicon request, must not undo each other's form).
    pub(super) fn sign_in_page(
        &self,
        query: &HashMap<String, String>,
        conn: &Conn,
        held: Option<&str>,
        error: Option<&str>,
    ) -> Reply {
        let token = held
            .filter(|t| {
                t.len() == 43
                    && t.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
            .map_or_else(session::random_token, str::to_owned);
        let note = if query.contains_key("expired") {
            Some("Your session expired; sign in again.")
        } else if query.contains_key("signed-out") {
            Some("You are signed out.")
        } else {
            None
        };
        let certificate = self.certificate_caller(conn).map(|(c, _)| c.name.clone());
        let status = if error.is_some() {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::OK
        };
        let mut r = html(
            status,
            &pages::sign_in(&token, error, note, certificate.as_deref()),
        );
        r.headers_mut().append(
            header::SET_COOKIE,
            cookie_header(&session::set_cookie(
                SIGN_IN_COOKIE,
                &token,
                Duration::from_secs(3600),
                self.tls,
            )),
        );
        r
    }

    pub(super) fn certificate_caller(&self, conn: &Conn) -> Option<(Arc<Caller>, Identity)> {
        if conn.subjects.is_empty() {
            return None;
        }
        self.callers.current().identify(None, &conn.subjects).ok()
    }

    pub(super) async fn sign_in(
        &self,
        headers: &http::HeaderMap,
        form: &Form,
        conn: &Conn,
    ) -> (Reply, Option<String>) {
        let empty = HashMap::new();
        let expected = session::cookie(headers, SIGN_IN_COOKIE).unwrap_or("");
        if !session::same_token(form.get("sign_in").map_or("", |v| v.as_str()), expected) {
            return (
                self.sign_in_page(
                    &empty,
                    conn,
                    None,
                    Some("the sign-in form expired; try again"),
                ),
                None,
            );
        }
        let found = if form.contains_key("use_certificate") {
            self.certificate_caller(conn)
                .ok_or("no known client certificate was presented")
        } else {
            let token = form.get("token").map_or("", |t| t.trim());
            if token.is_empty() {
                Err("a bearer token is required")
            } else {
                let value = Zeroizing::new(format!("Bearer {token}"));
                match HeaderValue::from_str(&value) {
                    Ok(v) => self
                        .callers
                        .current()
                        .identify(Some(&v), &[])
                        .map_err(|_| "invalid bearer token"),
                    Err(_) => Err("invalid bearer token"),
                }
            }
        };
        let (caller, identity) = match found {
            Ok(found) => found,
            Err(reason) => {
                let peer = Some(conn.peer);
                let in_full = self.refusals.admit(peer, "ConsoleSignIn", reason);
                crate::metrics::refusal(reason, !in_full);
                if in_full {
                    self.audit
                        .record(&AuditEntry {
                            method: "ConsoleSignIn",
                            code: "UNAUTHENTICATED",
                            reason,
                            channel: CHANNEL,
                            ..AuditEntry::new(SystemTime::now(), "anonymous", peer)
                        })
                        .await;
                    tracing::warn!(peer = %conn.peer, error = reason, "console sign-in refused");
                }
                return (
                    self.sign_in_page(&empty, conn, Some(expected), Some(reason)),
                    None,
                );
            }
        };
        let (id, _) = match self.sessions.open(identity, &caller.name) {
            Ok(opened) => opened,
            Err(e) => {
                return (
                    html(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &pages::problem(None, "Cannot sign in", &e.to_string()),
                    ),
                    None,
                )
            }
        };
        self.audit
            .record(&AuditEntry {
                method: "ConsoleSignIn",
                code: "OK",
                channel: CHANNEL,
                ..AuditEntry::new(SystemTime::now(), &caller.name, Some(conn.peer))
            })
            .await;
        let mut r = redirect("/credentials");
        let cookies = [
            session::set_cookie(SESSION_COOKIE, &id, self.sessions.ttl(), self.tls),
            session::set_cookie(SIGN_IN_COOKIE, "", Duration::ZERO, self.tls),
        ];
        for c in cookies {
            r.headers_mut()
                .append(header::SET_COOKIE, cookie_header(&c));
        }
        (r, Some(caller.name.clone()))
    }

    pub(super) async fn sign_out(&self, signed: &Signed, conn: &Conn) -> Reply {
        self.sessions.close(&signed.id);
        self.audit
            .record(&AuditEntry {
                method: "ConsoleSignOut",
                code: "OK",
                channel: CHANNEL,
                ..AuditEntry::new(SystemTime::now(), &signed.caller.name, Some(conn.peer))
            })
            .await;
        to_sign_in("/sign-in?signed-out=1", self.tls)
    }
}
