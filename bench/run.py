"""`make bench`: the mesh measured against the bare grpc.aio echo baseline, in one run.

    python -m bench.run [--seconds 5] [--concurrency 32] [--out bench]

Every figure comes from the same client (the `clawmesh load` engine, one process)
against: the bare echo server (the physical limit of this machine), each service
alone, and the whole mesh (unary Submit, SubmitStream, Converse). h2load, a C
client, measures the unary figures independently. Also: cold start (spawn until
every service is SERVING), idle RSS and CPU per service. Writes
``<out>/RESULTS.md`` and ``<out>/results.json``; claims are ratios to the echo
baseline of the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from clawmesh.launcher.mesh import START_ORDER, MeshProcesses, child_env
from clawmesh.loadtest.config import load_config
from clawmesh.loadtest.parallel import execute
from clawmesh.shared.settings import SERVICES

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "loadtest" / "configs"
ECHO_PROTO = "protos/clawmesh/testing/v1/echo.proto"
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def summarize(name: str, report: dict, messages_per_call: int = 1) -> dict:
    lat = {p["percentage"]: p["latency"] / 1e6 for p in report.get("latencyDistribution") or []}
    ok = report["statusCodeDistribution"].get("OK", 0)
    return {
        "name": name,
        "count": report["count"],
        "ok": ok,
        "errors": report["count"] - ok,
        "rps": report["rps"],
        "msgs_per_s": report["rps"] * messages_per_call,
        "p50_ms": lat.get(50, 0.0),
        "p90_ms": lat.get(90, 0.0),
        "p99_ms": lat.get(99, 0.0),
    }


class Bench:
    def __init__(self, seconds: float, concurrency: int, log) -> None:
        self.seconds = seconds
        self.concurrency = concurrency
        self.log = log
        self.rows: list[dict] = []

    async def run_config(self, name: str, path: Path | None, overrides: dict,
                         messages_per_call: int = 1) -> dict:
        base = {
            "duration": f"{self.seconds}s", "concurrency": self.concurrency, "cpus": 1,
            "connections": 1, "rps": 0, "skipFirst": 0, "timeout": "20s", "insecure": True,
            "output": "", "format": "json", "name": name, "duration-stop": "wait",
        }
        cfg = load_config(path, {**base, **overrides})
        self.log(f"  {name}: {self.seconds:g}s at {cfg['concurrency']} callers ...")
        row = summarize(name, await execute(cfg), messages_per_call)
        self.log(f"    {row['rps']:.0f}/s p50 {row['p50_ms']:.2f} ms p99 {row['p99_ms']:.2f} ms"
                 f" errors {row['errors']}")
        self.rows.append(row)
        return row


def h2load(url: str, frame: bytes, seconds: float, concurrency: int) -> dict | None:
    """Unary RPS from h2load (a C HTTP/2 client) sending one gRPC frame per request."""
    if shutil.which("h2load") is None:
        return None
    with tempfile.NamedTemporaryFile(suffix=".bin", delete=False) as f:
        f.write(frame)
    try:
        out = subprocess.run(
            ["h2load", "-D", str(int(max(seconds, 1))), "-c", "4", "-m", str(max(1, concurrency // 4)),
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


def spawn_echo(port: int, env: dict) -> subprocess.Popen:
    """The baseline server in a process of its own, like each mesh service."""
    return subprocess.Popen([sys.executable, "-m", "clawmesh.loadtest.echo_server", "--port", str(port)],
                            env=env, stderr=subprocess.DEVNULL)


def grpc_frame(message) -> bytes:
    body = message.SerializeToString()
    return struct.pack(">BI", 0, len(body)) + body


async def main_async(args) -> dict:
    log = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    bench = Bench(args.seconds, args.concurrency, log)
    results: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                 "platform": platform.platform()},
                     "settings": {"seconds": args.seconds, "concurrency": args.concurrency}}
    work = Path(tempfile.mkdtemp(prefix="clawmesh-bench-"))
    env_base = {k: v for k, v in os.environ.items() if not k.startswith("CLAWMESH_")}

    # 1. The bare baseline: echo server in its own process.
    echo_port = free_port()
    echo = spawn_echo(echo_port, child_env(env_base))
    mesh = None
    try:
        echo_host = f"127.0.0.1:{echo_port}"
        from clawmesh.launcher.mesh import health_status

        for _ in range(200):
            if await health_status(echo_host, timeout_s=0.5) == "SERVING":
                break
            await asyncio.sleep(0.05)
        log("baseline: bare grpc.aio echo server")
        base = await bench.run_config("echo (bare grpc.aio)", None, {
            "host": echo_host, "proto": ECHO_PROTO, "call": "clawmesh.testing.v1.EchoService.Echo",
            "data": {"message": "hello world"}})

        # 2. Cold start of the whole mesh (fresh data dir), idle RSS.
        env = {f"CLAWMESH_{n.upper()}__PORT": str(free_port()) for n in SERVICES}
        env.update(CLAWMESH_MEMORY__DATA_DIR=str(work / "data"), CLAWMESH_LOG_LEVEL="WARNING",
                   CLAWMESH_PROVIDER__MOCK_LATENCY_MS="0")
        mesh = MeshProcesses(child_env(env_base, env), stderr=subprocess.DEVNULL)
        log("mesh: cold start ...")
        cold = await mesh.start()
        log(f"  every service SERVING after {cold:.2f}s")
        pids = {n: p.pid for n, p in mesh.procs.items()}
        results["cold_start_s"] = cold
        results["idle_rss_mb"] = {n: rss_mb(pid) for n, pid in pids.items()}
        host = {n: mesh.target(n) for n in START_ORDER}

        # 3. Each service alone, then the whole mesh.
        log("services alone (leaves first):")
        for name, config in (("memory GetHistory", "services/memory-gethistory.json"),
                             ("provider Generate", "services/provider-generate.json"),
                             ("metrics GetSnapshot", "services/metrics-getsnapshot.json"),
                             ("routing Dispatch (+memory, provider)", "services/routing-dispatch.json")):
            svc = config.split("/")[1].split("-")[0]
            await bench.run_config(name, CONFIGS / config, {"host": host[svc]})
        log("end to end through ingest:")
        cpu_before = {n: cpu_s(pid) for n, pid in pids.items()}
        started = time.monotonic()
        unary = await bench.run_config("mesh Submit (unary, e2e)",
                                       CONFIGS / "scenarios/b-unary-submit.json", {"host": host["ingest"]})
        wall = time.monotonic() - started
        results["cpu_percent_during_submit"] = {
            n: 100 * (cpu_s(pid) - cpu_before[n]) / wall for n, pid in pids.items()}
        await bench.run_config("mesh SubmitStream (e2e)", CONFIGS / "scenarios/c-streaming-submit.json",
                               {"host": host["ingest"]})
        converse_cfg = json.loads((CONFIGS / "scenarios/c-converse-bidi.json").read_text())
        per_stream = int(converse_cfg.get("stream-call-count") or 1)
        converse = await bench.run_config(
            "mesh Converse (bidi, e2e)", CONFIGS / "scenarios/c-converse-bidi.json",
            {"host": host["ingest"], "concurrency": max(1, args.concurrency // 8),
             "stream-interval": "0s"}, messages_per_call=per_stream)
        half = max(1, int(unary["rps"] / 2))
        p99_run = await bench.run_config(
            f"mesh Submit at 64 callers, {half}/s (half max)", CONFIGS / "scenarios/b-unary-submit.json",
            {"host": host["ingest"], "concurrency": 64, "rps": half})

        # 4. An independent C client for the unary figures.
        log("h2load (C client), unary:")
        from clawmesh.common.v1 import common_pb2
        from clawmesh.ingest.v1 import ingest_pb2
        from clawmesh.testing.v1 import echo_pb2

        h2 = {
            "echo": h2load(f"http://{echo_host}/clawmesh.testing.v1.EchoService/Echo",
                           grpc_frame(echo_pb2.EchoRequest(message="hello world")),
                           args.seconds, args.concurrency),
            "submit": h2load(f"http://{host['ingest']}/clawmesh.ingest.v1.IngestService/Submit",
                             grpc_frame(ingest_pb2.SubmitRequest(message=common_pb2.InboundMessage(
                                 channel="bench", sender="h2load", session_id="h2load-1",
                                 content="hello world"))), args.seconds, args.concurrency),
        }
        for key, value in h2.items():
            if value:
                log(f"  {key}: {value['rps']:.0f}/s (mean {value['mean']})")
        results["h2load"] = h2
        results["rows"] = bench.rows
        results["baseline_rps"] = base["rps"]
        results["targets"] = {
            "e2e_unary_ratio": unary["rps"] / base["rps"] if base["rps"] else 0.0,
            "p99_ms_at_64_half_rate": p99_run["p99_ms"],
            "converse_msgs_vs_unary": converse["msgs_per_s"] / unary["rps"] if unary["rps"] else 0.0,
            "cold_start_s": cold,
            "max_idle_rss_mb": max(results["idle_rss_mb"].values()),
        }
    finally:
        if mesh is not None:
            await mesh.stop(grace_s=2)
        echo.terminate()
        echo.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    return results


def render_markdown(r: dict) -> str:
    base = r["baseline_rps"]
    t = r["targets"]
    lines = [
        "# ClawMesh benchmark results",
        "",
        f"Produced by `make bench` (`python -m bench.run`): {r['machine']['cpus']} CPUs, "
        f"Python {r['machine']['python']}, {r['settings']['seconds']:g} s per run, "
        f"{r['settings']['concurrency']} concurrent callers unless stated, one client process "
        "(the `clawmesh load` engine) for every row, mock backend with zero latency.",
        "",
        "| target | calls/s | msgs/s | p50 ms | p90 ms | p99 ms | errors | × echo |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in r["rows"]:
        ratio = row["rps"] / base if base else 0
        lines.append(f"| {row['name']} | {row['rps']:.0f} | {row['msgs_per_s']:.0f} | {row['p50_ms']:.2f} "
                     f"| {row['p90_ms']:.2f} | {row['p99_ms']:.2f} | {row['errors']} | {ratio:.2f} |")
    lines += ["", "## h2load (C client), unary", "", "| target | req/s | mean latency |", "|---|---:|---:|"]
    for key, value in (r.get("h2load") or {}).items():
        if value:
            lines.append(f"| {key} | {value['rps']:.0f} | {value['mean']} |")
    h2 = r.get("h2load") or {}
    if h2.get("echo") and h2.get("submit"):
        lines.append(f"\nh2load ratio mesh Submit / echo: **{h2['submit']['rps'] / h2['echo']['rps']:.2f}**")
    lines += ["", "## Targets", "", "| target | goal | measured |", "|---|---|---|",
              f"| e2e unary Submit / bare echo | ≥ 0.6 | {t['e2e_unary_ratio']:.2f} |",
              f"| p99 at 64 callers, half max rate | ≤ 15 ms | {t['p99_ms_at_64_half_rate']:.2f} ms |",
              f"| Converse msgs/s ÷ unary Submit/s | ≥ 2 | {t['converse_msgs_vs_unary']:.2f} |",
              f"| cold start (spawn → all SERVING) | < 2 s | {t['cold_start_s']:.2f} s |",
              f"| idle RSS per service (max) | < 80 MB | {t['max_idle_rss_mb']:.1f} MB |",
              "", "## Per service", "", "| service | idle RSS MB | CPU % during e2e Submit |",
              "|---|---:|---:|"]
    for name in START_ORDER:
        lines.append(f"| {name} | {r['idle_rss_mb'][name]:.1f} | "
                     f"{r['cpu_percent_during_submit'][name]:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each run")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent callers")
    parser.add_argument("--out", default=str(ROOT / "bench"), help="where RESULTS.md goes")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    results = asyncio.run(main_async(args))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "RESULTS.md").write_text(render_markdown(results))
    print(render_markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
