//! The one reader of the feed ([`run_hub`]): each changed credential read once, in
//! the order changes come, and offered to every stream watching it.

use super::*;

/// The hub's reader: reads each changed or refreshed credential once and offers
/// it to its watchers; resyncs every `resync_interval`; stops with `stop`.
pub async fn run_hub<S: Store>(
    vault: Arc<Vault<S>>,
    resync_interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let hub = Arc::clone(vault.hub());
    let resync_interval = resync_interval.max(Duration::from_millis(100));
    let mut next_resync = tokio::time::Instant::now() + resync_interval;
    let mut failed: Vec<Work> = Vec::new();
    let mut retry_at: Option<tokio::time::Instant> = None;
    loop {
        let wake = hub.wake.notified();
        let work = hub.take_pending();
        if work.is_empty() {
            let retry = async {
                match retry_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.changed() => return,
                () = wake => {}
                () = tokio::time::sleep_until(next_resync) => {
                    next_resync = tokio::time::Instant::now() + resync_interval;
                    hub.resync();
                    // A pause notification lost with a shared store is caught here too.
                    if let Err(e) = vault.resync_pauses().await {
                        tracing::warn!(error = %e, "the pauses of provider accounts could not be read");
                    }
                }
                () = retry => {
                    retry_at = None;
                    hub.requeue(std::mem::take(&mut failed));
                }
            }
            continue;
        }
        for item in work {
            match read_and_offer(&vault, &hub, &item).await {
                Ok(()) => {}
                // A record refused as replayed (the vault logged it): nothing is
                // pushed; the next change or resync reads it again.
                Err(Error::DataLoss(_)) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "a watched credential could not be read; trying again shortly");
                    failed.push(item);
                    retry_at
                        .get_or_insert_with(|| tokio::time::Instant::now() + RETRY_AFTER_FAILURE);
                }
            }
        }
    }
}

/// The credential `key` names now, if any.
pub(super) async fn read_key<S: Store>(
    vault: &Vault<S>,
    key: &Key,
) -> Result<Option<Arc<CredentialRecord>>, Error> {
    match key {
        Key::Id(id) => vault.peek(id).await,
        Key::Name(name) => match vault.peek_name(name).await? {
            Some(id) => vault.peek(&id).await,
            None => Ok(None),
        },
    }
}

pub(super) async fn read_and_offer<S: Store>(
    vault: &Vault<S>,
    hub: &Hub,
    work: &Work,
) -> Result<(), Error> {
    match work {
        Work::Changed(id, name) => {
            match vault.peek(id).await? {
                Some(record) => {
                    let keys = [Key::Id(id.clone()), Key::Name(record.name.clone())];
                    offer(vault, hub, &keys, &Seen::Present(record));
                }
                None => {
                    let keys = [Key::Id(id.clone()), Key::Name(name.clone())];
                    offer(vault, hub, &keys, &Seen::Gone(id.clone()));
                }
            }
            metrics::watch_read("change");
        }
        Work::Refresh(key) => {
            let seen = match (read_key(vault, key).await?, key) {
                (Some(record), _) => Seen::Present(record),
                (None, Key::Id(id)) => Seen::Gone(id.clone()),
                (None, Key::Name(_)) => Seen::Absent,
            };
            offer(vault, hub, std::slice::from_ref(key), &seen);
            metrics::watch_read("refresh");
        }
        Work::Account(account) => {
            // Only the keys last read as this account's: each read again, offered
            // with the pause (the streams look it up as they render).
            for key in hub.keys_of(account) {
                if let Some(record) = read_key(vault, &key).await? {
                    offer(
                        vault,
                        hub,
                        std::slice::from_ref(&key),
                        &Seen::Present(record),
                    );
                }
                metrics::watch_read("pause");
            }
        }
    }
    Ok(())
}
