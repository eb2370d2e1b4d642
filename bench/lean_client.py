"""A lean load client for `make bench`: as little client CPU per call as Python allows.

    python bench/lean_client.py '{"mode": "submit", "target": "127.0.0.1:50051",
                                  "concurrency": 32, "seconds": 5, "warmup": 1}'

One process, one event loop (uvloop), one grpc.aio channel; requests are built
and serialized before the run (each with its own channel_message_id) and sent as
bytes, replies are not decoded unless needed (Converse reads correlation ids).
Closed loop by default: ``concurrency`` callers, each sending its next call when
the previous one is answered. With ``rate`` > 0 (Submit only) the run is open
loop: calls start on a fixed schedule whatever the replies do, and latency is
measured from the scheduled start (so a late client counts against the result).

Options (spec keys): ``timeout_s`` — a per-call deadline (gRPC ``timeout=``) for
echo, submit and submit_stream; ``max_in_flight`` — open loop: calls allowed in
flight before the schedule waits (default ``max(256, 8 * concurrency)``);
``within_ms`` — thresholds (default ``[100]``) for the per-code latency summary;
``no_message_id`` — messages without ``channel_message_id`` (ingest then never
deduplicates them). Every failed call's latency from its actual send is kept per
status code and summarised in ``error_latency``; an open-loop run also reports
``open_loop`` (calls scheduled, how late the client started them).

Modes: ``echo`` (EchoService/Echo), ``submit``, ``submit_stream``, ``converse``
(``concurrency // depth`` bidi streams held open for the whole window, ``depth``
messages in flight on each), ``inprocess`` (no gRPC: the five cores in this
process via ``clawmesh.launcher.inprocess.direct_mesh``, settings from the
environment).

A warm-up phase runs first and is discarded; then CPU times of this process and
of ``pids`` (``{"name": pid}``) are read from /proc/<pid>/stat, the measured
phase runs and is drained, and they are read again. Prints one JSON object.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
import time
import uuid
from collections import Counter

TICKS = os.sysconf("SC_CLK_TCK")
PATHS = {
    "echo": "/clawmesh.testing.v1.EchoService/Echo",
    "submit": "/clawmesh.ingest.v1.IngestService/Submit",
    "submit_stream": "/clawmesh.ingest.v1.IngestService/SubmitStream",
    "converse": "/clawmesh.ingest.v1.IngestService/Converse",
}


def cpu_s(pid: int | str = "self") -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def percentile(sorted_ns: list[int], q: float) -> float:
    if not sorted_ns:
        return 0.0
    return sorted_ns[min(len(sorted_ns) - 1, int(q * len(sorted_ns)))] / 1e6


class Requests:
    """Prebuilt requests, handed out in order; more are built if the pool runs out."""

    def __init__(self, mode: str, size: int, message_ids: bool = True) -> None:
        self.mode = mode
        self.message_ids = message_ids
        self.run = uuid.uuid4().hex[:12]
        self.next = 0
        self.items: list = []
        self.extend(size)

    def build(self, i: int):
        from clawmesh.common.v1 import common_pb2

        if self.mode == "echo":
            from clawmesh.testing.v1 import echo_pb2

            return echo_pb2.EchoRequest(message="hello world").SerializeToString()
        msg = common_pb2.InboundMessage(
            channel="bench", channel_message_id=f"{self.run}-{i}" if self.message_ids else "",
            sender=f"user-{i % 50}",
            session_id=f"bench-{self.run}-{i % 64}", content=f"benchmark message {i}")
        if self.mode == "inprocess":
            return msg
        from clawmesh.ingest.v1 import ingest_pb2

        if self.mode == "converse":
            cid = str(i)
            return cid, ingest_pb2.ConverseRequest(message=msg, correlation_id=cid).SerializeToString()
        cls = ingest_pb2.SubmitStreamRequest if self.mode == "submit_stream" else ingest_pb2.SubmitRequest
        return cls(message=msg).SerializeToString()

    def extend(self, n: int) -> None:
        start = len(self.items)
        self.items.extend(self.build(i) for i in range(start, start + n))

    def take(self):
        i = self.next
        if i >= len(self.items):
            self.extend(max(1000, len(self.items) // 4))
        self.next = i + 1
        return self.items[i]


class Stats:
    def __init__(self) -> None:
        self.lat_ns: list[int] = []      # per OK message
        self.sent_lat_ns: list[int] = []  # open loop: from the actual send, not the schedule
        self.errors: Counter = Counter()
        self.error_lat_ns: dict[str, list[int]] = {}  # per status code, from the actual send
        self.error_details: dict[str, str] = {}  # the first failure's details, per code
        self.ok_in_window = 0  # open loop: OK replies that arrived before the window closed
        self.window_end_ns = 0
        self.late_ns: list[int] = []  # open loop: actual send - scheduled start, per call
        self.streams = 0

    def failed(self, code: str, t0: int | None = None, details: str | None = None) -> None:
        self.errors[code] += 1
        if details is not None and code not in self.error_details:
            self.error_details[code] = details[:300]
        if t0 is not None:
            self.error_lat_ns.setdefault(code, []).append(time.perf_counter_ns() - t0)


async def closed_loop(call_one, concurrency: int, seconds: float, stats: Stats) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds

    async def caller() -> None:
        while loop.time() < end:
            await call_one(stats)

    await asyncio.gather(*(caller() for _ in range(concurrency)))


async def open_loop(call_at, rate: float, seconds: float, max_in_flight: int, stats: Stats) -> None:
    """Start call number k at start + k/rate, whatever the replies do."""
    interval = 1.0 / rate
    start = time.perf_counter()
    stats.window_end_ns = int((start + seconds) * 1e9)
    n = int(seconds * rate)
    tasks: set[asyncio.Task] = set()
    for k in range(n):
        due = start + k * interval
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(tasks) >= max_in_flight:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        task = asyncio.ensure_future(call_at(due, stats))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks)


def grpc_calls(mode: str, channel, requests: Requests, timeout_s: float | None = None):
    import grpc

    perf = time.perf_counter_ns
    if mode in ("echo", "submit"):
        method = channel.unary_unary(PATHS[mode])

        async def call_one(stats: Stats) -> None:
            req = requests.take()
            t0 = perf()
            try:
                await method(req, timeout=timeout_s)
            except grpc.aio.AioRpcError as exc:
                stats.failed(exc.code().name, t0, exc.details())
                return
            stats.lat_ns.append(perf() - t0)

        async def call_at(due: float, stats: Stats) -> None:
            req = requests.take()
            t0 = perf()
            stats.late_ns.append(max(0, t0 - int(due * 1e9)))
            try:
                await method(req, timeout=timeout_s)
            except grpc.aio.AioRpcError as exc:
                stats.failed(exc.code().name, t0, exc.details())
                return
            t1 = perf()
            if t1 <= stats.window_end_ns:
                stats.ok_in_window += 1
            stats.lat_ns.append(t1 - int(due * 1e9))
            stats.sent_lat_ns.append(t1 - t0)

        return call_one, call_at
    if mode == "submit_stream":
        method = channel.unary_stream(PATHS[mode])

        async def call_stream(stats: Stats) -> None:
            req = requests.take()
            t0 = perf()
            chunks = 0
            try:
                async for _ in method(req, timeout=timeout_s):
                    chunks += 1
            except grpc.aio.AioRpcError as exc:
                stats.failed(exc.code().name, t0, exc.details())
                return
            if chunks == 0:
                stats.failed("NO_CHUNKS", t0)
                return
            stats.lat_ns.append(perf() - t0)

        return call_stream, None
    raise ValueError(mode)


async def converse_window(channel, requests: Requests, streams: int, depth: int, seconds: float,
                          stats: Stats) -> None:
    """``streams`` bidi streams open for the whole window, ``depth`` messages in flight on each."""
    import grpc

    from clawmesh.ingest.v1 import ingest_pb2

    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    perf = time.perf_counter_ns
    method = channel.stream_stream(PATHS["converse"],
                                   response_deserializer=ingest_pb2.ConverseResponse.FromString)

    async def one_stream() -> None:
        call = method()
        stats.streams += 1
        sent: dict[str, int] = {}
        slots = asyncio.Semaphore(depth)

        async def writer() -> None:
            while True:
                await slots.acquire()
                if loop.time() >= end:
                    break
                cid, data = requests.take()
                sent[cid] = perf()
                await call.write(data)
            await call.done_writing()

        async def reader() -> None:
            async for resp in call:
                t0 = sent.pop(resp.correlation_id, None)
                if t0 is None:
                    stats.errors["UNKNOWN_CORRELATION_ID"] += 1
                elif resp.HasField("error"):
                    stats.failed(f"inband:{resp.error.code}", t0)
                else:
                    stats.lat_ns.append(perf() - t0)
                slots.release()

        w = asyncio.ensure_future(writer())
        try:
            await reader()
            await w
        except grpc.aio.AioRpcError as exc:
            stats.errors[exc.code().name] += 1 + len(sent)
            w.cancel()
        if sent:
            stats.errors["UNANSWERED"] += len(sent)

    await asyncio.gather(*(one_stream() for _ in range(streams)))


async def run(spec: dict) -> dict:
    mode = spec["mode"]
    concurrency = int(spec.get("concurrency", 32))
    seconds = float(spec.get("seconds", 5))
    warmup = float(spec.get("warmup", 1))
    rate = float(spec.get("rate", 0))
    depth = int(spec.get("depth", 8))
    pids = {name: int(pid) for name, pid in (spec.get("pids") or {}).items()}
    timeout_s = float(spec["timeout_s"]) if spec.get("timeout_s") else None
    max_in_flight = int(spec.get("max_in_flight") or max(256, 8 * concurrency))
    within_ms = [float(x) for x in spec.get("within_ms", [100])]
    if rate and mode not in ("submit", "echo"):
        raise SystemExit("rate (open loop) is for submit and echo only")
    expected = rate * (seconds + warmup) if rate else float(spec.get("pool_hint_rps", 4000)) * (
        seconds + warmup)
    requests = Requests(mode, int(expected * 1.1) + 1000, message_ids=not spec.get("no_message_id"))

    channel = mesh_cm = None
    if mode == "inprocess":
        from clawmesh.launcher.inprocess import direct_mesh
        from clawmesh.shared.settings import load_settings

        mesh_cm = direct_mesh(load_settings(os.environ))
        mesh = await mesh_cm.__aenter__()
        perf = time.perf_counter_ns

        async def call_one(stats: Stats) -> None:
            msg = requests.take()
            t0 = perf()
            try:
                await mesh.submit(msg)
            except Exception as exc:  # noqa: BLE001 - counted, named in the report
                stats.failed(type(exc).__name__, t0)
                return
            stats.lat_ns.append(perf() - t0)

        call_at = None
    else:
        import grpc

        channel = grpc.aio.insecure_channel(spec["target"])
        await asyncio.wait_for(channel.channel_ready(), 10)
        if mode != "converse":
            call_one, call_at = grpc_calls(mode, channel, requests, timeout_s)

    async def phase(length: float, stats: Stats) -> None:
        if mode == "converse":
            streams = max(1, concurrency // depth)
            await converse_window(channel, requests, streams, depth, length, stats)
        elif rate:
            await open_loop(call_at, rate, length, max_in_flight, stats)
        else:
            await closed_loop(call_one, concurrency, length, stats)

    try:
        if warmup > 0:
            await phase(warmup, Stats())
        gc.collect()
        stats = Stats()
        before = {name: cpu_s(pid) for name, pid in pids.items()}
        self_before = cpu_s()
        t0 = time.perf_counter()
        await phase(seconds, stats)
        elapsed = time.perf_counter() - t0
        self_cpu = cpu_s() - self_before
        after = {name: cpu_s(pid) for name, pid in pids.items()}
    finally:
        if channel is not None:
            await channel.close()
        if mesh_cm is not None:
            await mesh_cm.__aexit__(None, None, None)

    lat = sorted(stats.lat_ns)
    ok = len(lat)
    errors = sum(stats.errors.values())
    out = {
        "mode": mode, "concurrency": concurrency, "rate_target": rate, "ok": ok, "errors": errors,
        "error_codes": dict(stats.errors), "count": ok + errors, "elapsed_s": elapsed,
        "rps": (ok + errors) / elapsed if elapsed else 0.0, "ok_per_s": ok / elapsed if elapsed else 0.0,
        "p50_ms": percentile(lat, 0.50), "p90_ms": percentile(lat, 0.90),
        "p99_ms": percentile(lat, 0.99), "max_ms": lat[-1] / 1e6 if lat else 0.0,
        "cpu_s": self_cpu, "cpu_s_by_pid": {name: after[name] - before[name] for name in pids},
    }
    if mode == "converse":
        out["streams"] = stats.streams
        out["depth"] = depth
    if stats.sent_lat_ns:
        sent = sorted(stats.sent_lat_ns)
        out["from_send"] = {"p50_ms": percentile(sent, 0.5), "p99_ms": percentile(sent, 0.99)}
    if timeout_s:
        out["timeout_s"] = timeout_s
    out["error_details"] = stats.error_details
    out["error_latency"] = {code: latency_summary(ns, within_ms)
                            for code, ns in sorted(stats.error_lat_ns.items())}
    if rate:
        late = sorted(stats.late_ns)
        out["open_loop"] = {"window_s": seconds, "scheduled": len(late),
                            "offered_per_s": len(late) / seconds if seconds else 0.0,
                            "late_p50_ms": percentile(late, 0.5), "late_p99_ms": percentile(late, 0.99),
                            "late_max_ms": late[-1] / 1e6 if late else 0.0,
                            "max_in_flight": max_in_flight, "ok_in_window": stats.ok_in_window}
    return out


def latency_summary(ns: list[int], within_ms: list[float]) -> dict:
    """Count, percentiles and how many were at or under each threshold (ms)."""
    lat = sorted(ns)
    return {"count": len(lat), "p50_ms": percentile(lat, 0.5), "p90_ms": percentile(lat, 0.9),
            "p99_ms": percentile(lat, 0.99), "max_ms": lat[-1] / 1e6 if lat else 0.0,
            "within": {f"{w:g}": sum(1 for x in lat if x <= w * 1e6) for w in within_ms}}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(argv[0]) if argv else {}
    try:
        import uvloop
    except ImportError:
        uvloop = None
    try:
        result = uvloop.run(run(spec)) if uvloop else asyncio.run(run(spec))
    except ImportError as exc:  # e.g. clawmesh.launcher.inprocess not written yet
        print(json.dumps({"mode": spec.get("mode"), "missing": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 3
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
