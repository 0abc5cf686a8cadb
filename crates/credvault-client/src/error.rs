//! The one error type of the client.

use std::fmt;
use std::time::Duration;

/// Why headers could not be had. Messages never carry a secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// No credential has this name (the vault said so; it is watched, and
    /// served once it is created).
    NotFound(String),
    /// The credential was deleted: its headers are never served again.
    Deleted(String),
    /// The caller may not read this credential (outside its scope, or its
    /// access was narrowed): its headers are never served again.
    PermissionDenied(String),
    /// The vault does not know the client's token (any more).
    Unauthenticated(String),
    /// The vault cannot make the credential's headers now (its provider is not
    /// declared, a field is missing), and those held are older than allowed.
    Unavailable(String),
    /// The vault has been out of reach longer than the maximum staleness, so
    /// the headers held are no longer served.
    Stale {
        /// How long ago the headers were last known to be current.
        age: Duration,
        /// The client's maximum staleness.
        max: Duration,
    },
    /// The provider rejected the credential's secret when the vault last
    /// verified it: its headers are not served until an admin rotates it.
    Rejected(String),
    /// The provider account is paused (a worker reported a 429) past what the
    /// caller would wait: send nothing before `until`.
    Paused {
        /// When the pause ends.
        until: std::time::SystemTime,
    },
    /// The account's request budget for this window is spent (and the caller
    /// would not wait): ask again after `retry_after`.
    BudgetSpent {
        /// When the next window starts, from now.
        retry_after: Duration,
    },
    /// The client watches as many credentials as one stream may hold.
    TooManyCredentials(usize),
    /// The request was refused as malformed (e.g. an invalid name).
    InvalidArgument(String),
    /// Another failure of the call (the vault unreachable, a timeout).
    Rpc {
        /// The gRPC status code.
        code: tonic::Code,
        /// The status message.
        message: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotFound(m)
            | Error::Deleted(m)
            | Error::PermissionDenied(m)
            | Error::Unauthenticated(m)
            | Error::Unavailable(m)
            | Error::Rejected(m)
            | Error::InvalidArgument(m) => f.write_str(m),
            Error::Paused { until } => {
                let left = until
                    .duration_since(std::time::SystemTime::now())
                    .unwrap_or_default();
                write!(
                    f,
                    "the provider account is paused after a 429 for {:.1}s more; send nothing until then",
                    left.as_secs_f64()
                )
            }
            Error::BudgetSpent { retry_after } => write!(
                f,
                "the account's request budget for this window is spent; the next window starts in {:.1}s",
                retry_after.as_secs_f64()
            ),
            Error::Stale { age, max } => write!(
                f,
                "the vault has been out of reach for {:.1}s, past the maximum staleness of {:.1}s: the headers held are no longer served",
                age.as_secs_f64(),
                max.as_secs_f64()
            ),
            Error::TooManyCredentials(n) => write!(
                f,
                "this client watches {n} credentials, the most it may; use another client for more"
            ),
            Error::Rpc { code, message } => write!(f, "the vault call failed ({code:?}): {message}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        let message = status.message().to_owned();
        match status.code() {
            tonic::Code::NotFound => Error::NotFound(message),
            tonic::Code::PermissionDenied => Error::PermissionDenied(message),
            tonic::Code::Unauthenticated => Error::Unauthenticated(message),
            tonic::Code::InvalidArgument => Error::InvalidArgument(message),
            code => Error::Rpc { code, message },
        }
    }
}
