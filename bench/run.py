"""`make bench`: what the mesh costs per message, against the physical limit, in one run.

    python -m bench.run [--seconds 5] [--concurrency 32] [--out bench]

Rows, all measured with the same lean client (bench/lean_client.py, a separate
process) unless stated, all on 127.0.0.1:

* bare echo: loadtest/echo_server.py in its own process — the physical limit;
* e2e through ingest, the mesh as five processes: Submit, SubmitStream,
  Converse, and Submit open-loop at half the max Submit rate — once with
  ``internal_transport=unary`` and once with ``stream`` (the mesh is restarted);
* the in-process bound: the five cores in one process, no gRPC
  (``clawmesh.launcher.inprocess.direct_mesh``), in a child process of its own;
* the ``clawmesh load`` engine against the echo server, for its client CPU per
  call next to the lean client's; h2load (a C client) for echo and Submit;
* overload: Submit open loop at 3× the max Submit rate (stream hops, default edge
  policy), 2 s deadline per call — goodput, refusals, admitted latency;
* the edge gate on vs off: one mesh (stream hops) with several ingest processes in
  front of it, each with its own policy file, Submit alternated round by round;
* tracing off vs on (default sampling) vs on for every trace: three meshes (stream hops)
  side by side, each exporting its spans to its own metrics process, Submit alternated
  round by round (``--tracing-only`` runs just this section);
* the memory backends, SQLite and Redis, store layer and over gRPC
  (``bench/memory_bench.py``, also runnable alone; ``--memory-rounds 0`` skips it).

For every row, CPU µs per message of each process comes from /proc/<pid>/stat
over the measured window. Writes ``<out>/RESULTS.md`` and ``<out>/results.json``;
every claim in them is computed from this run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import memory_bench
from clawmesh.launcher.mesh import START_ORDER, MeshProcesses, child_env, health_status
from clawmesh.services.registry import NAMES as SERVICES

ROOT = Path(__file__).resolve().parent.parent
LEAN = Path(__file__).resolve().parent / "lean_client.py"
ECHO_PROTO = "protos/clawmesh/testing/v1/echo.proto"
TICKS = os.sysconf("SC_CLK_TCK")
TRANSPORTS = ("unary", "stream")
MESH = ("ingest", "routing", "provider", "memory", "metrics")  # the five mesh processes, edge first
assert set(MESH) == set(START_ORDER)

# The goals of the issue "half the CPU per message".
GOAL_STREAM_VS_UNARY = 2.0
GOAL_ECHOES = 6.0
GOAL_P99_MS = 10.0
GOAL_CONVERSE = 1.2
# The goals of the issue "the edge: rate limits, dedup, admission".
OVERLOAD_TRANSPORT = "stream"
GOAL_GOODPUT = 0.9          # OK replies/s under 3x overload ÷ the measured capacity
REFUSAL_FAST_MS = 100.0     # a refusal should be this quick ...
GOAL_REFUSED_FAST = 0.9     # ... and RESOURCE_EXHAUSTED, for this share of the failures
GOAL_ADMITTED_P99 = 2.0     # admitted p99 under overload ÷ unloaded p99
GOAL_GATE = 0.85            # Submit/s, edge gate on ÷ off (in-process backends)
# A rate limit that never refuses: the limiter's cost without its refusals.
NEVER_REFUSING = {"rules": [{"match": {"tenant": "*"},
                             "limits": [{"name": "big", "rate": 1000000, "burst": 1000000}]}]}
POLICY_OFF = {"dedup": {"enforce": False}, "admission": {"enforce": False}}
# The goal of the issue "tracing": Submit/s with tracing on (default sampling) ÷ off.
GOAL_TRACING = 0.85
# Mesh settings per variant: the chains' optional parts (tracing, retries, breakers) all
# off, all on as shipped (the mesh-hop breakers are opt-in: turned on here to price them),
# and all on with every trace recorded.
CHAIN_OFF = {"CLAWMESH_TELEMETRY__TRACING_ENABLED": "false", "CLAWMESH_RETRY__ENABLED": "false",
             "CLAWMESH_BREAKER__ENABLED": "false"}
TRACING_VARIANTS = {
    "off": CHAIN_OFF,
    "on": {"CLAWMESH_BREAKER__ENABLED": "true"},
    "all": {"CLAWMESH_BREAKER__ENABLED": "true", "CLAWMESH_TELEMETRY__TRACE_SAMPLE_RATIO": "1"},
}


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port free now and not handed out before in this run (two meshes run side by side)."""
    import socket

    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_s(pid: int | str) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


class LeanClientError(RuntimeError):
    pass


