"""What `Client` and `AsyncClient` share: settings, the state, and what to make of the
vault's answers. Each client does its own I/O (threads or asyncio)."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import grpc

from . import _errors as errors
from ._headers import CredentialHeaders
from ._proto.credvault.v1 import credvault_pb2 as pb
from ._proto.credvault.v1 import credvault_pb2_grpc as pb_grpc
from ._state import Fetching, State, Stats, epoch, report_request

# Counts the forks this process came out of: a client made before one sees the
# count move and rebuilds what a fork does not carry (its channel, its thread).
_fork_generation = 0


def _forked_child() -> None:
    global _fork_generation
    _fork_generation += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked_child)


class Connected:
    """Whether the watch stream is up and has reported every watched credential: true or
    false as a value (`if client.is_connected:`), and callable as in the Rust crate
    (`client.is_connected()`)."""

    __slots__ = ("_value",)

    def __init__(self, value: bool) -> None:
        self._value = value

    def __bool__(self) -> bool:
        return self._value

    def __call__(self) -> bool:
        return self._value

    def __eq__(self, other: object) -> bool:
        return bool(self) == bool(other) if isinstance(other, (bool, Connected)) else NotImplemented

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return repr(self._value)


@dataclass(frozen=True)
class Report:
    """What the vault did with a report."""

    action: int
    """A `ReportAction` value (`credvault_client.pb.REPORT_ACTION_PAUSED`, ...)."""
    paused_until: float | None
    """The end of the account's pause (seconds since the epoch), while one is in force."""
    message: str


def wait_of(error: errors.Paused | errors.BudgetSpent) -> float:
    """How long `acquire` waits for what `try_acquire` raised."""
    if isinstance(error, errors.Paused):
        return max(0.0, error.until - time.time())
    return error.retry_after


class ClientCore:
    """Settings, state and the answers' meaning, shared by both clients."""

    def _setup(
        self,
        channel: Any,
        token: str | None,
        max_staleness: float,
        request_timeout: float,
        backoff: tuple[float, float],
        max_credentials: int,
        lease_size: int,
        acquire_timeout: float,
    ) -> None:
        self._use_channel(channel)
        self._generation = _fork_generation
        self._fork_lock = threading.Lock()
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._state = State(max_staleness, max_credentials)
        self._request_timeout = request_timeout
        self._backoff = backoff
        self._lease_size = max(1, min(lease_size, 10_000))
        self._acquire_timeout = acquire_timeout
        self._call: Any = None
        # Reports being retried in the background: (credential, status).
        self._retrying: set[tuple[str, int]] = set()

    def _use_channel(self, channel: Any) -> None:
        self._channel = channel
        self._stub = pb_grpc.CredentialVaultServiceStub(channel)

    def _forked(self) -> bool:
        """Whether this process is a fork of the one that made the client."""
        return self._generation != _fork_generation

    def _child_state(self) -> None:
        """In a forked child: a new lock (a thread of the parent may have held the old
        one), no fetch of the parent's left waiting, and the stream counted lost, so
        that the headers held age from now and are served within max_staleness."""
        self._generation = _fork_generation
        self._state.lock = threading.Lock()
        with self._state.lock:
            for name, entry in list(self._state.entries.items()):
                if isinstance(entry, Fetching):
                    del self._state.entries[name]
            self._state.lost(grpc.StatusCode.UNAVAILABLE, "this process was forked")
        self._call = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(watched={len(self._state.watched)}, connected={self._state.connected})"

    @property
    def is_connected(self) -> Connected:
        """Whether the watch stream is up and has reported every watched credential
        (false in a forked child until its own stream is up)."""
        return Connected(self._state.connected and not self._forked())

    def stats(self) -> Stats:
        """Counts of fetches, streams, messages, updates and reports so far."""
        with self._state.lock:
            s = self._state.stats
            return Stats(s.fetches, s.streams, s.messages, s.updates, s.reports)

    def _restarting(self) -> None:
        """A restart: not current for every name until the new stream reports them all."""
        with self._state.lock:
            self._state.connected = False

    def _lost(self, status: tuple[grpc.StatusCode, str], delay: float) -> float:
        """The stream failed: held headers start aging. The backoff delay to wait now."""
        with self._state.lock:
            if self._state.connected:
                # A stream that was whole starts the backoff over.
                delay = self._backoff[0]
            self._state.lost(*status)
        return delay

    def _report_request(self, name: str, status: int, retry_after: float | None) -> pb.ReportProviderResponseRequest:
        with self._state.lock:
            version = self._state.version_of(name)
            self._state.stats.reports += 1
        return report_request(name, status, retry_after, version)

    def _reported(self, name: str, answer: pb.ReportProviderResponseResponse) -> Report:
        paused = epoch(answer.paused_until) if answer.HasField("paused_until") else None
        if paused is not None:
            # The reporter pauses at once, before the stream says so.
            with self._state.lock:
                self._state.note_pause(name, paused)
        return Report(answer.action, paused, answer.message)

    def _pause_locally(self, name: str, status: int, retry_after: float | None) -> float | None:
        """A provider's 429 whose report could not reach the vault: this client pauses
        the account at once, for Retry-After (a minute when it gave none); the end."""
        if status != 429:
            return None
        until = time.time() + (retry_after if retry_after and retry_after > 0 else 60.0)
        with self._state.lock:
            self._state.note_pause(name, until)
        return until

    def _news(self, name: str, status: int, retry_after: float | None) -> bool:
        with self._state.lock:
            return self._state.worth_reporting(name, status, retry_after)

    def _ready(self, name: str, headers: CredentialHeaders) -> CredentialHeaders | None:
        """The headers when a request may go now, None when a new lease is needed; raises `Paused`."""
        with self._state.lock:
            step, value = self._state.step(name, headers)
        if step == "paused":
            raise errors.Paused(value)
        return value if step == "go" else None

    def _lease_request(self, headers: CredentialHeaders) -> pb.AcquireRequestTokensRequest:
        return pb.AcquireRequestTokensRequest(id=headers.credential_id, count=self._lease_size)

    def _granted(
        self, name: str, headers: CredentialHeaders, grant: pb.AcquireRequestTokensResponse, asked: float
    ) -> CredentialHeaders:
        """Takes a lease: the headers if it granted any, else `Paused` or `BudgetSpent`."""
        with self._state.lock:
            self._state.leased(name, grant, asked)
        if grant.granted > 0:
            return headers
        if grant.HasField("paused_until"):
            raise errors.Paused(epoch(grant.paused_until))
        raise errors.BudgetSpent(max(grant.retry_after_ms, 1) / 1000)
