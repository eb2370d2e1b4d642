"""The memory database's schema, its version and the migrations between versions.

The version is SQLite's ``PRAGMA user_version``. ``migrate`` runs when the store
opens: a new file gets the current schema, an older one is migrated in place,
all in one transaction (a crash midway leaves the old version intact).

Versions:

0. Before versioning: idempotency keys scoped to (tenant, key); sessions
   without an epoch.
1. Idempotency keys scoped to (tenant, session_id, key); ``sessions.epoch``
   identifies a session's incarnation; ``meta`` holds the last epoch handed out.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

SCHEMA_VERSION = 1

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
    UNIQUE (tenant, session_id, seq)
)
"""
_IDEMPOTENCY = """
CREATE TABLE {name} (
    tenant TEXT NOT NULL, session_id TEXT NOT NULL, key TEXT NOT NULL,
    first_seq INTEGER NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (tenant, session_id, key)
) WITHOUT ROWID
"""
_META = """
CREATE TABLE meta (name TEXT NOT NULL PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID
"""
# The highest session epoch handed out; a new session's epoch is above it.
LAST_EPOCH = "last_epoch"


def _create(db: sqlite3.Connection) -> None:
    """A new database: the current schema."""
    for ddl in (_SESSIONS, _MESSAGES, _IDEMPOTENCY.format(name="idempotency"), _META):
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
    db.execute(_IDEMPOTENCY.format(name="idempotency_v1"))
    db.execute(
        "INSERT INTO idempotency_v1 (tenant, session_id, key, first_seq, count)"
        " SELECT tenant, session_id, key, first_seq, count FROM idempotency"
    )
    db.execute("DROP TABLE idempotency")  # and its index idempotency_by_session
    db.execute("ALTER TABLE idempotency_v1 RENAME TO idempotency")


# _MIGRATIONS[v] takes a database from version v to v + 1.
_MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (_v0_to_v1,)
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
