"""The memory store contract, on every backend (SQLite, SQLite with inline reads, Redis).

Sequences, windows and token limits, idempotency and its TTL, history queries
(last N, token budget, since a sequence), session TTL with an injected clock,
search, tenant isolation and bad input.
"""

from __future__ import annotations

import asyncio

import pytest

from clawmesh.services.memory.records import Expired, Message, ToolCall, estimate_message_tokens
from clawmesh.shared.errors import InvalidArgument, NotFound

USER, ASSISTANT = 2, 3
DAY = 86400


def msg(content: str, tokens: int = 0, role: int = USER) -> Message:
    return Message(role=role, content=content, token_count=tokens)


def contents(history) -> list[str]:
    return [m.content for m in history.messages]


def seqs(history) -> list[int]:
    return [m.sequence for m in history.messages]


def counts(stats) -> tuple[int, ...]:
    return (stats.sessions, stats.messages, stats.content_bytes, stats.tokens,
            stats.trimmed_messages, stats.expired_sessions, stats.expired_messages)


# -- appends, windows, limits -------------------------------------------------------------


async def test_sequences_start_at_one_and_batches_are_contiguous(store):
    assert (await store.append("t", "s", [msg("a")])).sequences == [1]
    result = await store.append("t", "s", [msg("b"), msg("c"), msg("d")])
    assert result.sequences == [2, 3, 4]
    assert result.duplicate is False
    assert (await store.append("t", "other", [msg("x")])).sequences == [1]


async def test_history_is_oldest_first_with_stored_fields(store, clock):
    call = ToolCall("c1", "search", '{"q": "x"}')
    await store.append("t", "s", [Message(USER, "hi", name="bob", created_ns=42, token_count=7)])
    clock.advance(1)
    await store.append("t", "s", [Message(ASSISTANT, "", tool_calls=(call,), tool_call_id="")])
    h = await store.history("t", "s")
    assert h.total_messages == 2 and h.truncated is False
    first, second = h.messages
    assert (first.role, first.content, first.name, first.created_ns, first.token_count) == (
        USER, "hi", "bob", 42, 7)
    assert (first.sequence, second.sequence) == (1, 2)
    assert second.tool_calls == (call,)
    assert second.created_ns == clock.now  # filled from the clock
    assert second.token_count == estimate_message_tokens(second) == 4  # ceil(16 / 4)


async def test_unicode_and_odd_ids_round_trip(store):
    for tenant, session in [("t", "a:b.c"), ("t", "1.x"), ("t1.", "x"), ("é", "🙂 s")]:
        await store.append(tenant, session, [msg(f"{tenant}/{session} — ünïcode 🙂")])
    for tenant, session in [("t", "a:b.c"), ("t", "1.x"), ("t1.", "x"), ("é", "🙂 s")]:
        assert contents(await store.history(tenant, session)) == [f"{tenant}/{session} — ünïcode 🙂"]
    assert [s.session_id for s in (await store.list_sessions("t", 10)).sessions] == ["1.x", "a:b.c"]


async def test_window_keeps_newest_and_sequences_are_never_reused(store):
    for i in range(1, 8):
        await store.append("t", "s", [msg(f"m{i}")])
    h = await store.history("t", "s")
    assert contents(h) == ["m3", "m4", "m5", "m6", "m7"]
    assert seqs(h) == [3, 4, 5, 6, 7]
    assert h.total_messages == 5 and h.truncated is False
    result = await store.append("t", "s", [msg(c) for c in "abcdef"])
    assert result.sequences == [8, 9, 10, 11, 12, 13]
    assert contents(await store.history("t", "s")) == ["b", "c", "d", "e", "f"]
    assert (await store.stats("t")).trimmed_messages == 2 + 6


