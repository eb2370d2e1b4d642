"""Every command and code snippet in README.md runs, as a newcomer would paste it.

```sh blocks: each command runs with bash from the repo root against the mesh that
`make run` started (in the background, on the README's default ports); ```js blocks run
under node with the Makefile's .tools/node_modules; ```yaml blocks must pass
`clawmesh config check`. Each command's output is checked for what it should show, not
just for exit code 0. New blocks are picked up by themselves; a command or language this
file has no check for fails, so it gets one.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from clawmesh.services.registry import NAMES as SERVICES
from clawmesh.shared.settings import MeshSettings
from tests.conftest import ROOT
from tests.readme_blocks import Block, fenced_blocks, shell_commands

pytestmark = pytest.mark.system

VENV_BIN = ROOT / ".venv" / "bin"
NODE_MODULES = ROOT / ".tools" / "node_modules"
DEFAULT_PORTS = {name: MeshSettings().server(name).port for name in SERVICES}
BANNER_END = "Ctrl-C stops the mesh"

# Commands the test does not run, with the reason. Keep this tiny.
NOT_RUN = {
    "make test": "runs lint and the whole test suite, this test included (it would recurse)",
}
# `make run` runs until Ctrl-C: the `mesh` fixture starts it in the background, waits for
# its banner, and stops it with SIGINT at the end (and checks it exits 0).
BACKGROUND = "make run"
# What an interactive command reads: one line, then EOF (Ctrl-D).
CHAT_LINE = "hello from the README test"
STDIN = {r"\bclawmesh\b.*\bchat\b": CHAT_LINE + "\n"}

BLOCKS = fenced_blocks((ROOT / "README.md").read_text(encoding="utf-8"))
SH_LANGS = {"sh", "bash", "shell", "console"}
KNOWN_LANGS = SH_LANGS | {"", "js", "javascript", "yaml", "yml"}


def blocks(*langs: str) -> list:
    return [pytest.param(b, id=b.id) for b in BLOCKS if b.lang in langs]


def newcomer_env(**extra: str) -> dict[str, str]:
    """A fresh shell's environment: no CLAWMESH_* settings, no outer make; the venv's
    bin/ on PATH (where `make setup` puts clawmesh and grpcurl)."""
    drop = ("CLAWMESH_", "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "PYTEST_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


# --- the mesh, as `make run` starts it -------------------------------------------------


class MakeRun:
    """`make run` in the background; its stdout collected line by line."""

    def __init__(self, tmp: Path) -> None:
        busy = [f"{n} :{p}" for n, p in DEFAULT_PORTS.items() if _port_in_use(p)]
        if busy:
            pytest.fail(f"README's default ports are in use ({', '.join(busy)}): stop what uses them")
        self.log = tmp / "make-run.stderr"
        # Only the database goes elsewhere, so runs don't share history.
        self.env = newcomer_env(CLAWMESH_MEMORY__DATA_DIR=str(tmp / "data"))
        with open(self.log, "wb") as stderr:
            self.proc = subprocess.Popen(
                ["make", "run"], cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=stderr, text=True, start_new_session=True,
            )
        self.lines: list[str] = []
        self.banner = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        self.stopped: tuple[int, str] | None = None

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            if BANNER_END in line:
                self.banner.set()
        self.banner.set()  # output ended: wake the waiter

    def output(self) -> str:
        return "".join(self.lines) + "\n--- stderr ---\n" + self.log.read_text(errors="replace")[-4000:]

    def wait_banner(self, timeout_s: float) -> str:
        if not self.banner.wait(timeout_s) or BANNER_END not in "".join(self.lines):
            self.stop()
            pytest.fail(f"`make run` printed no banner within {timeout_s:.0f}s:\n{self.output()}")
        return "".join(self.lines)

    def stop(self) -> tuple[int, str]:
        """SIGINT to `clawmesh up` (make's child, what Ctrl-C stops); make's exit code."""
        if self.stopped is None:
            if self.proc.poll() is None:
                up = _descendants_running(self.proc.pid, "clawmesh")
                for pid in up or [self.proc.pid]:
                    os.kill(pid, signal.SIGINT)
                try:
                    self.proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait()
            self.stopped = (self.proc.returncode, self.output())
        return self.stopped


def _port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _descendants_running(pid: int, word: str) -> list[int]:
    """The topmost descendants of ``pid`` whose command line contains ``word``."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    found = []
    for child in map(int, children):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        found += [child] if word in cmdline else _descendants_running(child, word)
    return found


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    run = MakeRun(tmp_path_factory.mktemp("readme"))
    banner = run.wait_banner(60)
    assert "every service is SERVING" in banner, banner
    for name, port in DEFAULT_PORTS.items():
        assert re.search(rf"\b{name}\s+127\.0\.0\.1:{port}\b", banner), (name, banner)
    yield run
    code, output = run.stop()
    assert code == 0, f"`make run` exited {code} on Ctrl-C:\n{output}"


# --- what each README command must show ----------------------------------------------


def _check_send(cmd: str, out: str) -> None:
    args = shlex.split(cmd)
    text = args[args.index("send") + 1]
    assert re.search(rf'^mock reply \d+: you said "{re.escape(text)}"', out, re.M), out


def _check_chat(cmd: str, out: str) -> None:
    assert re.search(rf'bot> mock reply \d+: you said "{re.escape(CHAT_LINE)}"', out), out


def _check_health(cmd: str, out: str) -> None:
    for name, port in DEFAULT_PORTS.items():
        assert re.search(rf"^{name}\s+127\.0\.0\.1:{port}\s+SERVING$", out, re.M), (name, out)


def _check_grpcurl_list(cmd: str, out: str) -> None:
    listed = set(out.split())
    assert {"clawmesh.ingest.v1.IngestService", "grpc.health.v1.Health"} <= listed, out
    assert any(s.startswith("grpc.reflection.") for s in listed), out


def _check_grpcurl_submit(cmd: str, out: str) -> None:
    args = shlex.split(cmd)
    sent = json.loads(args[args.index("-d") + 1])["message"]
    reply = json.loads(out)["reply"]
    assert re.match(rf'mock reply \d+: you said "{re.escape(sent["content"])}"', reply["content"]), out


def _check_grpcurl_health(cmd: str, out: str) -> None:
    assert json.loads(out) == {"status": "SERVING"}, out


def _check_grpcurl_explain(cmd: str, out: str) -> None:
    route = json.loads(out)["route"]  # make run has no rules file: the default route to the mock
    assert (route["route_name"], route["backend"]) == ("default", "mock"), out
    assert route["targets"][0]["backend"] == "mock" and route["reason"], out



def _check_keys_new(cmd: str, out: str) -> None:
    from clawmesh.shared.security import hash_key

    key = re.search(r"^key: (cmk_\S+)$", out, re.M)
    assert key, out
    assert f'hash: "{hash_key(key[1])}"' in out, out


def _check_keys_hash(cmd: str, out: str) -> None:
    from clawmesh.shared.security import hash_key

    key = shlex.split(cmd.split("|")[0])[-1]  # printf %s 'KEY' | clawmesh keys hash
    assert out.strip() == hash_key(key), out


def _check_certs(cmd: str, out: str) -> None:
    args = shlex.split(cmd)
    out_dir = Path(args[args.index("--out") + 1])
    for identity in ("ca", "client", *SERVICES):
        for name in ("tls.crt", "tls.key", "ca.crt"):
            assert (out_dir / identity / name).is_file(), (identity, name, out)
    assert f"in {out_dir}" in out, out


CHECKS: list[tuple[str, Callable[[str, str], None]]] = [
    (r"\bclawmesh\b.*\bsend\b", _check_send),
    (r"\bclawmesh\b.*\bchat\b", _check_chat),
    (r"\bclawmesh\b.*\bhealth\b", _check_health),
    (r"^(\.venv/bin/)?grpcurl\b.*\slist$", _check_grpcurl_list),
    (r"^(\.venv/bin/)?grpcurl\b.*\sclawmesh\.ingest\.v1\.IngestService/Submit$",
     _check_grpcurl_submit),
    (r"^(\.venv/bin/)?grpcurl\b.*\sgrpc\.health\.v1\.Health/Check$", _check_grpcurl_health),
    (r"^(\.venv/bin/)?grpcurl\b.*\sclawmesh\.routing\.v1\.RoutingService/Explain$",
     _check_grpcurl_explain),
    (r"\bclawmesh keys new\b", _check_keys_new),
    (r"\|\s*(\.venv/bin/)?clawmesh keys hash$", _check_keys_hash),
    (r"\bclawmesh certs --out\b", _check_certs),
]


def run_command(cmd: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    stdin = next((text for pattern, text in STDIN.items() if re.search(pattern, cmd)), "")
    return subprocess.run(
        ["bash", "-c", cmd], cwd=ROOT, env=env, input=stdin, capture_output=True, text=True,
        timeout=30,
    )


# --- the tests ------------------------------------------------------------------------


def test_readme_has_runnable_snippets_of_known_languages():
    langs = {b.lang for b in BLOCKS}
    assert langs <= KNOWN_LANGS, f"README blocks in languages this test cannot run: {langs - KNOWN_LANGS}"
    assert {"sh", "js", "yaml"} <= langs, langs
    commands = [c for b in BLOCKS if b.lang in SH_LANGS for c in shell_commands(b.text)]
    assert BACKGROUND in commands, commands
    assert set(NOT_RUN) <= set(commands), "NOT_RUN lists a command the README no longer has"


def test_shell_commands_are_split_as_bash_reads_them():
    text = (
        "make run     # starts it\n\n"
        "grpcurl -d '{\"a\": 1,\n  \"b\": \"x # y\"}' \\\n  host list  # trailing\n"
        "echo a\\#b 'it''s' # c\n"
    )
    assert shell_commands(text) == [
        "make run",
        "grpcurl -d '{\"a\": 1,\n  \"b\": \"x # y\"}'   host list",
        "echo a\\#b 'it''s'",
    ]
    assert [b.lang for b in fenced_blocks("x\n```sh\nls\n```\n```\ntree\n```\n")] == ["sh", ""]


def test_tools_the_readme_uses_are_installed():
    grpcurl = shutil.which("grpcurl", path=newcomer_env()["PATH"])
    assert grpcurl == str(VENV_BIN / "grpcurl"), f"no grpcurl in {VENV_BIN} (make setup): {grpcurl}"
    version = subprocess.run([grpcurl, "--version"], capture_output=True, text=True, timeout=10)
    assert version.returncode == 0 and "grpcurl v1.8.6" in version.stdout + version.stderr, version
    assert shutil.which("node"), "node is not installed"
    for package in ("@grpc/grpc-js", "@grpc/proto-loader"):
        assert (NODE_MODULES / package / "package.json").is_file(), f"{package} missing (make setup)"


@pytest.mark.parametrize("block", blocks(*SH_LANGS))
def test_sh_block(block: Block, mesh):
    env = newcomer_env()
    for cmd in shell_commands(block.text):
        if cmd in NOT_RUN or cmd == BACKGROUND:
            continue
        check = next((c for pattern, c in CHECKS if re.search(pattern, cmd, re.S)), None)
        assert check is not None, f"README line {block.line}: no output check for {cmd!r}; add one to CHECKS"
        done = run_command(cmd, env)
        assert done.returncode == 0, f"{cmd!r} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        check(cmd, done.stdout)


def run_node(source: str, tmp_path: Path, name: str) -> subprocess.CompletedProcess:
    script = tmp_path / f"{name}.js"
    script.write_text(source, encoding="utf-8")
    # From the repo root, as the README says (protos/ is the include dir); the packages
    # where `make setup` installs them.
    return subprocess.run(
        ["node", str(script)], cwd=ROOT, env=newcomer_env(NODE_PATH=str(NODE_MODULES)),
        capture_output=True, text=True, timeout=30,
    )


def _expected_reply(block: Block) -> str:
    content = re.search(r'content: "([^"]*)"', block.text)
    return rf'mock reply \d+: you said "{re.escape(content[1])}"' if content else r"mock reply \d+"


@pytest.mark.parametrize("block", blocks("js", "javascript"))
def test_js_block(block: Block, mesh, tmp_path):
    assert shutil.which("node"), "node is not installed"
    done = run_node(block.text, tmp_path, "readme")
    assert done.returncode == 0 and not done.stderr.strip(), done
    assert re.search(_expected_reply(block), done.stdout), done.stdout


@pytest.mark.parametrize("block", blocks("js", "javascript"))
def test_js_block_again_in_another_session(block: Block, mesh, tmp_path):
    """A newcomer runs the example, edits session_id, and runs it again."""
    assert shutil.which("node"), "node is not installed"
    sessions = re.findall(r'session_id: "([^"]*)"', block.text)
    if not sessions:
        pytest.skip("this snippet sets no session_id")
    first = run_node(block.text, tmp_path, "readme")
    assert first.returncode == 0, first
    other = block.text.replace(f'session_id: "{sessions[0]}"', f'session_id: "rerun-{uuid.uuid4().hex[:8]}"')
    again = run_node(other, tmp_path, "readme-rerun")
    assert again.returncode == 0 and not again.stderr.strip(), again
    assert re.search(_expected_reply(block), again.stdout), again.stdout


def _leaves(tree, prefix=()):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _leaves(value, (*prefix, key))
    elif isinstance(tree, list) and any(isinstance(item, dict) for item in tree):
        for index, value in enumerate(tree):  # entries with defaults filled in: compare what is written
            yield from _leaves(value, (*prefix, index))
    else:
        yield prefix, tree


POLICY_SECTIONS = {"backend", "dedup", "rate_limits", "admission"}
RULES_SECTIONS = {"routes", "default", "agents", "health"}


def _within(written, loaded) -> bool:
    """Everything ``written`` is in ``loaded`` (which also has the defaults filled in)."""
    if isinstance(written, dict):
        return isinstance(loaded, dict) and all(k in loaded and _within(v, loaded[k])
                                                for k, v in written.items())
    if isinstance(written, list):
        return (isinstance(loaded, list) and len(written) == len(loaded)
                and all(_within(w, v) for w, v in zip(written, loaded, strict=True)))
    return written == loaded


@pytest.mark.parametrize("block", blocks("yaml", "yml"))
def test_yaml_block(block: Block, tmp_path):
    config = tmp_path / "clawmesh.yaml"
    config.write_text(block.text, encoding="utf-8")
    tree = yaml.safe_load(block.text)
    if set(tree) <= POLICY_SECTIONS:  # an edge policy file, not a settings file
        from clawmesh.shared.policy import load_policy

        env = {**newcomer_env(), "CLAWMESH_INGEST__POLICY_FILE": str(config)}
        done = subprocess.run([str(VENV_BIN / "clawmesh"), "config", "check"], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"policy {config} OK" in done.stdout, done.stdout
        assert _within(tree, load_policy(config).model_dump())  # every value written is used
        return
    if set(tree) <= RULES_SECTIONS:  # a routing rules file: checked with a mock for each backend it names
        from clawmesh.services.routing.rules import RulesFile

        routes = [*tree.get("routes", []), *([tree["default"]] if "default" in tree else [])]
        names = sorted({t["backend"] for r in routes for part in ("primary", "fallbacks")
                        for t in r.get(part, [])})
        settings = tmp_path / "settings.yaml"
        settings.write_text(yaml.safe_dump({"provider": {"default_backend": names[0],
                                                         "backends": {n: {"kind": "mock"} for n in names}}}))
        env = {**newcomer_env(), "CLAWMESH_ROUTING__RULES_FILE": str(config)}
        done = subprocess.run([str(VENV_BIN / "clawmesh"), "--config", str(settings), "config", "check"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"rules {config} OK" in done.stdout, done.stdout
        assert _within(tree, RulesFile.model_validate(tree).model_dump())  # every value written is used
        return
    done = subprocess.run(
        [str(VENV_BIN / "clawmesh"), "--config", str(config), "config", "check", "--show"],
        cwd=tmp_path, env=newcomer_env(), capture_output=True, text=True, timeout=30,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("settings OK\n"), done.stdout
    shown = json.loads(done.stdout.removeprefix("settings OK\n"))
    for path, value in _leaves(yaml.safe_load(block.text)):
        actual = shown
        for key in path:
            actual = actual[key]
        assert actual == value, (path, actual, value)


def test_make_run_stops_cleanly_on_ctrl_c(mesh):
    # Last in this module: stops the mesh the other tests used.
    started = time.monotonic()
    code, output = mesh.stop()
    assert code == 0, f"`make run` exited {code} on Ctrl-C:\n{output}"
    assert "stopped." in output and "unclean" not in output, output
    assert time.monotonic() - started < 30
