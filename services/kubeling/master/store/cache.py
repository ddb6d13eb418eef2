"""In-memory current state, history window and watch fan-out shared by all backends.

Reads never touch the backend: Get/List are served from `state`, watches from the
`history` ring. A backend applies each committed batch with `apply()`, which
updates the state, appends to the ring and hands the events to every watcher
without waiting on any of them: a watcher whose backlog passes its limit is closed
(its client re-watches from its last revision), so slow readers cannot stall
writers or each other.
"""

from __future__ import annotations

import asyncio
import bisect
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from kubeling.master.store.base import (
    Entry,
    Event,
    EventType,
    TooOldError,
    WatchClosedError,
)


class CacheWatch:
    """One watcher: a queue of event batches with a bound on pending events."""

    def __init__(
        self,
        cache: WatchCache,
        prefix: str,
        max_pending: int,
        trigger: tuple[str, str] | None = None,
    ) -> None:
        self._cache = cache
        self.prefix = prefix
        # (index name, value): this watcher only wants events whose old or new
        # value has this index value (e.g. pods of one node).
        self.trigger = trigger
        self._max_pending = max_pending
        self._pending = 0
        self._batches: deque[list[Event]] = deque()
        self._wakeup = asyncio.Event()
        self._closed_reason: str | None = None

    def offer(self, events: list[Event]) -> None:
        if self._closed_reason is not None:
            return
        mine = [e for e in events if e.key.startswith(self.prefix) and self._wants(e)]
        if not mine:
            return
        self._pending += len(mine)
        if self._pending > self._max_pending:
            self._close("watcher fell too far behind; re-watch from the last revision seen")
            return
        self._batches.append(mine)
        self._wakeup.set()

    def _wants(self, event: Event) -> bool:
        if self.trigger is None:
            return True
        found = self._cache.indexes.get(self.trigger[0])
        if found is None or not event.key.startswith(found[0]):
            return True
        index = found[1]
        wanted = self.trigger[1]
        return index(event.value) == wanted or (
            event.prev is not None and index(event.prev) == wanted
        )

    async def next_batch(self) -> list[Event]:
        while not self._batches:
            if self._closed_reason is not None:
                raise WatchClosedError(self._closed_reason)
            self._wakeup.clear()
            await self._wakeup.wait()
        batch = self._batches.popleft()
        self._pending -= len(batch)
        return batch

    def _close(self, reason: str) -> None:
        if self._closed_reason is None:
            self._closed_reason = reason
            self._batches.clear()
            self._pending = 0
            self._cache.unregister(self)
            self._wakeup.set()

    def close(self) -> None:
        self._close("watch closed")


