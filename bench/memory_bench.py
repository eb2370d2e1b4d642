"""What the memory backends cost: SQLite and Redis, at the store layer and over gRPC.

    python -m bench.memory_bench [--sessions 50000] [--rounds 5] [--json FILE]

Per backend — SQLite (WAL, synchronous=FULL) and Redis (a redis-server of its own
with the default durability, ``appendonly yes``, ``appendfsync always``):

* store layer, in this process: 1,000 messages stored as 10 BatchAppends of 100
  (concurrent, fresh sessions); the same 1,000 messages retrieved as 10 history
  reads of 100 (concurrent); 1,000 history reads (limit 20) and 1,000 searches,
  16 concurrent callers; the median of ``--rounds`` rounds;
* over gRPC: the same calls against ``clawmesh serve memory`` in its own process;
* RSS with ``--sessions`` sessions (a user/assistant turn each), written through the
  store layer, then every session listed and 1,000 read and searched over gRPC: the
  memory service's RSS against its idle RSS, and the redis-server's.

``bench.run`` (``make bench``) runs it too and puts its section, with its goals, in
RESULTS.md; run alone, it prints that section. Figures are wall-clock times on this
machine: compare them with each other, not across machines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from clawmesh.common.v1 import common_pb2
from clawmesh.launcher.mesh import MeshProcesses, child_env
from clawmesh.memory.v1 import memory_pb2, memory_pb2_grpc
from clawmesh.services.memory.records import Message
from clawmesh.services.memory.store import open_store
from clawmesh.shared.settings import MemorySettings

BACKENDS = ("sqlite", "redis")
MESSAGES, BATCH = 1000, 100  # 1,000 messages stored as 10 batches of 100
READS, READ_LIMIT, CALLERS = 1000, 20, 16
FILL_CALLERS = 32  # = the store's Redis connections
TEXT = "The quick brown fox jumps over the lazy dog while the tea gets cold. " * 3  # ~200 chars
# The references of the issue "Memory that scales out" (store layer, batched).
GOAL_STORE_MS = 50.0
GOAL_READS_MS = 30.0
GOAL_RSS_RATIO = 1.5  # memory service RSS with the sessions ÷ idle: no per-session state in it


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def turn(i: int) -> list[Message]:
    return [Message(role=2, content=f"question {i}: {TEXT}"), Message(role=3, content=f"answer {i}: {TEXT}")]


async def bounded(calls, callers: int) -> None:
    """Await the coroutines of ``calls`` with at most ``callers`` in flight."""
    gate = asyncio.Semaphore(callers)

    async def one(call):
        async with gate:
            await call

    await asyncio.gather(*(one(c) for c in calls))


async def timed_ms(make) -> float:
    started = time.perf_counter()
    await make()
    return (time.perf_counter() - started) * 1000


class RedisProcess:
    """redis-server on a free port in ``work``: AOF on with fsync always (``durable``, what
    memory requires), or no persistence at all (the edge's rate limits in bench/run.py)."""

    def __init__(self, work: Path, durable: bool = True, name: str = "redis") -> None:
        self.dir = work / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        persistence = (["--appendonly", "yes", "--appendfsync", "always"] if durable
                       else ["--appendonly", "no"])
        self.proc = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", *persistence, "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
            time.sleep(0.02)  # polling a process we don't control

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def settings_for(backend: str, work: Path, redis_url: str) -> dict[str, str]:
    """The memory settings of ``backend`` as CLAWMESH_MEMORY__* variables."""
    env = {"DATA_DIR": str(work / f"data-{backend}"), "SWEEP_INTERVAL_S": "0"}
    if backend == "redis":
        env |= {"BACKEND": "redis", "REDIS_URL": redis_url, "REDIS_KEY_PREFIX": f"bench-{time.time_ns()}:"}
    return {f"CLAWMESH_MEMORY__{k}": v for k, v in env.items()}


def memory_settings(env: dict[str, str]) -> MemorySettings:
    prefix = "CLAWMESH_MEMORY__"
    return MemorySettings(**{k[len(prefix):].lower(): v for k, v in env.items() if k.startswith(prefix)})


# -- one round of calls, through either layer ---------------------------------------------


async def round_of_calls(append, history, search, tag: str) -> dict[str, float]:
    """1,000 messages in 10 concurrent batches and back in 10 reads, then 1,000 reads and
    1,000 searches."""
    sessions = [f"{tag}-{i}" for i in range(MESSAGES // BATCH)]
    batches = [[m for j in range(BATCH // 2) for m in turn(j)] for _ in sessions]
    store = await timed_ms(lambda: asyncio.gather(
        *(append(s, b, f"{s}-key") for s, b in zip(sessions, batches, strict=True))))
    fetch = await timed_ms(lambda: asyncio.gather(*(history(s, BATCH) for s in sessions)))
    reads = await timed_ms(lambda: bounded(
        (history(sessions[i % len(sessions)], READ_LIMIT) for i in range(READS)), CALLERS))
    searches = await timed_ms(lambda: bounded(
        (search(sessions[i % len(sessions)], "tea answer") for i in range(READS)), CALLERS))
    return {"store_ms": store, "fetch_ms": fetch, "reads_ms": reads, "search_ms": searches}


def medians(rounds: list[dict[str, float]]) -> dict:
    return {key: statistics.median(r[key] for r in rounds) for key in rounds[0]} | {
        "rounds": [{k: round(v, 2) for k, v in r.items()} for r in rounds]}


async def store_layer(env: dict[str, str], rounds: int) -> dict:
    store = await open_store(memory_settings(env), sweep=False)
    try:
        async def append(session, messages, key):
            await store.append("bench", session, messages, key)

        async def history(session, limit):
            await store.history("bench", session, limit)

        async def search(session, query):
            await store.search("bench", session, query, 10)

        await round_of_calls(append, history, search, "warm")
        return medians([await round_of_calls(append, history, search, f"store{r}") for r in range(rounds)])
    finally:
        await store.close()


class GrpcMemory:
    """The service's RPCs as the calls ``round_of_calls`` makes."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.stub = memory_pb2_grpc.MemoryServiceStub(channel)

    async def append(self, session, messages, key):
        chat = [common_pb2.ChatMessage(role=m.role, content=m.content) for m in messages]
        await self.stub.BatchAppend(memory_pb2.BatchAppendRequest(
            session_id=session, messages=chat, idempotency_key=key), timeout=30)

    async def history(self, session, limit):
        await self.stub.GetHistory(memory_pb2.GetHistoryRequest(session_id=session, limit=limit), timeout=30)

    async def search(self, session, query):
        await self.stub.Search(memory_pb2.SearchRequest(session_id=session, query=query), timeout=30)


async def fill(env: dict[str, str], sessions: int) -> float:
    """``sessions`` sessions of one turn each, through the store layer; returns seconds."""
    store = await open_store(memory_settings(env), sweep=False)
    started = time.perf_counter()
    try:
        await bounded((store.append("bench", f"rss-{i:06d}", turn(i)) for i in range(sessions)), FILL_CALLERS)
    finally:
        await store.close()
    return time.perf_counter() - started


async def touch_everything(memory: GrpcMemory, sessions: int) -> None:
    """Every session listed, 1,000 of them read and searched, the stats: over gRPC."""
    token = ""
    while True:
        page = await memory.stub.ListSessions(
            memory_pb2.ListSessionsRequest(page_size=1000, page_token=token), timeout=60)
        token = page.next_page_token
        if not token:
            break
    await memory.stub.Stats(memory_pb2.StatsRequest(), timeout=60)
    step = max(sessions // READS, 1)
    await bounded((memory.history(f"rss-{i:06d}", READ_LIMIT) for i in range(0, sessions, step)), CALLERS)
    await bounded((memory.search(f"rss-{i:06d}", "answer") for i in range(0, sessions, step)), CALLERS)


async def redis_memory(url: str) -> dict[str, float]:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        info = await client.info("memory")
        return {"used_mb": info["used_memory"] / 2**20, "rss_mb": info["used_memory_rss"] / 2**20}
    finally:
        await client.aclose()


async def over_grpc(backend: str, env: dict[str, str], work: Path, rounds: int, sessions: int,
                    redis: RedisProcess | None) -> tuple[dict, dict]:
    """(timings over gRPC, RSS figures) against one ``clawmesh serve memory`` process."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("CLAWMESH_")}
    mesh = MeshProcesses(child_env(base, {**env, "CLAWMESH_MEMORY__PORT": str(free_port()),
                                          "CLAWMESH_TELEMETRY__ENABLED": "false",
                                          "CLAWMESH_LOG_LEVEL": "WARNING"}), services=("memory",))
    await mesh.start()
    try:
        pid = mesh.procs["memory"].pid
        async with grpc.aio.insecure_channel(mesh.target("memory")) as channel:
            memory = GrpcMemory(channel)
            await round_of_calls(memory.append, memory.history, memory.search, "gwarm")
            timings = medians([await round_of_calls(memory.append, memory.history, memory.search, f"grpc{r}")
                               for r in range(rounds)])
            rss: dict = {"sessions": sessions, "idle_rss_mb": rss_mb(pid)}
            if redis is not None:
                rss["redis_before"] = await redis_memory(redis.url)
            rss["fill_s"] = await fill(env, sessions)
            await touch_everything(memory, sessions)
            rss["rss_mb"] = rss_mb(pid)
            if redis is not None:
                rss["redis"] = await redis_memory(redis.url)
                added = rss["redis"]["used_mb"] - rss["redis_before"]["used_mb"]
                rss["bytes_per_session"] = added * 2**20 / sessions
            else:
                data = work / f"data-{backend}"
                size = sum(f.stat().st_size for f in data.iterdir())
                rss["file_mb"] = size / 2**20
                rss["bytes_per_session"] = size / sessions
        return timings, rss
    finally:
        await mesh.stop()


async def run(log=lambda s: None, sessions: int = 50_000, rounds: int = 5) -> dict:
    """Every figure of this bench, by backend (a backend that could not run says why)."""
    work = Path(tempfile.mkdtemp(prefix="clawmesh-memory-bench-"))
    results: dict = {"sessions": sessions, "rounds": rounds, "backends": {}}
    try:
        for backend in BACKENDS:
            redis = None
            if backend == "redis":
                if not shutil.which("redis-server"):
                    results["backends"][backend] = {"missing": "redis-server not installed"}
                    continue
                redis = RedisProcess(work)
            try:
                env = settings_for(backend, work, redis.url if redis else "")
                log(f"memory bench: {backend}, store layer")
                store = await store_layer(env, rounds)
                log(f"memory bench: {backend}, over gRPC, then {sessions} sessions")
                grpc_figures, rss = await over_grpc(backend, env, work, rounds, sessions, redis)
                results["backends"][backend] = {"store": store, "grpc": grpc_figures, "rss": rss}
            finally:
                if redis is not None:
                    redis.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return results


# -- reporting ----------------------------------------------------------------------------


def goals(r: dict) -> list[dict]:
    """The issue's references, per backend; met is None when a backend was not measured."""
    out = []
    for backend in BACKENDS:
        b = r["backends"].get(backend, {})
        checks = [
            (f"memory store layer ({backend}): 1,000 messages stored, batched, < {GOAL_STORE_MS:g} ms",
             "store", "store_ms", GOAL_STORE_MS),
            (f"memory store layer ({backend}): 1,000 messages retrieved, batched, < {GOAL_READS_MS:g} ms",
             "store", "fetch_ms", GOAL_READS_MS),
        ]
        for goal, layer, key, limit in checks:
            if "missing" in b:
                out.append({"goal": goal, "measured": f"not measured: {b['missing']}", "value": None,
                            "met": None})
                continue
            value = b[layer][key]
            grpc_value = b["grpc"][key]
            out.append({"goal": goal, "measured": f"{value:.1f} ms (over gRPC: {grpc_value:.1f} ms)",
                        "value": value, "met": value < limit})
        goal = (f"memory service RSS with {r['sessions']:,} sessions ({backend}) ≤ {GOAL_RSS_RATIO:g}× "
                "its idle RSS")
        if "missing" in b:
            out.append({"goal": goal, "measured": f"not measured: {b['missing']}", "value": None,
                        "met": None})
            continue
        rss = b["rss"]
        ratio = rss["rss_mb"] / rss["idle_rss_mb"] if rss["idle_rss_mb"] else 0.0
        out.append({"goal": goal, "measured": f"{rss['rss_mb']:.1f} MB vs {rss['idle_rss_mb']:.1f} MB "
                                              f"idle = {ratio:.2f}×", "value": ratio,
                    "met": ratio <= GOAL_RSS_RATIO})
    return out


def render(r: dict) -> list[str]:
    """The RESULTS.md section (markdown lines), its goals last."""
    lines = ["", "## Memory backends", "",
             f"`bench/memory_bench.py`: median of {r['rounds']} rounds. Store 1,000 = 10 BatchAppends of "
             f"100 messages (~200 chars each), concurrent, fresh sessions; fetch 1,000 = the same messages "
             f"back as 10 GetHistory of 100, concurrent; reads = 1,000 GetHistory "
             f"(limit {READ_LIMIT}) and searches = 1,000 Search (two words) with {CALLERS} concurrent "
             "callers. SQLite: WAL, synchronous=FULL, inline reads; Redis: a redis-server of its own with "
             "appendonly yes, appendfsync always (the default durability). \"over gRPC\": the same calls "
             "from this process to `clawmesh serve memory`.", "",
             "| backend | layer | store 1,000 msgs ms | fetch 1,000 msgs ms | 1,000 reads ms "
             "| 1,000 searches ms |", "|---|---|---:|---:|---:|---:|"]
    for backend in BACKENDS:
        b = r["backends"].get(backend, {})
        if "missing" in b:
            lines.append(f"| {backend} | not measured: {b['missing']} | | | | |")
            continue
        for layer in ("store", "grpc"):
            x = b[layer]
            lines.append(f"| {backend} | {'store layer' if layer == 'store' else 'over gRPC'} "
                         f"| {x['store_ms']:.1f} | {x['fetch_ms']:.1f} | {x['reads_ms']:.1f} "
                         f"| {x['search_ms']:.1f} |")
    lines += ["", f"With {r['sessions']:,} sessions (one turn each, written through the store layer, then "
              "every session listed and 1,000 read and searched over gRPC):", "",
              "| backend | fill s | memory service RSS MB (idle → with sessions) | stored bytes per session "
              "| redis-server used / RSS MB |", "|---|---:|---|---:|---|"]
    for backend in BACKENDS:
        b = r["backends"].get(backend, {})
        if "missing" in b:
            continue
        rss = b["rss"]
        redis = (f"{rss['redis']['used_mb']:.1f} / {rss['redis']['rss_mb']:.1f}" if "redis" in rss
                 else f"— (SQLite files {rss['file_mb']:.1f} MB)")
        lines.append(f"| {backend} | {rss['fill_s']:.1f} | {rss['idle_rss_mb']:.1f} → {rss['rss_mb']:.1f} "
                     f"| {rss['bytes_per_session']:.0f} | {redis} |")
    lines += ["", "| memory goal | measured | status |", "|---|---|---|"]
    for g in goals(r):
        status = "not measured" if g["met"] is None else "**met**" if g["met"] else "**not met**"
        lines.append(f"| {g['goal']} | {g['measured']} | {status} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=50_000, help="sessions for the RSS figures")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the timed calls (median)")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    log = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    results = asyncio.run(run(log, args.sessions, args.rounds))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print("\n".join(render(results)[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
