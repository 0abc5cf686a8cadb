//! The audit trail: one JSON line per RPC (allowed or denied) appended to the
//! audit log by a writer thread that fsyncs in batches, and read back by
//! `ListAuditEvents`. Secret reads fail closed while the log cannot be written,
//! unless the server runs with `--audit-fail-open`.
//!
//! The log rotates by size (`audit.jsonl` becomes `audit.jsonl.1`, and so on, the
//! oldest beyond `--audit-max-files` deleted) and is reopened on SIGHUP, for an
//! outside logrotate. Listings read the rotated files too, oldest first.
//!
//! The parts: [`AuditLog`] here (the devices, the queue, a secret read's own
//! event), `event` (what is recorded), `file` and `writer` (the file device and
//! its writer thread), `database` (the shared database's device), `read` (listings).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::crypto::MasterKey;
use crate::error::Error;
use crate::store::{AuditFilter, AuditRow, AuditTable, Written};
use crate::trail::{Chain, DigestPolicy, DigestReason, Link, Marks, PublicKey, Signer};

mod database;
mod event;
mod file;
mod read;
#[cfg(test)]
mod tests;
mod writer;

use database::*;
pub use event::*;
use file::*;
pub use read::*;
use writer::*;

/// How often queued events are written and fsynced (a batch is everything queued meanwhile).
const SYNC_INTERVAL: Duration = Duration::from_millis(20);

enum Command {
    /// One event's line; `done` hears when it has been written (and fsynced,
    /// with `--audit-sync fsync`). The permit is its place in the bounded queue.
    Event {
        line: String,
        done: Option<tokio::sync::oneshot::Sender<bool>>,
        _place: tokio::sync::OwnedSemaphorePermit,
    },
    /// Hears when everything before it is written and fsynced.
    Flush(tokio::sync::oneshot::Sender<bool>),
    Reopen,
    /// Writes the closing digest (the server stops), then as `Flush`.
    Close(tokio::sync::oneshot::Sender<bool>),
}

/// When a secret read's answer may go out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AuditSync {
    /// Once its event has reached the operating system (write(2) done); fsynced
    /// within 20 ms in the background.
    #[default]
    Write,
    /// Once its event is also fsynced: the trail survives a power loss.
    Fsync,
}

impl AuditSync {
    /// The flag's value, for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditSync::Write => "write",
            AuditSync::Fsync => "fsync",
        }
    }
}

/// Where the audit trail goes and how much of it is kept.
#[derive(Clone, Debug)]
pub struct AuditSettings {
    /// The log file (JSON lines); `None`: events go to the database only.
    pub path: Option<PathBuf>,
    /// Serve secret reads even while the log cannot be written.
    pub fail_open: bool,
    /// Rotate the file when it would grow past this many bytes (0: never).
    pub max_file_size: u64,
    /// Rotated files kept (`<path>.1` newest); older ones are deleted (0: keep all).
    pub max_files: usize,
    /// What a secret read waits for before its answer goes out.
    pub sync: AuditSync,
    /// Events queued for the writer at most; recording waits for room beyond that.
    pub queue: usize,
    /// How often each device writes a signed digest of its chain.
    pub digests: DigestPolicy,
    /// The vault's high-water marks, which `marks` lines record before each digest.
    pub marks: Option<Arc<Marks>>,
}

impl AuditSettings {
    /// A log at `path` that fails closed and rotates by the defaults.
    pub fn new(path: PathBuf) -> Self {
        AuditSettings {
            path: Some(path),
            fail_open: false,
            max_file_size: DEFAULT_MAX_FILE_SIZE,
            max_files: DEFAULT_MAX_FILES,
            sync: AuditSync::Write,
            queue: DEFAULT_QUEUE,
            digests: DigestPolicy::default(),
            marks: None,
        }
    }
}

/// The default bound of the writer's queue (events of about 200 bytes: 2 MB).
pub const DEFAULT_QUEUE: usize = 10_000;
/// Events written in one write(2) at most.
const MAX_GROUP: usize = 4096;

