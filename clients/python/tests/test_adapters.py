"""The httpx and requests adapters against a fake Fleetio through the real vault:
a 429 pauses a second client of the same account, a burst of 401s is reported once,
and the asyncio client does the same through httpx.AsyncClient."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest
import requests
from conftest import FakeApi, Server, until

import credvault_client as cv
from credvault_client.adapters import CredvaultAuth, CredvaultRequestsAuth


class Fleetio:
    """Answers vehicles for key-good; 429 (Retry-After: 2) once `limited`; 401 for others."""

    def __init__(self) -> None:
        self.limited = threading.Event()
        self.api = FakeApi(self.answer)

    def answer(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], str]:
        key = headers.get("authorization", "")
        if path == "/api/v1/users/me":
            return (200, {}, "{}") if key == "Token key-good" else (401, {}, "{}")
        if path == "/api/v1/accounts":
            return (401, {}, "{}")
        if key != "Token key-good" or headers.get("account-token") != "acct":
            return 401, {}, '{"error":"unauthorized"}'
        if self.limited.is_set():
            return 429, {"Retry-After": "2"}, '{"error":"Too many requests detected from your account token"}'
        return 200, {}, '[{"id": 1}]'

    def calls(self, path: str) -> int:
        return sum(1 for p, _ in self.api.seen if p == path)


@pytest.fixture
def fleetio() -> Fleetio:
    f = Fleetio()
    yield f
    f.api.close()


@pytest.fixture
def fleetio_server(tmp_path, fleetio: Fleetio):  # type: ignore[no-untyped-def]
    s = Server(tmp_path, fleetio_url=fleetio.api.base_url)
    yield s
    s.stop()


def test_httpx_a_429_pauses_a_second_client_of_the_account(fleetio_server: Server, fleetio: Fleetio) -> None:
    admin = fleetio_server.admin()
    admin.create("acme-etl", "key-good")
    admin.create("acme-sync", "key-good")
    url = f"{fleetio.api.base_url}/v1/vehicles"
    one = cv.Client(fleetio_server.target, token=fleetio_server.worker_token)
    two = cv.Client(fleetio_server.target, token=fleetio_server.worker_token)
    with httpx.Client(auth=CredvaultAuth(one, "acme-etl")) as http:
        assert http.get(url).status_code == 200
        # The second worker holds its own credential of the same account, and does not wait.
        second = httpx.Client(auth=CredvaultAuth(two, "acme-sync", wait=False))
        assert second.get(url).status_code == 200
        until(lambda: two.is_connected, "the second worker's stream up")
        fleetio.limited.set()
        started = time.time()
        assert http.get(url).status_code == 429
    # The adapter reported it: the other worker refuses to send before the pause ends.
    until(lambda: _paused(two, "acme-sync"), "the pause reaches the second worker", 5)
    calls = fleetio.calls("/api/v1/vehicles")
    with pytest.raises(cv.Paused) as paused:
        second.get(url)
    assert fleetio.calls("/api/v1/vehicles") == calls, "nothing sent while paused"
    assert 1.0 < paused.value.until - started <= 4.0
    fleetio.limited.clear()
    # A waiting adapter sends once the pause is over.
    waiting = httpx.Client(auth=CredvaultAuth(two, "acme-sync"))
    assert waiting.get(url).status_code == 200
    assert time.time() >= paused.value.until
    reports = [e for e in admin.audit() if e.method == "ReportProviderResponse"]
    assert [e.reason for e in reports] == ["reported 429 (retry-after 2s): paused"]
    for c in (one, two):
        c.close()
    admin.close()


def _paused(client: cv.Client, name: str) -> bool:
    try:
        client.try_acquire(name)
        return False
    except cv.Paused:
        return True


def test_requests_a_burst_of_401s_is_reported_once(fleetio_server: Server, fleetio: Fleetio) -> None:
    admin = fleetio_server.admin()
    admin.create("acme", "key-revoked")
    client = cv.Client(fleetio_server.target, token=fleetio_server.worker_token)
    auth = CredvaultRequestsAuth(client, "acme")
    url = f"{fleetio.api.base_url}/v1/vehicles"
    client.headers("acme")
    # A burst: ten requests at once, each answered 401 (or refused, once the vault has
    # verified the key and pushed the rejection).
    start = threading.Barrier(10)
    answers: list[object] = []

    def send() -> None:
        start.wait()
        try:
            answers.append(requests.get(url, auth=auth, timeout=10).status_code)
        except cv.Rejected:
            answers.append("rejected")

    threads = [threading.Thread(target=send) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers.count(401) >= 2 and set(answers) <= {401, "rejected"}, answers
    assert client.stats().reports == 1, "one report for the burst"
    session = requests.Session()
    session.auth = auth
    # The vault verified once and every worker learns the key is rejected.
    until(lambda: _rejected(client, "acme"), "the rejection pushed", 5)
    assert fleetio.calls("/api/v1/users/me") == 1
    with pytest.raises(cv.Rejected, match="api_key"):
        session.get(url)
    assert fleetio.calls("/api/v1/vehicles") == answers.count(401), "a rejected key is not sent"
    client.close()
    admin.close()


def _rejected(client: cv.Client, name: str) -> bool:
    try:
        client.headers(name)
        return False
    except cv.Rejected:
        return True


def test_asyncio_client_and_httpx_async(fleetio_server: Server, fleetio: Fleetio) -> None:
    admin = fleetio_server.admin()
    admin.create("acme", "key-good")

    async def run() -> None:
        async with cv.AsyncClient(fleetio_server.target, token=fleetio_server.worker_token) as client:
            # Single flight across tasks.
            got = await asyncio.gather(*(client.headers("acme") for _ in range(20)))
            assert {h.version for h in got} == {1}
            assert client.stats().fetches == 1
            async with httpx.AsyncClient(auth=CredvaultAuth(client, "acme")) as http:
                r = await http.get(f"{fleetio.api.base_url}/v1/vehicles")
                assert r.status_code == 200
            for _ in range(500):
                if client.is_connected:
                    break
                await asyncio.sleep(0.01)
            assert client.is_connected
            await asyncio.to_thread(admin.rotate, "acme", "key-good", "acct")
            for _ in range(500):
                if (await client.headers("acme")).version == 2:
                    break
                await asyncio.sleep(0.01)
            assert (await client.headers("acme")).version == 2
            report = await client.report("acme", 429, 1)
            assert report.action == cv.pb.REPORT_ACTION_PAUSED
            with pytest.raises(cv.Paused):
                await client.try_acquire("acme")
            started = time.monotonic()
            await client.acquire("acme")
            assert time.monotonic() - started > 0.5

    asyncio.run(run())
    admin.close()


def test_the_example_worker_lists_vehicles(fleetio_server: Server, fleetio: Fleetio) -> None:
    import subprocess
    import sys
    from pathlib import Path

    admin = fleetio_server.admin()
    admin.create("fleetio-acme", "key-good")
    example = Path(__file__).resolve().parents[1] / "examples" / "fleetio_worker.py"
    out = subprocess.run(
        [
            sys.executable,
            str(example),
            "--vault",
            fleetio_server.target,
            "--base-url",
            fleetio.api.base_url,
            "--calls",
            "3",
            "--every",
            "0.05",
        ],
        env={"CREDVAULT_TOKEN": fleetio_server.worker_token, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("-> 200 (1 vehicles) with fleetio-acme version 1") == 3, out.stdout
    assert "fetched 1 time(s)" in out.stdout
    assert "key-good" not in out.stdout + out.stderr
    admin.close()