async def test_token_limit_trims_the_oldest_on_write(make_store):
    store = await make_store(max_messages=100, max_tokens=10)
    await store.append("t", "s", [msg("a", 4), msg("b", 4)])
    result = await store.append("t", "s", [msg("c", 3)])  # 11 > 10: "a" goes
    assert result.sequences == [3]
    h = await store.history("t", "s")
    assert (contents(h), h.total_messages, h.last_sequence) == (["b", "c"], 2, 3)
    await store.append("t", "s", [msg("d", 10)])  # a whole session's worth: only it stays
    assert contents(await store.history("t", "s")) == ["d"]
    stats = await store.stats("t")
    assert (stats.messages, stats.tokens, stats.trimmed_messages) == (1, 10, 3)


async def test_a_message_larger_than_a_session_is_rejected(make_store):
    store = await make_store(max_tokens=10)
    with pytest.raises(InvalidArgument) as err:
        await store.append("t", "s", [msg("ok", 1), msg("too big", 11)])
    assert [v.field for v in err.value.violations] == ["messages[1].token_count"]
    with pytest.raises(InvalidArgument) as err:
        await store.append("t", "s", [msg("x" * 41)])  # estimated: 11 tokens
    assert [v.field for v in err.value.violations] == ["messages[0].content"]
    with pytest.raises(InvalidArgument) as err:
        await store.append("t", "s", [])
    assert [v.field for v in err.value.violations] == ["messages"]
    assert (await store.history("t", "s")).total_messages == 0


async def test_token_estimate_is_ceil_chars_over_four(store):
    await store.append("t", "s", [msg(""), msg("abcd"), msg("abcde"), msg("é" * 9)])
    assert [m.token_count for m in (await store.history("t", "s")).messages] == [0, 1, 2, 3]


async def test_concurrent_appends_get_distinct_sequences(store):
    results = await asyncio.gather(*(store.append("t", "s", [msg(str(i))]) for i in range(20)))
    assert sorted(r.sequences[0] for r in results) == list(range(1, 21))


async def test_a_failing_append_fails_alone(store):
    ok, bad, ok2 = await asyncio.gather(
        store.append("t", "b", [msg("x")], idempotency_key="k1"),
        # A lone surrogate cannot be encoded.
        store.append("t", "c", [msg("y"), msg("\ud800")], idempotency_key="k1"),
        store.append("t", "b", [msg("z")], idempotency_key="k2"),
        return_exceptions=True,
    )
    assert isinstance(bad, UnicodeEncodeError)
    # Concurrent appends: either may commit first (Redis serves them on pooled connections).
    assert sorted(ok.sequences + ok2.sequences) == [1, 2]
    in_order = ["x", "z"] if ok.sequences == [1] else ["z", "x"]
    assert contents(await store.history("t", "b")) == in_order
    assert contents(await store.history("t", "c")) == []
    assert [s.session_id for s in (await store.list_sessions("t", 10)).sessions] == ["b"]
    assert (await store.append("t", "c", [msg("y")], idempotency_key="k1")).duplicate is False


# -- idempotency --------------------------------------------------------------------------


async def test_idempotent_repeat_appends_nothing(store):
    first = await store.append("t", "s", [msg("a"), msg("b")], idempotency_key="k1")
    again = await store.append("t", "s", [msg("a"), msg("b")], idempotency_key="k1")
    assert first.sequences == again.sequences == [1, 2]
    assert (first.duplicate, again.duplicate) == (False, True)
    assert first.session_epoch == again.session_epoch
    assert (await store.append("t", "s", [msg("c")], idempotency_key="k2")).sequences == [3]
    assert contents(await store.history("t", "s")) == ["a", "b", "c"]
    # Keys are per tenant: another tenant's identical key is a new append.
    assert (await store.append("u", "s", [msg("z")], idempotency_key="k1")).duplicate is False


