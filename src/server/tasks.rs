//! The server's background loops: the audit log's reopen and pruning, refusal
//! summaries, reloads of the callers, providers and keyring (when, see
//! [`super::reload`]), last-use flushes, purges of deleted credentials, and the
//! instance's announcement.

use super::reload::{fingerprint, next_reload, Hangups};
use super::*;

/// Reopens the audit log on SIGHUP (after an outside logrotate moved it).
pub(super) async fn reopen_audit(
    audit: Arc<AuditLog>,
    mut hangups: Hangups,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            () = hangups.next() => audit.reopen(),
        }
    }
}

/// Deletes the database's audit events older than `retention`: at start, then
/// every quarter of it (at least every second, at most hourly). Every replica
/// does; a deletion that finds nothing costs one indexed query.
pub(super) async fn prune_audit(
    audit: Arc<AuditLog>,
    retention: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    if retention.is_zero() || !audit.in_database() {
        return;
    }
    let every = (retention / 4).clamp(Duration::from_secs(1), Duration::from_secs(3600));
    loop {
        if let Some(before) = SystemTime::now().checked_sub(retention) {
            match audit.prune(before).await {
                Ok(0) => {}
                Ok(pruned) => {
                    tracing::info!(pruned, retention = ?retention, "old audit events deleted")
                }
                Err(e) => tracing::warn!(error = %e, "old audit events could not be deleted"),
            }
        }
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// Every `every`, writes one log line and one audit event per peer (or known
/// caller) whose refused calls were only counted (see [`crate::refusals`]); once more at shutdown.
pub(super) async fn summarize_refusals(
    refusals: Arc<Refusals>,
    audit: Arc<AuditLog>,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let every = every.max(Duration::from_millis(100));
    loop {
        let stopping = tokio::select! {
            _ = stop.changed() => true,
            () = tokio::time::sleep(every) => false,
        };
        for s in refusals.take() {
            let method = s.method.unwrap_or("several");
            let (caller, code, reason) = match &s.caller {
                None => {
                    tracing::warn!(
                        count = s.count,
                        peer = %s.peer,
                        reason = s.reason,
                        method,
                        interval = ?every,
                        "calls refused from this peer in the last interval, not logged one by one"
                    );
                    ("anonymous", "UNAUTHENTICATED", s.reason)
                }
                Some(caller) => {
                    tracing::warn!(
                        count = s.count,
                        caller = %caller,
                        code = s.reason,
                        method,
                        interval = ?every,
                        "calls of this caller refused in the last interval, not logged one by one"
                    );
                    let reason = "refused calls of this caller, counted in this summary";
                    (caller.as_str(), s.reason, reason)
                }
            };
            audit
                .record(&AuditEntry {
                    peer: Peer::Label(&s.peer),
                    method,
                    code,
                    reason,
                    count: s.count,
                    ..AuditEntry::new(SystemTime::now(), caller, None)
                })
                .await;
        }
        if stopping {
            return;
        }
    }
}

/// Re-reads the callers file on SIGHUP and whenever it changes.
pub(super) async fn reload_callers(
    callers: Arc<CallerRegistry>,
    mut hangups: Hangups,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let Some(path) = callers.path().map(std::path::Path::to_owned) else {
        return;
    };
    let mut seen = fingerprint(&path);
    while let Some(why) = next_reload("callers", &path, &mut seen, &mut hangups, &mut stop).await {
        match callers.reload() {
            Ok(count) => {
                metrics::reloaded("callers", "reloaded");
                tracing::info!(callers = count, reason = why, "callers reloaded");
            }
            Err(e) => {
                metrics::reloaded("callers", "failed");
                tracing::error!(error = %e, reason = why, "callers reload failed; keeping the previous callers")
            }
        }
    }
}

/// Re-reads the providers file on SIGHUP and whenever it changes; a file
/// with any bad declaration is refused whole and the previous set kept.
pub(super) async fn reload_providers<S: Store>(
    vault: Arc<Vault<S>>,
    mut hangups: Hangups,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let Some(path) = vault.providers().path().map(std::path::Path::to_owned) else {
        return;
    };
    let mut seen = fingerprint(&path);
    while let Some(why) = next_reload("providers", &path, &mut seen, &mut hangups, &mut stop).await
    {
        match vault.providers().reload() {
            Ok(count) => {
                // Every watched credential is read again (in chunks, behind pushes):
                // a changed declaration changes its headers at the same version,
                // and the watchers hear the new ones, or UNAVAILABLE and why.
                vault.hub().reread_all();
                metrics::reloaded("providers", "reloaded");
                tracing::info!(
                    declared = count,
                    providers = %vault.providers().current().names(),
                    reason = why,
                    "providers reloaded"
                );
            }
            Err(e) => {
                metrics::reloaded("providers", "failed");
                tracing::error!(error = %e, reason = why, "providers reload failed; keeping the previous providers")
            }
        }
    }
}

/// Re-reads the keyring on SIGHUP and whenever its file or directory changes:
/// rotation without a restart. A keyring that lacks a key the data needs is refused.
pub(super) async fn reload_keyring<S: Store>(
    vault: Arc<Vault<S>>,
    source: Option<KeyringSource>,
    mut hangups: Hangups,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let Some(source) = source else { return };
    let mut seen = fingerprint(&source.path);
    while let Some(why) =
        next_reload("keyring", &source.path, &mut seen, &mut hangups, &mut stop).await
    {
        let before = vault.keyring();
        let outcome = match source.read() {
            Ok(keyring) => {
                let unchanged =
                    keyring.active().id() == before.active().id() && keyring.ids().eq(before.ids());
                vault
                    .replace_keyring(keyring)
                    .await
                    .map(|()| unchanged)
                    .map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        };
        metrics::reloaded(
            "keyring",
            match outcome {
                Ok(true) => "unchanged",
                Ok(false) => "reloaded",
                Err(_) => "failed",
            },
        );
        match outcome {
            Ok(true) => tracing::debug!(reason = why, "keyring read again; unchanged"),
            Ok(false) => {
                let now = vault.keyring();
                tracing::info!(
                    reason = why,
                    key_id = now.active().id(),
                    key_ids = %now.ids().collect::<Vec<_>>().join(","),
                    "keyring reloaded: new data keys are wrapped by the active key; run RewrapCredentials to move older ones"
                );
            }
            Err(e) => tracing::error!(
                error = %e,
                reason = why,
                "keyring reload failed; keeping the previous keyring"
            ),
        }
    }
}

/// How often noted secret reads (last_used_*) are written to the store.
///
/// A write per credential read in the interval: at 1 s this was 6 % of the
/// server's CPU on the hot path with 10,000 credentials read at random. This
/// server answers from memory meanwhile; a crash loses at most this much of it
/// (the audit log holds every read).
pub(super) const USAGE_FLUSH_EVERY: Duration = Duration::from_secs(10);

/// Writes noted secret reads (last_used_*) to the store every [`USAGE_FLUSH_EVERY`].
pub(super) async fn flush_usage<S: Store>(
    vault: Arc<Vault<S>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(USAGE_FLUSH_EVERY) => {}
        }
        if let Err(e) = vault.flush_usage().await {
            tracing::warn!(error = %e, "last uses could not be recorded");
        }
    }
}

/// Purges deleted credentials whose recovery window has ended: every minute, or
/// every half window when the window is shorter.
/// How often erasable keys no record refers to are swept.
pub(super) const ERASABLE_SWEEP_EVERY: Duration = Duration::from_secs(3600);
/// How old an unreferenced erasable key must be before a sweep erases it: a key
/// is stored moments before the record that refers to it.
pub(super) const ERASABLE_SWEEP_GRACE: Duration = Duration::from_secs(600);

pub(super) async fn purge_deleted<S: Store>(
    vault: Arc<Vault<S>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let every =
        (vault.recovery_window() / 2).clamp(Duration::from_millis(100), Duration::from_secs(60));
    let mut last_sweep: Option<Instant> = None;
    loop {
        // Keys a crash left unreferenced (PostgreSQL; sled sweeps at open), hourly.
        if last_sweep.is_none_or(|t| t.elapsed() >= ERASABLE_SWEEP_EVERY) {
            last_sweep = Some(Instant::now());
            match vault.sweep_erasable(ERASABLE_SWEEP_GRACE).await {
                Ok(0) => {}
                Ok(erased) => {
                    tracing::info!(erased, "erasable keys no record refers to were erased")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "unreferenced erasable keys could not be swept; retried later")
                }
            }
        }
        match vault.purge_due().await {
            Ok(0) => {}
            Ok(purged) => tracing::info!(
                purged,
                "deleted credentials purged at the end of their recovery window"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "deleted credentials could not be purged; retried later")
            }
        }
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// Renews this server's active-key announcement every [`keys::ANNOUNCE_EVERY`],
/// and at once when a keyring reload changed the active key.
pub(super) async fn announce_active<S: Store>(
    vault: Arc<Vault<S>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut announced = (vault.keyring().active().id().to_owned(), Instant::now());
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let active = vault.keyring().active().id().to_owned();
        if active == announced.0 && announced.1.elapsed() < keys::ANNOUNCE_EVERY {
            continue;
        }
        match vault.announce_active().await {
            Ok(()) => announced = (active, Instant::now()),
            Err(e) => tracing::warn!(error = %e, "the active key could not be announced"),
        }
    }
}
