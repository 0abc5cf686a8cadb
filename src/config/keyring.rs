//! Where the master keyring comes from today: the environment (`CREDVAULT_MASTER_KEY`)
//! or a key file or directory of key files, read again on SIGHUP. One place for the
//! keyring's sources, so that the next (a KMS, an HSM) is one more of them.

use super::*;

/// Environment variable that may hold the master key or keyring (same text as a key file).
pub const MASTER_KEY_ENV: &str = "CREDVAULT_MASTER_KEY";

fn keyring_error(origin: impl fmt::Display) -> impl FnOnce(String) -> ConfigError {
    let origin = origin.to_string();
    move |why| ConfigError::Keyring { origin, why }
}

/// Where a keyring is read from, and which of its keys is active.
#[derive(Clone, Debug)]
pub struct KeyringSource {
    /// A key file (one bare base64 key, or `id = base64` lines) or a directory of key files.
    pub path: PathBuf,
    /// The id of the key that seals new data; by default the last entry (file) or
    /// the last file name in sort order (directory).
    pub active: Option<String>,
    /// The master keys key roots unsealed at start, kept across re-reads of the file.
    pub joined: Option<Joined>,
}

/// Master keys from key roots, joined to a key file's on every read.
#[derive(Clone, Debug)]
pub struct Joined {
    /// The keys (their Debug shows ids only).
    pub keys: Vec<MasterKey>,
    /// The active key when a root seals it (else the file's active key).
    pub active: Option<String>,
}

impl KeyringSource {
    /// Reads the keyring, warning if others may read a key file; joined to the
    /// keys that key roots unsealed, if any.
    pub fn read(&self) -> Result<Keyring, ConfigError> {
        let file = self.read_file()?;
        let Some(joined) = &self.joined else {
            return Ok(file);
        };
        let mut keys: Vec<MasterKey> = file.keys().cloned().collect();
        for key in &joined.keys {
            if !keys.iter().any(|k| k.id() == key.id()) {
                keys.push(key.clone());
            }
        }
        let active = joined
            .active
            .clone()
            .unwrap_or_else(|| file.active().id().to_owned());
        Keyring::new(keys, Some(&active))
            .map_err(|e| e.to_string())
            .map_err(keyring_error(format_args!(
                "master key file {} with the key roots' keys",
                self.path.display()
            )))
    }

    fn read_file(&self) -> Result<Keyring, ConfigError> {
        let path = &self.path;
        let active = self.active.as_deref();
        if path.is_dir() {
            return read_key_dir(path, active);
        }
        let text = zeroize::Zeroizing::new(fs::read_to_string(path).map_err(|source| {
            ConfigError::Read {
                what: "master key file",
                path: path.clone(),
                source,
            }
        })?);
        warn_if_shared(path);
        parse_keyring(&text, active).map_err(keyring_error(format_args!(
            "master key file {}",
            path.display()
        )))
    }
}

/// The key files of a key directory, as (key id, path) in id order: every
/// visible file, its id the name less `.key`.
pub fn key_files(dir: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // Skips hidden entries, such as Kubernetes' `..data` links of a mounted Secret.
        if name.starts_with('.') || !entry.path().is_file() {
            continue;
        }
        let id = name.strip_suffix(".key").unwrap_or(&name).to_owned();
        files.push((id, entry.path()));
    }
    files.sort();
    Ok(files)
}

pub(super) fn read_key_dir(dir: &Path, active: Option<&str>) -> Result<Keyring, ConfigError> {
    let files = key_files(dir).map_err(|source| ConfigError::Read {
        what: "key directory",
        path: dir.to_owned(),
        source,
    })?;
    let mut keys = Vec::with_capacity(files.len());
    for (id, path) in files {
        let text = zeroize::Zeroizing::new(fs::read_to_string(&path).map_err(|source| {
            ConfigError::Read {
                what: "key file",
                path: path.clone(),
                source,
            }
        })?);
        warn_if_shared(&path);
        keys.push(
            MasterKey::from_base64_named(&id, &text)
                .map_err(|e| e.to_string())
                .map_err(keyring_error(format_args!("key file {}", path.display())))?,
        );
    }
    Keyring::new(keys, active)
        .map_err(|e| e.to_string())
        .map_err(keyring_error(format_args!(
            "key directory {}",
            dir.display()
        )))
}

/// Parses a key file: one bare base64 key (its id is its fingerprint), or
/// `id = base64` lines (`#` comments and blank lines allowed; values may be quoted).
pub fn parse_keyring(text: &str, active: Option<&str>) -> Result<Keyring, String> {
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let entry = |line: &str| -> Option<(String, String)> {
        let (id, value) = line.split_once('=')?;
        let (id, value) = (id.trim(), value.trim().trim_matches('"'));
        (valid_key_id(id) && !value.is_empty() && !value.starts_with('='))
            .then(|| (id.to_owned(), value.to_owned()))
    };
    match lines.as_slice() {
        [] => Err("it holds no key (make one with `credvault keygen`)".into()),
        [(_, only)] if entry(only).is_none() => {
            let key = MasterKey::from_base64(only).map_err(|e| e.to_string())?;
            if let Some(id) = active.filter(|id| *id != key.id()) {
                return Err(format!("the active key id {id} is not in the keyring"));
            }
            Ok(Keyring::single(key))
        }
        _ => {
            let mut keys = Vec::with_capacity(lines.len());
            for (number, line) in &lines {
                let (id, value) = entry(line).ok_or_else(|| {
                    format!("line {number} is not `id = base64-key` (ids use A-Z a-z 0-9 . _ -)")
                })?;
                let value = zeroize::Zeroizing::new(value);
                keys.push(
                    MasterKey::from_base64_named(&id, &value)
                        .map_err(|e| format!("line {number}: {e}"))?,
                );
            }
            Keyring::new(keys, active).map_err(|e| e.to_string())
        }
    }
}

/// Reads the keyring from [`MASTER_KEY_ENV`] if set.
pub fn keyring_from_env(active: Option<&str>) -> Result<Option<Keyring>, ConfigError> {
    match std::env::var(MASTER_KEY_ENV) {
        Ok(text) => {
            let text = zeroize::Zeroizing::new(text);
            parse_keyring(&text, active)
                .map(Some)
                .map_err(keyring_error(MASTER_KEY_ENV))
        }
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(ConfigError::NotUnicode),
    }
}

/// The keyring a server runs with: [`MASTER_KEY_ENV`], else `file`, else
/// `fallback` (the `--dev` key); with the source to re-read it from on SIGHUP.
pub fn resolve_keyring(
    file: Option<&Path>,
    active: Option<&str>,
    fallback: Option<&Path>,
) -> Result<(Keyring, Option<KeyringSource>), ConfigError> {
    let env = keyring_from_env(active)?;
    if env.is_some() && file.is_some() {
        return Err(ConfigError::TwoKeyrings);
    }
    if let Some(keyring) = env {
        return Ok((keyring, None));
    }
    let path = file.or(fallback).ok_or(ConfigError::NoKeyring)?;
    let source = KeyringSource {
        path: path.to_owned(),
        active: active.map(str::to_owned),
        joined: None,
    };
    Ok((source.read()?, Some(source)))
}

#[cfg(unix)]
fn warn_if_shared(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                file = %path.display(),
                "the master key file may be read by other users; chmod 600 it"
            );
        }
    }
}

#[cfg(not(unix))]
fn warn_if_shared(_: &Path) {}
