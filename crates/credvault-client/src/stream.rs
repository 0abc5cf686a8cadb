//! The watch stream that keeps held headers current: a first fetch per name, then
//! one stream for every held name, re-opened with jittered backoff when it ends.

use super::*;

/// The first fetch of `name`: one `GetCredentialHeaders`, then the credential is watched.
pub(super) async fn fetch(inner: Arc<Inner>, name: String, tx: watch::Sender<Fetched>) {
    inner.stats.fetches.fetch_add(1, Ordering::Relaxed);
    let mut request = tonic::Request::new(proto::GetCredentialHeadersRequest {
        r#ref: Some(proto::get_credential_headers_request::Ref::Name(
            name.clone(),
        )),
    });
    request.set_timeout(inner.request_timeout);
    let mut account = (None, 0);
    let answer = match inner.vault.clone().get_credential_headers(request).await {
        Ok(r) => {
            let r = r.into_inner();
            account = (r.paused_until, r.request_budget_per_minute);
            CredentialHeaders::new(
                r.credential_id,
                name.clone(),
                r.version,
                r.base_url,
                r.headers,
                None,
            )
            .map(|h| Arc::new(h.at_revision(r.headers_revision)))
        }
        Err(status) => Err(Error::from(status)),
    };
    let mut state = inner.lock();
    let watch = match &answer {
        Ok(headers) => {
            let mut held = Held::new(Arc::clone(headers), false);
            held.account(account.0, account.1);
            state.entries.insert(name.clone(), Entry::Held(held));
            true
        }
        // Watched too: the vault says when it comes to exist, or to be readable.
        Err(e @ (Error::NotFound(_) | Error::PermissionDenied(_))) => {
            state.entries.insert(name.clone(), Entry::Gone(e.clone()));
            true
        }
        // Asked again next time.
        Err(_) => {
            state.entries.remove(&name);
            false
        }
    };
    inner.publish(&state, &name);
    if watch && !state.watched.contains(&name) {
        state.watched.push(name);
        drop(state);
        inner.changed.notify_one();
    }
    tx.send_replace(Some(answer));
}

/// A random duration up to `max` ("full jitter").
pub(super) fn jitter(max: Duration) -> Duration {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(max.as_nanos() as u64);
    let r = hasher.finish();
    let nanos = max.as_nanos().min(u128::from(u64::MAX)) as u64;
    Duration::from_nanos(if nanos == 0 { 0 } else { r % nanos })
}

/// Why a stream ended.
pub(super) enum Ended {
    /// A credential was added: restart at once with the larger set.
    Restart,
    /// The stream failed or the vault ended it.
    Failed(tonic::Status),
}

/// The client's one watch stream: (re)opened with every watched credential and
/// the version held of each, for as long as the client lives.
pub(super) async fn watch_loop(inner: Arc<Inner>) {
    let mut delay = inner.backoff.0;
    loop {
        let added = inner.changed.notified();
        let (names, request) = {
            let state = inner.lock();
            let names = state.watched.clone();
            let credentials = names
                .iter()
                .map(|name| {
                    let (id, version, revision) = match state.entries.get(name) {
                        Some(Entry::Held(h)) => (
                            h.headers.credential_id().to_owned(),
                            h.headers.version(),
                            h.headers.headers_revision(),
                        ),
                        _ => (String::new(), 0, 0),
                    };
                    proto::WatchedCredential {
                        r#ref: Some(proto::watched_credential::Ref::Name(name.clone())),
                        known_version: version,
                        known_credential_id: id,
                        known_headers_revision: revision,
                    }
                })
                .collect();
            (names, proto::WatchCredentialHeadersRequest { credentials })
        };
        if names.is_empty() {
            added.await;
            continue;
        }
        drop(added);
        inner.stats.streams.fetch_add(1, Ordering::Relaxed);
        match run_stream(&inner, &names, request).await {
            Ended::Restart => {
                // Not current for every name until the new stream has reported them all.
                inner.lock().connected = false;
                continue;
            }
            Ended::Failed(status) => {
                // A stream that was whole starts the backoff over.
                if inner.lock().connected {
                    delay = inner.backoff.0;
                }
                lost(&inner, &status);
                let wait = jitter(delay);
                tracing::debug!(code = ?status.code(), message = status.message(), ?wait, "credvault watch stream lost; reconnecting");
                tokio::time::sleep(wait).await;
                delay = (delay * 2).min(inner.backoff.1);
            }
        }
    }
}

