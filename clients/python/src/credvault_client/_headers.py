"""A credential's headers as a worker holds them."""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping

from ._proto.credvault.v1 import credvault_pb2 as pb

_REJECTIONS = (
    pb.VERIFICATION_STATUS_API_KEY_REJECTED,
    pb.VERIFICATION_STATUS_ACCOUNT_TOKEN_REJECTED,
    pb.VERIFICATION_STATUS_SECRET_REJECTED,
)


class CredentialHeaders:
    """The headers to send with one credential, and where. Its repr shows header names, never values."""

    __slots__ = ("credential_id", "name", "version", "base_url", "_headers", "verification", "headers_revision")

    def __init__(
        self,
        credential_id: str,
        name: str,
        version: int,
        base_url: str,
        headers: list[tuple[str, str]],
        verification: pb.Verification | None,
        headers_revision: int = 0,
    ) -> None:
        self.credential_id = credential_id
        self.name = name
        self.version = version
        self.base_url = base_url
        self._headers = tuple(headers)
        self.verification = verification
        # What the vault made the headers from besides the credential (its provider's
        # declaration; 0 when built in): a providers reload changes it at the same version.
        self.headers_revision = headers_revision

    def with_verification(self, verification: pb.Verification | None) -> CredentialHeaders:
        """The same headers with another verification."""
        return CredentialHeaders(
            self.credential_id,
            self.name,
            self.version,
            self.base_url,
            list(self._headers),
            verification,
            self.headers_revision,
        )

    def items(self) -> Iterator[tuple[str, str]]:
        """The (name, value) pairs to send, in order."""
        return iter(self._headers)

    def as_dict(self) -> dict[str, str]:
        """The headers as a new dict."""
        return dict(self._headers)

    def apply(self, headers: MutableMapping[str, str]) -> None:
        """Writes the headers into `headers` (a dict, httpx.Headers, requests' headers)."""
        for name, value in self._headers:
            headers[name] = value

    def __len__(self) -> int:
        return len(self._headers)

    def rejection(self) -> str | None:
        """Why the provider rejects the secret, when the vault's last verification says it does."""
        v = self.verification
        if v is None or v.status not in _REJECTIONS:
            return None
        field = v.rejected_field or "secret"
        return (
            f"the provider rejected credential {self.name!r}'s {field} (HTTP {v.http_status}): "
            f"{v.message}; its headers are not served until an admin rotates it"
        )

    def __repr__(self) -> str:
        names = ", ".join(f"{n}: [REDACTED]" for n, _ in self._headers)
        return (
            f"CredentialHeaders(credential_id={self.credential_id!r}, name={self.name!r}, "
            f"version={self.version}, base_url={self.base_url!r}, headers={{{names}}})"
        )

    __str__ = __repr__
