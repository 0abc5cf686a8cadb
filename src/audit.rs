//! The audit trail: one JSON line per RPC (allowed or denied) appended to the
//! audit log by a writer thread that fsyncs in batches, and read back by
//! `ListAuditEvents`. Secret reads fail closed while the log cannot be written,
//! unless the server runs with `--audit-fail-open`.
//!
//! The log rotates by size (`audit.jsonl` becomes `audit.jsonl.1`, and so on, the
//! oldest beyond `--audit-max-files` deleted) and is reopened on SIGHUP, for an
//! outside logrotate. Listings read the rotated files too, oldest first.

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

/// The most bytes of an event's field as recorded (escaped, then cut, see [`crate::escape`]).
pub const FIELD_BYTES: usize = 256;
/// The most bytes of an event's reason as recorded.
pub const REASON_BYTES: usize = 1024;

/// How often queued events are written and fsynced (a batch is everything queued meanwhile).
const SYNC_INTERVAL: Duration = Duration::from_millis(20);

/// One audited RPC. Never holds a secret or a token.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// UTC, RFC 3339 with microseconds.
    pub time: String,
    /// The caller's name, or `anonymous`.
    pub caller: String,
    /// The peer's address.
    pub peer: String,
    /// The RPC, e.g. `GetCredentialHeaders`.
    pub method: String,
    /// The credential's id (empty when the call named none).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub credential_id: String,
    /// The credential's name, when known.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub credential_name: String,
    /// The gRPC outcome, e.g. `OK`, `PERMISSION_DENIED`.
    pub code: String,
    /// For secret reads: HMAC-SHA256 of the secret read, keyed from the master key (hex, 128 bits).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub secret_fingerprint: String,
    /// For a refused call: why.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// For a summary of refused calls: how many it stands for (0: one call, this one).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub count: u64,
    /// Where the call came in: `console` for the web console; empty for gRPC.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub channel: String,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// An event as it is recorded: borrowed from the call and written without
/// copies (the same JSON as [`AuditEvent`]).
#[derive(Debug, Serialize)]
pub struct AuditEntry<'a> {
    /// When the call was answered.
    #[serde(serialize_with = "rfc3339_micros")]
    pub time: SystemTime,
    /// The caller's name.
    pub caller: &'a str,
    /// `unknown` when not known.
    pub peer: Peer<'a>,
    /// The RPC's name.
    pub method: &'a str,
    /// The credential's id, when the call named one.
    #[serde(skip_serializing_if = "is_empty")]
    pub credential_id: &'a str,
    /// The credential's name, when known.
    #[serde(skip_serializing_if = "is_empty")]
    pub credential_name: &'a str,
    /// The gRPC status code, by name.
    pub code: &'a str,
    /// The fingerprint of the secret read or written (never the secret).
    #[serde(skip_serializing_if = "is_empty")]
    pub secret_fingerprint: &'a str,
    /// Why it was refused, when it was.
    #[serde(skip_serializing_if = "is_empty")]
    pub reason: &'a str,
    /// How many calls the event stands for (a summary of refusals: more than 1).
    #[serde(skip_serializing_if = "is_zero")]
    pub count: u64,
    /// `console` for a call made through the web console; empty for gRPC.
    #[serde(skip_serializing_if = "is_empty")]
    pub channel: &'a str,
}

impl<'a> AuditEntry<'a> {
    /// An entry for `caller` at `peer` with the other fields empty.
    pub fn new(time: SystemTime, caller: &'a str, peer: Option<std::net::SocketAddr>) -> Self {
        AuditEntry {
            time,
            caller,
            peer: Peer::Addr(peer),
            method: "",
            credential_id: "",
            credential_name: "",
            code: "",
            secret_fingerprint: "",
            reason: "",
            count: 0,
            channel: "",
        }
    }
}

/// Where a call came from: its address, or for a summary, the peer it stands for.
#[derive(Clone, Copy, Debug)]
pub enum Peer<'a> {
    /// The peer's address, when known.
    Addr(Option<std::net::SocketAddr>),
    /// A label for the peers a summary stands for.
    Label(&'a str),
}

impl Serialize for Peer<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Peer::Addr(Some(addr)) => s.collect_str(addr),
            Peer::Addr(None) => s.serialize_str("unknown"),
            Peer::Label(label) => s.serialize_str(label),
        }
    }
}

fn rfc3339_micros<S: serde::Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_micros(*time))
}

