"""Unit tests of MemoryStore: sequences, window, idempotency, budget, pages, tenants, stats."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from clawmesh.services.memory.records import Message, ToolCall, estimate_message_tokens
from clawmesh.services.memory.store import DB_FILE, MemoryStore
from clawmesh.shared.errors import InvalidArgument, NotFound

USER, ASSISTANT = 2, 3


class Clock:
    """Deterministic nanosecond clock: 1000, 2000, 3000 ..."""

    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        self.now += 1000
        return self.now


def msg(content: str, tokens: int = 0, role: int = USER) -> Message:
    return Message(role=role, content=content, token_count=tokens)


@pytest.fixture(params=[False, True], ids=["thread-reads", "inline-reads"])
async def store(request, tmp_path):
    s = await MemoryStore.open(tmp_path / "data", max_messages_per_session=5, clock=Clock(),
                               inline_reads=request.param)
    yield s
    await s.close()


def contents(history) -> list[str]:
    return [m.content for m in history.messages]


async def test_open_creates_dir_and_uses_wal(tmp_path):
    s = await MemoryStore.open(tmp_path / "a" / "b", 3)
    await s.close()
    db = sqlite3.connect(tmp_path / "a" / "b" / DB_FILE)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


async def test_sequences_start_at_one_and_batches_are_contiguous(store):
    assert (await store.append("t", "s", [msg("a")])).sequences == [1]
    result = await store.append("t", "s", [msg("b"), msg("c"), msg("d")])
    assert result.sequences == [2, 3, 4]
    assert result.duplicate is False
    assert (await store.append("t", "other", [msg("x")])).sequences == [1]


async def test_history_is_oldest_first_with_stored_fields(store):
    call = ToolCall("c1", "search", '{"q": "x"}')
    await store.append("t", "s", [Message(USER, "hi", name="bob", created_ns=42, token_count=7)])
    await store.append("t", "s", [Message(ASSISTANT, "", tool_calls=(call,), tool_call_id="")])
    h = await store.history("t", "s")
    assert h.total_messages == 2 and h.truncated is False
    first, second = h.messages
    assert (first.role, first.content, first.name, first.created_ns, first.token_count) == (
        USER,
        "hi",
        "bob",
        42,
        7,
    )
    assert first.sequence == 1 and second.sequence == 2
    assert second.tool_calls == (call,)
    assert second.created_ns == 2000  # filled from the clock on the second append
    assert second.token_count == estimate_message_tokens(second) == 4  # ceil(16 / 4)


async def test_window_keeps_newest_and_sequences_are_never_reused(store):
    for i in range(1, 8):
        await store.append("t", "s", [msg(f"m{i}")])
    h = await store.history("t", "s")
    assert contents(h) == ["m3", "m4", "m5", "m6", "m7"]
    assert [m.sequence for m in h.messages] == [3, 4, 5, 6, 7]
    assert h.total_messages == 5 and h.truncated is False
    result = await store.append(
        "t", "s", [msg("a"), msg("b"), msg("c"), msg("d"), msg("e"), msg("f")]
    )
    assert result.sequences == [8, 9, 10, 11, 12, 13]
    assert contents(await store.history("t", "s")) == ["b", "c", "d", "e", "f"]


async def test_idempotent_repeat_appends_nothing(store):
    first = await store.append("t", "s", [msg("a"), msg("b")], idempotency_key="k1")
    again = await store.append("t", "s", [msg("a"), msg("b")], idempotency_key="k1")
    assert first.sequences == again.sequences == [1, 2]
    assert (first.duplicate, again.duplicate) == (False, True)
    assert (await store.append("t", "s", [msg("c")], idempotency_key="k2")).sequences == [3]
    assert contents(await store.history("t", "s")) == ["a", "b", "c"]
    # Keys are per tenant: another tenant's identical key is a new append.
    assert (await store.append("u", "s", [msg("z")], idempotency_key="k1")).duplicate is False


async def test_idempotency_keys_are_scoped_to_the_session(store):
    first = await store.append("t", "s1", [msg("a")], idempotency_key="k")
    other = await store.append("t", "s2", [msg("b"), msg("c")], idempotency_key="k")
    assert (first.sequences, first.duplicate) == ([1], False)
    assert (other.sequences, other.duplicate) == ([1, 2], False)  # an independent append
    again = await store.append("t", "s1", [msg("x")], idempotency_key="k")
    assert (again.sequences, again.duplicate) == ([1], True)
    again = await store.append("t", "s2", [msg("x")], idempotency_key="k")
    assert (again.sequences, again.duplicate) == ([1, 2], True)
    assert contents(await store.history("t", "s1")) == ["a"]
    assert contents(await store.history("t", "s2")) == ["b", "c"]
    # Deleting one session frees its key there only.
    await store.delete_session("t", "s1")
    assert (await store.append("t", "s1", [msg("y")], idempotency_key="k")).duplicate is False
    assert (await store.append("t", "s2", [msg("y")], idempotency_key="k")).duplicate is True


async def test_limit_and_token_budget_keep_newest(store):
    await store.append("t", "s", [msg("a", 5), msg("b", 3), msg("c", 4), msg("d", 2)])
    h = await store.history("t", "s", limit=2)
    assert contents(h) == ["c", "d"] and h.truncated and h.total_messages == 4
    h = await store.history("t", "s", token_budget=9)
    assert contents(h) == ["b", "c", "d"] and h.truncated
    h = await store.history("t", "s", token_budget=8)  # "b" would overflow: stop there
    assert contents(h) == ["c", "d"]
    h = await store.history("t", "s", token_budget=1)
    assert contents(h) == [] and h.truncated
    h = await store.history("t", "s", limit=3, token_budget=100)
    assert contents(h) == ["b", "c", "d"]
    h = await store.history("t", "s", token_budget=14)
    assert contents(h) == ["a", "b", "c", "d"] and not h.truncated


async def test_token_estimate_is_ceil_chars_over_four(store):
    await store.append("t", "s", [msg(""), msg("abcd"), msg("abcde"), msg("é" * 9)])
    assert [m.token_count for m in (await store.history("t", "s")).messages] == [0, 1, 2, 3]


async def test_unknown_session_has_empty_history(store):
    h = await store.history("t", "nope")
    assert (h.messages, h.total_messages, h.truncated) == ([], 0, False)


async def test_delete_session(store):
    await store.append("t", "s", [msg("a"), msg("b")], idempotency_key="k")
    assert await store.delete_session("t", "s") == 2
    with pytest.raises(NotFound):
        await store.delete_session("t", "s")
    assert (await store.history("t", "s")).total_messages == 0
    # The session's idempotency keys went with it.
    assert (await store.append("t", "s", [msg("c")], idempotency_key="k")).duplicate is False


async def test_list_sessions_pages_are_stable(store):
    for name in ["s05", "s01", "s03", "s02", "s04"]:
        await store.append("t", name, [msg("hello", 3)])
    page = await store.list_sessions("t", page_size=2)
    assert [s.session_id for s in page.sessions] == ["s01", "s02"]
    await store.append("t", "s00", [msg("new")])  # before the cursor: not seen, nothing repeats
    await store.delete_session("t", "s03")
    page = await store.list_sessions("t", page_size=2, page_token=page.next_page_token)
    assert [s.session_id for s in page.sessions] == ["s04", "s05"]
    assert page.next_page_token == ""
    info = page.sessions[0]
    assert (info.message_count, info.token_count) == (1, 3)
    assert info.created_ns == info.updated_ns > 0
    everything = await store.list_sessions("t", page_size=100)
    assert [s.session_id for s in everything.sessions] == ["s00", "s01", "s02", "s04", "s05"]
    assert everything.next_page_token == ""


async def test_list_sessions_updated_time_moves(store):
    await store.append("t", "s", [msg("a")])
    await store.append("t", "s", [msg("b")])
    (info,) = (await store.list_sessions("t", page_size=10)).sessions
    assert (info.created_ns, info.updated_ns, info.message_count) == (1000, 2000, 2)


@pytest.mark.parametrize("token", ["!!", "czE", "bm9wZQ", "czE6/w"])
async def test_bad_page_token(store, token):
    with pytest.raises(InvalidArgument) as err:
        await store.list_sessions("t", page_size=10, page_token=token)
    assert err.value.violations[0].field == "page_token"


async def test_tenants_are_isolated(store):
    await store.append("t1", "s", [msg("secret")], idempotency_key="k")
    assert (await store.history("t2", "s")).messages == []
    assert (await store.list_sessions("t2", page_size=10)).sessions == []
    with pytest.raises(NotFound):
        await store.delete_session("t2", "s")
    assert (await store.stats("t2")).sessions == 0
    assert (await store.append("t2", "s", [msg("mine")])).sequences == [1]
    assert contents(await store.history("t1", "s")) == ["secret"]
    assert contents(await store.history("t2", "s")) == ["mine"]


async def test_stats_follow_appends_trims_and_deletes(store):
    assert (await store.stats("t")).__dict__ == dict(
        sessions=0, messages=0, content_bytes=0, tokens=0
    )
    await store.append("t", "a", [msg("héllo", 10), msg("xy", 1)])
    await store.append("t", "b", [msg(str(i), 2) for i in range(7)])  # window 5 trims 2
    stats = await store.stats("t")
    assert (stats.sessions, stats.messages, stats.content_bytes, stats.tokens) == (
        2,
        7,
        6 + 2 + 5,
        11 + 10,
    )
    await store.delete_session("t", "a")
    stats = await store.stats("t")
    assert (stats.sessions, stats.messages, stats.content_bytes, stats.tokens) == (1, 5, 5, 10)


async def test_concurrent_appends_get_distinct_sequences(store):
    results = await asyncio.gather(*(store.append("t", "s", [msg(str(i))]) for i in range(20)))
    assert sorted(r.sequences[0] for r in results) == list(range(1, 21))


async def test_reopen_keeps_data_and_sequences(tmp_path):
    s = await MemoryStore.open(tmp_path, 10)
    await s.append("t", "s", [msg("a"), msg("b")], idempotency_key="k")
    await s.close()
    s = await MemoryStore.open(tmp_path, 10)
    try:
        assert contents(await s.history("t", "s")) == ["a", "b"]
        assert (await s.append("t", "s", [msg("b")], idempotency_key="k")).duplicate is True
        assert (await s.append("t", "s", [msg("c")])).sequences == [3]
    finally:
        await s.close()


async def test_concurrent_appends_share_commits_and_each_is_acknowledged(store):
    results = await asyncio.gather(
        *(store.append("t", f"s{i % 5}", [msg(f"m{i}")], idempotency_key=f"k{i}") for i in range(50))
    )
    assert [r.duplicate for r in results] == [False] * 50
    # Ten appends per session; every sequence handed out once per session.
    for session in range(5):
        seqs = sorted(r.sequences[0] for i, r in enumerate(results) if i % 5 == session)
        assert seqs == list(range(1, 11))
    assert store.commits < 50  # group commit: far fewer fsyncs than appends
    history = await store.history("t", "s0")
    assert contents(history) == ["m25", "m30", "m35", "m40", "m45"]


async def test_a_failing_append_in_a_batch_fails_alone(store):
    await store.append("t", "a", [msg("first")])
    commits = store.commits
    ok, bad, ok2 = await asyncio.gather(
        store.append("t", "b", [msg("x")], idempotency_key="k1"),
        # A lone surrogate cannot be encoded: fails after its session row was written.
        store.append("t", "c", [msg("y"), msg("\ud800")], idempotency_key="k1"),
        store.append("t", "b", [msg("z")], idempotency_key="k2"),
        return_exceptions=True,
    )
    assert isinstance(bad, UnicodeEncodeError)
    assert store.commits == commits + 1  # the three went into one transaction
    assert ok.sequences == [1] and ok2.sequences == [2]
    assert contents(await store.history("t", "b")) == ["x", "z"]
    assert contents(await store.history("t", "c")) == []
    assert [s.session_id for s in (await store.list_sessions("t", 10)).sessions] == ["a", "b"]
    # Nothing of the failed append stayed, not even its key.
    assert (await store.append("t", "c", [msg("y")], idempotency_key="k1")).duplicate is False
