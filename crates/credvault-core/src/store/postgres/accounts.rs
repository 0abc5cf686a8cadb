//! PostgreSQL's pauses and request budgets, shared by every replica.

use super::*;

impl Accounts for PgStore {
    async fn put_pause(
        &self,
        account: &[u8; 32],
        until_ms: i64,
    ) -> Result<Option<i64>, StoreError> {
        let account = account.as_slice();
        let notice = format!("{PAUSE_NOTICE}{} ", hex::encode(account));
        // The row and the notification commit together; expired rows are reused.
        let row = self
            .client()
            .await?
            .query_one(
                "WITH up AS (
                     INSERT INTO credvault_pauses AS p (account, until_ms) VALUES ($1, $2)
                     ON CONFLICT (account) DO UPDATE SET until_ms = GREATEST(p.until_ms, EXCLUDED.until_ms)
                     RETURNING until_ms
                 )
                 SELECT until_ms, pg_notify('credvault_changes', $3 || until_ms::text) FROM up",
                &[&account, &until_ms, &notice],
            )
            .await
            .map_err(db)?;
        Ok(Some(row.get(0)))
    }
    async fn pauses(&self, now_ms: i64) -> Result<Vec<([u8; 32], i64)>, StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "DELETE FROM credvault_pauses WHERE until_ms <= $1",
                &[&now_ms],
            )
            .await
            .map_err(db)?;
        let rows = client
            .query("SELECT account, until_ms FROM credvault_pauses", &[])
            .await
            .map_err(db)?;
        Ok(rows
            .iter()
            .filter_map(|r| Some((r.get::<_, &[u8]>(0).try_into().ok()?, r.get(1))))
            .collect())
    }
    async fn take_budget(
        &self,
        account: &[u8; 32],
        window_start_ms: i64,
        want: u32,
        limit: u32,
    ) -> Result<Option<u32>, StoreError> {
        let (want, limit) = (i64::from(want), i64::from(limit));
        // One statement under the row's lock: replicas never grant past the limit.
        // A row of an older window starts over; a replica whose clock runs behind
        // counts in the newer window it finds.
        let row = self
            .client()
            .await?
            .query_one(
                "INSERT INTO credvault_budgets AS b (account, window_start_ms, granted, last_grant)
                 VALUES ($1, $2::bigint, LEAST($3::bigint, $4::bigint), LEAST($3::bigint, $4::bigint))
                 ON CONFLICT (account) DO UPDATE SET
                     last_grant = CASE WHEN b.window_start_ms >= $2
                         THEN LEAST($3, GREATEST($4 - b.granted, 0)) ELSE LEAST($3, $4) END,
                     granted = CASE WHEN b.window_start_ms >= $2
                         THEN b.granted + LEAST($3, GREATEST($4 - b.granted, 0)) ELSE LEAST($3, $4) END,
                     window_start_ms = GREATEST(b.window_start_ms, $2)
                 RETURNING last_grant",
                &[&account.as_slice(), &window_start_ms, &want, &limit],
            )
            .await
            .map_err(db)?;
        Ok(Some(u32::try_from(row.get::<_, i64>(0)).unwrap_or(0)))
    }
}
