"""The SQLite memory database's schema, its version and the migrations between versions.

The version is SQLite's ``PRAGMA user_version``. ``migrate`` runs when the store
opens: a new file gets the current schema, an older one is migrated in place,
all in one transaction (a crash midway leaves the old version intact).

    db = sqlite3.connect("memory.sqlite3", isolation_level=None)
    db.row_factory = sqlite3.Row
    migrate(db)

Versions:

0. Before versioning: idempotency keys scoped to (tenant, key); sessions
   without an epoch.
1. Idempotency keys scoped to (tenant, session_id, key); ``sessions.epoch``
   identifies a session's incarnation; ``meta`` holds the last epoch handed out.
2. Expiry and search: ``idempotency.created_ns`` (keys expire), indexes for the
   sweeper, ``tenant_counters`` (trimmed and expired counts), ``messages.scope``
   and the FTS5 index ``message_text`` kept in step by triggers.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from clawmesh.services.memory.records import scope_token

SCHEMA_VERSION = 2

_SESSIONS = """
CREATE TABLE sessions (
    tenant TEXT NOT NULL, session_id TEXT NOT NULL,
    last_seq INTEGER NOT NULL, message_count INTEGER NOT NULL,
    token_count INTEGER NOT NULL, content_bytes INTEGER NOT NULL,
    created_ns INTEGER NOT NULL, updated_ns INTEGER NOT NULL,
    epoch INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, session_id)
) WITHOUT ROWID
"""
_MESSAGES = """
CREATE TABLE messages (
    tenant TEXT NOT NULL, session_id TEXT NOT NULL, seq INTEGER NOT NULL,
    role INTEGER NOT NULL, content TEXT NOT NULL, name TEXT NOT NULL,
    created_ns INTEGER NOT NULL, token_count INTEGER NOT NULL,
    content_bytes INTEGER NOT NULL, tool_calls TEXT NOT NULL, tool_call_id TEXT NOT NULL,
    scope TEXT NOT NULL DEFAULT '',
    UNIQUE (tenant, session_id, seq)
)
"""
# Version 1's table, as the v0 -> v1 step creates it (migrations keep their own DDL).
_IDEMPOTENCY_V1 = """
CREATE TABLE {name} (
    tenant TEXT NOT NULL, session_id TEXT NOT NULL, key TEXT NOT NULL,
    first_seq INTEGER NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (tenant, session_id, key)
) WITHOUT ROWID
"""
_IDEMPOTENCY = """
CREATE TABLE idempotency (
    tenant TEXT NOT NULL, session_id TEXT NOT NULL, key TEXT NOT NULL,
    first_seq INTEGER NOT NULL, count INTEGER NOT NULL,
    created_ns INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, session_id, key)
) WITHOUT ROWID
"""
_META = """
CREATE TABLE meta (name TEXT NOT NULL PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID
"""
_V2_OBJECTS = (
    """CREATE TABLE tenant_counters (
        tenant TEXT NOT NULL PRIMARY KEY,
        trimmed_messages INTEGER NOT NULL DEFAULT 0,
        expired_sessions INTEGER NOT NULL DEFAULT 0,
        expired_messages INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID""",
    "CREATE INDEX sessions_by_updated ON sessions (updated_ns)",
    "CREATE INDEX idempotency_by_created ON idempotency (created_ns)",
    # Contentless (the text is in `messages`), no positions: a message matches when it
    # holds every word. A message is indexed as "<scope> <content>", the scope a word
    # naming its (tenant, session), so a search looks up the session's messages only.
    "CREATE VIRTUAL TABLE message_text USING fts5("
    " body, content='', detail=none, tokenize='unicode61 remove_diacritics 2')",
    """CREATE TRIGGER message_text_insert AFTER INSERT ON messages BEGIN
        INSERT INTO message_text (rowid, body) VALUES (new.rowid, new.scope || ' ' || new.content);
    END""",
    """CREATE TRIGGER message_text_delete AFTER DELETE ON messages BEGIN
        INSERT INTO message_text (message_text, rowid, body)
        VALUES ('delete', old.rowid, old.scope || ' ' || old.content);
    END""",
)
# The highest session epoch handed out; a new session's epoch is above it.
LAST_EPOCH = "last_epoch"


def _create(db: sqlite3.Connection) -> None:
    """A new database: the current schema."""
    for ddl in (_SESSIONS, _MESSAGES, _IDEMPOTENCY, _META, *_V2_OBJECTS):
        db.execute(ddl)
    db.execute("INSERT INTO meta (name, value) VALUES (?, 0)", (LAST_EPOCH,))


def _v0_to_v1(db: sqlite3.Connection) -> None:
    """Scope idempotency keys to their session; give every session an epoch."""
    db.execute("ALTER TABLE sessions ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0")
    db.execute("UPDATE sessions SET epoch = MAX(created_ns, 1)")
    db.execute(_META)
    db.execute(
        "INSERT INTO meta (name, value) SELECT ?, COALESCE(MAX(epoch), 0) FROM sessions",
        (LAST_EPOCH,),
    )
    db.execute(_IDEMPOTENCY_V1.format(name="idempotency_v1"))
    db.execute(
        "INSERT INTO idempotency_v1 (tenant, session_id, key, first_seq, count)"
        " SELECT tenant, session_id, key, first_seq, count FROM idempotency"
    )
    db.execute("DROP TABLE idempotency")  # and its index idempotency_by_session
    db.execute("ALTER TABLE idempotency_v1 RENAME TO idempotency")


def _v1_to_v2(db: sqlite3.Connection) -> None:
    """Keys get a creation time (their session's last update: they live a TTL from
    now on, not from 0); counters, sweeper indexes and the search index appear."""
    db.create_function("memory_scope", 2, scope_token, deterministic=True)
    db.execute("ALTER TABLE messages ADD COLUMN scope TEXT NOT NULL DEFAULT ''")
    db.execute("UPDATE messages SET scope = memory_scope(tenant, session_id)")
    db.execute("ALTER TABLE idempotency ADD COLUMN created_ns INTEGER NOT NULL DEFAULT 0")
    db.execute(
        "UPDATE idempotency SET created_ns = COALESCE((SELECT s.updated_ns FROM sessions s"
        " WHERE s.tenant = idempotency.tenant AND s.session_id = idempotency.session_id), 0)"
    )
    for ddl in _V2_OBJECTS:
        db.execute(ddl)
    db.execute("INSERT INTO message_text (rowid, body) SELECT rowid, scope || ' ' || content FROM messages")


# _MIGRATIONS[v] takes a database from version v to v + 1.
_MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (_v0_to_v1, _v1_to_v2)
assert len(_MIGRATIONS) == SCHEMA_VERSION


def _version(db: sqlite3.Connection) -> int:
    return db.execute("PRAGMA user_version").fetchone()["user_version"]


def migrate(db: sqlite3.Connection) -> None:
    """Bring ``db`` (autocommit, rows by name) to SCHEMA_VERSION; refuse a newer one."""
    if _version(db) == SCHEMA_VERSION:
        return
    db.execute("BEGIN IMMEDIATE")  # another process may be migrating too: read under the lock
    try:
        version = _version(db)
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"memory database has schema version {version};"
                f" this code knows up to {SCHEMA_VERSION}"
            )
        found = db.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name='sessions'"
        ).fetchone()
        if found is None:
            _create(db)
        else:
            for step in _MIGRATIONS[version:]:
                step(db)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
