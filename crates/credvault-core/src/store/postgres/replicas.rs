//! What replicas share through PostgreSQL: the audit table and the change feed.

use super::*;

impl Replicas for PgStore {
    fn audit_table(
        self: &std::sync::Arc<Self>,
    ) -> Option<std::sync::Arc<dyn crate::store::AuditTable>> {
        Some(std::sync::Arc::clone(self) as std::sync::Arc<dyn crate::store::AuditTable>)
    }
    fn listen_changes(
        self: &Arc<Self>,
        sink: crate::store::ChangeSink,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        Some(tokio::spawn(Arc::clone(self).listen(sink, stop)))
    }
}

impl PgStore {
    /// Listens for credential writes on a connection of its own, telling `sink`
    /// of each; after every (re)connection, asks for a resync, since writes made
    /// while it was away were not heard. Reconnects with a backoff up to 10 s.
    async fn listen(
        self: Arc<Self>,
        sink: crate::store::ChangeSink,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        use futures_util::StreamExt;
        let mut backoff = Duration::from_millis(100);
        let mut was_down = false;
        loop {
            let (config, tls) = &*self.connect;
            let connected = tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                c = config.connect(tls.clone()) => c,
            };
            let (client, mut connection) = match connected {
                Ok(c) => c,
                Err(e) => {
                    if !was_down {
                        tracing::warn!(error = %db(e), "the change listener cannot reach the database; watchers on this replica hear only its own writes until it can");
                        was_down = true;
                    }
                    tokio::select! {
                        _ = stop.wait_for(|s| *s) => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
            };
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            let ready = {
                let statement = format!("LISTEN {CHANGES_CHANNEL}");
                // The connection must be polled for LISTEN to complete.
                let mut listen = std::pin::pin!(client.batch_execute(&statement));
                loop {
                    tokio::select! {
                        r = &mut listen => break r.map_err(db),
                        m = messages.next() => match m {
                            Some(Ok(_)) => {}
                            Some(Err(e)) => break Err(db(e)),
                            None => break Err(StoreError::Unreachable("the listening connection closed".into())),
                        },
                    }
                }
            };
            if let Err(e) = ready {
                tracing::warn!(error = %e, "the change listener could not LISTEN; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
            if was_down {
                tracing::info!(
                    "the change listener is back: watchers hear other replicas' writes again"
                );
            }
            backoff = Duration::from_millis(100);
            // Writes made while no one listened were not heard.
            sink(crate::store::StoreChange::Resync);
            loop {
                let message = tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    m = messages.next() => m,
                };
                match message {
                    Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                        if let Some(pause) = n.payload().strip_prefix(PAUSE_NOTICE) {
                            if let Some((account, until_ms)) = parse_pause(pause) {
                                sink(crate::store::StoreChange::Pause { account, until_ms });
                            }
                        } else if let Some((id, name)) = n.payload().split_once(' ') {
                            sink(crate::store::StoreChange::Record { id, name });
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::warn!(error = %db(e), "the change listener lost its connection; reconnecting");
                        was_down = true;
                        break;
                    }
                    None => {
                        tracing::warn!("the change listener's connection closed; reconnecting");
                        was_down = true;
                        break;
                    }
                }
            }
            drop(client);
        }
    }
}

/// Reads a pause notice's `<account hex> <until ms>`.
pub(super) fn parse_pause(text: &str) -> Option<([u8; 32], i64)> {
    let (account, until) = text.split_once(' ')?;
    let account = hex::decode(account).ok()?.try_into().ok()?;
    Some((account, until.parse().ok()?))
}
