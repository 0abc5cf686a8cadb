"""The thread-based client against the real server: single flight, pushed changes,
kill -9 and restart, the staleness bound, deletion, scopes of what it prints."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from conftest import Admin, Server, TcpGate, until

import credvault_client as cv


def auth(h: cv.CredentialHeaders) -> str:
    return h.as_dict()["Authorization"]


def test_twenty_threads_ask_at_once_and_make_one_fetch(server: Server, admin: Admin) -> None:
    admin.create("acme", "key-00000001")
    with cv.Client(server.target, token=server.worker_token) as client:
        start = threading.Barrier(20)
        got: list[cv.CredentialHeaders] = []

        def ask() -> None:
            start.wait()
            got.append(client.headers("acme"))

        threads = [threading.Thread(target=ask) for _ in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(got) == 20
        assert {auth(h) for h in got} == {"Token key-00000001"}
        assert client.stats().fetches == 1
        # Later asks are reads from memory.
        for _ in range(1000):
            client.headers("acme")
        assert client.stats().fetches == 1
        reads = [e for e in admin.audit() if e.method == "GetCredentialHeaders" and e.caller == "worker"]
        assert len(reads) == 1, reads
        # The repr never shows a value.
        assert "key-00000001" not in repr(got[0]) and "[REDACTED]" in repr(got[0])


def test_a_rotation_reaches_memory_without_a_new_ask(server: Server, admin: Admin) -> None:
    admin.create("acme", "key-00000001")
    with cv.Client(server.target, token=server.worker_token) as client:
        assert client.headers("acme").version == 1
        until(lambda: client.is_connected, "the stream up")
        admin.rotate("acme", "key-00000002")
        took = until(lambda: client.headers("acme").version == 2, "the rotation pushed")
        print(f"rotation acknowledged -> the Python client holds version 2 after {took * 1000:.1f} ms")
        assert auth(client.headers("acme")) == "Token key-00000002"
        assert client.stats().fetches == 1
        # The pushed headers were one audited secret read (the stream's first message
        # carried none: the client held version 1 from its fetch).
        pushed = [
            e
            for e in admin.audit()
            if e.method == "WatchCredentialHeaders" and e.credential_name == "acme" and e.secret_fingerprint
        ]
        assert len(pushed) == 1, pushed


def test_kill_9_and_restart_converge_with_an_update_made_while_away(server: Server, admin: Admin) -> None:
    admin.create("acme", "key-00000001")
    # The client reaches the server through a gate, to be kept away exactly as long as needed.
    gate = TcpGate(lambda: server.port)
    with cv.Client(gate.target, token=server.worker_token, backoff=(0.05, 0.5)) as client:
        client.headers("acme")
        until(lambda: client.is_connected, "the stream up")
        gate.close()
        server.kill9()
        until(lambda: not client.is_connected, "the stream lost")
        # Served from memory meanwhile, within the staleness bound.
        assert client.headers("acme").version == 1
        server.start()
        fresh = server.admin()
        # Made while the client cannot reach the server.
        fresh.rotate("acme", "key-00000002")
        assert not client.is_connected
        assert client.headers("acme").version == 1
        gate.open()
        took = until(lambda: client.headers("acme").version == 2, "converged after the restart")
        print(f"kill -9, restart, update while away -> the client holds it {took * 1000:.0f} ms after the way opens")
        assert auth(client.headers("acme")) == "Token key-00000002"
        assert client.stats().fetches == 1, "resumed by the stream, not fetched again"
        fresh.close()
    gate.close()


def test_the_staleness_bound_holds(server: Server, admin: Admin) -> None:
    admin.create("acme", "key-00000001")
    with cv.Client(server.target, token=server.worker_token, max_staleness=1.0, backoff=(0.05, 0.2)) as client:
        client.headers("acme")
        until(lambda: client.is_connected, "the stream up")
        server.kill9()
        lost = time.monotonic()
        until(lambda: not client.is_connected, "the stream lost")
        served = 0
        while True:
            try:
                client.headers("acme")
                served += 1
            except cv.Stale as e:
                assert e.max_staleness == 1.0
                break
            time.sleep(0.01)
        elapsed = time.monotonic() - lost
        assert 0.9 <= elapsed < 5.0, elapsed
        assert served > 0
        with pytest.raises(cv.Stale):
            client.headers("acme")


def test_a_deleted_credential_is_never_served_again(server: Server, admin: Admin) -> None:
    admin.create("acme", "key-00000001")
    with cv.Client(server.target, token=server.worker_token, backoff=(0.05, 0.2)) as client:
        client.headers("acme")
        until(lambda: client.is_connected, "the stream up")
        admin.delete("acme")

        def refused() -> bool:
            try:
                client.headers("acme")
                return False
            except cv.Deleted:
                return True

        until(refused, "the deletion pushed")
        # Not even with the vault gone.
        server.kill9()
        for _ in range(20):
            with pytest.raises(cv.Deleted):
                client.headers("acme")
            time.sleep(0.01)


def test_unknown_and_bad_names_get_clear_errors(server: Server, admin: Admin) -> None:
    with cv.Client(server.target, token=server.worker_token) as client:
        with pytest.raises(cv.NotFound):
            client.headers("nope")
        with pytest.raises(cv.InvalidArgument):
            client.headers("Not A Name!")
    with cv.Client(server.target, token="cv_wrong") as client:
        with pytest.raises(cv.Unauthenticated):
            client.headers("acme")


def test_mutual_tls_identifies_the_worker_by_its_certificate(tmp_path: Path) -> None:
    pki_dir = os.environ.get("CREDVAULT_TEST_PKI")
    if not pki_dir:
        pytest.skip("the certificates are made by the server's cargo test (tests/python.rs)")
    pki = Path(pki_dir)
    entry = '[[caller]]\nname = "py-worker"\ntls_subject = "py-worker"\npermissions = ["headers.read"]\n'
    server = Server(
        tmp_path,
        extra_args=(
            "--tls-cert",
            str(pki / "server.pem"),
            "--tls-key",
            str(pki / "server.key"),
            "--client-ca",
            str(pki / "ca.pem"),
        ),
        extra_callers=entry,
    )
    try:
        ca = (pki / "ca.pem").read_bytes()
        admin = server.admin(cv.Tls(root_certificates=ca).credentials())
        admin.create("acme", "key-00000001")
        tls = cv.Tls(
            root_certificates=ca,
            certificate_chain=(pki / "client.pem").read_bytes(),
            private_key=(pki / "client.key").read_bytes(),
        )
        with cv.Client(server.target, tls=tls) as client:
            assert auth(client.headers("acme")) == "Token key-00000001"
        reads = [e for e in admin.audit() if e.method == "GetCredentialHeaders"]
        assert [e.caller for e in reads] == ["py-worker"]
        # Without a certificate (or a token), TLS alone names no caller.
        with cv.Client(server.target, tls=cv.Tls(root_certificates=ca)) as anonymous:
            with pytest.raises(cv.Unauthenticated):
                anonymous.headers("acme")
        admin.close()
    finally:
        server.stop()


ACME = """
[[provider]]
name = "acme"
base_url = "http://127.0.0.1:9"

