"""The package itself: its stubs match proto/, and its types read cleanly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import credvault_client as cv

HERE = Path(__file__).resolve().parent


def test_the_stubs_match_the_proto() -> None:
    out = subprocess.run(
        [sys.executable, str(HERE.parent / "scripts" / "generate_proto.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr


def test_it_is_typed_and_redacts() -> None:
    assert (Path(cv.__file__).parent / "py.typed").exists()
    h = cv.CredentialHeaders("cred_1", "acme", 3, "https://x", [("Authorization", "Token s3cret")], None)
    assert "s3cret" not in repr(h) and "s3cret" not in str(h)
    target: dict[str, str] = {}
    h.apply(target)
    assert target == {"Authorization": "Token s3cret"}


def test_retry_after_reads_seconds_and_dates() -> None:
    import time
    from email.utils import formatdate

    assert cv.retry_after({"retry-after": "30"}) == 30.0
    assert cv.retry_after({}) is None
    assert cv.retry_after({"retry-after": "soon"}) is None
    later = cv.retry_after({"retry-after": formatdate(time.time() + 90, usegmt=True)})
    assert later is not None and 85 < later <= 90
