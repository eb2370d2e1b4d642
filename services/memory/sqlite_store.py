"""Durable per-session chat history on SQLite (WAL): the embedded memory backend.

SQLite work runs off the event loop on two dedicated threads, each with its own
connection: one writes, one reads (WAL lets reads proceed while a write
commits). Appends use group commit: appends that arrive while a commit is on
its way to disk wait, then go together into the next transaction, each in its
own savepoint, under one ``synchronous=FULL`` commit. No append is acknowledged
before the commit that holds it is on disk, so an acknowledged append survives
``kill -9`` (and a power cut), and one fsync serves many concurrent appends.

    store = await SqliteStore.open(Path("data"), Limits(max_messages=200))
    result = await store.append("t1", "s1", [Message(role=2, content="hi")])
    history = await store.history("t1", "s1")
    await store.close()

A token count of 0 is estimated (``estimate_message_tokens``: ceil(chars / 4)
over the content and any tool-call names and arguments); the estimate is
stored and returned like a given count. Idempotency keys are scoped to
(tenant, session): a repeat in the same session returns the first result.
Each session has an epoch that changes when it is deleted and created again.
Search uses an FTS5 index kept in step with ``messages`` by triggers. The
sweeper's work (``expire``) goes through the writer thread in steps of
``sweep_batch`` sessions, so appends interleave with a long sweep. The SQL is
in ``queries.py``; the schema and its migrations in ``schema.py``.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from clawmesh.services.memory import queries
from clawmesh.services.memory.records import (
    AppendResult,
    Expired,
    History,
    Limits,
    Message,
    SessionPage,
    Stats,
    decode_page_token,
)
from clawmesh.services.memory.schema import migrate
from clawmesh.services.memory.store import Clock, MemoryStore

DB_FILE = "memory.sqlite3"


class SqliteStore(MemoryStore):
    """Per-(tenant, session) message history in one SQLite file.

    Build with ``await SqliteStore.open(data_dir, limits)``.
    """

    def __init__(self, limits: Limits, clock: Clock = time.time_ns, inline_reads: bool = False):
        super().__init__(limits, clock)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="memory-write")
        # Inline: reads run on the event loop's thread. A bounded indexed read in WAL
        # mode takes tens of µs and never waits for the writer; a thread hop costs
        # more CPU than that (two wake-ups and a handoff per read).
        self.inline_reads = inline_reads
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
        limits: Limits,
        clock: Clock = time.time_ns,
        inline_reads: bool = False,
    ) -> SqliteStore:
        """Create ``data_dir`` if needed and open (or create) the database in it."""
        store = cls(limits, clock, inline_reads)
        try:
            await store._run(store._connect, Path(data_dir))
            await store._read(store._connect_reader, Path(data_dir))
        except BaseException:
            store._executor.shutdown(wait=False)
            store._read_executor.shutdown(wait=False)
            raise
        return store

    async def close(self) -> None:
        """Stop the sweeper, finish queued appends, then close both connections."""
        await super().close()
        if self._flusher is not None:
            await asyncio.shield(self._flusher)
        if self._db is not None:
            await self._run(self._close)
        if self._rdb is not None:
            await self._read(self._close_reader)
        self._executor.shutdown(wait=False)
        self._read_executor.shutdown(wait=False)

    async def _append(self, tenant: str, session_id: str, messages: list[Message], key: str) -> AppendResult:
        """Queue the append for the next group commit; returns once that commit is on disk."""
        future = asyncio.get_running_loop().create_future()
        self._pending.append(((tenant, session_id, messages, key), future))
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
        self, tenant: str, session_id: str, limit: int = 0, token_budget: int = 0, after_sequence: int = 0
    ) -> History:
        limit = limit or self.limits.max_messages
        after = max(after_sequence, 0)
        return await self._query(queries.history, tenant, session_id, limit, token_budget, after)

    async def _search(self, tenant: str, session_id: str, terms: list[str], limit: int) -> list[Message]:
        return await self._query(queries.search, tenant, session_id, terms, limit)

    async def delete_session(self, tenant: str, session_id: str) -> int:
        return await self._run(self._in_tx, True, self._timed(queries.delete), tenant, session_id)

    async def list_sessions(self, tenant: str, page_size: int, page_token: str = "") -> SessionPage:
        if page_size < 1:
            raise ValueError("page_size must be >= 1")
        after = decode_page_token(page_token, tenant) if page_token else None
        return await self._query(queries.list_sessions, tenant, page_size, after)

    async def stats(self, tenant: str) -> Stats:
        return await self._query(queries.stats, tenant)

    async def expire(self) -> Expired:
        """Sweep in steps of ``sweep_batch`` (one write transaction each) until done."""
        total = Expired()
        while True:
            step = await self._run(self._in_tx, True, self._timed(queries.expire))
            total += step
            if step.sessions < self.limits.sweep_batch and step.keys < self.limits.sweep_batch:
                return total

    async def gauges(self) -> dict[str, float]:
        # A count over every session: a few ms per 100,000, once per metrics export.
        return await self._read(self._in_tx, False, queries.totals)

    # -- everything below runs on the store's threads ----------------------------------

    def _timed(self, fn):
        """``fn`` with the clock read and the limits passed when it runs."""
        return lambda db, *args: fn(db, *args, now=self._clock(), limits=self.limits)

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _read(self, fn, *args):
        if self.inline_reads:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self._read_executor, fn, *args)

    async def _query(self, fn, *args):
        """``fn(db, *args, now=…, limits=…)`` in a read transaction on the reader's thread."""
        return await self._read(self._in_tx, False, self._timed(fn), *args)

    def _connect_reader(self, data_dir: Path) -> None:
        self._rdb = sqlite3.connect(data_dir / DB_FILE, isolation_level=None)
        self._rdb.row_factory = sqlite3.Row
        self._rdb.execute("PRAGMA busy_timeout=5000")

    def _close_reader(self) -> None:
        db, self._rdb = self._rdb, None
        if db is not None:
            db.close()

    def _connect(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(data_dir / DB_FILE, isolation_level=None)
        db.row_factory = sqlite3.Row
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()["journal_mode"]
        if mode.lower() != "wal":
            db.close()
            raise RuntimeError(f"{data_dir / DB_FILE}: cannot enable WAL (got {mode})")
        # FULL: each commit fsyncs the WAL, so an acknowledged write is on disk.
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA busy_timeout=5000")
        try:
            migrate(db)
        except BaseException:
            db.close()
            raise
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

    def _in_tx(self, write: bool, fn, *args):
        """``fn(db, *args)`` in one transaction of the writer (``write``) or the reader."""
        with self._tx(write) as db:
            return fn(db, *args)

    def _append_batch(self, batch: list[tuple]) -> list:
        """One transaction for the batch; each append in a savepoint so a bad one fails alone."""
        results: list = []
        with self._tx(write=True) as db:
            for args in batch:
                db.execute("SAVEPOINT one_append")
                try:
                    results.append(queries.append(db, *args, now=self._clock(), limits=self.limits))
                except Exception as exc:  # noqa: BLE001 - handed to that append's caller
                    db.execute("ROLLBACK TO one_append")
                    results.append(exc)
                db.execute("RELEASE one_append")
        self.commits += 1
        return results