/// The default `--audit-max-file-size`: 64 MiB.
pub const DEFAULT_MAX_FILE_SIZE: u64 = 64 << 20;
/// The default `--audit-max-files`.
pub const DEFAULT_MAX_FILES: usize = 8;

/// The audit log, shared by every RPC. It has up to two devices, and an event
/// goes to each: the file, where a writer thread takes the events from a bounded
/// queue in groups, one write(2) per group (a syncer thread fsyncs what was
/// written every 20 ms), and the database that every replica shares, where a task
/// inserts them in groups, one statement per group.
pub struct AuditLog {
    file: Option<FileSink>,
    db: Option<DbSink>,
    fail_open: bool,
    sync: AuditSync,
    fingerprint_key: Zeroizing<[u8; 32]>,
    /// Signs the digests of every device's chain.
    signer: Arc<Signer>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.file.as_ref().map(|f| &f.path))
            .field("database", &self.db.is_some())
            .field("fail_open", &self.fail_open)
            .finish_non_exhaustive()
    }
}

/// Why the audit trail could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum AuditOpenError {
    /// The log's directory could not be made.
    #[error("cannot make the audit log's directory {}: {source}", path.display())]
    Directory {
        /// The audit file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The log file could not be opened for appending.
    #[error("cannot open the audit log {}: {source}", path.display())]
    File {
        /// The audit file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A writer thread could not start.
    #[error("cannot start the audit {what}: {source}")]
    Thread {
        /// What was being done.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// Neither a file nor a database was given.
    #[error("the audit trail needs a file (--audit-log) or a database")]
    NoDevice,
}

impl AuditLog {
    /// Opens the file device (appending, mode 0600) when the settings name a path,
    /// and the database device when `table` is given.
    pub fn open(
        settings: &AuditSettings,
        table: Option<Arc<dyn AuditTable>>,
        key: &MasterKey,
    ) -> Result<Self, AuditOpenError> {
        let signer = Arc::new(Signer::derive(key));
        let file = settings
            .path
            .as_deref()
            .map(|path| FileSink::open(settings, path, Arc::clone(&signer)))
            .transpose()?;
        if file.is_none() && table.is_none() {
            return Err(AuditOpenError::NoDevice);
        }
        Ok(AuditLog {
            file,
            db: table.map(|t| DbSink::start(t, settings, Arc::clone(&signer))),
            fail_open: settings.fail_open,
            sync: settings.sync,
            fingerprint_key: key.derive_subkey(b"credvault/audit-fingerprint/v1"),
            signer,
        })
    }

    /// The key that verifies this trail's digests, for auditors.
    pub fn public_key(&self) -> PublicKey {
        self.signer.public_key()
    }

    /// Writes each device's closing digest and waits until it is stored: the
    /// chain ends here, so a trail cut after it is told from a server that stopped.
    pub async fn close(&self) -> bool {
        let file = match &self.file {
            Some(f) => f.close().await,
            None => true,
        };
        let db = match &self.db {
            Some(d) => d.close().await,
            None => true,
        };
        file && db
    }

    /// Where events go, for the startup line: the file's path, `database`, or both.
    pub fn devices(&self) -> String {
        let mut out = Vec::new();
        if self.db.is_some() {
            out.push("database".to_owned());
        }
        if let Some(f) = &self.file {
            out.push(f.path.display().to_string());
        }
        out.join("+")
    }

    /// Whether secret reads go on when the log cannot be written.
    pub fn fail_open(&self) -> bool {
        self.fail_open
    }

    /// What a secret read waits for.
    pub fn sync(&self) -> AuditSync {
        self.sync
    }

    /// Whether every device took its last events (and the file its last fsync).
    pub fn healthy(&self) -> bool {
        self.file.as_ref().is_none_or(|f| f.health.ok())
            && self
                .db
                .as_ref()
                .is_none_or(|d| d.healthy.load(Ordering::Acquire))
    }

    /// Refuses a secret read while the log is broken, unless failing open.
    pub fn admit_secret_read(&self) -> Result<(), Error> {
        if self.healthy() || self.fail_open {
            Ok(())
        } else {
            Err(Error::Unavailable(
                "the audit log cannot be written, so secret reads are refused (fail closed); see the server log".into(),
            ))
        }
    }

    /// Queues an event (waiting while a queue is full); the devices take it soon.
    pub async fn record(&self, event: &AuditEntry<'_>) {
        let _ = self.enqueue(event, false).await;
    }

    /// Records the event of a secret read and waits until every device holds it:
    /// the file's write(2) done (with `--audit-sync fsync`, its fsync), the
    /// database's insert committed. Only then may the secret go out. Fails with
    /// UNAVAILABLE when a device could not take it, unless the log fails open.
    pub async fn record_secret_read(&self, event: &AuditEntry<'_>) -> Result<(), Error> {
        if self.enqueue(event, true).await || self.fail_open {
            Ok(())
        } else {
            Err(Error::Unavailable(
                "the audit event of this secret read could not be written, so the secret was not handed out (fail closed); see the server log".into(),
            ))
        }
    }

    /// Sends the event to every device; with `wait`, whether all of them took it.
    async fn enqueue(&self, event: &AuditEntry<'_>, wait: bool) -> bool {
        // Whatever a caller put in a field reaches no device raw (a NUL or 8 KB of
        // text in one row once stopped a database's trail for every later row).
        let field = |s: &'_ str| crate::escape::capped(s, FIELD_BYTES).into_owned();
        let clean = |s: &str| {
            matches!(
                crate::escape::capped(s, FIELD_BYTES),
                std::borrow::Cow::Borrowed(_)
            )
        };
        let owned;
        let event = if [
            event.caller,
            event.method,
            event.credential_id,
            event.credential_name,
            event.code,
            event.secret_fingerprint,
            event.channel,
        ]
        .iter()
        .all(|s| clean(s))
            && matches!(
                crate::escape::capped(event.reason, REASON_BYTES),
                std::borrow::Cow::Borrowed(_)
            ) {
            event
        } else {
            owned = (
                field(event.caller),
                field(event.method),
                field(event.credential_id),
                field(event.credential_name),
                field(event.code),
                field(event.secret_fingerprint),
                field(event.channel),
                crate::escape::capped(event.reason, REASON_BYTES).into_owned(),
            );
            &AuditEntry {
                time: event.time,
                caller: &owned.0,
                peer: event.peer,
                method: &owned.1,
                credential_id: &owned.2,
                credential_name: &owned.3,
                code: &owned.4,
                secret_fingerprint: &owned.5,
                reason: &owned.7,
                count: event.count,
                channel: &owned.6,
            }
        };
        let line = match serde_json::to_string(event) {
            Ok(line) => line,
            Err(e) => {
                tracing::error!(error = %e, "an audit event could not be encoded");
                return false;
            }
        };
        let waiter = || {
            if wait {
                let (tx, rx) = tokio::sync::oneshot::channel();
                (Some(tx), Some(rx))
            } else {
                (None, None)
            }
        };
        let (db_done, db_written) = waiter();
        let db_sent = match &self.db {
            Some(db) => {
                let row = AuditRow {
                    time: event.time,
                    caller: event.caller.to_owned(),
                    credential_id: event.credential_id.to_owned(),
                    credential_name: event.credential_name.to_owned(),
                    line: line.clone(),
                    chain: String::new(),
                    chain_seq: 0,
                    proof: false,
                };
                db.send(row, db_done).await
            }
            None => true,
        };
        // A secret read's event may be written at once (see FileSink::write_now).
        if wait {
            if let Some(file) = &self.file {
                if let Some(written) = file.write_now(&line) {
                    let db_ok = match (&self.db, db_written) {
                        (Some(_), Some(rx)) => db_sent && rx.await.unwrap_or(false),
                        (Some(_), None) => false,
                        (None, _) => true,
                    };
                    return db_ok && written;
                }
            }
        }
        let (file_done, file_written) = waiter();
        let file_sent = match &self.file {
            Some(file) => file.send(line, file_done).await,
            None => true,
        };
        if !wait {
            return db_sent && file_sent;
        }
        let took = |sent: bool, rx: Option<tokio::sync::oneshot::Receiver<bool>>, present: bool| async move {
            if !present {
                return true;
            }
            sent && match rx {
                Some(rx) => rx.await.unwrap_or(false),
                None => false,
            }
        };
        let (db_ok, file_ok) = tokio::join!(
            took(db_sent, db_written, self.db.is_some()),
            took(file_sent, file_written, self.file.is_some())
        );
        db_ok && file_ok
    }

    /// Waits until everything recorded so far is on every device (the file fsynced).
    pub async fn flush(&self) -> bool {
        let file = match &self.file {
            Some(f) => f.flush().await,
            None => true,
        };
        let db = match &self.db {
            Some(d) => d.flush().await,
            None => true,
        };
        file && db
    }

    /// Closes the file and opens its path again (after an outside rotation; SIGHUP).
    pub fn reopen(&self) {
        if let Some(f) = &self.file {
            let _ = f.tx.send(Command::Reopen);
        }
    }

    /// A fingerprint of secret bytes: equal secrets match, nothing about them is revealed.
    pub fn fingerprint(&self, secret: &[u8]) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.fingerprint_key.as_ref())
            .expect("hmac takes any key length");
        mac.update(secret);
        hex::encode(&mac.finalize().into_bytes()[..16])
    }

    /// Deletes the database's events from before `before` (the file rotates instead).
    pub async fn prune(&self, before: SystemTime) -> Result<u64, Error> {
        match &self.db {
            Some(db) => {
                let pruned = db.table.prune_audit(before).await.map_err(|e| {
                    Error::Unavailable(format!("the audit trail cannot be pruned: {e}"))
                })?;
                // Every mark again, signed: what the pruned lines recorded is not lost.
                if pruned > 0 {
                    let _ = db.tx.send(DbCommand::Checkpoint).await;
                }
                Ok(pruned)
            }
            None => Ok(0),
        }
    }

    /// Whether events are kept in the database (and listed from there).
    pub fn in_database(&self) -> bool {
        self.db.is_some()
    }

    /// Up to `limit` events matching `query`, from `from` (the start when `None`);
    /// where to continue, if there are more. The database is the trail when there
    /// is one (every replica's events); else the file and its rotated ones.
    pub async fn list(
        &self,
        query: AuditQuery,
        from: Option<Position>,
        limit: usize,
    ) -> Result<(Vec<AuditEvent>, Option<Position>), Error> {
        self.flush().await;
        if let Some(db) = &self.db {
            let after = match from {
                None => 0,
                Some(Position::Database(seq)) => seq,
                Some(Position::File { .. }) => {
                    return Err(Error::invalid(
                        "page_token is not one this server issued; start again from an empty page_token",
                    ))
                }
            };
            let filter = AuditFilter {
                credential_id: query.credential_id.clone(),
                credential_name: query.credential_name.clone(),
                caller: query.caller.clone(),
                start: query.start,
                end: query.end,
                proofs: false,
            };
            let rows = db
                .table
                .list_audit(filter, after, limit + 1)
                .await
                .map_err(|e| Error::Unavailable(format!("the audit trail cannot be read: {e}")))?;
            let more = rows.len() > limit;
            let mut events = Vec::with_capacity(limit);
            let mut last = after;
            for (seq, line) in rows.into_iter().take(limit) {
                last = seq;
                match serde_json::from_str::<AuditEvent>(&line) {
                    Ok(event) => events.push(event),
                    Err(e) => tracing::error!(seq, error = %e, "an audit row does not decode"),
                }
            }
            return Ok((events, more.then_some(Position::Database(last))));
        }
        let Some(file) = &self.file else {
            return Ok((Vec::new(), None));
        };
        let path = file.path.clone();
        let rotation = Arc::clone(&file.rotation);
        tokio::task::spawn_blocking(move || {
            let files = {
                let _renaming = rotation
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                log_files(&path)
            }
            .map_err(|e| Error::Unavailable(format!("the audit log cannot be read: {e}")))?;
            read_events(files, &query, from, limit)
        })
        .await
        .map_err(|e| Error::Internal(format!("audit read task failed: {e}")))?
    }
}
