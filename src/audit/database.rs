//! The database device: a task inserts each group of events in one statement, links
//! them into the replica's chain and signs its digests.

use super::*;

/// The database device.
pub(super) struct DbSink {
    pub(super) tx: tokio::sync::mpsc::Sender<DbCommand>,
    pub(super) healthy: Arc<DbHealth>,
    pub(super) table: Arc<dyn AuditTable>,
}

/// Whether the database device took its last group, and whether a write hangs.
#[derive(Debug)]
pub(super) struct DbHealth {
    pub(super) ok: AtomicBool,
    /// When the write under way began (ms after `epoch`, plus one); 0: none.
    pub(super) writing_since: std::sync::atomic::AtomicU64,
    pub(super) epoch: Instant,
}

/// A write to the database trail that has not come back in this long counts as stuck.
pub(super) const DB_WRITE_STUCK: Duration = Duration::from_secs(10);

impl DbHealth {
    pub(super) fn new() -> Self {
        DbHealth {
            ok: AtomicBool::new(true),
            writing_since: Default::default(),
            epoch: Instant::now(),
        }
    }

    pub(super) fn swap(&self, ok: bool, order: Ordering) -> bool {
        self.ok.swap(ok, order)
    }

    pub(super) fn writing(&self, yes: bool) {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1;
        self.writing_since
            .store(if yes { now } else { 0 }, Ordering::Release);
    }

    /// Took its last group, and no write has hung for [`DB_WRITE_STUCK`].
    pub(super) fn load(&self, order: Ordering) -> bool {
        let since = self.writing_since.load(Ordering::Acquire);
        let hung = since != 0
            && self.epoch.elapsed().as_millis() > u128::from(since) + DB_WRITE_STUCK.as_millis();
        self.ok.load(order) && !hung
    }
}

pub(super) enum DbCommand {
    Row {
        row: AuditRow,
        done: Option<tokio::sync::oneshot::Sender<bool>>,
    },
    Flush(tokio::sync::oneshot::Sender<bool>),
    /// The closing digest, then as `Flush`.
    Close(tokio::sync::oneshot::Sender<bool>),
    /// A signed checkpoint (every mark, a digest) after old events were pruned.
    Checkpoint,
}

/// A row on its way to the database: an event, or the chain's own (marks; a
/// digest, signed when it is linked).
#[derive(Clone, Debug)]
pub(super) struct DbItem {
    pub(super) row: AuditRow,
    pub(super) digest: Option<DigestReason>,
}

impl DbItem {
    pub(super) fn proof(body: String, digest: Option<DigestReason>) -> Self {
        DbItem {
            row: AuditRow {
                time: SystemTime::now(),
                caller: String::new(),
                credential_id: String::new(),
                credential_name: String::new(),
                line: body,
                chain: String::new(),
                chain_seq: 0,
                proof: true,
            },
            digest,
        }
    }
}

/// A device's chain, and what it needs to write digests.
pub(super) struct Proof {
    pub(super) chain: Chain,
    pub(super) signer: Arc<Signer>,
    pub(super) policy: DigestPolicy,
    pub(super) marks: Option<Arc<Marks>>,
    /// The marks' generation this device's trail has recorded up to.
    pub(super) marks_recorded: u64,
}

impl Proof {
    pub(super) fn new(chain: Chain, signer: Arc<Signer>, settings: &AuditSettings) -> Self {
        Proof {
            chain,
            signer,
            policy: settings.digests,
            marks: settings.marks.clone(),
            marks_recorded: 0,
        }
    }

    /// The `marks` lines due before a digest (every mark with `full`, else those
    /// changed since this device last recorded them) and the generation they reach.
    pub(super) fn marks_bodies(&self, full: bool) -> (Vec<String>, u64) {
        let Some(marks) = &self.marks else {
            return (Vec::new(), self.marks_recorded);
        };
        let (marks, reached) = marks.changed_since(if full { 0 } else { self.marks_recorded });
        (crate::trail::marks_bodies(&marks, full), reached)
    }
}

