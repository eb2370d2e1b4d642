"""The committed stub package matches protos/, and every contract lints clean."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT

SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def test_committed_stubs_are_what_protos_generate(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "protos" / "generate.py"), str(tmp_path)],
                   check=True, capture_output=True)
    fresh = {p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.name.endswith(SUFFIXES)}
    committed = {p.relative_to(ROOT / "protos") for p in (ROOT / "protos").rglob("*")
                 if p.name.endswith(SUFFIXES)}
    assert fresh == committed, "stub files added or removed: run `make protos`"
    stale = [str(p) for p in sorted(fresh)
             if (tmp_path / p).read_bytes() != (ROOT / "protos" / p).read_bytes()]
    assert not stale, f"stale stubs (run `make protos`): {stale}"


def test_every_proto_has_its_stubs_importable():
    import importlib

    for proto in (ROOT / "protos").rglob("*.proto"):
        module = str(proto.relative_to(ROOT / "protos").with_suffix("")).replace("/", ".")
        importlib.import_module(module + "_pb2")
        importlib.import_module(module + "_pb2_grpc")


def test_buf_lint_is_clean():
    buf = ROOT / ".tools" / "node_modules" / ".bin" / "buf"
    if not buf.exists():
        buf = shutil.which("buf")
    if buf is None:
        pytest.fail("buf is not installed: run `make setup` (installs @bufbuild/buf from npm)")
    result = subprocess.run([str(buf), "lint"], cwd=ROOT / "protos", capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_installed_import_names_all_live_under_clawmesh():
    """pip puts one top-level name in site-packages: nothing generic like `services`."""
    from importlib import metadata

    dist = metadata.distribution("clawmesh")
    assert dist.read_text("top_level.txt").split() == ["clawmesh"]
    import clawmesh.launcher.cli
    import clawmesh.loadtest.cli
    import clawmesh.services.registry
    import clawmesh.shared.rpc.server

    assert clawmesh.services.registry.__file__.startswith(str(ROOT / "services"))
    assert clawmesh.launcher.cli.__file__.startswith(str(ROOT / "launcher"))
    for generic in ("services", "shared", "loadtest", "launcher"):
        found = importlib.util.find_spec(generic)
        assert found is None or not str(found.origin or "").startswith(sys.prefix), generic
