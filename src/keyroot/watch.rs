//! The roots watched while serving: every check renews Transit's token, follows
//! its key versions and asks the HSM; what it found ([`RootState`]) is what
//! readiness shows.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::{RootError, Roots};
use crate::store::Store;

/// What the last check of the roots found, for readiness and the log.
#[derive(Debug, Default)]
pub struct RootState {
    inner: Mutex<StateInner>,
}

#[derive(Debug, Default)]
struct StateInner {
    /// The last check's failure, if it failed.
    failure: Option<String>,
    /// Whether that failure is a refusal (a revoked token) rather than silence.
    denied: bool,
    /// When the roots last confirmed (none: never since start).
    confirmed: Option<Instant>,
}

impl RootState {
    fn lock(&self) -> std::sync::MutexGuard<'_, StateInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a confirmation.
    pub fn confirmed(&self) {
        let mut inner = self.lock();
        inner.failure = None;
        inner.denied = false;
        inner.confirmed = Some(Instant::now());
        crate::metrics::key_root_confirmed();
    }

    /// Records a failed check.
    pub fn failed(&self, error: &RootError) {
        let mut inner = self.lock();
        inner.failure = Some(error.to_string());
        inner.denied = matches!(error, RootError::Denied { .. } | RootError::Fatal { .. });
    }

    fn is_stale(inner: &StateInner, max_unconfirmed: Duration) -> bool {
        !max_unconfirmed.is_zero()
            && inner
                .confirmed
                .is_some_and(|at| at.elapsed() > max_unconfirmed)
    }

    /// Whether the roots have not confirmed for longer than `max_unconfirmed`
    /// (zero: never stale): liveness turns NOT_SERVING, so that a restart drops
    /// the keys held in memory.
    pub fn stale(&self, max_unconfirmed: Duration) -> bool {
        Self::is_stale(&self.lock(), max_unconfirmed)
    }

    /// Why readiness must be NOT_SERVING: the root refused this vault, or has not
    /// confirmed it for longer than `max_unconfirmed` (zero: no bound).
    pub fn unready(&self, max_unconfirmed: Duration) -> Option<String> {
        let inner = self.lock();
        if inner.denied {
            return inner.failure.clone();
        }
        Self::is_stale(&inner, max_unconfirmed).then(|| {
            format!(
                "the key root has not confirmed the master keys for over {}: {}",
                humantime::format_duration(max_unconfirmed),
                inner.failure.as_deref().unwrap_or("no answer")
            )
        })
    }
}

/// Checks the roots every `interval` until `stop`: renews Transit's token, follows
/// its key versions, and records what it found. A root that does not answer
/// changes nothing for reads (the keys are in memory); one that refuses is logged
/// with its cause, and readiness turns NOT_SERVING.
pub async fn watch<S: Store>(
    roots: Arc<Roots>,
    store: Arc<S>,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut was_ok = true;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(interval) => {}
        }
        let checked = match roots.check().await {
            Ok(Some(latest)) => roots.follow(&*store, latest).await.map(|_| ()),
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        match checked {
            Ok(()) => {
                if !was_ok {
                    tracing::info!(roots = %roots.names(), "the key root answers again");
                }
                roots.state.confirmed();
                was_ok = true;
            }
            Err(e) => {
                if was_ok {
                    match &e {
                        RootError::Unreachable { .. } | RootError::Store(_) => tracing::warn!(
                            error = %e,
                            "the key root does not answer: secrets are still served from the master keys held in memory"
                        ),
                        _ => tracing::error!(
                            error = %e,
                            "the key root refuses this vault: readiness is NOT_SERVING until it accepts it again"
                        ),
                    }
                }
                roots.state.failed(&e);
                was_ok = false;
            }
        }
    }
}
