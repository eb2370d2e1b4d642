"""The load engine of one process: channels, the shared tick queue, workers and the
concurrency schedule (ghz runner/requester.go + worker.go).

    engine = Engine(Plan(cfg, fds))          # proc 0 of 1: the whole run
    await engine.connect()
    outcome = await engine.run()             # Outcome(results, start_ns, end_ns, reason)

With several processes each engine takes the request numbers r = proc (mod nprocs) and
the workers k = proc (mod nprocs), so together they follow one ghz schedule.
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass, field

import grpc

from clawmesh.loadtest.calls import CallOpts, Payload, do_call, shape_of
from clawmesh.loadtest.protodesc import find_method
from clawmesh.loadtest.report import Result
from clawmesh.loadtest.schedule import Ticks, make_pacer, share, worker_ticks

_KINDS = {"unary": "unary_unary", "server": "unary_stream", "client": "stream_unary",
          "bidi": "stream_stream"}
CLOSING = Result(0, 0, "Unavailable", "rpc error: code = Unavailable desc = transport is closing")


class RunError(RuntimeError):
    """The run could not start (connection, descriptor or data problem); ghz exits 1."""


@dataclass
class Plan:
    """What one process needs (picklable): config, descriptors, and its share."""

    cfg: dict
    fds: bytes
    proc: int = 0
    nprocs: int = 1


@dataclass
class Outcome:
    results: list[Result] = field(default_factory=list)
    start_ns: int = 0  # wall clock at the start of load (after connecting)
    end_ns: int = 0
    reason: str = "normal"  # normal | timeout | cancel


class Counter:
    """Completed-call counter (a multiprocessing Value has the same ``value``)."""

    value = 0


def channel_options(cfg: dict, index: int) -> list[tuple]:
    opts: list[tuple] = [("grpc.use_local_subchannel_pool", 1), ("clawmesh.conn", index)]
    if cfg["authority"]:
        opts.append(("grpc.default_authority", cfg["authority"]))
    if cfg["cname"]:
        opts.append(("grpc.ssl_target_name_override", cfg["cname"]))
    if cfg["keepalive"] > 0:
        ms = cfg["keepalive"] // 10**6
        opts += [("grpc.keepalive_time_ms", ms), ("grpc.keepalive_timeout_ms", ms)]
    if cfg["lb-strategy"]:
        opts.append(("grpc.lb_policy_name", cfg["lb-strategy"]))
    sizes = {"recv": cfg["max-recv-message-size"], "send": cfg["max-send-message-size"]}
    for kind, text in sizes.items():
        limit = parse_bytes(text) if text else (2**31 - 1)
        opts.append((f"grpc.max_{'receive' if kind == 'recv' else 'send'}_message_length",
                     limit))
    return opts


def parse_bytes(text: str) -> int:
    """go-humanize ParseBytes for the common forms: ``42 MB``, ``1024mb``, ``2000mib``."""
    import re

    m = re.fullmatch(r"\s*([\d.]+)\s*([a-zA-Z]*)\s*", text)
    if not m:
        raise RunError(f"invalid byte size {text!r}")
    unit = m.group(2).lower().rstrip("b") or ""
    scale = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "ki": 2**10, "mi": 2**20,
             "gi": 2**30, "ti": 2**40}.get(unit)
    if scale is None:
        raise RunError(f"invalid byte size {text!r}")
    return min(int(float(m.group(1)) * scale), 2**31 - 1)


def make_channel(cfg: dict, index: int = 0) -> grpc.aio.Channel:
    """One connection, TLS unless ``insecure`` (like ghz)."""
    opts = channel_options(cfg, index)
    compression = grpc.Compression.Gzip if cfg["enable-compression"] else None
    if cfg["insecure"]:
        return grpc.aio.insecure_channel(cfg["host"], options=opts, compression=compression)
    if cfg["skipTLS"]:
        raise RunError("skipTLS is not supported by clawmesh load (gRPC Python cannot skip "
                       "verification); pass cacert instead")

    def read(key: str) -> bytes | None:
        return open(cfg[key], "rb").read() if cfg[key] else None

    creds = grpc.ssl_channel_credentials(read("cacert"), read("key"), read("cert"))
    return grpc.aio.secure_channel(cfg["host"], creds, options=opts, compression=compression)


class Ticker:
    """The shared tick queue: one worker at a time waits for the pacer (an unbuffered
    channel in ghz); unpaced runs hand out numbers without waiting."""

    def __init__(self, plan: Plan, stopped: asyncio.Event) -> None:
        cfg = plan.cfg
        self.ticks = Ticks(make_pacer(cfg), plan.proc, plan.nprocs)
        self.paced = not (cfg["load-schedule"] == "const" and cfg["rps"] == 0)
        self.stopped, self.exhausted = stopped, asyncio.Event()
        self.lock = asyncio.Lock()
        self.t0 = 0.0

    async def take(self) -> int | None:
        if self.exhausted.is_set() or self.stopped.is_set():
            return None
        if not self.paced:
            return self._next(0)
        async with self.lock:
            if self.exhausted.is_set() or self.stopped.is_set():
                return None
            loop = asyncio.get_running_loop()
            r = self._next(int((loop.time() - self.t0) * 1e9))
            wait = self._wait
            if r is not None and wait > 0:
                if wait < 5_000_000:
                    await asyncio.sleep(wait / 1e9)
                else:
                    try:
                        await asyncio.wait_for(self.stopped.wait(), wait / 1e9)
                    except TimeoutError:
                        pass
                if self.stopped.is_set():
                    return None
            return r

    def _next(self, elapsed: int) -> int | None:
        nxt = self.ticks.next(elapsed)
        if nxt is None:
            self.exhausted.set()
            return None
        r, self._wait = nxt
        return r


class Engine:
    """One process's share of a run."""

    def __init__(self, plan: Plan, counter: Counter | None = None) -> None:
        self.plan, self.cfg = plan, plan.cfg
        self.method = find_method(plan.fds, self.cfg["call"])
        self.shape = shape_of(self.method)
        self.payload = Payload(self.cfg, self.method)
        self.opts = CallOpts(self.cfg)
        self.counter = counter or Counter()
        self.path = f"/{self.method.containing_service.full_name}/{self.method.name}"
        self.nconn = max(1, share(self.cfg["connections"], plan.proc, plan.nprocs))
        self.channels: list[grpc.aio.Channel] = []
        self.results: list[Result] = []
        self.stopped = asyncio.Event()
        self.closing = False
        self.reason = "normal"
        self.tasks: list[asyncio.Task] = []
        self.inflight: set[asyncio.Task] = set()

    async def connect(self) -> None:
        self.channels = [make_channel(self.cfg, self.plan.proc + i * self.plan.nprocs)
                         for i in range(self.nconn)]
        timeout = self.cfg["connect-timeout"] / 1e9 or None
        try:
            await asyncio.wait_for(asyncio.gather(*(c.channel_ready() for c in self.channels)),
                                   timeout)
        except TimeoutError:
            await self.close()
            raise RunError(f"cannot connect to {self.cfg['host']} within "
                           f"{self.cfg['connect-timeout'] / 1e9:g}s") from None
        kind = _KINDS[self.shape]
        self.callables = [getattr(c, kind)(self.path) for c in self.channels]

    async def close(self) -> None:
        for c in self.channels:
            await c.close()

    def stop(self, reason: str) -> None:
        """End the run now (duration elapsed: ``timeout``; interrupted: ``cancel``)."""
        if not self.stopped.is_set():
            self.reason = reason
            self.stopped.set()

    def _record(self, res: Result) -> None:
        if self.closing:
            if self.cfg["duration-stop"] == "ignore":
                return
            if res.status in ("Canceled", "Unavailable"):
                res = CLOSING._replace(end_ns=res.end_ns, latency_ns=res.latency_ns)
        self.results.append(res)
        self.counter.value += 1

    async def _worker(self, k: int, local: int, flag: list[bool]) -> None:
        conn = local % self.nconn
        wid = f"g{k}c{self.plan.proc + conn * self.plan.nprocs}"
        wid = f"{self.cfg['name']}:{wid}" if self.cfg["name"] else wid
        multicallable = self.callables[conn]
        while not flag[0]:
            r = await self.ticker.take()
            if r is None:
                return
            req, meta = self.payload.for_call(r, wid)
            if self.cfg["async"]:
                task = asyncio.ensure_future(self._one(multicallable, req, meta))
                self.inflight.add(task)
                task.add_done_callback(self.inflight.discard)
            else:
                await self._one(multicallable, req, meta)

    async def _one(self, multicallable, req, meta) -> None:
        self._record(await do_call(multicallable, self.shape, req, meta, self.opts))

    async def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        active: collections.deque = collections.deque()
        started = total = 0
        for t, delta in worker_ticks(self.cfg):
            delay = self.ticker.t0 + t / 1e9 - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            total += delta
            want = share(total, self.plan.proc, self.plan.nprocs)
            while len(active) < want:
                flag = [False]
                k = self.plan.proc + started * self.plan.nprocs
                self.tasks.append(loop.create_task(self._worker(k, started, flag)))
                active.append(flag)
                started += 1
            while len(active) > want:
                active.popleft()[0] = True

    async def run(self, start_wall_ns: int | None = None,
                  stop: asyncio.Event | None = None) -> Outcome:
        """Run to the end of the schedule, the duration, or ``stop`` (reason ``cancel``)."""
        loop = asyncio.get_running_loop()
        if start_wall_ns is not None:
            await asyncio.sleep(max(0.0, (start_wall_ns - time.time_ns()) / 1e9))
        self.ticker = Ticker(self.plan, self.stopped)
        start_ns, self.ticker.t0 = time.time_ns(), loop.time()
        timer = None
        if self.cfg["duration"] > 0:
            timer = loop.call_later(self.cfg["duration"] / 1e9, self.stop, "timeout")
        sched = loop.create_task(self._schedule())
        waits = [loop.create_task(self.ticker.exhausted.wait()),
                 loop.create_task(self.stopped.wait())]
        if stop is not None:
            waits.append(loop.create_task(stop.wait()))
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        if stop is not None and stop.is_set():
            self.stop("cancel")
        for w in waits:
            w.cancel()
        sched.cancel()
        if timer:
            timer.cancel()
        if self.stopped.is_set() and self.cfg["duration-stop"] != "wait":
            self.closing = True
            await self.close()
        await asyncio.gather(*self.tasks, return_exceptions=False)
        if self.inflight:
            await asyncio.gather(*list(self.inflight))
        end_ns = time.time_ns()
        await self.close()
        return Outcome(self.results, start_ns, end_ns, self.reason)
