"""The asyncio client (grpc.aio): the watch stream runs as a task on the event loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import grpc

from . import _errors as errors
from ._client import Tls, channel_for, token_of
from ._core import ClientCore, Report, wait_of
from ._headers import CredentialHeaders
from ._proto.credvault.v1 import credvault_pb2 as pb
from ._state import Fetching, jitter


class AsyncClient(ClientCore):
    """The asyncio twin of `Client`: the same promises, awaited.

    Make it inside a running event loop; `await client.close()` when done (or `async with`).
    Takes the target, token, `channel_options` and `channel` as `Client` does.
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
        channel: grpc.aio.Channel | None = None,
    ) -> None:
        self._dial = (target, tls, tuple(channel_options))
        self._setup(
            channel
            if channel is not None
            else channel_for(target, tls, backoff, aio=True, extra_options=channel_options),
            token_of(token),
            max_staleness,
            request_timeout,
            backoff,
            max_credentials,
            lease_size,
            acquire_timeout,
        )
        self._added = asyncio.Event()
        self._closed = False
        self._task = asyncio.get_running_loop().create_task(self._watch_loop())
        self._background: set[asyncio.Task[None]] = set()

    def _after_fork(self) -> None:
        """In a forked child (see `Client`): a new channel and watch task on the loop running here."""
        with self._fork_lock:
            if not self._forked():
                return
            self._child_state()
            target, tls, options = self._dial
            self._use_channel(channel_for(target, tls, self._backoff, aio=True, extra_options=options))
            self._added = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._watch_loop())

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stops the watch stream and closes the channel."""
        if self._forked():
            return
        self._closed = True
        for task in list(self._background):
            task.cancel()
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        await self._channel.close()

    async def headers(self, name: str) -> CredentialHeaders:
        """The headers of `name`: from memory once held, else fetched once and then watched."""
        if self._forked():
            self._after_fork()
        hit = self._state.hit(name)
        if hit is not None:
            return hit
        loop = asyncio.get_running_loop()
        with self._state.lock:
            held, fetching, run = self._state.begin(name, loop.create_future)
        if held is not None:
            return held
        assert fetching is not None
        if run:
            # Its own task: the fetch completes for every waiter even if this one is cancelled.
            loop.create_task(self._fetch(name, fetching))
        await asyncio.shield(fetching.waiter)
        if fetching.error is not None:
            raise fetching.error
        if fetching.result is None:
            raise errors.RpcError(grpc.StatusCode.INTERNAL, "the fetch ended without an answer")
        return fetching.result

    async def _fetch(self, name: str, fetching: Fetching) -> None:
        answer, error = None, None
        try:
            answer = await self._stub.GetCredentialHeaders(
                pb.GetCredentialHeadersRequest(name=name),
                timeout=self._request_timeout,
                metadata=self._metadata,
            )
        except grpc.RpcError as e:
            error = errors.from_rpc(e)
        try:
            with self._state.lock:
                restart = self._state.fetched(name, answer, error)
        finally:
            # Every waiter hears, whatever happened.
            if not fetching.waiter.done():
                fetching.waiter.set_result(None)
        if restart:
            self._added.set()
            if self._call is not None:
                self._call.cancel()

    async def _watch_loop(self) -> None:
        delay = self._backoff[0]
        while not self._closed:
            self._added.clear()
            with self._state.lock:
                names, request = self._state.request()
            if not names:
                await self._added.wait()
                continue
            with self._state.lock:
                self._state.stats.streams += 1
            call = self._stub.WatchCredentialHeaders(request, metadata=self._metadata)
            self._call = call
            status: tuple[grpc.StatusCode, str] | None = None
            try:
                async for message in call:
                    with self._state.lock:
                        restart = self._state.apply(names, message)
                    if restart or self._added.is_set():
                        break
                else:
                    status = (grpc.StatusCode.UNAVAILABLE, "the vault ended the watch stream")
            except grpc.RpcError as e:
                if not (e.code() == grpc.StatusCode.CANCELLED and (self._added.is_set() or self._closed)):
                    status = (e.code(), e.details() or "")
            except asyncio.CancelledError:
                if self._closed:
                    call.cancel()
                    raise
                # grpc.aio surfaces a cancelled stream this way: a restart.
            finally:
                self._call = None
                call.cancel()
            if status is None or self._closed:
                self._restarting()
                continue
            delay = self._lost(status, delay)
            await asyncio.sleep(jitter(delay))
            delay = min(delay * 2, self._backoff[1])

    async def report(self, name: str, status: int, retry_after: float | None = None) -> Report:
        """Reports the provider's answer (see `Client.report`)."""
        try:
            answer = await self._stub.ReportProviderResponse(
                self._report_request(name, status, retry_after),
                timeout=self._request_timeout,
                metadata=self._metadata,
            )
        except grpc.RpcError as e:
            raise errors.from_rpc(e) from None
        return self._reported(name, answer)

    async def report_if_news(self, name: str, status: int, retry_after: float | None = None) -> Report | None:
        """Reports a 401, 403 or 429 unless the vault knows already."""
        return await self.report(name, status, retry_after) if self._news(name, status, retry_after) else None

    async def note_response(self, name: str, status: int, retry_after: float | None = None) -> None:
        """Takes in the provider's answer (see `Client.note_response`); never raises: an
        unreachable vault leaves a 429 paused here and the report retried in the background."""
        if status not in (401, 403, 429):
            return
        try:
            await self.report_if_news(name, status, retry_after)
        except errors.CredvaultError:
            until = self._pause_locally(name, status, retry_after)
            key = (name, status)
            if key in self._retrying:
                return
            self._retrying.add(key)
            task = asyncio.get_running_loop().create_task(self._retry_report(name, status, retry_after, until))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _retry_report(self, name: str, status: int, retry_after: float | None, until: float | None) -> None:
        deadline = until if until is not None else time.time() + 300.0
        delay = self._backoff[0]
        try:
            while time.time() < deadline and not self._closed:
                await asyncio.sleep(jitter(delay))
                delay = min(delay * 2, self._backoff[1])
                try:
                    await self.report(name, status, retry_after)
                    return
                except errors.CredvaultError:
                    continue
        finally:
            self._retrying.discard((name, status))

    async def try_acquire(self, name: str) -> CredentialHeaders:
        """The headers when a request may be sent now, else `Paused` or `BudgetSpent`."""
        headers = await self.headers(name)
        ready = self._ready(name, headers)
        if ready is not None:
            return ready
        asked = time.monotonic()
        try:
            grant = await self._stub.AcquireRequestTokens(
                self._lease_request(headers),
                timeout=self._request_timeout,
                metadata=self._metadata,
            )
        except grpc.RpcError as e:
            raise errors.from_rpc(e) from None
        return self._granted(name, headers, grant, asked)

    async def acquire(self, name: str) -> CredentialHeaders:
        """The headers once a request may be sent (see `Client.acquire`)."""
        deadline = time.monotonic() + self._acquire_timeout
        while True:
            try:
                return await self.try_acquire(name)
            except (errors.Paused, errors.BudgetSpent) as e:
                wait = wait_of(e)
            if time.monotonic() + wait > deadline:
                return await self.try_acquire(name)
            await asyncio.sleep(wait + 0.002)
