"""The thread-based client: the watch stream runs on a background thread."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import grpc

from . import _errors as errors
from ._core import ClientCore, Report, wait_of
from ._headers import CredentialHeaders
from ._proto.credvault.v1 import credvault_pb2 as pb
from ._proto.credvault.v1 import credvault_pb2_grpc as pb_grpc
from ._state import Fetching, jitter


@dataclass(frozen=True)
class Tls:
    """TLS to the vault: the CA that signed its certificate (None: the system's), and a
    client certificate and key (PEM) for mutual TLS."""

    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.private_key,
            certificate_chain=self.certificate_chain,
        )


# HTTP/2 keepalive finds a connection that died silently (as the Rust crate: 20 s, 10 s to answer).
CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]


def channel_for(
    target: str, tls: Tls | grpc.ChannelCredentials | None, backoff: tuple[float, float], aio: bool = False
) -> Any:
    """A channel to `target` (`host:port`), over TLS when `tls` is given; it reconnects
    within the client's backoff (grpc's own starts at 1 s and grows to 2 minutes)."""
    module: Any = grpc.aio if aio else grpc
    options = CHANNEL_OPTIONS + [
        ("grpc.initial_reconnect_backoff_ms", max(1, int(backoff[0] * 1000))),
        ("grpc.min_reconnect_backoff_ms", max(1, int(backoff[0] * 1000))),
        ("grpc.max_reconnect_backoff_ms", max(1, int(backoff[1] * 1000))),
    ]
    if tls is None:
        return module.insecure_channel(target, options=options)
    creds = tls.credentials() if isinstance(tls, Tls) else tls
    return module.secure_channel(target, creds, options=options)


class Client(ClientCore):
    """A worker's handle on the vault. Thread-safe; one watch stream for all its credentials.

    >>> client = Client("credvault:50051", token=os.environ["CREDVAULT_TOKEN"])
    >>> headers = client.headers("fleetio-acme")   # fetched once, then read from memory
    >>> httpx.get(f"{headers.base_url}/v1/vehicles", headers=headers.as_dict())
    """

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        tls: Tls | grpc.ChannelCredentials | None = None,
        max_staleness: float = 300.0,
        request_timeout: float = 10.0,
        backoff: tuple[float, float] = (0.1, 10.0),
        max_credentials: int = 1000,
        lease_size: int = 10,
        acquire_timeout: float = 60.0,
    ) -> None:
        self._setup(
            channel_for(target, tls, backoff),
            token,
            max_staleness,
            request_timeout,
            backoff,
            max_credentials,
            lease_size,
            acquire_timeout,
        )
        self._added = threading.Event()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._watch_loop, name="credvault-watch", daemon=True)
        self._thread.start()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Stops the watch stream and closes the channel."""
        self._closed.set()
        self._added.set()
        call = self._call
        if call is not None:
            call.cancel()
        self._channel.close()
        self._thread.join(timeout=5)

    def headers(self, name: str) -> CredentialHeaders:
        """The headers of the credential named `name`: from memory once held, else fetched
        once (concurrent first asks share that fetch) and then watched."""
        with self._state.lock:
            held, fetching, run = self._state.begin(name, threading.Event)
        if held is not None:
            return held
        assert fetching is not None
        if run:
            self._fetch(name, fetching)
        if not fetching.waiter.wait(self._request_timeout + 5):
            raise errors.RpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "the first fetch did not finish")
        if fetching.error is not None:
            raise fetching.error
        if fetching.result is None:
            raise errors.RpcError(grpc.StatusCode.INTERNAL, "the fetch ended without an answer")
        return fetching.result

    def _fetch(self, name: str, fetching: Fetching) -> None:
        answer, error = None, None
        try:
            answer = self._stub.GetCredentialHeaders(
                pb.GetCredentialHeadersRequest(name=name),
                timeout=self._request_timeout,
                metadata=self._metadata,
            )
        except grpc.RpcError as e:
            error = errors.from_rpc(e)
        except ValueError as e:
            # The channel was closed.
            error = errors.RpcError(grpc.StatusCode.CANCELLED, str(e))
        try:
            with self._state.lock:
                restart = self._state.fetched(name, answer, error)
        finally:
            # Every waiter hears, whatever happened.
            fetching.waiter.set()
        if restart:
            self._restart()

    def _restart(self) -> None:
        """Restarts the stream with the larger set of names."""
        self._added.set()
        call = self._call
        if call is not None:
            call.cancel()

    def _watch_loop(self) -> None:
        delay = self._backoff[0]
        while not self._closed.is_set():
            # Cleared before the names are read: a name added after this restarts the stream.
            self._added.clear()
            with self._state.lock:
                names, request = self._state.request()
            if not names:
                self._added.wait()
                continue
            with self._state.lock:
                self._state.stats.streams += 1
            try:
                call = self._stub.WatchCredentialHeaders(request, metadata=self._metadata)
            except ValueError:
                # The channel was closed: the client is done.
                return
            self._call = call
            if self._added.is_set():
                call.cancel()
            status: tuple[grpc.StatusCode, str] | None = None
            try:
                for message in call:
                    with self._state.lock:
                        restart = self._state.apply(names, message)
                    if restart or self._added.is_set():
                        break
                else:
                    status = (grpc.StatusCode.UNAVAILABLE, "the vault ended the watch stream")
            except grpc.RpcError as e:
                if not (e.code() == grpc.StatusCode.CANCELLED and (self._added.is_set() or self._closed.is_set())):
                    status = (e.code(), e.details() or "")
            except ValueError:
                # The channel was closed under the stream.
                return
            finally:
                self._call = None
                call.cancel()
            if status is None or self._closed.is_set():
                self._restarting()
                continue
            delay = self._lost(status, delay)
            self._closed.wait(jitter(delay))
            delay = min(delay * 2, self._backoff[1])

    def report(self, name: str, status: int, retry_after: float | None = None) -> Report:
        """Reports the provider's answer to a request sent with `name`'s headers (the HTTP
        status and its Retry-After in seconds): a 429 pauses the account for every worker,
        a 401 or 403 has the vault verify the credential again."""
        try:
            answer = self._stub.ReportProviderResponse(
                self._report_request(name, status, retry_after),
                timeout=self._request_timeout,
                metadata=self._metadata,
            )
        except grpc.RpcError as e:
            raise errors.from_rpc(e) from None
        return self._reported(name, answer)

    def report_if_news(self, name: str, status: int, retry_after: float | None = None) -> Report | None:
        """Reports a 401, 403 or 429 unless the vault knows already (see `report`); what the adapters call."""
        return self.report(name, status, retry_after) if self._news(name, status, retry_after) else None

    def try_acquire(self, name: str) -> CredentialHeaders:
        """The headers when a request may be sent now: raises `Paused` or `BudgetSpent` (which
        say until when) instead of waiting."""
        headers = self.headers(name)
        ready = self._ready(name, headers)
        return ready if ready is not None else self._refill(name, headers)

    def acquire(self, name: str) -> CredentialHeaders:
        """The headers of `name` once a request may be sent with them: after the account's
        pause, with one request of its budget. Waits at most `acquire_timeout`, then raises
        `Paused` or `BudgetSpent`."""
        deadline = time.monotonic() + self._acquire_timeout
        while True:
            try:
                return self.try_acquire(name)
            except (errors.Paused, errors.BudgetSpent) as e:
                wait = wait_of(e)
            if time.monotonic() + wait > deadline:
                return self.try_acquire(name)
            time.sleep(wait + 0.002)

    def _refill(self, name: str, headers: CredentialHeaders) -> CredentialHeaders:
        asked = time.monotonic()
        try:
            grant = self._stub.AcquireRequestTokens(
                self._lease_request(headers),
                timeout=self._request_timeout,
                metadata=self._metadata,
            )
        except grpc.RpcError as e:
            raise errors.from_rpc(e) from None
        return self._granted(name, headers, grant, asked)

    def vault(self) -> pb_grpc.CredentialVaultServiceStub:
        """The generated stub on the client's channel, for any other call (pass the token
        as metadata yourself)."""
        return self._stub
