"""Property: after any appends, history is the newest window of what was appended, in order."""

from __future__ import annotations

import asyncio
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clawmesh.services.memory.store import MemoryStore, Message

# One operation: (session, batch of token counts, idempotency key or "").
operations = st.lists(
    st.tuples(
        st.sampled_from(["s1", "s2"]),
        st.lists(st.integers(min_value=0, max_value=9), min_size=1, max_size=4),
        st.sampled_from(["", "", "k1", "k2", "k3"]),
    ),
    max_size=12,
)


async def _check(window: int, ops, limit: int, budget: int) -> None:
    with tempfile.TemporaryDirectory() as data_dir:
        store = await MemoryStore.open(data_dir, window)
        try:
            model: dict[str, list[tuple[int, str, int]]] = {"s1": [], "s2": []}
            keys: dict[str, tuple[str, list[int]]] = {}
            counter = 0
            for session, tokens, key in ops:
                if key and key in keys and keys[key][0] != session:
                    continue  # reusing a key across sessions is rejected; tested elsewhere
                batch = []
                for t in tokens:
                    counter += 1
                    batch.append(Message(role=2, content=f"m{counter}x", token_count=t))
                result = await store.append("t", session, batch, key)
                if key in keys:
                    assert result.duplicate and result.sequences == keys[key][1]
                    continue
                last = model[session][-1][0] if model[session] else 0
                assert result.sequences == list(range(last + 1, last + 1 + len(batch)))
                assert not result.duplicate
                if key:
                    keys[key] = (session, result.sequences)
                model[session] += [
                    (seq, m.content, m.token_count or 1)  # "mNx" estimates to 1 token
                    for seq, m in zip(result.sequences, batch, strict=True)
                ]
            for session, appended in model.items():
                window_items = appended[-window:]
                history = await store.history("t", session, limit, budget)
                expected = window_items[-limit:] if limit else window_items
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
                assert history.truncated == (len(expected) < len(window_items))
            stats = await store.stats("t")
            assert stats.messages == sum(min(len(v), window) for v in model.values())
            assert stats.tokens == sum(i[2] for v in model.values() for i in v[-window:])
        finally:
            await store.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    window=st.integers(min_value=1, max_value=6),
    ops=operations,
    limit=st.integers(min_value=0, max_value=8),
    budget=st.integers(min_value=0, max_value=30),
)
def test_history_is_newest_window_in_order(window, ops, limit, budget):
    asyncio.run(_check(window, ops, limit, budget))