fn is_empty(s: &&str) -> bool {
    s.is_empty()
}

impl AuditEvent {
    /// When the event happened.
    pub fn system_time(&self) -> Option<SystemTime> {
        humantime::parse_rfc3339(&self.time).ok()
    }
}

/// What a listing asks for.
#[derive(Debug, Default)]
pub struct AuditQuery {
    /// Only events of this credential id.
    pub credential_id: Option<String>,
    /// Only events of this credential name.
    pub credential_name: Option<String>,
    /// Only events of this caller.
    pub caller: Option<String>,
    /// Only events at or after this time.
    pub start: Option<SystemTime>,
    /// Only events before this time.
    pub end: Option<SystemTime>,
}

impl AuditQuery {
    fn matches(&self, e: &AuditEvent) -> bool {
        let eq = |want: &Option<String>, got: &str| want.as_deref().is_none_or(|w| w == got);
        let time = e.system_time();
        eq(&self.credential_id, &e.credential_id)
            && eq(&self.credential_name, &e.credential_name)
            && eq(&self.caller, &e.caller)
            && self.start.is_none_or(|s| time.is_some_and(|t| t >= s))
            && self.end.is_none_or(|end| time.is_some_and(|t| t < end))
    }
}

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

/// The file device.
struct FileSink {
    path: PathBuf,
    /// The open file and its buffer: the writer thread's, and a secret read's
    /// for a moment when it writes its own event (see [`FileSink::write_now`]).
    writer: Arc<Mutex<Writer>>,
    tx: mpsc::Sender<Command>,
    places: Arc<tokio::sync::Semaphore>,
    /// The queue's size: every place free means no event is on its way to the file.
    queue: usize,
    health: Arc<Health>,
    /// Held while files are renamed, so a listing sees a whole set of them.
    rotation: Arc<Mutex<()>>,
}

/// The database device.
struct DbSink {
    tx: tokio::sync::mpsc::Sender<DbCommand>,
    healthy: Arc<DbHealth>,
    table: Arc<dyn AuditTable>,
}

/// Whether the database device took its last group, and whether a write hangs.
#[derive(Debug)]
struct DbHealth {
    ok: AtomicBool,
    /// When the write under way began (ms after `epoch`, plus one); 0: none.
    writing_since: std::sync::atomic::AtomicU64,
    epoch: Instant,
}

/// A write to the database trail that has not come back in this long counts as stuck.
const DB_WRITE_STUCK: Duration = Duration::from_secs(10);

impl DbHealth {
    fn new() -> Self {
        DbHealth {
            ok: AtomicBool::new(true),
            writing_since: Default::default(),
            epoch: Instant::now(),
        }
    }

    fn swap(&self, ok: bool, order: Ordering) -> bool {
        self.ok.swap(ok, order)
    }

    fn writing(&self, yes: bool) {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1;
        self.writing_since
            .store(if yes { now } else { 0 }, Ordering::Release);
    }

    /// Took its last group, and no write has hung for [`DB_WRITE_STUCK`].
    fn load(&self, order: Ordering) -> bool {
        let since = self.writing_since.load(Ordering::Acquire);
        let hung = since != 0
            && self.epoch.elapsed().as_millis() > u128::from(since) + DB_WRITE_STUCK.as_millis();
        self.ok.load(order) && !hung
    }
}

