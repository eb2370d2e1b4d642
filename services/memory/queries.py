"""The SQLite store's SQL: plain functions over one connection, inside a transaction.

The store's threads call these (``sqlite_store.py`` owns connections,
transactions and group commit). Every statement names its columns and rows are
read by name (``sqlite3.Row``), so a schema change cannot silently shift fields.

    with store._tx(write=True) as db:
        queries.append(db, "t", "s", [Message(2, "hi")], "", now=now, limits=limits)

A session idle for longer than the TTL is invisible to every read (history,
search, list, stats) from that moment, whoever runs the clock; ``expire`` (the
sweeper) and the next append to it remove it and count it.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter

from clawmesh.services.memory.records import (
    AppendResult,
    Expired,
    History,
    Limits,
    Message,
    SessionInfo,
    SessionPage,
    Stats,
    ToolCall,
    encode_page_token,
    message_tokens,
    scope_token,
)
from clawmesh.services.memory.schema import LAST_EPOCH
from clawmesh.shared.errors import NotFound

_MESSAGE_COLUMNS = (
    "tenant", "session_id", "seq", "role", "content", "name", "created_ns",
    "token_count", "content_bytes", "tool_calls", "tool_call_id", "scope",
)  # fmt: skip
_INSERT_MESSAGE = (
    f"INSERT INTO messages ({', '.join(_MESSAGE_COLUMNS)})"
    f" VALUES ({', '.join(':' + c for c in _MESSAGE_COLUMNS)})"
)
_READ_COLUMNS = "seq, role, content, name, created_ns, token_count, tool_calls, tool_call_id"
_READ_MESSAGE = (
    f"SELECT {_READ_COLUMNS} FROM messages WHERE tenant=:tenant AND session_id=:session_id"
    " AND seq>:after ORDER BY seq DESC LIMIT :limit"
)
_SEARCH = (
    "SELECT " + ", ".join(f"m.{c}" for c in _READ_COLUMNS.split(", ")) + " FROM message_text"
    # CROSS JOIN keeps the index lookup outermost: the planner would otherwise scan the
    # session's messages and run the whole full-text query once per message.
    " CROSS JOIN messages m ON m.rowid = message_text.rowid"
    " WHERE message_text MATCH :match AND m.tenant=:tenant AND m.session_id=:session_id"
    " ORDER BY m.seq DESC LIMIT :limit"
)
_SESSION = "tenant=:tenant AND session_id=:session_id"


def _row(tenant: str, session_id: str, seq: int, m: Message, now: int, scope: str) -> dict:
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
        "token_count": message_tokens(m),
        "content_bytes": len(m.content.encode()),
        "tool_calls": json.dumps(calls) if calls else "",
        "tool_call_id": m.tool_call_id,
        "scope": scope,
    }


def _message(r: sqlite3.Row) -> Message:
    """A ``Message`` from a row of ``_READ_MESSAGE`` or ``_SEARCH``."""
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


def _live_session(db: sqlite3.Connection, where: dict, columns: str, now: int, limits: Limits):
    """The session's row (``columns``) unless there is none or it has expired."""
    row = db.execute(f"SELECT {columns}, updated_ns FROM sessions WHERE {_SESSION}", where).fetchone()
    if row is None or limits.session_expired(row["updated_ns"], now):
        return None
    return row


def _count(db: sqlite3.Connection, tenant: str, **counts: int) -> None:
    """Add to the tenant's trimmed/expired counters."""
    counts = {k: v for k, v in counts.items() if v}
    if not counts:
        return
    names = ", ".join(counts)
    db.execute(
        f"INSERT INTO tenant_counters (tenant, {names}) VALUES (:tenant, :{', :'.join(counts)})"
        " ON CONFLICT (tenant) DO UPDATE SET "
        + ", ".join(f"{k} = {k} + excluded.{k}" for k in counts),
        {"tenant": tenant, **counts},
    )


def _drop(db: sqlite3.Connection, where: dict) -> None:
    """Delete a session with its messages (and so their search entries) and keys."""
    for table in ("messages", "idempotency", "sessions"):
        db.execute(f"DELETE FROM {table} WHERE {_SESSION}", where)


