"""The provider's response cache: deterministic replies, in process (L1) and in Redis (L2).

    cache = ResponseCache.from_settings(settings.provider.cache)          # None when disabled
    lookup = cache.lookup(backend.info, "", turns, tools, 0, CacheOptions(session_id="s1"))
    gen = await cache.get(lookup) if lookup else None     # L1, then L2 (an L2 hit fills L1)
    if gen is None:
        gen = await backend.generate(turns, "", 0, tools)
        if lookup:
            await cache.put(lookup, gen)                   # L2, then L1
    await cache.invalidate(session_tag("acme", "s1"))     # or model_tag("gpt-4o")
    cache.stats()   # {"l1_hits": 0, "l2_hits": 0, "misses": 1, "writes": 1, "bypassed": 0, ...}

**What is cached.** Only deterministic requests, unless a request opts in. A request's
temperature is a proto3 float: 0 is indistinguishable from "not set", which means "the
backend's default". So a request (``CACHE_POLICY_UNSPECIFIED``) is cacheable when its
temperature is 0 *and* its backend is configured with ``temperature: 0`` (an openai backend
then sends it; ``BackendInfo.temperature``). A backend without a configured temperature
samples at its server's default, and its replies are never cached by default.
``CACHE_POLICY_OPT_IN`` caches regardless; ``CACHE_POLICY_BYPASS`` neither reads nor writes.
Only successful replies are stored, and a stream only once it completed.

**Key.** SHA-256 of a canonical JSON (sorted keys, no spaces) of what shapes the reply: the
backend, the model (the backend's default when the request names none, so both spellings
share an entry), the messages as the backend sees them (role, content, tool name, tool calls
and answers; not timestamps or user handles), the tools, ``max_tokens``, ``temperature``,
``top_p`` and ``stop``, and the caller's tenant (no tenant can time another's prompts).

**Tags and invalidation.** An entry is tagged with its model and, when the request names
one, its tenant's session. ``invalidate(tag)`` deletes every entry with that tag from this
process's L1 and from Redis, where each tag has a sorted set of its entries' keys (scored by
their expiry: a write drops members whose entry expired, and the set expires with its
newest entry). Another replica's L1 keeps its copies until they expire. Tags are those of
the request that stored the entry; another session served the same entry does not add its own.

**L1** is ``cachetools.TLRUCache``, not aiocache's ``SimpleMemoryCache``: the latter has no
size bound, arms one event-loop timer per key for its TTL (real time only, tied to one
loop) and costs an await per lookup; TLRUCache is bounded (least recently used go first),
expires by an injectable clock and answers synchronously — as routing's history cache does.
An L1 copy of an L2 entry expires when the L2 entry does (``expires_at``, wall clock).

**L2** is aiocache's ``RedisCache`` (JSON values, TTL'd in Redis), shared by every replica
with the same ``redis_url``. aiocache takes an endpoint and port, so the URL is split here;
redis-py's own retries are off (a timed-out operation drops its connection; the next opens one).

**Redis down.** Each Redis operation is bounded by ``op_timeout_ms``; a failure is counted
(``errors``), logged once (WARNING; INFO when Redis answers again), and the call goes on with
L1 and the backend: the cache never fails a call. For ``PROBE_INTERVAL_S`` after a failure
Redis is not asked at all (each skipped operation counts as an error), then one call probes it.
The server opens the first connection before it serves (``connect``), so no call pays the
handshake within its op timeout.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, replace
from enum import IntEnum
from typing import Any, NamedTuple
from urllib.parse import unquote, urlsplit

from aiocache import RedisCache
from aiocache.serializers import JsonSerializer
from cachetools import TLRUCache
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from clawmesh.services.provider.backends import BackendInfo, Generation, ToolCall, ToolSpec, Turn
from clawmesh.shared.breaker import MONOTONIC, Clock
from clawmesh.shared.context import current
from clawmesh.shared.settings import ResponseCacheSettings

log = logging.getLogger(__name__)

NAMESPACE = "clawmesh:provider:cache:v1"  # v1: the entry format; a new format gets new keys
PROBE_INTERVAL_S = 1.0  # after a Redis failure, Redis is skipped this long; then one call probes it
CONNECT_TIMEOUT_S = 1.0  # connect(): the first connection's handshake, before any call waits on it
COUNTERS = ("l1_hits", "l2_hits", "misses", "writes", "bypassed", "errors")

# KEYS[1]: an entry; KEYS[2..]: its tags' sorted sets. ARGV[1]: the entry's TTL in ms.
TAG_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
for i = 2, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
  redis.call('ZADD', KEYS[i], now + ttl, KEYS[1])
  redis.call('PEXPIRE', KEYS[i], ttl)
end
return #KEYS - 1
"""

