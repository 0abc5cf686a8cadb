//! A request forwarded: the account's pace kept (pauses, budget leases), the held
//! headers attached, the bodies streamed and counted, the provider's answer reported.

use super::*;

impl Proxy {
    /// Sends a request to its credential's provider and streams the answer back.
    pub(super) async fn forward(
        &self,
        req: Request<Incoming>,
        target: &Target,
        origin: &Origin,
        began: Instant,
    ) -> Response<Body> {
        let name = &target.credential;
        let held = match self.acquire(name).await {
            Ok(h) => h,
            Err(response) => {
                log_line(&req, name, "-", response.status().as_u16(), began, origin);
                return response;
            }
        };
        let base = match self.base(held.base_url()) {
            Ok(b) => b,
            Err(r) => {
                metrics::refused(metrics::Refused::Target);
                return refused(&r);
            }
        };
        // Proxy form: the worker's host must be the credential's own.
        let rest = match &target.addressed {
            None => Some(target.path.as_str()),
            Some((host, port)) => {
                let same = base.has_host(host)
                    && port
                        .is_none_or(|p| p == base.port() || (p == 80 && origin.tunnel.is_none()));
                if !same {
                    metrics::refused(metrics::Refused::Target);
                    return text(
                        403,
                        &format!(
                            "credential {name} is for {}, not {host}: the request is not sent",
                            base.host()
                        ),
                    );
                }
                base.below(&target.path)
            }
        };
        let Some(rest) = rest else {
            metrics::refused(metrics::Refused::Target);
            return text(
                403,
                &format!(
                    "the path is outside credential {name}'s base path {}",
                    base.path()
                ),
            );
        };
        let uri = match base.uri(rest, target.query.as_deref()) {
            Ok(u) => u,
            Err(r) => {
                log_line(&req, name, base.host(), r.status, began, origin);
                metrics::refused(metrics::Refused::Target);
                return refused(&r);
            }
        };
        let (mut parts, body) = req.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        parts.headers.remove(header::HOST);
        // What the credential sets is its alone: the worker's own values go.
        for (k, v) in held.iter() {
            if let Ok(mut v) = HeaderValue::from_str(v) {
                // Never indexed by HTTP/2 header compression.
                v.set_sensitive(true);
                parts.headers.insert(k.clone(), v);
            }
        }
        // The provider's side speaks its own version (HTTP/2 by ALPN, or HTTP/1.1).
        parts.version = http::Version::HTTP_11;
        parts.uri = uri;
        parts.extensions = http::Extensions::new();
        let method = parts.method.clone();
        let path_shown = parts.uri.path().to_owned();
        let upstream = match self.upstream.send(Request::from_parts(parts, body)).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(credential = %name, host = %base.host(), error = %e, "the provider could not be reached");
                metrics::refused(metrics::Refused::Upstream);
                log_parts(
                    &method,
                    name,
                    base.host(),
                    &path_shown,
                    502,
                    0,
                    began,
                    &origin.peer,
                );
                return text(
                    502,
                    &format!("the provider at {} could not be reached: {e}", base.host()),
                );
            }
        };
        let status = upstream.status().as_u16();
        let form = match (&origin.tunnel, &target.addressed) {
            (Some(_), _) => "tunnel",
            (None, Some(_)) => "proxy",
            (None, None) => "base",
        };
        metrics::request(form, name, status, began.elapsed());
        if matches!(status, 401 | 403 | 429) && self.reports.due(name, status) {
            let retry_after = credvault_client::budget::retry_after(upstream.headers());
            let vault = self.vault.clone();
            let name = name.clone();
            tokio::spawn(async move {
                match vault.report(&name, status, retry_after).await {
                    Ok(_) => metrics::reported(status),
                    Err(e) => {
                        tracing::warn!(credential = %name, status, error = %e, "the provider's answer could not be reported to the vault")
                    }
                }
            });
        }
        let (mut head, body) = upstream.into_parts();
        strip_hop_by_hop(&mut head.headers);
        head.extensions = http::Extensions::new();
        let body = Counted {
            body,
            log: LogOnEnd {
                method,
                credential: name.clone(),
                host: base.host().to_owned(),
                path: path_shown,
                status,
                bytes: 0,
                began,
                peer: origin.peer,
            },
        };
        Response::from_parts(head, body.boxed_unsync())
    }

    /// The credential's headers once a request may go: at once, or within
    /// `--max-wait` of a pause or a spent budget; else the answer to give.
    pub(super) async fn acquire(
        &self,
        name: &str,
    ) -> Result<Arc<credvault_client::CredentialHeaders>, Response<Body>> {
        let deadline = Instant::now() + self.settings.max_wait;
        loop {
            let wait = match self.vault.try_acquire(name).await {
                Ok(h) => return Ok(h),
                Err(VaultError::Paused { until }) => {
                    let wait = until.duration_since(SystemTime::now()).unwrap_or_default();
                    if Instant::now() + wait > deadline {
                        metrics::refused(metrics::Refused::Paused);
                        return Err(too_many(
                            &format!("the provider account of credential {name} is paused (the provider answered 429); retry after the pause"),
                            wait,
                        ));
                    }
                    wait
                }
                Err(VaultError::BudgetSpent { retry_after }) => {
                    if Instant::now() + retry_after > deadline {
                        metrics::refused(metrics::Refused::Budget);
                        return Err(too_many(
                            &format!("credential {name}'s request budget for this minute is spent"),
                            retry_after,
                        ));
                    }
                    retry_after
                }
                Err(e) => {
                    metrics::refused(metrics::Refused::Vault);
                    return Err(vault_refusal(name, &e));
                }
            };
            tokio::time::sleep(wait + Duration::from_millis(2)).await;
        }
    }
}

/// What the vault's answer means for the worker.
pub(super) fn vault_refusal(name: &str, e: &VaultError) -> Response<Body> {
    let (status, what) = match e {
        VaultError::NotFound(_) => (404, "the vault has no credential of that name"),
        VaultError::Deleted(_) => (410, "the credential was deleted"),
        VaultError::Rejected(_) => (
            502,
            "the provider rejected the credential's key; an admin must rotate it",
        ),
        VaultError::PermissionDenied(_) | VaultError::Unauthenticated(_) => {
            (502, "the proxy may not read this credential from the vault")
        }
        VaultError::Stale { .. } | VaultError::Unavailable(_) => (
            503,
            "the vault cannot be reached and the headers held are too old",
        ),
        VaultError::InvalidArgument(_) => (400, "the credential name is not valid"),
        _ => (502, "the vault refused the credential"),
    };
    tracing::info!(credential = %name, status, error = %e, "a request was refused for its credential");
    text(status, &format!("credential {name}: {what}"))
}

/// The provider's answer as it streams to the worker, counted; the log line
/// is written when it ends.
pub(super) struct Counted {
    pub(super) body: Incoming,
    pub(super) log: LogOnEnd,
}

impl hyper::body::Body for Counted {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, std::io::Error>>> {
        let this = &mut *self;
        match std::pin::Pin::new(&mut this.body).poll_frame(cx) {
            std::task::Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.log.bytes += data.len() as u64;
                }
                std::task::Poll::Ready(Some(Ok(frame)))
            }
            std::task::Poll::Ready(Some(Err(e))) => {
                std::task::Poll::Ready(Some(Err(std::io::Error::other(e))))
            }
            other => other.map(|_| None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Runs a closure when dropped.
pub(super) struct OnDrop<F: FnMut()>(pub(super) F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}
