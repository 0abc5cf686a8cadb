"""The real credvault binary on an ephemeral port, its callers, and a fake Fleetio.

The binary is $CREDVAULT_BIN, else the repository's target/debug/credvault (the
server's `cargo test` sets it). Nothing is mocked but the provider's API, which is a
real local HTTP server.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import pytest

from credvault_client import pb, pb_grpc

REPO = Path(__file__).resolve().parents[3]
ALL = "credentials.read,credentials.write,credentials.verify,headers.read,audit.read"


def binary() -> str:
    path = os.environ.get("CREDVAULT_BIN") or str(REPO / "target" / "debug" / "credvault")
    if not Path(path).exists():
        pytest.exit(f"no credvault binary at {path}: run `cargo build` or set CREDVAULT_BIN", 2)
    return path


def mint(name: str, permissions: str) -> tuple[str, str]:
    """A token and its callers.toml entry, from `credvault token`."""
    out = subprocess.run(
        [binary(), "token", "--name", name, "--permissions", permissions],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    token = next(line[2:].strip() for line in out.splitlines() if line.startswith("# cv_"))
    entry = "\n".join(line for line in out.splitlines() if not line.startswith("#"))
    return token, entry


class Server:
    """`credvault serve` in a directory of its own; kill -9 and restart keep its data and port."""

    def __init__(
        self,
        root: Path,
        fleetio_url: str = "http://127.0.0.1:9/api",
        extra_args: tuple[str, ...] = (),
        extra_callers: str = "",
    ) -> None:
        self.root = root
        key = subprocess.run([binary(), "keygen"], check=True, capture_output=True, text=True).stdout
        (root / "master.key").write_text(key)
        self.admin_token, admin = mint("admin", ALL)
        self.worker_token, worker = mint("worker", "headers.read")
        (root / "callers.toml").write_text(admin + "\n" + worker + "\n" + extra_callers)
        self.fleetio_url = fleetio_url
        self.extra_args = extra_args
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None
        self.log: list[str] = []
        self.start()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        """Starts the server (on the port it had, if it had one) and waits until it serves."""
        self.proc = subprocess.Popen(
            [
                binary(),
                "serve",
                "--listen",
                f"127.0.0.1:{self.port}",
                "--log-format",
                "json",
                "--data-dir",
                str(self.root / "data"),
                "--master-key-file",
                str(self.root / "master.key"),
                "--callers-file",
                str(self.root / "callers.toml"),
                "--provider-base-url",
                f"fleetio={self.fleetio_url}",
                *self.extra_args,
            ],
            env={**os.environ, "CREDVAULT_DRAIN_DELAY": "0s"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        ready = threading.Event()
        proc = self.proc

        def read() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                self.log.append(line)
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if event.get("message") == "credvault serving":
                    self.port = int(str(event["addr"]).rsplit(":", 1)[1])
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(20):
            raise RuntimeError("credvault did not start:\n" + "".join(self.log))

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def admin(self, credentials: grpc.ChannelCredentials | None = None) -> Admin:
        return Admin(self.target, self.admin_token, credentials)


class Admin:
    """The generated stub with the admin's token: what an operator's tooling would call."""

    def __init__(self, target: str, token: str, credentials: grpc.ChannelCredentials | None = None) -> None:
        self.channel = grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)
        self.stub = pb_grpc.CredentialVaultServiceStub(self.channel)
        self.metadata = (("authorization", f"Bearer {token}"),)

    def create(self, name: str, api_key: str, account_token: str = "acct", **extra: object) -> pb.Credential:
        return self.stub.CreateCredential(
            pb.CreateCredentialRequest(
                name=name,
                fleetio=pb.FleetioSecret(api_key=api_key, account_token=account_token),
                **extra,
            ),
            metadata=self.metadata,
        ).credential

    def rotate(self, name: str, api_key: str, account_token: str = "acct") -> pb.Credential:
        return self.stub.UpdateCredential(
            pb.UpdateCredentialRequest(
                name=name, fleetio=pb.FleetioSecret(api_key=api_key, account_token=account_token)
            ),
            metadata=self.metadata,
        ).credential

    def delete(self, name: str) -> None:
        self.stub.DeleteCredential(pb.DeleteCredentialRequest(name=name), metadata=self.metadata)

    def audit(self) -> list[pb.AuditEvent]:
        return list(self.stub.ListAuditEvents(pb.ListAuditEventsRequest(page_size=1000), metadata=self.metadata).events)

    def close(self) -> None:
        self.channel.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = Server(tmp_path)
    yield s
    s.stop()


@pytest.fixture
def admin(server: Server) -> Iterator[Admin]:
    a = server.admin()
    yield a
    a.close()


class FakeApi:
    """A local HTTP server answering as `answer(method, path, headers)` says: (status, headers, body)."""

    def __init__(self, answer: Callable[[str, str, dict[str, str]], tuple[int, dict[str, str], str]]) -> None:
        self.seen: list[tuple[str, dict[str, str]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                headers = {k.lower(): v for k, v in self.headers.items()}
                outer.seen.append((self.path, headers))
                status, extra, body = answer("GET", self.path, headers)
                data = body.encode()
                self.send_response(status)
                for k, v in extra.items():
                    self.send_header(k, v)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/api"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()


def until(check: Callable[[], bool], what: str, limit: float = 10.0) -> float:
    """Waits until `check()` holds (polling every 2 ms); how long it took."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > limit:
            raise AssertionError(f"{what}: not within {limit}s")
        time.sleep(0.002)
    return time.monotonic() - start


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TcpGate:
    """A TCP relay in front of the server that the test closes and opens: while closed,
    connections are refused and the ones open are cut, so a client is disconnected
    for exactly as long as the test says."""

    def __init__(self, upstream: Callable[[], int]) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.listener: socket.socket | None = None
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        self.open()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def open(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def close(self) -> None:
        with self.lock:
            if self.listener is not None:
                # shutdown wakes the thread blocked in accept (close alone does not).
                try:
                    self.listener.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                self.listener.close()
                self.listener = None
            for c in self.conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                c.close()
            self.conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream()))
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
