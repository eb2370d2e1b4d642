"""The memory store's interface, its two backends behind one factory, and the sweeper.

    store = await open_store(settings.memory)        # SqliteStore or RedisStore
    result = await store.append("t1", "s1", [Message(role=2, content="hi")], "key-1")
    history = await store.history("t1", "s1", limit=20)
    hits = await store.search("t1", "s1", "tea", limit=5)
    await store.close()

Both backends keep the same contract (tests/services/memory/test_memory_contract.py
runs one suite against each): per-(tenant, session) history with contiguous
sequences that are never reused, atomic batches, idempotency keys scoped to the
session and remembered for ``idempotency_ttl_s``, a window of at most
``max_messages`` messages and ``max_tokens`` tokens (the oldest go first, counted
as trimmed), sessions expiring after ``session_ttl_s`` idle (counted as expired),
and tenants that never see each other's sessions. Every time-based decision reads
the injected ``clock`` (nanoseconds), never the wall clock directly.

- ``SqliteStore`` (``sqlite_store.py``): one file, WAL, group commit, fsync per
  commit; embedded, one process.
- ``RedisStore`` (``redis_store.py``): one Lua script per write, shared by every
  memory replica; durable as the Redis server's AOF settings make it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

from clawmesh.services.memory.records import (
    AppendResult,
    Expired,
    History,
    Limits,
    Message,
    SessionPage,
    Stats,
    message_tokens,
    words,
)
from clawmesh.shared.errors import FieldViolation, InvalidArgument
from clawmesh.shared.settings import MemorySettings

log = logging.getLogger(__name__)

Clock = Callable[[], int]  # nanoseconds since the epoch, like time.time_ns


class MemoryStore(ABC):
    """What the servicer needs from a backend. Limits and clock are given at open."""

    def __init__(self, limits: Limits, clock: Clock = time.time_ns) -> None:
        self.limits = limits
        self._clock = clock
        self._sweeper: asyncio.Task | None = None

    # -- the contract --------------------------------------------------------------------

    async def append(
        self, tenant: str, session_id: str, messages: Sequence[Message], idempotency_key: str = ""
    ) -> AppendResult:
        """Append ``messages`` atomically; returns once the write is durable.

        A repeat of ``idempotency_key`` in the same session (within its TTL) stores
        nothing and returns the first append's sequences with ``duplicate``.
        InvalidArgument when there are no messages or one holds more tokens than a
        whole session may.
        """
        check_append(messages, self.limits.max_tokens)
        return await self._append(tenant, session_id, list(messages), idempotency_key)

    @abstractmethod
    async def _append(self, tenant: str, session_id: str, messages: list[Message], key: str) -> AppendResult:
        """``append`` after its checks."""

    @abstractmethod
    async def history(
        self, tenant: str, session_id: str, limit: int = 0, token_budget: int = 0, after_sequence: int = 0
    ) -> History:
        """The newest messages, oldest first. ``limit`` 0: the window; ``token_budget`` 0: none.

        With ``after_sequence`` > 0 only messages with a higher sequence count: the
        newest of those, ``truncated`` when limit or budget left one of them out.
        """

    async def search(self, tenant: str, session_id: str, query: str, limit: int) -> list[Message]:
        """The session's messages whose content holds every word of ``query``, newest first.

        Words as ``records.words`` splits them (case and accents ignored).
        InvalidArgument naming ``query`` when it has no word.
        """
        terms = words(query)
        if not terms:
            raise InvalidArgument("query", "must contain at least one word (letters or digits)")
        if limit < 1:
            raise ValueError("limit must be >= 1")
        return await self._search(tenant, session_id, list(dict.fromkeys(terms)), limit)

    @abstractmethod
    async def _search(self, tenant: str, session_id: str, terms: list[str], limit: int) -> list[Message]:
        """``search`` with the query split into distinct words."""

    @abstractmethod
    async def delete_session(self, tenant: str, session_id: str) -> int:
        """Delete a session; returns its message count. NotFound when there is none."""

    @abstractmethod
    async def list_sessions(self, tenant: str, page_size: int, page_token: str = "") -> SessionPage:
        """Up to ``page_size`` (>= 1) live sessions ordered by id.

        Pass ``next_page_token`` back for the next page; a token is good for the
        tenant it was given to only (InvalidArgument naming ``page_token`` otherwise).
        """

    @abstractmethod
    async def stats(self, tenant: str) -> Stats:
        """Totals over ``tenant``'s live sessions, and its trimmed and expired counts."""

    @abstractmethod
    async def expire(self) -> Expired:
        """Remove what has expired by now (the sweeper calls this); what was removed."""

    @abstractmethod
    async def gauges(self) -> dict[str, float]:
        """All tenants together: ``sessions``, ``trimmed_messages``, ``expired_sessions``,
        ``expired_messages`` (for ``RpcStats.add_gauges("memory", store.gauges)``)."""

    async def close(self) -> None:
        """Stop the sweeper; backends release their resources after calling this."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None

    # -- the sweeper -----------------------------------------------------------------------

    def start_sweeper(self) -> None:
        """Run ``expire`` every ``limits.sweep_interval_s`` (nothing when it is 0)."""
        if self.limits.sweep_interval_s > 0 and self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep_forever(), name="memory-sweeper")

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.limits.sweep_interval_s)
            try:
                removed = await self.expire()
            except Exception:  # noqa: BLE001 - a failed sweep is retried next interval
                log.exception("memory sweep failed")
                continue
            if removed.sessions or removed.keys:
                log.info("memory sweep: %d session(s), %d message(s), %d key(s) expired",
                         removed.sessions, removed.messages, removed.keys)


def check_append(messages: Sequence[Message], max_tokens: int, field: str = "messages") -> None:
    """InvalidArgument when there is nothing to append or a message can never fit a session."""
    if not messages:
        raise InvalidArgument(field, "must not be empty")
    problems = token_violations(messages, max_tokens, [f"{field}[{i}]" for i in range(len(messages))])
    if problems:
        raise InvalidArgument(problems)


def token_violations(
    messages: Sequence[Message], max_tokens: int, names: Sequence[str]
) -> list[FieldViolation]:
    """A FieldViolation for each message holding more than ``max_tokens`` tokens.

    Names ``<name>.token_count`` when the caller gave the count, ``<name>.content``
    when it was estimated from the text.
    """
    out = []
    for name, message in zip(names, messages, strict=True):
        tokens = message_tokens(message)
        if tokens > max_tokens:
            part = "token_count" if message.token_count else "content"
            out.append(FieldViolation(f"{name}.{part}", f"{tokens} tokens: a session holds at most "
                                                        f"{max_tokens} (max_tokens_per_session)"))
    return out


async def open_store(
    settings: MemorySettings, clock: Clock = time.time_ns, sweep: bool = True
) -> MemoryStore:
    """The backend ``settings`` name, opened, its sweeper started (unless ``sweep`` is false)."""
    limits = Limits.from_settings(settings)
    if settings.backend == "redis":
        from clawmesh.services.memory.redis_store import RedisStore

        store: MemoryStore = await RedisStore.open(
            settings.redis_url, limits, clock, prefix=settings.redis_key_prefix,
            durability=settings.redis_durability, configure=settings.redis_configure,
            timeout_s=settings.redis_timeout_s, max_connections=settings.redis_max_connections)
    else:
        from clawmesh.services.memory.sqlite_store import SqliteStore

        store = await SqliteStore.open(settings.data_dir, limits, clock, inline_reads=settings.inline_reads)
    if sweep:
        store.start_sweeper()
    return store
