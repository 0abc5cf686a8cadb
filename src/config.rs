//! Configuration: the resolved settings of a server, and loading of the
//! keyring, the callers file and the `--dev` bootstrap files.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::auth::{self, Callers, Permission};
use crate::crypto::{valid_key_id, Keyring, MasterKey};
use crate::provider::ProviderSettings;
use crate::reverify::ReverifySettings;
pub use crate::store::{PostgresSettings, StoreConfig};

/// Environment variable that may hold the master key or keyring (same text as a key file).
pub const MASTER_KEY_ENV: &str = "CREDVAULT_MASTER_KEY";

/// Why a server's configuration could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A key file or directory could not be read.
    #[error("cannot read {what} {}: {source}", path.display())]
    Read {
        /// What the file is.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A keyring's text is not valid; `source` says where it came from.
    /// A keyring that cannot be used.
    #[error("{origin}: {why}")]
    Keyring {
        /// Where it came from (a file, a directory, the environment).
        origin: String,
        /// What is wrong with it.
        why: String,
    },
    /// The environment's keyring is not valid unicode.
    #[error("{MASTER_KEY_ENV} is not valid unicode")]
    NotUnicode,
    /// The keyring is given twice.
    #[error("both {MASTER_KEY_ENV} and --master-key-file are set; use one")]
    TwoKeyrings,
    /// No keyring is given.
    #[error(
        "no master key: set {MASTER_KEY_ENV} or --master-key-file; make one with \
         `credvault keygen > master.key && chmod 600 master.key`, or start with --dev"
    )]
    NoKeyring,
    /// No callers file is given.
    #[error(
        "no callers file: pass --callers-file (or CREDVAULT_CALLERS_FILE); mint entries with \
         `credvault token --name NAME --permissions headers.read`, or start with --dev"
    )]
    NoCallers,
    /// The callers file could not be read.
    #[error(transparent)]
    Callers(#[from] auth::CallersError),
    /// A `--dev` file could not be made.
    #[error("--dev: cannot create {what} {}: {source}", path.display())]
    Dev {
        /// What the file is.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

fn keyring_error(origin: impl fmt::Display) -> impl FnOnce(String) -> ConfigError {
    let origin = origin.to_string();
    move |why| ConfigError::Keyring { origin, why }
}

/// Everything a running server needs, resolved and validated.
#[derive(Debug)]
pub struct Config {
    /// Which store holds the credentials.
    pub store: StoreConfig,
    /// Where the sled store lives (under `db/` inside it), and the default audit log.
    pub data_dir: PathBuf,
    /// The master keys: the active one wraps new data keys, the others open older ones.
    pub keyring: std::sync::Arc<Keyring>,
    /// Where the keyring was read from, to read it again on SIGHUP (none: from the environment).
    pub keyring_source: Option<KeyringSource>,
    /// Who may call, with which permissions.
    pub callers: std::sync::Arc<Callers>,
    /// The callers file, re-read on SIGHUP and when it changes.
    pub callers_file: Option<PathBuf>,
    /// Where audit events are appended (default `<data_dir>/audit.jsonl` on sled;
    /// none on PostgreSQL, whose database holds the trail).
    pub audit_log: Option<PathBuf>,
    /// How long the database keeps audit events (zero: for ever).
    pub audit_retention: Duration,
    /// Serve secret reads even while the audit log cannot be written.
    pub audit_fail_open: bool,
    /// Rotate the audit log at this size (0: never).
    pub audit_max_file_size: u64,
    /// Rotated audit files kept (0: all).
    pub audit_max_files: usize,
    /// What a secret read's answer waits for: its audit event written, or fsynced too.
    pub audit_sync: crate::audit::AuditSync,
    /// How often the audit trail writes a signed digest of its chain.
    pub audit_digests: crate::trail::DigestPolicy,
    /// Connection and HTTP/2 limits.
    pub transport: crate::transport::TransportSettings,
    /// How often refused calls not logged one by one are summarized per peer.
    pub refusal_summary_interval: Duration,
    /// TLS for the gRPC port, if any.
    pub tls: Option<TlsSettings>,
    /// A plaintext port serving only gRPC health (for probes when TLS is on).
    pub health_listen: Option<std::net::SocketAddr>,
    /// Provider endpoints and timeouts.
    pub providers: ProviderSettings,
    /// The background re-verifier's schedule.
    pub reverify: ReverifySettings,
    /// How long health shows NOT_SERVING, still serving, before new connections are refused.
    pub drain_delay: Duration,
    /// How long the audit trail may stay unwritable while the store takes writes
    /// before liveness turns NOT_SERVING (`--liveness-stuck-after`).
    pub liveness_stuck_after: Duration,
    /// Longest wait for in-flight calls after connections stop being accepted.
    pub shutdown_grace: Duration,
    /// Where to serve Prometheus `/metrics`, if anywhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// The web console, when it is turned on (`--console-listen`).
    pub console: Option<crate::console::ConsoleSettings>,
    /// Secret versions kept per credential, the current one included (`--keep-versions`).
    pub keep_versions: usize,
    /// How long a deleted credential stays recoverable (`--recovery-window`; zero: none).
    pub recovery_window: Duration,
    /// Limits and timing of `WatchCredentialHeaders` streams.
    pub watch: crate::watch::WatchSettings,
    /// Workers' reports and request budgets.
    pub feedback: crate::feedback::FeedbackSettings,
}

/// TLS settings of the gRPC port (the transport's own type).
pub use crate::transport::TlsSettings;

/// Where a keyring is read from, and which of its keys is active.
#[derive(Clone, Debug)]
pub struct KeyringSource {
    /// A key file (one bare base64 key, or `id = base64` lines) or a directory of key files.
    pub path: PathBuf,
    /// The id of the key that seals new data; by default the last entry (file) or
    /// the last file name in sort order (directory).
    pub active: Option<String>,
}

impl KeyringSource {
    /// Reads the keyring, warning if others may read a key file.
    pub fn read(&self) -> Result<Keyring, ConfigError> {
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

fn read_key_dir(dir: &Path, active: Option<&str>) -> Result<Keyring, ConfigError> {
    let unreadable = |source| ConfigError::Read {
        what: "key directory",
        path: dir.to_owned(),
        source,
    };
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    for entry in fs::read_dir(dir).map_err(unreadable)? {
        let entry = entry.map_err(unreadable)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // Skips hidden entries, such as Kubernetes' `..data` links of a mounted Secret.
        if name.starts_with('.') || !entry.path().is_file() {
            continue;
        }
        let id = name.strip_suffix(".key").unwrap_or(&name).to_owned();
        files.push((id, entry.path()));
    }
    files.sort();
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
    };
    Ok((source.read()?, Some(source)))
}

/// Where a server's files are, once `--dev` has made its own.
#[derive(Debug)]
pub struct Layout {
    /// The data directory.
    pub data_dir: PathBuf,
    /// The `--dev` key file, used when no other keyring is given.
    pub dev_key_file: Option<PathBuf>,
    /// The callers file.
    pub callers_file: Option<PathBuf>,
    /// The files `--dev` made or found.
    pub dev: Option<DevFiles>,
}

/// Resolves the data directory and callers file: given ones win; `--dev`
/// makes (or finds) its key, callers and token under `data_dir` (default
/// `.credvault-dev`); otherwise the data lives in `credvault-data`.
pub fn layout(
    dev: bool,
    data_dir: Option<&Path>,
    callers_file: Option<&Path>,
) -> Result<Layout, ConfigError> {
    if !dev {
        return Ok(Layout {
            data_dir: data_dir.map_or_else(|| PathBuf::from("credvault-data"), Path::to_owned),
            dev_key_file: None,
            callers_file: callers_file.map(Path::to_owned),
            dev: None,
        });
    }
    let root = data_dir.map_or_else(|| PathBuf::from(".credvault-dev"), Path::to_owned);
    let files = dev_bootstrap(&root)?;
    Ok(Layout {
        data_dir: files.data_dir.clone(),
        dev_key_file: Some(files.key_file.clone()),
        callers_file: Some(callers_file.map_or_else(|| files.callers_file.clone(), Path::to_owned)),
        dev: Some(files),
    })
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

/// Writes `contents` to a new file readable by its owner only (fails if it exists).
pub fn write_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// Files made by `--dev` in its root directory.
#[derive(Debug)]
pub struct DevFiles {
    /// The master key file.
    pub key_file: PathBuf,
    /// The callers file with the one all-permissions dev caller.
    pub callers_file: PathBuf,
    /// The dev caller's token, kept so the README's commands can read it.
    pub token_file: PathBuf,
    /// Where the store lives.
    pub data_dir: PathBuf,
}

/// Creates (on first run) or finds the `--dev` files under `root`.
pub fn dev_bootstrap(root: &Path) -> Result<DevFiles, ConfigError> {
    let files = DevFiles {
        key_file: root.join("master.key"),
        callers_file: root.join("callers.toml"),
        token_file: root.join("dev-token"),
        data_dir: root.join("data"),
    };
    let err = |what: &'static str, path: &Path, source: std::io::Error| ConfigError::Dev {
        what,
        path: path.to_owned(),
        source,
    };
    fs::create_dir_all(root).map_err(|e| err("directory", root, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(root, fs::Permissions::from_mode(0o700))
            .map_err(|e| err("directory", root, e))?;
    }
    if !files.key_file.exists() {
        let key = MasterKey::generate_base64();
        write_private_file(&files.key_file, format!("{}\n", key.as_str()).as_bytes())
            .map_err(|e| err("key file", &files.key_file, e))?;
    }
    if !files.callers_file.exists() || !files.token_file.exists() {
        let token = auth::mint_token();
        let entry = auth::callers_entry("dev", &token, &Permission::ALL);
        let _ = fs::remove_file(&files.callers_file);
        let _ = fs::remove_file(&files.token_file);
        write_private_file(
            &files.token_file,
            format!("{}\n", token.as_str()).as_bytes(),
        )
        .map_err(|e| err("token file", &files.token_file, e))?;
        let text =
            format!("# made by `credvault serve --dev`: one caller with every permission\n{entry}");
        write_private_file(&files.callers_file, text.as_bytes())
            .map_err(|e| err("callers file", &files.callers_file, e))?;
    }
    Ok(files)
}

/// Loads the callers file, explaining how to make one when it is missing.
pub fn load_callers(path: Option<&Path>) -> Result<Callers, ConfigError> {
    let path = path.ok_or(ConfigError::NoCallers)?;
    let callers = Callers::load(path)?;
    if callers.is_empty() {
        tracing::warn!(file = %path.display(), "the callers file lists no caller: every call will be refused");
    }
    Ok(callers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_hold_one_bare_key_or_named_entries() {
        let (a, b) = (MasterKey::generate_base64(), MasterKey::generate_base64());
        let single = parse_keyring(&format!("\n{}\n", a.as_str()), None).unwrap();
        assert_eq!(
            single.active().id(),
            MasterKey::from_base64(&a).unwrap().id()
        );
        let text = format!(
            "# rotated 2026-11\nold = {}\nnew = \"{}\"\n",
            a.as_str(),
            b.as_str()
        );
        let ring = parse_keyring(&text, None).unwrap();
        assert_eq!(ring.active().id(), "new");
        assert_eq!(ring.ids().collect::<Vec<_>>(), ["old", "new"]);
        assert_eq!(
            parse_keyring(&text, Some("old")).unwrap().active().id(),
            "old"
        );
        for bad in [
            String::new(),
            "# only a comment".to_owned(),
            format!("old = {}\n{}", a.as_str(), b.as_str()),
            format!("bad id = {}", a.as_str()),
            format!("a = {}\na = {}", a.as_str(), b.as_str()),
            "k = bm90IGEga2V5".to_owned(),
        ] {
            let err = parse_keyring(&bad, None).unwrap_err();
            assert!(
                !err.contains(a.as_str()) && !err.contains(b.as_str()),
                "{err}"
            );
        }
        assert!(parse_keyring(&text, Some("missing")).is_err());
    }

    #[test]
    fn key_directories_skip_hidden_entries_and_sort_by_name() {
        let dir = tempfile::TempDir::new().unwrap();
        let (a, b) = (MasterKey::generate_base64(), MasterKey::generate_base64());
        std::fs::write(dir.path().join("2026-01.key"), a.as_str()).unwrap();
        std::fs::write(dir.path().join("2026-11"), b.as_str()).unwrap();
        std::fs::write(dir.path().join(".hidden"), "junk").unwrap();
        std::fs::create_dir(dir.path().join("..data")).unwrap();
        let source = KeyringSource {
            path: dir.path().to_owned(),
            active: None,
        };
        let ring = source.read().unwrap();
        assert_eq!(ring.ids().collect::<Vec<_>>(), ["2026-01", "2026-11"]);
        assert_eq!(ring.active().id(), "2026-11");
    }
}
