"""`clawmesh up`: the whole mesh on localhost with embedded defaults."""

from __future__ import annotations

import asyncio
import signal
import sys

from clawmesh.launcher.mesh import START_ORDER, MeshError, MeshProcesses, child_env
from clawmesh.shared.security import Security


async def run_up(env: dict[str, str]) -> int:
    env = child_env(env)
    env.setdefault("CLAWMESH_LOG_FORMAT", "text")
    mesh = MeshProcesses(env)
    # Handlers first: a Ctrl-C that arrives while starting (or right after the
    # banner) must stop the mesh, not be lost.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print("starting ClawMesh: " + ", ".join(START_ORDER) + " ...", file=sys.stderr)
    try:
        took = await mesh.start()
    except MeshError as exc:
        print(f"clawmesh up: {exc}", file=sys.stderr)
        return 1
    s = mesh.settings
    print(f"\nClawMesh is up ({took:.2f}s); every service is SERVING:")
    for name in START_ORDER:
        print(f"  {name:<9} {mesh.target(name)}")
    security = Security(s.security)
    holes = [*security.insecure(edge=True), *security.insecure(edge=False)]
    if holes:  # loudly: the defaults are for a laptop, not for a network
        print("\n!! INSECURE DEV MODE (README: Security) !!" + "".join(f"\n  - {h}" for h in holes))
    print(
        f"\nmemory data: {s.memory.data_dir.resolve()}\n"
        "\nTalk to it:\n"
        "  clawmesh chat                         (interactive)\n"
        '  clawmesh send "hello" --session demo\n'
        f"  grpcurl -plaintext -d '{{\"message\":{{\"session_id\":\"demo\",\"channel\":\"cli\","
        f"\"sender\":\"me\",\"content\":\"hi\"}}}}' {mesh.target('ingest')} "
        "clawmesh.ingest.v1.IngestService/Submit\n"
        "\nCtrl-C stops the mesh.",
        flush=True,
    )
    code = 0
    while not stop.is_set():
        crashed = mesh.exited()
        if crashed:
            print(f"clawmesh up: service(s) exited unexpectedly: {crashed}", file=sys.stderr)
            code = 1
            break
        try:
            await asyncio.wait_for(stop.wait(), timeout=0.5)
        except TimeoutError:
            pass
    # Edge first, one at a time: each service drains its in-flight calls while the
    # services it depends on are still up (see MeshProcesses.stop).
    print(
        "\nstopping ClawMesh: " + ", ".join(reversed(START_ORDER))
        + " (each drains its in-flight requests, then the next) ...",
        file=sys.stderr, flush=True,
    )
    codes = await mesh.stop()
    bad = {n: c for n, c in codes.items() if c != 0}
    if bad and code == 0:
        print(f"clawmesh up: unclean exits: {bad}", file=sys.stderr)
        code = 1
    print("stopped.", file=sys.stderr)
    return code
