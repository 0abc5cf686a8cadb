//! The file device's writer thread: the open file, its size, its chain, and rotation.

use super::*;

/// The writer thread's state: the open file, its size, and how to rotate it.
pub(super) struct Writer {
    pub(super) out: std::io::BufWriter<Shared>,
    /// The file the syncer fsyncs (replaced on rotation and reopen).
    pub(super) current: Arc<Mutex<Arc<File>>>,
    pub(super) size: u64,
    pub(super) path: PathBuf,
    pub(super) max_file_size: u64,
    pub(super) max_files: usize,
    pub(super) sync: AuditSync,
    pub(super) rotation: Arc<Mutex<()>>,
    pub(super) health: Arc<Health>,
    /// Events that could not be taken while the log was failing, since the last report.
    pub(super) dropped: u64,
    /// The file's chain: every line linked, a signed digest every N lines or T seconds.
    pub(super) proof: Proof,
}

/// What the chain fields add to a line at most (`"chain"`, `"seq"`, `"prev"`).
pub(super) const CHAIN_OVERHEAD: u64 = 140;
/// A digest line's size at most (without marks): room kept for the one that ends a file.
pub(super) const DIGEST_BYTES: u64 = 480;

/// An inline write slower than this sends events back to the writer thread.
pub(super) const INLINE_WRITE_SLOW: Duration = Duration::from_millis(20);

