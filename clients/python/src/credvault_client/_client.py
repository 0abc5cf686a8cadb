"""The thread-based client: the watch stream runs on a background thread."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
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


# HTTP/2 keepalive finds a connection that died silently, as the Rust crate does: a
# ping after 20 s without a frame, the connection closed when it is not answered
# within 10 s. grpc has two timeouts for that answer, the keepalive one and the
# transport's own ping timeout (a minute by default); both are set, or a silent
# vault (SIGSTOP, a dropped network) would be noticed only ~a minute later.
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.ping_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]

#: Where the vault is when no target is given (as hvac reads VAULT_ADDR).
ADDR_ENV = "CREDVAULT_ADDR"
#: The caller's token when none is given (as hvac reads VAULT_TOKEN).
TOKEN_ENV = "CREDVAULT_TOKEN"


def endpoint(target: str | None) -> tuple[str, bool]:
    """The `host:port` to dial and whether the form asks for TLS. Takes `host:port`,
    `http://host:port` and `https://host:port` (as the Rust crate does), else
    $CREDVAULT_ADDR; any other form fails here, saying why."""
    given = target if target is not None else os.environ.get(ADDR_ENV)
    if not given:
        raise ValueError(f"no vault address: pass a target (host:port) or set ${ADDR_ENV}")
    text = given.strip().rstrip("/")
    tls = False
    if "://" in text:
        scheme, _, rest = text.partition("://")
        if scheme not in ("http", "https"):
            raise ValueError(
                f"the vault address {given!r} has scheme {scheme!r}: use host:port, http://host:port or https://host:port"
            )
        tls, text = scheme == "https", rest
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or "/" in text:
        raise ValueError(f"the vault address {given!r} is not host:port (e.g. credvault:50051)")
    return text, tls


def token_of(token: str | None) -> str | None:
    """The token given, else $CREDVAULT_TOKEN."""
    return token if token is not None else os.environ.get(TOKEN_ENV) or None


def channel_for(
    target: str | None,
    tls: Tls | grpc.ChannelCredentials | None,
    backoff: tuple[float, float],
    aio: bool = False,
    extra_options: Sequence[tuple[str, Any]] = (),
) -> Any:
    """A channel to `target` (see `endpoint`), over TLS when `tls` is given or the
    address is `https://`; it reconnects within the client's backoff (grpc's own
    starts at 1 s and grows to 2 minutes). `extra_options` come last and win."""
    address, https = endpoint(target)
    module: Any = grpc.aio if aio else grpc
    options = (
        CHANNEL_OPTIONS
        + [
            ("grpc.initial_reconnect_backoff_ms", max(1, int(backoff[0] * 1000))),
            ("grpc.min_reconnect_backoff_ms", max(1, int(backoff[0] * 1000))),
            ("grpc.max_reconnect_backoff_ms", max(1, int(backoff[1] * 1000))),
        ]
        + list(extra_options)
    )
    if tls is None and not https:
        return module.insecure_channel(address, options=options)
    creds = tls.credentials() if isinstance(tls, Tls) else tls or grpc.ssl_channel_credentials()
    return module.secure_channel(address, creds, options=options)


class Client(ClientCore):
    """A worker's handle on the vault. Thread-safe; one watch stream for all its credentials.

    >>> client = Client("credvault:50051", token=os.environ["CREDVAULT_TOKEN"])
    >>> client = Client()   # the same, from $CREDVAULT_ADDR and $CREDVAULT_TOKEN
    >>> headers = client.headers("fleetio-acme")   # fetched once, then read from memory
    >>> httpx.get(f"{headers.base_url}/v1/vehicles", headers=headers.as_dict())

    `channel_options` are added to the channel's (and win); `channel` is a ready
    channel to use instead (target, tls and options are then not used; after a
    fork the child makes its own from target and tls, so pass those too). After
    `os.fork()` (Celery, gunicorn, multiprocessing) the child rebuilds its channel
    and its watch at its first call; the headers held are served within
    `max_staleness` meanwhile.
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        token: str | None = None,
        tls: Tls | grpc.ChannelCredentials | None = None,
        max_staleness: float = 300.0,
        request_timeout: float = 10.0,
        backoff: tuple[float, float] = (0.1, 10.0),
        max_credentials: int = 1000,
        lease_size: int = 10,
        acquire_timeout: float = 60.0,
        channel_options: Sequence[tuple[str, Any]] = (),
        channel: grpc.Channel | None = None,
    ) -> None:
        self._dial = (target, tls, tuple(channel_options))
        self._setup(
            channel if channel is not None else channel_for(target, tls, backoff, extra_options=channel_options),
            token_of(token),
            max_staleness,
            request_timeout,
            backoff,
            max_credentials,
            lease_size,
            acquire_timeout,
        )
        self._start_watch()

    def _start_watch(self) -> None:
        self._added = threading.Event()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._watch_loop, name="credvault-watch", daemon=True)
        self._thread.start()

    def _after_fork(self) -> None:
        """In a forked child: the parent's channel and watch thread are not ours (grpc
        channels do not survive a fork; the thread does not exist here). A new channel
        and watch; the headers held age from now and are served within max_staleness."""
        with self._fork_lock:
            if not self._forked():
                return
            self._child_state()
            target, tls, options = self._dial
            self._use_channel(channel_for(target, tls, self._backoff, extra_options=options))
            self._start_watch()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Stops the watch stream and closes the channel."""
        if self._forked():
            # The parent's channel and thread are the parent's to close.
            return
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
        if self._forked():
            self._after_fork()
        # A hit takes no lock: threads reading held headers do not queue behind one another.
        hit = self._state.hit(name)
        if hit is not None:
            return hit
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
        if self._forked():
            self._after_fork()
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
        """Reports a 401, 403 or 429 unless the vault knows already (see `report`)."""
        return self.report(name, status, retry_after) if self._news(name, status, retry_after) else None

    def note_response(self, name: str, status: int, retry_after: float | None = None) -> None:
        """Takes in the provider's answer to a request sent with `name`'s headers; what the
        adapters call. Reports it when it is news (see `report_if_news`). Never raises:
        when the vault cannot be reached, a 429 pauses this client at once (for
        Retry-After) and the report is retried in the background until the vault answers
        or the pause ends, so the provider's response always reaches the worker."""
        if status not in (401, 403, 429):
            return
        try:
            self.report_if_news(name, status, retry_after)
        except errors.CredvaultError:
            until = self._pause_locally(name, status, retry_after)
            self._retry_report(name, status, retry_after, until)

    def _retry_report(self, name: str, status: int, retry_after: float | None, until: float | None) -> None:
        """Sends a report that failed again, in the background, until the vault takes it
        or `until` (the pause's end; five minutes for a 401 or 403). One at a time per
        credential and status."""
        key = (name, status)
        with self._state.lock:
            if key in self._retrying:
                return
            self._retrying.add(key)
        deadline = until if until is not None else time.time() + 300.0

        def run() -> None:
            delay = self._backoff[0]
            try:
                while time.time() < deadline and not self._closed.is_set():
                    self._closed.wait(jitter(delay))
                    delay = min(delay * 2, self._backoff[1])
                    try:
                        self.report(name, status, retry_after)
                        return
                    except errors.CredvaultError:
                        continue
                    except ValueError:
                        # The client was closed meanwhile.
                        return
            finally:
                with self._state.lock:
                    self._retrying.discard(key)

        threading.Thread(target=run, name="credvault-report", daemon=True).start()

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