enum DbCommand {
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
struct DbItem {
    row: AuditRow,
    digest: Option<DigestReason>,
}

impl DbItem {
    fn proof(body: String, digest: Option<DigestReason>) -> Self {
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

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.file.as_ref().map(|f| &f.path))
            .field("database", &self.db.is_some())
            .field("fail_open", &self.fail_open)
            .finish_non_exhaustive()
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
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

impl FileSink {
    fn open(
        settings: &AuditSettings,
        path: &Path,
        signer: Arc<Signer>,
    ) -> Result<Self, AuditOpenError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| AuditOpenError::Directory {
                path: dir.to_owned(),
                source,
            })?;
        }
        let file = open_append(path).map_err(|source| AuditOpenError::File {
            path: path.to_owned(),
            source,
        })?;
        // The chain goes on from the trail's last line (this file's, or the
        // newest rotated one's when this one is new); a trail without one starts a chain.
        let chain = [path.to_owned(), rotated_path(path, 1)]
            .iter()
            .find_map(|p| last_line(p).ok().flatten())
            .and_then(|line| Chain::after_line(&line))
            .unwrap_or_default();
        let health = Arc::new(Health::default());
        health
            .inline
            .store(settings.sync == AuditSync::Write, Ordering::Release);
        let rotation = Arc::new(Mutex::new(()));
        let file = Arc::new(file);
        let current = Arc::new(Mutex::new(Arc::clone(&file)));
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            size: file.metadata().map(|m| m.len()).unwrap_or(0),
            out: std::io::BufWriter::with_capacity(64 * 1024, Shared(file)),
            current: Arc::clone(&current),
            path: path.to_owned(),
            max_file_size: settings.max_file_size,
            max_files: settings.max_files,
            sync: settings.sync,
            rotation: Arc::clone(&rotation),
            health: Arc::clone(&health),
            dropped: 0,
            proof: Proof::new(chain, signer, settings),
        };
        let mut writer = writer;
        // A signed digest first: whatever the trail held before this start is
        // covered, and what follows is this run's.
        writer.digest_now(DigestReason::Start, false);
        let writer = Arc::new(Mutex::new(writer));
        let (thread_writer, thread_health) = (Arc::clone(&writer), Arc::clone(&health));
        std::thread::Builder::new()
            .name("credvault-audit".into())
            .spawn(move || Writer::run(&thread_writer, &thread_health, &rx))
            .map_err(|source| AuditOpenError::Thread {
                what: "writer",
                source,
            })?;
        if settings.sync == AuditSync::Write {
            let (health, shown) = (Arc::clone(&health), path.display().to_string());
            std::thread::Builder::new()
                .name("credvault-audit-sync".into())
                .spawn(move || sync_loop(&current, &health, &shown))
                .map_err(|source| AuditOpenError::Thread {
                    what: "syncer",
                    source,
                })?;
        }
        Ok(FileSink {
            path: path.to_owned(),
            writer,
            tx,
            places: Arc::new(tokio::sync::Semaphore::new(settings.queue.max(1))),
            queue: settings.queue.max(1),
            health,
            rotation,
        })
    }

    /// Writes a secret read's event at once, on the calling thread, when that is
    /// cheap: `--audit-sync write`, the file writable, no other write under way,
    /// no event queued before it (a place is given back only once its event is
    /// written, so the trail keeps the order of the answers) and no rotation
    /// due. One write(2) to the page cache costs less than waking the writer
    /// thread and being woken by it; `None` leaves the event to the writer
    /// thread, which groups it with the others waiting. A slow write (a stalling
    /// disk) sends later events to the thread until it writes quickly again, so
    /// a stall holds up at most one runtime thread.
    fn write_now(&self, line: &str) -> Option<bool> {
        let health = &self.health;
        if !health.inline.load(Ordering::Acquire) || !health.written.load(Ordering::Acquire) {
            return None;
        }
        let mut writer = match self.writer.try_lock() {
            Ok(writer) => writer,
            Err(_) => return None,
        };
        if self.places.available_permits() != self.queue {
            return None;
        }
        if writer.rotation_due(line) {
            return None;
        }
        let began = Instant::now();
        let written = writer.write_one(line);
        if began.elapsed() > INLINE_WRITE_SLOW {
            health.inline.store(false, Ordering::Release);
            tracing::warn!(path = %self.path.display(), took_ms = began.elapsed().as_millis() as u64, "an audit write was slow; the writer thread takes every event until it is quick again");
        }
        Some(written)
    }

    async fn send(&self, line: String, done: Option<tokio::sync::oneshot::Sender<bool>>) -> bool {
        // A stalled disk fills the queue; then callers wait here, never piling up memory.
        let Ok(place) = Arc::clone(&self.places).acquire_owned().await else {
            return false;
        };
        let sent = self.tx.send(Command::Event {
            line,
            done,
            _place: place,
        });
        if sent.is_err() {
            self.health.write_failed();
        }
        sent.is_ok()
    }

    async fn flush(&self) -> bool {
        let (done, wait) = tokio::sync::oneshot::channel();
        if self.tx.send(Command::Flush(done)).is_err() {
            return false;
        }
        wait.await.unwrap_or(false)
    }

    async fn close(&self) -> bool {
        let (done, wait) = tokio::sync::oneshot::channel();
        if self.tx.send(Command::Close(done)).is_err() {
            return false;
        }
        wait.await.unwrap_or(false)
    }
}

