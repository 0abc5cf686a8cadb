//! PostgreSQL's last uses of credentials.

use super::*;

impl Usages for PgStore {
    async fn usage(&self, id: &str) -> Result<Option<Usage>, StoreError> {
        let row = self
            .client()
            .await?
            .query_opt("SELECT value FROM credvault_usage WHERE id = $1", &[&id])
            .await
            .map_err(db)?;
        // Usage is advisory: an unreadable entry reads as none.
        Ok(row.and_then(|r| prost::Message::decode(r.get::<_, &[u8]>(0)).ok()))
    }
    async fn usages(
        &self,
        ids: &[String],
    ) -> Result<std::collections::HashMap<String, Usage>, StoreError> {
        if ids.is_empty() {
            return Ok(std::collections::HashMap::new());
        }
        let rows = self
            .client()
            .await?
            .query(
                "SELECT id, value FROM credvault_usage WHERE id = ANY($1)",
                &[&ids],
            )
            .await
            .map_err(db)?;
        // Usage is advisory: an unreadable entry reads as none.
        Ok(rows
            .iter()
            .filter_map(|r| {
                let usage = prost::Message::decode(r.get::<_, &[u8]>(1)).ok()?;
                Some((r.get::<_, String>(0), usage))
            })
            .collect())
    }
    async fn record_usage(&self, batch: &[(String, Usage)]) -> Result<(), StoreError> {
        let ids: Vec<&str> = batch.iter().map(|(id, _)| id.as_str()).collect();
        let values: Vec<Vec<u8>> = batch
            .iter()
            .map(|(_, u)| prost::Message::encode_to_vec(u))
            .collect();
        // Ids no longer stored are skipped by the join.
        self.client()
            .await?
            .execute(
                "INSERT INTO credvault_usage (id, value)
                 SELECT u.id, u.value FROM unnest($1::text[], $2::bytea[]) AS u(id, value)
                 JOIN credvault_credentials c ON c.id = u.id
                 ON CONFLICT (id) DO UPDATE SET value = EXCLUDED.value",
                &[&ids, &values],
            )
            .await
            .map_err(db)?;
        Ok(())
    }
}