def append(
    db: sqlite3.Connection,
    tenant: str,
    session_id: str,
    messages: list[Message],
    key: str,
    *,
    now: int,
    limits: Limits,
) -> AppendResult:
    """Append ``messages`` (or find the earlier append of ``key``); then trim the session's
    oldest messages to ``limits``. An expired session is removed and started anew."""
    where = {"tenant": tenant, "session_id": session_id}
    session = db.execute(
        "SELECT last_seq, epoch, message_count, token_count, content_bytes, updated_ns"
        f" FROM sessions WHERE {_SESSION}",
        where,
    ).fetchone()
    if session is not None and limits.session_expired(session["updated_ns"], now):
        _drop(db, where)
        _count(db, tenant, expired_sessions=1, expired_messages=session["message_count"])
        session = None
    if session is None:
        last, epoch, count, tokens, size = 0, new_epoch(db, now), 0, 0, 0
        db.execute(
            "INSERT INTO sessions (tenant, session_id, last_seq, message_count, token_count,"
            " content_bytes, created_ns, updated_ns, epoch)"
            " VALUES (:tenant, :session_id, 0, 0, 0, 0, :now, :now, :epoch)",
            {**where, "now": now, "epoch": epoch},
        )
    else:
        last, epoch = session["last_seq"], session["epoch"]
        count, tokens, size = session["message_count"], session["token_count"], session["content_bytes"]
        if key:  # a session's keys go when it does: only an existing one has any
            seen = db.execute(
                f"SELECT first_seq, count, created_ns FROM idempotency WHERE {_SESSION} AND key=:key",
                {**where, "key": key},
            ).fetchone()
            if seen is not None and not limits.key_expired(seen["created_ns"], now):
                first = seen["first_seq"]
                sequences = list(range(first, first + seen["count"]))
                return AppendResult(sequences, duplicate=True, session_epoch=epoch)
    scope = scope_token(tenant, session_id)
    rows = [_row(tenant, session_id, seq, m, now, scope) for seq, m in enumerate(messages, last + 1)]
    db.executemany(_INSERT_MESSAGE, rows)
    new_last = last + len(rows)
    count += len(rows)
    tokens += sum(r["token_count"] for r in rows)
    size += sum(r["content_bytes"] for r in rows)
    gone_count, gone_tokens, gone_size = _trim(db, where, count, tokens, limits)
    _count(db, tenant, trimmed_messages=gone_count)
    db.execute(
        "UPDATE sessions SET last_seq=:last, message_count=:count, token_count=:tokens,"
        f" content_bytes=:size, updated_ns=:now WHERE {_SESSION}",
        {**where, "last": new_last, "count": count - gone_count, "tokens": tokens - gone_tokens,
         "size": size - gone_size, "now": now},
    )
    if key:  # a new key, or one whose TTL had run out: it now means this append
        db.execute(
            "INSERT INTO idempotency (tenant, session_id, key, first_seq, count, created_ns)"
            " VALUES (:tenant, :session_id, :key, :first, :count, :now)"
            " ON CONFLICT (tenant, session_id, key) DO UPDATE SET first_seq=excluded.first_seq,"
            " count=excluded.count, created_ns=excluded.created_ns",
            {**where, "key": key, "first": last + 1, "count": len(rows), "now": now},
        )
    return AppendResult(list(range(last + 1, new_last + 1)), duplicate=False, session_epoch=epoch)


def _trim(db: sqlite3.Connection, where: dict, count: int, tokens: int, limits: Limits):
    """Delete the oldest messages until the session is within both limits.

    Returns what went: (messages, tokens, content bytes). Walks the oldest rows
    only as far as needed (one, in the steady state of a full session).
    """
    excess = count - limits.max_messages
    if excess <= 0 and tokens <= limits.max_tokens:
        return 0, 0, 0
    gone = [0, 0, 0]
    cut = 0
    rows = db.execute(
        f"SELECT seq, token_count, content_bytes FROM messages WHERE {_SESSION} ORDER BY seq", where
    )
    for r in rows:
        if gone[0] >= excess and tokens - gone[1] <= limits.max_tokens:
            break
        gone = [gone[0] + 1, gone[1] + r["token_count"], gone[2] + r["content_bytes"]]
        cut = r["seq"]
    rows.close()
    db.execute(f"DELETE FROM messages WHERE {_SESSION} AND seq<=:cut", {**where, "cut": cut})
    return tuple(gone)


def new_epoch(db: sqlite3.Connection, now: int) -> int:
    """A new session's epoch: above every one handed out before, even if the clock is not."""
    last = db.execute("SELECT value FROM meta WHERE name=?", (LAST_EPOCH,)).fetchone()
    epoch = max(now, last["value"] + 1)
    db.execute("UPDATE meta SET value=? WHERE name=?", (epoch, LAST_EPOCH))
    return epoch


def history(
    db: sqlite3.Connection, tenant: str, session_id: str, limit: int, budget: int, after: int,
    *, now: int, limits: Limits,
) -> History:
    """The newest ``limit`` (>= 1) messages above sequence ``after`` within ``budget`` tokens."""
    where = {"tenant": tenant, "session_id": session_id}
    session = _live_session(db, where, "message_count, last_seq, epoch", now, limits)
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


