//! sled's flush, sticky write errors and restart check; a store one process writes
//! has no replicas to tell.

use super::*;

impl Health for SledStore {
    async fn flush(&self) -> Result<(), StoreError> {
        self.durable().await
    }
    async fn needs_restart(&self) -> bool {
        if self.write_error().is_none() {
            return false;
        }
        // sled keeps its first I/O error for good; a new process opens it afresh.
        let probe = self
            .dir
            .parent()
            .unwrap_or(&self.dir)
            .join(".credvault-write-probe");
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let written = std::fs::File::create(&probe)
                .and_then(|mut f| f.write_all(&[0u8; 4096]).and_then(|()| f.sync_all()));
            let _ = std::fs::remove_file(&probe);
            written.is_ok()
        })
        .await
        .unwrap_or(false)
    }
    fn write_error(&self) -> Option<String> {
        self.write_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl Replicas for SledStore {}
