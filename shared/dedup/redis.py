"""Redis dedup backend: one shared store for every replica.

Each operation is a single atomic command or a short Lua script, so two replicas can
never both own a key: claim is GET-or-SET-PX in one script (it must return the stored
reply when the key is finished), the pre-filter's fast path is a bare ``SET NX PX``, and
complete/release are compare-and-set on the owner's marker.

The client is made lazily for the running event loop and remade if the loop changed
(a redis.asyncio connection belongs to the loop that opened it; a client kept from a
closed loop fails every call). redis-py reconnects by itself after errors; one
immediate retry covers a pooled connection that died while idle. The Deduplicator
bounds every call with its op timeout, and redis-py drops a connection whose command
was cancelled, so a stalled server cannot poison the pool.
"""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from clawmesh.shared.dedup.base import BackendError, Lookup, Notifier, State

__all__ = ["RedisBackend"]

CLAIM = """
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return false
end
if ARGV[3] ~= '0' and string.sub(v, 1, 1) == 'D' then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return v
"""

COMPLETE = """
local v = redis.call('GET', KEYS[1])
if (not v) or v == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""

RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


class RedisBackend:
    """``RedisBackend("redis://host:6379/0")``; keys are ``prefix + hashed key``."""

    def __init__(self, url: str, *, prefix: str = "clawmesh:dedup:",
                 connect_timeout_s: float = 1.0) -> None:
        self.url = url
        self.prefix = prefix
        self.connect_timeout_s = connect_timeout_s
        self.notifier = Notifier()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: aioredis.Redis | None = None
        self._scripts: dict[str, object] = {}

    def _redis(self) -> aioredis.Redis:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            # A client of another (closed) loop cannot even be closed from here: drop it.
            self._client = aioredis.Redis.from_url(
                self.url, socket_connect_timeout=self.connect_timeout_s,
                retry=Retry(NoBackoff(), 1), health_check_interval=0,
            )
            self._loop = loop
            self._scripts = {name: self._client.register_script(src)
                             for name, src in (("claim", CLAIM), ("complete", COMPLETE),
                                               ("release", RELEASE))}
        return self._client

    async def _run(self, name: str, hkey: str, *args):
        self._redis()
        try:
            return await self._scripts[name](keys=[self.prefix + hkey], args=list(args))
        except RedisError as exc:
            raise BackendError(f"redis {name}: {exc}") from exc

    async def claim(self, hkey: str, marker: bytes, lease_s: float,
                    refresh_ttl_s: float | None) -> Lookup:
        refresh = _ms(refresh_ttl_s) if refresh_ttl_s is not None else 0
        return Lookup.of(await self._run("claim", hkey, marker, _ms(lease_s), refresh))

    async def insert_new(self, hkey: str, marker: bytes, lease_s: float) -> Lookup:
        try:
            inserted = await self._redis().set(self.prefix + hkey, marker, nx=True, px=_ms(lease_s))
        except RedisError as exc:
            raise BackendError(f"redis set: {exc}") from exc
        if inserted:
            return Lookup(State.CLAIMED)
        # Another replica (or an entry older than this process's filter) has it.
        return await self.claim(hkey, marker, lease_s, None)

    async def complete(self, hkey: str, marker: bytes, reply: bytes, ttl_s: float) -> bool:
        done = bool(await self._run("complete", hkey, marker, b"D" + reply, _ms(ttl_s)))
        self.notifier.notify(hkey)
        return done

    async def release(self, hkey: str, marker: bytes) -> bool:
        released = bool(await self._run("release", hkey, marker))
        self.notifier.notify(hkey)
        return released

    async def release_many(self, items: list[tuple[str, bytes]]) -> None:
        if not items:
            return
        try:
            async with self._redis().pipeline(transaction=False) as pipe:
                for hkey, marker in items:
                    pipe.eval(RELEASE, 1, self.prefix + hkey, marker)
                await pipe.execute()
        except RedisError as exc:
            raise BackendError(f"redis release: {exc}") from exc

    async def count(self) -> int:
        """SCANs the prefix: O(keys), for stats scrapes, not for the request path."""
        try:
            return sum([1 async for _ in self._redis().scan_iter(match=self.prefix + "*", count=1000)])
        except RedisError as exc:
            raise BackendError(f"redis scan: {exc}") from exc

    async def aclose(self) -> None:
        client, loop = self._client, self._loop
        self._client, self._loop = None, None
        if client is not None and loop is asyncio.get_running_loop():
            try:
                await client.aclose()
            except (RedisError, OSError, RuntimeError):
                pass
