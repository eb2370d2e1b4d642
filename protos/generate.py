"""Generate the `clawmesh` stub package from protos/ (used by `make protos` and the tests).

Usage: python protos/generate.py [OUT_DIR]   (default: protos/, next to the .proto files)

The generated package is `clawmesh.<service>.v1` with `*_pb2.py`, `*_pb2.pyi`,
`*_pb2_grpc.py` and `*_pb2_grpc.pyi`. Never edit the output by hand.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def proto_files() -> list[Path]:
    return sorted(PROTO_ROOT.glob("clawmesh/**/*.proto"))


def generate(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    # protoc plugins (protoc-gen-mypy_grpc) live beside this interpreter.
    bin_dir = str(Path(sys.executable).parent)
    os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    well_known = Path(protoc.__file__).parent / "_proto"
    files = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for package_dir in {out_dir / Path(f).parent for f in files} | {out_dir / "clawmesh"}:
        d = package_dir
        while d != out_dir:
            (d / "__init__.py").touch()
            d = d.parent


def clean(out_dir: Path) -> None:
    for suffix in GENERATED_SUFFIXES:
        for f in (out_dir / "clawmesh").glob(f"**/*{suffix}"):
            f.unlink()


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else PROTO_ROOT
    if target == PROTO_ROOT:
        clean(target)
    generate(target)
    print(f"generated stubs for {len(proto_files())} protos into {target / 'clawmesh'}")
    shutil.rmtree(target / "clawmesh" / "__pycache__", ignore_errors=True)
