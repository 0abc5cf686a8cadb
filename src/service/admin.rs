//! Whole-store operations: rewrap under the active master key, and backup.

use super::*;

impl<S: Store> VaultService<S> {
    /// Starts a rewrap in the background; its progress streams to the caller.
    pub(super) async fn rewrap(
        &self,
        call: Arc<Call>,
        req: api::RewrapCredentialsRequest,
    ) -> Result<ReceiverStream<Result<api::RewrapCredentialsResponse, Status>>, Error> {
        require_unscoped(&call, "a rewrap")?;
        let batch = match req.batch_size {
            0 => 100,
            n @ 1..=1000 => n as usize,
            n => {
                return Err(Error::invalid(format!(
                    "batch_size must be 1 to 1000 (or 0 for 100), not {n}"
                )))
            }
        };
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let vault = Arc::clone(&self.vault);
        let caller = call.caller.name.clone();
        tokio::spawn(async move {
            let progress_tx = tx.clone();
            let outcome = vault
                .rewrap(batch, |p| {
                    // A slow reader misses some progress messages, never the last.
                    !matches!(
                        progress_tx.try_send(Ok(rewrap_to_api(p))),
                        Err(tokio::sync::mpsc::error::TrySendError::Closed(_))
                    )
                })
                .await;
            let last = match outcome {
                Ok(report) => {
                    tracing::info!(
                        caller,
                        scanned = report.progress.scanned,
                        rewrapped = report.progress.rewrapped,
                        failed = report.progress.failed.len(),
                        active_key_id = %report.active_key_id,
                        key_ids = ?report.referenced,
                        retired = ?report.retired,
                        "rewrap finished"
                    );
                    let mut last = rewrap_to_api(&report.progress);
                    last.done = true;
                    last.active_key_id = report.active_key_id;
                    last.key_id_credentials = report.referenced.into_iter().collect();
                    last.retired_key_ids = report.retired;
                    match crate::keyroot::key_sources(&**vault.store(), &vault.keyring()).await {
                        Ok(sources) => last.key_sources = sources.into_iter().collect(),
                        Err(e) => {
                            tracing::warn!(error = %e, "the master keys' sources could not be read")
                        }
                    }
                    Ok(last)
                }
                Err(e) => {
                    tracing::warn!(caller, error = %e, "rewrap stopped");
                    Err(convert::status(e))
                }
            };
            let _ = tx.send(last).await;
        });
        Ok(ReceiverStream::new(rx))
    }

    /// Takes a consistent snapshot and streams it as a backup file.
    pub(super) async fn backup(
        &self,
        call: Arc<Call>,
        _req: api::BackupVaultRequest,
    ) -> Result<BackupStream, Error> {
        require_unscoped(&call, "a backup")?;
        let snapshot = self.vault.snapshot().await?;
        let credentials = snapshot.records.len();
        let keyring = self.vault.keyring();
        let bytes =
            tokio::task::spawn_blocking(move || crate::backup::encode(snapshot, keyring.active()))
                .await
                .map_err(|e| Error::Internal(format!("backup encoding task failed: {e}")))?;
        tracing::info!(
            caller = %call.caller.name,
            credentials,
            bytes = bytes.len(),
            "backup snapshot taken"
        );
        let chunks: Vec<_> = bytes
            .chunks(BACKUP_CHUNK)
            .map(|c| Ok(api::BackupVaultResponse { chunk: c.to_vec() }))
            .collect();
        Ok(tokio_stream::iter(chunks))
    }
}

/// The size of the chunks a backup streams in.
pub(super) const BACKUP_CHUNK: usize = 64 * 1024;

pub(super) type BackupStream =
    tokio_stream::Iter<std::vec::IntoIter<Result<api::BackupVaultResponse, Status>>>;

pub(super) fn rewrap_to_api(p: &crate::keys::RewrapProgress) -> api::RewrapCredentialsResponse {
    api::RewrapCredentialsResponse {
        total: p.total,
        scanned: p.scanned,
        rewrapped: p.rewrapped,
        failed_credential_ids: p.failed.clone(),
        ..Default::default()
    }
}
