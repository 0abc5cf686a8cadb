//! The sled store's erasable keys: one small file per credential in
//! `<store dir>/erasable/`, rewritten whole (a temporary file, fsync, rename,
//! fsync of the directory) or removed, so that an erased key is in no file, unlike a
//! value removed from sled, which stays in its log segments until they are reused.
//! All keys are also held in memory, for the hot path.
//!
//! A file is the concatenation of (seal id, u64 big-endian; key, 32 bytes).

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use zeroize::Zeroizing;

use super::StoreError;
use crate::record::ErasableKey;

const ENTRY: usize = 8 + 32;

/// One credential's keys: (seal id, key).
pub(super) type Keys = Vec<(u64, Zeroizing<[u8; 32]>)>;

/// The keys of every credential, on disk and in memory.
#[derive(Clone)]
pub(super) struct Keystore {
    dir: PathBuf,
    keys: Arc<Mutex<HashMap<String, Keys>>>,
    /// One lock per credential, held while its file is written: writes of
    /// different credentials (each with its fsyncs) go on side by side.
    files: Arc<Mutex<HashMap<String, Arc<Mutex<()>>>>>,
    /// Credentials whose file may not match memory: its last write failed after
    /// memory changed. The next update writes the file even when memory stays the
    /// same, so that a retried erasure really leaves the disk.
    dirty: Arc<Mutex<std::collections::HashSet<String>>>,
}

fn io(e: &std::io::Error) -> StoreError {
    StoreError::Io(format!("erasable keys: {e}"))
}

/// A credential id that names a file (ids are `cred_` and hex; anything else is refused).
fn file_name(id: &str) -> Result<&str, StoreError> {
    if !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        Ok(id)
    } else {
        Err(StoreError::Io(format!(
            "erasable keys: {id:?} cannot name a key file"
        )))
    }
}

impl Keystore {
    /// Opens (or creates) the keystore in `dir`, reading every key. Blocking.
    pub(super) fn open(dir: &Path) -> Result<Self, StoreError> {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::create_dir_all(dir).map_err(|e| io(&e))?;
        // Only this user may list or read the keys (an older directory is narrowed too).
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| io(&e))?;
        let mut keys = HashMap::new();
        for entry in std::fs::read_dir(dir).map_err(|e| io(&e))? {
            let entry = entry.map_err(|e| io(&e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                // A temporary file a crash left behind: its rename never happened.
                let _ = std::fs::remove_file(entry.path());
                continue;
            }
            let bytes = Zeroizing::new(std::fs::read(entry.path()).map_err(|e| io(&e))?);
            if bytes.len() % ENTRY != 0 {
                return Err(StoreError::Corrupt {
                    id: name,
                    reason: "its erasable key file is cut short".into(),
                });
            }
            let list = bytes
                .chunks(ENTRY)
                .map(|c| {
                    let seal = u64::from_be_bytes(c[..8].try_into().unwrap_or_default());
                    let mut key = Zeroizing::new([0u8; 32]);
                    key.copy_from_slice(&c[8..]);
                    (seal, key)
                })
                .collect();
            keys.insert(name, list);
        }
        Ok(Keystore {
            dir: dir.to_owned(),
            keys: Arc::new(Mutex::new(keys)),
            files: Arc::default(),
            dirty: Arc::default(),
        })
    }

