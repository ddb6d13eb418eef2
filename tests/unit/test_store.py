"""The SQLite store: revisions, optimistic concurrency, durability, watch window."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kubeling.master.codec import ProtoCodec
from kubeling.master.store.base import (
    ConflictError,
    EventType,
    KeyExistsError,
    KeyNotFoundError,
    TooOldError,
    WatchClosedError,
)
from kubeling.master.store.sqlite import SqliteStore
from kubeling.v1 import core_pb2


def pod(name: str, image: str = "busybox") -> core_pb2.Pod:
    obj = core_pb2.Pod()
    obj.metadata.name = name
    obj.metadata.namespace = "default"
    obj.spec.containers.add(name="c", image=image)
    return obj


def key(name: str) -> str:
    return f"/pods/default/{name}"


async def open_store(path: Path, history: int = 100) -> SqliteStore:
    store = SqliteStore(path / "state.db", ProtoCodec(), history=history)
    await store.open()
    return store


async def test_every_write_gets_the_next_revision(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    try:
        revs = [await store.create(key(f"p{i}"), pod(f"p{i}")) for i in range(3)]
        assert revs == [1, 2, 3]
        rev = await store.update(key("p0"), pod("p0", "nginx"), expected_rev=1)
        assert rev == 4
        entry = store.get(key("p0"))
        assert entry is not None and entry.mod_rev == 4
        assert entry.value.metadata.resource_version == "4"
        assert entry.value.spec.containers[0].image == "nginx"
    finally:
        await store.close()


async def test_conflicts_and_missing_keys(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    try:
        await store.create(key("a"), pod("a"))
        with pytest.raises(KeyExistsError):
            await store.create(key("a"), pod("a"))
        with pytest.raises(ConflictError):
            await store.update(key("a"), pod("a"), expected_rev=99)
        with pytest.raises(KeyNotFoundError):
            await store.update(key("missing"), pod("missing"))
        with pytest.raises(ConflictError):
            await store.delete(key("a"), expected_rev=99)
        rev, last = await store.delete(key("a"), expected_rev=1)
        assert rev == 2 and last.metadata.name == "a"
        with pytest.raises(KeyNotFoundError):
            await store.delete(key("a"))
    finally:
        await store.close()


async def test_concurrent_writers_on_one_key_exactly_one_wins(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    try:
        await store.create(key("a"), pod("a"))
        results = await asyncio.gather(
            *(store.update(key("a"), pod("a", f"img{i}"), expected_rev=1) for i in range(10)),
            return_exceptions=True,
        )
        assert sum(isinstance(r, int) for r in results) == 1
        assert sum(isinstance(r, ConflictError) for r in results) == 9
    finally:
        await store.close()


async def test_state_and_history_survive_reopen(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    for i in range(5):
        await store.create(key(f"p{i}"), pod(f"p{i}"))
    await store.delete(key("p1"))
    await store.close()

    store = await open_store(tmp_path)
    try:
        assert store.revision == 6
        items, rev = store.list_prefix("/pods/")
        assert rev == 6
        assert [e.key for e in items] == [key(f"p{i}") for i in (0, 2, 3, 4)]
        # A watcher that saw revision 3 before the restart resumes without a gap.
        watch = store.watch("/pods/", 3)
        batch = await asyncio.wait_for(watch.next_batch(), 1)
        assert [(e.type, e.rev) for e in batch] == [
            (EventType.ADDED, 4),
            (EventType.ADDED, 5),
            (EventType.DELETED, 6),
        ]
        watch.close()
    finally:
        await store.close()


async def test_revisions_older_than_the_window_are_too_old(tmp_path: Path) -> None:
    store = await open_store(tmp_path, history=10)
    try:
        for i in range(30):
            await store.create(key(f"p{i}"), pod(f"p{i}"))
        with pytest.raises(TooOldError):
            store.watch("/pods/", 5)
        with pytest.raises(TooOldError):
            store.list_prefix("/pods/", at_rev=5)
        watch = store.watch("/pods/", 25)
        batch = await asyncio.wait_for(watch.next_batch(), 1)
        assert [e.rev for e in batch] == [26, 27, 28, 29, 30]
        watch.close()
    finally:
        await store.close()


async def test_log_is_compacted_on_disk(tmp_path: Path) -> None:
    import sqlite3

    store = await open_store(tmp_path, history=20)
    try:
        for i in range(200):
            await store.create(key(f"p{i}"), pod(f"p{i}"))
    finally:
        await store.close()
    db = sqlite3.connect(tmp_path / "state.db")
    (rows,) = db.execute("SELECT COUNT(*) FROM log").fetchone()
    db.close()
    assert rows <= 40


async def test_list_at_an_old_revision_is_a_consistent_snapshot(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    try:
        await store.create(key("a"), pod("a"))
        await store.create(key("b"), pod("b"))
        snapshot_rev = store.revision
        await store.update(key("a"), pod("a", "changed"))
        await store.delete(key("b"))
        await store.create(key("c"), pod("c"))
        items, rev = store.list_prefix("/pods/", at_rev=snapshot_rev)
        assert rev == snapshot_rev
        assert [(e.key, e.value.spec.containers[0].image) for e in items] == [
            (key("a"), "busybox"),
            (key("b"), "busybox"),
        ]
        assert [e.mod_rev for e in items] == [1, 2]
    finally:
        await store.close()


async def test_a_slow_watcher_is_closed_and_does_not_block_writers(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.db", ProtoCodec(), history=1000)
    store.cache._max_pending = 50
    await store.open()
    try:
        slow = store.watch("/pods/", 0)
        fast = store.watch("/pods/", 0)
        for i in range(100):
            await store.create(key(f"p{i}"), pod(f"p{i}"))
            if i < 60:
                await fast.next_batch()
        # Writers never waited on the slow watcher; it was closed instead.
        with pytest.raises(WatchClosedError):
            while True:
                await asyncio.wait_for(slow.next_batch(), 1)
        fast.close()
    finally:
        await store.close()


async def test_indexed_watchers_only_hear_their_values(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    store.add_index("pods:spec.nodeName", "/pods/", lambda p: p.spec.node_name)
    try:
        on_a = store.watch("/pods/", 0, ("pods:spec.nodeName", "a"))
        on_b = store.watch("/pods/", 0, ("pods:spec.nodeName", "b"))
        everything = store.watch("/pods/", 0)
        first = pod("p1")
        await store.create(key("p1"), first)
        bound = pod("p1")
        bound.spec.node_name = "a"
        await store.update(key("p1"), bound)
        moved = pod("p1")
        moved.spec.node_name = "b"
        await store.update(key("p1"), moved)
        got_a = await asyncio.wait_for(on_a.next_batch(), 1)
        got_a += await asyncio.wait_for(on_a.next_batch(), 1)
        assert [e.rev for e in got_a] == [2, 3]  # bound to a, then moved away from a
        got_b = await asyncio.wait_for(on_b.next_batch(), 1)
        assert [e.rev for e in got_b] == [3]
        all_events = []
        while len(all_events) < 3:
            all_events += await asyncio.wait_for(everything.next_batch(), 1)
        assert [e.rev for e in all_events] == [1, 2, 3]
        assert store.cache.watcher_count == 3
        # Other kinds under other prefixes are not run through the pod index.
        node = core_pb2.Node()
        node.metadata.name = "n1"
        await store.create("/nodes/n1", node)
        on_a.close()
        assert store.cache.watcher_count == 2
    finally:
        await store.close()