impl DbSink {
    pub(super) fn start(
        table: Arc<dyn AuditTable>,
        settings: &AuditSettings,
        signer: Arc<Signer>,
    ) -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel(settings.queue.max(1));
        let healthy = Arc::new(DbHealth::new());
        // One chain per replica and start: replicas write the table side by side.
        let proof = Proof::new(Chain::new(), signer, settings);
        tokio::spawn(db_writer(
            Arc::clone(&table),
            rx,
            Arc::clone(&healthy),
            proof,
        ));
        DbSink { tx, healthy, table }
    }

    pub(super) async fn send(
        &self,
        row: AuditRow,
        done: Option<tokio::sync::oneshot::Sender<bool>>,
    ) -> bool {
        // The bounded channel makes callers wait while the database is slow.
        self.tx.send(DbCommand::Row { row, done }).await.is_ok()
    }

    pub(super) async fn flush(&self) -> bool {
        let (done, wait) = tokio::sync::oneshot::channel();
        if self.tx.send(DbCommand::Flush(done)).await.is_err() {
            return false;
        }
        wait.await.unwrap_or(false)
    }

    pub(super) async fn close(&self) -> bool {
        let (done, wait) = tokio::sync::oneshot::channel();
        if self.tx.send(DbCommand::Close(done)).await.is_err() {
            return false;
        }
        wait.await.unwrap_or(false)
    }
}

/// Rows inserted per statement at most.
pub(super) const DB_GROUP: usize = 1000;

/// Inserts the queued rows in groups, and tells each secret read's waiter whether
/// its row was committed. A row the database refuses for its own values (see
/// [`crate::store::write_isolating`]) is set aside with a log line and a metric;
/// the rest of its group is written and the trail stays healthy. A group that
/// failed for the database (an outage) keeps its other rows (up to the queue's
/// size) to try again with the next group, or every half second; the rows of
/// secret reads that were refused for it are not (their secret never went out).
pub(super) async fn db_writer(
    table: Arc<dyn AuditTable>,
    mut rx: tokio::sync::mpsc::Receiver<DbCommand>,
    healthy: Arc<DbHealth>,
    proof: Proof,
) {
    let proof = Mutex::new(proof);
    let mut pending: Vec<DbItem> = digest_items(&proof, DigestReason::Start, false);
    let mut dropped = 0u64;
    loop {
        // Block for work; while rows wait to be tried again, or the trail failed,
        // wake to retry them (or to probe the table); while rows wait for a
        // digest, wake when it is due.
        let digest_in = {
            let p = lock_proof(&proof);
            p.chain.digest_in(p.policy)
        };
        let next = if pending.is_empty() && healthy.ok.load(Ordering::Acquire) {
            match digest_in {
                None => rx.recv().await.map(Some),
                Some(wait) => match tokio::time::timeout(wait, rx.recv()).await {
                    Ok(command) => command.map(Some),
                    Err(_) => Some(None),
                },
            }
        } else {
            match tokio::time::timeout(RETRY_INTERVAL, rx.recv()).await {
                Ok(command) => command.map(Some),
                Err(_) if pending.is_empty() => {
                    // Nothing of its own to write: ask the table whether it takes a row.
                    if table.probe_audit().await.is_ok() && !healthy.swap(true, Ordering::AcqRel) {
                        tracing::info!(
                            dropped,
                            "the audit trail in the database is writable again"
                        );
                        dropped = 0;
                    }
                    continue;
                }
                Err(_) => Some(None),
            }
        };
        let Some(first) = next else {
            // The server is gone: what waits, then the closing digest.
            let mut items = std::mem::take(&mut pending);
            items.extend(digest_items(&proof, DigestReason::Stop, false));
            let _ = write_rows(&*table, &items, &proof).await;
            return;
        };
        let mut group: Vec<DbCommand> = first.into_iter().collect();
        while group.len() < DB_GROUP {
            match rx.try_recv() {
                Ok(command) => group.push(command),
                Err(_) => break,
            }
        }
        let mut items = std::mem::take(&mut pending);
        let kept = items.len();
        let mut waiters = Vec::new();
        let mut flushes = Vec::new();
        for command in group {
            match command {
                DbCommand::Row { row, done } => {
                    items.push(DbItem { row, digest: None });
                    waiters.push(done);
                }
                DbCommand::Flush(done) => flushes.push(done),
                DbCommand::Close(done) => {
                    for item in digest_items(&proof, DigestReason::Stop, false) {
                        items.push(item);
                        waiters.push(None);
                    }
                    flushes.push(done);
                }
                DbCommand::Checkpoint => {
                    for item in digest_items(&proof, DigestReason::Prune, true) {
                        items.push(item);
                        waiters.push(None);
                    }
                }
            }
        }
        // A digest is due by time, or when this group brings the lines since
        // the last one to the policy's count (unless the group ends with one).
        let due = {
            let p = lock_proof(&proof);
            let lines = items.iter().filter(|i| i.digest.is_none()).count() as u64;
            let closing = items.last().is_some_and(|i| i.digest.is_some());
            !closing
                && (p.chain.digest_due(p.policy)
                    || lines > 0 && p.chain.lines_since_digest() + lines >= p.policy.events)
        };
        if due {
            for item in digest_items(&proof, DigestReason::Interval, false) {
                items.push(item);
                waiters.push(None);
            }
        }
        healthy.writing(true);
        let (written, failure) = write_rows(&*table, &items, &proof).await;
        healthy.writing(false);
        match &failure {
            None => {
                if !healthy.swap(true, Ordering::AcqRel) {
                    tracing::info!(dropped, "the audit trail in the database is writable again");
                    dropped = 0;
                }
            }
            Some(e) => {
                if healthy.swap(false, Ordering::AcqRel) {
                    tracing::error!(error = %e, "the audit trail cannot be written to the database");
                }
                crate::metrics::audit_write_failed();
            }
        }
        let mut outcomes = Vec::with_capacity(waiters.len());
        for (i, (item, written)) in items.into_iter().zip(written).enumerate() {
            let waiter = i.checked_sub(kept).and_then(|w| waiters[w].as_ref());
            outcomes.push(written == Written::Yes);
            // Keep what failed for the database and no waiter was refused for, to try again.
            if written == Written::No && waiter.is_none() {
                if pending.len() < DEFAULT_QUEUE {
                    pending.push(item);
                } else {
                    dropped += 1;
                }
            }
        }
        for (done, ok) in waiters.into_iter().zip(outcomes.into_iter().skip(kept)) {
            if let Some(done) = done {
                let _ = done.send(ok);
            }
        }
        for done in flushes {
            let _ = done.send(failure.is_none() && pending.is_empty());
        }
    }
}

