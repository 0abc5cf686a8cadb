import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class VerificationStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERIFICATION_STATUS_UNSPECIFIED: _ClassVar[VerificationStatus]
    VERIFICATION_STATUS_VALID: _ClassVar[VerificationStatus]
    VERIFICATION_STATUS_API_KEY_REJECTED: _ClassVar[VerificationStatus]
    VERIFICATION_STATUS_ACCOUNT_TOKEN_REJECTED: _ClassVar[VerificationStatus]
    VERIFICATION_STATUS_FORBIDDEN: _ClassVar[VerificationStatus]
    VERIFICATION_STATUS_RATE_LIMITED: _ClassVar[VerificationStatus]
    VERIFICATION_STATUS_PROVIDER_ERROR: _ClassVar[VerificationStatus]
    VERIFICATION_STATUS_UNREACHABLE: _ClassVar[VerificationStatus]
    VERIFICATION_STATUS_SECRET_REJECTED: _ClassVar[VerificationStatus]

class ReportAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REPORT_ACTION_UNSPECIFIED: _ClassVar[ReportAction]
    REPORT_ACTION_IGNORED: _ClassVar[ReportAction]
    REPORT_ACTION_PAUSED: _ClassVar[ReportAction]
    REPORT_ACTION_VERIFYING: _ClassVar[ReportAction]
    REPORT_ACTION_ALREADY_VERIFIED: _ClassVar[ReportAction]
    REPORT_ACTION_STALE: _ClassVar[ReportAction]

class WatchState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WATCH_STATE_UNSPECIFIED: _ClassVar[WatchState]
    WATCH_STATE_PRESENT: _ClassVar[WatchState]
    WATCH_STATE_NOT_FOUND: _ClassVar[WatchState]
    WATCH_STATE_DELETED: _ClassVar[WatchState]
    WATCH_STATE_PERMISSION_DENIED: _ClassVar[WatchState]
    WATCH_STATE_UNAVAILABLE: _ClassVar[WatchState]
VERIFICATION_STATUS_UNSPECIFIED: VerificationStatus
VERIFICATION_STATUS_VALID: VerificationStatus
VERIFICATION_STATUS_API_KEY_REJECTED: VerificationStatus
VERIFICATION_STATUS_ACCOUNT_TOKEN_REJECTED: VerificationStatus
VERIFICATION_STATUS_FORBIDDEN: VerificationStatus
VERIFICATION_STATUS_RATE_LIMITED: VerificationStatus
VERIFICATION_STATUS_PROVIDER_ERROR: VerificationStatus
VERIFICATION_STATUS_UNREACHABLE: VerificationStatus
VERIFICATION_STATUS_SECRET_REJECTED: VerificationStatus
REPORT_ACTION_UNSPECIFIED: ReportAction
REPORT_ACTION_IGNORED: ReportAction
REPORT_ACTION_PAUSED: ReportAction
REPORT_ACTION_VERIFYING: ReportAction
REPORT_ACTION_ALREADY_VERIFIED: ReportAction
REPORT_ACTION_STALE: ReportAction
WATCH_STATE_UNSPECIFIED: WatchState
WATCH_STATE_PRESENT: WatchState
WATCH_STATE_NOT_FOUND: WatchState
WATCH_STATE_DELETED: WatchState
WATCH_STATE_PERMISSION_DENIED: WatchState
WATCH_STATE_UNAVAILABLE: WatchState

class FleetioSecret(_message.Message):
    __slots__ = ("api_key", "account_token", "api_version")
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    API_VERSION_FIELD_NUMBER: _ClassVar[int]
    api_key: str
    account_token: str
    api_version: str
    def __init__(self, api_key: _Optional[str] = ..., account_token: _Optional[str] = ..., api_version: _Optional[str] = ...) -> None: ...

