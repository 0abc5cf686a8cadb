"""An ingestion worker in Python: lists a Fleetio account's vehicles with httpx, its
headers from credvault through the adapter (which waits out a pause of the account,
takes requests from its budget and reports 401 / 403 / 429 to the vault).

    CREDVAULT_TOKEN=... python examples/fleetio_worker.py --credential fleetio-acme --calls 3
    # against a local fake Fleetio instead of the base URL the vault gives:
    #   --base-url http://127.0.0.1:8080/api
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import httpx

import credvault_client
from credvault_client.adapters import CredvaultAuth


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vault", default=os.environ.get("CREDVAULT_ADDR", "127.0.0.1:50051"))
    parser.add_argument("--credential", default="fleetio-acme")
    parser.add_argument("--base-url", help="Fleetio's API base URL, over the one the vault gives")
    parser.add_argument("--calls", type=int, default=1)
    parser.add_argument("--every", type=float, default=1.0, help="seconds between calls")
    args = parser.parse_args()
    token = os.environ.get("CREDVAULT_TOKEN")
    if not token:
        print("set CREDVAULT_TOKEN to a token with the headers.read permission", file=sys.stderr)
        return 2
    with credvault_client.Client(args.vault, token=token) as vault:
        base = args.base_url or vault.headers(args.credential).base_url
        with httpx.Client(auth=CredvaultAuth(vault, args.credential), timeout=30) as http:
            for call in range(args.calls):
                if call:
                    time.sleep(args.every)
                response = http.get(f"{base.rstrip('/')}/v1/vehicles")
                held = vault.headers(args.credential)
                body = response.json() if response.status_code == 200 else []
                records = body if isinstance(body, list) else body.get("records", [])
                print(
                    f"GET /v1/vehicles -> {response.status_code} ({len(records)} vehicles) "
                    f"with {held.name} version {held.version}"
                )
                if response.status_code in (401, 403):
                    print("fleetio refused the credential; ask an operator to rotate it", file=sys.stderr)
                    return 2
        stats = vault.stats()
        print(f"fetched {stats.fetches} time(s), {stats.streams} watch stream(s), {stats.updates} update(s) pushed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