# KEYS[1]: a tag's sorted set. Deletes its entries and the set; returns the entries deleted.
INVALIDATE_LUA = """
local keys = redis.call('ZRANGE', KEYS[1], 0, -1)
local deleted = 0
for i = 1, #keys, 1000 do
  deleted = deleted + redis.call('DEL', unpack(keys, i, math.min(i + 999, #keys)))
end
redis.call('DEL', KEYS[1])
return deleted
"""


class Policy(IntEnum):
    """A request's cache policy; the numbers are the proto's ``CachePolicy``."""

    DEFAULT = 0  # cache when deterministic
    BYPASS = 1  # neither read nor write
    OPT_IN = 2  # cache even when not deterministic


_POLICIES = {p.value: p for p in Policy}


@dataclass(frozen=True)
class CacheOptions:
    """What a request says about caching, and its parameters that shape the reply
    (besides the conversation, the tools and ``max_tokens``)."""

    policy: Policy = Policy.DEFAULT
    temperature: float = 0.0  # 0: not set, the backend's default
    top_p: float = 0.0
    stop: tuple[str, ...] = ()
    session_id: str = ""
    tenant: str = ""

    @classmethod
    def of(cls, request: Any) -> CacheOptions:
        """The options of a ``GenerateRequest`` or ``GenerateStreamRequest``; the tenant is the call's.
        An unknown policy number (a newer client) counts as the default."""
        params, info = request.params, current()
        policy = _POLICIES.get(request.cache, Policy.DEFAULT)
        return cls(policy, params.temperature, params.top_p, tuple(params.stop), request.session_id,
                   info.tenant if info is not None else "")


class Lookup(NamedTuple):
    """A cacheable request: its entry's key and tags."""

    key: str
    tags: frozenset[str]


class Invalidated(NamedTuple):
    """Entries deleted by ``invalidate``: from this process's L1, and from Redis."""

    l1: int
    l2: int


class CacheUnavailable(Exception):
    """Redis could not be reached to invalidate (L1 was cleared; invalidating again is safe)."""


class _RedisDown(Exception):
    """An L2 operation failed, timed out, or was skipped while Redis is down (counted)."""


@dataclass(frozen=True)
class _Entry:
    gen: Generation  # cached=True
    tags: frozenset[str]
    expires: float  # on the cache's clock


def cacheable(options: CacheOptions, backend_temperature: float | None) -> bool:
    """Whether a request's reply may be cached (module docstring, "What is cached")."""
    if options.policy is Policy.BYPASS:
        return False
    if options.policy is Policy.OPT_IN:
        return True
    return options.temperature == 0 and backend_temperature == 0


def cache_key(backend: str, model: str, turns: Sequence[Turn], tools: Sequence[ToolSpec],
              max_tokens: int, options: CacheOptions) -> str:
    """SHA-256 (hex) of the canonical JSON of what shapes the reply (module docstring, "Key")."""
    doc = {
        "tenant": options.tenant, "backend": backend, "model": model,
        "messages": [{"role": t.role, "content": t.content, "name": t.name, "tool_call_id": t.tool_call_id,
                      "tool_calls": [[c.id, c.name, c.arguments] for c in t.tool_calls]} for t in turns],
        "tools": [{"name": s.name, "description": s.description, "parameters": s.parameters} for s in tools],
        "max_tokens": max_tokens, "temperature": options.temperature, "top_p": options.top_p,
        "stop": list(options.stop),
    }
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def session_tag(tenant: str, session_id: str) -> str:
    return "session:" + json.dumps([tenant, session_id])


def model_tag(model: str) -> str:
    return "model:" + model


def redis_cache(url: str, op_timeout_s: float) -> RedisCache:
    """An aiocache ``RedisCache`` for ``redis[s]://[user:password@]host[:port][/db]``, without
    redis-py retries. ``ResponseCache`` bounds each operation; socket timeouts are a backstop
    long enough for a connection's handshake (``connect``)."""
    parts = urlsplit(url)
    socket_timeout_s = max(op_timeout_s, CONNECT_TIMEOUT_S)
    pool: dict[str, Any] = {"socket_timeout": socket_timeout_s, "retry": Retry(NoBackoff(), 0)}
    if parts.username:
        pool["username"] = unquote(parts.username)
    return RedisCache(
        serializer=JsonSerializer(), namespace=NAMESPACE, timeout=None,  # ResponseCache bounds each op
        endpoint=parts.hostname or "127.0.0.1", port=parts.port or 6379, db=int(parts.path.strip("/") or 0),
        password=unquote(parts.password) if parts.password else None, ssl=parts.scheme == "rediss",
        create_connection_timeout=socket_timeout_s, connection_pool_kwargs=pool,
    )


