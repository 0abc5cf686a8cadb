//! Storage of credential records behind a narrow, engine-neutral trait.
//!
//! The store deals in [`CredentialRecord`]s whose secrets are already sealed: it
//! never sees a plaintext secret, and it knows nothing of gRPC. Every write is
//! durable when its future resolves.

use std::future::Future;

use crate::crypto::Sealed;
use crate::record::{CredentialRecord, Usage};

mod sled;

pub use self::sled::SledStore;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another record holds that name.
    #[error("name {0:?} is taken")]
    NameTaken(String),
    /// No record has that id.
    #[error("record {0} not found")]
    NotFound(String),
    /// A check-and-set saw another version.
    #[error("record {id} is at version {actual}, expected {expected}")]
    VersionMismatch {
        id: String,
        expected: u64,
        actual: u64,
    },
    /// Stored bytes could not be decoded.
    #[error("record {id} is corrupt: {reason}")]
    Corrupt { id: String, reason: String },
    /// The engine failed (I/O, disk full, read-only).
    #[error("{0}")]
    Io(String),
}

/// One row of a listing: the record's key and the record, or why it could not be read.
pub type ListItem = (String, Result<CredentialRecord, StoreError>);

/// A credential store. Ids order records by creation time.
pub trait Store: Send + Sync + 'static {
    /// The key-check value the data was created with, if any.
    fn key_check(&self) -> impl Future<Output = Result<Option<Sealed>, StoreError>> + Send;

    /// Records the key-check value of a new store (only when none is set).
    fn set_key_check(&self, check: &Sealed) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The record with this id, if any.
    fn get(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<CredentialRecord>, StoreError>> + Send;

    /// The id of the record with this name, if any.
    fn id_for_name(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;

    /// Up to `limit` records in id order, starting after `after`.
    fn list(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<ListItem>, StoreError>> + Send;

    /// How many records there are.
    fn count(&self) -> impl Future<Output = Result<usize, StoreError>> + Send;

    /// Stores a new record; fails with [`StoreError::NameTaken`] if its name is used.
    fn insert(
        &self,
        record: &CredentialRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Replaces a record (same id and name) if the stored one is at `expected_version`.
    fn replace(
        &self,
        record: &CredentialRecord,
        expected_version: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Deletes a record, if it is at `expected_version` when one is given.
    fn delete(
        &self,
        id: &str,
        expected_version: Option<u64>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// When the credential's secret was last read, and by whom.
    fn usage(&self, id: &str) -> impl Future<Output = Result<Option<Usage>, StoreError>> + Send;

    /// Records last uses in one batch (ids no longer stored are skipped).
    fn record_usage(
        &self,
        batch: &[(String, Usage)],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Makes every acknowledged write durable (called at shutdown).
    fn flush(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}
