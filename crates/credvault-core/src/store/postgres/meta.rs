//! PostgreSQL's metadata entries and seal reservations.

use super::*;

impl Meta for PgStore {
    async fn meta(&self, prefix: &str) -> Result<Entries, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT key, value FROM credvault_meta WHERE starts_with(key, $1) ORDER BY key",
                &[&prefix],
            )
            .await
            .map_err(db)?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
    async fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute(
                "INSERT INTO credvault_meta (key, value) VALUES ($1, $2)
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                &[&key, &value],
            )
            .await
            .map_err(db)?;
        Ok(())
    }
    async fn remove_meta(&self, key: &str) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute("DELETE FROM credvault_meta WHERE key = $1", &[&key])
            .await
            .map_err(db)?;
        Ok(())
    }
    async fn reserve_seals(&self, key_id: &str, count: u64) -> Result<u64, StoreError> {
        let row = self
            .client()
            .await?
            .query_one(
                "INSERT INTO credvault_seals (key_id, reserved) VALUES ($1, $2)
                 ON CONFLICT (key_id) DO UPDATE SET reserved = credvault_seals.reserved + $2
                 RETURNING reserved",
                &[&key_id, &signed(count)],
            )
            .await
            .map_err(db)?;
        Ok(row.get::<_, i64>(0) as u64)
    }
    async fn seal_reservations(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let rows = self
            .client()
            .await?
            .query("SELECT key_id, reserved FROM credvault_seals", &[])
            .await
            .map_err(db)?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get::<_, i64>(1) as u64))
            .collect())
    }
}