/// The last whole line of the file at `path` (`None`: no such file, or empty),
/// read from its last 4 MiB at most.
fn last_line(path: &Path) -> std::io::Result<Option<String>> {
    use std::io::Read;
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.is_file() || meta.len() == 0 {
        return Ok(None);
    }
    let start = meta.len().saturating_sub(4 << 20);
    file.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail)?;
    let text = String::from_utf8_lossy(&tail);
    Ok(text
        .trim_end_matches('\n')
        .rsplit('\n')
        .next()
        .map(str::to_owned))
}

/// A device's chain, and what it needs to write digests.
struct Proof {
    chain: Chain,
    signer: Arc<Signer>,
    policy: DigestPolicy,
    marks: Option<Arc<Marks>>,
    /// The marks' generation this device's trail has recorded up to.
    marks_recorded: u64,
}

impl Proof {
    fn new(chain: Chain, signer: Arc<Signer>, settings: &AuditSettings) -> Self {
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
    fn marks_bodies(&self, full: bool) -> (Vec<String>, u64) {
        let Some(marks) = &self.marks else {
            return (Vec::new(), self.marks_recorded);
        };
        let (marks, reached) = marks.changed_since(if full { 0 } else { self.marks_recorded });
        (crate::trail::marks_bodies(&marks, full), reached)
    }
}

impl DbSink {
    fn start(table: Arc<dyn AuditTable>, settings: &AuditSettings, signer: Arc<Signer>) -> Self {
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

    async fn send(&self, row: AuditRow, done: Option<tokio::sync::oneshot::Sender<bool>>) -> bool {
        // The bounded channel makes callers wait while the database is slow.
        self.tx.send(DbCommand::Row { row, done }).await.is_ok()
    }

    async fn flush(&self) -> bool {
        let (done, wait) = tokio::sync::oneshot::channel();
        if self.tx.send(DbCommand::Flush(done)).await.is_err() {
            return false;
        }
        wait.await.unwrap_or(false)
    }

    async fn close(&self) -> bool {
        let (done, wait) = tokio::sync::oneshot::channel();
        if self.tx.send(DbCommand::Close(done)).await.is_err() {
            return false;
        }
        wait.await.unwrap_or(false)
    }
}

/// Rows inserted per statement at most.
const DB_GROUP: usize = 1000;

/// Inserts the queued rows in groups, and tells each secret read's waiter whether
/// its row was committed. A row the database refuses for its own values (see
/// [`crate::store::write_isolating`]) is set aside with a log line and a metric;
/// the rest of its group is written and the trail stays healthy. A group that
/// failed for the database (an outage) keeps its other rows (up to the queue's
/// size) to try again with the next group, or every half second; the rows of
/// secret reads that were refused for it are not (their secret never went out).
async fn db_writer(
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

fn lock_proof(proof: &Mutex<Proof>) -> std::sync::MutexGuard<'_, Proof> {
    proof
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The marks lines due (changed ones, or every mark with `full`) and a digest, as rows.
fn digest_items(proof: &Mutex<Proof>, reason: DigestReason, full: bool) -> Vec<DbItem> {
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
async fn write_rows(
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

/// A place in the audit trail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Position {
    /// A file (by [`file_id`], which a rename keeps; `None` for the current file, a
    /// token from before rotation existed) and a byte in it.
    File {
        /// The file's id (`None`: the current file).
        file: Option<u64>,
        /// The byte offset in it.
        offset: u64,
    },
    /// After this sequence number of the database's trail.
    Database(i64),
}

/// The log's files, oldest first (`<path>.N` … `<path>.1`, then `<path>`), opened.
fn log_files(path: &Path) -> std::io::Result<Vec<(u64, File)>> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let prefix = format!("{name}.");
    let mut rotated: Vec<u64> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix(&prefix))
                .and_then(|n| n.parse().ok())
        })
        .collect();
    rotated.sort_unstable_by(|a, b| b.cmp(a));
    let mut files = Vec::with_capacity(rotated.len() + 1);
    let candidates = rotated
        .into_iter()
        .map(|n| rotated_path(path, n))
        .chain([path.to_owned()]);
    for p in candidates {
        match File::open(&p) {
            Ok(file) => files.push((file_id(&file)?, file)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(files)
}

fn rotated_path(path: &Path, n: u64) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// A file's identity across renames: its inode and its first bytes (the first
/// event's time, to the microsecond), hashed (FNV-1a). An inode alone would not
/// do: a deleted file's inode is soon reused by a new one.
fn file_id(file: &File) -> std::io::Result<u64> {
    let mut head = [0u8; 64];
    let mut read = 0;
    #[cfg(unix)]
    let inode = {
        use std::os::unix::fs::{FileExt, MetadataExt};
        while read < head.len() {
            match file.read_at(&mut head[read..], read as u64)? {
                0 => break,
                n => read += n,
            }
        }
        file.metadata()?.ino()
    };
    #[cfg(not(unix))]
    let inode = 0u64;
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for byte in inode.to_be_bytes().iter().chain(&head[..read]) {
        hash = (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
    }
    Ok(hash)
}

fn read_events(
    files: Vec<(u64, File)>,
    query: &AuditQuery,
    from: Option<Position>,
    limit: usize,
) -> Result<(Vec<AuditEvent>, Option<Position>), Error> {
    let unavailable =
        |e: std::io::Error| Error::Unavailable(format!("the audit log cannot be read: {e}"));
    // Where to start: the token's file, wherever rotation moved it; the oldest
    // file when that one was deleted since (its events are gone).
    let (first, mut offset) =
        match from {
            None => (0, 0),
            Some(Position::File { file: None, offset }) => (files.len().saturating_sub(1), offset),
            Some(Position::File {
                file: Some(ino),
                offset,
            }) => match files.iter().position(|(i, _)| *i == ino) {
                Some(at) => (at, offset),
                None => (0, 0),
            },
            Some(Position::Database(_)) => return Err(Error::invalid(
                "page_token is not one this server issued; start again from an empty page_token",
            )),
        };
    let mut events = Vec::new();
    for (ino, mut file) in files.into_iter().skip(first) {
        file.seek(SeekFrom::Start(offset)).map_err(unavailable)?;
        let mut reader = BufReader::new(file);
        let mut position = offset;
        let mut line = String::new();
        loop {
            line.clear();
            let read = reader.read_line(&mut line).map_err(unavailable)?;
            if read == 0 {
                break;
            }
            if let Ok(event) = serde_json::from_str::<AuditEvent>(line.trim_end()) {
                if query.matches(&event) {
                    if events.len() == limit {
                        return Ok((
                            events,
                            Some(Position::File {
                                file: Some(ino),
                                offset: position,
                            }),
                        ));
                    }
                    events.push(event);
                }
            }
            position += read as u64;
        }
        offset = 0;
    }
    Ok((events, None))
}

/// Whether the log can be written: the writer's last write and the last fsync.
#[derive(Debug)]
struct Health {
    /// A secret read may write its own event (see [`FileSink::write_now`]).
    inline: AtomicBool,
    written: AtomicBool,
    synced: AtomicBool,
    /// Written since the last fsync.
    dirty: AtomicBool,
    /// The writer has stopped.
    closed: AtomicBool,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            inline: AtomicBool::new(false),
            written: AtomicBool::new(true),
            synced: AtomicBool::new(true),
            dirty: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        }
    }
}

impl Health {
    fn ok(&self) -> bool {
        self.written.load(Ordering::Acquire) && self.synced.load(Ordering::Acquire)
    }

    fn write_failed(&self) {
        self.written.store(false, Ordering::Release);
    }
}

/// The log file, shared by the writer (which writes through it) and the syncer.
struct Shared(Arc<File>);

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        (&*self.0).write(buf)
    }

