//! Backups: a consistent snapshot of the store, still encrypted, in one file
//! that authenticates itself; and its restore into an empty data directory.
//!
//! Format 2 (written now): the magic line `credvault-backup\n`, then frames, each
//! a 4-byte big-endian length, a prost message and an HMAC-SHA256 of 32 bytes
//! under a subkey of a master key (never the key itself). The first frame is the
//! head ([`BackupHead`]: format, time, writer, a random backup id and the master
//! key id); then one frame per stored entry ([`Section`]: part, key, value); then
//! the tail ([`BackupTail`]: the number of sections). Each MAC covers its frame,
//! its position and the MAC before it, so `restore` refuses an edited byte, a
//! removed, added or reordered section, a section of another backup, or a file
//! cut short, and says at which section it stops being valid. Names and metadata
//! are in the clear, as in the store; every secret stays sealed.
//!
//! Format 1 (a body and a plain SHA-256, which catches accidents only) is still
//! read, but restored only when asked to (`--allow-unauthenticated`).

use std::path::Path;

use hmac::{Hmac, Mac};
use prost::Message;
use prost_types::Timestamp;
use sha2::{Digest, Sha256};

use crate::crypto::{Keyring, MasterKey, Sealed};
use crate::keys::{self, KeyringError, KEY_CHECK_PREFIX};
use crate::provider::{ProviderSecret, SecretFormatError};
use crate::record;
use crate::sealing;
use crate::store::prelude::*;
use crate::store::{Entries, Snapshot, StoreError};

const MAGIC: &[u8] = b"credvault-backup\n";
const CHECKSUM_LEN: usize = 32;
const MAC_LEN: usize = 32;
/// The format number of backups this version writes.
pub const BACKUP_FORMAT: u32 = 2;
/// The format of backups with a plain checksum (read, restored only when asked).
pub const UNAUTHENTICATED_FORMAT: u32 = 1;
/// The label of the subkey that authenticates backups.
const MAC_LABEL: &[u8] = b"credvault/backup-mac/v1";
/// The largest frame read (a record is far smaller).
const MAX_FRAME: usize = 64 * 1024 * 1024;

/// A format 1 backup file's body.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BackupFile {
    /// The backup format version.
    #[prost(uint32, tag = "1")]
    pub format: u32,
    /// When the backup was taken.
    #[prost(message, optional, tag = "2")]
    pub create_time: Option<Timestamp>,
    /// The credvault version that wrote it.
    #[prost(string, tag = "3")]
    pub writer: String,
    /// The credential records, still sealed.
    #[prost(message, repeated, tag = "4")]
    pub records: Vec<Entry>,
    /// The store's metadata (key checks, seal counts).
    #[prost(message, repeated, tag = "5")]
    pub meta: Vec<Entry>,
    /// The credentials' last uses.
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
    /// The store's key.
    #[prost(string, tag = "1")]
    pub key: String,
    /// The stored bytes.
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// The first frame of a format 2 backup.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BackupHead {
    /// The backup format version.
    #[prost(uint32, tag = "1")]
    pub format: u32,
    /// When the backup was taken.
    #[prost(message, optional, tag = "2")]
    pub create_time: Option<Timestamp>,
    /// The program and version that wrote it.
    #[prost(string, tag = "3")]
    pub writer: String,
    /// Random: a section of another backup does not verify in this one.
    #[prost(bytes = "vec", tag = "4")]
    pub backup_id: Vec<u8>,
    /// The master key whose subkey authenticates the file.
    #[prost(string, tag = "5")]
    pub mac_key_id: String,
}

/// One stored entry of a format 2 backup.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Section {
    /// `records`, `meta`, `usage`, `deleted` or `erasable`.
    #[prost(string, tag = "1")]
    pub part: String,
    /// The store's key.
    #[prost(string, tag = "2")]
    pub key: String,
    /// The stored bytes.
    #[prost(bytes = "vec", tag = "3")]
    pub value: Vec<u8>,
}

