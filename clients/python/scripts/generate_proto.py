"""Makes the gRPC stubs of credvault_client from the repository's proto/.

    python scripts/generate_proto.py          # rewrite src/credvault_client/_proto
    python scripts/generate_proto.py --check  # exit 1 if they differ from proto/

Needs grpcio-tools (it bundles protoc; no system protoc is used). The stubs are
kept in the package so that installing it needs neither.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGE = HERE.parent / "src" / "credvault_client" / "_proto"
PROTO_ROOT = HERE.parents[2] / "proto"
PROTO = "credvault/v1/credvault.proto"
FILES = ("credvault_pb2.py", "credvault_pb2.pyi", "credvault_pb2_grpc.py")


def generate(out: Path) -> None:
    """Runs protoc (from grpcio-tools) into `out`, with imports inside the package."""
    import grpc_tools
    from grpc_tools import protoc  # type: ignore[import-untyped]

    include = str(Path(grpc_tools.__file__).parent / "_proto")
    code = protoc.main(
        [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            str(PROTO_ROOT / PROTO),
        ]
    )
    if code != 0:
        raise SystemExit(f"protoc failed ({code})")
    grpc_file = out / "credvault" / "v1" / "credvault_pb2_grpc.py"
    text = grpc_file.read_text()
    text = text.replace(
        "from credvault.v1 import credvault_pb2",
        "from credvault_client._proto.credvault.v1 import credvault_pb2",
    )
    grpc_file.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        made = Path(tmp) / "credvault" / "v1"
        kept = PACKAGE / "credvault" / "v1"
        if args.check:
            stale = [f for f in FILES if not (kept / f).exists() or (kept / f).read_bytes() != (made / f).read_bytes()]
            if stale:
                print(
                    f"stubs out of date with {PROTO}: {', '.join(stale)}; run scripts/generate_proto.py",
                    file=sys.stderr,
                )
                return 1
            print("stubs match proto/")
            return 0
        kept.mkdir(parents=True, exist_ok=True)
        for f in FILES:
            (kept / f).write_bytes((made / f).read_bytes())
        for d in (PACKAGE, PACKAGE / "credvault", kept):
            init = d / "__init__.py"
            if not init.exists():
                init.write_text('"""Generated gRPC stubs of proto/ (scripts/generate_proto.py)."""\n')
    print(f"wrote {kept}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