class WatchCache:
    def __init__(
        self, history: int, revision_of: Callable[[Any], int], max_pending: int = 20_000
    ) -> None:
        self._revision_of = revision_of
        self.state: dict[str, Entry] = {}
        self.revision = 0
        self._history: deque[Event] = deque(maxlen=history)
        # Every event with rev > _window_start is in _history.
        self._window_start = 0
        self._watchers: set[CacheWatch] = set()
        # Watchers with a trigger, by (index name, value): an event reaches only the
        # watchers of its values (thousands of kubelets each watching their own
        # node's pods cost nothing per event), as the Kubernetes watch cache does.
        # name -> (key prefix it applies to, value getter)
        self.indexes: dict[str, tuple[str, Callable[[Any], str]]] = {}
        self._triggered: dict[tuple[str, str], set[CacheWatch]] = {}
        self._max_pending = max_pending

    # -------------------------------------------------------------- loading

    def load(self, entries: Iterable[Entry], revision: int, history: Iterable[Event]) -> None:
        self.state = {e.key: e for e in entries}
        self.revision = revision
        self._history.clear()
        self._history.extend(history)
        self._window_start = self._history[0].rev - 1 if self._history else revision

    # -------------------------------------------------------------- writes

    def apply(self, events: list[Event]) -> None:
        for event in events:
            if event.type is EventType.DELETED:
                self.state.pop(event.key, None)
            else:
                self.state[event.key] = Entry(event.key, event.value, event.rev)
            if len(self._history) == self._history.maxlen:
                self._window_start = self._history[0].rev
            self._history.append(event)
            self.revision = event.rev
        for watcher in list(self._watchers):
            watcher.offer(events)
        if self._triggered:
            for watcher in self._triggered_for(events):
                watcher.offer(events)

    # -------------------------------------------------------------- reads

    def get(self, key: str) -> Entry | None:
        return self.state.get(key)

    def list_prefix(self, prefix: str, at_rev: int | None = None) -> tuple[list[Entry], int]:
        """Entries under prefix, sorted by key, as they were at `at_rev` (default now)."""
        if at_rev is None or at_rev >= self.revision:
            items = [e for k, e in self.state.items() if k.startswith(prefix)]
            items.sort(key=lambda e: e.key)
            return items, self.revision
        if at_rev < self._window_start:
            raise TooOldError(f"too old resource version: {at_rev} ({self._window_start})")
        snapshot = {k: e for k, e in self.state.items() if k.startswith(prefix)}
        # Undo, newest first, every change made after at_rev.
        for event in reversed(self._history):
            if event.rev <= at_rev:
                break
            if not event.key.startswith(prefix):
                continue
            if event.type is EventType.ADDED:
                snapshot.pop(event.key, None)
            else:
                prev = event.prev if event.type is EventType.MODIFIED else event.value
                snapshot[event.key] = Entry(event.key, prev, self._revision_of(prev))
        items = sorted(snapshot.values(), key=lambda e: e.key)
        return items, at_rev

    def events_after(self, prefix: str, after_rev: int) -> list[Event]:
        if after_rev < self._window_start:
            raise TooOldError(
                f"too old resource version: {after_rev} (oldest kept: {self._window_start})"
            )
        revs = [e.rev for e in self._history]  # sorted ascending
        start = bisect.bisect_right(revs, after_rev)
        return [e for e in list(self._history)[start:] if e.key.startswith(prefix)]

    # -------------------------------------------------------------- watches

    def _triggered_for(self, events: list[Event]) -> set[CacheWatch]:
        found: set[CacheWatch] = set()
        for name, (prefix, index) in self.indexes.items():
            for event in events:
                if not event.key.startswith(prefix):
                    continue
                for value in (event.value, event.prev):
                    if value is not None:
                        found |= self._triggered.get((name, index(value)), set())
        return found

    def _register(self, watcher: CacheWatch) -> None:
        if watcher.trigger is not None and watcher.trigger[0] in self.indexes:
            self._triggered.setdefault(watcher.trigger, set()).add(watcher)
        else:
            self._watchers.add(watcher)

    def watch(
        self, prefix: str, after_rev: int, trigger: tuple[str, str] | None = None
    ) -> CacheWatch:
        backlog = self.events_after(prefix, after_rev)
        watcher = CacheWatch(self, prefix, self._max_pending, trigger)
        self._register(watcher)
        if backlog:
            watcher.offer(backlog)
        return watcher

    def list_and_watch(
        self, prefix: str, trigger: tuple[str, str] | None = None
    ) -> tuple[list[Entry], int, CacheWatch]:
        items, rev = self.list_prefix(prefix)
        watcher = CacheWatch(self, prefix, self._max_pending, trigger)
        self._register(watcher)
        return items, rev, watcher

    def unregister(self, watcher: CacheWatch) -> None:
        self._watchers.discard(watcher)
        if watcher.trigger is not None:
            bucket = self._triggered.get(watcher.trigger)
            if bucket is not None:
                bucket.discard(watcher)
                if not bucket:
                    del self._triggered[watcher.trigger]

    def close_all(self, reason: str) -> None:
        for watcher in [*self._watchers, *(w for b in self._triggered.values() for w in b)]:
            watcher._close(reason)

    @property
    def window_start(self) -> int:
        return self._window_start

    @property
    def watcher_count(self) -> int:
        return len(self._watchers) + sum(len(b) for b in self._triggered.values())
