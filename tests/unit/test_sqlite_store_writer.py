"""The SQLite store's writer: writes queued while a group is being committed are
checked, in order, against what the writes before them left; what reaches the
disk is what readers see; a caller that gives up does not undo its write."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from kubeling.master.codec import ProtoCodec
from kubeling.master.store.base import ConflictError
from kubeling.master.store.sqlite import SqliteStore
from kubeling.v1 import core_pb2


def pod(name: str) -> core_pb2.Pod:
    obj = core_pb2.Pod()
    obj.metadata.name = name
    obj.metadata.namespace = "default"
    obj.spec.containers.add(name="c", image="busybox")
    return obj


def key(name: str) -> str:
    return f"/pods/default/{name}"


def hold_commits(store: SqliteStore) -> threading.Event:
    """From now on the store's commits wait (on its thread) until the event is set."""
    release = threading.Event()
    real = store._commit_sync

    def held(group: list[Any]) -> None:
        assert release.wait(10)
        real(group)

    store._commit_sync = held  # type: ignore[method-assign]
    return release


async def test_writes_planned_on_one_key_apply_in_order(tmp_path: Path) -> None:
    """A create, updates and a delete of one key queued before any of them is
    committed: each is checked against the one before it, not the stale cache."""
    store = SqliteStore(tmp_path / "state.db", ProtoCodec())
    await store.open()
    try:
        created = asyncio.ensure_future(store.create(key("p"), pod("p")))
        update1 = asyncio.ensure_future(store.update(key("p"), pod("p"), expected_rev=1))
        update2 = asyncio.ensure_future(store.update(key("p"), pod("p"), expected_rev=2))
        stale = asyncio.ensure_future(store.update(key("p"), pod("p"), expected_rev=1))
        deleted = asyncio.ensure_future(store.delete(key("p"), expected_rev=3))
        assert await created == 1
        assert await update1 == 2
        assert await update2 == 3
        with pytest.raises(ConflictError):
            await stale
        assert (await deleted)[0] == 4
        assert store.get(key("p")) is None
        assert await store.create(key("p"), pod("p")) == 5
        assert store.get(key("p")) is not None
    finally:
        await store.close()


async def test_large_groups_with_creates_and_deletes_of_one_key_reach_the_disk(
    tmp_path: Path,
) -> None:
    """More writes at once than fit in one statement, and keys created and deleted
    (or deleted and created again) inside one group: the disk ends as the cache."""
    store = SqliteStore(tmp_path / "state.db", ProtoCodec())
    await store.open()
    try:
        names = [f"p{i}" for i in range(700)]
        await asyncio.gather(*(store.create(key(n), pod(n)) for n in names))
        writes = []
        for n in names[:100]:  # deleted
            writes.append(store.delete(key(n)))
        for n in names[100:150]:  # deleted, then created again
            writes.append(store.delete(key(n)))
            writes.append(store.create(key(n), pod(n)))
        for i in range(300):  # new, some deleted at once
            writes.append(store.create(key(f"q{i}"), pod(f"q{i}")))
            if i % 3 == 0:
                writes.append(store.delete(key(f"q{i}")))
        await asyncio.gather(*writes)
        expected, revision = store.list_prefix("/pods/")
    finally:
        await store.close()
    reopened = SqliteStore(tmp_path / "state.db", ProtoCodec())
    await reopened.open()
    try:
        entries, reopened_revision = reopened.list_prefix("/pods/")
        assert [(e.key, e.mod_rev) for e in entries] == [(e.key, e.mod_rev) for e in expected]
        assert len(entries) == 600 + 200
        assert reopened_revision == revision == 700 + 100 + 100 + 300 + 100
    finally:
        await reopened.close()


async def test_a_retry_after_a_conflict_sees_the_write_that_beat_it(tmp_path: Path) -> None:
    """A read-modify-write retried while the write that beat it is still on its way:
    the retry waits for that write, so re-reading once is enough (a check against
    the state before it would let both through; against the write in flight, refuse
    every retry until it commits)."""
    store = SqliteStore(tmp_path / "state.db", ProtoCodec())
    await store.open()
    try:
        first = await store.create(key("p"), pod("p"))
        slow = hold_commits(store)
        winner = asyncio.ensure_future(store.update(key("p"), pod("p"), expected_rev=first))
        await asyncio.sleep(0.01)  # planned, held on the disk
        entry = store.get(key("p"))
        assert entry is not None and entry.mod_rev == first  # readers see the committed one
        loser = asyncio.ensure_future(store.update(key("p"), pod("p"), expected_rev=first))
        await asyncio.sleep(0.05)
        assert not loser.done()  # waiting for the winner, not refused against it
        slow.set()
        assert await asyncio.wait_for(winner, 5) == first + 1
        with pytest.raises(ConflictError):
            await asyncio.wait_for(loser, 5)
        reread = store.get(key("p"))
        assert reread is not None
        assert await store.update(key("p"), pod("p"), expected_rev=reread.mod_rev) == first + 2
    finally:
        await store.close()


async def test_a_writer_that_gives_up_does_not_release_the_key_early(tmp_path: Path) -> None:
    """A caller cancelled while its write is on its way: the write still commits,
    and the next write to the key is checked against it."""
    store = SqliteStore(tmp_path / "state.db", ProtoCodec())
    await store.open()
    try:
        first = await store.create(key("p"), pod("p"))
        held = hold_commits(store)
        gave_up = asyncio.ensure_future(store.update(key("p"), pod("p"), expected_rev=first))
        await asyncio.sleep(0.01)
        gave_up.cancel()
        same_base = asyncio.ensure_future(store.update(key("p"), pod("p"), expected_rev=first))
        await asyncio.sleep(0.05)
        held.set()
        with pytest.raises(ConflictError):  # the cancelled caller's write won
            await asyncio.wait_for(same_base, 5)
        entry = store.get(key("p"))
        assert entry is not None and entry.mod_rev == first + 1
    finally:
        await store.close()
