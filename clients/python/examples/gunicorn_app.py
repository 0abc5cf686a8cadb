"""A WSGI app on gunicorn's prefork workers, each request calling the provider with
credvault's headers. With `--preload` the app (and its credvault Client) is made once
in the master, before the workers are forked; each worker rebuilds the client's
channel and watch stream at its first request, and serves the headers held within
`max_staleness` meanwhile. Without `--preload` each worker imports the app itself.

    CREDVAULT_ADDR=credvault:50051 CREDVAULT_TOKEN=... CREDENTIAL=fleetio-acme \\
        gunicorn --preload --workers 4 --chdir examples gunicorn_app:app

PROVIDER_URL overrides the base URL the vault gives (e.g. a local fake in tests).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any

import httpx

import credvault_client
from credvault_client.adapters import CredvaultAuth

CREDENTIAL = os.environ.get("CREDENTIAL", "fleetio-acme")

# Made at import: in the master with --preload (so before the fork), else per worker.
# The address and token come from $CREDVAULT_ADDR and $CREDVAULT_TOKEN.
vault = credvault_client.Client(max_staleness=60.0)


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Calls the provider at the request's path with the credential's headers; answers
    with the provider's status and this worker's pid."""
    base = os.environ.get("PROVIDER_URL") or vault.headers(CREDENTIAL).base_url
    with httpx.Client(auth=CredvaultAuth(vault, CREDENTIAL), timeout=10) as http:
        answer = http.get(base + environ.get("PATH_INFO", "/"))
    body = json.dumps({"status": answer.status_code, "pid": os.getpid()}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
