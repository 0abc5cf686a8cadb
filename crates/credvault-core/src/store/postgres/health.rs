//! PostgreSQL's flush, ping and write probe.

use super::*;

impl Health for PgStore {
    async fn flush(&self) -> Result<(), StoreError> {
        // Every statement above committed (synchronous_commit) before it returned.
        Ok(())
    }
    fn write_error(&self) -> Option<String> {
        None
    }
    async fn probe_write(&self, instance: &str) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute(
                "WITH gone AS (DELETE FROM credvault_write_probe
                               WHERE at < now() - interval '10 minutes' AND instance <> $1)
                 INSERT INTO credvault_write_probe (instance, at) VALUES ($1, now())
                 ON CONFLICT (instance) DO UPDATE SET at = EXCLUDED.at",
                &[&instance],
            )
            .await
            .map_err(db)?;
        Ok(())
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.client()
            .await?
            .simple_query("SELECT 1")
            .await
            .map_err(db)?;
        Ok(())
    }
}