/// The last frame of a format 2 backup: how many sections came before it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BackupTail {
    /// How many sections the file holds (a cut file is told from a whole one).
    #[prost(uint64, tag = "1")]
    pub sections: u64,
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
    /// A format 2 file stops being valid at a frame.
    #[error("the backup is not valid from {0}: it was edited, reordered, spliced from another backup or cut short there; nothing was restored")]
    Invalid(String),
    /// A format 1 file, which carries a checksum only.
    #[error("this backup is format 1, which carries a checksum only, not a MAC: it cannot prove it was not edited; restore it with --allow-unauthenticated if you trust the file")]
    Unauthenticated,
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
    /// The backup's format (2: authenticated).
    pub format: u32,
}

fn unentries(e: Vec<Entry>) -> Entries {
    e.into_iter().map(|e| (e.key, e.value)).collect()
}

/// The MAC of one frame: its kind and position, the MAC before it, its bytes.
fn frame_mac(key: &[u8], position: &[u8], previous: &[u8], payload: &[u8]) -> [u8; MAC_LEN] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("hmac takes any key length");
    mac.update(&(position.len() as u32).to_be_bytes());
    mac.update(position);
    mac.update(previous);
    mac.update(payload);
    mac.finalize().into_bytes().into()
}

fn push_frame(out: &mut Vec<u8>, payload: &[u8], mac: &[u8; MAC_LEN]) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(mac);
}

/// The parts of a snapshot, in file order.
fn parts(snapshot: Snapshot) -> [(&'static str, Entries); 5] {
    [
        ("records", snapshot.records),
        ("meta", snapshot.meta),
        ("usage", snapshot.usage),
        ("deleted", snapshot.deleted),
        ("erasable", snapshot.erasable),
    ]
}

/// Encodes a snapshot as an authenticated backup file, under a subkey of `key`
/// (the active master key).
pub fn encode(snapshot: Snapshot, key: &MasterKey) -> Vec<u8> {
    use rand::RngCore as _;
    let mac_key = key.derive_subkey(MAC_LABEL);
    let mut backup_id = vec![0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut backup_id);
    let head = BackupHead {
        format: BACKUP_FORMAT,
        create_time: Some(record::timestamp(std::time::SystemTime::now())),
        writer: format!("credvault {}", env!("CARGO_PKG_VERSION")),
        backup_id,
        mac_key_id: key.id().to_owned(),
    };
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    let payload = head.encode_to_vec();
    let mut previous = frame_mac(mac_key.as_ref(), b"head", &[], &payload);
    push_frame(&mut out, &payload, &previous);
    let mut n: u64 = 0;
    for (part, entries) in parts(snapshot) {
        for (key, value) in entries {
            n += 1;
            let payload = Section {
                part: part.to_owned(),
                key,
                value,
            }
            .encode_to_vec();
            let mac = frame_mac(mac_key.as_ref(), &n.to_be_bytes(), &previous, &payload);
            push_frame(&mut out, &payload, &mac);
            previous = mac;
        }
    }
    let payload = BackupTail { sections: n }.encode_to_vec();
    let mac = frame_mac(mac_key.as_ref(), b"tail", &previous, &payload);
    push_frame(&mut out, &payload, &mac);
    out
}

/// One frame of a format 2 file: its payload and its MAC.
type Frame<'a> = (&'a [u8], &'a [u8]);

/// The frames of a format 2 file, or where the file breaks.
fn frames(mut rest: &[u8]) -> Result<Vec<Frame<'_>>, String> {
    let mut out = Vec::new();
    while !rest.is_empty() {
        let at = out.len();
        let name = || {
            if at == 0 {
                "its head".to_owned()
            } else {
                format!("section {at}")
            }
        };
        if rest.len() < 4 {
            return Err(format!("{}: the file ends inside a frame length", name()));
        }
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len > MAX_FRAME || rest.len() < 4 + len + MAC_LEN {
            return Err(format!("{}: the file ends inside it", name()));
        }
        out.push((&rest[4..4 + len], &rest[4 + len..4 + len + MAC_LEN]));
        rest = &rest[4 + len + MAC_LEN..];
    }
    Ok(out)
}

