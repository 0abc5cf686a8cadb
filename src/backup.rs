//! Backups: a consistent snapshot of the store, still encrypted, in one file
//! with a SHA-256 checksum; and its restore into an empty data directory.
//!
//! File layout: the magic line `credvault-backup\n`, a prost-encoded
//! [`BackupFile`], then the SHA-256 of everything before it. Names and metadata
//! are in the clear, as in the store; every secret stays sealed.

use std::path::Path;

use prost::Message;
use prost_types::Timestamp;
use sha2::{Digest, Sha256};

use crate::crypto::{Keyring, Sealed};
use crate::keys::{self, KeyringError, KEY_CHECK_PREFIX};
use crate::provider::{ProviderSecret, SecretFormatError};
use crate::record;
use crate::sealing;
use crate::store::{Entries, Snapshot, Store, StoreError};

const MAGIC: &[u8] = b"credvault-backup\n";
const CHECKSUM_LEN: usize = 32;
/// The format number of backups this version writes and reads.
pub const BACKUP_FORMAT: u32 = 1;

/// A backup file's body.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BackupFile {
    #[prost(uint32, tag = "1")]
    pub format: u32,
    #[prost(message, optional, tag = "2")]
    pub create_time: Option<Timestamp>,
    /// The credvault version that wrote it.
    #[prost(string, tag = "3")]
    pub writer: String,
    #[prost(message, repeated, tag = "4")]
    pub records: Vec<Entry>,
    #[prost(message, repeated, tag = "5")]
    pub meta: Vec<Entry>,
    #[prost(message, repeated, tag = "6")]
    pub usage: Vec<Entry>,
    /// Deleted credentials, recoverable until purged.
    #[prost(message, repeated, tag = "7")]
    pub deleted: Vec<Entry>,
    /// Erasable keys (`<id>/<seal id>`): without them a format 3 secret does not open.
    #[prost(message, repeated, tag = "8")]
    pub erasable: Vec<Entry>,
}

/// One stored key and value.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Entry {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// Why a backup could not be read or restored.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The bytes do not start like a credvault backup.
    #[error("this is not a credvault backup file")]
    NotABackup,
    /// The checksum does not match: the file was cut short or altered.
    #[error("the backup is damaged: its SHA-256 checksum does not match (cut short or altered)")]
    Damaged,
    /// Written by a newer credvault.
    #[error("backup format {0} is not known to this version of credvault")]
    UnknownFormat(u32),
    /// The checksum matches but the body cannot be decoded.
    #[error("the backup's contents cannot be decoded")]
    Malformed,
    /// The keyring does not hold every key the backup needs.
    #[error("the keyring cannot open this backup: {0}")]
    Keys(#[from] KeyringError),
    /// The target already holds a store.
    #[error("{0} already holds a credvault store; restore into a new, empty data directory")]
    NotEmpty(String),
    /// The target store failed.
    #[error("the target store failed: {0}")]
    Store(#[from] StoreError),
}

/// What a backup holds, for reports.
#[derive(Clone, Debug, PartialEq)]
pub struct BackupSummary {
    /// When the snapshot was taken (RFC 3339).
    pub create_time: String,
    /// Credentials in it.
    pub credentials: usize,
    /// Master key ids its data needs.
    pub key_ids: Vec<String>,
}

fn entries(e: Entries) -> Vec<Entry> {
    e.into_iter()
        .map(|(key, value)| Entry { key, value })
        .collect()
}

fn unentries(e: Vec<Entry>) -> Entries {
    e.into_iter().map(|e| (e.key, e.value)).collect()
}

/// Encodes a snapshot as a backup file.
pub fn encode(snapshot: Snapshot) -> Vec<u8> {
    let body = BackupFile {
        format: BACKUP_FORMAT,
        create_time: Some(record::timestamp(std::time::SystemTime::now())),
        writer: format!("credvault {}", env!("CARGO_PKG_VERSION")),
        records: entries(snapshot.records),
        meta: entries(snapshot.meta),
        usage: entries(snapshot.usage),
        deleted: entries(snapshot.deleted),
        erasable: entries(snapshot.erasable),
    };
    let mut out = Vec::with_capacity(MAGIC.len() + body.encoded_len() + CHECKSUM_LEN);
    out.extend_from_slice(MAGIC);
    body.encode(&mut out).expect("a vec grows as needed");
    let sum = Sha256::digest(&out);
    out.extend_from_slice(&sum);
    out
}

/// Checks and decodes a backup file.
pub fn decode(bytes: &[u8]) -> Result<(Snapshot, BackupSummary), BackupError> {
    if !bytes.starts_with(MAGIC) {
        return Err(BackupError::NotABackup);
    }
    let split = bytes
        .len()
        .checked_sub(CHECKSUM_LEN)
        .filter(|&n| n >= MAGIC.len())
        .ok_or(BackupError::Damaged)?;
    let (content, sum) = bytes.split_at(split);
    if Sha256::digest(content).as_slice() != sum {
        return Err(BackupError::Damaged);
    }
    let body = BackupFile::decode(&content[MAGIC.len()..]).map_err(|_| BackupError::Malformed)?;
    if body.format != BACKUP_FORMAT {
        return Err(BackupError::UnknownFormat(body.format));
    }
    let snapshot = Snapshot {
        records: unentries(body.records),
        meta: unentries(body.meta),
        usage: unentries(body.usage),
        deleted: unentries(body.deleted),
        erasable: unentries(body.erasable),
    };
    let summary = BackupSummary {
        create_time: body
            .create_time
            .and_then(|t| {
                let secs = u64::try_from(t.seconds).ok()?;
                Some(
                    humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs),
                    )
                    .to_string(),
                )
            })
            .unwrap_or_default(),
        credentials: snapshot.records.len(),
        key_ids: key_checks(&snapshot)?
            .into_iter()
            .map(|c| c.key_id)
            .collect(),
    };
    Ok((snapshot, summary))
}