pub(super) fn lock_proof(proof: &Mutex<Proof>) -> std::sync::MutexGuard<'_, Proof> {
    proof
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The marks lines due (changed ones, or every mark with `full`) and a digest, as rows.
pub(super) fn digest_items(proof: &Mutex<Proof>, reason: DigestReason, full: bool) -> Vec<DbItem> {
    // Rows not written stay queued to be tried again: the marks are as good as recorded.
    let mut p = lock_proof(proof);
    let (bodies, reached) = p.marks_bodies(full);
    p.marks_recorded = reached;
    drop(p);
    bodies
        .into_iter()
        .map(|body| DbItem::proof(body, None))
        .chain([DbItem::proof(String::new(), Some(reason))])
        .collect()
}

/// Writes `items` to the table, each linked into the chain as it is sent (a
/// digest signed then), so the rows written form one unbroken chain whatever
/// is set aside or fails; sets aside (log line, metric) each row the database
/// refuses for its own values.
pub(super) async fn write_rows(
    table: &dyn AuditTable,
    items: &[DbItem],
    proof: &Mutex<Proof>,
) -> (Vec<Written>, Option<crate::store::StoreError>) {
    let (written, failure) = crate::store::write_isolating(items, |group| {
        let (rows, links) = {
            let p = lock_proof(proof);
            let mut links: Vec<Link> = Vec::with_capacity(group.len());
            let rows: Vec<AuditRow> = group
                .into_iter()
                .map(|item| {
                    let link = match (item.digest, links.last()) {
                        (Some(reason), None) => p.chain.digest(&p.signer, reason, p.policy),
                        (Some(reason), Some(after)) => {
                            p.chain.digest_next(after, &p.signer, reason, p.policy)
                        }
                        (None, None) => p.chain.link(&item.row.line),
                        (None, Some(after)) => p.chain.link_next(after, &item.row.line),
                    };
                    let row = AuditRow {
                        line: link.line.clone(),
                        chain: p.chain.id().to_owned(),
                        chain_seq: i64::try_from(link.seq).unwrap_or(i64::MAX),
                        ..item.row
                    };
                    links.push(link);
                    row
                })
                .collect();
            (rows, links)
        };
        async move {
            table.append_audit(rows).await?;
            let mut p = lock_proof(proof);
            for link in &links {
                p.chain.commit(link);
            }
            Ok(())
        }
    })
    .await;
    for (item, w) in items.iter().zip(&written) {
        if let Written::SetAside(why) = w {
            let row = &item.row;
            crate::metrics::row_set_aside("audit");
            tracing::error!(
                caller = %crate::escape::shown(&row.caller),
                credential_id = %crate::escape::shown(&row.credential_id),
                error = %why,
                "the database refused one audit event for its values; it is set aside and the trail goes on"
            );
        }
    }
    (written, failure)
}
