"""Schema versioning: new files get the current schema, old files are migrated in place."""

from __future__ import annotations

import sqlite3

import pytest

from clawmesh.services.memory.records import Limits, Message
from clawmesh.services.memory.schema import SCHEMA_VERSION
from clawmesh.services.memory.sqlite_store import DB_FILE, SqliteStore

# The schema before versioning (user_version 0), verbatim: keys scoped to (tenant, key).
OLD_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    tenant TEXT NOT NULL, session_id TEXT NOT NULL,
    last_seq INTEGER NOT NULL, message_count INTEGER NOT NULL,
    token_count INTEGER NOT NULL, content_bytes INTEGER NOT NULL,
    created_ns INTEGER NOT NULL, updated_ns INTEGER NOT NULL,
    PRIMARY KEY (tenant, session_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS messages (
    tenant TEXT NOT NULL, session_id TEXT NOT NULL, seq INTEGER NOT NULL,
    role INTEGER NOT NULL, content TEXT NOT NULL, name TEXT NOT NULL,
    created_ns INTEGER NOT NULL, token_count INTEGER NOT NULL,
    content_bytes INTEGER NOT NULL, tool_calls TEXT NOT NULL, tool_call_id TEXT NOT NULL,
    UNIQUE (tenant, session_id, seq)
);
CREATE TABLE IF NOT EXISTS idempotency (
    tenant TEXT NOT NULL, key TEXT NOT NULL, session_id TEXT NOT NULL,
    first_seq INTEGER NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (tenant, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idempotency_by_session ON idempotency (tenant, session_id);
"""
FROZEN = 5000  # the clock never moves: epochs must still change
LIMITS = Limits(max_messages=5, idempotency_ttl_s=60)


def frozen() -> int:
    return FROZEN


def make_old_database(data_dir) -> None:
    """What the old store left behind: two sessions of tenant t, one key in each."""
    data_dir.mkdir()
    db = sqlite3.connect(data_dir / DB_FILE)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(OLD_SCHEMA)
    db.executemany(
        "INSERT INTO sessions VALUES (?,?,?,?,?,?,?,?)",
        [("t", "s1", 2, 2, 2, 2, 1000, 2000), ("t", "s2", 1, 1, 1, 1, FROZEN, FROZEN)],
    )
    db.executemany(
        "INSERT INTO messages VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        [
            ("t", "s1", 1, 2, "a", "", 1000, 1, 1, "", ""),
            ("t", "s1", 2, 3, "b", "", 2000, 1, 1, '[["c1", "f", "{}"]]', ""),
            ("t", "s2", 1, 2, "x", "", FROZEN, 1, 1, "", ""),
        ],
    )
    db.executemany(
        "INSERT INTO idempotency VALUES (?,?,?,?,?)",
        [("t", "k1", "s1", 1, 2), ("t", "k2", "s2", 1, 1)],
    )
    db.commit()
    db.close()


def user_version(data_dir) -> int:
    db = sqlite3.connect(data_dir / DB_FILE)
    try:
        return db.execute("PRAGMA user_version").fetchone()[0]
    finally:
        db.close()


async def test_new_database_has_the_current_version(tmp_path):
    store = await SqliteStore.open(tmp_path, LIMITS)
    await store.close()
    assert user_version(tmp_path) == SCHEMA_VERSION


async def test_old_database_is_migrated_in_place_and_keeps_working(tmp_path):
    data = tmp_path / "data"
    make_old_database(data)
    assert user_version(data) == 0
    store = await SqliteStore.open(data, LIMITS, frozen)
    try:
        assert user_version(data) == SCHEMA_VERSION
        s1 = await store.history("t", "s1")
        assert [(m.sequence, m.content) for m in s1.messages] == [(1, "a"), (2, "b")]
        assert s1.messages[1].tool_calls[0].name == "f"
        assert (s1.total_messages, s1.last_sequence) == (2, 2) and s1.session_epoch > 0
        s2 = await store.history("t", "s2")
        assert s2.session_epoch > 0
        # Old keys still dedupe within their session ...
        again = await store.append("t", "s1", [Message(2, "a")], idempotency_key="k1")
        assert (again.sequences, again.duplicate, again.session_epoch) == (
            [1, 2],
            True,
            s1.session_epoch,
        )
        assert (await store.append("t", "s2", [Message(2, "x")], "k2")).duplicate is True
        # ... and are no longer in the way in another session.
        other = await store.append("t", "s2", [Message(2, "y")], idempotency_key="k1")
        assert (other.sequences, other.duplicate) == ([2], False)
        # A session created again gets a new epoch, though the clock is where s2's was.
        await store.delete_session("t", "s2")
        reborn = await store.append("t", "s2", [Message(2, "z")])
        assert reborn.sequences == [1]
        assert reborn.session_epoch not in (0, s1.session_epoch, s2.session_epoch)
    finally:
        await store.close()
    # Opening the migrated file again changes nothing.
    store = await SqliteStore.open(data, LIMITS, frozen)
    try:
        assert (await store.append("t", "s1", [Message(2, "a")], "k1")).duplicate is True
        assert (await store.history("t", "s2")).session_epoch == reborn.session_epoch
    finally:
        await store.close()


async def test_a_newer_schema_is_refused(tmp_path):
    await (await SqliteStore.open(tmp_path, LIMITS)).close()
    db = sqlite3.connect(tmp_path / DB_FILE)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(RuntimeError, match="schema version"):
        await SqliteStore.open(tmp_path, LIMITS)


async def test_migrated_messages_are_searchable_and_old_keys_expire_a_ttl_after_their_session(tmp_path):
    data = tmp_path / "data"
    make_old_database(data)  # s1 was last updated at 2000 ns, s2 at FROZEN
    now = [FROZEN]
    store = await SqliteStore.open(data, LIMITS, lambda: now[0])
    try:
        assert [m.sequence for m in await store.search("t", "s1", "B", 5)] == [2]
        assert [m.content for m in await store.search("t", "s2", "x", 5)] == ["x"]
        await store.append("t", "s1", [Message(2, "b again")])
        assert [m.sequence for m in await store.search("t", "s1", "b", 5)] == [3, 2]
        now[0] = 2000 + 60 * 10**9  # s1's key k1 is a TTL old now, s2's k2 not yet
        assert (await store.append("t", "s1", [Message(2, "a")], "k1")).duplicate is False
        assert (await store.append("t", "s2", [Message(2, "x")], "k2")).duplicate is True
        assert (await store.stats("t")).trimmed_messages == 0
    finally:
        await store.close()
