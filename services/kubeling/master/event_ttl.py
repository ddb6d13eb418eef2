"""Events expire `--event-ttl` after their last write (default 1 h).

Kubernetes gives every Event write an etcd lease of --event-ttl; here each master
runs this loop over its own store. It never scans: it lists the Events once at
start, then follows the store's watch of /events/, keeping every Event's deadline
in one insertion-ordered map. A write gives a deadline of now + ttl, never earlier
than any deadline already in the map, so moving the key to the end keeps the map
sorted by deadline, and each wake-up reads only the front: what is due.

An Event loaded at start (written before this master started) is dated by its
lastTimestamp, or its creationTimestamp when it has none (never later than now).
Expiry deletes through the store with the revision it saw: an Event written again
meanwhile is not deleted (its new write moved its deadline).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import structlog
from prometheus_client import Counter

from kubeling.api.kinds import EVENT
from kubeling.master.store.base import (
    ConflictError,
    EventType,
    KeyNotFoundError,
    Store,
    TooOldError,
    Watch,
    WatchClosedError,
)

log = structlog.get_logger(__name__)

DEFAULT_EVENT_TTL = 3600.0
_DELETE_BATCH = 512  # the SQLite writer commits up to this many in one transaction

EVENTS_EXPIRED = Counter(
    "kubeling_events_expired_total", "Events deleted because their --event-ttl ran out"
)


def _written_at(event: Any) -> float:
    """Seconds since the epoch of an Event's last known write: its lastTimestamp
    (the recorder sets it on every write), else its creation."""
    stamp = event.last_timestamp if event.HasField("last_timestamp") else None
    if stamp is None or stamp.seconds == 0:
        stamp = event.metadata.creation_timestamp
    return float(stamp.seconds + stamp.nanos / 1e9)


class EventExpiry:
    def __init__(self, store: Store, ttl: float, clock: Callable[[], float] = time.time) -> None:
        if ttl <= 0:
            raise ValueError("the event TTL must be positive")
        self.store = store
        self.ttl = ttl
        self._clock = clock
        # key -> (deadline, mod_rev), in deadline order.
        self._deadlines: OrderedDict[str, tuple[float, int]] = OrderedDict()
        self._last_deadline = 0.0

    @property
    def tracked(self) -> int:
        """How many Events have a deadline (all Events the store holds)."""
        return len(self._deadlines)

    def next_deadline(self) -> float | None:
        if not self._deadlines:
            return None
        return next(iter(self._deadlines.values()))[0]

    def _load(self) -> Watch:
        entries, _, watch = self.store.list_and_watch(EVENT.prefix())
        now = self._clock()
        dated = sorted(
            (min(_written_at(e.value), now) + self.ttl, e.key, e.mod_rev) for e in entries
        )
        self._deadlines = OrderedDict((key, (deadline, rev)) for deadline, key, rev in dated)
        self._last_deadline = dated[-1][0] if dated else 0.0
        return watch

    def _written(self, key: str, rev: int) -> None:
        deadline = max(self._clock() + self.ttl, self._last_deadline)
        self._last_deadline = deadline
        self._deadlines[key] = (deadline, rev)
        self._deadlines.move_to_end(key)

    def _due(self) -> list[tuple[str, int]]:
        now = self._clock()
        due: list[tuple[str, int]] = []
        while self._deadlines:
            key, (deadline, rev) = next(iter(self._deadlines.items()))
            if deadline > now:
                break
            self._deadlines.popitem(last=False)
            due.append((key, rev))
        return due

    async def _expire(self, due: list[tuple[str, int]]) -> int:
        deleted = 0
        for start in range(0, len(due), _DELETE_BATCH):
            results = await asyncio.gather(
                *(
                    self.store.delete(key, expected_rev=rev)
                    for key, rev in due[start : start + _DELETE_BATCH]
                ),
                return_exceptions=True,
            )
            for result in results:
                if isinstance(result, ConflictError | KeyNotFoundError):
                    continue  # written again (it has a later deadline) or already gone
                if isinstance(result, BaseException):
                    raise result
                deleted += 1
        EVENTS_EXPIRED.inc(deleted)
        return deleted

    async def run(self) -> None:
        """Expire Events until cancelled."""
        watch = self._load()
        try:
            while True:
                due = self._due()
                if due:
                    deleted = await self._expire(due)
                    log.debug("events expired", count=deleted)
                deadline = self.next_deadline()
                timeout = None if deadline is None else max(deadline - self._clock(), 0.0)
                try:
                    # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a
                    # cancellation (the supervisor's stop or an injected crash).
                    async with asyncio.timeout(timeout):
                        batch = await watch.next_batch()
                except TimeoutError:
                    continue
                except (WatchClosedError, TooOldError):
                    # Fell behind the store (a burst of writes): start over from a list.
                    watch.close()
                    watch = self._load()
                    continue
                for event in batch:
                    if event.type is EventType.DELETED:
                        self._deadlines.pop(event.key, None)
                    else:
                        self._written(event.key, event.rev)
        finally:
            with contextlib.suppress(Exception):
                watch.close()
