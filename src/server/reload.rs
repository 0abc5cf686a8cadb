//! When a watched file (callers, providers, keyring) is read again: on SIGHUP, or
//! once its *content* has changed and then held still.
//!
//! A modification time alone misses edits: a file truncated and rewritten within
//! one tick of the file system's clock keeps its time, and a reader that saw the
//! truncated file would never look again. A half-written file is not read either:
//! a change is taken only after two reads [`SETTLE`] apart agree.

use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::config::key_files;
use crate::metrics;

/// How often a watched file is looked at.
const POLL: Duration = Duration::from_millis(500);

/// How long a changed file must stay unchanged before it is read.
const SETTLE: Duration = Duration::from_millis(100);

/// How long a file that keeps changing is waited for before it is read anyway.
const SETTLE_AT_MOST: Duration = Duration::from_secs(2);

/// Resolves when the process gets SIGHUP (never where there are no signals).
pub(super) struct Hangups(#[cfg(unix)] Option<tokio::signal::unix::Signal>);

impl Hangups {
    /// Takes SIGHUP from now on. Made before the server announces itself: a
    /// SIGHUP that came before any handler would end the process.
    pub(super) fn new() -> Self {
        #[cfg(unix)]
        {
            Hangups(tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok())
        }
        #[cfg(not(unix))]
        Hangups()
    }

    pub(super) async fn next(&mut self) {
        #[cfg(unix)]
        if let Some(signal) = self.0.as_mut() {
            signal.recv().await;
            return;
        }
        std::future::pending::<()>().await;
    }
}

/// What a watched path holds now, as a digest; `None` when it cannot be read.
///
/// A key directory's digest covers the ids and contents of the files the keyring
/// reads from it ([`key_files`]; a Kubernetes Secret's `..data` swap changes them
/// all at once).
pub(super) fn fingerprint(path: &Path) -> Option<[u8; 32]> {
    let mut digest = Sha256::new();
    if path.is_dir() {
        for (id, file) in key_files(path).ok()? {
            let bytes = Zeroizing::new(std::fs::read(&file).ok()?);
            digest.update((id.len() as u64).to_le_bytes());
            digest.update(id.as_bytes());
            digest.update((bytes.len() as u64).to_le_bytes());
            digest.update(&*bytes);
        }
    } else {
        let bytes = Zeroizing::new(std::fs::read(path).ok()?);
        digest.update(&*bytes);
    }
    Some(digest.finalize().into())
}

/// What the watched file held when last read.
pub(super) type Seen = Option<[u8; 32]>;

/// Waits for SIGHUP or a settled change of `path`'s content (looked at twice a
/// second); `None` once `stop` fires.
pub(super) async fn next_reload(
    file: &'static str,
    path: &Path,
    seen: &mut Seen,
    hangups: &mut Hangups,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Option<&'static str> {
    loop {
        tokio::select! {
            _ = stop.changed() => return None,
            () = hangups.next() => {
                metrics::reload_checked(file);
                *seen = fingerprint(path);
                return Some("SIGHUP");
            }
            () = tokio::time::sleep(POLL) => {
                metrics::reload_checked(file);
                if fingerprint(path) != *seen {
                    *seen = settled(path, stop).await?;
                    return Some("the file changed");
                }
            }
        }
    }
}

/// The file's digest once two reads [`SETTLE`] apart agree (or after
/// [`SETTLE_AT_MOST`]); `None` once `stop` fires.
async fn settled(path: &Path, stop: &mut tokio::sync::watch::Receiver<bool>) -> Option<Seen> {
    let start = tokio::time::Instant::now();
    let mut last = fingerprint(path);
    loop {
        tokio::select! {
            _ = stop.changed() => return None,
            () = tokio::time::sleep(SETTLE) => {}
        }
        let now = fingerprint(path);
        if now == last || start.elapsed() >= SETTLE_AT_MOST {
            return Some(now);
        }
        last = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rewrite_that_keeps_the_modification_time_changes_the_fingerprint() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("callers.toml");
        std::fs::write(&path, "a").unwrap();
        let before = fingerprint(&path);
        let time = std::fs::metadata(&path).unwrap().modified().unwrap();
        std::fs::write(&path, "b").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(time)
            .unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().modified().unwrap(), time);
        assert_ne!(fingerprint(&path), before);
        assert_eq!(fingerprint(&dir.path().join("missing")), None);
    }

    #[test]
    fn a_directory_changes_with_a_file_inside_and_ignores_hidden_entries() {
        let dir = tempfile::TempDir::new().unwrap();
        std::fs::write(dir.path().join("1.key"), "one").unwrap();
        let before = fingerprint(dir.path());
        std::fs::write(dir.path().join("..data"), "hidden").unwrap();
        assert_eq!(fingerprint(dir.path()), before);
        std::fs::write(dir.path().join("1.key"), "two").unwrap();
        assert_ne!(fingerprint(dir.path()), before);
    }
}
