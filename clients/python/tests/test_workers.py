"""Python workers as they really run, against the real vault: a client made before a
fork (multiprocessing with the fork start method, as Celery's prefork pool and
gunicorn's --preload do), a vault that stops answering (SIGSTOP) and one that is
gone (kill -9) while the provider answers 429 or 401, and the address forms."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from conftest import FakeApi, Server, until

import credvault_client as cv
from credvault_client.adapters import CredvaultAuth, CredvaultRequestsAuth


def auth(h: cv.CredentialHeaders) -> str:
    return h.as_dict()["Authorization"]


def _child(client: cv.Client, out: Any, go: Any) -> None:
    """In the forked child: the headers as they change, then how the client fares
    once the vault is killed."""
    try:
        out.put(("first", auth(client.headers("acme"))))
        until(lambda: auth(client.headers("acme")) == "Token key-00000002", "the rotation in the child", 15)
        until(lambda: bool(client.is_connected), "the child's own stream", 15)
        out.put(("rotated", auth(client.headers("acme")), client.is_connected()))
        go.wait(20)  # the parent kills the vault
        start = time.monotonic()
        while True:
            try:
                client.headers("acme")
            except cv.Stale:
                out.put(("stale", time.monotonic() - start, bool(client.is_connected)))
                return
            if time.monotonic() - start > 20:
                out.put(("never stale", time.monotonic() - start, bool(client.is_connected)))
                return
            time.sleep(0.05)
    except Exception as e:  # reported to the parent, which fails the test
        out.put(("error", repr(e)))


def test_a_client_made_before_a_fork_serves_the_child(server: Server) -> None:
    admin = server.admin()
    admin.create("acme", "key-00000001")
    client = cv.Client(server.target, token=server.worker_token, max_staleness=3.0, backoff=(0.05, 0.5))
    assert auth(client.headers("acme")) == "Token key-00000001"
    until(lambda: bool(client.is_connected), "the parent's stream")
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    go = ctx.Event()
    child = ctx.Process(target=_child, args=(client, out, go))
    child.start()
    try:
        assert out.get(timeout=20) == ("first", "Token key-00000001")
        admin.rotate("acme", "key-00000002")
        rotated = out.get(timeout=30)
        assert rotated == ("rotated", "Token key-00000002", True), rotated
        server.kill9()
        go.set()
        kind, after, connected = out.get(timeout=40)
        assert kind == "stale", (kind, after)
        assert connected is False
        # max_staleness is 3 s; a refused reconnection is noticed at once.
        assert after < 8, after
        print(f"forked child: the rotation reached it; Stale {after:.1f} s after kill -9 (max_staleness 3 s)")
    finally:
        child.join(10)
        admin.close()
        client.close()
    assert child.exitcode == 0


def test_a_silent_vault_goes_stale_within_max_staleness_and_the_keepalive_bound(server: Server) -> None:
    admin = server.admin()
    admin.create("acme", "key-00000001")
    max_staleness = 5.0
    # README: stale by max_staleness + 30 s (a keepalive ping after 20 s, 10 s for its answer).
    bound = max_staleness + 30 + 4
    results: dict[str, float] = {}
    sync = cv.Client(server.target, token=server.worker_token, max_staleness=max_staleness)
    sync.headers("acme")
    until(lambda: bool(sync.is_connected), "the stream")

    def watch_sync() -> None:
        start = time.monotonic()
        while time.monotonic() - start < bound + 10:
            try:
                sync.headers("acme")
            except cv.Stale:
                results["Client"] = time.monotonic() - start
                return
            time.sleep(0.1)

    async def watch_async(stopped: threading.Event) -> None:
        client = cv.AsyncClient(server.target, token=server.worker_token, max_staleness=max_staleness)
        try:
            await client.headers("acme")
            while not client.is_connected:
                await asyncio.sleep(0.05)
            stopped.wait(5)
            start = time.monotonic()
            while time.monotonic() - start < bound + 10:
                try:
                    await client.headers("acme")
                except cv.Stale:
                    results["AsyncClient"] = time.monotonic() - start
                    return
                await asyncio.sleep(0.1)
        finally:
            await client.close()

    stopped = threading.Event()
    async_thread = threading.Thread(target=lambda: asyncio.run(watch_async(stopped)))
    async_thread.start()
    time.sleep(1.0)
    assert server.proc is not None
    server.proc.send_signal(signal.SIGSTOP)
    stopped.set()
    try:
        watch_sync()
        async_thread.join(bound + 20)
    finally:
        server.proc.send_signal(signal.SIGCONT)
        sync.close()
        admin.close()
    print(f"a silent vault (SIGSTOP), max_staleness 5 s: stale after {results}")
    assert set(results) == {"Client", "AsyncClient"}, results
    assert all(t <= bound for t in results.values()), results


class Provider:
    """A provider that answers 429 (Retry-After: 30) to /limited and 401 to /rejected."""

    def __init__(self) -> None:
        self.api = FakeApi(self.answer)

    def answer(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], str]:
        if path.endswith("/limited"):
            return 429, {"Retry-After": "30"}, '{"error":"slow down"}'
        if path.endswith("/rejected"):
            return 401, {}, '{"error":"unauthorized"}'
        return 200, {}, "{}"

    def calls(self) -> int:
        return len(self.api.seen)


def test_the_adapters_hand_back_the_providers_answer_when_the_vault_is_gone(server: Server) -> None:
    provider = Provider()
    admin = server.admin()
    admin.create("acme", "key-00000001")
    client = cv.Client(server.target, token=server.worker_token, max_staleness=60.0, backoff=(0.05, 0.5))
    try:
        client.headers("acme")
        server.kill9()
        base = provider.api.base_url
        with httpx.Client(auth=CredvaultAuth(client, "acme", wait=False)) as http:
            rejected = http.get(f"{base}/rejected")
            assert rejected.status_code == 401
            limited = http.get(f"{base}/limited")
            assert limited.status_code == 429 and limited.json() == {"error": "slow down"}
            seen = provider.calls()
            # Paused here at once, for the Retry-After: nothing reaches the provider.
            with pytest.raises(cv.Paused) as paused:
                http.get(f"{base}/anything")
            assert paused.value.until > time.time() + 25
            assert provider.calls() == seen
        session = requests.Session()
        session.auth = CredvaultRequestsAuth(client, "acme", wait=False)
        with pytest.raises(cv.Paused):
            session.get(f"{base}/anything")
        assert provider.calls() == seen
    finally:
        client.close()
        admin.close()
        provider.api.close()


def test_the_async_adapter_hands_back_the_providers_answer_when_the_vault_is_gone(server: Server) -> None:
    provider = Provider()
    admin = server.admin()
    admin.create("acme", "key-00000001")

    async def run() -> None:
        client = cv.AsyncClient(server.target, token=server.worker_token, max_staleness=60.0, backoff=(0.05, 0.5))
        try:
            await client.headers("acme")
            server.kill9()
            async with httpx.AsyncClient(auth=CredvaultAuth(client, "acme", wait=False)) as http:
                limited = await http.get(f"{provider.api.base_url}/limited")
                assert limited.status_code == 429
                seen = provider.calls()
                with pytest.raises(cv.Paused):
                    await http.get(f"{provider.api.base_url}/anything")
                assert provider.calls() == seen
        finally:
            await client.close()

    try:
        asyncio.run(run())
    finally:
        admin.close()
        provider.api.close()


def test_a_report_that_failed_reaches_the_vault_once_it_is_back(tmp_path: Path) -> None:
    provider = Provider()
    server = Server(tmp_path)
    admin = server.admin()
    admin.create("acme", "key-00000001")
    client = cv.Client(server.target, token=server.worker_token, max_staleness=120.0, backoff=(0.05, 0.5))
    watcher = cv.Client(server.target, token=server.worker_token, max_staleness=120.0, backoff=(0.05, 0.5))
    try:
        client.headers("acme")
        watcher.headers("acme")
        server.kill9()
        with httpx.Client(auth=CredvaultAuth(client, "acme", wait=False)) as http:
            assert http.get(f"{provider.api.base_url}/limited").status_code == 429
        server.start()
        # The report retried in the background reaches the vault: another client of
        # the account hears the pause through its stream.
        until(lambda: _paused(watcher, "acme"), "the retried report paused the account for every worker", 20)
    finally:
        client.close()
        watcher.close()
        admin.close()
        server.stop()
        provider.api.close()


def _paused(client: cv.Client, name: str) -> bool:
    try:
        client.try_acquire(name)
    except cv.Paused:
        return True
    except cv.CredvaultError:
        return False
    return False


def test_every_address_form_and_the_environment(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    admin = server.admin()
    admin.create("acme", "key-00000001")
    for target in (server.target, f"http://{server.target}", f"http://{server.target}/"):
        with cv.Client(target, token=server.worker_token) as client:
            assert auth(client.headers("acme")) == "Token key-00000001"
    monkeypatch.setenv("CREDVAULT_ADDR", f"http://{server.target}")
    monkeypatch.setenv("CREDVAULT_TOKEN", server.worker_token)
    with cv.Client() as client:
        assert auth(client.headers("acme")) == "Token key-00000001"
        # The same member as the Rust crate's `is_connected()`, and a truth value.
        until(lambda: client.is_connected(), "connected")
        assert client.is_connected and client.is_connected == True  # noqa: E712
    for bad in ("unix:///run/credvault.sock", "ftp://vault:50051", "vault", "http://vault:port"):
        with pytest.raises(ValueError):
            cv.Client(bad, token="t")
    monkeypatch.delenv("CREDVAULT_ADDR")
    with pytest.raises(ValueError, match="CREDVAULT_ADDR"):
        cv.Client()
    admin.close()


def test_extra_channel_options_and_a_ready_channel(server: Server) -> None:
    import grpc

    admin = server.admin()
    admin.create("acme", "key-00000001")
    with cv.Client(server.target, token=server.worker_token, channel_options=[("grpc.keepalive_time_ms", 5_000)]) as c:
        assert auth(c.headers("acme")) == "Token key-00000001"
    channel = grpc.insecure_channel(server.target)
    with cv.Client(server.target, token=server.worker_token, channel=channel) as c:
        assert auth(c.headers("acme")) == "Token key-00000001"
    admin.close()
    _ = os.getpid()


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _example_env(server: Server, provider: FakeApi, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "CREDVAULT_ADDR": server.target,
        "CREDVAULT_TOKEN": server.worker_token,
        "CREDENTIAL": "acme",
        "PROVIDER_URL": provider.base_url,
        **extra,
    }


def _authorizations(provider: FakeApi, since: int) -> list[str]:
    return [headers.get("authorization", "") for _, headers in provider.seen[since:]]


def test_the_gunicorn_example_with_preload_follows_a_rotation(server: Server, tmp_path: Path) -> None:
    import subprocess
    import sys

    from conftest import free_port

    provider = FakeApi(lambda method, path, headers: (200, {}, "{}"))
    admin = server.admin()
    admin.create("acme", "key-00000001")
    port = free_port()
    log = (tmp_path / "gunicorn.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--preload", "--workers", "2", "--bind", f"127.0.0.1:{port}"]
        + ["--chdir", str(EXAMPLES), "gunicorn_app:app"],
        env=_example_env(server, provider),
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    def call() -> dict[str, int] | None:
        try:
            answer = httpx.get(f"http://127.0.0.1:{port}/v1/vehicles", timeout=5)
        except httpx.HTTPError:
            return None
        return answer.json() if answer.status_code == 200 else None

    try:
        until(lambda: call() is not None, "gunicorn serves", 30)
        pids = set()
        for _ in range(20):
            answer = call()
            assert answer is not None and answer["status"] == 200, answer
            pids.add(answer["pid"])
        assert set(_authorizations(provider, 0)) == {"Token key-00000001"}
        admin.rotate("acme", "key-00000002")
        # Every worker's next requests carry the new key, without a restart.
        until(
            lambda: (call(), _authorizations(provider, len(provider.seen) - 1))[1] == ["Token key-00000002"],
            "the rotation in the workers",
            20,
        )
        seen = len(provider.seen)
        for _ in range(20):
            call()
        assert set(_authorizations(provider, seen)) == {"Token key-00000002"}
        print(f"gunicorn --preload: {len(pids)} worker(s) served; a rotation reached them without a restart")
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
        admin.close()
        provider.close()


def test_the_celery_example_on_the_prefork_pool_follows_a_rotation(server: Server, tmp_path: Path) -> None:
    import subprocess
    import sys

    provider = FakeApi(lambda method, path, headers: (200, {}, "{}"))
    admin = server.admin()
    admin.create("acme", "key-00000001")
    env = _example_env(server, provider, CELERY_DATA=str(tmp_path / "celery"))
    log = (tmp_path / "celery.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "--app", "celery_app", "worker", "--pool", "prefork"]
        + [
            "--concurrency",
            "2",
            "--loglevel",
            "WARNING",
            "--without-heartbeat",
            "--without-mingle",
            "--without-gossip",
        ],
        cwd=EXAMPLES,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    # The producer side: the same module, in this process, sending tasks.
    script = (
        "import sys, celery_app\n"
        "results = [celery_app.call_provider.delay('/v1/vehicles') for _ in range(int(sys.argv[1]))]\n"
        "print(','.join(str(r.get(timeout=60)['status']) for r in results))\n"
    )

    def send(n: int) -> list[str]:
        out = subprocess.run(
            [sys.executable, "-c", script, str(n)], cwd=EXAMPLES, env=env, capture_output=True, text=True, timeout=90
        )
        assert out.returncode == 0, out.stderr
        return out.stdout.strip().split(",")

    try:
        assert send(6) == ["200"] * 6
        assert set(_authorizations(provider, 0)) == {"Token key-00000001"}
        admin.rotate("acme", "key-00000002")
        time.sleep(1.0)
        seen = len(provider.seen)
        assert send(6) == ["200"] * 6
        assert set(_authorizations(provider, seen)) == {"Token key-00000002"}
        print("celery prefork: tasks carried the key, and the rotated one without a restart")
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()
        admin.close()
        provider.close()
