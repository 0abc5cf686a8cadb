"""The errors of the client: why headers could not be had. Messages never carry a secret."""

from __future__ import annotations

import time

import grpc


class CredvaultError(Exception):
    """Base of every error the client raises."""


class NotFound(CredvaultError):
    """No credential has this name (the vault said so; it is watched, and served once created)."""


class Deleted(CredvaultError):
    """The credential was deleted: its headers are never served again."""


class PermissionDenied(CredvaultError):
    """The caller may not read this credential (outside its scope, or its access was narrowed)."""


class Unauthenticated(CredvaultError):
    """The vault does not know the client's token (any more)."""


class Unavailable(CredvaultError):
    """The vault cannot make the credential's headers now, and those held are too old."""


class InvalidArgument(CredvaultError):
    """The request was refused as malformed (e.g. an invalid name)."""


class TooManyCredentials(CredvaultError):
    """The client watches as many credentials as one stream may hold."""


class Rejected(CredvaultError):
    """The provider rejected the secret when the vault last verified it: not served until rotated."""


class Stale(CredvaultError):
    """The vault has been out of reach longer than the maximum staleness."""

    def __init__(self, age: float, max_staleness: float) -> None:
        super().__init__(
            f"the vault has been out of reach for {age:.1f}s, past the maximum staleness of "
            f"{max_staleness:.1f}s: the headers held are no longer served"
        )
        self.age = age
        self.max_staleness = max_staleness


class Paused(CredvaultError):
    """The provider account is paused (a worker reported a 429): send nothing before `until`."""

    def __init__(self, until: float) -> None:
        left = max(0.0, until - time.time())
        super().__init__(f"the provider account is paused after a 429 for {left:.1f}s more; send nothing until then")
        self.until = until


class BudgetSpent(CredvaultError):
    """The account's request budget for this window is spent: ask again after `retry_after` seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(
            f"the account's request budget for this window is spent; the next window starts in {retry_after:.1f}s"
        )
        self.retry_after = retry_after


class RpcError(CredvaultError):
    """Another failure of a call (the vault unreachable, a timeout)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"the vault call failed ({code.name}): {message}")
        self.code = code
        self.message = message


def from_rpc(error: grpc.RpcError) -> CredvaultError:
    """The client error for a failed call."""
    code = error.code()
    message = error.details() or ""
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(message)
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return PermissionDenied(message)
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return Unauthenticated(message)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(message)
    return RpcError(code, message)