async def lean(spec: dict, env: dict) -> dict:
    """Run bench/lean_client.py with ``spec``; its JSON result."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(LEAN), json.dumps(spec), env=env, cwd=str(ROOT),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    lines = out.decode().strip().splitlines()
    try:
        result = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        result = None
    if result is None or (proc.returncode != 0 and "missing" not in result):
        raise LeanClientError(f"lean client {spec['mode']} exited {proc.returncode}: "
                              f"{err.decode()[-2000:]}")
    return result


def make_row(name: str, kind: str, transport: str | None, res: dict, procs: tuple[str, ...],
             client: str = "lean") -> dict:
    """One table row from a lean client result; CPU in µs per OK message."""
    ok = res["ok"]
    per = (lambda s: s * 1e6 / ok) if ok else (lambda s: 0.0)
    cpu_us = {name_: per(res["cpu_s_by_pid"][name_]) for name_ in procs}
    row = {
        "name": name, "kind": kind, "transport": transport, "client": client,
        "concurrency": res["concurrency"], "ok": ok, "errors": res["errors"],
        "error_codes": res["error_codes"], "elapsed_s": res["elapsed_s"],
        "msgs_per_s": res["ok_per_s"],
        "calls_per_s": None if kind == "converse" else res["ok_per_s"],
        "p50_ms": res["p50_ms"], "p90_ms": res["p90_ms"], "p99_ms": res["p99_ms"],
        "max_ms": res["max_ms"], "cpu_us": cpu_us,
        "server_cpu_us": sum(cpu_us.values()),
        "client_cpu_us": per(res["cpu_s"]) if kind != "inprocess" else None,
    }
    # Share of the machine the measured processes used in the window (all CPUs = 100 %).
    total_cpu = sum(res["cpu_s_by_pid"].values()) + (res["cpu_s"] if kind != "inprocess" else 0.0)
    row["cpu_busy_pct"] = 100 * total_cpu / (res["elapsed_s"] * (os.cpu_count() or 1))
    for key in ("streams", "depth", "rate_target", "from_send"):
        if res.get(key):
            row[key] = res[key]
    return row


def h2load(url: str, frame: bytes, seconds: float, concurrency: int) -> dict | None:
    """Unary RPS from h2load (a C HTTP/2 client) sending one gRPC frame per request."""
    if shutil.which("h2load") is None:
        return None
    with tempfile.NamedTemporaryFile(suffix=".bin", delete=False) as f:
        f.write(frame)
    try:
        out = subprocess.run(
            ["h2load", "-D", str(max(1, round(seconds))), "-c", "4", "-m", str(max(1, concurrency // 4)),
             "-H", "content-type: application/grpc", "-H", "te: trailers", "-d", f.name, url],
            capture_output=True, text=True, timeout=seconds + 60,
        ).stdout
    finally:
        os.unlink(f.name)
    rps = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", out)
    if not rps:
        return None
    return {"rps": float(rps.group(1)), "succeeded": int(done.group(2)) if done else 0,
            "mean": mean.group(1) if mean else ""}


def grpc_frame(message) -> bytes:
    body = message.SerializeToString()
    return struct.pack(">BI", 0, len(body)) + body


async def wait_serving(target: str) -> None:
    for _ in range(400):
        if await health_status(target, timeout_s=0.5) == "SERVING":
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{target} not SERVING")


class Bench:
    def __init__(self, args, log) -> None:
        self.args = args
        self.log = log
        self.rows: list[dict] = []
        self.env_base = {k: v for k, v in os.environ.items() if not k.startswith("CLAWMESH_")}
        self.work = Path(tempfile.mkdtemp(prefix="clawmesh-bench-"))
        self.lean_env = child_env(self.env_base)

    def spec(self, mode: str, **extra) -> dict:
        a = self.args
        return {"mode": mode, "concurrency": a.concurrency, "seconds": a.seconds,
                "warmup": a.warmup, **extra}

    def report(self, row: dict) -> None:
        cpu = " ".join(f"{k} {v:.0f}" for k, v in row["cpu_us"].items())
        client = "" if row["client_cpu_us"] is None else f", client {row['client_cpu_us']:.0f}"
        self.log(f"    {row['msgs_per_s']:.0f} msgs/s  p50 {row['p50_ms']:.2f} ms  p99 {row['p99_ms']:.2f} ms"
                 f"  errors {row['errors']}  CPU µs/msg: {cpu}{client}")
        self.rows.append(row)

    async def echo_rows(self, results: dict) -> None:
        """The bare baseline, the clawmesh load engine's own cost, h2load on echo."""
        from clawmesh.loadtest.config import load_config
        from clawmesh.loadtest.parallel import execute
        from clawmesh.testing.v1 import echo_pb2

        port = free_port()
        echo = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "clawmesh.loadtest.echo_server", "--port", str(port),
            env=child_env(self.env_base), stderr=subprocess.DEVNULL)
        target = f"127.0.0.1:{port}"
        try:
            await wait_serving(target)
            self.log(f"echo baseline (bare grpc.aio, own process), {self.args.concurrency} callers ...")
            res = await lean(self.spec("echo", target=target, pids={"echo": echo.pid}), self.lean_env)
            row = make_row("echo (bare grpc.aio)", "echo", None, res, ("echo",))
            self.report(row)
            unit = row["cpu_us"]["echo"] + row["client_cpu_us"]
            results["bare_echo_us"] = {"server": row["cpu_us"]["echo"], "client": row["client_cpu_us"],
                                       "total": unit}

            self.log("clawmesh load engine against the same echo server ...")
            cfg = load_config(None, {
                "host": target, "proto": ECHO_PROTO, "call": "clawmesh.testing.v1.EchoService.Echo",
                "data": {"message": "hello world"}, "duration": f"{self.args.seconds}s",
                "concurrency": self.args.concurrency, "cpus": 1, "connections": 1, "rps": 0,
                "skipFirst": 0, "timeout": "20s", "insecure": True, "name": "engine",
                "duration-stop": "wait"})
            me, echo_before, t0 = cpu_s("self"), cpu_s(echo.pid), time.perf_counter()
            report = await execute(cfg)
            wall = time.perf_counter() - t0
            me, echo_cpu = cpu_s("self") - me, cpu_s(echo.pid) - echo_before
            ok = report["statusCodeDistribution"].get("OK", 0)
            lat = {p["percentage"]: p["latency"] / 1e6 for p in report.get("latencyDistribution") or []}
            engine = {"ok": ok, "errors": report["count"] - ok, "calls_per_s": report["rps"],
                      "p50_ms": lat.get(50, 0.0), "p99_ms": lat.get(99, 0.0), "wall_s": wall,
                      "client_cpu_us": me * 1e6 / ok if ok else 0.0,
                      "server_cpu_us": echo_cpu * 1e6 / ok if ok else 0.0}
            results["load_engine"] = {
                "engine": engine,
                "lean": {"calls_per_s": row["calls_per_s"], "p50_ms": row["p50_ms"], "p99_ms": row["p99_ms"],
                         "client_cpu_us": row["client_cpu_us"], "server_cpu_us": row["cpu_us"]["echo"]},
            }
            self.log(f"    engine {report['rps']:.0f} calls/s, client {engine['client_cpu_us']:.0f} µs/call "
                     f"(lean client: {row['client_cpu_us']:.0f} µs/call)")

            self.log("h2load (C client) on echo ...")
            results["h2load"] = {"echo": h2load(
                f"http://{target}/clawmesh.testing.v1.EchoService/Echo",
                grpc_frame(echo_pb2.EchoRequest(message="hello world")), self.args.seconds,
                self.args.concurrency)}
        finally:
            echo.terminate()
            await asyncio.wait_for(echo.wait(), 10)

    def mesh_env(self, data: str, transport: str = OVERLOAD_TRANSPORT, **extra: str) -> dict[str, str]:
        """Settings of a bench mesh: free ports, its own data dir, quiet logs, a zero-latency mock."""
        env = {f"CLAWMESH_{n.upper()}__PORT": str(free_port()) for n in SERVICES}
        env.update(CLAWMESH_MEMORY__DATA_DIR=str(self.work / f"data-{data}"), CLAWMESH_LOG_LEVEL="WARNING",
                   CLAWMESH_PROVIDER__MOCK_LATENCY_MS="0", CLAWMESH_INTERNAL_TRANSPORT=transport, **extra)
        return env

    async def start_mesh(self, label: str, env: dict[str, str], files: list,
                         services: tuple[str, ...] = START_ORDER) -> tuple[MeshProcesses, float]:
        """Start ``services`` with ``env``, their logs (WARNING and up) in a file appended to
        ``files`` (the caller closes them); the mesh and its cold-start time. A mesh that does
        not start is stopped and raises with the tail of its log."""
        path = self.work / f"mesh-{label}.stderr"
        files.append(path.open("wb"))
        mesh = MeshProcesses(child_env(self.env_base, env), stderr=files[-1], services=services)
        try:
            return mesh, await mesh.start()
        except Exception as exc:
            await mesh.stop(grace_s=1)  # whatever did start
            files[-1].flush()
            tail = path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"mesh {label} did not start: {exc}\n{tail}") from exc

    async def mesh_rows(self, transport: str, results: dict) -> None:
        from clawmesh.common.v1 import common_pb2
        from clawmesh.ingest.v1 import ingest_pb2

        self.log(f"mesh, internal_transport={transport}: cold start ...")
        files: list = []
        try:
            mesh, cold = await self.start_mesh(transport, self.mesh_env(transport, transport), files)
        except Exception:
            for f in files:
                f.close()
            raise
        try:
            pids = {n: p.pid for n, p in mesh.procs.items()}
            self.log(f"  every service SERVING after {cold:.2f}s")
            results["mesh"][transport] = {"cold_start_s": cold,
                                          "idle_rss_mb": {n: rss_mb(pid) for n, pid in pids.items()}}
            ingest = mesh.target("ingest")
            c = self.args.concurrency
            depth = min(8, c)
            streams = max(1, c // depth)
            plan = (("Submit", "submit", {}),
                    ("SubmitStream", "submit_stream", {}),
                    (f"Converse ({streams} stream{'s' if streams != 1 else ''} × {depth} in flight)",
                     "converse", {"depth": depth}))
            max_submit = 0.0
            for label, mode, extra in plan:
                self.log(f"  {label} [{transport}] ...")
                res = await lean(self.spec(mode, target=ingest, pids=pids, **extra), self.lean_env)
                row = make_row(f"e2e {label}", mode, transport, res, MESH)
                self.report(row)
                if mode == "submit":
                    max_submit = row["msgs_per_s"]
            half = max(1.0, round(max_submit / 2))
            self.log(f"  Submit open loop at {half:.0f}/s (half max) [{transport}] ...")
            res = await lean(self.spec("submit", target=ingest, pids=pids, rate=half), self.lean_env)
            half_row = make_row(f"e2e Submit open loop at {half:.0f}/s (half max)", "half_rate",
                                transport, res, MESH)
            self.report(half_row)
            if transport == OVERLOAD_TRANSPORT and self.args.overload_seconds > 0:
                results["overload"] = await self.overload(ingest, pids, max_submit, half_row)

            self.log(f"  h2load on Submit [{transport}] ...")
            results["h2load"][f"submit ({transport} hops)"] = h2load(
                f"http://{ingest}/clawmesh.ingest.v1.IngestService/Submit",
                grpc_frame(ingest_pb2.SubmitRequest(message=common_pb2.InboundMessage(
                    channel="bench", sender="h2load", session_id="h2load-1", content="hello world"))),
                self.args.seconds, c)
        finally:
            await mesh.stop(grace_s=2)
            for f in files:
                f.close()

    async def ab_rounds(self, results: dict) -> None:
        """Both meshes up side by side (idle when not measured); Submit alternated by round.

        A ratio of two rows measured a minute apart moves with the machine (±15 % seen
        here); the median of ratios of back-to-back runs does not.
        """
        meshes: dict[str, MeshProcesses] = {}
        files = []
        try:
            for transport in TRANSPORTS:
                meshes[transport], _ = await self.start_mesh(
                    f"ab-{transport}", self.mesh_env(f"ab-{transport}", transport), files)
            rounds = []
            for i in range(self.args.rounds):
                one = {}
                for transport, mesh in meshes.items():
                    self.log(f"  A/B round {i + 1}/{self.args.rounds}: Submit [{transport}] ...")
                    pids = {n: p.pid for n, p in mesh.procs.items()}
                    res = await lean(self.spec("submit", target=mesh.target("ingest"), pids=pids),
                                     self.lean_env)
                    row = make_row("A/B Submit", "ab", transport, res, MESH)
                    one[transport] = {"msgs_per_s": row["msgs_per_s"],
                                      "server_cpu_us": row["server_cpu_us"], "p99_ms": row["p99_ms"]}
                    self.log(f"    {row['msgs_per_s']:.0f}/s, {row['server_cpu_us']:.0f} µs per message")
                rounds.append(one)
            results["ab"] = rounds
        finally:
            for mesh in meshes.values():
                await mesh.stop(grace_s=2)
            for f in files:
                f.close()

    async def overload(self, ingest: str, pids: dict, capacity: float, unloaded: dict) -> dict:
        """Submit open loop at ``overload_factor`` × ``capacity``, a deadline on every call.

        The mesh is the one the rows above measured (default edge policy: no policy
        file — admission with a gradient limit, dedup, no rate limits).
        """
        a = self.args
        rate = max(1.0, round(a.overload_factor * capacity))
        self.log(f"  overload: Submit open loop at {rate:.0f}/s ({a.overload_factor:g}× max) for "
                 f"{a.overload_seconds:g}s, timeout {a.overload_timeout:g}s [{OVERLOAD_TRANSPORT}] ...")
        res = await lean(self.spec(
            "submit", target=ingest, pids=pids, rate=rate, seconds=a.overload_seconds,
            timeout_s=a.overload_timeout, within_ms=[REFUSAL_FAST_MS],
            # open loop for real: never wait for replies before the next scheduled call
            max_in_flight=int(rate * (a.overload_timeout + 1)) + 256), self.lean_env)
        window = res["open_loop"]["window_s"]
        ok, failures = res["ok"], res["errors"]
        refused = res["error_latency"].get("RESOURCE_EXHAUSTED") or {"count": 0, "within": {}}
        fast = refused["within"].get(f"{REFUSAL_FAST_MS:g}", 0)
        total_cpu = sum(res["cpu_s_by_pid"].values())
        out = {
            "transport": OVERLOAD_TRANSPORT, "policy": "default (no policy file)",
            "factor": a.overload_factor, "seconds": window, "timeout_s": a.overload_timeout,
            "capacity_per_s": capacity, "rate_target": rate,
            "offered_per_s": res["open_loop"]["offered_per_s"], "open_loop": res["open_loop"],
            "ok": ok, "failures": failures, "codes": {"OK": ok, **res["error_codes"]},
            # OK replies ÷ the time from the first scheduled call to the last reply (the mesh
            # works off its backlog after the schedule ends, at most one deadline more)
            "goodput_per_s": res["ok_per_s"], "elapsed_s": res["elapsed_s"],
            "goodput_ratio": res["ok_per_s"] / capacity if capacity else 0.0,
            # stricter: only the OK replies that arrived before the schedule ended
            "ok_in_window": res["open_loop"]["ok_in_window"],
            "goodput_in_window_ratio": (res["open_loop"]["ok_in_window"] / window / capacity
                                        if window and capacity else 0.0),
            "error_details": res.get("error_details") or {},
            "refused": refused["count"], "refused_fast": fast,
            "refused_share": refused["count"] / failures if failures else None,
            "refused_fast_share": fast / refused["count"] if refused["count"] else None,
            "refused_fast_share_of_failures": fast / failures if failures else None,
            "error_latency": res["error_latency"],
            "admitted": {"p50_ms": res["p50_ms"], "p90_ms": res["p90_ms"], "p99_ms": res["p99_ms"],
                         "max_ms": res["max_ms"], "from_send": res.get("from_send") or {}},
            "unloaded": {"row": unloaded["name"], "rate": unloaded["rate_target"],
                         "p50_ms": unloaded["p50_ms"], "p99_ms": unloaded["p99_ms"],
                         "from_send": unloaded.get("from_send") or {}},
            "server_cpu_us": total_cpu * 1e6 / ok if ok else None,
            "cpu_busy_pct": 100 * (total_cpu + res["cpu_s"]) / (res["elapsed_s"] * (os.cpu_count() or 1)),
        }
        codes = ", ".join(f"{k} {v}" for k, v in out["codes"].items())
        self.log(f"    offered {out['offered_per_s']:.0f}/s, goodput {out['goodput_per_s']:.0f}/s "
                 f"= {out['goodput_ratio']:.2f}× capacity; {codes}; admitted p99 "
                 f"{out['admitted']['from_send'].get('p99_ms', 0):.1f} ms from send")
        return out

    async def gate_rounds(self, results: dict) -> None:
        """Submit/s with the edge gate on vs off: one mesh, one ingest per policy, alternated.

        Routing, provider, memory and metrics are shared: only the ingest process in
        front differs, so the ratio is the gate's cost and nothing else. The order of
        the variants rotates each round so none always runs first or last.
        """
        import yaml

        base = self.mesh_env("gate")
        redis = None
        gate: dict = {"transport": OVERLOAD_TRANSPORT, "policies": {}, "rounds": []}
        policies: dict[str, dict | None] = {
            "on": None, "on_limit": {"rate_limits": NEVER_REFUSING}, "off": POLICY_OFF}
        if shutil.which("redis-server"):
            try:
                redis = await asyncio.to_thread(memory_bench.RedisProcess, self.work, False, "redis-gate")
                policies["on_limit_redis"] = {"backend": {"kind": "redis", "redis_url": redis.url},
                                              "rate_limits": NEVER_REFUSING}
            except RuntimeError as exc:
                gate["redis_missing"] = str(exc)
        else:
            gate["redis_missing"] = "redis-server not installed"
        # (what is measured, which ingest, lean client options)
        plan = [("on", "on", {}), ("on_limit", "on_limit", {}), ("off", "off", {}),
                ("off_no_ids", "off", {"no_message_id": True})]
        if "on_limit_redis" in policies:
            plan.insert(2, ("on_limit_redis", "on_limit_redis", {}))
        files = []
        meshes: dict[str, MeshProcesses] = {}
        try:
            for name, policy in policies.items():
                env = dict(base)
                if name != "on":  # "on" is the back mesh's own ingest: no policy file
                    env["CLAWMESH_INGEST__PORT"] = str(free_port())
                    path = self.work / f"policy-{name}.yaml"
                    path.write_text(yaml.safe_dump(policy, sort_keys=False))
                    env["CLAWMESH_INGEST__POLICY_FILE"] = str(path)
                gate["policies"][name] = policy
                meshes[name], _ = await self.start_mesh(
                    f"gate-{name}", env, files, START_ORDER if name == "on" else ("ingest",))
            back = {n: p.pid for n, p in meshes["on"].procs.items()}
            for i in range(self.args.gate_rounds):
                k = i % len(plan)
                one = {}
                for key, ingest_name, extra in plan[k:] + plan[:k]:
                    mesh = meshes[ingest_name]
                    pids = {**back, "ingest": mesh.procs["ingest"].pid}
                    if key == "on_limit_redis":
                        pids["redis"] = redis.proc.pid
                    self.log(f"  gate round {i + 1}/{self.args.gate_rounds}: Submit [{key}] ...")
                    res = await lean(self.spec("submit", target=mesh.target("ingest"), pids=pids, **extra),
                                     self.lean_env)
                    one[key] = gate_point(res)
                    self.log(f"    {res['ok_per_s']:.0f}/s, {one[key]['server_cpu_us']:.0f} µs per message "
                             f"(ingest {one[key]['ingest_cpu_us']:.0f}), errors {res['errors']}")
                gate["rounds"].append(one)
        finally:
            for name in reversed(list(meshes)):  # the extra ingests first, the back mesh last
                await meshes[name].stop(grace_s=2)
            for f in files:
                f.close()
            if redis is not None:
                await asyncio.to_thread(redis.stop)
        gate["measured"] = [key for key, _, _ in plan]
        gate["ratios"] = gate_ratios(gate["rounds"])
        results["gate"] = gate

    async def tracing_rounds(self, results: dict) -> None:
        """Submit/s with tracing off, on (default sampling) and on for every trace, alternated.

        Three whole meshes (stream hops) side by side, idle when not measured, differing only
        in their tracing settings; each exports its spans to its own metrics process, whose CPU
        is counted. The order of the variants rotates each round.
        """
        from clawmesh.shared.settings import TelemetrySettings

        out: dict = {"transport": OVERLOAD_TRANSPORT, "variants": list(TRACING_VARIANTS),
                     "default_ratio": TelemetrySettings().trace_sample_ratio, "rounds": []}
        meshes: dict[str, MeshProcesses] = {}
        files = []
        try:
            for name, variant in TRACING_VARIANTS.items():
                meshes[name], _ = await self.start_mesh(
                    f"tracing-{name}", self.mesh_env(f"tracing-{name}", **variant), files)
            names = list(meshes)
            for i in range(self.args.tracing_rounds):
                k = i % len(names)
                one = {}
                for name in names[k:] + names[:k]:
                    mesh = meshes[name]
                    self.log(f"  tracing round {i + 1}/{self.args.tracing_rounds}: Submit [{name}] ...")
                    pids = {n: p.pid for n, p in mesh.procs.items()}
                    res = await lean(self.spec("submit", target=mesh.target("ingest"), pids=pids),
                                     self.lean_env)
                    ok = res["ok"]
                    one[name] = {"msgs_per_s": res["ok_per_s"], "p50_ms": res["p50_ms"],
                                 "p99_ms": res["p99_ms"], "ok": ok, "errors": res["errors"],
                                 "error_codes": res["error_codes"],
                                 "cpu_us": {n: c * 1e6 / ok if ok else 0.0
                                            for n, c in res["cpu_s_by_pid"].items()}}
                    one[name]["server_cpu_us"] = sum(one[name]["cpu_us"].values())
                    self.log(f"    {res['ok_per_s']:.0f}/s, {one[name]['server_cpu_us']:.0f} µs per "
                             f"message, errors {res['errors']}")
                out["rounds"].append(one)
        finally:
            for mesh in meshes.values():
                await mesh.stop(grace_s=2)
            for f in files:
                f.close()
        out["ratios"] = {}
        for key in ("on", "all"):
            each = [x[key]["msgs_per_s"] / x["off"]["msgs_per_s"] for x in out["rounds"]
                    if x["off"]["msgs_per_s"]]
            if each:
                out["ratios"][key] = {"median": statistics.median(each), "rounds": each}
        results["tracing"] = out

    async def inprocess_row(self, results: dict) -> None:
        self.log("in-process bound: the five cores in one process, no gRPC ...")
        env = child_env(self.env_base, {
            "CLAWMESH_MEMORY__DATA_DIR": str(self.work / "data-inprocess"),
            "CLAWMESH_LOG_LEVEL": "WARNING", "CLAWMESH_PROVIDER__MOCK_LATENCY_MS": "0",
            "CLAWMESH_TELEMETRY__ENABLED": "false"})
        res = await lean(self.spec("inprocess"), env)
        if "missing" in res:
            self.log(f"    not measured: {res['missing']}")
            results["inprocess_missing"] = res["missing"]
            return
        # Its own CPU is the whole mesh: attribute it to the one process.
        res["cpu_s_by_pid"] = {"inprocess": res["cpu_s"]}
        self.report(make_row("in-process bound (5 cores, 1 process, no gRPC)", "inprocess", None, res,
                             ("inprocess",)))


def gate_point(res: dict) -> dict:
    """One gate measurement from a lean client result; CPU in µs per OK message."""
    ok = res["ok"]
    cpu = res["cpu_s_by_pid"]

    def per(seconds: float) -> float:
        return seconds * 1e6 / ok if ok else 0.0

    return {"msgs_per_s": res["ok_per_s"], "p50_ms": res["p50_ms"], "p99_ms": res["p99_ms"], "ok": ok,
            "errors": res["errors"], "error_codes": res["error_codes"],
            "server_cpu_us": per(sum(cpu.values())), "ingest_cpu_us": per(cpu["ingest"]),
            "redis_cpu_us": per(cpu["redis"]) if "redis" in cpu else None}


def gate_ratios(rounds: list[dict]) -> dict:
    """Per variant: its Submit/s ÷ the off policy's (and ÷ no dedup work), each round, and the median."""
    out = {}
    for base in ("off", "off_no_ids"):
        for key in ("on", "on_limit", "on_limit_redis", "off"):
            if key == base:
                continue
            each = [x[key]["msgs_per_s"] / x[base]["msgs_per_s"] for x in rounds
                    if key in x and base in x and x[base]["msgs_per_s"]]
            if each:
                out[f"{key}/{base}"] = {"median": statistics.median(each), "rounds": each}
    return out


def overload_goals(o: dict) -> list[dict]:
    cap = (f"{o['goodput_per_s']:.0f} OK/s vs capacity {o['capacity_per_s']:.0f}/s (the max-rate Submit "
           f"row, {o['transport']} hops) = {o['goodput_ratio']:.2f}×, offered {o['offered_per_s']:.0f}/s "
           f"({o['factor']:g}× for {o['seconds']:g} s, {o['timeout_s']:g} s deadline)")
    out = [{"goal": f"overload ({o['factor']:g}× max, default policy): goodput ≥ {GOAL_GOODPUT:g}× capacity",
            "measured": cap, "value": o["goodput_ratio"], "met": o["goodput_ratio"] >= GOAL_GOODPUT}]
    codes = ", ".join(f"{k} {v}" for k, v in o["codes"].items())
    if o["failures"]:
        share = o["refused_fast_share_of_failures"]
        lat = o["error_latency"]
        fast_any = sum(e["within"].get(f"{REFUSAL_FAST_MS:g}", 0) for e in lat.values())
        measured = (f"{share:.0%} of {o['failures']} failures were RESOURCE_EXHAUSTED within "
                    f"{REFUSAL_FAST_MS:g} ms ({o['refused_share']:.0%} RESOURCE_EXHAUSTED; of those "
                    f"{(o['refused_fast_share'] or 0):.0%} within {REFUSAL_FAST_MS:g} ms); failures of any "
                    f"code within {REFUSAL_FAST_MS:g} ms: {fast_any / o['failures']:.0%}; codes: {codes}")
        met = share >= GOAL_REFUSED_FAST
    else:
        share, met = None, None
        measured = f"no failures to judge (codes: {codes})"
    out.append({"goal": f"overload: ≥ {GOAL_REFUSED_FAST:.0%} of refusals are RESOURCE_EXHAUSTED within "
                        f"{REFUSAL_FAST_MS:g} ms", "measured": measured, "value": share, "met": met})
    adm, unl = o["admitted"], o["unloaded"]
    adm_p99 = adm["from_send"].get("p99_ms", adm["p99_ms"])
    unl_p99 = unl["from_send"].get("p99_ms", unl["p99_ms"])
    ratio = adm_p99 / unl_p99 if unl_p99 else 0.0
    measured = (f"from the actual send: {adm_p99:.1f} ms vs {unl_p99:.2f} ms at {unl['rate']:.0f}/s "
                f"(half max) = {ratio:.1f}×; from the schedule: {adm['p99_ms']:.1f} ms vs "
                f"{unl['p99_ms']:.2f} ms (client started calls late by p99 "
                f"{o['open_loop']['late_p99_ms']:.1f} ms)")
    if not o["ok"]:
        measured, ratio = "no call succeeded", None
    out.append({"goal": f"overload: admitted p99 ≤ {GOAL_ADMITTED_P99:g}× unloaded p99",
                "measured": measured, "value": ratio,
                "met": None if ratio is None else ratio <= GOAL_ADMITTED_P99})
    return out


def gate_goal(g: dict) -> dict:
    ratios = g["ratios"]
    inproc = [k for k in ("on/off", "on_limit/off") if k in ratios]
    goal = f"edge gate on ÷ off ≥ {GOAL_GATE:g}× (Submit/s, in-process backends)"
    if not inproc:
        return {"goal": goal, "measured": "not measured", "value": None, "met": None}
    value = min(ratios[k]["median"] for k in inproc)

    def fig(key: str) -> str:
        x = ratios.get(key)
        return "—" if x is None else f"{x['median']:.2f}×"

    measured = (f"median of {len(g['rounds'])} alternated rounds: default policy {fig('on/off')}, "
                f"+ never-refusing rate limit {fig('on_limit/off')}; on Redis (figure) "
                f"{fig('on_limit_redis/off')}. Against no dedup work (off policy, messages "
                f"without ids): default {fig('on/off_no_ids')}, + limit {fig('on_limit/off_no_ids')}, "
                f"off (shadow dedup) {fig('off/off_no_ids')}")
    if g.get("redis_missing"):
        measured += f"; Redis not measured: {g['redis_missing']}"
    return {"goal": goal, "measured": measured, "value": value, "met": value >= GOAL_GATE}


def tracing_goal(t: dict) -> dict:
    goal = (f"tracing on (default sampling, ratio {t['default_ratio']:g}) + retries + breakers ÷ all off "
            f"≥ {GOAL_TRACING:g}× (Submit/s, stream hops)")
    on, every = t["ratios"].get("on"), t["ratios"].get("all")
    if on is None:
        return {"goal": goal, "measured": "not measured", "value": None, "met": None}
    measured = (f"median of {len(on['rounds'])} alternated rounds {on['median']:.2f}× "
                f"(rounds: {', '.join(f'{x:.2f}' for x in on['rounds'])}); every trace recorded: "
                f"{_ratio(every)}")
    return {"goal": goal, "measured": measured, "value": on["median"], "met": on["median"] >= GOAL_TRACING}


TRACING_LABELS = {
    "off": "off (tracing, retries and breakers off)",
    "on": "on: tracing at default sampling (parent-based, ratio {ratio:g}), retries, breakers",
    "all": "on, every trace recorded (ratio 1), retries, breakers",
}


def render_tracing(t: dict, concurrency: int) -> list[str]:
    rounds = t["rounds"]
    lines = [
        "", f"## Tracing off vs on ({t['transport']} hops)", "",
        "Three meshes side by side, differing only in the optional parts of their interceptor chains "
        "(tracing, retries, circuit breakers: see the variants), each exporting its spans "
        "(OTLP/gRPC, batch processor) to its own metrics process; Submit at "
        f"{concurrency} callers, closed loop, each variant in turn, the order rotated every round. Ratios "
        "are medians over rounds of Submit/s ÷ the same round's off variant. A message makes 9 spans "
        "(ingest's server span, and a client + server span per internal call: routing, history, "
        "provider, append); an unsampled one still gets ids and propagates them. CPU µs per message "
        "are medians; Σ server includes the metrics process, which receives the spans.",
        "",
        "| variant | " + " | ".join(f"round {i} msgs/s" for i in range(1, len(rounds) + 1))
        + " | ÷ off (median) | p99 ms | Σ server µs/msg | ingest | routing | metrics | errors |",
        "|---|" + "---:|" * (len(rounds) + 7),
    ]
    for key in t["variants"]:
        pts = [x[key] for x in rounds]
        if not pts:
            continue
        ratio = "1.00×" if key == "off" else _ratio(t["ratios"].get(key))
        cpu = [statistics.median(x["server_cpu_us"] for x in pts)]
        cpu += [statistics.median(x["cpu_us"][n] for x in pts) for n in ("ingest", "routing", "metrics")]
        lines.append(
            f"| {TRACING_LABELS[key].format(ratio=t['default_ratio'])} | "
            + " | ".join(f"{x['msgs_per_s']:.0f}" for x in pts)
            + f" | {ratio} | {statistics.median(x['p99_ms'] for x in pts):.2f} | "
            + " | ".join(f"{c:.0f}" for c in cpu) + f" | {sum(x['errors'] for x in pts)} |")
    return lines


def goals(r: dict) -> list[dict]:
    """Each goal with its figures; met is None when a figure was not measured."""
    rows = r["rows"]

    def find(kind: str, transport: str | None = None) -> dict | None:
        return next((x for x in rows if x["kind"] == kind and x["transport"] == transport), None)

    unit = r["bare_echo_us"]["total"]
    sub = {t: find("submit", t) for t in TRANSPORTS}
    half = {t: find("half_rate", t) for t in TRANSPORTS}
    conv = find("converse", "stream")
    inproc = find("inprocess")
    out = []
    ratio = sub["stream"]["msgs_per_s"] / sub["unary"]["msgs_per_s"] if sub["unary"]["msgs_per_s"] else 0
    measured = (f"{sub['stream']['msgs_per_s']:.0f}/s vs {sub['unary']['msgs_per_s']:.0f}/s "
                f"= {ratio:.2f}× (CPU busy {sub['stream']['cpu_busy_pct']:.0f} % vs "
                f"{sub['unary']['cpu_busy_pct']:.0f} %)")
    ab = r.get("ab") or []
    if ab:
        ratios = sorted(x["stream"]["msgs_per_s"] / x["unary"]["msgs_per_s"] for x in ab
                        if x["unary"]["msgs_per_s"])
        ratio = statistics.median(ratios)
        measured = (f"median of {len(ratios)} back-to-back A/B rounds {ratio:.2f}× "
                    f"(rounds: {', '.join(f'{x:.2f}' for x in ratios)}); the rows above, a minute "
                    f"apart: " + measured)
    out.append({"goal": f"e2e Submit with stream hops ≥ {GOAL_STREAM_VS_UNARY:g}× unary hops",
                "measured": measured, "value": ratio, "met": ratio >= GOAL_STREAM_VS_UNARY})
    if inproc:
        ratio = sub["stream"]["msgs_per_s"] / inproc["msgs_per_s"] if inproc["msgs_per_s"] else 0
        out.append({"goal": "e2e Submit (stream hops) ≥ the in-process bound",
                    "measured": f"{sub['stream']['msgs_per_s']:.0f}/s vs {inproc['msgs_per_s']:.0f}/s "
                                f"= {ratio:.2f}× (CPU busy {sub['stream']['cpu_busy_pct']:.0f} % vs "
                                f"{inproc['cpu_busy_pct']:.0f} %; CPU per message "
                                f"{sub['stream']['server_cpu_us']:.0f} µs vs "
                                f"{inproc['server_cpu_us']:.0f} µs)",
                    "value": ratio, "met": ratio >= 1.0})
    else:
        out.append({"goal": "e2e Submit (stream hops) ≥ the in-process bound",
                    "measured": "not measured: " + r.get("inprocess_missing", "no in-process row"),
                    "value": None, "met": None})
    echoes = {t: sub[t]["server_cpu_us"] / unit if unit else 0 for t in TRANSPORTS}
    measured = (f"{sub['stream']['server_cpu_us']:.0f} µs = {echoes['stream']:.1f} echoes "
                f"(unary hops: {sub['unary']['server_cpu_us']:.0f} µs = {echoes['unary']:.1f}; "
                f"1 echo = {unit:.0f} µs)")
    value = echoes["stream"]
    if ab and unit:
        cpu = statistics.median(x["stream"]["server_cpu_us"] for x in ab)
        value = cpu / unit
        measured = (f"median of {len(ab)} A/B rounds {cpu:.0f} µs = {value:.1f} echoes; the Submit "
                    "row above: " + measured)
    out.append({"goal": f"mesh CPU per message ≤ {GOAL_ECHOES:g} bare echoes (Submit, stream hops)",
                "measured": measured, "value": value, "met": value <= GOAL_ECHOES})
    out.append({"goal": f"p99 ≤ {GOAL_P99_MS:g} ms at half the max rate (stream hops)",
                "measured": f"{half['stream']['p99_ms']:.2f} ms at {half['stream']['rate_target']:.0f}/s "
                            f"(unary hops: {half['unary']['p99_ms']:.2f} ms at "
                            f"{half['unary']['rate_target']:.0f}/s)",
                "value": half["stream"]["p99_ms"], "met": half["stream"]["p99_ms"] <= GOAL_P99_MS})
    ratio = conv["msgs_per_s"] / sub["stream"]["msgs_per_s"] if sub["stream"]["msgs_per_s"] else 0
    out.append({"goal": f"Converse msgs/s ≥ {GOAL_CONVERSE:g}× unary Submit/s (stream hops)",
                "measured": f"{conv['msgs_per_s']:.0f} vs {sub['stream']['msgs_per_s']:.0f}/s = {ratio:.2f}×",
                "value": ratio, "met": ratio >= GOAL_CONVERSE})
    if r.get("overload"):
        out += overload_goals(r["overload"])
    if r.get("gate"):
        out.append(gate_goal(r["gate"]))
    if r.get("tracing"):
        out.append(tracing_goal(r["tracing"]))
    return out


async def main_async(args) -> dict:
    log = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    bench = Bench(args, log)
    results: dict = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "settings": {"seconds": args.seconds, "warmup_s": args.warmup, "concurrency": args.concurrency},
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "mesh": {}, "h2load": {},
        "loadavg_before": os.getloadavg()}
    started = time.monotonic()
    if args.tracing_only:
        try:
            await bench.tracing_rounds(results)
        finally:
            shutil.rmtree(bench.work, ignore_errors=True)
        results["goals"] = [tracing_goal(results["tracing"])]
        results["total_s"] = time.monotonic() - started
        results["loadavg_after"] = os.getloadavg()
        return results
    try:
        await bench.echo_rows(results)
        for transport in TRANSPORTS:
            await bench.mesh_rows(transport, results)
        if args.rounds:
            log("A/B: both meshes side by side, Submit alternated")
            await bench.ab_rounds(results)
        if args.gate_rounds:
            log("edge gate on vs off: one mesh, one ingest per policy, Submit alternated")
            await bench.gate_rounds(results)
        if args.tracing_rounds:
            log("tracing off vs on: three meshes side by side, Submit alternated")
            await bench.tracing_rounds(results)
        await bench.inprocess_row(results)
        if args.memory_rounds:
            log("memory backends: SQLite and Redis, store layer and over gRPC")
            short = args.seconds < 2  # a shortened run (the tests) measures less
            results["memory"] = await memory_bench.run(
                log, 2_000 if short else args.memory_sessions, 1 if short else args.memory_rounds)
    finally:
        shutil.rmtree(bench.work, ignore_errors=True)
    unit = results["bare_echo_us"]["total"]
    for row in bench.rows:
        row["server_in_bare_echoes"] = row["server_cpu_us"] / unit if unit else 0.0
    results["rows"] = bench.rows
    results["goals"] = goals(results)
    results["total_s"] = time.monotonic() - started
    results["loadavg_after"] = os.getloadavg()
    log(f"done in {results['total_s']:.0f}s")
    return results


