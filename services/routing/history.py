"""Routing's history cache: never stale, checked against memory on every message.

    cache = HistoryCache(max_sessions=10_000, ttl_s=600)
    history = await cache.load(memory, tenant, session_id, limit=20)
    ... generate ...
    cache.appended(tenant, session_id, [user, assistant], append_response)

The rule: an entry holds the newest messages of a session with the sequence of
the last one and the session's epoch (which changes when a session is deleted
and created again). On each message routing asks memory only for what is newer
than the cached sequence (``GetHistory(after_sequence=...)``, a cheap query
that usually returns nothing). The entry is used only when memory confirms the
same epoch and a last sequence at or above the cached one; then it is exactly
current, whichever routing replica or other writer appended meanwhile. After
its own append, routing extends the entry only if the new messages directly
follow the cached ones (nobody wrote in between); otherwise it drops it. So a
cached history is never served stale, with any number of routing replicas.

Bounded: at most ``max_sessions`` entries (least recently used evicted) and
each expires ``ttl_s`` after its last use (cachetools, injected clock).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cachetools import TTLCache

from clawmesh.common.v1 import common_pb2


@dataclass
class _Entry:
    epoch: int
    last_sequence: int
    messages: list[common_pb2.ChatMessage]


class HistoryCache:
    """Newest messages per (tenant, session), validated by a since-sequence check."""

    def __init__(self, max_sessions: int = 10_000, ttl_s: float = 600.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._entries: TTLCache = TTLCache(maxsize=max_sessions, ttl=ttl_s, timer=clock)
        self.hits = 0  # messages answered from the cache (plus what was new)
        self.misses = 0  # full history loads

    def __len__(self) -> int:
        return len(self._entries)

    async def load(self, memory, tenant: str, session_id: str,
                   limit: int) -> list[common_pb2.ChatMessage]:
        """The newest ``limit`` messages of the session, oldest first."""
        key = (tenant, session_id)
        entry = self._entries.get(key)
        if entry is not None:
            got = await memory.history(session_id, limit=limit, after_sequence=entry.last_sequence)
            if got.session_epoch == entry.epoch and got.last_sequence >= entry.last_sequence:
                gap = got.last_sequence - entry.last_sequence > len(got.messages)
                if got.truncated or gap:
                    # More new messages than the window (or memory's own window trimmed
                    # some): the newest ones are all there is to keep.
                    entry.messages = list(got.messages)
                else:
                    entry.messages = (entry.messages + list(got.messages))[-limit:]
                entry.last_sequence = got.last_sequence
                self._entries[key] = entry  # refreshes its TTL
                self.hits += 1
                return list(entry.messages)
            self._entries.pop(key, None)  # deleted and recreated, or went back: reload
        self.misses += 1
        got = await memory.history(session_id, limit=limit)
        if got.session_epoch:
            self._entries[key] = _Entry(got.session_epoch, got.last_sequence, list(got.messages))
        return list(got.messages)

    def appended(self, tenant: str, session_id: str, messages: Sequence[common_pb2.ChatMessage],
                 response, limit: int) -> None:
        """Record routing's own append (``response``: a BatchAppendResponse)."""
        key = (tenant, session_id)
        entry = self._entries.get(key)
        sequences = list(response.sequences)
        if not sequences:
            return
        if entry is None:
            if sequences[0] == 1 and response.session_epoch and not response.duplicate:
                # A new session: these are all of it.
                self._entries[key] = _Entry(response.session_epoch, sequences[-1],
                                            list(messages)[-limit:] if limit else [])
            return
        if (response.session_epoch == entry.epoch and not response.duplicate
                and sequences[0] == entry.last_sequence + 1):
            entry.messages = (entry.messages + list(messages))[-limit:] if limit else []
            entry.last_sequence = sequences[-1]
        else:
            self._entries.pop(key, None)

    def forget(self, tenant: str, session_id: str) -> None:
        self._entries.pop((tenant, session_id), None)
