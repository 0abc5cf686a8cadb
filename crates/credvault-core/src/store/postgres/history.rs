//! PostgreSQL's deleted records and erasable keys (a table rows are really deleted from).

use super::*;

impl History for PgStore {
    async fn delete_keeping(
        &self,
        id: &str,
        expected_version: Option<u64>,
        deletion: &crate::store::Deletion,
        stamp: &crate::store::Stamp,
    ) -> Result<CredentialRecord, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let mut record = locked_record(
            &tx,
            "SELECT record FROM credvault_credentials WHERE id = $1 FOR UPDATE",
            id,
        )
        .await?;
        if let Some(expected) = expected_version {
            if record.version != expected {
                return Err(StoreError::VersionMismatch {
                    id: id.to_owned(),
                    expected,
                    actual: record.version,
                });
            }
        }
        record.mark_deleted(
            deletion.delete_time,
            deletion.purge_time,
            &deletion.deleted_by,
        );
        stamp(&mut record);
        tx.execute(
            "INSERT INTO credvault_deleted (id, name, revision, purge_at, record)
             VALUES ($1, $2, $3, $4, $5)",
            &[
                &id,
                &record.name,
                &signed(record.revision),
                &deletion.purge_time.seconds,
                &record.to_bytes(),
            ],
        )
        .await
        .map_err(db)?;
        tx.execute("DELETE FROM credvault_credentials WHERE id = $1", &[&id])
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        let mut items = self.attach(vec![(id.to_owned(), Ok(record))]).await?;
        items
            .pop()
            .map_or_else(|| Err(StoreError::NotFound(id.to_owned())), |(_, r)| r)
    }
    async fn deleted(&self, id: &str) -> Result<Option<CredentialRecord>, StoreError> {
        let row = self
            .client()
            .await?
            .query_opt("SELECT record FROM credvault_deleted WHERE id = $1", &[&id])
            .await
            .map_err(db)?;
        let Some(row) = row else { return Ok(None) };
        let record = decode(id, row.get(0));
        let mut items = self.attach(vec![(id.to_owned(), record)]).await?;
        items.pop().map(|(_, r)| r).transpose()
    }
    async fn list_deleted(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ListItem>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .client()
            .await?
            .query(
                "SELECT id, record FROM credvault_deleted WHERE ($1::text IS NULL OR id > $1)
                 ORDER BY id LIMIT $2",
                &[&after, &limit],
            )
            .await
            .map_err(db)?;
        self.attach(items(&rows)).await
    }
    async fn undelete(
        &self,
        id: &str,
        stamp: &crate::store::Stamp,
    ) -> Result<CredentialRecord, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let mut record = locked_record(
            &tx,
            "SELECT record FROM credvault_deleted WHERE id = $1 FOR UPDATE",
            id,
        )
        .await?;
        record.mark_undeleted();
        stamp(&mut record);
        let inserted = tx
            .execute(
                "INSERT INTO credvault_credentials (id, name, version, revision, record)
                 VALUES ($1, $2, $3, $4, $5)",
                &[
                    &id,
                    &record.name,
                    &signed(record.version),
                    &signed(record.revision),
                    &record.to_bytes(),
                ],
            )
            .await;
        match inserted {
            Ok(_) => {}
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                return Err(StoreError::NameTaken(record.name.clone()))
            }
            Err(e) => return Err(db(e)),
        }
        tx.execute("DELETE FROM credvault_deleted WHERE id = $1", &[&id])
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        let mut items = self.attach(vec![(id.to_owned(), Ok(record))]).await?;
        items
            .pop()
            .map_or_else(|| Err(StoreError::NotFound(id.to_owned())), |(_, r)| r)
    }
    async fn replace_deleted(
        &self,
        record: &CredentialRecord,
        expected_revision: u64,
    ) -> Result<(), StoreError> {
        let updated = self
            .client()
            .await?
            .execute(
                "UPDATE credvault_deleted SET revision = $2, record = $3
                 WHERE id = $1 AND revision = $4",
                &[
                    &record.id,
                    &signed(record.revision),
                    &record.to_bytes(),
                    &signed(expected_revision),
                ],
            )
            .await
            .map_err(db)?;
        match updated {
            1 => Ok(()),
            _ => Err(StoreError::Conflict(record.id.clone())),
        }
    }
    async fn purge(&self, id: &str) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let gone = tx
            .execute("DELETE FROM credvault_deleted WHERE id = $1", &[&id])
            .await
            .map_err(db)?;
        if gone == 0 {
            return Err(StoreError::NotFound(id.to_owned()));
        }
        tx.execute("DELETE FROM credvault_erasable_keys WHERE id = $1", &[&id])
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)
    }
    async fn put_erasable(&self, id: &str, seal_id: u64, key: &[u8; 32]) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute(
                "INSERT INTO credvault_erasable_keys (id, seal, key) VALUES ($1, $2, $3)
                 ON CONFLICT (id, seal) DO UPDATE SET key = EXCLUDED.key",
                &[&id, &seal_column(seal_id), &key.as_slice()],
            )
            .await
            .map_err(db)?;
        Ok(())
    }
    async fn erase(&self, id: &str, seal_ids: &[u64]) -> Result<(), StoreError> {
        let seals: Vec<i64> = seal_ids.iter().map(|s| seal_column(*s)).collect();
        self.client()
            .await?
            .execute(
                "DELETE FROM credvault_erasable_keys WHERE id = $1 AND seal = ANY($2)",
                &[&id, &seals],
            )
            .await
            .map_err(db)?;
        Ok(())
    }
    async fn sweep_erasable(&self, grace: Duration) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let secs = grace.as_secs_f64();
        let ids = client
            .query(
                "SELECT DISTINCT id FROM credvault_erasable_keys
                 WHERE created < now() - make_interval(secs => $1)",
                &[&secs],
            )
            .await
            .map_err(db)?;
        let mut erased = 0;
        for row in ids {
            let id: String = row.get(0);
            let record = match self.get(&id).await {
                Ok(Some(record)) => Some(record),
                Ok(None) => match self.deleted(&id).await {
                    Ok(found) => found,
                    // A damaged record may still be repaired from a backup: keep its keys.
                    Err(StoreError::Corrupt { .. }) => continue,
                    Err(e) => return Err(e),
                },
                Err(StoreError::Corrupt { .. }) => continue,
                Err(e) => return Err(e),
            };
            let referenced: Vec<i64> = record
                .map(|r| r.seal_ids().into_iter().map(seal_column).collect())
                .unwrap_or_default();
            // Keys made within the grace may belong to a write under way (a key is
            // stored before the record that refers to it): never these.
            erased += client
                .execute(
                    "DELETE FROM credvault_erasable_keys
                     WHERE id = $1 AND created < now() - make_interval(secs => $2)
                       AND NOT (seal = ANY($3))",
                    &[&id, &secs, &referenced],
                )
                .await
                .map_err(db)?;
        }
        Ok(erased)
    }
}