async def test_idempotency_keys_are_scoped_to_the_session(store):
    first = await store.append("t", "s1", [msg("a")], idempotency_key="k")
    other = await store.append("t", "s2", [msg("b"), msg("c")], idempotency_key="k")
    assert (first.sequences, first.duplicate) == ([1], False)
    assert (other.sequences, other.duplicate) == ([1, 2], False)
    again = await store.append("t", "s1", [msg("x")], idempotency_key="k")
    assert (again.sequences, again.duplicate) == ([1], True)
    again = await store.append("t", "s2", [msg("x")], idempotency_key="k")
    assert (again.sequences, again.duplicate) == ([1, 2], True)
    # Deleting one session frees its key there only.
    await store.delete_session("t", "s1")
    assert (await store.append("t", "s1", [msg("y")], idempotency_key="k")).duplicate is False
    assert (await store.append("t", "s2", [msg("y")], idempotency_key="k")).duplicate is True


async def test_idempotency_keys_expire_after_their_ttl(make_store, clock):
    store = await make_store(idempotency_ttl_s=60)
    await store.append("t", "s", [msg("a")], idempotency_key="k")
    clock.advance(59)
    assert (await store.append("t", "s", [msg("a")], idempotency_key="k")).duplicate is True
    clock.advance(1)
    late = await store.append("t", "s", [msg("a")], idempotency_key="k")
    assert (late.sequences, late.duplicate) == ([2], False)  # a retry this late is a new append
    assert (await store.append("t", "s", [msg("a")], idempotency_key="k")).sequences == [2]  # the new one
    clock.advance(61)
    removed = await store.expire()
    assert removed.sessions == 0  # no session TTL


# -- history queries ----------------------------------------------------------------------


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


async def test_unknown_session_has_empty_history(store):
    h = await store.history("t", "nope", after_sequence=3)
    assert (h.messages, h.total_messages, h.truncated) == ([], 0, False)
    assert (h.last_sequence, h.session_epoch) == (0, 0)


async def test_after_sequence_returns_only_newer_messages(store):
    await store.append("t", "s", [msg(f"m{i}") for i in range(1, 5)])
    h = await store.history("t", "s", after_sequence=2)
    assert seqs(h) == [3, 4] and contents(h) == ["m3", "m4"]
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


async def test_epoch_is_stable_while_the_session_lives_and_changes_when_reborn(store):
    first = await store.append("t", "s", [msg("a")], idempotency_key="k")
    second = await store.append("t", "s", [msg("b")])
    assert first.session_epoch == second.session_epoch == (await store.history("t", "s")).session_epoch > 0
    epochs = [first.session_epoch]
    for _ in range(2):  # the clock stands still: the epoch changes all the same
        await store.delete_session("t", "s")
        result = await store.append("t", "s", [msg("a"), msg("b")])
        assert result.sequences == [1, 2]  # sequences start over ...
        epochs.append(result.session_epoch)
    assert len(set(epochs)) == 3 and epochs == sorted(epochs)  # ... the epoch never does
    assert (await store.append("t", "other", [msg("x")])).session_epoch not in epochs


# -- sessions: delete, list, stats ---------------------------------------------------------


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


async def test_list_sessions_updated_time_moves(store, clock):
    await store.append("t", "s", [msg("a")])
    created = clock.now
    clock.advance(2)
    await store.append("t", "s", [msg("b")])
    (info,) = (await store.list_sessions("t", page_size=10)).sessions
    assert (info.created_ns, info.updated_ns, info.message_count) == (created, clock.now, 2)


@pytest.mark.parametrize("token", ["!!", "czE", "bm9wZQ", "czE6/w", "czI6"])
async def test_bad_page_token(store, token):
    with pytest.raises(InvalidArgument) as err:
        await store.list_sessions("t", page_size=10, page_token=token)
    assert [v.field for v in err.value.violations] == ["page_token"]


