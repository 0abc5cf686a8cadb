//! Readiness: what keeps the server NOT_SERVING (the store, the audit trail, a stuck
//! write, draining), watched and set on the health service.

use super::*;

/// Why the vault service is not ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Unready {
    /// The audit log cannot be written, and secret reads fail closed.
    Audit,
    /// The store does not answer.
    StoreUnreachable,
    /// The store does not take writes (a full disk, a read-only database).
    StoreUnwritable,
    /// The key root refuses this vault (a revoked token) or has not confirmed the
    /// master keys for longer than `--key-root-max-unconfirmed`.
    KeyRoot,
}

impl Unready {
    pub(super) const ALL: [Unready; 4] = [
        Unready::Audit,
        Unready::StoreUnreachable,
        Unready::StoreUnwritable,
        Unready::KeyRoot,
    ];

    pub(super) fn as_str(self) -> &'static str {
        match self {
            Unready::Audit => "audit",
            Unready::StoreUnreachable => "store_unreachable",
            Unready::StoreUnwritable => "store_unwritable",
            Unready::KeyRoot => "key_root",
        }
    }
}

/// Readiness that tells the truth: twice a second, asks the audit log whether it
/// can be written and the store whether it answers and takes a write. While the
/// vault would refuse secret reads or writes for one of these causes, the vault
/// service (what readiness probes ask) is NOT_SERVING, and it turns SERVING again
/// by itself once the cause is gone. `credvault.audit` and `credvault.store` show
/// the parts alone; `""` (liveness) turns NOT_SERVING only when a restart is what
/// would heal the store (sled keeps a write error until one).
pub(super) async fn watch_readiness<S: Store>(
    store: Arc<S>,
    audit: Arc<AuditLog>,
    instance: String,
    stuck_after: Duration,
    roots: Option<crate::config::KeyRootSettings>,
    reporter: tonic_health::server::HealthReporter,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    pub(super) const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
    let status = |ok: bool| {
        if ok {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        }
    };
    let mut shown: Option<(Vec<Unready>, bool, bool, bool)> = None;
    // Since when the audit trail has refused secret reads while the store took writes.
    let mut stuck_since: Option<Instant> = None;
    let mut last_probe = Instant::now() - Duration::from_secs(60);
    let (mut reachable, mut writable) = (Ok(()), Ok(()));
    loop {
        // The store is asked once a second; the audit log (a flag) twice.
        if last_probe.elapsed() >= Duration::from_secs(1) {
            last_probe = Instant::now();
            let timed = |r: Result<Result<(), StoreError>, _>| {
                r.unwrap_or_else(|_| Err(StoreError::Unreachable("no answer within 5 s".into())))
                    .map_err(|e| e.to_string())
            };
            reachable = timed(tokio::time::timeout(PROBE_TIMEOUT, store.ping()).await);
            writable = if reachable.is_ok() {
                timed(tokio::time::timeout(PROBE_TIMEOUT, store.probe_write(&instance)).await)
            } else {
                Err("the store does not answer".into())
            };
        }
        if *stop.borrow() {
            set_health(&reporter, ServingStatus::NotServing).await;
            return;
        }
        let audit_ok = audit.healthy();
        let mut causes = Vec::new();
        if !audit_ok && !audit.fail_open() {
            causes.push(Unready::Audit);
        }
        let root_cause = roots
            .as_ref()
            .and_then(|r| r.roots.state.unready(r.max_unconfirmed));
        let root_stale = roots
            .as_ref()
            .is_some_and(|r| r.roots.state.stale(r.max_unconfirmed));
        if root_cause.is_some() {
            causes.push(Unready::KeyRoot);
        }
        if reachable.is_err() {
            causes.push(Unready::StoreUnreachable);
        } else if writable.is_err() {
            causes.push(Unready::StoreUnwritable);
        }
        // The trail cannot be written while the store answers and takes writes: its
        // writer is stuck. Past `stuck_after`, only a restart is left to try.
        let store_ok = reachable.is_ok() && writable.is_ok();
        if causes == [Unready::Audit] && store_ok {
            stuck_since.get_or_insert_with(Instant::now);
        } else {
            stuck_since = None;
        }
        let stuck = stuck_since.is_some_and(|t| t.elapsed() >= stuck_after);
        let restart = root_stale || (!causes.is_empty() && (stuck || store.needs_restart().await));
        let now = (
            causes.clone(),
            audit_ok,
            reachable.is_ok() && writable.is_ok(),
            restart,
        );
        if shown.as_ref() != Some(&now) {
            let was = shown.as_ref().map(|s| s.0.clone()).unwrap_or_default();
            if causes.is_empty() && !was.is_empty() {
                tracing::info!("the vault service is SERVING again");
            } else if causes != was {
                let names: Vec<&str> = causes.iter().map(|c| c.as_str()).collect();
                let error = [&reachable, &writable]
                    .iter()
                    .find_map(|r| r.as_ref().err().cloned())
                    .unwrap_or_default();
                tracing::error!(
                    causes = %names.join(","),
                    store_error = %error,
                    key_root = %root_cause.as_deref().unwrap_or(""),
                    audit_writable = audit_ok,
                    "the vault service is NOT_SERVING: readiness takes this replica out until the cause is gone"
                );
            }
            if restart && shown.as_ref().is_none_or(|s| !s.3) {
                if root_stale {
                    tracing::error!(
                        "the key root has not confirmed the master keys for longer than --key-root-max-unconfirmed: liveness is NOT_SERVING so that a restart drops the keys held in memory"
                    );
                } else if stuck {
                    tracing::error!(
                        stuck_after = ?stuck_after,
                        "the audit trail has refused every secret read for this long while the store takes writes: liveness is NOT_SERVING so that a supervisor restarts the server"
                    );
                } else {
                    tracing::error!(
                        "the store's writes failed and its disk takes writes again, but only a restart resumes them: liveness is NOT_SERVING so that a supervisor restarts the server"
                    );
                }
            }
            for cause in Unready::ALL {
                metrics::set_unready(cause.as_str(), causes.contains(&cause));
            }
            reporter
                .set_service_status(api::SERVICE_NAME, status(causes.is_empty()))
                .await;
            reporter
                .set_service_status(AUDIT_HEALTH_SERVICE, status(audit_ok))
                .await;
            reporter
                .set_service_status(STORE_HEALTH_SERVICE, status(now.2))
                .await;
            reporter.set_service_status("", status(!restart)).await;
            shown = Some(now);
        }
        tokio::select! {
            _ = stop.changed() => {
                // Shutdown set NOT_SERVING; a round that raced it must not undo that.
                set_health(&reporter, ServingStatus::NotServing).await;
                return;
            }
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

pub(super) async fn set_health(
    reporter: &tonic_health::server::HealthReporter,
    status: ServingStatus,
) {
    reporter.set_service_status("", status).await;
    reporter.set_service_status(api::SERVICE_NAME, status).await;
}