def _f(v, fmt: str = ".0f") -> str:
    return "—" if v is None else format(v, fmt)


def render_markdown(r: dict) -> str:
    s = r["settings"]
    unit = r["bare_echo_us"]
    lines = [
        "# ClawMesh benchmark results",
        "",
        f"Produced by `make bench` (`python -m bench.run`) on {r['started']}: {r['machine']['cpus']} CPUs, "
        f"Python {r['machine']['python']}, {s['seconds']:g} s measured per row after {s['warmup_s']:g} s "
        f"warm-up, {s['concurrency']} concurrent callers unless stated, mock backend with zero latency, "
        f"everything on 127.0.0.1. Whole run: {r['total_s']:.0f} s. Load average (1 min) before the run "
        f"{r['loadavg_before'][0]:.2f}, after {r['loadavg_after'][0]:.2f} (the bench itself keeps both "
        "CPUs busy; a figure well above that means other work shared the machine).",
        "",
        "## How measured",
        "",
        "Every row is driven by the same lean client (`bench/lean_client.py`): a separate Python process, "
        "one uvloop event loop, one grpc.aio channel, requests prebuilt and serialized before the run "
        "(each with its own `channel_message_id`), replies not decoded except Converse's correlation ids. "
        "Closed loop (each caller sends its next call when the previous one is answered) for the max-rate "
        "rows; open loop for the half-rate rows (calls start on a fixed schedule at half the max Submit "
        "rate of the same transport; latency counts from the scheduled start). Converse keeps "
        "`callers ÷ 8` bidi streams open for the whole window with 8 messages in flight on each. "
        "Each row has a discarded warm-up; then the client reads `utime+stime` of itself and of every "
        "server process from `/proc/<pid>/stat`, runs the measured window, waits for every call in "
        "flight, and reads them again: CPU µs per message = CPU-time delta ÷ OK messages. The mesh runs "
        "as five `clawmesh serve` processes (telemetry on, pushing figures and spans — default trace "
        "sampling — to the metrics process), started "
        "twice: `CLAWMESH_INTERNAL_TRANSPORT=unary`, then `stream`, each with a fresh SQLite directory. "
        "The in-process bound runs `clawmesh.launcher.inprocess.direct_mesh` in a child process of its "
        "own (telemetry export off: there is no metrics process); its whole CPU is counted. "
        "A \"bare echo\" is the echo server's plus the lean client's CPU per echo call of this run. "
        "CPU busy = the CPU time of the measured processes (servers and client) over the window, as a "
        "share of all CPUs: well below 100 % on a closed-loop row means they were waiting (on I/O, or "
        "for CPUs taken by other work on the machine), so its rate is not a CPU-bound figure; the CPU "
        "µs per message figures hold either way.",
        "",
        "## Throughput and latency",
        "",
        "| row | hops | callers | calls/s | msgs/s | p50 ms | p90 ms | p99 ms | OK | errors | CPU busy |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in r["rows"]:
        callers = "open loop" if row["kind"] == "half_rate" else row["concurrency"]
        lines.append(f"| {row['name']} | {row['transport'] or '—'} | {callers} "
                     f"| {_f(row['calls_per_s'])} | {row['msgs_per_s']:.0f} | {row['p50_ms']:.2f} "
                     f"| {row['p90_ms']:.2f} | {row['p99_ms']:.2f} | {row['ok']} | {row['errors']} "
                     f"| {row['cpu_busy_pct']:.0f} % |")
    for row in r["rows"]:
        if row.get("from_send"):
            lines.append(f"\n{row['name']} [{row['transport']}], latency from the actual send instead of "
                         f"the schedule: p50 {row['from_send']['p50_ms']:.2f} ms, "
                         f"p99 {row['from_send']['p99_ms']:.2f} ms.")
    lines += [
        "",
        "## CPU per message (µs, from /proc/<pid>/stat over the measured window)",
        "",
        f"1 bare echo = {unit['total']:.0f} µs (echo server {unit['server']:.0f} + lean client "
        f"{unit['client']:.0f}). Σ server = the five mesh processes (echo row: the echo server; in-process "
        "row: its one process, which also runs the callers). Client = the lean client process.",
        "",
        "| row | hops | ingest | routing | provider | memory | metrics | Σ server | Σ server in bare echoes "
        "| client |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in r["rows"]:
        cells = [_f(row["cpu_us"].get(n)) for n in MESH]
        lines.append(f"| {row['name']} | {row['transport'] or '—'} | {' | '.join(cells)} "
                     f"| {row['server_cpu_us']:.0f} | {row['server_in_bare_echoes']:.2f} "
                     f"| {_f(row['client_cpu_us'])} |")
    eng = r["load_engine"]
    lean_, engine_ = eng["lean"], eng["engine"]
    overhead = ""
    if lean_["client_cpu_us"]:
        overhead = ("Engine ÷ lean client CPU per call: "
                    f"**{engine_['client_cpu_us'] / lean_['client_cpu_us']:.1f}×**.")
    lines += [
        "",
        "## Load client overhead (against the same echo server)",
        "",
        "| client | calls/s | p50 ms | p99 ms | client CPU µs/call | echo server CPU µs/call |",
        "|---|---:|---:|---:|---:|---:|",
        f"| lean client (bench/lean_client.py) | {lean_['calls_per_s']:.0f} | {lean_['p50_ms']:.2f} "
        f"| {lean_['p99_ms']:.2f} | {lean_['client_cpu_us']:.0f} | {lean_['server_cpu_us']:.0f} |",
        f"| `clawmesh load` engine (1 process) | {eng['engine']['calls_per_s']:.0f} "
        f"| {eng['engine']['p50_ms']:.2f} | {eng['engine']['p99_ms']:.2f} "
        f"| {eng['engine']['client_cpu_us']:.0f} | {eng['engine']['server_cpu_us']:.0f} |",
        "",
        "The engine row runs in the bench process (`clawmesh.loadtest.parallel.execute`, cpus 1); its "
        "client CPU includes the run's setup (descriptor load). "
        + overhead,
        "",
        "## h2load (C client), unary",
        "",
        "| target | req/s | mean latency | succeeded |",
        "|---|---:|---:|---:|",
    ]
    for key, value in (r.get("h2load") or {}).items():
        if value:
            lines.append(f"| {key} | {value['rps']:.0f} | {value['mean']} | {value['succeeded']} |")
        else:
            lines.append(f"| {key} | not measured (h2load missing or failed) | | |")
    lines += ["", "h2load sends the same request bytes every time (one session, no channel_message_id)."]
    if r.get("ab"):
        lines += ["", "## A/B: both transports back to back", "",
                  "Both meshes up side by side (the one not measured is idle); Submit at "
                  f"{r['settings']['concurrency']} callers alternated, round by round, so machine drift "
                  "hits both sides of each ratio alike.", "",
                  "| round | unary msgs/s | stream msgs/s | stream ÷ unary | unary µs/msg | stream µs/msg |",
                  "|---:|---:|---:|---:|---:|---:|"]
        for i, x in enumerate(r["ab"], 1):
            u, s_ = x["unary"], x["stream"]
            ratio = s_["msgs_per_s"] / u["msgs_per_s"] if u["msgs_per_s"] else 0
            lines.append(f"| {i} | {u['msgs_per_s']:.0f} | {s_['msgs_per_s']:.0f} | {ratio:.2f} "
                         f"| {u['server_cpu_us']:.0f} | {s_['server_cpu_us']:.0f} |")
    if r.get("overload"):
        lines += render_overload(r["overload"])
    if r.get("gate"):
        lines += render_gate(r["gate"], r["settings"]["concurrency"])
    if r.get("tracing"):
        lines += render_tracing(r["tracing"], r["settings"]["concurrency"])
    if r.get("memory"):
        lines += memory_bench.render(r["memory"])
    lines += ["", "## Goals", "", "| goal | measured | status |", "|---|---|---|"]
    for g in r["goals"]:
        status = "not measured" if g["met"] is None else "**met**" if g["met"] else "**not met**"
        lines.append(f"| {g['goal']} | {g['measured']} | {status} |")
    lines += ["", "## Start and memory", "",
              "| hops | cold start s (spawn → all SERVING) | " + " | ".join(f"{n} idle RSS MB" for n in MESH)
              + " |", "|---|---:|" + "---:|" * len(MESH)]
    for t, m in r["mesh"].items():
        lines.append(f"| {t} | {m['cold_start_s']:.2f} | "
                     + " | ".join(f"{m['idle_rss_mb'][n]:.1f}" for n in MESH) + " |")
    if r.get("inprocess_missing"):
        lines += ["", f"In-process bound not measured in this run: {r['inprocess_missing']}."]
    return "\n".join(lines) + "\n"


GATE_LABELS = {
    "on": "on: default policy (no file) — dedup + admission (gradient)",
    "on_limit": "on + a rate-limit rule that never refuses (in-process)",
    "on_limit_redis": "on + never-refusing rate limit, state on Redis (dedup and limits)",
    "off": "off: policy file `{dedup: {enforce: false}, admission: {enforce: false}}`",
    "off_no_ids": "off, messages without channel_message_id (no dedup work)",
}


def render_overload(o: dict) -> list[str]:
    ol = o["open_loop"]
    adm, unl = o["admitted"], o["unloaded"]
    lines = [
        "", f"## Overload ({o['factor']:g}× the max Submit rate, {o['transport']} hops, default edge policy)",
        "",
        f"The {o['transport']}-hops mesh above, no policy file (admission on with a gradient limit, "
        f"dedup on, no rate limits). Submit open loop at {o['rate_target']:.0f}/s = {o['factor']:g}× "
        f"the max-rate Submit row ({o['capacity_per_s']:.0f}/s) for {o['seconds']:g} s after a discarded "
        f"warm-up at the same rate, each call with a {o['timeout_s']:g} s deadline (gRPC `timeout`); "
        "calls in flight are not capped, so the schedule never waits for replies. Goodput = OK "
        "replies ÷ the time from the "
        f"first scheduled call to the last reply ({o['elapsed_s']:.1f} s: the window, then the backlog "
        f"worked off, at most one deadline more); counting only the {o['ok_in_window']} OK replies that "
        f"arrived within the window: {o['goodput_in_window_ratio']:.2f}× capacity. "
        f"The client started {ol['scheduled']} calls ({ol['offered_per_s']:.0f}/s), late against the "
        f"schedule by p50 {ol['late_p50_ms']:.1f} ms, p99 {ol['late_p99_ms']:.1f} ms, max "
        f"{ol['late_max_ms']:.1f} ms (it shares the CPUs with the mesh). CPU busy {o['cpu_busy_pct']:.0f} %.",
        "",
        "| offered/s | goodput/s | goodput ÷ capacity | failures | RESOURCE_EXHAUSTED share of failures "
        f"| of those ≤ {REFUSAL_FAST_MS:g} ms |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {o['offered_per_s']:.0f} | {o['goodput_per_s']:.0f} | {o['goodput_ratio']:.2f}× "
        f"| {o['failures']} "
        f"| {_pct(o['refused_share'])} | {_pct(o['refused_fast_share'])} |",
        "",
        "| status | calls | p50 ms | p90 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    fs = adm["from_send"]
    lines.append(f"| OK (latency from the actual send) | {o['ok']} | {fs.get('p50_ms', 0):.2f} | — "
                 f"| {fs.get('p99_ms', 0):.2f} | — |")
    lines.append(f"| OK (latency from the schedule) | {o['ok']} | {adm['p50_ms']:.2f} | {adm['p90_ms']:.2f} "
                 f"| {adm['p99_ms']:.2f} | {adm['max_ms']:.2f} |")
    for code, e in o["error_latency"].items():
        lines.append(f"| {code} (from the actual send) | {e['count']} | {e['p50_ms']:.2f} "
                     f"| {e['p90_ms']:.2f} | {e['p99_ms']:.2f} | {e['max_ms']:.2f} |")
    for code, detail in o.get("error_details", {}).items():
        lines.append(f"\n{code} details (first one): `{detail}`")
    if "CANCELLED" in o["codes"]:
        lines.append("\nCANCELLED with no message, answered within milliseconds, is not the edge gate's "
                     "doing (its refusals are RESOURCE_EXHAUSTED): ingest's gRPC core dropped the call "
                     "before a Python handler took it — its pending-request bound "
                     "(`CLAWMESH_INGEST__MAX_PENDING_REQUESTS`, 128 soft / 384 hard, random early drop), "
                     "which fires when ingest's event loop falls behind the arrivals. Such a drop costs "
                     "ingest no Python work; a call that reaches the gate and is refused costs about one "
                     "bare echo (the handler, the chain and the status with details).")
    ufs = unl["from_send"]
    lines += ["", f"Unloaded reference: {unl['row']} — p50 {unl['p50_ms']:.2f} ms, "
              f"p99 {unl['p99_ms']:.2f} ms from the schedule; p50 {ufs.get('p50_ms', 0):.2f} ms, "
              f"p99 {ufs.get('p99_ms', 0):.2f} ms from the actual send."]
    return lines


def _ratio(x: dict | None) -> str:
    return "—" if x is None else f"{x['median']:.2f}×"


def _pct(v) -> str:
    return "—" if v is None else f"{v:.0%}"


def render_gate(g: dict, concurrency: int) -> list[str]:
    keys = g["measured"]
    lines = [
        "", f"## Edge gate on vs off ({g['transport']} hops)", "",
        "One mesh (routing, provider, memory, metrics) with one ingest process per policy in front of it, "
        f"all up side by side; Submit at {concurrency} callers, closed loop, each variant in turn, the order "
        "rotated every round, so only the ingest in front differs and drift hits every variant alike. "
        "Ratios are medians over rounds of Submit/s ÷ the same round's off variant. \"Off\" is shadow "
        "mode, not absence: with `dedup.enforce: false` ingest still claims and completes every message's "
        "key in the dedup store (it never waits for an original and skips the replay), and with "
        "`admission.enforce: false` nothing queues but in-flight calls are still counted against the "
        "limit; the last variant sends messages without `channel_message_id`, which ingest never "
        "deduplicates, so it has no dedup work at all (admission still in shadow). Σ server µs/msg "
        "includes the Redis server's CPU on the Redis variant.",
        "",
        "| variant | " + " | ".join(f"round {i} msgs/s" for i in range(1, len(g["rounds"]) + 1))
        + " | ÷ off (median) | ÷ no dedup work (median) | Σ server µs/msg | ingest µs/msg | errors |",
        "|---|" + "---:|" * (len(g["rounds"]) + 5),
    ]
    for key in keys:
        pts = [x[key] for x in g["rounds"] if key in x]
        ratios = ["1.00×" if key == base else _ratio(g["ratios"].get(f"{key}/{base}"))
                  for base in ("off", "off_no_ids")]
        lines.append(
            f"| {GATE_LABELS.get(key, key)} | " + " | ".join(f"{x['msgs_per_s']:.0f}" for x in pts)
            + f" | {ratios[0]} | {ratios[1]}"
            + f" | {statistics.median(x['server_cpu_us'] for x in pts):.0f}"
            + f" | {statistics.median(x['ingest_cpu_us'] for x in pts):.0f}"
            + f" | {sum(x['errors'] for x in pts)} |")
    if g.get("redis_missing"):
        lines += ["", f"Redis variant not measured: {g['redis_missing']}."]
    return lines


def render_tracing_only(r: dict) -> str:
    """RESULTS.md of a ``--tracing-only`` run: the tracing section and its goal."""
    s = r["settings"]
    lines = ["# ClawMesh benchmark results (tracing section only)", "",
             f"`python -m bench.run --tracing-only` on {r['started']}: {r['machine']['cpus']} CPUs, "
             f"{s['seconds']:g} s measured per round after {s['warmup_s']:g} s warm-up, mock backend with "
             f"zero latency, everything on 127.0.0.1. Whole run: {r['total_s']:.0f} s."]
    lines += render_tracing(r["tracing"], s["concurrency"])
    lines += ["", "## Goals", "", "| goal | measured | status |", "|---|---|---|"]
    for g in r["goals"]:
        status = "not measured" if g["met"] is None else "**met**" if g["met"] else "**not met**"
        lines.append(f"| {g['goal']} | {g['measured']} | {status} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured length of each row")
    parser.add_argument("--warmup", type=float, default=None,
                        help="discarded warm-up per row (default: min(1, seconds/5))")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent callers")
    parser.add_argument("--out", default=str(ROOT / "bench"), help="where RESULTS.md goes")
    parser.add_argument("--rounds", type=int, default=3,
                        help="A/B rounds of Submit, unary vs stream hops back to back (0: none)")
    parser.add_argument("--overload-seconds", type=float, default=10.0,
                        help="length of the overload run (0: none)")
    parser.add_argument("--overload-factor", type=float, default=3.0,
                        help="overload offered rate ÷ the max Submit rate (stream hops)")
    parser.add_argument("--overload-timeout", type=float, default=2.0,
                        help="deadline of each overload call, seconds")
    parser.add_argument("--gate-rounds", type=int, default=3,
                        help="alternated rounds of Submit with the edge gate on vs off (0: none)")
    parser.add_argument("--tracing-rounds", type=int, default=3,
                        help="alternated rounds of Submit with tracing off / on / every trace (0: none)")
    parser.add_argument("--tracing-only", action="store_true",
                        help="run only the tracing rounds (RESULTS.md then has that section alone)")
    parser.add_argument("--memory-rounds", type=int, default=5,
                        help="rounds of the memory backends section (0: none; run alone: "
                             "python -m bench.memory_bench)")
    parser.add_argument("--memory-sessions", type=int, default=50_000,
                        help="sessions of the memory RSS figures (2,000 when --seconds < 2)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.warmup is None:
        args.warmup = min(1.0, args.seconds / 5)
    results = asyncio.run(main_async(args))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    render = render_tracing_only if args.tracing_only else render_markdown
    (out / "RESULTS.md").write_text(render(results))
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
