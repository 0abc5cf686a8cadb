//! Configuration: the resolved settings of a server ([`Config`]), assembled from
//! the keyring's sources (`keyring`), the callers file, and the `--dev` bootstrap
//! files and the data directory's layout (`dev`).

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
         `credvault keygen > master.key && chmod 600 master.key`, or start with --dev; \
         or keep the master keys sealed by OpenBao/Vault Transit or an HSM \
         (--key-provider transit|pkcs11, docs/key-roots.md)"
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

/// Everything a running server needs, resolved and validated.
#[derive(Debug)]
pub struct Config {
    /// Which store holds the credentials.
    pub store: StoreConfig,
    /// Where the sled store lives (under `db/` inside it), and the default audit log.
    pub data_dir: PathBuf,
    /// The master keys read from a key file or the environment: the active one wraps
    /// new data keys, the others open older ones. None when key roots hold them all.
    pub keyring: Option<std::sync::Arc<Keyring>>,
    /// Key roots (OpenBao/Vault Transit, a PKCS#11 HSM) that seal master keys kept
    /// in the store; unsealed at start, joined to `keyring`.
    pub key_roots: Option<KeyRootSettings>,
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

/// The key roots of a server, and how it watches them.
#[derive(Debug, Clone)]
pub struct KeyRootSettings {
    /// The configured roots and which seals the active key.
    pub roots: std::sync::Arc<crate::keyroot::Roots>,
    /// How often the roots are checked (token renewed, Transit versions followed).
    pub check_interval: Duration,
    /// Readiness (and liveness) turn NOT_SERVING when the roots have not confirmed
    /// for this long (zero: keys held in memory serve for as long as the process lives).
    pub max_unconfirmed: Duration,
}

/// TLS settings of the gRPC port (the transport's own type).
pub use crate::transport::TlsSettings;

mod dev;
mod keyring;

pub use dev::*;
pub use keyring::*;

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
            joined: None,
        };
        let ring = source.read().unwrap();
        assert_eq!(ring.ids().collect::<Vec<_>>(), ["2026-01", "2026-11"]);
        assert_eq!(ring.active().id(), "2026-11");
    }

    #[test]
    fn a_reread_key_file_keeps_the_keys_of_the_roots_and_their_active_key() {
        let dir = tempfile::TempDir::new().unwrap();
        let file = dir.path().join("keys");
        std::fs::write(
            &file,
            format!("old = {}\n", MasterKey::generate_base64().as_str()),
        )
        .unwrap();
        let sealed = MasterKey::from_base64(&MasterKey::generate_base64()).unwrap();
        let mut source = KeyringSource {
            path: file.clone(),
            active: None,
            joined: Some(Joined {
                keys: vec![sealed.clone()],
                active: Some(sealed.id().to_owned()),
            }),
        };
        let ring = source.read().unwrap();
        assert_eq!(ring.ids().collect::<Vec<_>>(), ["old", sealed.id()]);
        assert_eq!(ring.active().id(), sealed.id());
        // With the file's key active (--key-provider file), the roots' keys only open.
        source.joined.as_mut().unwrap().active = None;
        assert_eq!(source.read().unwrap().active().id(), "old");
    }
}
