"""Celery tasks on the prefork pool calling the provider with credvault's headers. The
credvault Client is made at import, in the worker's main process, before the pool
forks its children; each child rebuilds the client's channel and watch stream at
its first task, and serves the headers held within `max_staleness` meanwhile.

    CREDVAULT_ADDR=credvault:50051 CREDVAULT_TOKEN=... CREDENTIAL=fleetio-acme \\
        celery --app celery_app worker --pool prefork --concurrency 4

The broker and result store default to folders (CELERY_DATA, for a demo and the
tests); set CELERY_BROKER_URL and CELERY_RESULT_BACKEND to yours (redis://...).
PROVIDER_URL overrides the base URL the vault gives (e.g. a local fake in tests).
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx
from celery import Celery

import credvault_client
from credvault_client.adapters import CredvaultAuth

CREDENTIAL = os.environ.get("CREDENTIAL", "fleetio-acme")
DATA = Path(os.environ.get("CELERY_DATA", "/tmp/credvault-celery"))
for sub in ("queue", "processed", "results"):
    (DATA / sub).mkdir(parents=True, exist_ok=True)

app = Celery(
    "credvault_example",
    broker=os.environ.get("CELERY_BROKER_URL", "filesystem://"),
    backend=os.environ.get("CELERY_RESULT_BACKEND", f"file://{DATA / 'results'}"),
)
app.conf.broker_transport_options = {
    "data_folder_in": str(DATA / "queue"),
    "data_folder_out": str(DATA / "queue"),
    "data_folder_processed": str(DATA / "processed"),
}

# Made at import, before the pool forks. $CREDVAULT_ADDR and $CREDVAULT_TOKEN.
vault = credvault_client.Client(max_staleness=60.0)


@app.task
def call_provider(path: str) -> dict[str, int]:
    """Calls the provider at `path` with the credential's headers: its status, and the pid of the pool child."""
    base = os.environ.get("PROVIDER_URL") or vault.headers(CREDENTIAL).base_url
    with httpx.Client(auth=CredvaultAuth(vault, CREDENTIAL), timeout=10) as http:
        answer = http.get(base + path)
    return {"status": answer.status_code, "pid": os.getpid()}