impl Writer {
    pub(super) fn run(writer: &Mutex<Writer>, health: &Health, rx: &mpsc::Receiver<Command>) {
        let lock = || {
            writer
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        let (inline_allowed, policy) = {
            let w = lock();
            (w.sync == AuditSync::Write, w.proof.policy)
        };
        // Wakes a quarter of the digest interval apart to see whether a digest is
        // due by time (lines written inline leave this thread asleep): the writer's
        // lock is not taken meanwhile, so secret reads keep writing their own events.
        let tick = (policy.interval / 4).max(Duration::from_millis(25));
        let mut group = Vec::with_capacity(64);
        loop {
            // Block for the first command; while the log is failing, wake to retry.
            let first = if !health.written.load(Ordering::Acquire) {
                rx.recv_timeout(RETRY_INTERVAL)
            } else {
                rx.recv_timeout(tick)
            };
            match first {
                Ok(command) => group.push(command),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let mut w = lock();
                    if w.proof.chain.digest_due(policy) {
                        w.digest_now(DigestReason::Interval, false);
                    }
                    if !group.is_empty() || !health.written.load(Ordering::Acquire) {
                        w.commit(&mut group, false);
                    }
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let mut w = lock();
                    w.digest_now(DigestReason::Stop, false);
                    w.commit(&mut group, true);
                    health.closed.store(true, Ordering::Release);
                    return;
                }
            }
            // Everything queued meanwhile joins the group: one write(2) for all.
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(command) => group.push(command),
                    Err(_) => break,
                }
            }
            let began = Instant::now();
            lock().commit(&mut group, false);
            // A quick write after slow ones: secret reads may write their own again.
            if inline_allowed
                && began.elapsed() < INLINE_WRITE_SLOW
                && health.written.load(Ordering::Acquire)
                && !health.inline.swap(true, Ordering::AcqRel)
            {
                tracing::info!("audit writes are quick again");
            }
        }
    }

    /// Whether writing `line` would rotate the file first (left to the writer thread).
    pub(super) fn rotation_due(&self, line: &str) -> bool {
        self.max_file_size > 0
            && self.size > 0
            && self.size + line.len() as u64 + CHAIN_OVERHEAD + DIGEST_BYTES + 2
                > self.max_file_size
    }

    /// Writes one event now, without fsync (the syncer thread's job): whether it
    /// reached the operating system.
    pub(super) fn write_one(&mut self, line: &str) -> bool {
        let buffered = self.write_line(line);
        if buffered.is_err() {
            self.dropped += 1;
        }
        // Also retries what an earlier failure left in the buffer.
        let written = buffered.and_then(|()| self.out.flush());
        let ok = written.is_ok();
        if ok {
            self.health.dirty.store(true, Ordering::Release);
        }
        self.note(written);
        ok
    }

    /// Writes a group, fsyncs when it must, and tells its waiters how it went.
    pub(super) fn commit(&mut self, group: &mut Vec<Command>, last: bool) {
        let mut result = Ok(());
        let mut must_sync = last || self.sync == AuditSync::Fsync;
        for command in group.iter() {
            match command {
                Command::Event { line, .. } => {
                    if result.is_ok() {
                        result = self.write_line(line);
                    }
                    if result.is_err() {
                        self.dropped += 1;
                    }
                }
                Command::Flush(_) => must_sync = true,
                Command::Close(_) => {
                    must_sync = true;
                    if result.is_ok() {
                        result = self.write_digest(DigestReason::Stop, false);
                    }
                }
                Command::Reopen => {
                    if result.is_ok() {
                        result = self.reopen();
                    }
                }
            }
        }
        // Also retries what an earlier failure left in the buffer.
        let written = result.and_then(|()| self.out.flush());
        let written_ok = written.is_ok();
        let synced_ok = if written_ok && must_sync {
            match self.out.get_ref().0.sync_data() {
                Ok(()) => {
                    self.health.synced.store(true, Ordering::Release);
                    true
                }
                Err(e) => {
                    tracing::error!(path = %self.path.display(), error = %e, "the audit log cannot be fsynced");
                    self.health.synced.store(false, Ordering::Release);
                    false
                }
            }
        } else {
            if written_ok {
                self.health.dirty.store(true, Ordering::Release);
            }
            written_ok
        };
        self.note(written);
        let event_ok = written_ok && (self.sync == AuditSync::Write || synced_ok);
        for command in group.drain(..) {
            match command {
                Command::Event {
                    done: Some(done), ..
                } => {
                    let _ = done.send(event_ok);
                }
                Command::Flush(done) | Command::Close(done) => {
                    let _ = done.send(written_ok && synced_ok);
                }
                _ => {}
            }
        }
    }

    /// Records the outcome of a write: health, metrics, a log line on each change.
    pub(super) fn note(&mut self, written: std::io::Result<()>) {
        let was_ok = self.health.written.load(Ordering::Acquire);
        let path = self.path.display();
        match written {
            Ok(()) => {
                if !was_ok {
                    tracing::info!(%path, dropped = self.dropped, "the audit log is writable again");
                    self.dropped = 0;
                }
                self.health.written.store(true, Ordering::Release);
            }
            Err(e) => {
                crate::metrics::audit_write_failed();
                if was_ok {
                    tracing::error!(%path, error = %e, "the audit log cannot be written");
                }
                self.health.write_failed();
            }
        }
    }

    /// Writes an event (its JSON, `body`) as the chain's next line, rotating
    /// first when due, and a digest after it when one is due.
    pub(super) fn write_line(&mut self, body: &str) -> std::io::Result<()> {
        if self.rotation_due(body) {
            if let Err(e) = self.rotate() {
                tracing::error!(path = %self.path.display(), error = %e, "the audit log could not be rotated; writing on");
            }
        }
        let link = self.proof.chain.link(body);
        self.write_link(&link)?;
        self.proof.chain.commit(&link);
        if self.proof.chain.digest_due(self.proof.policy) {
            // The event is in; a digest that fails is written with a later one.
            let _ = self.write_digest(DigestReason::Interval, false);
        }
        Ok(())
    }

    /// Writes a linked line (the chain commits it once this returns Ok).
    pub(super) fn write_link(&mut self, link: &Link) -> std::io::Result<()> {
        let line = &link.line;
        // A line the buffer cannot take whole is refused whole: the file never
        // holds half an event, and what was buffered goes out once the disk allows.
        if self.out.capacity() - self.out.buffer().len() < line.len() + 1 {
            self.out.flush()?;
        }
        self.out.write_all(line.as_bytes())?;
        self.out.write_all(b"\n")?;
        self.size += line.len() as u64 + 1;
        Ok(())
    }

    /// Writes the marks changed since the last digest (every mark with `full`),
    /// then a signed digest of the chain so far.
    pub(super) fn write_digest(&mut self, reason: DigestReason, full: bool) -> std::io::Result<()> {
        let (bodies, reached) = self.proof.marks_bodies(full);
        for body in bodies {
            let link = self.proof.chain.link(&body);
            // Not recorded: the next digest names them again.
            self.write_link(&link)?;
            self.proof.chain.commit(&link);
        }
        self.proof.marks_recorded = reached;
        let proof = &self.proof;
        let digest = proof.chain.digest(&proof.signer, reason, proof.policy);
        self.write_link(&digest)?;
        self.proof.chain.commit(&digest);
        Ok(())
    }

    /// [`Writer::write_digest`] and its flush now, a failure logged (the next digest covers it).
    pub(super) fn digest_now(&mut self, reason: DigestReason, full: bool) {
        let written = self
            .write_digest(reason, full)
            .and_then(|()| self.out.flush());
        if written.is_ok() {
            self.health.dirty.store(true, Ordering::Release);
        }
        self.note(written);
    }

    /// Writes to `file` from now on (the old one's buffer already flushed).
    pub(super) fn swap_file(&mut self, file: File) {
        let file = Arc::new(file);
        *self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::clone(&file);
        self.out = std::io::BufWriter::with_capacity(64 * 1024, Shared(file));
    }

    /// Flushes the file, then `<path>.N-1` → `<path>.N` … `<path>` → `<path>.1`, and a new `<path>`.
    pub(super) fn rotate(&mut self) -> std::io::Result<()> {
        // The old file ends signed; the new one begins with a signed checkpoint
        // (every mark, then a digest), so it verifies once older files are gone.
        if self.proof.chain.uncovered() {
            let proof = &self.proof;
            let digest = proof
                .chain
                .digest(&proof.signer, DigestReason::Rotate, proof.policy);
            self.write_link(&digest)?;
            self.proof.chain.commit(&digest);
        }
        self.out.flush()?;
        self.out.get_ref().0.sync_data()?;
        let rotation = Arc::clone(&self.rotation);
        let _listings_wait = rotation
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.max_files > 0 {
            let _ = std::fs::remove_file(rotated_path(&self.path, self.max_files as u64));
            for n in (1..self.max_files as u64).rev() {
                match std::fs::rename(rotated_path(&self.path, n), rotated_path(&self.path, n + 1))
                {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
        } else {
            // Keep all: shift every rotated file up by one, highest first.
            let mut n = 1;
            while rotated_path(&self.path, n).exists() {
                n += 1;
            }
            for k in (1..n).rev() {
                std::fs::rename(rotated_path(&self.path, k), rotated_path(&self.path, k + 1))?;
            }
        }
        std::fs::rename(&self.path, rotated_path(&self.path, 1))?;
        let file = open_append(&self.path)?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        self.swap_file(file);
        self.size = 0;
        tracing::info!(path = %self.path.display(), max_files = self.max_files, "audit log rotated");
        self.write_digest(DigestReason::Checkpoint, true)
    }

    /// Opens the path again: an outside tool (logrotate) moved the file away.
    pub(super) fn reopen(&mut self) -> std::io::Result<()> {
        self.out.flush()?;
        self.out.get_ref().0.sync_data()?;
        let file = open_append(&self.path)?;
        self.size = file.metadata().map(|m| m.len()).unwrap_or(0);
        self.swap_file(file);
        tracing::info!(path = %self.path.display(), "audit log reopened");
        self.write_digest(DigestReason::Checkpoint, true)
    }
}

/// While the log cannot be written, how often the writer tries again by itself.
pub(super) const RETRY_INTERVAL: Duration = Duration::from_millis(500);
