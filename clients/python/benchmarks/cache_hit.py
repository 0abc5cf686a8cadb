"""A cache hit of the Python client against GetCredentialHeaders over gRPC from
Python, side by side in one run on one server (BENCHMARKS.md).

    python benchmarks/cache_hit.py --server-bin ../../target/release/credvault --seconds 5

It starts the server in a temporary directory (its own key and callers), creates
one Fleetio credential, then measures, one after the other, for `--seconds` each:
`client.headers(name)` on a held credential, and the unary RPC on a channel of its
own (the same generated stub a worker without the client would use). Every call is
timed alone with perf_counter_ns; rates count calls over the step.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc

import credvault_client as cv


def mint(binary: str, name: str, permissions: str) -> tuple[str, str]:
    out = subprocess.run(
        [binary, "token", "--name", name, "--permissions", permissions], check=True, capture_output=True, text=True
    ).stdout
    token = next(line[2:].strip() for line in out.splitlines() if line.startswith("# cv_"))
    return token, "\n".join(line for line in out.splitlines() if not line.startswith("#"))


def start(binary: str, root: Path) -> tuple[subprocess.Popen[str], str, str, str]:
    key = subprocess.run([binary, "keygen"], check=True, capture_output=True, text=True).stdout
    (root / "master.key").write_text(key)
    admin, admin_entry = mint(binary, "admin", "credentials.write,headers.read")
    worker, worker_entry = mint(binary, "worker", "headers.read")
    (root / "callers.toml").write_text(admin_entry + "\n" + worker_entry + "\n")
    proc = subprocess.Popen(
        [binary, "serve", "--listen", "127.0.0.1:0", "--log-format", "json"]
        + ["--data-dir", str(root / "data"), "--master-key-file", str(root / "master.key")]
        + ["--callers-file", str(root / "callers.toml")],
        env={**os.environ, "CREDVAULT_DRAIN_DELAY": "0s"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    ready = threading.Event()
    addr: list[str] = []

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("message") == "credvault serving":
                addr.append(str(event["addr"]))
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(20):
        proc.kill()
        raise SystemExit("the server did not start")
    return proc, addr[0], admin, worker


def measure(call: Callable[[], object], seconds: float) -> dict[str, float]:
    """Calls `call()` for `seconds` (after a second of warm-up); per-call p50/p99 and the rate."""
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        call()
    samples: list[int] = []
    end = time.monotonic() + seconds
    started = time.perf_counter()
    while time.monotonic() < end:
        t = time.perf_counter_ns()
        call()
        samples.append(time.perf_counter_ns() - t)
    elapsed = time.perf_counter() - started
    samples.sort()
    return {
        "calls_per_s": len(samples) / elapsed,
        "p50_us": samples[len(samples) // 2] / 1000,
        "p99_us": samples[int(len(samples) * 0.99)] / 1000,
    }


def measure_threads(call: Callable[[], object], seconds: float, threads: int) -> dict[str, float]:
    """`measure` in `threads` threads at once: their summed rate and the worst p99."""
    results: list[dict[str, float]] = []
    lock = threading.Lock()

    def run() -> None:
        r = measure(call, seconds)
        with lock:
            results.append(r)

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return {
        "calls_per_s": sum(r["calls_per_s"] for r in results),
        "p50_us": max(r["p50_us"] for r in results),
        "p99_us": max(r["p99_us"] for r in results),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server-bin", required=True)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        proc, addr, admin_token, worker_token = start(args.server_bin, Path(tmp))
        try:
            channel = grpc.insecure_channel(addr)
            stub = cv.pb_grpc.CredentialVaultServiceStub(channel)
            stub.CreateCredential(
                cv.pb.CreateCredentialRequest(
                    name="fleetio-acme",
                    fleetio=cv.pb.FleetioSecret(api_key="key-bench-00000001", account_token="acct"),
                ),
                metadata=(("authorization", f"Bearer {admin_token}"),),
            )
            metadata = (("authorization", f"Bearer {worker_token}"),)
            request = cv.pb.GetCredentialHeadersRequest(name="fleetio-acme")
            rpc = measure(lambda: stub.GetCredentialHeaders(request, metadata=metadata), args.seconds)
            with cv.Client(addr, token=worker_token) as client:
                client.headers("fleetio-acme")
                hit = measure(lambda: client.headers("fleetio-acme"), args.seconds)
                # The hit path against the locked path it replaced, in 1 and 2 threads.
                state = client._state

                def locked() -> object:
                    with state.lock:
                        return state.begin("fleetio-acme", threading.Event)[0]

                threads = {
                    f"{path}_{n}": measure_threads(call, args.seconds, n)
                    for n in (1, 2)
                    for path, call in (("hit", lambda: client.headers("fleetio-acme")), ("locked", locked))
                }
            channel.close()
        finally:
            proc.terminate()
            proc.wait(10)
    results = {"cache_hit": hit, "get_credential_headers_rpc": rpc, "threads": threads}
    print("| from Python | calls/s | p50 µs | p99 µs |")
    print("|---|---:|---:|---:|")
    for label, r in (("client.headers() (cache hit)", hit), ("GetCredentialHeaders RPC", rpc)):
        print(f"| {label} | {r['calls_per_s']:,.0f} | {r['p50_us']:.1f} | {r['p99_us']:.1f} |")
    print(
        f"cache hit / RPC: {hit['calls_per_s'] / rpc['calls_per_s']:,.0f}x the calls per second, "
        f"p99 {rpc['p99_us'] / hit['p99_us']:,.0f}x lower"
    )
    print()
    print("| path | threads | calls/s (all threads) | p99 µs (worst thread) |")
    print("|---|---:|---:|---:|")
    for key, r in threads.items():
        path, n = key.rsplit("_", 1)
        print(f"| {path} | {n} | {r['calls_per_s']:,.0f} | {r['p99_us']:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
