"""The image, as far as a machine without a Docker engine can check it: the Dockerfile's
promises, a build context that holds what the build copies (and builds a working wheel), and
`make image` failing clearly where no engine runs."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from tests.conftest import ROOT

DOCKERFILE = (ROOT / "Dockerfile").read_text()
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def instructions(text: str = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    logical, out = "", []
    for line in text.splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        logical += line.rstrip().removesuffix("\\") + (" " if line.rstrip().endswith("\\") else "")
        if not line.rstrip().endswith("\\"):
            word, _, rest = logical.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            logical = ""
    return out


def stages() -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = []
    for ins in instructions():
        if ins[0] == "FROM":
            out.append([])
        out[-1].append(ins)
    return out


def test_two_stages_on_slim_python_311():
    build, final = stages()
    assert re.fullmatch(r"python:3\.11-slim(-\w+)? AS build", build[0][1]), build[0]
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", final[0][1]), final[0]
    assert ("RUN", "pip wheel --wheel-dir /wheels .") in build


def test_the_final_stage_runs_clawmesh_serve_as_a_non_root_user():
    final = stages()[-1]
    last = {word: args for word, args in final}  # the last of each instruction counts
    assert last["USER"] == "10001:10001"  # numeric: runAsNonRoot can verify it
    assert last["STOPSIGNAL"] == "SIGTERM"
    assert last["ENTRYPOINT"] == '["clawmesh", "serve"]'
    assert "CMD" not in last  # the service is the argument: `docker run IMAGE routing`


def test_the_final_stage_has_no_compiler_wheels_or_caches():
    final = stages()[-1]
    text = " ".join(args for _, args in final)
    assert not re.search(r"\b(gcc|g\+\+|build-essential|python3-dev|apt-get)\b", text), text
    copied = [args for word, args in final if word in ("COPY", "ADD")]
    assert not copied, "the wheels are bind-mounted, not copied into a layer"
    (install,) = [args for word, args in final if word == "RUN" and "pip install" in args]
    assert "--mount=type=bind,from=build,source=/wheels" in install and "--no-index" in install
    assert "PIP_NO_CACHE_DIR=1" in " ".join(args for word, args in final if word == "ENV")


def dockerignore_rules() -> list[tuple[bool, re.Pattern]]:
    """(include?, regex) per line of .dockerignore; the last rule that matches a path wins."""
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        pattern = re.escape(line.lstrip("!")).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*")
        rules.append((include, re.compile(pattern)))
    return rules


def in_context(path: str, rules) -> bool:
    """Docker's rule: a pattern matching a path or one of its parent directories applies."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    keep = True
    for include, regex in rules:
        if any(regex.fullmatch(p) for p in prefixes):
            keep = include
    return keep


def context_files() -> list[str]:
    rules = dockerignore_rules()
    files = []
    for top in sorted(ROOT.iterdir()):
        if not in_context(top.name, rules) and not any(
                include and regex.pattern.startswith(re.escape(top.name)) for include, regex in rules):
            continue
        paths = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        files += [rel for p in paths if in_context(rel := p.relative_to(ROOT).as_posix(), rules)]
    return files


def test_the_context_is_what_the_build_copies():
    build = stages()[0]
    sources = [src for word, args in build if word == "COPY" for src in args.split()[:-1]]
    rules = dockerignore_rules()
    for src in sources:
        assert (ROOT / src).exists() and in_context(src, rules), src
    for kept_out in (".git", ".venv", ".tools", "tests", "bench", "data", "k8s", "Dockerfile",
                     "services/__pycache__/x.pyc", "shared/rpc/__pycache__/server.cpython-311.pyc"):
        assert not in_context(kept_out, rules), kept_out
    # Every file in the context lies under something the build copies.
    files = context_files()
    assert files and all(any(f == s or f.startswith(s.rstrip("/") + "/") for s in sources) for f in files)


def test_the_context_builds_a_working_wheel(tmp_path):
    """What `pip wheel .` in the build stage makes from exactly the context (build isolation
    as there; the dependencies' own wheels are PyPI's), checked for the modules and the
    `clawmesh` command the image runs."""
    context = tmp_path / "context"
    for rel in context_files():
        (context / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, context / rel)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
         "--wheel-dir", str(tmp_path / "wheels"), str(context)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = (tmp_path / "wheels").glob(f"clawmesh-{VERSION}-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in ("clawmesh/launcher/cli.py", "clawmesh/launcher/runner.py", "clawmesh/shared/prometheus.py",
                   "clawmesh/services/registry.py", "clawmesh/ingest/v1/ingest_pb2.py"):
        assert module in names, module
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "clawmesh = clawmesh.launcher.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


# --- make image -----------------------------------------------------------------------


def make_image(docker: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    return subprocess.run(["make", "-s", "image", f"DOCKER={docker}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def fake_docker(tmp_path: Path, engine: bool) -> tuple[Path, Path]:
    """A `docker` that has an engine or not, and records what it is asked to do."""
    log = tmp_path / "docker.log"
    script = tmp_path / "docker"
    script.write_text(f"#!/bin/sh\necho \"$*\" >> {log}\n"
                      f"[ \"$1\" = info ] && exit {0 if engine else 1}\nexit 0\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script, log


def test_make_image_without_docker_fails_saying_so(tmp_path):
    done = make_image(str(tmp_path / "no-such-docker"))
    assert done.returncode != 0
    assert "make image: no" in done.stderr and "install Docker" in done.stderr, done.stderr


def test_make_image_without_an_engine_fails_saying_so(tmp_path):
    docker, log = fake_docker(tmp_path, engine=False)
    done = make_image(str(docker))
    assert done.returncode != 0
    assert "no Docker engine is reachable" in done.stderr, done.stderr
    assert log.read_text().split("\n")[:-1] == ["info"]  # nothing was built


def test_make_image_builds_the_version_tag_where_an_engine_runs(tmp_path):
    docker, log = fake_docker(tmp_path, engine=True)
    done = make_image(str(docker))
    assert done.returncode == 0, done.stderr
    assert log.read_text().split("\n")[:-1] == ["info", f"build -t clawmesh:{VERSION} ."]
