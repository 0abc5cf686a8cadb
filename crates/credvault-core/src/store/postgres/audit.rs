//! The audit table every replica appends its trail to, read back and pruned in batches.

use super::*;

/// Events deleted per statement when pruning (short transactions, no long locks).
const PRUNE_BATCH: i64 = 10_000;

impl crate::store::AuditTable for PgStore {
    fn append_audit(
        &self,
        rows: Vec<crate::store::AuditRow>,
    ) -> crate::store::BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            if rows.is_empty() {
                return Ok(());
            }
            let mut times = Vec::with_capacity(rows.len());
            let (mut callers, mut ids, mut names, mut lines) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            let (mut chains, mut seqs, mut proofs) = (Vec::new(), Vec::new(), Vec::new());
            for row in rows {
                times.push(row.time);
                callers.push(row.caller);
                ids.push(row.credential_id);
                names.push(row.credential_name);
                lines.push(row.line);
                chains.push(row.chain);
                seqs.push(row.chain_seq);
                proofs.push(row.proof);
            }
            // One statement for the group, in the order the events were recorded.
            self.client()
                .await?
                .execute(
                    "INSERT INTO credvault_audit (time, caller, credential_id, credential_name, event, chain, chain_seq, proof)
                     SELECT time, caller, credential_id, credential_name, event, chain, chain_seq, proof
                     FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::text[],
                                 $6::text[], $7::bigint[], $8::boolean[])
                     WITH ORDINALITY AS r(time, caller, credential_id, credential_name, event, chain, chain_seq, proof, n)
                     ORDER BY n",
                    &[&times, &callers, &ids, &names, &lines, &chains, &seqs, &proofs],
                )
                .await
                .map_err(db)?;
            Ok(())
        })
    }

    fn list_audit(
        &self,
        filter: crate::store::AuditFilter,
        after: i64,
        limit: usize,
    ) -> crate::store::BoxFuture<'_, Result<Vec<(i64, String)>, StoreError>> {
        Box::pin(async move {
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = self
                .client()
                .await?
                .query(
                    "SELECT seq, event FROM credvault_audit
                     WHERE seq > $1 AND ($8 OR NOT proof)
                       AND ($2::text IS NULL OR credential_id = $2)
                       AND ($3::text IS NULL OR credential_name = $3)
                       AND ($4::text IS NULL OR caller = $4)
                       AND ($5::timestamptz IS NULL OR time >= $5)
                       AND ($6::timestamptz IS NULL OR time < $6)
                     ORDER BY seq LIMIT $7",
                    &[
                        &after,
                        &filter.credential_id,
                        &filter.credential_name,
                        &filter.caller,
                        &filter.start,
                        &filter.end,
                        &limit,
                        &filter.proofs,
                    ],
                )
                .await
                .map_err(db)?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }

    fn prune_audit(
        &self,
        before: std::time::SystemTime,
    ) -> crate::store::BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            let client = self.client().await?;
            let mut pruned = 0;
            loop {
                let n = client
                    .execute(
                        // Each chain keeps its last digest from before the cutoff and
                        // what follows: a signed checkpoint the rest verifies from.
                        "DELETE FROM credvault_audit WHERE seq IN (
                             SELECT a.seq FROM credvault_audit a
                             WHERE a.time < $1
                               AND (a.chain = '' OR a.chain_seq < (
                                   SELECT max(d.chain_seq) FROM credvault_audit d
                                   WHERE d.proof AND d.chain = a.chain AND d.time < $1
                                     AND d.event LIKE '{\"kind\":\"digest\"%'))
                             ORDER BY a.seq LIMIT $2)",
                        &[&before, &PRUNE_BATCH],
                    )
                    .await
                    .map_err(db)?;
                pruned += n;
                if n < PRUNE_BATCH as u64 {
                    return Ok(pruned);
                }
            }
        })
    }

    fn probe_audit(&self) -> crate::store::BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(db)?;
            tx.execute(
                "INSERT INTO credvault_audit (time, caller, credential_id, credential_name, event)
                 VALUES (now(), '', '', '', '{}')",
                &[],
            )
            .await
            .map_err(db)?;
            tx.rollback().await.map_err(db)
        })
    }
}