[[provider.field]]
name = "token"

[[provider.header]]
name = "Authorization"
value = "{template}"

[provider.verify]
path = "/v1/me"
"""


def test_a_providers_reload_reaches_the_headers_held(tmp_path: Path) -> None:
    providers = tmp_path / "providers.toml"
    providers.write_text(ACME.format(template="Bearer {token}"))
    root = tmp_path / "vault"
    root.mkdir()
    server = Server(root, extra_args=("--providers-file", str(providers), "--watch-resync-interval", "1h"))
    admin = server.admin()
    try:
        admin.stub.CreateCredential(
            cv.pb.CreateCredentialRequest(
                name="acme-w", generic=cv.pb.GenericSecret(provider="acme", fields={"token": "tok-0001"})
            ),
            metadata=admin.metadata,
        )
        with cv.Client(server.target, token=server.worker_token) as client:
            first = client.headers("acme-w")
            assert auth(first) == "Bearer tok-0001"
            until(lambda: client.is_connected, "the stream up")
            # The same version, new headers: the client holds them without a new ask.
            tmp = tmp_path / "providers.new"
            tmp.write_text(ACME.format(template="Token {token}"))
            os.replace(tmp, providers)
            until(lambda: auth(client.headers("acme-w")) == "Token tok-0001", "the reload pushed")
            now = client.headers("acme-w")
            assert now.version == first.version
            assert now.headers_revision != first.headers_revision
            assert client.stats().fetches == 1
    finally:
        admin.close()
        server.stop()
