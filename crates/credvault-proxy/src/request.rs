//! Where a worker's request goes: its form (base-URL, absolute, CONNECT), its
//! credential and target, each checked against the credential's own origin.

use super::*;

impl Proxy {
    /// Answers one request (boxed: a CONNECT serves the requests inside its
    /// tunnel through this again).
    pub(super) fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        origin: Origin,
    ) -> std::pin::Pin<Box<dyn Future<Output = Response<Body>> + Send>> {
        Box::pin(async move {
            let began = Instant::now();
            // Framing a hop could read two ways is refused, not guessed at.
            let headers = req.headers();
            if headers.get_all(header::HOST).iter().count() > 1
                || headers.contains_key(header::TRANSFER_ENCODING)
                    && headers.contains_key(header::CONTENT_LENGTH)
                || headers.get_all(header::CONTENT_LENGTH).iter().count() > 1
            {
                let r = Refusal {
                    status: 400,
                    message: "ambiguous framing: two Host or Content-Length headers, or Content-Length with Transfer-Encoding".into(),
                };
                log_refused(&req, &origin, &r);
                metrics::refused(metrics::Refused::Framing);
                return refused(&r);
            }
            if req.method() == Method::CONNECT {
                return self.connect(req, origin).await;
            }
            match (
                req.uri().path(),
                origin.tunnel.is_none() && req.uri().scheme().is_none(),
            ) {
                (HEALTH_PATH, true) => return text(200, "SERVING"),
                (READY_PATH, true) => {
                    return match self.ready().await {
                        Ok(()) => text(200, "SERVING"),
                        Err(e) => text(503, &format!("NOT_SERVING: {e}")),
                    }
                }
                _ => {}
            }
            // Inside a tunnel the CONNECT said who the worker is; else this request does.
            let worker = match &origin.tunnel {
                Some(_) => origin.worker.clone(),
                None => match self.worker_of(&req) {
                    Ok(w) => w,
                    Err(response) => {
                        metrics::refused(metrics::Refused::Token);
                        return *response;
                    }
                },
            };
            let target = match self.target(&req, &origin) {
                Ok(t) => t,
                Err(r) => {
                    log_refused(&req, &origin, &r);
                    metrics::refused(if r.message.starts_with(NO_ROUTE) {
                        metrics::Refused::Route
                    } else {
                        metrics::Refused::Target
                    });
                    return refused(&r);
                }
            };
            if let Some(w) = &worker {
                if !w.may_use(&target.credential) {
                    let r = Refusal {
                        status: 403,
                        message: format!(
                            "worker {} may not use credential {}",
                            w.name, target.credential
                        ),
                    };
                    log_refused(&req, &origin, &r);
                    metrics::refused(metrics::Refused::Scope);
                    return refused(&r);
                }
            }
            self.forward(req, &target, &origin, began).await
        })
    }

    /// Reads which credential a request uses and where it points.
    pub(super) fn target(
        &self,
        req: &Request<Incoming>,
        origin: &Origin,
    ) -> Result<Target, Refusal> {
        let uri = req.uri();
        let query = uri.query().map(str::to_owned);
        let path = uri.path();
        let host_header = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned);
        // Inside a tunnel: the CONNECT named the host; the requests must agree.
        if let Some((host, port)) = &origin.tunnel {
            if let Some(authority) = uri.authority() {
                if !authority.host().eq_ignore_ascii_case(host) {
                    return Err(Refusal {
                        status: 421,
                        message: format!(
                            "the request names host {:?} inside a tunnel to {host}",
                            authority.host()
                        ),
                    });
                }
            }
            if let Some(h) = &host_header {
                if !same_host(h, host, *port) {
                    return Err(Refusal {
                        status: 421,
                        message: "the Host header does not name the tunnel's host".into(),
                    });
                }
            }
            let route = self
                .settings
                .routes
                .find(host, *port, path)
                .ok_or_else(|| no_route(host.as_ref(), path))?;
            return Ok(Target {
                credential: route.credential.clone(),
                addressed: Some((host.clone(), Some(*port))),
                path: path.to_owned(),
                query,
            });
        }
        // Absolute form: a plain-HTTP request through HTTP_PROXY.
        if let Some(authority) = uri.authority() {
            if uri.scheme_str() != Some("http") {
                return Err(Refusal {
                    status: 400,
                    message:
                        "only http:// requests come in absolute form (https:// comes by CONNECT)"
                            .into(),
                });
            }
            let host = authority.host().to_ascii_lowercase();
            let port = authority.port_u16();
            if let Some(h) = &host_header {
                if !same_host(h, &host, port.unwrap_or(80)) {
                    return Err(Refusal {
                        status: 400,
                        message: "the Host header does not name the request's host".into(),
                    });
                }
            }
            let route = self
                .settings
                .routes
                .find(&host, port.unwrap_or(80), path)
                .or_else(|| self.settings.routes.find(&host, port.unwrap_or(443), path))
                .ok_or_else(|| no_route(host.as_ref(), path))?;
            return Ok(Target {
                credential: route.credential.clone(),
                addressed: Some((host, port)),
                path: path.to_owned(),
                query,
            });
        }
        // Base-URL form: /c/<credential>/<path>.
        let Some(rest) = path.strip_prefix(BASE_PREFIX) else {
            return Err(Refusal {
                status: 404,
                message: format!("send requests to {BASE_PREFIX}<credential>/<path>, or use this proxy as HTTP_PROXY/HTTPS_PROXY"),
            });
        };
        let (name, below) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if !routes::valid_credential_name(name) {
            return Err(Refusal {
                status: 400,
                message: "the credential name is not one (1 to 128 of A-Z a-z 0-9 . _ -)".into(),
            });
        }
        Ok(Target {
            credential: name.to_owned(),
            addressed: None,
            path: below.to_owned(),
            query,
        })
    }

    /// Answers a CONNECT to a routed host: 200, then TLS under a minted leaf.
    pub(super) async fn connect(
        self: Arc<Self>,
        req: Request<Incoming>,
        origin: Origin,
    ) -> Response<Body> {
        if origin.tunnel.is_some() {
            return text(400, "CONNECT inside a tunnel");
        }
        let Some(authority) = req.uri().authority().cloned() else {
            return text(400, "CONNECT needs host:port");
        };
        let host = authority.host().to_ascii_lowercase();
        let port = authority.port_u16().unwrap_or(443);
        let worker = match self.worker_of(&req) {
            Ok(w) => w,
            Err(response) => {
                metrics::refused(metrics::Refused::Token);
                return *response;
            }
        };
        if !self.settings.routes.routes_host(&host, port) || !self.credential_at(&host, port).await
        {
            tracing::info!(method = "CONNECT", host = %host, port, peer = %origin.peer, status = 403u16, "refused: CONNECT to an unrouted host");
            metrics::refused(metrics::Refused::Route);
            return text(
                403,
                &format!("CONNECT to {host}:{port}: no route names this host and port"),
            );
        }
        let config = match self.authority.server_config(&host) {
            Ok(c) => c,
            Err(e) => return text(500, &format!("cannot mint a certificate for {host}: {e}")),
        };
        let proxy = Arc::clone(&self);
        tokio::spawn(async move {
            let upgraded = match hyper::upgrade::on(req).await {
                Ok(u) => u,
                Err(e) => {
                    tracing::debug!(error = %e, "a CONNECT was not upgraded");
                    return;
                }
            };
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            let handshake = tokio::time::timeout(
                proxy.settings.header_timeout,
                acceptor.accept(TokioIo::new(upgraded)),
            )
            .await;
            let tls = match handshake {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::info!(host = %host, error = %e, "TLS with a worker failed (does it trust the proxy's CA?)");
                    return;
                }
                Err(_) => return,
            };
            let inner = Origin {
                peer: origin.peer,
                tunnel: Some((host, port)),
                worker,
            };
            proxy.serve_io(TokioIo::new(tls), inner).await;
        });
        Response::new(
            http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
    }

    /// Whether a credential routed for `host` has its base URL at `host`:`port`.
    pub(super) async fn credential_at(&self, host: &str, port: u16) -> bool {
        let names: Vec<String> = self
            .settings
            .routes
            .iter()
            .filter(|r| r.host.eq_ignore_ascii_case(host))
            .map(|r| r.credential.clone())
            .collect();
        for name in names {
            if let Ok(held) = self.vault.headers(&name).await {
                if let Ok(base) = Base::parse(held.base_url()) {
                    if base.has_host(host) && base.port() == port {
                        return true;
                    }
                }
            }
        }
        false
    }
}

/// How every "no route" refusal begins (the metrics count those as `route`).
const NO_ROUTE: &str = "no route for ";

/// The refusal of a request no route names.
fn no_route(host: &str, path: &str) -> Refusal {
    Refusal {
        status: 403,
        message: format!("{NO_ROUTE}{host}{path}"),
    }
}

/// Whether a `Host` header names `host` (its port, when given, `port`).
fn same_host(header: &str, host: &str, port: u16) -> bool {
    let (h, p) = match header.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
            (h, p.parse::<u16>().ok())
        }
        _ => (header, None),
    };
    let bare = |s: &str| {
        s.trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase()
    };
    bare(h) == bare(host) && p.is_none_or(|p| p == port)
}