async def test_a_page_token_is_good_for_its_tenant_only(store):
    for name in ("a", "b", "c"):
        await store.append("t1", name, [msg("x")])
        await store.append("t2", name, [msg("x")])
    page = await store.list_sessions("t1", page_size=1)
    assert page.next_page_token
    with pytest.raises(InvalidArgument) as err:
        await store.list_sessions("t2", page_size=1, page_token=page.next_page_token)
    assert [v.field for v in err.value.violations] == ["page_token"]
    assert "tenant" in err.value.violations[0].description
    rest = await store.list_sessions("t1", page_size=5, page_token=page.next_page_token)
    assert [s.session_id for s in rest.sessions] == ["b", "c"]


async def test_stats_follow_appends_trims_and_deletes(store):
    assert counts(await store.stats("t")) == (0, 0, 0, 0, 0, 0, 0)
    await store.append("t", "a", [msg("héllo", 10), msg("xy", 1)])
    await store.append("t", "b", [msg(str(i), 2) for i in range(7)])  # window 5 trims 2
    assert counts(await store.stats("t")) == (2, 7, 6 + 2 + 5, 11 + 10, 2, 0, 0)
    await store.delete_session("t", "a")
    assert counts(await store.stats("t")) == (1, 5, 5, 10, 2, 0, 0)
    assert counts(await store.stats("other")) == (0, 0, 0, 0, 0, 0, 0)


# -- session TTL, with the injected clock --------------------------------------------------


async def test_an_idle_session_expires_after_its_ttl(make_store, clock):
    store = await make_store(session_ttl_s=DAY)
    await store.append("t", "old", [msg("tea please"), msg("more")], idempotency_key="k")
    await store.append("t", "busy", [msg("a")])
    clock.advance(DAY - 1)
    await store.append("t", "busy", [msg("b")])  # an append keeps a session alive
    assert (await store.history("t", "old")).total_messages == 2
    clock.advance(1)
    # "old" is idle for a TTL now: gone for every read, before any sweep.
    assert (await store.history("t", "old")).messages == []
    assert await store.search("t", "old", "tea", 5) == []
    assert [s.session_id for s in (await store.list_sessions("t", 10)).sessions] == ["busy"]
    assert counts(await store.stats("t")) == (1, 2, 2, 2, 0, 0, 0)
    with pytest.raises(NotFound):
        await store.delete_session("t", "old")
    assert await store.expire() == Expired(sessions=1, messages=2, keys=0)
    assert await store.expire() == Expired()
    assert counts(await store.stats("t")) == (1, 2, 2, 2, 0, 1, 2)
    gauges = await store.gauges()
    assert (gauges["sessions"], gauges["expired_sessions"], gauges["expired_messages"]) == (1, 1, 2)
    # Created again: a new incarnation, from sequence 1; its old key means nothing.
    reborn = await store.append("t", "old", [msg("tea please")], idempotency_key="k")
    assert (reborn.sequences, reborn.duplicate) == ([1], False)
    clock.advance(DAY)
    assert (await store.expire()).sessions == 2
    assert counts(await store.stats("t")) == (0, 0, 0, 0, 0, 3, 5)


async def test_an_append_to_an_expired_unswept_session_starts_it_anew(make_store, clock):
    store = await make_store(session_ttl_s=60)
    before = await store.append("t", "s", [msg("a"), msg("b")])
    clock.advance(60)
    after = await store.append("t", "s", [msg("c")])
    assert after.sequences == [1] and after.session_epoch > before.session_epoch
    assert contents(await store.history("t", "s")) == ["c"]
    assert await store.expire() == Expired()  # counted once, by the append
    assert counts(await store.stats("t")) == (1, 1, 1, 1, 0, 1, 2)


async def test_expire_works_in_batches(make_store, clock):
    store = await make_store(session_ttl_s=10, sweep_batch=3)
    for i in range(8):
        await store.append("t", f"s{i}", [msg("x")])
    clock.advance(10)
    assert await store.expire() == Expired(sessions=8, messages=8)
    assert (await store.list_sessions("t", 10)).sessions == []


