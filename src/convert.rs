//! Conversions from domain types to the API's, shared by the service and the
//! watch stream (neither imports the other for them).

use crate::api;
use crate::record::{Verification, VerificationStatus};

/// A verification as the API shows it.
pub(crate) fn verification_to_api(v: &Verification) -> api::Verification {
    use api::VerificationStatus as A;
    let status =
        match VerificationStatus::try_from(v.status).unwrap_or(VerificationStatus::Unspecified) {
            VerificationStatus::Unspecified => A::Unspecified,
            VerificationStatus::Valid => A::Valid,
            VerificationStatus::ApiKeyRejected => A::ApiKeyRejected,
            VerificationStatus::AccountTokenRejected => A::AccountTokenRejected,
            VerificationStatus::Forbidden => A::Forbidden,
            VerificationStatus::RateLimited => A::RateLimited,
            VerificationStatus::ProviderError => A::ProviderError,
            VerificationStatus::Unreachable => A::Unreachable,
            VerificationStatus::SecretRejected => A::SecretRejected,
        };
    api::Verification {
        status: status as i32,
        http_status: v.http_status,
        message: v.message.clone(),
        retry_after_seconds: v.retry_after_seconds,
        check_time: v.check_time,
        rejected_field: v.rejected_field.clone(),
    }
}