class GenericSecret(_message.Message):
    __slots__ = ("provider", "fields")
    class FieldsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    provider: str
    fields: _containers.ScalarMap[str, str]
    def __init__(self, provider: _Optional[str] = ..., fields: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Header(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: str
    def __init__(self, name: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class Credential(_message.Message):
    __slots__ = ("id", "name", "description", "provider", "api_key_hint", "create_time", "update_time", "last_verification", "version", "expire_time", "last_used_time", "last_used_by", "undeclared_fields", "missing_fields", "provider_undeclared", "request_budget_per_minute", "delete_time", "purge_time", "plain_fields")
    class PlainFieldsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    API_KEY_HINT_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    LAST_VERIFICATION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_TIME_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_BY_FIELD_NUMBER: _ClassVar[int]
    UNDECLARED_FIELDS_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELDS_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_UNDECLARED_FIELD_NUMBER: _ClassVar[int]
    REQUEST_BUDGET_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    DELETE_TIME_FIELD_NUMBER: _ClassVar[int]
    PURGE_TIME_FIELD_NUMBER: _ClassVar[int]
    PLAIN_FIELDS_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    description: str
    provider: str
    api_key_hint: str
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    last_verification: Verification
    version: int
    expire_time: _timestamp_pb2.Timestamp
    last_used_time: _timestamp_pb2.Timestamp
    last_used_by: str
    undeclared_fields: _containers.RepeatedScalarFieldContainer[str]
    missing_fields: _containers.RepeatedScalarFieldContainer[str]
    provider_undeclared: bool
    request_budget_per_minute: int
    delete_time: _timestamp_pb2.Timestamp
    purge_time: _timestamp_pb2.Timestamp
    plain_fields: _containers.ScalarMap[str, str]
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., description: _Optional[str] = ..., provider: _Optional[str] = ..., api_key_hint: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_verification: _Optional[_Union[Verification, _Mapping]] = ..., version: _Optional[int] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_used_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_used_by: _Optional[str] = ..., undeclared_fields: _Optional[_Iterable[str]] = ..., missing_fields: _Optional[_Iterable[str]] = ..., provider_undeclared: _Optional[bool] = ..., request_budget_per_minute: _Optional[int] = ..., delete_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., purge_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., plain_fields: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Verification(_message.Message):
    __slots__ = ("status", "http_status", "message", "retry_after_seconds", "check_time", "rejected_field")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    HTTP_STATUS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CHECK_TIME_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_FIELD_NUMBER: _ClassVar[int]
    status: VerificationStatus
    http_status: int
    message: str
    retry_after_seconds: int
    check_time: _timestamp_pb2.Timestamp
    rejected_field: str
    def __init__(self, status: _Optional[_Union[VerificationStatus, str]] = ..., http_status: _Optional[int] = ..., message: _Optional[str] = ..., retry_after_seconds: _Optional[int] = ..., check_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., rejected_field: _Optional[str] = ...) -> None: ...

class CreateCredentialRequest(_message.Message):
    __slots__ = ("name", "description", "fleetio", "generic", "verify", "verify_best_effort", "expire_time", "request_budget_per_minute")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    FLEETIO_FIELD_NUMBER: _ClassVar[int]
    GENERIC_FIELD_NUMBER: _ClassVar[int]
    VERIFY_FIELD_NUMBER: _ClassVar[int]
    VERIFY_BEST_EFFORT_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    REQUEST_BUDGET_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    fleetio: FleetioSecret
    generic: GenericSecret
    verify: bool
    verify_best_effort: bool
    expire_time: _timestamp_pb2.Timestamp
    request_budget_per_minute: int
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., fleetio: _Optional[_Union[FleetioSecret, _Mapping]] = ..., generic: _Optional[_Union[GenericSecret, _Mapping]] = ..., verify: _Optional[bool] = ..., verify_best_effort: _Optional[bool] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., request_budget_per_minute: _Optional[int] = ...) -> None: ...

class CreateCredentialResponse(_message.Message):
    __slots__ = ("credential",)
    CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    credential: Credential
    def __init__(self, credential: _Optional[_Union[Credential, _Mapping]] = ...) -> None: ...

class GetCredentialRequest(_message.Message):
    __slots__ = ("id", "name")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class GetCredentialResponse(_message.Message):
    __slots__ = ("credential",)
    CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    credential: Credential
    def __init__(self, credential: _Optional[_Union[Credential, _Mapping]] = ...) -> None: ...

class ListCredentialsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "verification_statuses", "expire_before", "deleted")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    VERIFICATION_STATUSES_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_BEFORE_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    verification_statuses: _containers.RepeatedScalarFieldContainer[VerificationStatus]
    expire_before: _timestamp_pb2.Timestamp
    deleted: bool
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., verification_statuses: _Optional[_Iterable[_Union[VerificationStatus, str]]] = ..., expire_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., deleted: _Optional[bool] = ...) -> None: ...

