"""A whole run: resolve the method once, split the load over ``cpus`` worker
processes (each with its own event loop and connections), merge into one report.

    report = await execute(cfg)              # a ghz report (loadtest.report.Struct)
"""

from __future__ import annotations

import asyncio
import multiprocessing
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from clawmesh.loadtest.calls import Payload
from clawmesh.loadtest.config import import_paths
from clawmesh.loadtest.protodesc import descriptor_set, find_method
from clawmesh.loadtest.report import Result, Struct, build_report, report_options
from clawmesh.loadtest.runner import Counter, Engine, Outcome, Plan, RunError, make_channel

START_DELAY_NS = 50_000_000  # lets every process reach the start line


def run_async(coro):
    """Run a coroutine on uvloop when available."""
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


def process_count(cfg: dict) -> int:
    n = max(1, cfg["cpus"])
    if cfg["concurrency-schedule"] == "const":
        n = min(n, cfg["concurrency"])
    return max(1, min(n, cfg["total"]))


async def prepare(cfg: dict) -> bytes:
    """Descriptors for the call, with the data checked against the input type."""
    fds = await descriptor_set(cfg, lambda: make_channel(cfg))
    method = find_method(fds, cfg["call"])
    payload = Payload(cfg, method)
    req, _ = payload.for_call(0, "g0c0")
    if not isinstance(req, bytes):
        list(req)  # render and encode the stream's messages once
    return fds


async def execute(cfg: dict, progress: Callable[[int, float], None] | None = None,
                  stop: asyncio.Event | None = None) -> Struct:
    """Run ``cfg`` (a normalized config) and return ghz's report."""
    fds = await prepare(cfg)
    nprocs = process_count(cfg)
    counters: list = []
    poller = None
    if progress is not None:
        poller = asyncio.get_running_loop().create_task(_poll(counters, progress))
    try:
        if nprocs == 1:
            counters.append(Counter())
            engine = Engine(Plan(cfg, fds), counters[0])
            await engine.connect()
            outcomes = [await engine.run(stop=stop)]
        else:
            outcomes = await _spawn(cfg, fds, nprocs, counters, stop)
    finally:
        if poller:
            poller.cancel()
    results: list[Result] = sorted((r for o in outcomes for r in o.results),
                                   key=lambda r: r.end_ns)
    start = min(o.start_ns for o in outcomes)
    end = max(o.end_ns for o in outcomes)
    reasons = {o.reason for o in outcomes}
    reason = "cancel" if "cancel" in reasons else "timeout" if "timeout" in reasons else "normal"
    return build_report(results, total_ns=end - start, end_reason=reason,
                        options=report_options(cfg, import_paths(cfg)), name=cfg["name"],
                        tags=cfg["tags"], skip_first=cfg["skipFirst"],
                        count_errors=cfg["count-errors"])


async def _poll(counters: list, progress: Callable[[int, float], None]) -> None:
    start = time.monotonic()
    while True:
        progress(sum(c.value for c in counters), time.monotonic() - start)
        await asyncio.sleep(0.1)


async def _spawn(cfg: dict, fds: bytes, nprocs: int, counters: list,
                 stop: asyncio.Event | None) -> list[Outcome]:
    ctx = multiprocessing.get_context("spawn")
    loop = asyncio.get_running_loop()
    pool = ThreadPoolExecutor(max_workers=nprocs + 1)
    conns, procs = [], []
    try:
        for i in range(nprocs):
            ours, theirs = ctx.Pipe()
            counter = ctx.Value("q", 0, lock=False)
            p = ctx.Process(target=_child, args=(Plan(cfg, fds, i, nprocs), theirs, counter),
                            daemon=True, name=f"clawmesh-load-{i}")
            p.start()
            theirs.close()
            conns.append(ours)
            procs.append(p)
            counters.append(counter)
        replies = await asyncio.gather(*(_recv(loop, pool, c) for c in conns))
        errors = [msg for kind, msg in replies if kind != "ready"]
        if errors:
            for c in conns:
                _send(c, ("abort", None))
            raise RunError(errors[0])
        start = time.time_ns() + START_DELAY_NS
        for c in conns:
            c.send(("go", start))
        pending = [loop.create_task(_recv(loop, pool, c)) for c in conns]
        if stop is not None:
            stopper = loop.create_task(stop.wait())
            stopper.add_done_callback(lambda _: [_send(c, ("stop", None)) for c in conns])
        replies = await asyncio.gather(*pending)
        if stop is not None:
            stopper.cancel()
        bad = [msg for kind, msg in replies if kind != "result"]
        if bad:
            raise RunError(bad[0])
        return [msg for _, msg in replies]
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
        pool.shutdown(wait=False, cancel_futures=True)


def _send(conn, msg: tuple) -> None:
    try:
        conn.send(msg)
    except OSError:  # that process has already gone
        pass


async def _recv(loop, pool, conn) -> tuple:
    try:
        return await loop.run_in_executor(pool, conn.recv)
    except EOFError:
        return ("error", "a load worker process exited unexpectedly")


def _child(plan: Plan, conn, counter) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    run_async(_child_main(plan, conn, counter))


async def _child_main(plan: Plan, conn, counter) -> None:
    loop = asyncio.get_running_loop()
    try:
        engine = Engine(plan, counter)
        await engine.connect()
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which exits 1
        conn.send(("error", str(exc)))
        return
    conn.send(("ready", None))
    kind, start = await loop.run_in_executor(None, conn.recv)
    if kind != "go":
        await engine.close()
        return
    stop = asyncio.Event()

    def watch() -> None:
        try:
            conn.recv()
        except (EOFError, OSError):
            pass
        try:
            loop.call_soon_threadsafe(stop.set)
        except RuntimeError:  # the run is over and the loop closed
            pass

    threading.Thread(target=watch, daemon=True).start()
    try:
        outcome = await engine.run(start_wall_ns=start, stop=stop)
    except Exception as exc:  # noqa: BLE001
        conn.send(("error", f"load worker {plan.proc}: {exc!r}"))
        return
    conn.send(("result", outcome))
