"""One-line use from HTTP clients: an `httpx.Auth` and a `requests` auth that set a
credential's headers on each request, wait out a pause of the account (or raise, as
configured), take a request from its budget, and report the provider's 401, 403
and 429 (with Retry-After) to the vault by themselves. The provider's response
always reaches the caller: when the vault cannot be reached, a 429 pauses the
client at once and the report is retried in the background.

    client = credvault_client.Client("credvault:50051", token=token)
    http = httpx.Client(auth=CredvaultAuth(client, "fleetio-acme"))
    http.get("https://secure.fleetio.com/api/v1/vehicles")

httpx and requests are optional: install the `httpx` or `requests` extra.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator
from typing import TYPE_CHECKING, Any

from ._aio import AsyncClient
from ._client import Client
from ._state import retry_after

if TYPE_CHECKING:
    import httpx
    import requests

_REPORTED = (401, 403, 429)

try:
    import httpx as _httpx

    _HttpxBase: Any = _httpx.Auth
except ImportError:  # pragma: no cover - the extra is not installed
    _HttpxBase = object

try:
    import requests as _requests

    _RequestsBase: Any = _requests.auth.AuthBase
except ImportError:  # pragma: no cover - the extra is not installed
    _RequestsBase = object


class CredvaultAuth(_HttpxBase):
    """`httpx` authentication from credvault, for `httpx.Client` (with a `Client`) and
    `httpx.AsyncClient` (with an `AsyncClient`). With `wait=False` a paused account or a
    spent budget raises `Paused` / `BudgetSpent` instead of waiting."""

    requires_request_body = False
    requires_response_body = False

    def __init__(self, client: Client | AsyncClient, credential: str, *, wait: bool = True) -> None:
        if _HttpxBase is object:
            raise ImportError("CredvaultAuth needs httpx: pip install 'credvault-client[httpx]'")
        self.client = client
        self.credential = credential
        self.wait = wait

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        client = self.client
        if not isinstance(client, Client):
            raise TypeError("a sync httpx client needs a credvault_client.Client")
        headers = client.acquire(self.credential) if self.wait else client.try_acquire(self.credential)
        headers.apply(request.headers)
        response = yield request
        if response.status_code in _REPORTED:
            client.note_response(self.credential, response.status_code, retry_after(response.headers))

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        client = self.client
        if not isinstance(client, AsyncClient):
            raise TypeError("an async httpx client needs a credvault_client.AsyncClient")
        headers = await (client.acquire(self.credential) if self.wait else client.try_acquire(self.credential))
        headers.apply(request.headers)
        response = yield request
        if response.status_code in _REPORTED:
            await client.note_response(self.credential, response.status_code, retry_after(response.headers))


class CredvaultRequestsAuth(_RequestsBase):
    """`requests` authentication from credvault (with a `Client`): `session.auth = ...`."""

    def __init__(self, client: Client, credential: str, *, wait: bool = True) -> None:
        if _RequestsBase is object:
            raise ImportError("CredvaultRequestsAuth needs requests: pip install 'credvault-client[requests]'")
        self.client = client
        self.credential = credential
        self.wait = wait

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        client = self.client
        headers = client.acquire(self.credential) if self.wait else client.try_acquire(self.credential)
        for name, value in headers.items():
            request.headers[name] = value
        request.register_hook("response", self._report)
        return request

    def _report(self, response: requests.Response, *_: Any, **__: Any) -> requests.Response:
        if response.status_code in _REPORTED:
            self.client.note_response(self.credential, response.status_code, retry_after(response.headers))
        return response
