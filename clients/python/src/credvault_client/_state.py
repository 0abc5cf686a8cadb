"""What a client holds, and the rules both clients (threads and asyncio) apply to it:
serving within the staleness bound, taking in watch messages, losing the stream,
pauses, leases and which reports are worth sending."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import grpc

from . import _errors as errors
from ._headers import CredentialHeaders
from ._proto.credvault.v1 import credvault_pb2 as pb

# A 401 / 403 is reported once per credential version within this (the vault
# re-verifies once anyway); a burst of them costs one call.
REJECTION_REPORT_INTERVAL = 30.0


def epoch(ts: Any) -> float:
    """A protobuf Timestamp as seconds since the epoch."""
    return ts.seconds + ts.nanos / 1e9


def jitter(limit: float) -> float:
    """A random wait below `limit` ("full jitter")."""
    return random.uniform(0, limit)


@dataclass
class Held:
    """Headers held, with what the vault said of the account."""

    headers: CredentialHeaders
    live: bool
    good_at: float = field(default_factory=time.monotonic)
    suspended: bool = False
    paused_until: float | None = None
    budget: int = 0
    lease_remaining: int = 0
    lease_until: float | None = None

    def account(self, message: Any) -> None:
        """Takes a message's pause and budget."""
        self.paused_until = epoch(message.paused_until) if message.HasField("paused_until") else None
        self.budget = message.request_budget_per_minute

    def spend(self) -> bool:
        """Spends one leased request, if one is left and still good."""
        if self.lease_remaining > 0 and self.lease_until is not None and time.monotonic() < self.lease_until:
            self.lease_remaining -= 1
            return True
        return False


@dataclass
class Gone:
    """Never served from memory: deleted, denied, not found."""

    error: errors.CredvaultError


@dataclass
class Fetching:
    """A first fetch under way; its waiters wait on `waiter` (an Event or a Future)."""

    waiter: Any
    result: CredentialHeaders | None = None
    error: errors.CredvaultError | None = None


@dataclass
class Stats:
    """Counts of what a client did."""

    fetches: int = 0
    streams: int = 0
    messages: int = 0
    updates: int = 0
    reports: int = 0


