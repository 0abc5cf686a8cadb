//! PostgreSQL's live records: reads, listings and check-and-set writes that notify
//! the other replicas.

use super::*;

impl Records for PgStore {
    async fn get(&self, id: &str) -> Result<Option<CredentialRecord>, StoreError> {
        let client = self.client().await?;
        // One round trip, one row: the record and its erasable keys.
        let statement = client
            .prepare_cached(
                "SELECT c.record,
                        ARRAY(SELECT k.seal FROM credvault_erasable_keys k WHERE k.id = c.id ORDER BY k.seal),
                        ARRAY(SELECT k.key FROM credvault_erasable_keys k WHERE k.id = c.id ORDER BY k.seal)
                 FROM credvault_credentials c WHERE c.id = $1",
            )
            .await
            .map_err(db)?;
        let Some(row) = client.query_opt(&statement, &[&id]).await.map_err(db)? else {
            return Ok(None);
        };
        let mut record = decode(id, row.get(0))?;
        let (seals, keys): (Vec<i64>, Vec<Vec<u8>>) = (row.get(1), row.get(2));
        record.erasable = seals
            .into_iter()
            .zip(keys)
            .map(|(s, key)| crate::record::ErasableKey {
                seal_id: seal_id(s),
                key,
            })
            .collect();
        Ok(Some(record))
    }
    async fn id_for_name(&self, name: &str) -> Result<Option<String>, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached("SELECT id FROM credvault_credentials WHERE name = $1")
            .await
            .map_err(db)?;
        let row = client.query_opt(&statement, &[&name]).await.map_err(db)?;
        Ok(row.map(|r| r.get(0)))
    }
    async fn list(&self, after: Option<&str>, limit: usize) -> Result<Vec<ListItem>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let client = self.client().await?;
        // Two statements, so each page is an index range scan (a generic plan of
        // `$1 IS NULL OR id > $1` cannot use the primary key).
        let rows = match after {
            Some(after) => {
                let statement = client
                    .prepare_cached(
                        "SELECT id, record FROM credvault_credentials WHERE id > $1 ORDER BY id LIMIT $2",
                    )
                    .await
                    .map_err(db)?;
                client.query(&statement, &[&after, &limit]).await
            }
            None => {
                let statement = client
                    .prepare_cached(
                        "SELECT id, record FROM credvault_credentials ORDER BY id LIMIT $1",
                    )
                    .await
                    .map_err(db)?;
                client.query(&statement, &[&limit]).await
            }
        }
        .map_err(db)?;
        self.attach(items(&rows)).await
    }
    async fn count(&self) -> Result<usize, StoreError> {
        let row = self
            .client()
            .await?
            .query_one("SELECT count(*) FROM credvault_credentials", &[])
            .await
            .map_err(db)?;
        Ok(row.get::<_, i64>(0) as usize)
    }
    async fn insert(&self, record: &CredentialRecord) -> Result<(), StoreError> {
        let result = self
            .client()
            .await?
            .execute(
                "INSERT INTO credvault_credentials (id, name, version, revision, record)
                 VALUES ($1, $2, $3, $4, $5)",
                &[
                    &record.id,
                    &record.name,
                    &signed(record.version),
                    &signed(record.revision),
                    &record.to_bytes(),
                ],
            )
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                Err(StoreError::NameTaken(record.name.clone()))
            }
            Err(e) => Err(db(e)),
        }
    }
    async fn replace(
        &self,
        record: &CredentialRecord,
        expected_revision: u64,
    ) -> Result<(), StoreError> {
        let updated = self
            .client()
            .await?
            .execute(
                "UPDATE credvault_credentials SET version = $2, revision = $3, record = $4
                 WHERE id = $1 AND revision = $5",
                &[
                    &record.id,
                    &signed(record.version),
                    &signed(record.revision),
                    &record.to_bytes(),
                    &signed(expected_revision),
                ],
            )
            .await
            .map_err(db)?;
        if updated == 1 {
            return Ok(());
        }
        match self.exists(&record.id).await? {
            None => Err(StoreError::NotFound(record.id.clone())),
            Some(_) => Err(StoreError::Conflict(record.id.clone())),
        }
    }
    async fn delete(&self, id: &str, expected_version: Option<u64>) -> Result<(), StoreError> {
        let expected = expected_version.map(signed);
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let deleted = tx
            .execute(
                "DELETE FROM credvault_credentials
                 WHERE id = $1 AND ($2::bigint IS NULL OR version = $2)",
                &[&id, &expected],
            )
            .await
            .map_err(db)?;
        if deleted == 1 {
            tx.execute("DELETE FROM credvault_erasable_keys WHERE id = $1", &[&id])
                .await
                .map_err(db)?;
            tx.commit().await.map_err(db)?;
            return Ok(());
        }
        drop(tx);
        match (self.exists(id).await?, expected_version) {
            (Some((actual, _)), Some(expected)) => Err(StoreError::VersionMismatch {
                id: id.to_owned(),
                expected,
                actual,
            }),
            _ => Err(StoreError::NotFound(id.to_owned())),
        }
    }
}