/// Runs one stream until it ends or a credential is added.
pub(super) async fn run_stream(
    inner: &Inner,
    names: &[String],
    request: proto::WatchCredentialHeadersRequest,
) -> Ended {
    let mut vault = inner.vault.clone();
    let call = vault.watch_credential_headers(request);
    let response = tokio::select! {
        r = call => r,
        () = inner.changed.notified() => return Ended::Restart,
    };
    let mut stream = match response {
        Ok(r) => r.into_inner(),
        Err(status) => return Ended::Failed(status),
    };
    loop {
        let message = tokio::select! {
            m = stream.message() => m,
            () = inner.changed.notified() => return Ended::Restart,
        };
        match message {
            Ok(Some(m)) => apply(inner, names, m),
            Ok(None) => {
                return Ended::Failed(tonic::Status::unavailable(
                    "the vault ended the watch stream",
                ))
            }
            Err(status) => return Ended::Failed(status),
        }
    }
}

/// Takes one watch message into memory.
pub(super) fn apply(inner: &Inner, names: &[String], m: proto::WatchCredentialHeadersResponse) {
    inner.stats.messages.fetch_add(1, Ordering::Relaxed);
    let Some(name) = names.get(m.index as usize) else {
        return;
    };
    let mut state = inner.lock();
    if m.synced {
        state.connected = true;
    }
    let gone = |e: Error| Entry::Gone(e);
    let next = match m.state() {
        proto::WatchState::Present if !m.headers.is_empty() => {
            match CredentialHeaders::new(
                m.credential_id,
                name.clone(),
                m.version,
                m.base_url,
                m.headers,
                m.last_verification,
            ) {
                Ok(h) => {
                    let h = h.at_revision(m.headers_revision);
                    inner.stats.updates.fetch_add(1, Ordering::Relaxed);
                    let mut held = Held::new(Arc::new(h), true);
                    held.account(m.paused_until, m.request_budget_per_minute);
                    // A rotation keeps the account: requests leased stay good.
                    if let Some(Entry::Held(old)) = state.entries.get(name) {
                        if old.headers.credential_id() == held.headers.credential_id() {
                            held.lease = old.lease;
                        }
                    }
                    Entry::Held(held)
                }
                Err(e) => {
                    tracing::warn!(credential = %name, error = %e, "credvault sent headers this client cannot use");
                    return;
                }
            }
        }
        proto::WatchState::Present => match state.entries.remove(name) {
            Some(Entry::Held(mut held))
                if held.headers.credential_id() == m.credential_id
                    && held.headers.version() == m.version
                    && held.headers.headers_revision() == m.headers_revision =>
            {
                if held.headers.verification() != m.last_verification.as_ref() {
                    held.headers = Arc::new(held.headers.with_verification(m.last_verification));
                }
                held.account(m.paused_until, m.request_budget_per_minute);
                held.live = true;
                held.suspended = false;
                held.good_at = Instant::now();
                Entry::Held(held)
            }
            // The vault thinks the client holds headers it does not: ask again.
            _ => {
                inner.publish(&state, name);
                drop(state);
                inner.changed.notify_one();
                return;
            }
        },
        proto::WatchState::NotFound => match state.entries.remove(name) {
            // A name whose credential was deleted is not found after a reconnection:
            // the deletion says more.
            Some(deleted @ Entry::Gone(Error::Deleted(_))) => deleted,
            _ => gone(Error::NotFound(m.message)),
        },
        proto::WatchState::Deleted => gone(Error::Deleted(m.message)),
        proto::WatchState::PermissionDenied => gone(Error::PermissionDenied(m.message)),
        proto::WatchState::Unavailable | proto::WatchState::Unspecified => {
            match state.entries.remove(name) {
                // Served as they are, within the staleness bound from now.
                Some(Entry::Held(mut held)) => {
                    if held.live {
                        held.good_at = Instant::now();
                    }
                    held.live = false;
                    Entry::Held(held)
                }
                Some(other) => other,
                None => gone(Error::Unavailable(m.message)),
            }
        }
    };
    state.entries.insert(name.clone(), next);
    inner.publish(&state, name);
}

/// The stream is gone: headers confirmed by it start aging (or, for a caller the
/// vault no longer knows or whose access narrowed, stop being served).
pub(super) fn lost(inner: &Inner, status: &tonic::Status) {
    let mut state = inner.lock();
    state.connected = false;
    let now = Instant::now();
    for entry in state.entries.values_mut() {
        if let Entry::Held(held) = entry {
            match status.code() {
                tonic::Code::Unauthenticated => {
                    *entry = Entry::Gone(Error::Unauthenticated(status.message().to_owned()));
                }
                tonic::Code::PermissionDenied => {
                    held.suspended = true;
                    held.live = false;
                }
                _ => {
                    if held.live {
                        held.good_at = now;
                        held.live = false;
                    }
                }
            }
        }
    }
    inner.publish_all(&state);
}
