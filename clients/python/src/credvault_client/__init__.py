"""credvault-client: a Python worker's side of credvault.

A worker asks for a credential's headers by name; the first ask fetches them once
(however many threads or tasks ask at that moment) and adds the credential to the
client's one `WatchCredentialHeaders` stream; every later ask is a read from memory,
and the vault pushes every change (a rotation, a deletion, a new verification, a
pause of the account) into that memory as it happens.

    from credvault_client import Client
    from credvault_client.adapters import CredvaultAuth

    client = Client("credvault:50051", token=os.environ["CREDVAULT_TOKEN"])
    http = httpx.Client(auth=CredvaultAuth(client, "fleetio-acme"))

The promises are the Rust crate's: current while connected; on a broken stream,
reconnection with jittered exponential backoff and a resume with the versions held,
the last good headers served for at most `max_staleness`, then `Stale`; a deleted
or no longer permitted credential never served again; `report()` tells the vault a
provider's 401 / 403 / 429, and `acquire()` waits out a pause and spends the
account's request budget from leases.

The parts: `Client` (threads) and `AsyncClient` (asyncio), `CredentialHeaders`,
the errors, `adapters` for httpx and requests, and `pb` / `pb_grpc`, the generated
`credvault.v1` types for anything else.
"""

from ._aio import AsyncClient
from ._client import Client, Tls
from ._core import Report
from ._errors import (
    BudgetSpent,
    CredvaultError,
    Deleted,
    InvalidArgument,
    NotFound,
    Paused,
    PermissionDenied,
    Rejected,
    RpcError,
    Stale,
    TooManyCredentials,
    Unauthenticated,
    Unavailable,
)
from ._headers import CredentialHeaders
from ._proto.credvault.v1 import credvault_pb2 as pb
from ._proto.credvault.v1 import credvault_pb2_grpc as pb_grpc
from ._state import Stats, retry_after

__all__ = [
    "AsyncClient",
    "BudgetSpent",
    "Client",
    "CredentialHeaders",
    "CredvaultError",
    "Deleted",
    "InvalidArgument",
    "NotFound",
    "Paused",
    "PermissionDenied",
    "Rejected",
    "Report",
    "RpcError",
    "Stale",
    "Stats",
    "Tls",
    "TooManyCredentials",
    "Unauthenticated",
    "Unavailable",
    "pb",
    "pb_grpc",
    "retry_after",
]
