//! The one error type of the vault. Its variants follow gRPC's status codes by
//! meaning, but it knows nothing of gRPC: the server maps each onto its code.
//!
//! Messages are lowercase, name what was wrong and what to do, and never carry a
//! secret value or a token.

use crate::store::StoreError;

/// Everything a vault operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed: a field is empty, too long or of the wrong form.
    #[error("{0}")]
    InvalidArgument(String),
    /// No valid bearer token was presented.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// The caller is known but lacks the permission the call needs.
    #[error("{0}")]
    PermissionDenied(String),
    /// The addressed credential does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A credential with that name exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// A check-and-set saw another version than expected.
    #[error("{0}")]
    Aborted(String),
    /// The request is valid but cannot apply to the credential as it is.
    #[error("{0}")]
    FailedPrecondition(String),
    /// Stored bytes are damaged or cannot be opened with this master key.
    #[error("{0}")]
    DataLoss(String),
    /// The store cannot take the operation now (I/O error, shutting down).
    #[error("{0}")]
    Unavailable(String),
    /// A per-caller limit is reached (e.g. watch streams); retry once some are released.
    #[error("{0}")]
    ResourceExhausted(String),
    /// A bug or an unexpected state; details are logged, not returned.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// Shorthand for [`Error::InvalidArgument`].
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }
}

impl From<StoreError> for Error {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NameTaken(name) => {
                Error::AlreadyExists(format!("a credential named {name:?} exists already"))
            }
            StoreError::NotFound(id) => Error::NotFound(format!("credential {id} not found")),
            StoreError::VersionMismatch { id, expected, actual } => Error::Aborted(format!(
                "credential {id} is at version {actual}, not the expected {expected}; read it again and retry"
            )),
            StoreError::Corrupt { id, reason } => Error::DataLoss(format!(
                "stored record {id} is damaged ({reason}); restore it from a backup or delete it"
            )),
            StoreError::Conflict(id) => Error::Aborted(format!(
                "credential {id} kept changing while it was written; retry"
            )),
            StoreError::NotEmpty => Error::FailedPrecondition(
                "the target store already holds data; restore into an empty data directory".into(),
            ),
            StoreError::Io(e) => Error::Unavailable(format!("the credential store failed: {e}")),
            StoreError::Unreachable(e) => {
                Error::Unavailable(format!("the credential store failed: {e}; retry"))
            }
            e @ StoreError::Locked(_) => Error::Unavailable(e.to_string()),
            e @ StoreError::Rejected(_) => Error::InvalidArgument(e.to_string()),
        }
    }
}

impl From<crate::keys::SealRefused> for Error {
    fn from(err: crate::keys::SealRefused) -> Self {
        match err {
            crate::keys::SealRefused::Store(e) => e.into(),
            e @ crate::keys::SealRefused::Exhausted(_) => Error::FailedPrecondition(e.to_string()),
        }
    }
}