/// Checks and decodes a backup file with `keyring` (which must hold the key
/// that authenticated it). A format 1 file is refused unless `allow_unauthenticated`.
pub fn decode(
    bytes: &[u8],
    keyring: &Keyring,
    allow_unauthenticated: bool,
) -> Result<(Snapshot, BackupSummary), BackupError> {
    if !bytes.starts_with(MAGIC) {
        return Err(BackupError::NotABackup);
    }
    if let Some(v1) = decode_v1(bytes)? {
        if !allow_unauthenticated {
            return Err(BackupError::Unauthenticated);
        }
        return Ok(v1);
    }
    read_v2(bytes, Some(keyring))
}

/// A backup's contents and summary WITHOUT checking its MACs: for reports
/// (what a backup just received holds), never for a restore.
pub fn inspect(bytes: &[u8]) -> Result<(Snapshot, BackupSummary), BackupError> {
    if !bytes.starts_with(MAGIC) {
        return Err(BackupError::NotABackup);
    }
    match decode_v1(bytes)? {
        Some(v1) => Ok(v1),
        None => read_v2(bytes, None),
    }
}

/// A format 2 file, checked frame by frame when a keyring is given.
fn read_v2(
    bytes: &[u8],
    keyring: Option<&Keyring>,
) -> Result<(Snapshot, BackupSummary), BackupError> {
    let invalid = BackupError::Invalid;
    let frames = frames(&bytes[MAGIC.len()..]).map_err(invalid)?;
    let Some(((head_bytes, head_mac), rest)) = frames.split_first() else {
        return Err(BackupError::Invalid(
            "its head: the file holds no frame".into(),
        ));
    };
    let head = BackupHead::decode(*head_bytes).map_err(|_| BackupError::Malformed)?;
    if head.format != BACKUP_FORMAT {
        return Err(BackupError::UnknownFormat(head.format));
    }
    let mac_key = match keyring {
        Some(keyring) => Some(
            keyring
                .get(&head.mac_key_id)
                .ok_or_else(|| KeyringError::MissingKey {
                    needed: head.mac_key_id.clone(),
                    held: keyring.ids().collect::<Vec<_>>().join(", "),
                })?
                .derive_subkey(MAC_LABEL),
        ),
        None => None,
    };
    let verify = |position: &[u8], previous: &[u8], payload: &[u8], mac: &[u8]| {
        mac_key.as_ref().is_none_or(|k| {
            use subtle::ConstantTimeEq as _;
            bool::from(frame_mac(k.as_ref(), position, previous, payload).ct_eq(mac))
        })
    };
    if !verify(b"head", &[], head_bytes, head_mac) {
        return Err(invalid(
            "its head: its MAC does not verify (edited, or authenticated by another key with that id)".into(),
        ));
    }
    // The last frame is the tail; those between are the sections.
    let Some(((tail_bytes, tail_mac), sections)) = rest.split_last() else {
        return Err(invalid(
            "the end: the file stops after its head (cut short)".into(),
        ));
    };
    let mut snapshot = Snapshot::default();
    let mut previous: &[u8] = head_mac;
    for (i, (payload, mac)) in sections.iter().enumerate() {
        let n = i as u64 + 1;
        if !verify(&n.to_be_bytes(), previous, payload, mac) {
            // Name what the section says it is, to find it (unverified text).
            let what = Section::decode(*payload)
                .map(|s| format!(" ({} {})", s.part, crate::escape::shown(&s.key)))
                .unwrap_or_default();
            return Err(invalid(format!(
                "section {n}{what}: its MAC does not verify after section {}",
                n - 1
            )));
        }
        let section = Section::decode(*payload).map_err(|_| BackupError::Malformed)?;
        let entry = (section.key, section.value);
        match section.part.as_str() {
            "records" => snapshot.records.push(entry),
            "meta" => snapshot.meta.push(entry),
            "usage" => snapshot.usage.push(entry),
            "deleted" => snapshot.deleted.push(entry),
            "erasable" => snapshot.erasable.push(entry),
            _ => return Err(BackupError::Malformed),
        }
        previous = mac;
    }
    let n = sections.len();
    if !verify(b"tail", previous, tail_bytes, tail_mac) {
        // A last frame that verifies as the next section: the tail was cut off.
        let why = if verify(
            &(n as u64 + 1).to_be_bytes(),
            previous,
            tail_bytes,
            tail_mac,
        ) {
            format!(
                "the end: the file stops after section {} without its tail (cut short)",
                n + 1
            )
        } else {
            format!(
                "section {} or the tail: its MAC does not verify after section {n}",
                n + 1
            )
        };
        return Err(invalid(why));
    }
    let tail = BackupTail::decode(*tail_bytes).map_err(|_| BackupError::Malformed)?;
    if tail.sections != n as u64 {
        return Err(invalid(format!(
            "its tail: it counts {} sections, the file holds {n}",
            tail.sections
        )));
    }
    let summary = summary(&snapshot, head.create_time, BACKUP_FORMAT)?;
    Ok((snapshot, summary))
}

