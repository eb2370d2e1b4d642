"""What only the SQLite backend has: WAL, group commit, reopening, the FTS index, the sweeper task.

The contract both backends keep is in test_memory_contract.py.
"""

from __future__ import annotations

import asyncio
import sqlite3

from clawmesh.services.memory.records import Limits, Message
from clawmesh.services.memory.sqlite_store import DB_FILE, SqliteStore
from clawmesh.shared.settings import MemorySettings
from tests.services.memory.conftest import Clock

LIMITS = Limits(max_messages=5)


def msg(content: str) -> Message:
    return Message(role=2, content=content)


def contents(history) -> list[str]:
    return [m.content for m in history.messages]


def fts_rows(data_dir) -> int:
    """Documents in the search index (a contentless FTS5 table counts them in its docsize)."""
    db = sqlite3.connect(data_dir / DB_FILE)
    try:
        return db.execute("SELECT COUNT(*) FROM message_text_docsize").fetchone()[0]
    finally:
        db.close()


async def test_open_creates_dir_and_uses_wal(tmp_path):
    s = await SqliteStore.open(tmp_path / "a" / "b", LIMITS)
    await s.close()
    db = sqlite3.connect(tmp_path / "a" / "b" / DB_FILE)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


async def test_reopen_keeps_data_and_sequences(tmp_path):
    s = await SqliteStore.open(tmp_path, LIMITS)
    await s.append("t", "s", [msg("a"), msg("b")], idempotency_key="k")
    await s.close()
    s = await SqliteStore.open(tmp_path, LIMITS)
    try:
        assert contents(await s.history("t", "s")) == ["a", "b"]
        assert (await s.append("t", "s", [msg("b")], idempotency_key="k")).duplicate is True
        assert (await s.append("t", "s", [msg("c")])).sequences == [3]
    finally:
        await s.close()


async def test_concurrent_appends_share_commits_and_each_is_acknowledged(tmp_path):
    store = await SqliteStore.open(tmp_path, LIMITS)
    try:
        results = await asyncio.gather(*(
            store.append("t", f"s{i % 5}", [msg(f"m{i}")], idempotency_key=f"k{i}") for i in range(50)))
        assert [r.duplicate for r in results] == [False] * 50
        for session in range(5):  # ten appends per session; every sequence handed out once
            seqs = sorted(r.sequences[0] for i, r in enumerate(results) if i % 5 == session)
            assert seqs == list(range(1, 11))
        assert store.commits < 50  # group commit: far fewer fsyncs than appends
        assert contents(await store.history("t", "s0")) == ["m25", "m30", "m35", "m40", "m45"]
    finally:
        await store.close()


async def test_a_failing_append_shares_the_transaction_and_leaves_nothing(tmp_path):
    store = await SqliteStore.open(tmp_path, LIMITS)
    try:
        await store.append("t", "a", [msg("first")])
        commits = store.commits
        ok, bad = await asyncio.gather(
            store.append("t", "b", [msg("x")]),
            # Fails after its session row was written: the savepoint takes that back too.
            store.append("t", "c", [msg("y"), msg("\ud800")], idempotency_key="k1"),
            return_exceptions=True,
        )
        assert isinstance(bad, UnicodeEncodeError) and ok.sequences == [1]
        assert store.commits == commits + 1  # both went into one transaction
        assert [s.session_id for s in (await store.list_sessions("t", 10)).sessions] == ["a", "b"]
    finally:
        await store.close()


async def test_the_search_index_follows_trims_deletes_and_expiry(tmp_path):
    clock = Clock()
    store = await SqliteStore.open(tmp_path, Limits(max_messages=3, session_ttl_s=60), clock)
    try:
        await store.append("t", "a", [msg(f"tea {i}") for i in range(5)])  # 2 trimmed at once
        await store.append("t", "b", [msg("tea"), msg("more tea")])
        assert fts_rows(tmp_path) == 5
        await store.delete_session("t", "b")
        assert fts_rows(tmp_path) == 3
        clock.advance(60)
        await store.expire()
        assert fts_rows(tmp_path) == 0
    finally:
        await store.close()


async def test_epochs_keep_rising_across_reopen(tmp_path):
    frozen = Clock()
    store = await SqliteStore.open(tmp_path, LIMITS, frozen)
    before = (await store.append("t", "s", [msg("a")])).session_epoch
    await store.delete_session("t", "s")
    await store.close()
    store = await SqliteStore.open(tmp_path, LIMITS, frozen)
    try:
        assert (await store.append("t", "s", [msg("a")])).session_epoch > before
    finally:
        await store.close()


async def test_epoch_follows_the_clock_when_it_moves(tmp_path):
    clock = Clock()
    store = await SqliteStore.open(tmp_path, LIMITS, clock)
    try:
        first = (await store.append("t", "s", [msg("a")])).session_epoch
        await store.delete_session("t", "s")
        clock.advance(1)
        second = (await store.append("t", "s", [msg("a")])).session_epoch
        assert first == Clock().now and second == clock.now
    finally:
        await store.close()


async def test_the_sweeper_runs_by_itself_and_stops_with_the_store(tmp_path):
    from clawmesh.services.memory.store import open_store

    clock = Clock()
    settings = MemorySettings(data_dir=tmp_path, session_ttl_s=10, sweep_interval_s=0.02)
    store = await open_store(settings, clock)
    try:
        await store.append("t", "s", [msg("x")])
        clock.advance(10)
        for _ in range(200):  # the sweeper's interval is real time
            if (await store.stats("t")).expired_sessions:
                break
            await asyncio.sleep(0.01)
        assert (await store.stats("t")).expired_sessions == 1
    finally:
        await store.close()
    assert store._sweeper is None
