"""Property, on both backends: after any appends, history is the newest window of what was
appended, in order (or of what came after a sequence), and a key repeats only within its session."""

from __future__ import annotations

import asyncio
import tempfile
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clawmesh.services.memory.records import Limits, Message
from clawmesh.services.memory.redis_store import RedisStore
from clawmesh.services.memory.sqlite_store import SqliteStore

# One operation: (session, batch of token counts, idempotency key or "").
operations = st.lists(
    st.tuples(
        st.sampled_from(["s1", "s2"]),
        st.lists(st.integers(min_value=0, max_value=9), min_size=1, max_size=4),
        st.sampled_from(["", "", "k1", "k2", "k3"]),
    ),
    max_size=12,
)


async def _check(redis_url: str | None, window: int, ops, limit: int, budget: int, after: int) -> None:
    with tempfile.TemporaryDirectory() as data_dir:
        limits = Limits(max_messages=window)
        if redis_url:  # a fresh key prefix per example: no flush needed
            store = await RedisStore.open(redis_url, limits, prefix=f"prop:{uuid.uuid4().hex}:",
                                          durability="none")
        else:
            store = await SqliteStore.open(data_dir, limits)
        try:
            model: dict[str, list[tuple[int, str, int]]] = {"s1": [], "s2": []}
            keys: dict[tuple[str, str], list[int]] = {}  # (session, key) -> sequences
            counter = 0
            for session, tokens, key in ops:
                batch = []
                for t in tokens:
                    counter += 1
                    batch.append(Message(role=2, content=f"m{counter}x", token_count=t))
                result = await store.append("t", session, batch, key)
                if (session, key) in keys:
                    assert result.duplicate and result.sequences == keys[session, key]
                    continue
                last = model[session][-1][0] if model[session] else 0
                assert result.sequences == list(range(last + 1, last + 1 + len(batch)))
                assert not result.duplicate
                if key:
                    keys[session, key] = result.sequences
                model[session] += [
                    (seq, m.content, m.token_count or 1)  # "mNx" estimates to 1 token
                    for seq, m in zip(result.sequences, batch, strict=True)
                ]
            for session, appended in model.items():
                window_items = appended[-window:]
                newer = [item for item in window_items if item[0] > after]
                history = await store.history("t", session, limit, budget, after)
                expected = newer[-limit:] if limit else newer
                if budget:
                    kept, used = [], 0
                    for item in reversed(expected):
                        if used + item[2] > budget:
                            break
                        used += item[2]
                        kept.append(item)
                    expected = kept[::-1]
                got = [(m.sequence, m.content, m.token_count) for m in history.messages]
                assert got == expected
                seqs = [m.sequence for m in history.messages]
                assert all(a < b for a, b in zip(seqs, seqs[1:], strict=False))
                assert history.total_messages == len(window_items)
                assert history.truncated == (len(expected) < len(newer))
                assert history.last_sequence == (appended[-1][0] if appended else 0)
                assert (history.session_epoch > 0) == bool(appended)
            stats = await store.stats("t")
            assert stats.messages == sum(min(len(v), window) for v in model.values())
            assert stats.tokens == sum(i[2] for v in model.values() for i in v[-window:])
        finally:
            await store.close()


@pytest.fixture(params=["sqlite", "redis"])
def redis_or_none(request):
    return request.getfixturevalue("redis_server").url if request.param == "redis" else None


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(
    window=st.integers(min_value=1, max_value=6),
    ops=operations,
    limit=st.integers(min_value=0, max_value=8),
    budget=st.integers(min_value=0, max_value=30),
    after=st.integers(min_value=0, max_value=20),
)
def test_history_is_newest_window_in_order(redis_or_none, window, ops, limit, budget, after):
    asyncio.run(_check(redis_or_none, window, ops, limit, budget, after))