    /// The keys of credential `id`, for its record.
    pub(super) fn of(&self, id: &str) -> Vec<ErasableKey> {
        self.keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .map(|list| {
                list.iter()
                    .map(|(seal_id, key)| ErasableKey {
                        seal_id: *seal_id,
                        key: key.to_vec(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every credential id that has keys.
    pub(super) fn ids(&self) -> Vec<String> {
        self.keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }

    /// Every key, as snapshot entries.
    pub(super) fn entries(&self) -> super::Entries {
        let keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out: super::Entries = keys
            .iter()
            .flat_map(|(id, list)| {
                list.iter()
                    .map(|(seal, key)| (super::erasable_entry_key(id, *seal), key.to_vec()))
            })
            .collect();
        out.sort();
        out
    }

    /// Changes the keys of `id` and writes its file (removed when none are left). Blocking.
    pub(super) fn update(
        &self,
        id: &str,
        change: impl FnOnce(&mut Keys),
    ) -> Result<(), StoreError> {
        let name = file_name(id)?;
        let result = self.update_file(id, name, change);
        // Forget this credential's lock unless another update holds it: the map
        // holds the credentials being written, not every one ever written.
        let mut files = self.files.lock().unwrap_or_else(PoisonError::into_inner);
        if files.get(id).is_some_and(|l| Arc::strong_count(l) == 1) {
            files.remove(id);
        }
        result
    }

    fn update_file(
        &self,
        id: &str,
        name: &str,
        change: impl FnOnce(&mut Keys),
    ) -> Result<(), StoreError> {
        let file_lock = Arc::clone(
            self.files
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(id.to_owned())
                .or_default(),
        );
        // Held until this credential's file is written: its writes stay in order.
        let _file = file_lock.lock().unwrap_or_else(PoisonError::into_inner);
        let list = {
            let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
            let mut list = keys.get(id).cloned().unwrap_or_default();
            let before: Vec<u64> = list.iter().map(|(s, _)| *s).collect();
            change(&mut list);
            let dirty = self
                .dirty
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(id);
            if !dirty && list.iter().map(|(s, _)| *s).collect::<Vec<_>>() == before {
                return Ok(());
            }
            // Memory first: a key is used only by a record written after its put,
            // and an erased one by no record written after its erasure.
            if list.is_empty() {
                keys.remove(id);
            } else {
                keys.insert(id.to_owned(), list.clone());
            }
            list
        };
        let written = self.write_file(name, &list);
        let mut dirty = self.dirty.lock().unwrap_or_else(PoisonError::into_inner);
        if written.is_ok() {
            dirty.remove(id);
        } else {
            dirty.insert(id.to_owned());
        }
        written
    }

    /// Writes (or removes) the key file of the credential `name` to hold `list`.
    fn write_file(&self, name: &str, list: &Keys) -> Result<(), StoreError> {
        let path = self.dir.join(name);
        if list.is_empty() {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&e)),
            }
        } else {
            let mut bytes = Zeroizing::new(Vec::with_capacity(list.len() * ENTRY));
            for (seal, key) in list {
                bytes.extend_from_slice(&seal.to_be_bytes());
                bytes.extend_from_slice(key.as_ref());
            }
            let tmp = self.dir.join(format!(".{name}.tmp"));
            let mut file = {
                use std::os::unix::fs::OpenOptionsExt as _;
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)
                    .map_err(|e| io(&e))?
            };
            file.write_all(&bytes).map_err(|e| io(&e))?;
            file.sync_all().map_err(|e| io(&e))?;
            std::fs::rename(&tmp, &path).map_err(|e| io(&e))?;
        }
        // The rename or removal itself is durable once the directory is.
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io(&e))
    }
}

#[cfg(test)]
mod dirty_tests {
    use super::*;

    #[test]
    fn an_erasure_whose_file_write_failed_is_written_when_retried() {
        let dir = tempfile::tempdir().unwrap();
        let store = Keystore::open(dir.path()).unwrap();
        let id = "cred_0123456789abcdef0123456789abcdef";
        store
            .update(id, |l| {
                l.push((1, Zeroizing::new([1u8; 32])));
                l.push((2, Zeroizing::new([2u8; 32])));
            })
            .unwrap();
        // The temporary file's path is taken: the rewrite fails.
        let blocker = dir.path().join(format!(".{id}.tmp"));
        std::fs::create_dir(&blocker).unwrap();
        assert!(store.update(id, |l| l.retain(|(s, _)| *s != 1)).is_err());
        let on_disk = std::fs::read(dir.path().join(id)).unwrap();
        assert_eq!(on_disk.len(), 2 * ENTRY, "the failed write left the file");
        std::fs::remove_dir(&blocker).unwrap();
        // Memory already forgot key 1; the retry must still rewrite the file.
        store.update(id, |l| l.retain(|(s, _)| *s != 1)).unwrap();
        let on_disk = std::fs::read(dir.path().join(id)).unwrap();
        assert_eq!(on_disk.len(), ENTRY);
        assert!(!on_disk.windows(32).any(|w| w == [1u8; 32]));
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join(id)), 0o600);
        assert_eq!(mode(dir.path()), 0o700);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_survive_a_reopen_and_erased_ones_are_in_no_file() {
        let dir = tempfile::TempDir::new().unwrap();
        let store = Keystore::open(dir.path()).unwrap();
        let (a, b) = ([7u8; 32], [9u8; 32]);
        store
            .update("cred_1", |l| {
                l.push((1, Zeroizing::new(a)));
                l.push((2, Zeroizing::new(b)));
            })
            .unwrap();
        let again = Keystore::open(dir.path()).unwrap();
        assert_eq!(again.of("cred_1").len(), 2);
        again
            .update("cred_1", |l| l.retain(|(s, _)| *s != 1))
            .unwrap();
        let files: Vec<Vec<u8>> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| std::fs::read(e.unwrap().path()).unwrap())
            .collect();
        assert_eq!(files.len(), 1);
        assert!(
            !files[0].windows(32).any(|w| w == a),
            "the erased key is gone"
        );
        assert!(files[0].windows(32).any(|w| w == b));
        again.update("cred_1", Vec::clear).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        assert!(
            again.files.lock().unwrap().is_empty(),
            "no lock outlives its update"
        );
        assert!(again.update("../x", |_| {}).is_err());
    }
}
