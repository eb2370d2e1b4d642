"""Durable per-session chat history on SQLite (WAL): the memory service's core.

SQLite work runs off the event loop on two dedicated threads, each with its own
connection: one writes, one reads (WAL lets reads proceed while a write
commits). Appends use group commit: appends that arrive while a commit is on
its way to disk wait, then go together into the next transaction, each in its
own savepoint, under one ``synchronous=FULL`` commit. No append is acknowledged
before the commit that holds it is on disk, so an acknowledged append survives
``kill -9`` (and a power cut), and one fsync serves many concurrent appends.

    store = await MemoryStore.open(Path("data"), max_messages_per_session=200)
    result = await store.append("t1", "s1", [Message(role=2, content="hi")])
    history = await store.history("t1", "s1")
    await store.close()

A token count of 0 is estimated as ceil(chars / 4) over the content and any
tool-call names and arguments (the usual rule of thumb for BPE tokenizers on
English text); the estimate is stored and returned like a given count.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from clawmesh.services.memory.records import (
    AppendResult,
    History,
    Message,
    SessionInfo,
    SessionPage,
    Stats,
    ToolCall,
    decode_page_token,
    encode_page_token,
    estimate_tokens,
)
from clawmesh.shared.errors import InvalidArgument, NotFound

DB_FILE = "memory.sqlite3"
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000

_SCHEMA = """
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

_MESSAGE_COLUMNS = "role, content, name, created_ns, token_count, tool_calls, tool_call_id, seq"


def _row(where: tuple[str, str], seq: int, m: Message, now: int) -> tuple:
    """A ``messages`` row; fills in the creation time and the token estimate."""
    calls = [[c.id, c.name, c.arguments_json] for c in m.tool_calls]
    head = (*where, seq, m.role, m.content, m.name, m.created_ns or now)
    tail = (len(m.content.encode()), json.dumps(calls) if calls else "", m.tool_call_id)
    return (*head, m.token_count or estimate_tokens(m), *tail)