    fn write_vectored(&mut self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
        (&*self.0).write_vectored(bufs)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Fsyncs the current file every [`SYNC_INTERVAL`] when something was written.
fn sync_loop(current: &Mutex<Arc<File>>, health: &Health, path: &str) {
    let mut failing = false;
    loop {
        std::thread::sleep(SYNC_INTERVAL);
        if health.closed.load(Ordering::Acquire) {
            // The writer is gone (the log was dropped), its last group fsynced.
            return;
        }
        if !health.dirty.swap(false, Ordering::AcqRel) && !failing {
            continue;
        }
        let file = Arc::clone(
            &current
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        match file.sync_data() {
            Ok(()) => {
                if failing {
                    tracing::info!(path, "the audit log can be fsynced again");
                }
                failing = false;
                health.synced.store(true, Ordering::Release);
            }
            Err(e) => {
                if !failing {
                    tracing::error!(path, error = %e, "the audit log cannot be fsynced");
                    crate::metrics::audit_write_failed();
                }
                failing = true;
                health.synced.store(false, Ordering::Release);
            }
        }
    }
}

/// The writer thread's state: the open file, its size, and how to rotate it.
struct Writer {
    out: std::io::BufWriter<Shared>,
    /// The file the syncer fsyncs (replaced on rotation and reopen).
    current: Arc<Mutex<Arc<File>>>,
    size: u64,
    path: PathBuf,
    max_file_size: u64,
    max_files: usize,
    sync: AuditSync,
    rotation: Arc<Mutex<()>>,
    health: Arc<Health>,
    /// Events that could not be taken while the log was failing, since the last report.
    dropped: u64,
    /// The file's chain: every line linked, a signed digest every N lines or T seconds.
    proof: Proof,
}

/// What the chain fields add to a line at most (`"chain"`, `"seq"`, `"prev"`).
const CHAIN_OVERHEAD: u64 = 140;
/// A digest line's size at most (without marks): room kept for the one that ends a file.
const DIGEST_BYTES: u64 = 480;

/// An inline write slower than this sends events back to the writer thread.
const INLINE_WRITE_SLOW: Duration = Duration::from_millis(20);

impl Writer {
    fn run(writer: &Mutex<Writer>, health: &Health, rx: &mpsc::Receiver<Command>) {
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
    fn rotation_due(&self, line: &str) -> bool {
        self.max_file_size > 0
            && self.size > 0
            && self.size + line.len() as u64 + CHAIN_OVERHEAD + DIGEST_BYTES + 2
                > self.max_file_size
    }

    /// Writes one event now, without fsync (the syncer thread's job): whether it
    /// reached the operating system.
    fn write_one(&mut self, line: &str) -> bool {
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
    fn commit(&mut self, group: &mut Vec<Command>, last: bool) {
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
    fn note(&mut self, written: std::io::Result<()>) {
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
    fn write_line(&mut self, body: &str) -> std::io::Result<()> {
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
    fn write_link(&mut self, link: &Link) -> std::io::Result<()> {
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
    fn write_digest(&mut self, reason: DigestReason, full: bool) -> std::io::Result<()> {
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
    fn digest_now(&mut self, reason: DigestReason, full: bool) {
        let written = self
            .write_digest(reason, full)
            .and_then(|()| self.out.flush());
        if written.is_ok() {
            self.health.dirty.store(true, Ordering::Release);
        }
        self.note(written);
    }

    /// Writes to `file` from now on (the old one's buffer already flushed).
    fn swap_file(&mut self, file: File) {
        let file = Arc::new(file);
        *self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::clone(&file);
        self.out = std::io::BufWriter::with_capacity(64 * 1024, Shared(file));
    }

    /// Flushes the file, then `<path>.N-1` → `<path>.N` … `<path>` → `<path>.1`, and a new `<path>`.
    fn rotate(&mut self) -> std::io::Result<()> {
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
    fn reopen(&mut self) -> std::io::Result<()> {
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
const RETRY_INTERVAL: Duration = Duration::from_millis(500);

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> MasterKey {
        MasterKey::from_base64(&MasterKey::generate_base64()).unwrap()
    }

    fn entry() -> AuditEntry<'static> {
        AuditEntry {
            method: "GetCredentialHeaders",
            code: "OK",
            ..AuditEntry::new(SystemTime::now(), "anonymous", None)
        }
    }

    fn open(path: &Path, fail_open: bool) -> AuditLog {
        AuditLog::open(
            &AuditSettings {
                fail_open,
                ..AuditSettings::new(path.to_owned())
            },
            None,
            &key(),
        )
        .unwrap()
    }

    #[test]
    fn an_entry_is_written_as_the_event_it_reads_back_as() {
        let time = SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(1_764_331_200_123_456);
        let full = AuditEntry {
            time,
            caller: "ingest \"eu\"",
            peer: Peer::Addr(Some("127.0.0.1:4242".parse().unwrap())),
            credential_id: "cred_1",
            credential_name: "fleetio-acme",
            secret_fingerprint: "00ff",
            ..entry()
        };
        let expected = AuditEvent {
            time: humantime::format_rfc3339_micros(time).to_string(),
            caller: "ingest \"eu\"".into(),
            peer: "127.0.0.1:4242".into(),
            method: "GetCredentialHeaders".into(),
            credential_id: "cred_1".into(),
            credential_name: "fleetio-acme".into(),
            code: "OK".into(),
            secret_fingerprint: "00ff".into(),
            ..Default::default()
        };
        let line = serde_json::to_string(&full).unwrap();
        assert_eq!(line, serde_json::to_string(&expected).unwrap());
        assert_eq!(serde_json::from_str::<AuditEvent>(&line).unwrap(), expected);
        // Empty fields are left out, and a missing peer is "unknown", as before.
        let bare = serde_json::to_string(&AuditEntry { time, ..entry() }).unwrap();
        let expected = AuditEvent {
            time: humantime::format_rfc3339_micros(time).to_string(),
            caller: "anonymous".into(),
            peer: "unknown".into(),
            method: "GetCredentialHeaders".into(),
            code: "OK".into(),
            ..Default::default()
        };
        assert_eq!(bare, serde_json::to_string(&expected).unwrap());
        // A summary of refusals names its peer, reason and count.
        let summary = AuditEntry {
            time,
            peer: Peer::Label("10.0.0.7"),
            code: "UNAUTHENTICATED",
            reason: "invalid bearer token",
            count: 4242,
            ..entry()
        };
        let read: AuditEvent =
            serde_json::from_str(&serde_json::to_string(&summary).unwrap()).unwrap();
        assert_eq!((read.peer.as_str(), read.count), ("10.0.0.7", 4242));
        assert_eq!(read.reason, "invalid bearer token");
    }

    #[tokio::test]
    async fn events_round_trip_with_filters_and_paging() {
        let dir = tempfile::TempDir::new().unwrap();
        let log = open(&dir.path().join("audit.jsonl"), false);
        for i in 0..10 {
            log.record(&AuditEntry {
                caller: if i % 2 == 0 { "even" } else { "odd" },
                credential_id: &format!("cred_{i}"),
                ..entry()
            })
            .await;
        }
        assert!(log.flush().await);
        let q = || AuditQuery {
            caller: Some("even".into()),
            ..Default::default()
        };
        let (page, next) = log.list(q(), None, 3).await.unwrap();
        assert_eq!(
            page.iter()
                .map(|e| e.credential_id.as_str())
                .collect::<Vec<_>>(),
            ["cred_0", "cred_2", "cred_4"]
        );
        let (rest, end) = log.list(q(), next, 3).await.unwrap();
        assert_eq!(rest.len(), 2);
        assert!(end.is_none());
    }

    #[tokio::test]
    async fn the_log_rotates_by_size_keeps_its_last_files_and_lists_across_them() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(
            &AuditSettings {
                max_file_size: 4_000,
                max_files: 3,
                ..AuditSettings::new(path.clone())
            },
            None,
            &key(),
        )
        .unwrap();
        let id = |i: usize| format!("cred_{i:04}");
        // About 280 bytes an event with its chain fields, and a signed
        // checkpoint and digest a file: 11 a file, so 100 events make 9 files.
        let (mut first_page, mut next) = (None, None);
        for i in 0..100 {
            log.record(&AuditEntry {
                credential_id: &id(i),
                ..entry()
            })
            .await;
            if i == 20 {
                // A listing begun before rotations goes on across them.
                assert!(log.flush().await);
                let (page, n) = log.list(AuditQuery::default(), None, 5).await.unwrap();
                first_page = Some(page);
                next = n;
            }
        }
        assert!(log.flush().await);
        let sizes: Vec<u64> = (1..=3)
            .map(|n| std::fs::metadata(rotated_path(&path, n)).unwrap().len())
            .collect();
        assert!(sizes.iter().all(|&s| s <= 4_000), "{sizes:?}");
        assert!(
            !rotated_path(&path, 4).exists(),
            "only 3 rotated files are kept"
        );
        assert!(std::fs::metadata(&path).unwrap().len() <= 4_000);
        // What retention kept still verifies: the oldest file begins with a
        // signed checkpoint, each one ends signed.
        let lines: Vec<(String, String)> = [3, 2, 1]
            .iter()
            .map(|&n| rotated_path(&path, n))
            .chain([path.clone()])
            .flat_map(|p| {
                let text = std::fs::read_to_string(&p).unwrap();
                let name = p.display().to_string();
                text.lines()
                    .enumerate()
                    .map(|(i, l)| (format!("{name}:{}", i + 1), l.to_owned()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let report = crate::trail::verify(lines, &[log.public_key()]);
        assert!(report.intact(), "{:?}", report.problems);
        assert_eq!(report.chains.len(), 1);
        // Everything still kept is listed, oldest first, in one run of pages.
        let mut all = Vec::new();
        let mut from = None;
        loop {
            let (page, n) = log.list(AuditQuery::default(), from, 7).await.unwrap();
            all.extend(page.into_iter().map(|e| e.credential_id));
            match n {
                Some(n) => from = Some(n),
                None => break,
            }
        }
        assert_eq!(all.last().unwrap(), &id(99));
        let firstkept: usize = all[0][5..].parse().unwrap();
        assert_eq!(all, (firstkept..100).map(id).collect::<Vec<_>>());
        assert!(all.len() >= 3 * 10, "{} kept", all.len());
        // The page token from before the rotations: its file was deleted since, so
        // the listing starts again at the oldest event kept.
        assert_eq!(first_page.unwrap().len(), 5);
        let (resumed, _) = log.list(AuditQuery::default(), next, 1).await.unwrap();
        assert_eq!(resumed[0].credential_id, id(firstkept));
    }

    #[tokio::test]
    async fn a_reopen_follows_an_outside_rotation() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = open(&path, false);
        log.record(&AuditEntry {
            credential_id: "before",
            ..entry()
        })
        .await;
        assert!(log.flush().await);
        std::fs::rename(&path, rotated_path(&path, 1)).unwrap();
        log.reopen();
        log.record(&AuditEntry {
            credential_id: "after",
            ..entry()
        })
        .await;
        assert!(log.flush().await);
        let current = std::fs::read_to_string(&path).unwrap();
        assert!(current.contains("after") && !current.contains("before"));
        let (all, _) = log.list(AuditQuery::default(), None, 10).await.unwrap();
        let ids: Vec<_> = all.iter().map(|e| e.credential_id.as_str()).collect();
        assert_eq!(ids, ["before", "after"]);
    }

    #[tokio::test]
    async fn an_unwritable_log_fails_closed_unless_open() {
        for fail_open in [false, true] {
            let log = open(Path::new("/dev/full"), fail_open);
            log.record(&entry()).await;
            assert!(!log.flush().await);
            assert!(!log.healthy());
            assert_eq!(log.admit_secret_read().is_ok(), fail_open);
        }
    }

    #[tokio::test]
    async fn a_stalled_writer_makes_recording_wait_not_pile_up() {
        let dir = tempfile::TempDir::new().unwrap();
        let log = AuditLog::open(
            &AuditSettings {
                max_file_size: 1,
                queue: 4,
                ..AuditSettings::new(dir.path().join("audit.jsonl"))
            },
            None,
            &key(),
        )
        .unwrap();
        log.record(&entry()).await;
        assert!(log.flush().await);
        // The next event rotates the file, and the writer waits for the rotation
        // lock, held here: a disk that does not answer.
        let stall = Arc::clone(&log.file.as_ref().unwrap().rotation);
        let (locked_tx, locked) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            let _held = stall.lock().unwrap();
            locked_tx.send(()).unwrap();
            let _ = released.recv();
        });
        locked.recv().unwrap();
        let log = Arc::new(log);
        let readers: Vec<_> = (0..8)
            .map(|_| {
                let log = Arc::clone(&log);
                tokio::spawn(async move { log.record_secret_read(&entry()).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(200)).await;
        // One event is with the writer, four wait in the queue, the rest wait for room.
        assert_eq!(log.file.as_ref().unwrap().places.available_permits(), 0);
        assert!(
            readers.iter().all(|r| !r.is_finished()),
            "no read was answered"
        );
        drop(release);
        holder.join().unwrap();
        for r in readers {
            assert!(r.await.unwrap().is_ok());
        }
        // Every place is given back once the writer has let go of the group.
        for _ in 0..100 {
            if log.file.as_ref().unwrap().places.available_permits() == 4 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(log.file.as_ref().unwrap().places.available_permits(), 4);
    }

    #[test]
    fn fingerprints_correlate_without_revealing() {
        let dir = tempfile::TempDir::new().unwrap();
        let log = open(&dir.path().join("a"), false);
        let other = open(&dir.path().join("b"), false);
        assert_eq!(log.fingerprint(b"secret"), log.fingerprint(b"secret"));
        assert_ne!(log.fingerprint(b"secret"), log.fingerprint(b"secret2"));
        assert_ne!(log.fingerprint(b"secret"), other.fingerprint(b"secret"));
        assert_eq!(log.fingerprint(b"secret").len(), 32);
    }
}
