"""SQLite backend: the embedded default store.

One writer owns the database connection on its own thread. Writes queue up and are
committed in groups (one transaction, one fsync for everything that arrived while
the previous group was being written), which is what lets many concurrent clients
write quickly while every acknowledged write is durable (WAL, synchronous=FULL).

On disk: `objects` holds the current value of each key, `log` the last `history`
changes (compacted as it grows) so that watches can resume across a restart, and
`meta` the global revision.

The writer never stops on a bad group: an exception while planning or committing
a group fails that group's writes with a StoreUnavailableError (the callers see it) and the
writer goes on with the next group. A commit in flight always finishes and reaches
the watch cache, even when the writer is being stopped, so the cache never falls
behind the database. While the writer is not running (stopped, or restarting after
a crash under a supervisor) writes fail at once instead of waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from kubeling.common.supervisor import Supervisor
from kubeling.master.metrics import STORAGE_COMMIT_DURATION, STORAGE_GROUP_SIZE
from kubeling.master.store.base import (
    Codec,
    ConflictError,
    Entry,
    Event,
    EventType,
    KeyExistsError,
    KeyNotFoundError,
    StoreError,
    StoreUnavailableError,
)
from kubeling.master.store.cache import CachedReads, WatchCache

log = structlog.get_logger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    key TEXT PRIMARY KEY, mod_rev INTEGER NOT NULL, value BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS log (
    rev INTEGER PRIMARY KEY, type INTEGER NOT NULL, key TEXT NOT NULL,
    value BLOB NOT NULL, prev BLOB
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

_MAX_BATCH = 512


def write_database(path: Path, objects: list[tuple[str, bytes, int]], revision: int) -> None:
    """A new store file holding `objects` (key, encoded value, mod revision) at
    `revision`, with no history: what a backup of another backend restores from."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.executescript(_SCHEMA)
        db.execute("BEGIN")
        db.executemany("INSERT INTO objects (key, mod_rev, value) VALUES (?, ?, ?)",
                       [(key, rev, value) for key, value, rev in objects])  # fmt: skip
        db.execute("INSERT INTO meta (name, value) VALUES ('rev', ?)", (revision,))
        db.execute("COMMIT")
    finally:
        db.close()


@dataclass(slots=True)
class _Op:
    type: EventType
    key: str
    value: Any
    expected_rev: int | None
    future: asyncio.Future[Event] = field(repr=False)