async def test_replicas_see_one_expiry(make_store, clock):
    one, two = await make_store(session_ttl_s=10), await make_store(session_ttl_s=10)
    await one.append("t", "s", [msg("x")])
    clock.advance(10)
    removed = await asyncio.gather(one.expire(), two.expire())
    assert sum(r.sessions for r in removed) == 1
    assert (await one.stats("t")).expired_sessions == 1


# -- search -------------------------------------------------------------------------------


async def test_search_finds_messages_with_every_word_newest_first(make_store):
    store = await make_store(max_messages=50)
    texts = ["I like green tea", "Coffee, not tea!", "my cat is called Tea-Rex",
             "Café au lait in Paris", "tea_time", "nothing here"]
    await store.append("t", "s", [msg(t) for t in texts])

    async def found(query: str, limit: int = 10) -> list[int]:
        return [m.sequence for m in await store.search("t", "s", query, limit)]

    assert await found("tea") == [5, 3, 2, 1]
    assert await found("TEA not") == [2]
    assert await found("tea", 2) == [5, 3]
    assert await found("cafe") == await found("CAFÉ AU") == [4]  # case and accents ignored
    assert await found("time tea") == await found("tea_time") == [5]  # "_" separates words
    assert await found("te") == []  # whole words only
    assert await found("tea paris") == []
    assert await store.search("t", "nope", "tea", 10) == []
    hit = (await store.search("t", "s", "paris", 1))[0]
    assert (hit.role, hit.content, hit.token_count) == (USER, "Café au lait in Paris", 6)


async def test_search_sees_only_what_the_session_holds(store):
    await store.append("t", "s", [msg(f"tea {i}") for i in range(7)])  # window 5: 3..7
    assert [m.sequence for m in await store.search("t", "s", "tea", 10)] == [7, 6, 5, 4, 3]
    await store.append("t", "other", [msg("tea elsewhere")])
    assert [m.content for m in await store.search("t", "other", "tea", 10)] == ["tea elsewhere"]
    await store.delete_session("t", "s")
    assert await store.search("t", "s", "tea", 10) == []


@pytest.mark.parametrize("query", ["", "   ", "!!! ...", "_"])
async def test_a_query_without_a_word_is_invalid(store, query):
    with pytest.raises(InvalidArgument) as err:
        await store.search("t", "s", query, 10)
    assert [v.field for v in err.value.violations] == ["query"]


# -- tenants ------------------------------------------------------------------------------


async def test_tenants_are_isolated(store):
    await store.append("t1", "s", [msg("secret tea")], idempotency_key="k")
    assert (await store.history("t2", "s")).messages == []
    assert await store.search("t2", "s", "secret", 10) == []
    assert (await store.list_sessions("t2", page_size=10)).sessions == []
    with pytest.raises(NotFound):
        await store.delete_session("t2", "s")
    assert (await store.stats("t2")).sessions == 0
    mine = await store.append("t2", "s", [msg("mine")], idempotency_key="k")
    assert (mine.sequences, mine.duplicate) == ([1], False)
    assert contents(await store.history("t1", "s")) == ["secret tea"]
    assert contents(await store.history("t2", "s")) == ["mine"]
    assert [m.content for m in await store.search("t1", "s", "tea", 10)] == ["secret tea"]


async def test_tenant_and_session_ids_cannot_be_confused(store):
    # Pairs whose naive concatenations collide.
    await store.append("ab", "c", [msg("one")])
    await store.append("a", "bc", [msg("two")])
    await store.append("a:b", "c", [msg("three")])
    await store.append("a", "b:c", [msg("four")])
    assert contents(await store.history("ab", "c")) == ["one"]
    assert contents(await store.history("a", "bc")) == ["two"]
    assert contents(await store.history("a:b", "c")) == ["three"]
    assert contents(await store.history("a", "b:c")) == ["four"]
    assert [s.session_id for s in (await store.list_sessions("a", 10)).sessions] == ["b:c", "bc"]
