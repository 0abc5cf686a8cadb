//! PostgreSQL's snapshots (one repeatable-read transaction) and restores.

use super::*;

impl Backups for PgStore {
    async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let mut client = self.client().await?;
        // One repeatable-read transaction sees one instant; writers are not blocked.
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(db)?;
        let entries = |rows: Vec<tokio_postgres::Row>| -> Entries {
            rows.iter().map(|r| (r.get(0), r.get(1))).collect()
        };
        let records = tx
            .query(
                "SELECT id, record FROM credvault_credentials ORDER BY id",
                &[],
            )
            .await
            .map_err(db)?;
        let mut meta = entries(
            tx.query("SELECT key, value FROM credvault_meta ORDER BY key", &[])
                .await
                .map_err(db)?,
        );
        for row in tx
            .query("SELECT key_id, reserved FROM credvault_seals", &[])
            .await
            .map_err(db)?
        {
            let (id, reserved): (String, i64) = (row.get(0), row.get(1));
            meta.push((
                format!("{}{id}", crate::store::SEALS_META_PREFIX),
                (reserved as u64).to_be_bytes().to_vec(),
            ));
        }
        let usage = tx
            .query("SELECT id, value FROM credvault_usage ORDER BY id", &[])
            .await
            .map_err(db)?;
        let deleted = tx
            .query("SELECT id, record FROM credvault_deleted ORDER BY id", &[])
            .await
            .map_err(db)?;
        let keys = tx
            .query("SELECT id, seal, key FROM credvault_erasable_keys", &[])
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        let mut erasable: Entries = keys
            .iter()
            .map(|r| {
                let id: String = r.get(0);
                (
                    crate::store::erasable_entry_key(&id, seal_id(r.get(1))),
                    r.get(2),
                )
            })
            .collect();
        erasable.sort();
        Ok(Snapshot {
            records: entries(records),
            meta,
            usage: entries(usage),
            deleted: entries(deleted),
            erasable,
        })
    }
    async fn restore(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let held: i64 = tx
            .query_one(
                "SELECT (SELECT count(*) FROM credvault_credentials) + (SELECT count(*) FROM credvault_meta)
                      + (SELECT count(*) FROM credvault_deleted)",
                &[],
            )
            .await
            .map_err(db)?
            .get(0);
        if held > 0 {
            return Err(StoreError::NotEmpty);
        }
        for (id, bytes) in &snapshot.records {
            // A record damaged before the snapshot cannot be indexed by name; it is skipped.
            let Ok(record) = decode(id, bytes) else {
                continue;
            };
            tx.execute(
                "INSERT INTO credvault_credentials (id, name, version, revision, record)
                 VALUES ($1, $2, $3, $4, $5)",
                &[
                    id,
                    &record.name,
                    &signed(record.version),
                    &signed(record.revision),
                    bytes,
                ],
            )
            .await
            .map_err(db)?;
        }
        for (key, value) in &snapshot.meta {
            if let Some(id) = key.strip_prefix(crate::store::SEALS_META_PREFIX) {
                let reserved = <[u8; 8]>::try_from(value.as_slice())
                    .map(u64::from_be_bytes)
                    .unwrap_or(u64::MAX >> 1);
                tx.execute(
                    "INSERT INTO credvault_seals (key_id, reserved) VALUES ($1, $2)",
                    &[&id, &signed(reserved)],
                )
                .await
                .map_err(db)?;
            } else {
                tx.execute(
                    "INSERT INTO credvault_meta (key, value) VALUES ($1, $2)",
                    &[key, value],
                )
                .await
                .map_err(db)?;
            }
        }
        for (id, value) in &snapshot.usage {
            tx.execute(
                "INSERT INTO credvault_usage (id, value)
                 SELECT $1, $2 WHERE EXISTS (SELECT 1 FROM credvault_credentials WHERE id = $1)",
                &[id, value],
            )
            .await
            .map_err(db)?;
        }
        for (id, bytes) in &snapshot.deleted {
            let Ok(record) = decode(id, bytes) else {
                continue;
            };
            let purge_at = record.purge_time.map_or(0, |t| t.seconds);
            tx.execute(
                "INSERT INTO credvault_deleted (id, name, revision, purge_at, record)
                 VALUES ($1, $2, $3, $4, $5)",
                &[id, &record.name, &signed(record.revision), &purge_at, bytes],
            )
            .await
            .map_err(db)?;
        }
        for (key, value) in &snapshot.erasable {
            let Some((id, seal)) = crate::store::parse_erasable_entry_key(key) else {
                return Err(StoreError::Corrupt {
                    id: key.clone(),
                    reason: "not an erasable key".into(),
                });
            };
            tx.execute(
                "INSERT INTO credvault_erasable_keys (id, seal, key) VALUES ($1, $2, $3)",
                &[&id, &seal_column(seal), value],
            )
            .await
            .map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
        Ok(())
    }
}
