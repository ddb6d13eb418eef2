"""SQLite backend: the embedded default store.

One writer owns the database connection on its own thread. A write is planned on
the event loop (checked against what is committed plus what is planned before it,
given the next revision, encoded) and queued to the writer thread, which commits
whatever is queued as one group (one transaction, one fsync for everything that
arrived while the previous group was being written) and hands the group back to the
loop with one wakeup: that is what lets many concurrent clients write quickly while
every acknowledged write is durable (WAL, synchronous=FULL). The loop applies a
committed group to the watch cache before it answers the group's writers.

On disk: `objects` holds the current value of each key, `log` the last `history`
changes (compacted as it grows) so that watches can resume across a restart, and
`meta` the global revision.

The writer never stops on a bad write: a write that cannot be planned (an encoding
bug) is refused alone, with no revision used; a group that fails to commit (disk
full, I/O error) fails its writes with a StoreUnavailableError, and so do the writes
planned after it (they were checked against it); the plan then starts again from
what is committed. A group being written always finishes and reaches the watch
cache, even when the writer is being stopped, so the cache never falls behind the
database. While the writer is not running (stopped, or restarting after a crash
under a supervisor) writes fail at once instead of waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
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
class _Write:
    """A write planned on the event loop (checked, revision given, encoded), on its
    way to the writer thread. `generation` ties it to the plan it was checked
    against: when a commit fails, the writes planned after it fail too."""

    event: Event
    value: bytes | None
    prev: bytes | None
    future: asyncio.Future[Event] = field(repr=False)
    generation: int


# Put on the writer thread's queue to end it once everything before it is written.
_STOP = None


class SqliteStore(CachedReads):
    """`supervisor`: run the writer as its supervised loop `store-writer` (restarted
    after a crash; giving up makes the process unhealthy) instead of a plain task.

    A write costs the event loop one plan (check, revision, encode) and the
    writer thread one share of a group commit; the thread hands each committed
    group back with one wakeup of the loop, which applies it to the watch cache
    and answers its writers. A group commits on the thread while the next one is
    being planned; a write to a key that has a write on its way (`_staged`) waits
    for it and is checked against what it left."""

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
        self._writes: queue.SimpleQueue[_Write | None] = queue.SimpleQueue()
        self._writer: asyncio.Task[None] | None = None
        self._writer_running = False
        self._supervisor = supervisor
        self._loop: asyncio.AbstractEventLoop | None = None
        # Keys with a write planned and not yet in the cache: its revision and its
        # future; the last revision given; the plan's generation (bumped by a
        # failed commit).
        self._staged: dict[str, tuple[int, asyncio.Future[Event]]] = {}
        self._planned_rev = 0
        self._generation = 0
        # Written by the thread only: the newest generation a failed commit ended.
        self._failed_generation = -1
        self._writes_since_compaction = 0

    # ------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        entries, revision, history = await loop.run_in_executor(self._thread, self._open_sync)
        self._cache.load(entries, revision, history)
        self._loop = loop
        self._planned_rev = revision
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
        # A write to a key with a write on its way waits for that one, then checks
        # against what it left: a client's read-modify-write retry then sees what
        # beat it (checking against the write in flight would refuse the retry again
        # until that write commits, however often it is retried).
        while (pending := self._staged.get(key)) is not None:
            await asyncio.wait([pending[1]])  # how it ended is its own writer's to see
            if self._staged.get(key) is pending:  # answered, still staged: a bug; no spin
                raise StoreUnavailableError(f"{key}: a write on its way was never unstaged")
        if not self._writer_running:
            raise StoreUnavailableError("the store's writer is not running (restarting or stopped)")
        write = self._plan(type_, key, value, expected_rev)
        self._writes.put(write)
        # Shielded: a caller that gives up must not cancel the future that later
        # writes to the key wait for; only the commit (or its failure) ends it.
        return await asyncio.shield(write.future)

    def _plan(self, type_: EventType, key: str, value: Any, expected_rev: int | None) -> _Write:
        """Check one write against the committed state (no other write to its key is
        on its way), give it the next revision and encode it (raises: nothing planned)."""
        current = self._cache.get(key)
        error = _check(type_, key, expected_rev, current)
        if error is not None:
            raise error
        rev = self._planned_rev + 1
        try:
            if type_ is EventType.DELETED:
                assert current is not None
                event = Event(EventType.DELETED, key, rev, current.value, current.value)
                value_bytes = None
            else:
                self._codec.stamp(value, rev)
                event = Event(type_, key, rev, value, current.value if current else None)
                value_bytes = self._codec.encode(value)
            prev_bytes = self._codec.encode(current.value) if current is not None else None
        except Exception as exc:  # a bug in encoding: this write is refused, no revision used
            log.exception("store write could not be planned; refused", key=key)
            raise StoreUnavailableError(f"store write failed: {exc!r}") from exc
        self._planned_rev = rev
        future: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        self._staged[key] = (rev, future)
        return _Write(event, value_bytes, prev_bytes, future, self._generation)

    async def _run_writer(self) -> None:
        """The writer: the thread that commits groups, for as long as this runs. When
        it is stopped (or crashes), what was queued before is still committed and
        acknowledged; writes fail at once until it runs again."""
        loop = asyncio.get_running_loop()
        self._writer_running = True
        thread = loop.run_in_executor(self._thread, self._write_on_thread)
        try:
            await asyncio.shield(thread)
            raise RuntimeError("the store's writer thread ended")
        finally:
            self._writer_running = False
            self._writes.put(_STOP)
            with contextlib.suppress(BaseException):
                await thread  # the thread has handed back every group it wrote
            # Only if the thread died: whatever it left behind fails, rather than hang.
            while True:
                try:
                    write = self._writes.get_nowait()
                except queue.Empty:
                    break
                if write is not None and not write.future.done():
                    write.future.set_exception(StoreUnavailableError("the store's writer stopped"))

    def _write_on_thread(self) -> None:
        """On the store's thread: commit whatever is queued as one group, hand it
        back to the loop, repeat until _STOP."""
        assert self._loop is not None
        loop = self._loop
        while True:
            first = self._writes.get()
            if first is None:
                return
            group = [first]
            stop = False
            while len(group) < _MAX_BATCH:
                try:
                    write = self._writes.get_nowait()
                except queue.Empty:
                    break
                if write is None:
                    stop = True
                    break
                group.append(write)
            self._commit_group(loop, group)
            if stop:
                return

    def _commit_group(self, loop: asyncio.AbstractEventLoop, group: list[_Write]) -> None:
        # Planned against a commit that failed: refused without touching the disk.
        stale = [w for w in group if w.generation <= self._failed_generation]
        if stale:
            loop.call_soon_threadsafe(
                self._refused, stale, "an earlier write it was checked against failed"
            )
            group = [w for w in group if w.generation > self._failed_generation]
            if not group:
                return
        started = time.monotonic()
        try:
            self._commit_sync(group)
        except Exception as exc:  # disk full, I/O error: nothing of the group applied
            self._failed_generation = group[-1].generation
            log.error("store write failed; the group's writes are refused", writes=len(group),
                      error=repr(exc))  # fmt: skip
            loop.call_soon_threadsafe(self._commit_failed, group, f"store write failed: {exc!r}")
            return
        STORAGE_COMMIT_DURATION.observe(time.monotonic() - started)
        STORAGE_GROUP_SIZE.observe(len(group))
        loop.call_soon_threadsafe(self._committed, group)
        self._writes_since_compaction += len(group)
        if self._writes_since_compaction >= max(self._history // 10, 1):
            self._writes_since_compaction = 0
            try:
                self._compact_sync(group[-1].event.rev)
            except Exception:
                log.exception("store log compaction failed; retried later")

    def _committed(self, group: list[_Write]) -> None:
        """On the loop: a group is on disk; show it to readers and watchers, answer."""
        events = [w.event for w in group]
        staged = self._staged
        for event in events:
            # Unstaged unless a later planned write has staged the key again.
            staged_now = staged.get(event.key)
            if staged_now is not None and staged_now[0] == event.rev:
                del staged[event.key]
        try:
            self._cache.apply(events)
        except Exception:
            # Committed but not shown to watchers: a bug, not a reason to stop
            # writing (every later write would hang).
            log.exception("watch cache update failed")
        for write in group:
            if not write.future.done():
                write.future.set_result(write.event)

    def _commit_failed(self, group: list[_Write], reason: str) -> None:
        """On the loop: a group did not commit. Everything planned since was checked
        against it, so the plan starts again from what is committed."""
        if group[-1].generation == self._generation:
            self._generation += 1
            self._staged.clear()
            self._planned_rev = self._cache.revision
        self._refused(group, reason)

    def _refused(self, group: list[_Write], reason: str) -> None:
        for write in group:
            if not write.future.done():
                write.future.set_exception(StoreUnavailableError(reason))

    def _commit_sync(self, group: list[_Write]) -> None:
        db = self._db
        assert db is not None
        db.execute("BEGIN IMMEDIATE")
        try:
            for write in group:
                event = write.event
                if event.type is EventType.DELETED:
                    db.execute("DELETE FROM objects WHERE key = ?", (event.key,))
                    db.execute(
                        "INSERT INTO log (rev, type, key, value, prev) VALUES (?, ?, ?, ?, ?)",
                        (event.rev, int(event.type), event.key, write.prev, write.prev),
                    )
                else:
                    db.execute(
                        "INSERT OR REPLACE INTO objects (key, mod_rev, value) VALUES (?, ?, ?)",
                        (event.key, event.rev, write.value),
                    )
                    db.execute(
                        "INSERT INTO log (rev, type, key, value, prev) VALUES (?, ?, ?, ?, ?)",
                        (event.rev, int(event.type), event.key, write.value, write.prev),
                    )
            db.execute(
                "INSERT OR REPLACE INTO meta (name, value) VALUES ('rev', ?)",
                (group[-1].event.rev,),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _compact_sync(self, revision: int) -> None:
        db = self._db
        assert db is not None
        db.execute("DELETE FROM log WHERE rev <= ?", (revision - self._history,))


def _check(
    type_: EventType, key: str, expected_rev: int | None, current: Entry | None
) -> StoreError | None:
    if type_ is EventType.ADDED:
        return KeyExistsError(key) if current is not None else None
    if current is None:
        return KeyNotFoundError(key)
    if expected_rev is not None and expected_rev != current.mod_rev:
        return ConflictError(
            f"{key}: the object has been modified (resourceVersion {expected_rev} "
            f"is not the current {current.mod_rev})"
        )
    return None