class SqliteStore(CachedReads):
    """`supervisor`: run the writer as its supervised loop `store-writer` (restarted
    after a crash; giving up makes the process unhealthy) instead of a plain task."""

    def __init__(
        self,
        path: Path,
        codec: Codec,
        history: int = 10_000,
        supervisor: Supervisor | None = None,
    ) -> None:
        self._path = path
        self._codec = codec
        self._history = history
        self._cache = WatchCache(history, codec.revision_of)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        self._db: sqlite3.Connection | None = None
        self._queue: asyncio.Queue[_Op] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._writer_running = False
        self._supervisor = supervisor
        self._writes_since_compaction = 0

    # ------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        entries, revision, history = await loop.run_in_executor(self._thread, self._open_sync)
        self._cache.load(entries, revision, history)
        self._writer_running = True  # writes may queue before the task first runs
        if self._supervisor is not None:
            self._writer = self._supervisor.start("store-writer", self._run_writer)
        else:
            self._writer = asyncio.create_task(self._run_writer(), name="store-writer")
        log.info("store opened", path=str(self._path), revision=revision, objects=len(entries))

    def _open_sync(self) -> tuple[list[Entry], int, list[Event]]:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self._path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA journal_size_limit=67108864")
        db.executescript(_SCHEMA)
        self._db = db
        row = db.execute("SELECT value FROM meta WHERE name='rev'").fetchone()
        revision = int(row[0]) if row else 0
        decode = self._codec.decode
        entries = [
            Entry(key, decode(key, value), mod_rev)
            for key, mod_rev, value in db.execute("SELECT key, mod_rev, value FROM objects")
        ]
        history = [
            Event(
                EventType(type_),
                key,
                rev,
                decode(key, value),
                decode(key, prev) if prev is not None else None,
            )
            for rev, type_, key, value, prev in db.execute(
                "SELECT rev, type, key, value, prev FROM log WHERE rev > ? ORDER BY rev",
                (revision - self._history,),
            )
        ]
        return entries, revision, history

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._writer
            self._writer = None
        self._cache.close_all("server shutting down")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._thread, self._close_sync)
        self._thread.shutdown(wait=True)

    def _close_sync(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # ------------------------------------------------------------ reads

    def healthy(self) -> bool:
        """The writer runs (stopped or restarting: writes fail, so not healthy)."""
        return self._writer is not None and self._writer_running

    async def wait_consistent(self) -> None:
        """This master is the only writer: its cache is always current."""

    # ------------------------------------------------------------ writes

    async def create(self, key: str, value: Any) -> int:
        return (await self._submit(EventType.ADDED, key, value, None)).rev

    async def update(self, key: str, value: Any, expected_rev: int | None = None) -> int:
        return (await self._submit(EventType.MODIFIED, key, value, expected_rev)).rev

    async def delete(self, key: str, expected_rev: int | None = None) -> tuple[int, Any]:
        event = await self._submit(EventType.DELETED, key, None, expected_rev)
        return event.rev, event.value

    async def _submit(
        self, type_: EventType, key: str, value: Any, expected_rev: int | None
    ) -> Event:
        if self._writer is None:
            raise StoreUnavailableError("store is not open")
        if not self._writer_running:
            raise StoreUnavailableError("the store's writer is not running (restarting or stopped)")
        future: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Op(type_, key, value, expected_rev, future))
        return await future

    async def _run_writer(self) -> None:
        """The writer: groups writes until cancelled. However it ends, writes still
        waiting in the queue fail at once rather than hang."""
        self._writer_running = True
        reason = "the store's writer stopped"
        try:
            await self._write_loop()
        except Exception as exc:
            reason = f"store writer stopped: {exc!r}"
            raise
        finally:
            self._writer_running = False
            while not self._queue.empty():
                op = self._queue.get_nowait()
                if not op.future.done():
                    op.future.set_exception(StoreUnavailableError(reason))

    async def _write_loop(self) -> None:
        while True:
            ops = [await self._queue.get()]
            while len(ops) < _MAX_BATCH and not self._queue.empty():
                ops.append(self._queue.get_nowait())
            # Shielded: a group under way is finished even if the writer is stopped,
            # so what was committed is in the cache and acknowledged.
            group = asyncio.ensure_future(self._write_group(ops))
            try:
                await asyncio.shield(group)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await group
                raise

    async def _write_group(self, ops: list[_Op]) -> None:
        loop = asyncio.get_running_loop()
        try:
            accepted, rows = self._plan(ops)
            if not accepted:
                return
            started = time.monotonic()
            await loop.run_in_executor(self._thread, self._commit_sync, rows)
        except Exception as exc:  # a bug in planning, disk full, I/O error: nothing applied
            log.exception("store write failed; the group's writes are refused", writes=len(ops))
            for op in ops:
                if not op.future.done():
                    op.future.set_exception(StoreUnavailableError(f"store write failed: {exc!r}"))
            return
        STORAGE_COMMIT_DURATION.observe(time.monotonic() - started)
        STORAGE_GROUP_SIZE.observe(len(rows))
        events = [event for _, event in accepted]
        try:
            self._cache.apply(events)
        except Exception:
            # Committed but not shown to watchers: a bug, not a reason to stop
            # writing (every later write would hang).
            log.exception("watch cache update failed")
        for op, event in accepted:
            if not op.future.done():
                op.future.set_result(event)
        self._writes_since_compaction += len(events)
        if self._writes_since_compaction >= max(self._history // 10, 1):
            self._writes_since_compaction = 0
            try:
                await loop.run_in_executor(self._thread, self._compact_sync, self.revision)
            except Exception:
                log.exception("store log compaction failed; retried later")

    def _plan(
        self, ops: list[_Op]
    ) -> tuple[list[tuple[_Op, Event]], list[tuple[Event, bytes | None, bytes | None]]]:
        """Check each op against the state (and the ops before it in this group)."""
        staged: dict[str, Entry | None] = {}
        rev = self._cache.revision
        accepted: list[tuple[_Op, Event]] = []
        rows: list[tuple[Event, bytes | None, bytes | None]] = []
        for op in ops:
            current = staged[op.key] if op.key in staged else self._cache.get(op.key)
            error = _check(op, current)
            if error is not None:
                op.future.set_exception(error)
                continue
            rev += 1
            if op.type is EventType.DELETED:
                assert current is not None
                event = Event(EventType.DELETED, op.key, rev, current.value, current.value)
                staged[op.key] = None
                value_bytes = None
            else:
                self._codec.stamp(op.value, rev)
                prev = current.value if current is not None else None
                event = Event(op.type, op.key, rev, op.value, prev)
                staged[op.key] = Entry(op.key, op.value, rev)
                value_bytes = self._codec.encode(op.value)
            prev_bytes = self._codec.encode(current.value) if current is not None else None
            accepted.append((op, event))
            rows.append((event, value_bytes, prev_bytes))
        return accepted, rows

    def _commit_sync(self, rows: list[tuple[Event, bytes | None, bytes | None]]) -> None:
        db = self._db
        assert db is not None
        db.execute("BEGIN IMMEDIATE")
        try:
            for event, value, prev in rows:
                if event.type is EventType.DELETED:
                    db.execute("DELETE FROM objects WHERE key = ?", (event.key,))
                    db.execute(
                        "INSERT INTO log (rev, type, key, value, prev) VALUES (?, ?, ?, ?, ?)",
                        (event.rev, int(event.type), event.key, prev, prev),
                    )
                else:
                    db.execute(
                        "INSERT OR REPLACE INTO objects (key, mod_rev, value) VALUES (?, ?, ?)",
                        (event.key, event.rev, value),
                    )
                    db.execute(
                        "INSERT INTO log (rev, type, key, value, prev) VALUES (?, ?, ?, ?, ?)",
                        (event.rev, int(event.type), event.key, value, prev),
                    )
            db.execute(
                "INSERT OR REPLACE INTO meta (name, value) VALUES ('rev', ?)", (rows[-1][0].rev,)
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _compact_sync(self, revision: int) -> None:
        db = self._db
        assert db is not None
        db.execute("DELETE FROM log WHERE rev <= ?", (revision - self._history,))


def _check(op: _Op, current: Entry | None) -> StoreError | None:
    if op.type is EventType.ADDED:
        return KeyExistsError(op.key) if current is not None else None
    if current is None:
        return KeyNotFoundError(op.key)
    if op.expected_rev is not None and op.expected_rev != current.mod_rev:
        return ConflictError(
            f"{op.key}: the object has been modified (resourceVersion {op.expected_rev} "
            f"is not the current {current.mod_rev})"
        )
    return None
