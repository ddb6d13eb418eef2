"""The store contract on both backends (SQLite and a real etcd): revisions,
optimistic concurrency, state and history across a reopen, the watch window.

Revisions are asserted relative to the store's revision when a test starts: an
etcd's revision is global (the tests share one etcd, each under its own prefix).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
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
from kubeling.master.store.etcd import EtcdStore
from kubeling.master.store.sqlite import SqliteStore
from kubeling.v1 import core_pb2
from tests.support.etcd import EtcdCluster, running_etcd

Store = SqliteStore | EtcdStore


def pod(name: str, image: str = "busybox") -> core_pb2.Pod:
    obj = core_pb2.Pod()
    obj.metadata.name = name
    obj.metadata.namespace = "default"
    obj.spec.containers.add(name="c", image=image)
    return obj


def key(name: str) -> str:
    return f"/pods/default/{name}"


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    with running_etcd(tmp_path_factory.mktemp("etcd")) as cluster:
        yield cluster


class Backend:
    """Opens the store under test; every open of one Backend sees the same data."""

    def __init__(self, kind: str, path: Path, etcd: EtcdCluster | None) -> None:
        self.kind = kind
        self.path = path
        self.etcd = etcd
        self.prefix = f"/test-{uuid.uuid4().hex[:8]}"

    def make(self, history: int = 100) -> Store:
        if self.kind == "sqlite":
            return SqliteStore(self.path / "state.db", ProtoCodec(), history=history)
        assert self.etcd is not None
        return EtcdStore(
            self.etcd.endpoints.split(","),
            ProtoCodec(),
            prefix=self.prefix,
            history=history,
            compaction_interval=0,
        )


@pytest.fixture(params=["sqlite", "etcd"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    etcd = request.getfixturevalue("etcd") if request.param == "etcd" else None
    return Backend(request.param, tmp_path, etcd)


async def open_store(backend: Backend, history: int = 100) -> Store:
    store = backend.make(history)
    await store.open()
    return store


async def test_every_write_gets_the_next_revision(backend: Backend) -> None:
    store = await open_store(backend)
    r = store.revision
    try:
        revs = [await store.create(key(f"p{i}"), pod(f"p{i}")) for i in range(3)]
        assert revs == [r + 1, r + 2, r + 3]
        rev = await store.update(key("p0"), pod("p0", "nginx"), expected_rev=r + 1)
        assert rev == r + 4
        entry = store.get(key("p0"))
        assert entry is not None and entry.mod_rev == r + 4
        assert entry.value.metadata.resource_version == str(r + 4)
        assert entry.value.spec.containers[0].image == "nginx"
    finally:
        await store.close()


async def test_conflicts_and_missing_keys(backend: Backend) -> None:
    store = await open_store(backend)
    r = store.revision
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
        rev, last = await store.delete(key("a"), expected_rev=r + 1)
        assert rev == r + 2 and last.metadata.name == "a"
        with pytest.raises(KeyNotFoundError):
            await store.delete(key("a"))
    finally:
        await store.close()


async def test_concurrent_writers_on_one_key_exactly_one_wins(backend: Backend) -> None:
    store = await open_store(backend)
    try:
        created = await store.create(key("a"), pod("a"))
        results = await asyncio.gather(
            *(store.update(key("a"), pod("a", f"img{i}"), expected_rev=created) for i in range(10)),
            return_exceptions=True,
        )
        assert sum(isinstance(r, int) for r in results) == 1
        assert sum(isinstance(r, ConflictError) for r in results) == 9
    finally:
        await store.close()


async def test_state_and_history_survive_reopen(backend: Backend) -> None:
    store = await open_store(backend)
    r = store.revision
    for i in range(5):
        await store.create(key(f"p{i}"), pod(f"p{i}"))
    await store.delete(key("p1"))
    await store.close()

    store = await open_store(backend)
    try:
        # (etcd: reopening writes one marker key outside the stored objects)
        assert store.revision >= r + 6
        items, rev = store.list_prefix("/pods/")
        assert rev == store.revision
        assert [e.key for e in items] == [key(f"p{i}") for i in (0, 2, 3, 4)]
        # A watcher that saw revision r+3 before the restart resumes without a gap.
        watch = store.watch("/pods/", r + 3)
        batch = await asyncio.wait_for(watch.next_batch(), 1)
        assert [(e.type, e.rev) for e in batch] == [
            (EventType.ADDED, r + 4),
            (EventType.ADDED, r + 5),
            (EventType.DELETED, r + 6),
        ]
        assert batch[-1].value.metadata.name == "p1"
        watch.close()
    finally:
        await store.close()


async def test_revisions_older_than_the_window_are_too_old(backend: Backend) -> None:
    store = await open_store(backend, history=10)
    r = store.revision
    try:
        for i in range(30):
            await store.create(key(f"p{i}"), pod(f"p{i}"))
        with pytest.raises(TooOldError):
            store.watch("/pods/", r + 5)
        with pytest.raises(TooOldError):
            store.list_prefix("/pods/", at_rev=r + 5)
        watch = store.watch("/pods/", r + 25)
        batch = await asyncio.wait_for(watch.next_batch(), 1)
        assert [e.rev for e in batch] == [r + 26, r + 27, r + 28, r + 29, r + 30]
        watch.close()
    finally:
        await store.close()


async def test_log_is_compacted_on_disk(tmp_path: Path) -> None:
    import sqlite3

    store = await open_store(Backend("sqlite", tmp_path, None), history=20)
    try:
        for i in range(200):
            await store.create(key(f"p{i}"), pod(f"p{i}"))
    finally:
        await store.close()
    db = sqlite3.connect(tmp_path / "state.db")
    (rows,) = db.execute("SELECT COUNT(*) FROM log").fetchone()
    db.close()
    assert rows <= 40


async def test_list_at_an_old_revision_is_a_consistent_snapshot(backend: Backend) -> None:
    store = await open_store(backend)
    r = store.revision
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
        assert [e.mod_rev for e in items] == [r + 1, r + 2]
    finally:
        await store.close()


async def test_a_slow_watcher_is_closed_and_does_not_block_writers(backend: Backend) -> None:
    store = backend.make(history=1000)
    store.cache._max_pending = 50
    await store.open()
    try:
        slow = store.watch("/pods/", store.revision)
        fast = store.watch("/pods/", store.revision)
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


async def test_indexed_watchers_only_hear_their_values(backend: Backend) -> None:
    store = await open_store(backend)
    store.add_index("pods:spec.nodeName", "/pods/", lambda p: p.spec.node_name)
    r = store.revision
    try:
        on_a = store.watch("/pods/", r, ("pods:spec.nodeName", "a"))
        on_b = store.watch("/pods/", r, ("pods:spec.nodeName", "b"))
        everything = store.watch("/pods/", r)
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
        assert [e.rev for e in got_a] == [r + 2, r + 3]  # bound to a, then moved away
        got_b = await asyncio.wait_for(on_b.next_batch(), 1)
        assert [e.rev for e in got_b] == [r + 3]
        all_events = []
        while len(all_events) < 3:
            all_events += await asyncio.wait_for(everything.next_batch(), 1)
        assert [e.rev for e in all_events] == [r + 1, r + 2, r + 3]
        assert store.cache.watcher_count == 3
        # Other kinds under other prefixes are not run through the pod index.
        node = core_pb2.Node()
        node.metadata.name = "n1"
        await store.create("/nodes/n1", node)
        on_a.close()
        assert store.cache.watcher_count == 2
    finally:
        await store.close()