class State:
    """Entries by name, the watched names, and the lock that guards them."""

    def __init__(self, max_staleness: float, max_credentials: int) -> None:
        self.lock = threading.Lock()
        self.entries: dict[str, Held | Gone | Fetching] = {}
        self.watched: list[str] = []
        self.connected = False
        self.max_staleness = max_staleness
        self.max_credentials = max_credentials
        self.stats = Stats()
        self.reported: dict[tuple[str, int, int], float] = {}

    def serve(self, held: Held) -> CredentialHeaders:
        """Held headers within the staleness bound, unless the provider rejects them."""
        if held.suspended:
            raise errors.PermissionDenied(
                "the vault narrowed this caller's access; the credential is re-checked before "
                "its headers are served again"
            )
        rejected = held.headers.rejection()
        if rejected:
            raise errors.Rejected(rejected)
        age = time.monotonic() - held.good_at
        if held.live or age <= self.max_staleness:
            return held.headers
        raise errors.Stale(age, self.max_staleness)

    def hit(self, name: str) -> CredentialHeaders | None:
        """Without the lock: the headers held for `name`, served as `begin` would serve
        them, or None for the locked path. Reading a dict entry is atomic, and writers
        replace or update a `Held` in an order that keeps what a reader sees consistent."""
        entry = self.entries.get(name)
        if isinstance(entry, Held):
            return self.serve(entry)
        return None

    def begin(self, name: str, make_waiter: Any) -> tuple[CredentialHeaders | None, Fetching | None, bool]:
        """Under the lock: the headers held, or the fetch to wait for (and whether to run it)."""
        entry = self.entries.get(name)
        if isinstance(entry, Held):
            return self.serve(entry), None, False
        if isinstance(entry, Gone):
            raise entry.error
        if isinstance(entry, Fetching):
            return None, entry, False
        if len(self.watched) >= self.max_credentials:
            raise errors.TooManyCredentials(
                f"this client watches {len(self.watched)} credentials, the most it may; use another client for more"
            )
        fetching = Fetching(make_waiter())
        self.entries[name] = fetching
        return None, fetching, True

    def fetched(self, name: str, answer: Any | None, error: errors.CredvaultError | None) -> bool:
        """Under the lock: the first fetch's answer; whether the watch must restart."""
        fetching = self.entries.get(name)
        self.stats.fetches += 1
        if answer is not None:
            headers = CredentialHeaders(
                answer.credential_id,
                name,
                answer.version,
                answer.base_url,
                [(h.name, h.value) for h in answer.headers],
                None,
                answer.headers_revision,
            )
            held = Held(headers, live=False)
            held.account(answer)
            self.entries[name] = held
            watch = True
        elif isinstance(error, (errors.NotFound, errors.PermissionDenied)):
            # Watched too: the vault says when it comes to exist, or to be readable.
            self.entries[name] = Gone(error)
            watch = True
        else:
            self.entries.pop(name, None)
            watch = False
        if isinstance(fetching, Fetching):
            entry = self.entries.get(name)
            fetching.result = entry.headers if answer is not None and isinstance(entry, Held) else None
            fetching.error = error
        if watch and name not in self.watched:
            self.watched.append(name)
            return True
        return False

    def request(self) -> tuple[list[str], pb.WatchCredentialHeadersRequest]:
        """Under the lock: the watched names and the stream request that resumes them."""
        names = list(self.watched)
        request = pb.WatchCredentialHeadersRequest()
        for name in names:
            entry = self.entries.get(name)
            watched = request.credentials.add(name=name)
            if isinstance(entry, Held):
                watched.known_version = entry.headers.version
                watched.known_credential_id = entry.headers.credential_id
                watched.known_headers_revision = entry.headers.headers_revision
        return names, request

    def apply(self, names: list[str], m: pb.WatchCredentialHeadersResponse) -> bool:
        """Under the lock: takes one watch message into memory; whether to restart the stream."""
        self.stats.messages += 1
        if m.index >= len(names):
            return False
        name = names[m.index]
        if m.synced:
            self.connected = True
        verification = m.last_verification if m.HasField("last_verification") else None
        current = self.entries.get(name)
        if m.state == pb.WATCH_STATE_PRESENT and len(m.headers) > 0:
            headers = CredentialHeaders(
                m.credential_id,
                name,
                m.version,
                m.base_url,
                [(h.name, h.value) for h in m.headers],
                verification,
                m.headers_revision,
            )
            held = Held(headers, live=True)
            held.account(m)
            if isinstance(current, Held) and current.headers.credential_id == m.credential_id:
                # A rotation keeps the account: requests leased stay good.
                held.lease_remaining, held.lease_until = current.lease_remaining, current.lease_until
            self.stats.updates += 1
            self.entries[name] = held
        elif m.state == pb.WATCH_STATE_PRESENT:
            if (
                isinstance(current, Held)
                and current.headers.credential_id == m.credential_id
                and current.headers.version == m.version
                and current.headers.headers_revision == m.headers_revision
            ):
                if current.headers.verification != verification:
                    current.headers = current.headers.with_verification(verification)
                current.account(m)
                current.live = True
                current.suspended = False
                current.good_at = time.monotonic()
            else:
                # The vault thinks the client holds headers it does not: ask again.
                self.entries.pop(name, None)
                return True
        elif m.state == pb.WATCH_STATE_NOT_FOUND:
            if not (isinstance(current, Gone) and isinstance(current.error, errors.Deleted)):
                self.entries[name] = Gone(errors.NotFound(m.message))
        elif m.state == pb.WATCH_STATE_DELETED:
            self.entries[name] = Gone(errors.Deleted(m.message))
        elif m.state == pb.WATCH_STATE_PERMISSION_DENIED:
            self.entries[name] = Gone(errors.PermissionDenied(m.message))
        else:
            # Unavailable: served as they are, within the staleness bound from now.
            if isinstance(current, Held):
                if current.live:
                    current.good_at = time.monotonic()
                current.live = False
            elif current is None:
                self.entries[name] = Gone(errors.Unavailable(m.message))
        return False

    def lost(self, code: grpc.StatusCode, message: str) -> None:
        """Under the lock: the stream is gone; held headers start aging, or stop being served."""
        self.connected = False
        now = time.monotonic()
        for name, entry in list(self.entries.items()):
            if not isinstance(entry, Held):
                continue
            if code == grpc.StatusCode.UNAUTHENTICATED:
                self.entries[name] = Gone(errors.Unauthenticated(message))
            elif code == grpc.StatusCode.PERMISSION_DENIED:
                entry.suspended = True
                entry.live = False
            elif entry.live:
                entry.good_at = now
                entry.live = False

    def step(self, name: str, headers: CredentialHeaders) -> tuple[str, Any]:
        """Under the lock: ("go", headers), ("paused", until) or ("refill", headers)."""
        entry = self.entries.get(name)
        if not isinstance(entry, Held):
            return "go", headers
        if entry.paused_until is not None and entry.paused_until > time.time():
            return "paused", entry.paused_until
        if entry.budget == 0 or entry.spend():
            return "go", headers
        return "refill", headers

    def leased(self, name: str, grant: pb.AcquireRequestTokensResponse, asked: float) -> None:
        """Under the lock: takes a lease (measured from `asked`, monotonic) and spends one of it."""
        entry = self.entries.get(name)
        if not isinstance(entry, Held):
            return
        entry.budget = grant.request_budget_per_minute
        if grant.HasField("paused_until"):
            entry.paused_until = epoch(grant.paused_until)
        if grant.granted > 0:
            still = entry.lease_until is not None and time.monotonic() < entry.lease_until
            entry.lease_remaining = grant.granted + (entry.lease_remaining if still else 0)
            entry.lease_until = asked + grant.valid_for_ms / 1000
            entry.spend()

    def note_pause(self, name: str, until: float) -> None:
        """Under the lock: the reporter pauses at once, before the stream says so."""
        entry = self.entries.get(name)
        if isinstance(entry, Held):
            entry.paused_until = max(until, entry.paused_until or 0.0)

    def version_of(self, name: str) -> int:
        """Under the lock: the version held of `name` (0: none)."""
        entry = self.entries.get(name)
        return entry.headers.version if isinstance(entry, Held) else 0

    def worth_reporting(self, name: str, status: int, retry_after: float | None) -> bool:
        """Under the lock: whether an adapter should report this answer, or the vault knows already.

        A 429 is news unless the account is already paused past what it asks; a 401 or 403
        is reported once per credential version and status within REJECTION_REPORT_INTERVAL.
        """
        entry = self.entries.get(name)
        if status == 429:
            if isinstance(entry, Held) and entry.paused_until is not None:
                return entry.paused_until < time.time() + (retry_after or 0) - 1
            return True
        if status in (401, 403):
            key = (name, self.version_of(name), status)
            now = time.monotonic()
            if now - self.reported.get(key, -1e9) < REJECTION_REPORT_INTERVAL:
                return False
            if len(self.reported) > 1024:
                self.reported = {k: t for k, t in self.reported.items() if now - t < REJECTION_REPORT_INTERVAL}
            self.reported[key] = now
            return True
        return False


def report_request(name: str, status: int, retry_after: float | None, version: int) -> pb.ReportProviderResponseRequest:
    """The report of a provider's answer (a sub-second Retry-After still pauses a second)."""
    seconds = 0
    if retry_after is not None and retry_after > 0:
        seconds = max(1, int(retry_after + 0.999))
    return pb.ReportProviderResponseRequest(
        name=name, http_status=status, retry_after_seconds=min(seconds, 86_400), version=version
    )


def retry_after(headers: Any) -> float | None:
    """The delay a provider's `Retry-After` header asks for, in seconds (seconds or an HTTP date)."""
    value = headers.get("retry-after") if headers is not None else None
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    from email.utils import parsedate_to_datetime

    try:
        at = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, at.timestamp() - time.time())