class ListCredentialsResponse(_message.Message):
    __slots__ = ("credentials", "next_page_token")
    CREDENTIALS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    credentials: _containers.RepeatedCompositeFieldContainer[Credential]
    next_page_token: str
    def __init__(self, credentials: _Optional[_Iterable[_Union[Credential, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class UpdateCredentialRequest(_message.Message):
    __slots__ = ("id", "name", "expected_version", "description", "fleetio", "generic", "verify", "verify_best_effort", "expire_time", "clear_expire_time", "request_budget_per_minute")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    FLEETIO_FIELD_NUMBER: _ClassVar[int]
    GENERIC_FIELD_NUMBER: _ClassVar[int]
    VERIFY_FIELD_NUMBER: _ClassVar[int]
    VERIFY_BEST_EFFORT_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    CLEAR_EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    REQUEST_BUDGET_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    expected_version: int
    description: str
    fleetio: FleetioSecret
    generic: GenericSecret
    verify: bool
    verify_best_effort: bool
    expire_time: _timestamp_pb2.Timestamp
    clear_expire_time: bool
    request_budget_per_minute: int
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., expected_version: _Optional[int] = ..., description: _Optional[str] = ..., fleetio: _Optional[_Union[FleetioSecret, _Mapping]] = ..., generic: _Optional[_Union[GenericSecret, _Mapping]] = ..., verify: _Optional[bool] = ..., verify_best_effort: _Optional[bool] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., clear_expire_time: _Optional[bool] = ..., request_budget_per_minute: _Optional[int] = ...) -> None: ...

class UpdateCredentialResponse(_message.Message):
    __slots__ = ("credential",)
    CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    credential: Credential
    def __init__(self, credential: _Optional[_Union[Credential, _Mapping]] = ...) -> None: ...

class DeleteCredentialRequest(_message.Message):
    __slots__ = ("id", "name", "expected_version", "force")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    expected_version: int
    force: bool
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., expected_version: _Optional[int] = ..., force: _Optional[bool] = ...) -> None: ...

class DeleteCredentialResponse(_message.Message):
    __slots__ = ("purge_time",)
    PURGE_TIME_FIELD_NUMBER: _ClassVar[int]
    purge_time: _timestamp_pb2.Timestamp
    def __init__(self, purge_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class UndeleteCredentialRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class UndeleteCredentialResponse(_message.Message):
    __slots__ = ("credential",)
    CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    credential: Credential
    def __init__(self, credential: _Optional[_Union[Credential, _Mapping]] = ...) -> None: ...

class CredentialVersion(_message.Message):
    __slots__ = ("version", "create_time", "created_by", "api_key_hint", "verification", "current", "destroyed", "destroy_time", "destroyed_by")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    API_KEY_HINT_FIELD_NUMBER: _ClassVar[int]
    VERIFICATION_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    DESTROYED_FIELD_NUMBER: _ClassVar[int]
    DESTROY_TIME_FIELD_NUMBER: _ClassVar[int]
    DESTROYED_BY_FIELD_NUMBER: _ClassVar[int]
    version: int
    create_time: _timestamp_pb2.Timestamp
    created_by: str
    api_key_hint: str
    verification: Verification
    current: bool
    destroyed: bool
    destroy_time: _timestamp_pb2.Timestamp
    destroyed_by: str
    def __init__(self, version: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., created_by: _Optional[str] = ..., api_key_hint: _Optional[str] = ..., verification: _Optional[_Union[Verification, _Mapping]] = ..., current: _Optional[bool] = ..., destroyed: _Optional[bool] = ..., destroy_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., destroyed_by: _Optional[str] = ...) -> None: ...

class ListCredentialVersionsRequest(_message.Message):
    __slots__ = ("id", "name")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class ListCredentialVersionsResponse(_message.Message):
    __slots__ = ("versions",)
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[CredentialVersion]
    def __init__(self, versions: _Optional[_Iterable[_Union[CredentialVersion, _Mapping]]] = ...) -> None: ...

class RollbackCredentialRequest(_message.Message):
    __slots__ = ("id", "name", "version", "expected_version", "verify", "verify_best_effort")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    VERIFY_FIELD_NUMBER: _ClassVar[int]
    VERIFY_BEST_EFFORT_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    version: int
    expected_version: int
    verify: bool
    verify_best_effort: bool
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., version: _Optional[int] = ..., expected_version: _Optional[int] = ..., verify: _Optional[bool] = ..., verify_best_effort: _Optional[bool] = ...) -> None: ...

class RollbackCredentialResponse(_message.Message):
    __slots__ = ("credential",)
    CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    credential: Credential
    def __init__(self, credential: _Optional[_Union[Credential, _Mapping]] = ...) -> None: ...

class DestroyCredentialVersionRequest(_message.Message):
    __slots__ = ("id", "name", "version")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    version: int
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class DestroyCredentialVersionResponse(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: CredentialVersion
    def __init__(self, version: _Optional[_Union[CredentialVersion, _Mapping]] = ...) -> None: ...

class VerifyCredentialRequest(_message.Message):
    __slots__ = ("id", "name")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class VerifyCredentialResponse(_message.Message):
    __slots__ = ("verification", "credential")
    VERIFICATION_FIELD_NUMBER: _ClassVar[int]
    CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    verification: Verification
    credential: Credential
    def __init__(self, verification: _Optional[_Union[Verification, _Mapping]] = ..., credential: _Optional[_Union[Credential, _Mapping]] = ...) -> None: ...

class GetCredentialHeadersRequest(_message.Message):
    __slots__ = ("id", "name")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class GetCredentialHeadersResponse(_message.Message):
    __slots__ = ("headers", "base_url", "credential_id", "version", "paused_until", "request_budget_per_minute", "headers_revision")
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    BASE_URL_FIELD_NUMBER: _ClassVar[int]
    CREDENTIAL_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PAUSED_UNTIL_FIELD_NUMBER: _ClassVar[int]
    REQUEST_BUDGET_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    HEADERS_REVISION_FIELD_NUMBER: _ClassVar[int]
    headers: _containers.RepeatedCompositeFieldContainer[Header]
    base_url: str
    credential_id: str
    version: int
    paused_until: _timestamp_pb2.Timestamp
    request_budget_per_minute: int
    headers_revision: int
    def __init__(self, headers: _Optional[_Iterable[_Union[Header, _Mapping]]] = ..., base_url: _Optional[str] = ..., credential_id: _Optional[str] = ..., version: _Optional[int] = ..., paused_until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., request_budget_per_minute: _Optional[int] = ..., headers_revision: _Optional[int] = ...) -> None: ...

class ReportProviderResponseRequest(_message.Message):
    __slots__ = ("id", "name", "http_status", "retry_after_seconds", "version")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    HTTP_STATUS_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    http_status: int
    retry_after_seconds: int
    version: int
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., http_status: _Optional[int] = ..., retry_after_seconds: _Optional[int] = ..., version: _Optional[int] = ...) -> None: ...

class ReportProviderResponseResponse(_message.Message):
    __slots__ = ("action", "paused_until", "message")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    PAUSED_UNTIL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    action: ReportAction
    paused_until: _timestamp_pb2.Timestamp
    message: str
    def __init__(self, action: _Optional[_Union[ReportAction, str]] = ..., paused_until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., message: _Optional[str] = ...) -> None: ...

class AcquireRequestTokensRequest(_message.Message):
    __slots__ = ("id", "name", "count")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    count: int
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class AcquireRequestTokensResponse(_message.Message):
    __slots__ = ("granted", "valid_for_ms", "retry_after_ms", "paused_until", "request_budget_per_minute")
    GRANTED_FIELD_NUMBER: _ClassVar[int]
    VALID_FOR_MS_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    PAUSED_UNTIL_FIELD_NUMBER: _ClassVar[int]
    REQUEST_BUDGET_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    granted: int
    valid_for_ms: int
    retry_after_ms: int
    paused_until: _timestamp_pb2.Timestamp
    request_budget_per_minute: int
    def __init__(self, granted: _Optional[int] = ..., valid_for_ms: _Optional[int] = ..., retry_after_ms: _Optional[int] = ..., paused_until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., request_budget_per_minute: _Optional[int] = ...) -> None: ...

class WatchCredentialHeadersRequest(_message.Message):
    __slots__ = ("credentials",)
    CREDENTIALS_FIELD_NUMBER: _ClassVar[int]
    credentials: _containers.RepeatedCompositeFieldContainer[WatchedCredential]
    def __init__(self, credentials: _Optional[_Iterable[_Union[WatchedCredential, _Mapping]]] = ...) -> None: ...

class WatchedCredential(_message.Message):
    __slots__ = ("id", "name", "known_version", "known_credential_id", "known_headers_revision")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    KNOWN_VERSION_FIELD_NUMBER: _ClassVar[int]
    KNOWN_CREDENTIAL_ID_FIELD_NUMBER: _ClassVar[int]
    KNOWN_HEADERS_REVISION_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    known_version: int
    known_credential_id: str
    known_headers_revision: int
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., known_version: _Optional[int] = ..., known_credential_id: _Optional[str] = ..., known_headers_revision: _Optional[int] = ...) -> None: ...

class WatchCredentialHeadersResponse(_message.Message):
    __slots__ = ("index", "state", "credential_id", "name", "version", "headers", "base_url", "last_verification", "message", "synced", "paused_until", "request_budget_per_minute", "headers_revision")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREDENTIAL_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    BASE_URL_FIELD_NUMBER: _ClassVar[int]
    LAST_VERIFICATION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SYNCED_FIELD_NUMBER: _ClassVar[int]
    PAUSED_UNTIL_FIELD_NUMBER: _ClassVar[int]
    REQUEST_BUDGET_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    HEADERS_REVISION_FIELD_NUMBER: _ClassVar[int]
    index: int
    state: WatchState
    credential_id: str
    name: str
    version: int
    headers: _containers.RepeatedCompositeFieldContainer[Header]
    base_url: str
    last_verification: Verification
    message: str
    synced: bool
    paused_until: _timestamp_pb2.Timestamp
    request_budget_per_minute: int
    headers_revision: int
    def __init__(self, index: _Optional[int] = ..., state: _Optional[_Union[WatchState, str]] = ..., credential_id: _Optional[str] = ..., name: _Optional[str] = ..., version: _Optional[int] = ..., headers: _Optional[_Iterable[_Union[Header, _Mapping]]] = ..., base_url: _Optional[str] = ..., last_verification: _Optional[_Union[Verification, _Mapping]] = ..., message: _Optional[str] = ..., synced: _Optional[bool] = ..., paused_until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., request_budget_per_minute: _Optional[int] = ..., headers_revision: _Optional[int] = ...) -> None: ...

class AuditEvent(_message.Message):
    __slots__ = ("time", "caller", "peer", "method", "credential_id", "credential_name", "code", "secret_fingerprint", "reason", "count", "channel")
    TIME_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    CREDENTIAL_ID_FIELD_NUMBER: _ClassVar[int]
    CREDENTIAL_NAME_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    SECRET_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    time: _timestamp_pb2.Timestamp
    caller: str
    peer: str
    method: str
    credential_id: str
    credential_name: str
    code: str
    secret_fingerprint: str
    reason: str
    count: int
    channel: str
    def __init__(self, time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., caller: _Optional[str] = ..., peer: _Optional[str] = ..., method: _Optional[str] = ..., credential_id: _Optional[str] = ..., credential_name: _Optional[str] = ..., code: _Optional[str] = ..., secret_fingerprint: _Optional[str] = ..., reason: _Optional[str] = ..., count: _Optional[int] = ..., channel: _Optional[str] = ...) -> None: ...

class ListAuditEventsRequest(_message.Message):
    __slots__ = ("credential_id", "credential_name", "caller", "start_time", "end_time", "page_size", "page_token")
    CREDENTIAL_ID_FIELD_NUMBER: _ClassVar[int]
    CREDENTIAL_NAME_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    credential_id: str
    credential_name: str
    caller: str
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    page_size: int
    page_token: str
    def __init__(self, credential_id: _Optional[str] = ..., credential_name: _Optional[str] = ..., caller: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListAuditEventsResponse(_message.Message):
    __slots__ = ("events", "next_page_token", "audit_public_key")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    AUDIT_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[AuditEvent]
    next_page_token: str
    audit_public_key: str
    def __init__(self, events: _Optional[_Iterable[_Union[AuditEvent, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., audit_public_key: _Optional[str] = ...) -> None: ...

class RewrapCredentialsRequest(_message.Message):
    __slots__ = ("batch_size",)
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    batch_size: int
    def __init__(self, batch_size: _Optional[int] = ...) -> None: ...

class RewrapCredentialsResponse(_message.Message):
    __slots__ = ("total", "scanned", "rewrapped", "failed_credential_ids", "done", "active_key_id", "key_id_credentials", "retired_key_ids", "key_sources")
    class KeyIdCredentialsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class KeySourcesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    SCANNED_FIELD_NUMBER: _ClassVar[int]
    REWRAPPED_FIELD_NUMBER: _ClassVar[int]
    FAILED_CREDENTIAL_IDS_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_CREDENTIALS_FIELD_NUMBER: _ClassVar[int]
    RETIRED_KEY_IDS_FIELD_NUMBER: _ClassVar[int]
    KEY_SOURCES_FIELD_NUMBER: _ClassVar[int]
    total: int
    scanned: int
    rewrapped: int
    failed_credential_ids: _containers.RepeatedScalarFieldContainer[str]
    done: bool
    active_key_id: str
    key_id_credentials: _containers.ScalarMap[str, int]
    retired_key_ids: _containers.RepeatedScalarFieldContainer[str]
    key_sources: _containers.ScalarMap[str, str]
    def __init__(self, total: _Optional[int] = ..., scanned: _Optional[int] = ..., rewrapped: _Optional[int] = ..., failed_credential_ids: _Optional[_Iterable[str]] = ..., done: _Optional[bool] = ..., active_key_id: _Optional[str] = ..., key_id_credentials: _Optional[_Mapping[str, int]] = ..., retired_key_ids: _Optional[_Iterable[str]] = ..., key_sources: _Optional[_Mapping[str, str]] = ...) -> None: ...

class BackupVaultRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class BackupVaultResponse(_message.Message):
    __slots__ = ("chunk",)
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    chunk: bytes
    def __init__(self, chunk: _Optional[bytes] = ...) -> None: ...