def search(
    db: sqlite3.Connection, tenant: str, session_id: str, terms: list[str], limit: int,
    *, now: int, limits: Limits,
) -> list[Message]:
    """The session's messages holding every word of ``terms``, newest first (FTS5)."""
    where = {"tenant": tenant, "session_id": session_id}
    if _live_session(db, where, "epoch", now, limits) is None:
        return []
    # Words are letters and digits only (records.words): quoting makes each a plain term.
    match = " AND ".join(f'"{w}"' for w in [scope_token(tenant, session_id), *terms])
    rows = db.execute(_SEARCH, {**where, "match": match, "limit": limit}).fetchall()
    return [_message(r) for r in rows]


def delete(db: sqlite3.Connection, tenant: str, session_id: str, *, now: int, limits: Limits) -> int:
    """Delete a session with its messages and keys; its message count. NotFound if none."""
    where = {"tenant": tenant, "session_id": session_id}
    row = _live_session(db, where, "message_count", now, limits)
    if row is None:
        raise NotFound(f"session {session_id!r} not found")
    _drop(db, where)
    return row["message_count"]


def _live_after(now: int, limits: Limits) -> int:
    """Sessions updated after this are live (-1: no TTL, all are)."""
    return now - limits.session_ttl_ns if limits.session_ttl_ns else -1


def list_sessions(
    db: sqlite3.Connection, tenant: str, size: int, after: str | None, *, now: int, limits: Limits
) -> SessionPage:
    """Up to ``size`` live sessions with an id above ``after``, by id."""
    sql = (
        "SELECT session_id, message_count, token_count, created_ns, updated_ns"
        " FROM sessions WHERE tenant=:tenant AND updated_ns>:live"
        + (" AND session_id>:after" if after is not None else "")
        + " ORDER BY session_id LIMIT :limit"
    )
    params = {"tenant": tenant, "after": after, "limit": size + 1, "live": _live_after(now, limits)}
    rows = db.execute(sql, params).fetchall()
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
    token = encode_page_token(tenant, sessions[-1].session_id) if len(rows) > size else ""
    return SessionPage(sessions, token)


def stats(db: sqlite3.Connection, tenant: str, *, now: int, limits: Limits) -> Stats:
    """Totals over ``tenant``'s live sessions, with its trimmed and expired counters."""
    row = db.execute(
        "SELECT COUNT(*) AS sessions, COALESCE(SUM(message_count), 0) AS messages,"
        " COALESCE(SUM(content_bytes), 0) AS content_bytes,"
        " COALESCE(SUM(token_count), 0) AS tokens FROM sessions"
        " WHERE tenant=:tenant AND updated_ns>:live",
        {"tenant": tenant, "live": _live_after(now, limits)},
    ).fetchone()
    counters = db.execute(
        "SELECT trimmed_messages, expired_sessions, expired_messages FROM tenant_counters"
        " WHERE tenant=:tenant",
        {"tenant": tenant},
    ).fetchone()
    return Stats(
        sessions=row["sessions"],
        messages=row["messages"],
        content_bytes=row["content_bytes"],
        tokens=row["tokens"],
        **(dict(counters) if counters is not None else {}),
    )


def expire(db: sqlite3.Connection, *, now: int, limits: Limits) -> Expired:
    """One sweeper step: up to ``sweep_batch`` expired sessions and as many expired keys."""
    sessions: Counter[str] = Counter()
    messages: Counter[str] = Counter()
    if limits.session_ttl_ns:
        rows = db.execute(
            "SELECT tenant, session_id, message_count FROM sessions WHERE updated_ns<=:cutoff"
            " LIMIT :batch",
            {"cutoff": now - limits.session_ttl_ns, "batch": limits.sweep_batch},
        ).fetchall()
        for r in rows:
            _drop(db, {"tenant": r["tenant"], "session_id": r["session_id"]})
            sessions[r["tenant"]] += 1
            messages[r["tenant"]] += r["message_count"]
        for tenant in sessions:
            _count(db, tenant, expired_sessions=sessions[tenant], expired_messages=messages[tenant])
    keys = db.execute(
        "DELETE FROM idempotency WHERE (tenant, session_id, key) IN (SELECT tenant, session_id, key"
        " FROM idempotency WHERE created_ns<=:cutoff LIMIT :batch)",
        {"cutoff": now - limits.idempotency_ttl_ns, "batch": limits.sweep_batch},
    ).rowcount
    return Expired(sessions.total(), messages.total(), keys)


def totals(db: sqlite3.Connection) -> dict[str, int]:
    """Every tenant's sessions and counters together (the store's gauges)."""
    row = db.execute("SELECT COUNT(*) AS sessions FROM sessions").fetchone()
    counters = db.execute(
        "SELECT COALESCE(SUM(trimmed_messages), 0) AS trimmed_messages,"
        " COALESCE(SUM(expired_sessions), 0) AS expired_sessions,"
        " COALESCE(SUM(expired_messages), 0) AS expired_messages FROM tenant_counters"
    ).fetchone()
    return {"sessions": row["sessions"], **dict(counters)}
