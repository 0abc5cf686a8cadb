//! The audit trail: one JSON line per RPC (allowed or denied) appended to the
//! audit log by a writer thread that fsyncs in batches, and read back by
//! `ListAuditEvents`. Secret reads fail closed while the log cannot be written,
//! unless the server runs with `--audit-fail-open`.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, SystemTime};

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::crypto::MasterKey;
use crate::error::Error;

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
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub credential_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub credential_name: String,
    /// The gRPC outcome, e.g. `OK`, `PERMISSION_DENIED`.
    pub code: String,
    /// For secret reads: HMAC-SHA256 of the secret read, keyed from the master key (hex, 128 bits).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub secret_fingerprint: String,
}

/// An event as it is recorded: borrowed from the call and written without
/// copies (the same JSON as [`AuditEvent`]).
#[derive(Debug, Serialize)]
pub struct AuditEntry<'a> {
    #[serde(serialize_with = "rfc3339_micros")]
    pub time: SystemTime,
    pub caller: &'a str,
    /// `unknown` when not known.
    #[serde(serialize_with = "peer")]
    pub peer: Option<std::net::SocketAddr>,
    pub method: &'a str,
    #[serde(skip_serializing_if = "is_empty")]
    pub credential_id: &'a str,
    #[serde(skip_serializing_if = "is_empty")]
    pub credential_name: &'a str,
    pub code: &'a str,
    #[serde(skip_serializing_if = "is_empty")]
    pub secret_fingerprint: &'a str,
}

fn rfc3339_micros<S: serde::Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_micros(*time))
}

fn peer<S: serde::Serializer>(
    peer: &Option<std::net::SocketAddr>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match peer {
        Some(addr) => s.collect_str(addr),
        None => s.serialize_str("unknown"),
    }
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
    pub credential_id: Option<String>,
    pub credential_name: Option<String>,
    pub caller: Option<String>,
    pub start: Option<SystemTime>,
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
    Event(String),
    Flush(tokio::sync::oneshot::Sender<bool>),
}

/// The audit log: cheap to record into, shared by every RPC.
pub struct AuditLog {
    path: PathBuf,
    tx: mpsc::Sender<Command>,
    healthy: Arc<AtomicBool>,
    fail_open: bool,
    fingerprint_key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.path)
            .field("fail_open", &self.fail_open)
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Opens (appending, mode 0600) the log at `path` and starts its writer thread.
    pub fn open(path: &Path, fail_open: bool, key: &MasterKey) -> Result<Self, String> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                format!(
                    "cannot make the audit log's directory {}: {e}",
                    dir.display()
                )
            })?;
        }
        let mut options = OpenOptions::new();
        options.create(true).append(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let file = options
            .open(path)
            .map_err(|e| format!("cannot open the audit log {}: {e}", path.display()))?;
        let healthy = Arc::new(AtomicBool::new(true));
        let (tx, rx) = mpsc::channel();
        let writer_health = Arc::clone(&healthy);
        let shown = path.display().to_string();
        std::thread::Builder::new()
            .name("credvault-audit".into())
            .spawn(move || write_loop(file, rx, &writer_health, &shown))
            .map_err(|e| format!("cannot start the audit writer: {e}"))?;
        Ok(AuditLog {
            path: path.to_owned(),
            tx,
            healthy,
            fail_open,
            fingerprint_key: key.derive_subkey(b"credvault/audit-fingerprint/v1"),
        })
    }

    /// Where the log is written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether secret reads go on when the log cannot be written.
    pub fn fail_open(&self) -> bool {
        self.fail_open
    }

    /// Whether the last write and fsync succeeded.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
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

    /// Queues an event; the writer thread appends it.
    pub fn record(&self, event: &AuditEntry<'_>) {
        match serde_json::to_string(event) {
            Ok(line) => {
                if self.tx.send(Command::Event(line)).is_err() {
                    self.healthy.store(false, Ordering::Release);
                }
            }
            Err(e) => tracing::error!(error = %e, "an audit event could not be encoded"),
        }
    }

    /// Waits until everything recorded so far is written and fsynced.
    pub async fn flush(&self) -> bool {
        let (done, wait) = tokio::sync::oneshot::channel();
        if self.tx.send(Command::Flush(done)).is_err() {
            return false;
        }
        wait.await.unwrap_or(false)
    }

    /// A fingerprint of secret bytes: equal secrets match, nothing about them is revealed.
    pub fn fingerprint(&self, secret: &[u8]) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.fingerprint_key.as_ref())
            .expect("hmac takes any key length");
        mac.update(secret);
        hex::encode(&mac.finalize().into_bytes()[..16])
    }

    /// Up to `limit` events matching `query`, from byte `offset`; the offset to continue from, if more.
    pub async fn list(
        &self,
        query: AuditQuery,
        offset: u64,
        limit: usize,
    ) -> Result<(Vec<AuditEvent>, Option<u64>), Error> {
        self.flush().await;
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || read_events(&path, &query, offset, limit))
            .await
            .map_err(|e| Error::Internal(format!("audit read task failed: {e}")))?
    }
}

