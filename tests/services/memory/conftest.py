"""Memory stores on every backend, with a clock the test moves.

    async def test_x(make_store, clock):
        store = await make_store(max_messages=3, session_ttl_s=60)
        clock.advance(61)

``backend`` runs a test on SQLite (reads on a thread, and inline on the event
loop) and on Redis (the real server of the ``redis_url`` fixture, flushed per
test, AOF off: ``durability="none"``; tests/services/memory/test_memory_durability.py
runs Redis with AOF). Two stores made in one Redis test share the data, like replicas.
"""

from __future__ import annotations

import subprocess

import pytest

from clawmesh.services.memory.records import Limits
from clawmesh.services.memory.redis_store import RedisStore
from clawmesh.services.memory.sqlite_store import SqliteStore
from tests.redis_server import RedisServer

BACKENDS = ["sqlite", "sqlite-inline", "redis"]
START_NS = 1_700_000_000 * 10**9


class Clock:
    """Nanoseconds that stand still until the test moves them."""

    def __init__(self, now_ns: int = START_NS) -> None:
        self.now = now_ns

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * 10**9)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
async def make_store(request, backend, tmp_path, clock):
    """make_store(clock=…, **limits) -> an open store of this test's backend (closed after)."""
    url = request.getfixturevalue("redis_url") if backend == "redis" else None
    opened = []

    async def make(clock=clock, **limits):
        limits = Limits(**{"max_messages": 5, **limits})
        if url:
            store = await RedisStore.open(url, limits, clock, durability="none")
        else:
            store = await SqliteStore.open(tmp_path / "data", limits, clock,
                                           inline_reads=backend == "sqlite-inline")
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.close()


@pytest.fixture
async def store(make_store):
    """A store with a window of 5 messages, no TTL."""
    return await make_store()


class ConfiguredRedis(RedisServer):
    """A private redis-server started with ``args`` (e.g. AOF on) instead of the fixture's
    (AOF off); ``kill()``/``restart()`` keep its port and directory, so an AOF survives."""

    def __init__(self, *args: str) -> None:
        self.args = args
        super().__init__()

    def _spawn(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--dir", self.dir, *self.args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self._wait_ready()


@pytest.fixture
def make_redis():
    """make_redis(*args) -> a ConfiguredRedis, stopped (and its directory removed) after the test."""
    made: list[ConfiguredRedis] = []

    def make(*args: str) -> ConfiguredRedis:
        made.append(ConfiguredRedis(*args))
        return made[-1]

    yield make
    for redis in made:
        redis.stop()
