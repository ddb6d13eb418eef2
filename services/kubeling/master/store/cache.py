"""In-memory current state, history window and watch fan-out shared by all backends.

Reads never touch the backend: Get/List are served from `state`, watches from the
`history` ring. A List finds its keys through `KeyIndex` (the sorted keys under each
kind and each kind's namespace), so listing one namespace costs what that namespace
holds, not what the whole store holds. A backend applies each committed batch with `apply()`, which
updates the state, appends to the ring and hands the events to every watcher
without waiting on any of them: a watcher whose backlog passes its limit is closed
(its client re-watches from its last revision), so slow readers cannot stall
writers or each other.

The fan-out is the hot path with many watchers (1,000 watchers of a namespace at 50
writes/s is 50k deliveries/s): the events under a prefix are picked once per
commit and the same list is queued for every watcher of that prefix, a waiting
watcher is woken through a bare future, and a watch that must hear "nothing for
N seconds" (a bookmark is due) waits with next_batch(idle=N), swept by one timer
of the cache rather than a timer armed and cancelled per watcher per event.
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


def _key(entry: Entry) -> str:
    return entry.key


class KeyIndex:
    """Sorted keys under every "directory" of the key space: `/pods/` and
    `/pods/default/` for `/pods/default/web`, `/nodes/` for `/nodes/n1`. Kept up to
    date on every write; a directory with no key left is dropped."""

    def __init__(self) -> None:
        self._dirs: dict[str, list[str]] = {}

    @staticmethod
    def dirs_of(key: str) -> list[str]:
        found = []
        cut = key.find("/", 1)
        while 0 < cut < len(key) - 1:
            found.append(key[: cut + 1])
            cut = key.find("/", cut + 1)
        return found

    def load(self, keys: Iterable[str]) -> None:
        self._dirs = {}
        for key in sorted(keys):
            for directory in self.dirs_of(key):
                self._dirs.setdefault(directory, []).append(key)

    def add(self, key: str) -> None:
        for directory in self.dirs_of(key):
            keys = self._dirs.setdefault(directory, [])
            if not keys or keys[-1] < key:
                keys.append(key)  # the common case: names made in order
            else:
                bisect.insort(keys, key)

    def remove(self, key: str) -> None:
        for directory in self.dirs_of(key):
            keys = self._dirs.get(directory)
            if keys is None:
                continue
            at = bisect.bisect_left(keys, key)
            if at < len(keys) and keys[at] == key:
                del keys[at]
            if not keys:
                del self._dirs[directory]

    def under(self, prefix: str) -> list[str] | None:
        """The sorted keys starting with `prefix` (do not modify), or None when the
        prefix is above every directory (the root: only then must the caller scan)."""
        cut = prefix.rfind("/")
        if cut < 1:
            return None
        # Every key under a directory is in its list, so the deepest directory of
        # the prefix has them all; if it has no list, nothing is there.
        keys = self._dirs.get(prefix[: cut + 1])
        if keys is None:
            return []
        if len(prefix) == cut + 1:
            return keys
        start = bisect.bisect_left(keys, prefix)
        end = start
        while end < len(keys) and keys[end].startswith(prefix):
            end += 1
        return keys[start:end]

    def __len__(self) -> int:
        return len(self._dirs)


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
        self._waiter: asyncio.Future[None] | None = None
        # next_batch(idle=...): when the wait gives up, and whether the cache's
        # sweep found it past that (see WatchCache._sweep_idle).
        self.idle_deadline = 0.0
        self.idle_expired = False
        self._closed_reason: str | None = None

    def offer(self, events: list[Event]) -> None:
        """Queue the events this watcher wants (its prefix, its trigger)."""
        if self._closed_reason is not None:
            return
        mine = [e for e in events if e.key.startswith(self.prefix) and self._wants(e)]
        if mine:
            self.push(mine)

    def push(self, mine: list[Event]) -> None:
        """Queue `mine`, already filtered for this watcher. The list may be shared
        with every other watcher of the same prefix: it is never modified here,
        and next_batch hands out a copy."""
        if self._closed_reason is not None:
            return
        self._pending += len(mine)
        if self._pending > self._max_pending:
            self._close("watcher fell too far behind; re-watch from the last revision seen")
            return
        self._batches.append(mine)
        self.wake()

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

    async def next_batch(self, idle: float | None = None) -> list[Event]:
        """The next batch of events (never empty), or with `idle`, [] once none came
        for `idle` seconds (when a watch owes its client a bookmark). The idle
        waits share one timer, the cache's sweep every `idle`/4 s, so a wait costs
        no timer of its own (asyncio.timeout per wait is a timer armed and
        cancelled per watcher per event); [] comes up to `idle`/4 s late."""
        if idle is not None and not self._batches:
            self.idle_deadline = asyncio.get_running_loop().time() + idle
            self.idle_expired = False
            self._cache.idle_waiting(self, idle)
        try:
            while not self._batches:
                if self._closed_reason is not None:
                    raise WatchClosedError(self._closed_reason)
                if idle is not None and self.idle_expired:
                    return []
                # A bare future, not an asyncio.Event: one wake-up per watcher per
                # write is the fan-out's hot path.
                self._waiter = asyncio.get_running_loop().create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
        finally:
            if idle is not None:
                self._cache.idle_done(self)
        batch = self._batches.popleft()
        self._pending -= len(batch)
        return list(batch)  # the queued list may be shared (push)

    def wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _close(self, reason: str) -> None:
        if self._closed_reason is None:
            self._closed_reason = reason
            self._batches.clear()
            self._pending = 0
            self._cache.unregister(self)
            self.wake()

    def close(self) -> None:
        self._close("watch closed")


class WatchCache:
    def __init__(
        self, history: int, revision_of: Callable[[Any], int], max_pending: int = 20_000
    ) -> None:
        self._revision_of = revision_of
        self.state: dict[str, Entry] = {}
        self.keys = KeyIndex()
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
        # Watchers in next_batch(idle=...), and the one timer that sweeps them.
        self._idle: set[CacheWatch] = set()
        self._idle_sweep: asyncio.TimerHandle | None = None
        self._idle_tick = 0.0

    # -------------------------------------------------------------- loading

    def load(self, entries: Iterable[Entry], revision: int, history: Iterable[Event]) -> None:
        self.state = {e.key: e for e in entries}
        self.keys.load(self.state)
        self.revision = revision
        self._history.clear()
        self._history.extend(history)
        self._window_start = self._history[0].rev - 1 if self._history else revision

    # -------------------------------------------------------------- writes

    def apply(self, events: list[Event]) -> None:
        state = self.state
        for event in events:
            if event.type is EventType.DELETED:
                if state.pop(event.key, None) is not None:
                    self.keys.remove(event.key)
            else:
                if event.key not in state:
                    self.keys.add(event.key)
                state[event.key] = Entry(event.key, event.value, event.rev)
            if len(self._history) == self._history.maxlen:
                self._window_start = self._history[0].rev
            self._history.append(event)
            self.revision = max(self.revision, event.rev)  # never back past advance()
        if self._watchers:
            self._fan_out(events)
        if self._triggered:
            for watcher in self._triggered_for(events):
                watcher.offer(events)

    def advance(self, revision: int) -> None:
        """Nothing under the cached keys changed up to `revision` (an etcd progress
        notification, or writes to keys outside them): reads now answer at it."""
        if revision > self.revision:
            self.revision = revision

    # -------------------------------------------------------------- reads

    def get(self, key: str) -> Entry | None:
        return self.state.get(key)

    def _current(self, prefix: str) -> list[Entry]:
        keys = self.keys.under(prefix)
        if keys is None:  # the whole key space: nothing narrower to look in
            return sorted((e for k, e in self.state.items() if k.startswith(prefix)), key=_key)
        state = self.state
        return [state[k] for k in keys]

    def list_prefix(self, prefix: str, at_rev: int | None = None) -> tuple[list[Entry], int]:
        """Entries under prefix, sorted by key, as they were at `at_rev` (default now)."""
        if at_rev is None or at_rev >= self.revision:
            return self._current(prefix), self.revision
        if at_rev < self._window_start:
            raise TooOldError(f"too old resource version: {at_rev} ({self._window_start})")
        snapshot = {e.key: e for e in self._current(prefix)}
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
        items = sorted(snapshot.values(), key=_key)
        return items, at_rev

    def events_after(self, prefix: str, after_rev: int) -> list[Event]:
        if after_rev < self._window_start:
            raise TooOldError(
                f"too old resource version: {after_rev} (oldest kept: {self._window_start})"
            )
        # From the newest back: a watch resumes near the end of the window.
        found: list[Event] = []
        for event in reversed(self._history):
            if event.rev <= after_rev:
                break
            if event.key.startswith(prefix):
                found.append(event)
        found.reverse()
        return found

    # -------------------------------------------------------------- watches

    def _fan_out(self, events: list[Event]) -> None:
        """Hand `events` to every watcher without a trigger. The events under one
        prefix are picked once and the same list is queued for every watcher of
        that prefix (a thousand watchers of one namespace cost a thousand appends
        and wake-ups, not a thousand filters)."""
        picked: dict[str, list[Event]] = {}
        for watcher in list(self._watchers):  # a push may close and unregister one
            if watcher.trigger is not None:  # its index came after it: filter alone
                watcher.offer(events)
                continue
            prefix = watcher.prefix
            mine = picked.get(prefix)
            if mine is None:
                mine = picked[prefix] = [e for e in events if e.key.startswith(prefix)]
            if mine:
                watcher.push(mine)

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

    def idle_waiting(self, watcher: CacheWatch, idle: float) -> None:
        """`watcher` waits for events at most `idle` s: sweep at least every idle/4."""
        self._idle.add(watcher)
        tick = idle / 4
        if self._idle_sweep is None or tick < self._idle_tick:
            if self._idle_sweep is not None:
                self._idle_sweep.cancel()
            self._idle_tick = tick
            self._idle_sweep = asyncio.get_running_loop().call_later(tick, self._sweep_idle)

    def idle_done(self, watcher: CacheWatch) -> None:
        self._idle.discard(watcher)

    def _sweep_idle(self) -> None:
        """Wake every idle waiter past its deadline; go on while any is waiting."""
        self._idle_sweep = None
        if not self._idle:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        for watcher in list(self._idle):
            if watcher.idle_deadline <= now:
                watcher.idle_expired = True
                watcher.wake()
        self._idle_sweep = loop.call_later(self._idle_tick, self._sweep_idle)

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


class CachedReads:
    """What every backend serves from its WatchCache (`_cache`): reads, watches and
    the indexes of triggered watches."""

    _cache: WatchCache

    @property
    def revision(self) -> int:
        return self._cache.revision

    @property
    def cache(self) -> WatchCache:
        return self._cache

    def get(self, key: str) -> Entry | None:
        return self._cache.get(key)

    def list_prefix(self, prefix: str, at_rev: int | None = None) -> tuple[list[Entry], int]:
        return self._cache.list_prefix(prefix, at_rev)

    def watch(
        self, prefix: str, after_rev: int, trigger: tuple[str, str] | None = None
    ) -> CacheWatch:
        return self._cache.watch(prefix, after_rev, trigger)

    def list_and_watch(
        self, prefix: str, trigger: tuple[str, str] | None = None
    ) -> tuple[list[Entry], int, CacheWatch]:
        return self._cache.list_and_watch(prefix, trigger)

    def add_index(self, name: str, prefix: str, index: Callable[[Any], str]) -> None:
        self._cache.indexes[name] = (prefix, index)