class MemoryStore:
    """Per-(tenant, session) message history with a window, idempotent appends and stats.

    Build with ``await MemoryStore.open(data_dir, max_messages_per_session)``.
    """

    def __init__(self, max_messages_per_session: int, clock: Callable[[], int] = time.time_ns):
        if max_messages_per_session < 1:
            raise ValueError("max_messages_per_session must be >= 1")
        self.max_messages = max_messages_per_session
        self._clock = clock
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="memory-write")
        self._read_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="memory-read")
        self._db: sqlite3.Connection | None = None
        self._rdb: sqlite3.Connection | None = None
        self._pending: list[tuple[tuple, asyncio.Future]] = []
        self._flusher: asyncio.Task | None = None
        self.commits = 0  # write transactions committed (group commit makes it < appends)

    @classmethod
    async def open(
        cls,
        data_dir: Path | str,
        max_messages_per_session: int,
        clock: Callable[[], int] = time.time_ns,
    ) -> MemoryStore:
        """Create ``data_dir`` if needed and open (or create) the database in it."""
        store = cls(max_messages_per_session, clock)
        try:
            await store._run(store._connect, Path(data_dir))
            await store._read(store._connect_reader, Path(data_dir))
        except BaseException:
            store._executor.shutdown(wait=False)
            store._read_executor.shutdown(wait=False)
            raise
        return store

    async def close(self) -> None:
        """Finish queued appends, then close both connections."""
        if self._flusher is not None:
            await asyncio.shield(self._flusher)
        if self._db is not None:
            await self._run(self._close)
        if self._rdb is not None:
            await self._read(self._close_reader)
        self._executor.shutdown(wait=False)
        self._read_executor.shutdown(wait=False)

    async def append(
        self, tenant: str, session_id: str, messages: Sequence[Message], idempotency_key: str = ""
    ) -> AppendResult:
        """Append ``messages`` atomically; returns only after the commit is on disk."""
        if not messages:
            raise InvalidArgument("messages", "must not be empty")
        future = asyncio.get_running_loop().create_future()
        self._pending.append(((tenant, session_id, list(messages), idempotency_key), future))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        """Commit queued appends in batches until the queue is empty (group commit)."""
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    results = await self._run(self._append_batch, [args for args, _ in batch])
                except BaseException as exc:  # the commit itself failed: nobody is acknowledged
                    results = [exc] * len(batch)
                for (_, future), result in zip(batch, results, strict=True):
                    if future.done():
                        continue
                    if isinstance(result, BaseException):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self._flusher = None

    async def history(
        self, tenant: str, session_id: str, limit: int = 0, token_budget: int = 0
    ) -> History:
        """The newest messages, oldest first. ``limit`` 0: the window; ``token_budget`` 0: none."""
        return await self._read(self._history, tenant, session_id, limit, token_budget)

    async def delete_session(self, tenant: str, session_id: str) -> int:
        """Delete a session; returns its message count. NotFound when there is none."""
        return await self._run(self._delete, tenant, session_id)

    async def list_sessions(
        self, tenant: str, page_size: int = 0, page_token: str = ""
    ) -> SessionPage:
        """Sessions ordered by id; pass ``next_page_token`` back for the next page."""
        size = DEFAULT_PAGE_SIZE if page_size <= 0 else min(page_size, MAX_PAGE_SIZE)
        after = decode_page_token(page_token) if page_token else None
        return await self._read(self._list, tenant, size, after)

    async def stats(self, tenant: str) -> Stats:
        """Sessions, messages, content bytes and tokens stored for ``tenant``."""
        return await self._read(self._stats, tenant)

    # -- everything below runs on the store's threads ----------------------------------

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _read(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._read_executor, fn, *args)

    def _connect_reader(self, data_dir: Path) -> None:
        self._rdb = sqlite3.connect(data_dir / DB_FILE, isolation_level=None)
        self._rdb.execute("PRAGMA busy_timeout=5000")

    def _close_reader(self) -> None:
        db, self._rdb = self._rdb, None
        if db is not None:
            db.close()

    def _connect(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(data_dir / DB_FILE, isolation_level=None)
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            db.close()
            raise RuntimeError(f"{data_dir / DB_FILE}: cannot enable WAL (got {mode})")
        # FULL: each commit fsyncs the WAL, so an acknowledged write is on disk.
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA busy_timeout=5000")
        db.executescript(_SCHEMA)
        self._db = db

    def _close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()

    @contextmanager
    def _tx(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        db = self._db if write else self._rdb
        if db is None:
            raise RuntimeError("memory store is closed")
        db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _append_batch(self, batch: list[tuple]) -> list:
        """One transaction for the batch; each append in a savepoint so a bad one fails alone."""
        results: list = []
        with self._tx(write=True) as db:
            for args in batch:
                db.execute("SAVEPOINT one_append")
                try:
                    results.append(self._append(db, *args))
                except Exception as exc:  # noqa: BLE001 - handed to that append's caller
                    db.execute("ROLLBACK TO one_append")
                    results.append(exc)
                db.execute("RELEASE one_append")
        self.commits += 1
        return results

    def _append(self, db, tenant: str, session_id: str, messages: list[Message], key: str):
        now = self._clock()
        key_where = (tenant, key)
        where = (tenant, session_id)
        if key:
            row = db.execute(
                "SELECT session_id, first_seq, count FROM idempotency WHERE tenant=? AND key=?",
                key_where,
            ).fetchone()
            if row is not None:
                if row[0] != session_id:
                    raise InvalidArgument("idempotency_key", "already used for another session")
                return AppendResult(list(range(row[1], row[1] + row[2])), duplicate=True)
        row = db.execute(
            "SELECT last_seq FROM sessions WHERE tenant=? AND session_id=?", where
        ).fetchone()
        if row is None:
            db.execute(
                "INSERT INTO sessions VALUES (?, ?, 0, 0, 0, 0, ?, ?)", (*where, now, now)
            )
        last = 0 if row is None else row[0]
        rows = [_row(where, seq, m, now) for seq, m in enumerate(messages, start=last + 1)]
        db.executemany("INSERT INTO messages VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)
        new_last = last + len(rows)
        count, tokens, size = len(rows), sum(r[7] for r in rows), sum(r[8] for r in rows)
        cutoff = new_last - self.max_messages
        if cutoff > 0:
            gone = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(token_count), 0),"
                " COALESCE(SUM(content_bytes), 0) FROM messages"
                " WHERE tenant=? AND session_id=? AND seq<=?",
                (*where, cutoff),
            ).fetchone()
            db.execute(
                "DELETE FROM messages WHERE tenant=? AND session_id=? AND seq<=?",
                (*where, cutoff),
            )
            count, tokens, size = count - gone[0], tokens - gone[1], size - gone[2]
        db.execute(
            "UPDATE sessions SET last_seq=?, message_count=message_count+?,"
            " token_count=token_count+?, content_bytes=content_bytes+?, updated_ns=?"
            " WHERE tenant=? AND session_id=?",
            (new_last, count, tokens, size, now, *where),
        )
        if key:
            db.execute(
                "INSERT INTO idempotency VALUES (?, ?, ?, ?, ?)",
                (*key_where, session_id, last + 1, len(rows)),
            )
        return AppendResult(list(range(last + 1, new_last + 1)), duplicate=False)

    def _history(self, tenant: str, session_id: str, limit: int, budget: int) -> History:
        with self._tx() as db:
            row = db.execute(
                "SELECT message_count FROM sessions WHERE tenant=? AND session_id=?",
                (tenant, session_id),
            ).fetchone()
            if row is None:
                return History([], 0, False)
            rows = db.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE tenant=? AND session_id=?"
                " ORDER BY seq DESC LIMIT ?",
                (tenant, session_id, limit or self.max_messages),
            ).fetchall()
        kept: list[Message] = []
        used = 0
        for r in rows:
            if budget and used + r[4] > budget:
                break
            used += r[4]
            calls = tuple(ToolCall(*c) for c in json.loads(r[5])) if r[5] else ()
            kept.append(Message(r[0], r[1], r[2], r[3], r[4], calls, r[6], r[7]))
        kept.reverse()
        return History(kept, row[0], truncated=len(kept) < row[0])

    def _delete(self, tenant: str, session_id: str) -> int:
        where = (tenant, session_id)
        with self._tx(write=True) as db:
            row = db.execute(
                "SELECT message_count FROM sessions WHERE tenant=? AND session_id=?", where
            ).fetchone()
            if row is None:
                raise NotFound(f"session {session_id!r} not found")
            for table in ("messages", "idempotency", "sessions"):
                db.execute(f"DELETE FROM {table} WHERE tenant=? AND session_id=?", where)
        return row[0]

    def _list(self, tenant: str, size: int, after: str | None) -> SessionPage:
        sql = (
            "SELECT session_id, message_count, token_count, created_ns, updated_ns"
            " FROM sessions WHERE tenant=?"
            + (" AND session_id>?" if after is not None else "")
            + " ORDER BY session_id LIMIT ?"
        )
        args = (tenant, after, size + 1) if after is not None else (tenant, size + 1)
        with self._tx() as db:
            rows = db.execute(sql, args).fetchall()
        sessions = [SessionInfo(*r) for r in rows[:size]]
        token = encode_page_token(sessions[-1].session_id) if len(rows) > size else ""
        return SessionPage(sessions, token)

    def _stats(self, tenant: str) -> Stats:
        with self._tx() as db:
            row = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(message_count), 0), COALESCE(SUM(content_bytes), 0),"
                " COALESCE(SUM(token_count), 0) FROM sessions WHERE tenant=?",
                (tenant,),
            ).fetchone()
        return Stats(*row)
