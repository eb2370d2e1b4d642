"""The memory store's SQL: plain functions over one connection, inside a transaction.

The store's threads call these (``store.py`` owns connections, transactions and
group commit). Every statement names its columns and rows are read by name
(``sqlite3.Row``), so a schema change cannot silently shift fields.
"""

from __future__ import annotations

import json
import sqlite3

from clawmesh.services.memory.records import (
    AppendResult,
    History,
    Message,
    SessionInfo,
    SessionPage,
    Stats,
    ToolCall,
    encode_page_token,
    estimate_message_tokens,
)
from clawmesh.services.memory.schema import LAST_EPOCH
from clawmesh.shared.errors import NotFound

_MESSAGE_COLUMNS = (
    "tenant", "session_id", "seq", "role", "content", "name", "created_ns",
    "token_count", "content_bytes", "tool_calls", "tool_call_id",
)  # fmt: skip
_INSERT_MESSAGE = (
    f"INSERT INTO messages ({', '.join(_MESSAGE_COLUMNS)})"
    f" VALUES ({', '.join(':' + c for c in _MESSAGE_COLUMNS)})"
)
_READ_MESSAGE = (
    "SELECT seq, role, content, name, created_ns, token_count, tool_calls, tool_call_id"
    " FROM messages WHERE tenant=:tenant AND session_id=:session_id AND seq>:after"
    " ORDER BY seq DESC LIMIT :limit"
)
_SESSION = "tenant=:tenant AND session_id=:session_id"


def _row(tenant: str, session_id: str, seq: int, m: Message, now: int) -> dict:
    """A ``messages`` row by column; fills in the creation time and the token estimate."""
    calls = [[c.id, c.name, c.arguments_json] for c in m.tool_calls]
    return {
        "tenant": tenant,
        "session_id": session_id,
        "seq": seq,
        "role": m.role,
        "content": m.content,
        "name": m.name,
        "created_ns": m.created_ns or now,
        "token_count": m.token_count or estimate_message_tokens(m),
        "content_bytes": len(m.content.encode()),
        "tool_calls": json.dumps(calls) if calls else "",
        "tool_call_id": m.tool_call_id,
    }


def _message(r: sqlite3.Row) -> Message:
    """A ``Message`` from a row of ``_READ_MESSAGE``."""
    calls = tuple(ToolCall(*c) for c in json.loads(r["tool_calls"])) if r["tool_calls"] else ()
    return Message(
        role=r["role"],
        content=r["content"],
        name=r["name"],
        created_ns=r["created_ns"],
        token_count=r["token_count"],
        tool_calls=calls,
        tool_call_id=r["tool_call_id"],
        sequence=r["seq"],
    )


def append(
    db: sqlite3.Connection,
    tenant: str,
    session_id: str,
    messages: list[Message],
    key: str,
    *,
    now: int,
    window: int,
) -> AppendResult:
    """Append ``messages`` (or find the earlier append of ``key``); trims to ``window``."""
    where = {"tenant": tenant, "session_id": session_id}
    session = db.execute(f"SELECT last_seq, epoch FROM sessions WHERE {_SESSION}", where).fetchone()
    if session is None:
        last, epoch = 0, new_epoch(db, now)
        db.execute(
            "INSERT INTO sessions (tenant, session_id, last_seq, message_count, token_count,"
            " content_bytes, created_ns, updated_ns, epoch)"
            " VALUES (:tenant, :session_id, 0, 0, 0, 0, :now, :now, :epoch)",
            {**where, "now": now, "epoch": epoch},
        )
    else:
        last, epoch = session["last_seq"], session["epoch"]
        if key:  # a session's keys go when it does: only an existing one has any
            seen = db.execute(
                f"SELECT first_seq, count FROM idempotency WHERE {_SESSION} AND key=:key",
                {**where, "key": key},
            ).fetchone()
            if seen is not None:
                first = seen["first_seq"]
                sequences = list(range(first, first + seen["count"]))
                return AppendResult(sequences, duplicate=True, session_epoch=epoch)
    rows = [_row(tenant, session_id, seq, m, now) for seq, m in enumerate(messages, last + 1)]
    db.executemany(_INSERT_MESSAGE, rows)
    new_last = last + len(rows)
    count = len(rows)
    tokens = sum(r["token_count"] for r in rows)
    size = sum(r["content_bytes"] for r in rows)
    cutoff = new_last - window
    if cutoff > 0:
        gone = db.execute(
            "SELECT COUNT(*) AS count, COALESCE(SUM(token_count), 0) AS tokens,"
            " COALESCE(SUM(content_bytes), 0) AS size FROM messages"
            f" WHERE {_SESSION} AND seq<=:cutoff",
            {**where, "cutoff": cutoff},
        ).fetchone()
        db.execute(
            f"DELETE FROM messages WHERE {_SESSION} AND seq<=:cutoff",
            {**where, "cutoff": cutoff},
        )
        count, tokens, size = count - gone["count"], tokens - gone["tokens"], size - gone["size"]
    db.execute(
        "UPDATE sessions SET last_seq=:last, message_count=message_count+:count,"
        " token_count=token_count+:tokens, content_bytes=content_bytes+:size,"
        f" updated_ns=:now WHERE {_SESSION}",
        {**where, "last": new_last, "count": count, "tokens": tokens, "size": size, "now": now},
    )
    if key:
        db.execute(
            "INSERT INTO idempotency (tenant, session_id, key, first_seq, count)"
            " VALUES (:tenant, :session_id, :key, :first, :count)",
            {**where, "key": key, "first": last + 1, "count": len(rows)},
        )
    return AppendResult(list(range(last + 1, new_last + 1)), duplicate=False, session_epoch=epoch)