class ResponseCache:
    """Read-through L1 → L2 → backend; writes go to both. See the module docstring.

    ``clock`` (monotonic seconds) times L1 expiry and the Redis probe interval; ``wall``
    (epoch seconds) stamps when an entry expires, for the L1 copies other replicas take.
    """

    def __init__(self, ttl_s: float = 3600.0, l1_max_entries: int = 10_000, l2: RedisCache | None = None,
                 *, op_timeout_s: float = 0.05, clock: Clock = MONOTONIC,
                 wall: Clock = time.time) -> None:
        self.ttl_s = ttl_s
        self.l2 = l2
        self.op_timeout_s = op_timeout_s
        self._clock = clock
        self._wall = wall
        self._l1: TLRUCache[str, _Entry] = TLRUCache(l1_max_entries, ttu=_expiry, timer=clock)
        self._counts = dict.fromkeys(COUNTERS, 0)
        self._down_since: float | None = None
        self._probe_at = 0.0

    @classmethod
    def from_settings(cls, cfg: ResponseCacheSettings, *, clock: Clock = MONOTONIC) -> ResponseCache | None:
        """The configured cache (L2 when ``redis_url`` is set), or None when it is disabled.
        Call it inside the event loop that will use it."""
        if not cfg.enabled:
            return None
        op_timeout_s = cfg.op_timeout_ms / 1000.0
        l2 = redis_cache(cfg.redis_url, op_timeout_s) if cfg.redis_url else None
        return cls(cfg.ttl_s, cfg.l1_max_entries, l2, op_timeout_s=op_timeout_s, clock=clock)

    async def connect(self) -> None:
        """Open a Redis connection now (within ``CONNECT_TIMEOUT_S``), so the first call does not pay
        the handshake within its op timeout. Failing, Redis counts as down until a call probes it."""
        if self.l2 is None:
            return
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await self.l2.raw("ping")
        except Exception as exc:  # logged; the calls go on without Redis
            self._failed(exc, self._clock())

    def lookup(self, backend: BackendInfo, model: str, turns: Sequence[Turn], tools: Sequence[ToolSpec],
               max_tokens: int, options: CacheOptions) -> Lookup | None:
        """The request's key and tags; None (counted as ``bypassed``) when it is not to be cached."""
        if not cacheable(options, backend.temperature):
            self._counts["bypassed"] += 1
            return None
        model = model or backend.models[0]
        tags = {model_tag(model)}
        if options.session_id:
            tags.add(session_tag(options.tenant, options.session_id))
        return Lookup(cache_key(backend.name, model, turns, tools, max_tokens, options), frozenset(tags))

    async def get(self, lookup: Lookup) -> Generation | None:
        """The cached reply (``cached=True``) from L1, else from L2 (kept in L1 then), else None."""
        entry = self._l1.get(lookup.key)
        if entry is not None:
            self._counts["l1_hits"] += 1
            return _copy(entry.gen)
        if self.l2 is not None:
            with suppress(_RedisDown):
                entry = self._decode(await self._redis(self.l2.get, lookup.key))
        if entry is None:
            self._counts["misses"] += 1
            return None
        self._l1[lookup.key] = entry
        self._counts["l2_hits"] += 1
        return _copy(entry.gen)

    async def put(self, lookup: Lookup, gen: Generation) -> None:
        """Keep ``gen`` for ``ttl_s``: in Redis (when it answers in time), then in L1."""
        expires_at = self._wall() + self.ttl_s
        if self.l2 is not None:
            with suppress(_RedisDown):
                await self._redis(self._store, lookup, _encode(gen, lookup.tags, expires_at))
        self._l1[lookup.key] = _Entry(replace(gen, cached=True), lookup.tags, self._clock() + self.ttl_s)
        self._counts["writes"] += 1

    async def invalidate(self, tag: str) -> Invalidated:
        """Delete every entry tagged ``tag`` (``session_tag``, ``model_tag``) from L1 and Redis.
        Raises ``CacheUnavailable`` when Redis does not answer (L1 is cleared all the same)."""
        doomed = []
        for key in list(self._l1):
            entry = self._l1.get(key)
            if entry is not None and tag in entry.tags:
                doomed.append(key)
        for key in doomed:
            with suppress(KeyError):  # expired meanwhile
                del self._l1[key]
        deleted = 0
        if self.l2 is not None:
            try:
                deleted = await self._redis(self.l2.raw, "eval", INVALIDATE_LUA, 1, self._tag_key(tag))
            except _RedisDown as exc:
                raise CacheUnavailable(f"redis unavailable: tag {tag!r} not invalidated there") from exc
        log.info("response cache invalidated", extra={"tag": tag, "l1": len(doomed), "l2": deleted})
        return Invalidated(len(doomed), int(deleted))

    def stats(self) -> dict[str, int]:
        """The counters since start (``COUNTERS``) and ``l1_entries``, the entries in L1 now."""
        self._l1.expire()
        return {**self._counts, "l1_entries": len(self._l1)}

    async def aclose(self) -> None:
        """Log the counters and close the Redis connections."""
        log.info("response cache closed", extra=self.stats())
        if self.l2 is not None:
            await self.l2.client.aclose()  # aiocache's close() calls redis-py's deprecated close()

    async def _store(self, lookup: Lookup, doc: dict[str, Any]) -> None:
        """Tags first: an entry whose tagging failed is never stored (it could not be invalidated)."""
        keys = [self.l2.build_key(lookup.key), *(self._tag_key(t) for t in sorted(lookup.tags))]
        await self.l2.raw("eval", TAG_LUA, len(keys), *keys, round(self.ttl_s * 1000))
        await self.l2.set(lookup.key, doc, ttl=float(self.ttl_s))  # a float: PSETEX (SETEX is deprecated)

    def _tag_key(self, tag: str) -> str:
        return self.l2.build_key("tag:" + tag)

    async def _redis(self, op: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """``op(*args)`` on Redis within the op timeout; ``_RedisDown`` (counted) when it fails, or
        at once while Redis is skipped after a failure."""
        now = self._clock()
        if self._down_since is not None:
            if now < self._probe_at:
                self._counts["errors"] += 1
                raise _RedisDown("skipped")
            self._probe_at = now + PROBE_INTERVAL_S  # this call probes; the others keep skipping
        try:
            async with asyncio.timeout(self.op_timeout_s):
                result = await op(*args)
        except Exception as exc:  # whatever Redis does, the call goes on without it
            self._counts["errors"] += 1
            self._failed(exc, now)
            raise _RedisDown(str(exc)) from exc
        if self._down_since is not None:
            log.info("response cache: redis available again",
                     extra={"down_s": round(self._clock() - self._down_since, 3)})
            self._down_since = None
        return result

    def _failed(self, exc: Exception, since: float) -> None:
        """Redis is down (logged once): skip it for ``PROBE_INTERVAL_S``."""
        self._probe_at = self._clock() + PROBE_INTERVAL_S
        if self._down_since is None:
            self._down_since = since
            log.warning("response cache: redis unavailable, serving from L1 and the backends",
                        extra={"error": f"{type(exc).__name__}: {exc}"})

    def _decode(self, doc: Any) -> _Entry | None:
        """An L2 value as an L1 entry expiring with it; None when absent, expired or malformed."""
        if doc is None:
            return None
        try:
            gen = Generation(doc["content"], doc["model"], doc["prompt_tokens"], doc["completion_tokens"],
                             doc["finish_reason"], [ToolCall(*c) for c in doc["tool_calls"]], cached=True)
            left = min(self.ttl_s, doc["expires_at"] - self._wall())
            tags = frozenset(doc["tags"])
        except (KeyError, TypeError, ValueError):
            self._counts["errors"] += 1
            return None
        return _Entry(gen, tags, self._clock() + left) if left > 0 else None


def _expiry(_key: str, entry: _Entry, _now: float) -> float:
    return entry.expires


def _copy(gen: Generation) -> Generation:
    return replace(gen, tool_calls=list(gen.tool_calls))


def _encode(gen: Generation, tags: frozenset[str], expires_at: float) -> dict[str, Any]:
    return {"content": gen.content, "model": gen.model, "prompt_tokens": gen.prompt_tokens,
            "completion_tokens": gen.completion_tokens, "finish_reason": gen.finish_reason,
            "tool_calls": [[c.id, c.name, c.arguments] for c in gen.tool_calls],
            "tags": sorted(tags), "expires_at": expires_at}
