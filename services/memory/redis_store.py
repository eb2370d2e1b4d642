"""Per-session chat history on Redis: the memory backend that N replicas share.

    store = await RedisStore.open("redis://127.0.0.1:6379/0", Limits(session_ttl_s=86400))
    await store.append("t1", "s1", [Message(role=2, content="hi")], "key-1")
    await store.close()

Every write is one Lua script (``redis_scripts.py``): sequence numbers, the
idempotency check, the window and token trimming, expiry and the counters
change together or not at all, whichever replica runs it. Reads of one session
are one read-only script too (its metadata and messages agree).

Durability is the Redis server's: a script's writes are acknowledged after
Redis has appended them to its AOF and, with ``appendfsync always``, fsync'd
it. ``durability`` is the weakest setting the store accepts (``always`` by
default): at open it reads ``CONFIG GET appendonly/appendfsync`` and refuses to
start on a weaker server, unless ``configure`` lets it ``CONFIG SET`` them (a
server whose CONFIG command is disabled is only warned about: it cannot be
checked). See README "Memory backends" for what each setting can lose.

Expiry: each session's keys carry a native ``PEXPIRE`` of its TTL plus one
sweep interval, refreshed by every append, so Redis frees an idle session even
when no replica runs; the sweeper (``expire``, any replica, concurrently safe)
normally gets there first and counts it. Reads decide "expired" by the store's
injected clock, like the SQLite backend. Idempotency keys are their own keys
with a native ``PX`` of their TTL, tagged with the session's epoch, so a
deleted session's keys cannot match its next incarnation.

Search scans the session's messages (a window: at most ``max_messages``, 200
by default) in this process with the same word splitting as SQLite's FTS5
tokenizer (``records.words``). Plain Redis has no full-text index (RediSearch
is a module most servers lack), and an inverted index per session would cost a
write per word on every append and its own trimming in step with the window,
to speed up a scan of a few hundred messages that takes well under a
millisecond of Redis time.

Not for Redis Cluster: a script touches the session's keys and tenant-wide ones.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import contextmanager

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from clawmesh.services.memory import redis_scripts
from clawmesh.services.memory.records import (
    AppendResult,
    Expired,
    History,
    Limits,
    Message,
    SessionInfo,
    SessionPage,
    Stats,
    ToolCall,
    decode_page_token,
    encode_page_token,
    message_tokens,
    words,
)
from clawmesh.services.memory.store import Clock, MemoryStore
from clawmesh.shared.errors import NotFound, Unavailable

log = logging.getLogger(__name__)

DURABILITY = ("none", "everysec", "always")  # weakest first
COUNTERS = ("trimmed_messages", "expired_sessions", "expired_messages")
_SCAN = 500  # sessions per round trip when listing or totalling a tenant
_MAX_AFTER = 2**53  # sequences above this cannot exist; keeps Lua's numbers exact


def session_member(tenant: str, session_id: str) -> str:
    """``"<len>.<tenant><len>.<session>"``: unambiguous whatever the ids contain."""
    return f"{len(tenant)}.{tenant}{len(session_id)}.{session_id}"


def parse_member(member: str) -> tuple[str, str]:
    """(tenant, session id) of a ``session_member``."""
    size, _, rest = member.partition(".")
    tenant, rest = rest[: int(size)], rest[int(size) :]
    size, _, session_id = rest.partition(".")
    return tenant, session_id


def _encode(m: Message, now_ns: int) -> bytes:
    """A stored message: "<tokens> <bytes> <json>" (the sizes readable by the scripts)."""
    calls = [[c.id, c.name, c.arguments_json] for c in m.tool_calls]
    body = json.dumps([m.role, m.content, m.name, m.created_ns or now_ns, calls, m.tool_call_id],
                      ensure_ascii=False, separators=(",", ":"))
    return f"{message_tokens(m)} {len(m.content.encode())} {body}".encode()


def _decode(item: bytes, sequence: int) -> Message:
    tokens, _, body = item.split(b" ", 2)
    role, content, name, created_ns, calls, tool_call_id = json.loads(body)
    return Message(role=role, content=content, name=name, created_ns=created_ns,
                   token_count=int(tokens), tool_calls=tuple(ToolCall(*c) for c in calls),
                   tool_call_id=tool_call_id, sequence=sequence)


@contextmanager
def _unavailable_on_redis_errors():
    """A Redis that does not answer is UNAVAILABLE (retryable), not a bug."""
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError) as exc:
        raise Unavailable(f"memory backend (redis) unavailable: {exc}", retry_after_s=0.1) from exc


class RedisStore(MemoryStore):
    """Per-(tenant, session) message history in one Redis, shared by every replica.

    Build with ``await RedisStore.open(url, limits)``.
    """

    def __init__(self, client: aioredis.Redis, limits: Limits, clock: Clock = time.time_ns,
                 prefix: str = "clawmesh:memory:") -> None:
        super().__init__(limits, clock)
        self._r = client
        self.prefix = prefix
        self._scripts = {name: client.register_script(getattr(redis_scripts, name.upper()))
                         for name in ("append", "history", "delete", "expire")}

    @classmethod
    async def open(cls, url: str, limits: Limits, clock: Clock = time.time_ns, *,
                   prefix: str = "clawmesh:memory:", durability: str = "always",
                   configure: bool = False, timeout_s: float = 2.0, max_connections: int = 32) -> RedisStore:
        """Connect, check the server's durability (see the module doc), return the store.

        At most ``max_connections`` connections: a call beyond waits for a free one
        (up to ``timeout_s``), rather than opening a connection per concurrent call.
        """
        if durability not in DURABILITY:
            raise ValueError(f"durability must be one of {DURABILITY}")
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=timeout_s, socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            # No retries inside redis-py: a script re-sent after a lost reply would append twice.
            retry=Retry(NoBackoff(), 0), health_check_interval=0)
        client = aioredis.Redis.from_pool(pool)  # closing the client closes the pool
        store = cls(client, limits, clock, prefix)
        try:
            await store.check_durability(durability, configure)
        except BaseException:
            await client.aclose()
            raise
        return store

    async def close(self) -> None:
        await super().close()
        await self._r.aclose()

    # -- durability -------------------------------------------------------------------------

    async def persistence(self) -> str:
        """The server's AOF durability: "always", "everysec" or "none" (AOF off or fsync "no")."""
        conf = {_str(k): _str(v) for k, v in (await self._r.config_get("append*")).items()}
        if conf.get("appendonly") != "yes":
            return "none"
        return conf.get("appendfsync") if conf.get("appendfsync") in DURABILITY else "none"

    async def check_durability(self, want: str, configure: bool) -> None:
        """Refuse (RuntimeError) a server less durable than ``want``, or ``configure`` it."""
        if want == "none":
            return
        try:
            have = await self.persistence()
        except ResponseError as exc:  # CONFIG renamed or disabled, as on managed Redis
            log.warning("memory: cannot read the Redis persistence settings (%s): unless it runs with "
                        "appendonly yes and appendfsync %s, acknowledged appends can be lost", exc, want)
            return
        if DURABILITY.index(have) >= DURABILITY.index(want):
            return
        if not configure:
            raise RuntimeError(
                f"memory: Redis persistence is {have!r}, memory.redis_durability requires {want!r}: "
                f"acknowledged appends could be lost. Start redis-server with --appendonly yes "
                f"--appendfsync {want}, or set memory.redis_configure=true to let memory set it, or "
                f"accept the loss with memory.redis_durability=everysec|none")
        await self._r.config_set("appendfsync", want)
        await self._r.config_set("appendonly", "yes")
        await self._wait_aof_on()
        log.warning("memory: set Redis appendonly yes, appendfsync %s (was %r)", want, have)

    async def _wait_aof_on(self, timeout_s: float = 30.0) -> None:
        """Wait until turning AOF on has finished its first rewrite (writes are logged)."""
        deadline = time.monotonic() + timeout_s
        while True:
            info = await self._r.info("persistence")
            if (info.get("aof_enabled") == 1 and not info.get("aof_rewrite_in_progress")
                    and not info.get("aof_rewrite_scheduled")):
                return
            if time.monotonic() > deadline:
                raise RuntimeError("memory: Redis did not finish enabling its AOF in time")
            await asyncio.sleep(0.05)  # polling a server we don't control

    # -- keys -------------------------------------------------------------------------------

    def _key(self, kind: str, rest: str = "") -> bytes:
        return f"{self.prefix}{kind}{rest}".encode()

    def _session_keys(self, tenant: str, session_id: str) -> tuple[str, bytes, bytes]:
        member = session_member(tenant, session_id)
        return member, self._key("s:", member), self._key("m:", member)

    def _ms(self) -> tuple[int, int]:
        now = self._clock()
        return now, now // 1_000_000

    def _ttl_ms(self) -> int:
        return int(self.limits.session_ttl_s * 1000)

    # -- the contract -----------------------------------------------------------------------

    async def _append(self, tenant: str, session_id: str, messages: list[Message], key: str) -> AppendResult:
        member, meta, msgs = self._session_keys(tenant, session_id)
        now_ns, now_ms = self._ms()
        limits = self.limits
        ttl = self._ttl_ms()
        keys = [meta, msgs, self._key("t:", tenant), self._key("expiry"), self._key("epoch"),
                self._key("c:", tenant), self._key("counters"), self._key("i:", f"{member}:{key}")]
        args = [session_id, member, now_ns, now_ms, ttl, max(int(limits.idempotency_ttl_s * 1000), 1),
                limits.max_messages, limits.max_tokens, "1" if key else "0",
                ttl + int(limits.sweep_interval_s * 1000), now_ns // 1000,
                *(_encode(m, now_ns) for m in messages)]
        with _unavailable_on_redis_errors():
            duplicate, epoch, first, count = await self._scripts["append"](keys=keys, args=args)
        return AppendResult(list(range(first, first + count)), bool(duplicate), epoch)

    async def _fetch(self, tenant: str, session_id: str, limit: int, after: int):
        """(last, count, epoch, newest ``limit`` stored messages above ``after``, undecoded)."""
        _, meta, msgs = self._session_keys(tenant, session_id)
        args = [self._ms()[1], self._ttl_ms(), limit, min(after, _MAX_AFTER)]
        with _unavailable_on_redis_errors():
            return await self._scripts["history"](keys=[meta, msgs], args=args)

    async def history(
        self, tenant: str, session_id: str, limit: int = 0, token_budget: int = 0, after_sequence: int = 0
    ) -> History:
        after = max(after_sequence, 0)
        last, count, epoch, items = await self._fetch(tenant, session_id, limit or self.limits.max_messages,
                                                      after)
        if not last:
            return History([], 0, False)
        first = last - len(items) + 1
        kept: list[Message] = []
        used = 0
        for i in range(len(items) - 1, -1, -1):  # newest first, decoded only while in budget
            m = _decode(items[i], first + i)
            if token_budget and used + m.token_count > token_budget:
                break
            used += m.token_count
            kept.append(m)
        kept.reverse()
        available = min(count, max(last - after, 0))
        return History(kept, count, truncated=len(kept) < available, last_sequence=last,
                       session_epoch=epoch)

    async def _search(self, tenant: str, session_id: str, terms: list[str], limit: int) -> list[Message]:
        last, _, _, items = await self._fetch(tenant, session_id, _MAX_AFTER, 0)
        wanted = set(terms)
        hits: list[Message] = []
        for i, item in enumerate(reversed(items)):  # newest first, decoded only until enough
            m = _decode(item, last - i)
            if wanted <= set(words(m.content)):
                hits.append(m)
                if len(hits) == limit:
                    break
        return hits

    async def delete_session(self, tenant: str, session_id: str) -> int:
        member, meta, msgs = self._session_keys(tenant, session_id)
        keys = [meta, msgs, self._key("t:", tenant), self._key("expiry")]
        with _unavailable_on_redis_errors():
            deleted = await self._scripts["delete"](
                keys=keys, args=[session_id, member, self._ms()[1], self._ttl_ms()])
        if deleted < 0:
            raise NotFound(f"session {session_id!r} not found")
        return deleted

    async def _live_sessions(self, tenant: str, after: str | None, want: int):
        """Up to ``want`` (session id, meta) of the tenant's live sessions with an id above ``after``."""
        index = self._key("t:", tenant)
        low = b"(" + after.encode() if after is not None else b"-"
        _, now_ms = self._ms()
        ttl = self._ttl_ms()
        found: list[tuple[str, list]] = []
        while len(found) < want:
            with _unavailable_on_redis_errors():
                ids = await self._r.zrangebylex(index, low, b"+", start=0, num=_SCAN)
                if not ids:
                    break
                pipe = self._r.pipeline(transaction=False)
                for sid in ids:
                    pipe.hmget(self._session_keys(tenant, sid.decode())[1],
                               "count", "tokens", "bytes", "created", "updated", "touched")
                metas = await pipe.execute()
            for sid, meta in zip(ids, metas, strict=True):
                if meta[0] is not None and not (ttl and int(meta[5]) + ttl <= now_ms):
                    found.append((sid.decode(), [int(v) for v in meta]))
            low = b"(" + ids[-1]
            if len(ids) < _SCAN:
                break
        return found[:want]

    async def list_sessions(self, tenant: str, page_size: int, page_token: str = "") -> SessionPage:
        if page_size < 1:
            raise ValueError("page_size must be >= 1")
        after = decode_page_token(page_token, tenant) if page_token else None
        found = await self._live_sessions(tenant, after, page_size + 1)
        sessions = [SessionInfo(sid, count, tokens, created, updated)
                    for sid, (count, tokens, _, created, updated, _) in found[:page_size]]
        token = encode_page_token(tenant, sessions[-1].session_id) if len(found) > page_size else ""
        return SessionPage(sessions, token)

    async def stats(self, tenant: str) -> Stats:
        """Sums over the tenant's live sessions, read in pages of ``_SCAN``: O(its sessions)."""
        sessions = messages = size = tokens = 0
        after = None
        while True:
            page = await self._live_sessions(tenant, after, _SCAN)
            for _, (count, toks, nbytes, *_) in page:
                sessions, messages = sessions + 1, messages + count
                tokens, size = tokens + toks, size + nbytes
            if len(page) < _SCAN:
                break
            after = page[-1][0]
        with _unavailable_on_redis_errors():
            counters = await self._r.hmget(self._key("c:", tenant), *COUNTERS)
        return Stats(sessions, messages, size, tokens, *(int(c or 0) for c in counters))

    async def expire(self) -> Expired:
        """Expire every session due by the clock, ``sweep_batch`` per round trip."""
        ttl = self._ttl_ms()
        if not ttl:
            return Expired()  # idempotency keys expire natively
        expiry = self._key("expiry")
        total = Expired()
        while True:
            _, now_ms = self._ms()
            with _unavailable_on_redis_errors():
                due = await self._r.zrangebyscore(expiry, "-inf", now_ms, start=0,
                                                  num=self.limits.sweep_batch)
                if not due:
                    return total
                pipe = self._r.pipeline(transaction=False)
                for member in due:
                    tenant, session_id = parse_member(member.decode())
                    _, meta, msgs = self._session_keys(tenant, session_id)
                    keys = [meta, msgs, self._key("t:", tenant), expiry, self._key("c:", tenant),
                            self._key("counters")]
                    await self._scripts["expire"](keys=keys, args=[session_id, member, now_ms, ttl],
                                                  client=pipe)
                counts = await pipe.execute()
            total += Expired(sum(c >= 0 for c in counts), sum(max(c, 0) for c in counts))
            if len(due) < self.limits.sweep_batch:
                return total

    async def gauges(self) -> dict[str, float]:
        with _unavailable_on_redis_errors():
            pipe = self._r.pipeline(transaction=False)
            pipe.zcard(self._key("expiry"))
            pipe.hmget(self._key("counters"), *COUNTERS)
            sessions, counters = await pipe.execute()
        return {"sessions": sessions, **{k: int(v or 0) for k, v in zip(COUNTERS, counters, strict=True)}}


def _str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value

