//! Shutdown in order: health turns NOT_SERVING and background work is told to stop
//! at once; listeners keep serving through the drain delay (load balancers see the
//! change first), then stop accepting; in-flight calls get the grace period; last,
//! what is still in memory is written (last uses, the trail's closing digest) and
//! the store flushed.

use super::*;

/// The senders that carry a shutdown to the rest of the server.
pub(super) struct Signals {
    /// Turns true when shutdown is asked for: background tasks end.
    pub(super) stop: tokio::sync::watch::Sender<bool>,
    /// Turns true after the drain delay: the health-only port closes.
    pub(super) drained: tokio::sync::watch::Sender<bool>,
    /// Fires when the listeners stop accepting: the grace period starts.
    pub(super) began: tokio::sync::oneshot::Sender<()>,
}

/// What the gRPC listener waits for before it stops accepting: `shutdown`, then
/// health NOT_SERVING and `stop` sent, then the drain delay.
pub(super) async fn signal(
    shutdown: impl Future<Output = ()>,
    reporter: HealthReporter,
    signals: Signals,
    drain_delay: Duration,
) {
    shutdown.await;
    set_health(&reporter, ServingStatus::NotServing).await;
    let _ = signals.stop.send(true);
    tracing::info!(drain_delay = ?drain_delay, "shutdown requested: health is NOT_SERVING; still serving during the drain delay");
    tokio::time::sleep(drain_delay).await;
    let _ = signals.drained.send(true);
    tracing::info!("no longer accepting connections; finishing in-flight calls");
    let _ = signals.began.send(());
}

/// Resolves `grace` after the listeners stopped accepting (never, if they did not).
pub(super) async fn drain_deadline(began: tokio::sync::oneshot::Receiver<()>, grace: Duration) {
    if began.await.is_ok() {
        tokio::time::sleep(grace).await;
    } else {
        std::future::pending::<()>().await;
    }
}

impl<S: Store> Services<S> {
    /// After the listeners stopped: waits for the background tasks, then writes
    /// last uses, withdraws this server's key announcement, closes the trail
    /// with its digest and flushes the store.
    pub(super) async fn close(
        self,
        tasks: Vec<tokio::task::JoinHandle<()>>,
    ) -> Result<(), ServeError> {
        for task in tasks {
            if task.await.is_err() {
                tracing::error!("a background task failed");
            }
        }
        if let Err(e) = self.vault.flush_usage().await {
            tracing::warn!(error = %e, "last uses could not be recorded at shutdown");
        }
        if let Err(e) = keys::withdraw_active(&*self.store, self.vault.instance()).await {
            tracing::warn!(error = %e, "the active-key announcement could not be withdrawn");
        }
        // The closing digest: a trail that ends with it was not cut short.
        if !self.audit.close().await {
            tracing::error!("the audit log could not be flushed at shutdown");
        }
        self.store.flush().await?;
        tracing::info!("store flushed; stopped");
        Ok(())
    }
}
