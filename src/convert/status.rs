//! The domain's [`Error`] onto gRPC: each variant's status code, and the status a
//! caller is answered with (an internal error's details stay in the log).

use tonic::{Code, Status};

use crate::error::Error;

/// The gRPC code `err` answers with.
pub fn code(err: &Error) -> Code {
    match err {
        Error::InvalidArgument(_) => Code::InvalidArgument,
        Error::Unauthenticated(_) => Code::Unauthenticated,
        Error::PermissionDenied(_) => Code::PermissionDenied,
        Error::NotFound(_) => Code::NotFound,
        Error::AlreadyExists(_) => Code::AlreadyExists,
        Error::Aborted(_) => Code::Aborted,
        Error::FailedPrecondition(_) => Code::FailedPrecondition,
        Error::DataLoss(_) => Code::DataLoss,
        Error::Unavailable(_) => Code::Unavailable,
        Error::ResourceExhausted(_) => Code::ResourceExhausted,
        Error::Internal(_) => Code::Internal,
    }
}

/// The status a caller is answered with for `err`.
pub fn status(err: Error) -> Status {
    let code = code(&err);
    match err {
        // Internal details stay in the log; the caller gets a generic message.
        Error::Internal(_) => Status::new(code, "internal error; see the server log"),
        Error::InvalidArgument(m)
        | Error::PermissionDenied(m)
        | Error::NotFound(m)
        | Error::AlreadyExists(m)
        | Error::Aborted(m)
        | Error::FailedPrecondition(m)
        | Error::DataLoss(m)
        | Error::Unavailable(m)
        | Error::ResourceExhausted(m) => Status::new(code, m),
        Error::Unauthenticated(m) => Status::new(code, m),
    }
}
