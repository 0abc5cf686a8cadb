//! The file device: the sink the log queues to, its files (rotated, reopened), and the
//! syncer thread that fsyncs what was written.

use super::*;

/// The file device.
pub(super) struct FileSink {
    pub(super) path: PathBuf,
    /// The open file and its buffer: the writer thread's, and a secret read's
    /// for a moment when it writes its own event (see [`FileSink::write_now`]).
    pub(super) writer: Arc<Mutex<Writer>>,
    pub(super) tx: mpsc::Sender<Command>,
    pub(super) places: Arc<tokio::sync::Semaphore>,
    /// The queue's size: every place free means no event is on its way to the file.
    pub(super) queue: usize,
    pub(super) health: Arc<Health>,
    /// Held while files are renamed, so a listing sees a whole set of them.
    pub(super) rotation: Arc<Mutex<()>>,
}

pub(super) fn open_append(path: &Path) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

impl FileSink {
    pub(super) fn open(
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
    pub(super) fn write_now(&self, line: &str) -> Option<bool> {
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

    pub(super) async fn send(
        &self,
        line: String,
        done: Option<tokio::sync::oneshot::Sender<bool>>,
    ) -> bool {
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

    pub(super) async fn flush(&self) -> bool {
        let (done, wait) = tokio::sync::oneshot::channel();
        if self.tx.send(Command::Flush(done)).is_err() {
            return false;
        }
        wait.await.unwrap_or(false)
    }

    pub(super) async fn close(&self) -> bool {
        let (done, wait) = tokio::sync::oneshot::channel();
        if self.tx.send(Command::Close(done)).is_err() {
            return false;
        }
        wait.await.unwrap_or(false)
    }
}

/// The last whole line of the file at `path` (`None`: no such file, or empty),
/// read from its last 4 MiB at most.
pub(super) fn last_line(path: &Path) -> std::io::Result<Option<String>> {
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

/// The log's files, oldest first (`<path>.N` … `<path>.1`, then `<path>`), opened.
pub(super) fn log_files(path: &Path) -> std::io::Result<Vec<(u64, File)>> {
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

pub(super) fn rotated_path(path: &Path, n: u64) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// A file's identity across renames: its inode and its first bytes (the first
/// event's time, to the microsecond), hashed (FNV-1a). An inode alone would not
/// do: a deleted file's inode is soon reused by a new one.
pub(super) fn file_id(file: &File) -> std::io::Result<u64> {
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

/// Whether the log can be written: the writer's last write and the last fsync.
#[derive(Debug)]
pub(super) struct Health {
    /// A secret read may write its own event (see [`FileSink::write_now`]).
    pub(super) inline: AtomicBool,
    pub(super) written: AtomicBool,
    pub(super) synced: AtomicBool,
    /// Written since the last fsync.
    pub(super) dirty: AtomicBool,
    /// The writer has stopped.
    pub(super) closed: AtomicBool,
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
    pub(super) fn ok(&self) -> bool {
        self.written.load(Ordering::Acquire) && self.synced.load(Ordering::Acquire)
    }

    pub(super) fn write_failed(&self) {
        self.written.store(false, Ordering::Release);
    }
}

/// The log file, shared by the writer (which writes through it) and the syncer.
pub(super) struct Shared(pub(super) Arc<File>);

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
pub(super) fn sync_loop(current: &Mutex<Arc<File>>, health: &Health, path: &str) {
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