def new_epoch(db: sqlite3.Connection, now: int) -> int:
    """A new session's epoch: above every one handed out before, even if the clock is not."""
    last = db.execute("SELECT value FROM meta WHERE name=?", (LAST_EPOCH,)).fetchone()
    epoch = max(now, last["value"] + 1)
    db.execute("UPDATE meta SET value=? WHERE name=?", (epoch, LAST_EPOCH))
    return epoch


def history(
    db: sqlite3.Connection, tenant: str, session_id: str, limit: int, budget: int, after: int
) -> History:
    """The newest ``limit`` (>= 1) messages above sequence ``after`` within ``budget`` tokens."""
    where = {"tenant": tenant, "session_id": session_id}
    session = db.execute(
        f"SELECT message_count, last_seq, epoch FROM sessions WHERE {_SESSION}", where
    ).fetchone()
    if session is None:
        return History([], 0, False)
    last = session["last_seq"]
    # The stored messages are sequences last-count+1 .. last, without gaps.
    available = min(session["message_count"], max(last - after, 0))
    rows = []
    if available:
        rows = db.execute(_READ_MESSAGE, {**where, "after": after, "limit": limit}).fetchall()
    kept: list[Message] = []
    used = 0
    for r in rows:
        if budget and used + r["token_count"] > budget:
            break
        used += r["token_count"]
        kept.append(_message(r))
    kept.reverse()
    return History(
        kept,
        session["message_count"],
        truncated=len(kept) < available,
        last_sequence=last,
        session_epoch=session["epoch"],
    )


def delete(db: sqlite3.Connection, tenant: str, session_id: str) -> int:
    """Delete a session with its messages and keys; its message count. NotFound if none."""
    where = {"tenant": tenant, "session_id": session_id}
    row = db.execute(f"SELECT message_count FROM sessions WHERE {_SESSION}", where).fetchone()
    if row is None:
        raise NotFound(f"session {session_id!r} not found")
    for table in ("messages", "idempotency", "sessions"):
        db.execute(f"DELETE FROM {table} WHERE {_SESSION}", where)
    return row["message_count"]


def list_sessions(db: sqlite3.Connection, tenant: str, size: int, after: str | None) -> SessionPage:
    """Up to ``size`` sessions with an id above ``after``, by id."""
    sql = (
        "SELECT session_id, message_count, token_count, created_ns, updated_ns"
        " FROM sessions WHERE tenant=:tenant"
        + (" AND session_id>:after" if after is not None else "")
        + " ORDER BY session_id LIMIT :limit"
    )
    rows = db.execute(sql, {"tenant": tenant, "after": after, "limit": size + 1}).fetchall()
    sessions = [
        SessionInfo(
            session_id=r["session_id"],
            message_count=r["message_count"],
            token_count=r["token_count"],
            created_ns=r["created_ns"],
            updated_ns=r["updated_ns"],
        )
        for r in rows[:size]
    ]
    token = encode_page_token(sessions[-1].session_id) if len(rows) > size else ""
    return SessionPage(sessions, token)


def stats(db: sqlite3.Connection, tenant: str) -> Stats:
    """Totals over ``tenant``'s sessions."""
    row = db.execute(
        "SELECT COUNT(*) AS sessions, COALESCE(SUM(message_count), 0) AS messages,"
        " COALESCE(SUM(content_bytes), 0) AS content_bytes,"
        " COALESCE(SUM(token_count), 0) AS tokens FROM sessions WHERE tenant=:tenant",
        {"tenant": tenant},
    ).fetchone()
    return Stats(
        sessions=row["sessions"],
        messages=row["messages"],
        content_bytes=row["content_bytes"],
        tokens=row["tokens"],
    )
