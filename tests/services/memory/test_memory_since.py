"""History since a sequence, the session's last sequence and its epoch (store level)."""

from __future__ import annotations

import pytest

from clawmesh.services.memory.records import Message
from clawmesh.services.memory.store import MemoryStore

FROZEN = 7000


def msg(content: str, tokens: int = 0) -> Message:
    return Message(role=2, content=content, token_count=tokens)


def seqs(history) -> list[int]:
    return [m.sequence for m in history.messages]


@pytest.fixture
async def store(tmp_path):
    # A frozen clock: whatever changes the epoch, it is not time moving on.
    s = await MemoryStore.open(tmp_path, max_messages_per_session=5, clock=lambda: FROZEN)
    yield s
    await s.close()


async def test_after_sequence_returns_only_newer_messages(store):
    await store.append("t", "s", [msg(f"m{i}") for i in range(1, 5)])
    h = await store.history("t", "s", after_sequence=2)
    assert seqs(h) == [3, 4] and [m.content for m in h.messages] == ["m3", "m4"]
    assert (h.total_messages, h.truncated, h.last_sequence) == (4, False, 4)
    h = await store.history("t", "s", after_sequence=4)  # up to date: nothing new
    assert (seqs(h), h.truncated, h.last_sequence) == ([], False, 4)
    h = await store.history("t", "s", after_sequence=9)  # ahead (another epoch's cache)
    assert (seqs(h), h.truncated, h.last_sequence) == ([], False, 4)
    h = await store.history("t", "s", after_sequence=2**64 - 1)  # any uint64 is fine
    assert (seqs(h), h.truncated) == ([], False)
    h = await store.history("t", "s", after_sequence=0)  # 0: from the start
    assert seqs(h) == [1, 2, 3, 4] and not h.truncated


async def test_after_sequence_with_limit_and_budget_keeps_the_newest(store):
    for i in range(1, 11):  # window 5 keeps 6..10
        await store.append("t", "s", [msg(f"m{i}", tokens=i)])
    h = await store.history("t", "s", limit=2, after_sequence=7)
    assert (seqs(h), h.truncated, h.total_messages) == ([9, 10], True, 5)
    h = await store.history("t", "s", limit=3, after_sequence=7)
    assert (seqs(h), h.truncated) == ([8, 9, 10], False)
    h = await store.history("t", "s", token_budget=19, after_sequence=7)  # 10 + 9 fit, 8 not
    assert (seqs(h), h.truncated) == ([9, 10], True)
    h = await store.history("t", "s", token_budget=27, after_sequence=7)
    assert (seqs(h), h.truncated) == ([8, 9, 10], False)
    # Messages already gone from the window are not "left out": the window is all there is.
    h = await store.history("t", "s", after_sequence=2)
    assert (seqs(h), h.truncated, h.last_sequence) == ([6, 7, 8, 9, 10], False, 10)


async def test_no_session_has_last_sequence_and_epoch_zero(store):
    h = await store.history("t", "nope", after_sequence=3)
    assert (h.messages, h.total_messages, h.truncated) == ([], 0, False)
    assert (h.last_sequence, h.session_epoch) == (0, 0)


async def test_epoch_is_stable_while_the_session_lives(store):
    first = await store.append("t", "s", [msg("a")], idempotency_key="k")
    assert first.session_epoch > 0
    second = await store.append("t", "s", [msg("b")])
    duplicate = await store.append("t", "s", [msg("a")], idempotency_key="k")
    assert duplicate.duplicate
    assert first.session_epoch == second.session_epoch == duplicate.session_epoch
    assert (await store.history("t", "s")).session_epoch == first.session_epoch


async def test_epoch_changes_when_a_session_is_deleted_and_created_again(store):
    epochs = []
    for _ in range(3):
        result = await store.append("t", "s", [msg("a"), msg("b")])
        assert result.sequences == [1, 2]  # sequences start over ...
        epochs.append(result.session_epoch)
        await store.delete_session("t", "s")
    assert len(set(epochs)) == 3 and epochs == sorted(epochs)  # ... the epoch never does
    other = await store.append("t", "other", [msg("x")])
    assert other.session_epoch not in epochs


async def test_epochs_keep_rising_across_reopen(tmp_path):
    store = await MemoryStore.open(tmp_path, 5, clock=lambda: FROZEN)
    before = (await store.append("t", "s", [msg("a")])).session_epoch
    await store.delete_session("t", "s")
    await store.close()
    store = await MemoryStore.open(tmp_path, 5, clock=lambda: FROZEN)
    try:
        after = (await store.append("t", "s", [msg("a")])).session_epoch
        assert after > before
    finally:
        await store.close()


async def test_epoch_follows_the_clock_when_it_moves(tmp_path):
    now = iter(range(10**9, 2 * 10**9, 10**6))
    store = await MemoryStore.open(tmp_path, 5, clock=lambda: next(now))
    try:
        first = (await store.append("t", "s", [msg("a")])).session_epoch
        await store.delete_session("t", "s")
        second = (await store.append("t", "s", [msg("a")])).session_epoch
        assert first >= 10**9 and second > first
    finally:
        await store.close()