/// A format 1 file (`None` when the file is not format 1).
fn decode_v1(bytes: &[u8]) -> Result<Option<(Snapshot, BackupSummary)>, BackupError> {
    let Some(split) = bytes
        .len()
        .checked_sub(CHECKSUM_LEN)
        .filter(|&n| n >= MAGIC.len())
    else {
        return Ok(None);
    };
    let (content, sum) = bytes.split_at(split);
    if Sha256::digest(content).as_slice() != sum {
        // Not format 1, or a damaged one: a format 1 body starts with its format field.
        return match BackupFile::decode(&content[MAGIC.len()..]) {
            Ok(body) if body.format == UNAUTHENTICATED_FORMAT => Err(BackupError::Damaged),
            _ => Ok(None),
        };
    }
    let body = BackupFile::decode(&content[MAGIC.len()..]).map_err(|_| BackupError::Malformed)?;
    if body.format != UNAUTHENTICATED_FORMAT {
        return Err(BackupError::UnknownFormat(body.format));
    }
    let snapshot = Snapshot {
        records: unentries(body.records),
        meta: unentries(body.meta),
        usage: unentries(body.usage),
        deleted: unentries(body.deleted),
        erasable: unentries(body.erasable),
    };
    let summary = summary(&snapshot, body.create_time, UNAUTHENTICATED_FORMAT)?;
    Ok(Some((snapshot, summary)))
}

fn summary(
    snapshot: &Snapshot,
    create_time: Option<Timestamp>,
    format: u32,
) -> Result<BackupSummary, BackupError> {
    Ok(BackupSummary {
        create_time: create_time
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
        key_ids: key_checks(snapshot)?
            .into_iter()
            .map(|c| c.key_id)
            .collect(),
        format,
    })
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
/// checking that the file authenticates under `keyring` and that `keyring` holds
/// every key its data needs; then opens every restored secret to prove it.
pub async fn restore(
    bytes: &[u8],
    dir: &Path,
    keyring: Keyring,
    allow_unauthenticated: bool,
) -> Result<RestoreReport, BackupError> {
    let (snapshot, summary) = decode(bytes, &keyring, allow_unauthenticated)?;
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

#[cfg(test)]
mod format_tests {
    use super::*;

    fn keyring() -> Keyring {
        Keyring::single(MasterKey::from_base64(&MasterKey::generate_base64()).unwrap())
    }

    #[test]
    fn a_format_1_file_is_restored_only_when_asked() {
        let body = BackupFile {
            format: UNAUTHENTICATED_FORMAT,
            ..Default::default()
        };
        let mut v1 = MAGIC.to_vec();
        body.encode(&mut v1).unwrap();
        let sum = Sha256::digest(&v1);
        v1.extend_from_slice(&sum);
        let keys = keyring();
        assert!(matches!(
            decode(&v1, &keys, false),
            Err(BackupError::Unauthenticated)
        ));
        let (_, summary) = decode(&v1, &keys, true).unwrap();
        assert_eq!(summary.format, 1);
        // Format 2 round trip, and another keyring: refused, naming the key.
        let v2 = encode(Snapshot::default(), keys.active());
        assert_eq!(decode(&v2, &keys, false).unwrap().1.format, 2);
        let other = keyring();
        assert!(matches!(
            decode(&v2, &other, false),
            Err(BackupError::Keys(KeyringError::MissingKey { .. }))
        ));
    }
}
