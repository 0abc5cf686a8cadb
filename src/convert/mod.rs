//! Conversions from domain types to the API's, in one place at the edge: a
//! credential, a version, a verification, an audit event, times. Shared by the
//! service and the watch stream (neither imports the other for them). The parts:
//! `status` (the domain's error onto gRPC status codes) and `secret` (a request's
//! secret oneof onto a provider's secret).

mod secret;
mod status;

pub use secret::*;
pub use status::*;

use crate::api;
use crate::feedback;
use crate::provider::Catalog;
use crate::record::{self, CredentialRecord, Usage, Verification, VerificationStatus};

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

pub(crate) fn audit_to_api(e: crate::audit::AuditEvent) -> api::AuditEvent {
    api::AuditEvent {
        time: e.system_time().map(record::timestamp),
        caller: e.caller,
        peer: e.peer,
        method: e.method,
        credential_id: e.credential_id,
        credential_name: e.credential_name,
        code: e.code,
        secret_fingerprint: e.secret_fingerprint,
        reason: e.reason,
        count: e.count,
        channel: e.channel,
    }
}

/// Milliseconds since the epoch as a protobuf timestamp.
pub(crate) fn timestamp_ms(ms: i64) -> prost_types::Timestamp {
    record::timestamp(feedback::from_ms(ms))
}

/// The API name of a verification's status, for logs.
pub(crate) fn status_name(v: &Verification) -> &'static str {
    v.status().name()
}

/// A record's metadata as the API shows it.
pub(crate) fn to_api(
    r: &CredentialRecord,
    usage: Option<&Usage>,
    providers: &Catalog,
) -> api::Credential {
    let drift = providers.drift(&r.provider, &r.secret_fields);
    api::Credential {
        id: r.id.clone(),
        name: r.name.clone(),
        description: r.description.clone(),
        provider: r.provider.clone(),
        api_key_hint: r.api_key_hint.clone(),
        create_time: r.create_time,
        update_time: r.update_time,
        last_verification: r.last_verification.as_ref().map(verification_to_api),
        version: r.version,
        expire_time: r.expire_time,
        last_used_time: usage.and_then(|u| u.time),
        last_used_by: usage.map(|u| u.caller.clone()).unwrap_or_default(),
        undeclared_fields: drift.undeclared,
        missing_fields: drift.missing,
        provider_undeclared: drift.unknown_provider,
        request_budget_per_minute: r.request_budget_per_minute,
        delete_time: r.delete_time,
        purge_time: r.purge_time,
        // Answers about one credential fill them in (`show`); listings do not.
        plain_fields: Default::default(),
    }
}

/// A kept secret version as the API shows it.
pub(crate) fn version_to_api(v: &record::SecretVersion) -> api::CredentialVersion {
    api::CredentialVersion {
        version: v.version,
        create_time: v.create_time,
        created_by: v.created_by.clone(),
        api_key_hint: v.api_key_hint.clone(),
        verification: v.last_verification.as_ref().map(verification_to_api),
        current: false,
        destroyed: v.destroyed(),
        destroy_time: v.destroy_time,
        destroyed_by: v.destroyed_by.clone(),
    }
}