fn key_checks(snapshot: &Snapshot) -> Result<Vec<Sealed>, BackupError> {
    snapshot
        .meta
        .iter()
        .filter(|(k, _)| k.starts_with(KEY_CHECK_PREFIX))
        .map(|(_, v)| Sealed::decode(v.as_slice()).map_err(|_| BackupError::Malformed))
        .collect()
}

/// The outcome of a restore.
#[derive(Clone, Debug, PartialEq)]
pub struct RestoreReport {
    /// What the backup held.
    pub summary: BackupSummary,
    /// Credentials whose secret opened with the keyring after the restore.
    pub opened: usize,
    /// Ids of credentials whose secret did not open (damaged before the backup).
    pub damaged: Vec<String>,
}

/// Restores a backup file's bytes into the new data directory `dir`, after
/// checking that `keyring` holds every key its data needs; then opens every
/// restored secret to prove it.
pub async fn restore(
    bytes: &[u8],
    dir: &Path,
    keyring: Keyring,
) -> Result<RestoreReport, BackupError> {
    let (snapshot, summary) = decode(bytes)?;
    let checks = key_checks(&snapshot)?;
    if checks.is_empty() && !snapshot.records.is_empty() {
        return Err(KeyringError::MissingKeyCheck.into());
    }
    keys::keyring_holds(&keyring, &checks)?;
    let db = dir.join("db");
    if db.exists() {
        return Err(BackupError::NotEmpty(dir.display().to_string()));
    }
    let store = crate::store::open(&crate::store::StoreConfig::Sled {
        dir: dir.to_owned(),
    })
    .await?;
    store.restore(&snapshot).await?;
    keys::check_keyring(&store, &keyring).await?;
    // Every secret opened with the keyring and read as its provider's secret;
    // no provider client is needed for that.
    let (mut opened, mut damaged) = (0, Vec::new());
    for (id, _) in &snapshot.records {
        let ok = match store.get(id).await {
            // A declared provider's secret is checked by its seal alone: the
            // providers file is the server's, not the restore's.
            Ok(Some(record)) => sealing::open_record(&keyring, &record).is_ok_and(|plaintext| {
                matches!(
                    ProviderSecret::from_plaintext(&record.provider, &plaintext),
                    Ok(_) | Err(SecretFormatError::UnknownProvider(_))
                )
            }),
            _ => false,
        };
        if ok {
            opened += 1;
        } else {
            damaged.push(id.clone());
        }
    }
    store.flush().await?;
    Ok(RestoreReport {
        summary,
        opened,
        damaged,
    })
}
