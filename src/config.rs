//! Configuration: the resolved settings of a server, and loading of the master
//! key, the callers file and the `--dev` bootstrap files.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::auth::{self, Callers, Permission};
use crate::crypto::MasterKey;
use crate::provider::ProviderSettings;
use crate::reverify::ReverifySettings;

/// Environment variable that may hold the base64 master key.
pub const MASTER_KEY_ENV: &str = "CREDVAULT_MASTER_KEY";

/// Everything a running server needs, resolved and validated.
#[derive(Debug)]
pub struct Config {
    /// Where the store lives (sled keeps its files under `db/` inside it).
    pub data_dir: PathBuf,
    /// The key that seals every secret.
    pub master_key: MasterKey,
    /// Who may call, with which permissions.
    pub callers: Callers,
    /// The callers file, re-read on SIGHUP and when it changes.
    pub callers_file: Option<PathBuf>,
    /// Where audit events are appended (default `<data_dir>/audit.jsonl`).
    pub audit_log: Option<PathBuf>,
    /// Serve secret reads even while the audit log cannot be written.
    pub audit_fail_open: bool,
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
    /// Longest wait for in-flight calls after connections stop being accepted.
    pub shutdown_grace: Duration,
    /// Where to serve Prometheus `/metrics`, if anywhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// TLS settings of the gRPC port.
#[derive(Clone, Debug)]
pub struct TlsSettings {
    /// PEM certificate chain of the server.
    pub cert: PathBuf,
    /// PEM private key of the server.
    pub key: PathBuf,
    /// PEM CA bundle for client certificates (mutual TLS); optional for clients.
    pub client_ca: Option<PathBuf>,
}

/// Reads a master key from a key file (base64), warning if others may read it.
pub fn read_master_key_file(path: &Path) -> Result<MasterKey, String> {
    let text = zeroize::Zeroizing::new(
        fs::read_to_string(path)
            .map_err(|e| format!("cannot read master key file {}: {e}", path.display()))?,
    );
    warn_if_shared(path);
    MasterKey::from_base64(&text).map_err(|e| format!("master key file {}: {e}", path.display()))
}

/// Reads the master key from [`MASTER_KEY_ENV`] if set.
pub fn master_key_from_env() -> Result<Option<MasterKey>, String> {
    match std::env::var(MASTER_KEY_ENV) {
        Ok(text) => {
            let text = zeroize::Zeroizing::new(text);
            MasterKey::from_base64(&text)
                .map(Some)
                .map_err(|e| format!("{MASTER_KEY_ENV}: {e}"))
        }
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => {
            Err(format!("{MASTER_KEY_ENV} is not valid unicode"))
        }
    }
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
pub fn dev_bootstrap(root: &Path) -> Result<DevFiles, String> {
    let files = DevFiles {
        key_file: root.join("master.key"),
        callers_file: root.join("callers.toml"),
        token_file: root.join("dev-token"),
        data_dir: root.join("data"),
    };
    let err = |what: &str, path: &Path, e: std::io::Error| {
        format!("--dev: cannot create {what} {}: {e}", path.display())
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
pub fn load_callers(path: Option<&Path>) -> Result<Callers, String> {
    let path = path.ok_or(
        "no callers file: pass --callers-file (or CREDVAULT_CALLERS_FILE); mint entries with \
         `credvault token --name NAME --permissions headers.read`, or start with --dev",
    )?;
    let callers = Callers::load(path)?;
    if callers.is_empty() {
        tracing::warn!(file = %path.display(), "the callers file lists no caller: every call will be refused");
    }
    Ok(callers)
}