fn read_events(
    path: &Path,
    query: &AuditQuery,
    offset: u64,
    limit: usize,
) -> Result<(Vec<AuditEvent>, Option<u64>), Error> {
    let unavailable =
        |e: std::io::Error| Error::Unavailable(format!("the audit log cannot be read: {e}"));
    let mut file = File::open(path).map_err(unavailable)?;
    file.seek(SeekFrom::Start(offset)).map_err(unavailable)?;
    let mut reader = BufReader::new(file);
    let mut events = Vec::new();
    let mut position = offset;
    let mut line = String::new();
    loop {
        line.clear();
        let read = reader.read_line(&mut line).map_err(unavailable)?;
        if read == 0 {
            return Ok((events, None));
        }
        let Ok(event) = serde_json::from_str::<AuditEvent>(line.trim_end()) else {
            position += read as u64;
            continue;
        };
        if query.matches(&event) {
            if events.len() == limit {
                return Ok((events, Some(position)));
            }
            events.push(event);
        }
        position += read as u64;
    }
}

fn write_loop(file: File, rx: mpsc::Receiver<Command>, healthy: &AtomicBool, path: &str) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, file);
    let mut broken = false;
    loop {
        // Wake on a timer, not per event, so that recording an event never costs the
        // caller a thread wake-up; then take everything queued since, write it, fsync once.
        std::thread::sleep(SYNC_INTERVAL);
        let mut waiters = Vec::new();
        let mut result = Ok(());
        let mut written = false;
        let mut stop = false;
        loop {
            match rx.try_recv() {
                Ok(Command::Event(line)) => {
                    if result.is_ok() {
                        result = writeln!(out, "{line}");
                    }
                    written = true;
                }
                Ok(Command::Flush(done)) => waiters.push(done),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    stop = true;
                    break;
                }
            }
        }
        if written || !waiters.is_empty() || stop {
            let synced = result
                .and_then(|()| out.flush())
                .and_then(|()| out.get_ref().sync_data());
            let ok = synced.is_ok();
            healthy.store(ok, Ordering::Release);
            if !ok {
                crate::metrics::audit_write_failed();
            }
            match (&synced, broken) {
                (Err(e), false) => {
                    tracing::error!(path, error = %e, "the audit log cannot be written")
                }
                (Ok(()), true) => tracing::info!(path, "the audit log is writable again"),
                _ => {}
            }
            broken = !ok;
            if !ok {
                // Drop what could not be written so a recovered disk starts clean.
                let (file, _unwritten) = out.into_parts();
                out = std::io::BufWriter::with_capacity(64 * 1024, file);
            }
            for done in waiters {
                let _ = done.send(ok);
            }
        }
        if stop {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> MasterKey {
        MasterKey::from_base64(&MasterKey::generate_base64()).unwrap()
    }

    fn entry() -> AuditEntry<'static> {
        AuditEntry {
            time: SystemTime::now(),
            caller: "anonymous",
            peer: None,
            method: "GetCredentialHeaders",
            credential_id: "",
            credential_name: "",
            code: "OK",
            secret_fingerprint: "",
        }
    }

    #[test]
    fn an_entry_is_written_as_the_event_it_reads_back_as() {
        let time = SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(1_764_331_200_123_456);
        let full = AuditEntry {
            time,
            caller: "ingest \"eu\"",
            peer: Some("127.0.0.1:4242".parse().unwrap()),
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
    }

    #[tokio::test]
    async fn events_round_trip_with_filters_and_paging() {
        let dir = tempfile::TempDir::new().unwrap();
        let log = AuditLog::open(&dir.path().join("audit.jsonl"), false, &key()).unwrap();
        for i in 0..10 {
            log.record(&AuditEntry {
                caller: if i % 2 == 0 { "even" } else { "odd" },
                credential_id: &format!("cred_{i}"),
                ..entry()
            });
        }
        assert!(log.flush().await);
        let q = || AuditQuery {
            caller: Some("even".into()),
            ..Default::default()
        };
        let (page, next) = log.list(q(), 0, 3).await.unwrap();
        assert_eq!(
            page.iter()
                .map(|e| e.credential_id.as_str())
                .collect::<Vec<_>>(),
            ["cred_0", "cred_2", "cred_4"]
        );
        let (rest, end) = log.list(q(), next.unwrap(), 3).await.unwrap();
        assert_eq!(rest.len(), 2);
        assert!(end.is_none());
    }

    #[tokio::test]
    async fn an_unwritable_log_fails_closed_unless_open() {
        for fail_open in [false, true] {
            let log = AuditLog::open(Path::new("/dev/full"), fail_open, &key()).unwrap();
            log.record(&entry());
            assert!(!log.flush().await);
            assert!(!log.healthy());
            assert_eq!(log.admit_secret_read().is_ok(), fail_open);
        }
    }

    #[test]
    fn fingerprints_correlate_without_revealing() {
        let k = key();
        let dir = tempfile::TempDir::new().unwrap();
        let log = AuditLog::open(&dir.path().join("a"), false, &k).unwrap();
        let other = AuditLog::open(&dir.path().join("b"), false, &key()).unwrap();
        assert_eq!(log.fingerprint(b"secret"), log.fingerprint(b"secret"));
        assert_ne!(log.fingerprint(b"secret"), log.fingerprint(b"secret2"));
        assert_ne!(log.fingerprint(b"secret"), other.fingerprint(b"secret"));
        assert_eq!(log.fingerprint(b"secret").len(), 32);
    }
}
