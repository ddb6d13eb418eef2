"""The watch cache's fan-out to many watchers: the events under one prefix are picked
once and shared by every watcher of that prefix, and yet each watcher sees exactly
its own events, can keep what it was handed, and is dropped alone when it falls
behind."""

from __future__ import annotations

import asyncio

import pytest

from kubeling.master.store.base import Event, EventType, WatchClosedError
from kubeling.master.store.cache import CacheWatch, WatchCache


class Writer:
    """Feeds a WatchCache the events a store would, with values (rev, key)."""

    def __init__(self, max_pending: int = 20_000) -> None:
        self.cache = WatchCache(
            history=1_000, revision_of=lambda value: value[0], max_pending=max_pending
        )
        self.rev = 0

    def event(self, key: str) -> Event:
        self.rev += 1
        old = self.cache.get(key)
        kind = EventType.MODIFIED if old is not None else EventType.ADDED
        return Event(kind, key, self.rev, (self.rev, key), old.value if old else None)

    def put(self, *keys: str) -> None:
        """One committed batch writing `keys`."""
        self.cache.apply([self.event(k) for k in keys])


async def drain(watch: CacheWatch) -> list[str]:
    """Every key queued for `watch` now."""
    found: list[str] = []
    while True:
        try:
            batch = await asyncio.wait_for(watch.next_batch(), 0.05)
        except TimeoutError:
            return found
        found += [e.key for e in batch]


async def test_each_watcher_gets_exactly_its_prefix() -> None:
    writer = Writer()
    one = [writer.cache.watch("/pods/a/", 0) for _ in range(50)]
    other = [writer.cache.watch("/pods/b/", 0) for _ in range(50)]
    everything = writer.cache.watch("/pods/", 0)
    writer.put("/pods/a/x", "/pods/b/y", "/nodes/n1")
    writer.put("/pods/b/z")
    writer.put("/pods/a/w")
    for watch in one:
        assert await drain(watch) == ["/pods/a/x", "/pods/a/w"]
    for watch in other:
        assert await drain(watch) == ["/pods/b/y", "/pods/b/z"]
    assert await drain(everything) == ["/pods/a/x", "/pods/b/y", "/pods/b/z", "/pods/a/w"]


async def test_a_watcher_may_change_its_batch_without_touching_the_others() -> None:
    writer = Writer()
    first, second = writer.cache.watch("/pods/", 0), writer.cache.watch("/pods/", 0)
    writer.put("/pods/a/x", "/pods/a/y")
    writer.put("/pods/a/z")
    mine = await first.next_batch()
    mine += await first.next_batch()  # callers extend what they were handed
    mine.clear()
    assert await drain(second) == ["/pods/a/x", "/pods/a/y", "/pods/a/z"]


async def test_a_slow_watcher_is_dropped_alone_among_watchers_of_its_prefix() -> None:
    writer = Writer(max_pending=10)
    slow = writer.cache.watch("/pods/", 0)
    fast = [writer.cache.watch("/pods/", 0) for _ in range(20)]
    for i in range(30):
        writer.put(f"/pods/a/p{i}")
        for watch in fast:
            assert [e.key for e in await watch.next_batch()] == [f"/pods/a/p{i}"]
    # The slow one was closed once past its bound, with the reason; its queue is
    # gone (the bound holds its memory), and the fast ones are all still there.
    with pytest.raises(WatchClosedError, match="fell too far behind"):
        await asyncio.wait_for(slow.next_batch(), 1)
    assert writer.cache.watcher_count == 20


async def test_a_waiting_watcher_wakes_for_an_event_and_for_its_close() -> None:
    writer = Writer()
    watch = writer.cache.watch("/pods/", 0)
    waiting = asyncio.create_task(watch.next_batch())
    await asyncio.sleep(0)
    writer.put("/pods/a/x")
    assert [e.key for e in await asyncio.wait_for(waiting, 1)] == ["/pods/a/x"]
    # A wait given up (a bookmark's timeout) leaves the watcher usable.
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(watch.next_batch(), 0.01)
    writer.put("/pods/a/y")
    assert [e.key for e in await asyncio.wait_for(watch.next_batch(), 1)] == ["/pods/a/y"]
    waiting = asyncio.create_task(watch.next_batch())
    await asyncio.sleep(0)
    writer.cache.close_all("store closed")
    with pytest.raises(WatchClosedError, match="store closed"):
        await asyncio.wait_for(waiting, 1)


async def test_an_idle_wait_ends_empty_after_its_time_and_not_before_an_event() -> None:
    writer = Writer()
    watchers = [writer.cache.watch("/pods/", 0) for _ in range(100)]
    loop = asyncio.get_running_loop()
    started = loop.time()
    batches = await asyncio.wait_for(asyncio.gather(*(w.next_batch(idle=0.2) for w in watchers)), 2)
    waited = loop.time() - started
    # Nothing came: every wait ended empty, after its time, at most a sweep late.
    assert batches == [[]] * 100
    assert 0.2 <= waited < 0.2 * 1.25 + 0.2
    # An event before the time ends the wait with it; so does one queued before.
    waiting = [asyncio.create_task(w.next_batch(idle=5)) for w in watchers]
    await asyncio.sleep(0.01)
    writer.put("/pods/a/x")
    for task in waiting:
        assert [e.key for e in await asyncio.wait_for(task, 1)] == ["/pods/a/x"]
    writer.put("/pods/a/y")
    assert [e.key for e in await watchers[0].next_batch(idle=0.01)] == ["/pods/a/y"]
    # A cancelled idle wait leaves the watcher usable, and the next one times out anew.
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(watchers[0].next_batch(idle=5), 0.05)
    assert await watchers[0].next_batch(idle=0.05) == []
    # A close ends an idle wait too.
    assert [e.key for e in await watchers[1].next_batch()] == ["/pods/a/y"]
    waiting_one = asyncio.create_task(watchers[1].next_batch(idle=5))
    await asyncio.sleep(0.01)
    watchers[1].close()
    with pytest.raises(WatchClosedError):
        await asyncio.wait_for(waiting_one, 1)
