"""What only the etcd backend does (the shared contract is tests/unit/test_store.py):
coordinated compaction among masters, and a cache that fell behind a compaction
reloading itself rather than serving a gap."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest

from kubeling.etcdpb import etcd_pb2 as pb
from kubeling.etcdpb import etcd_pb2_grpc as pb_grpc
from kubeling.master.codec import ProtoCodec
from kubeling.master.store import etcd as etcd_module
from kubeling.master.store.base import WatchClosedError
from kubeling.master.store.etcd import EtcdStore, EtcdStoreError, parse_endpoints
from kubeling.v1 import core_pb2
from tests.support.etcd import EtcdCluster, running_etcd


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    with running_etcd(tmp_path_factory.mktemp("etcd-store")) as cluster:
        yield cluster


def node(name: str) -> core_pb2.Node:
    obj = core_pb2.Node()
    obj.metadata.name = name
    return obj


async def opened(etcd: EtcdCluster, prefix: str) -> EtcdStore:
    store = EtcdStore(etcd.endpoints.split(","), ProtoCodec(), prefix=prefix, compaction_interval=0)
    await store.open()
    return store


async def raw_range_at(etcd: EtcdCluster, revision: int) -> grpc.StatusCode | None:
    async with grpc.aio.insecure_channel(etcd.endpoint(0)) as channel:
        try:
            await pb_grpc.KVStub(channel).Range(pb.RangeRequest(key=b"/", revision=revision))
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return None


async def test_only_one_master_compacts_per_round_and_history_of_one_round_is_kept(
    etcd: EtcdCluster,
) -> None:
    prefix = f"/c-{uuid.uuid4().hex[:6]}"
    a, b = await opened(etcd, prefix), await opened(etcd, prefix)
    try:
        await a.create("/nodes/n1", node("n1"))
        # Round 1: A bumps the shared key first; B sees it lost and learns the version.
        version_a, seen_a = await a.compact_once(0, 0)
        version_b, _ = await b.compact_once(0, 0)
        assert version_a == version_b == 1
        first_round = seen_a
        for i in range(5):
            await b.create(f"/nodes/m{i}", node(f"m{i}"))
        # Round 2: A wins again and compacts to what it saw one round ago, not to now.
        version_a, _ = await a.compact_once(version_a, seen_a)
        assert version_a == 2
        assert await raw_range_at(etcd, first_round - 1) == grpc.StatusCode.OUT_OF_RANGE
        assert await raw_range_at(etcd, first_round + 1) is None
        # B, one version behind, does not compact; it catches up with the version.
        version_b, _ = await b.compact_once(version_b, first_round + 3)
        assert version_b == 2
        assert await raw_range_at(etcd, first_round + 1) is None
    finally:
        await a.close()
        await b.close()


async def test_a_cache_behind_a_compaction_reloads_and_closes_its_watchers(
    etcd: EtcdCluster,
) -> None:
    prefix = f"/r-{uuid.uuid4().hex[:6]}"
    lagging, writer = await opened(etcd, prefix), await opened(etcd, prefix)
    try:
        watcher = lagging.watch("/nodes/", lagging.revision)
        # The lagging master's etcd watch stops (as if disconnected for long) ...
        assert lagging._watcher is not None
        lagging._watcher.cancel()
        await asyncio.gather(lagging._watcher, return_exceptions=True)
        for i in range(5):
            await writer.create(f"/nodes/n{i}", node(f"n{i}"))
        # ... while the history it would need is compacted away.
        version, _ = await writer.compact_once(0, 0)
        await writer.compact_once(version, writer.revision)
        lagging._watcher = asyncio.create_task(lagging._watch_forever())
        await asyncio.wait_for(lagging.wait_consistent(), 10)
        assert sorted(e.key for e in lagging.list_prefix("/nodes/")[0]) == [
            f"/nodes/n{i}" for i in range(5)
        ]
        # Its watchers cannot be served the gap: they are closed and relist.
        with pytest.raises(WatchClosedError):
            while True:
                await asyncio.wait_for(watcher.next_batch(), 5)
    finally:
        await lagging.close()
        await writer.close()


def test_bad_store_addresses_are_refused_clearly() -> None:
    for text in ("etcd://", "etcd://h1:2379,", "etcd://h1", "etcd://:2379", "etcd://h:port"):
        with pytest.raises(EtcdStoreError, match="HOST:PORT"):
            parse_endpoints(text)
    assert parse_endpoints("etcd://10.0.0.1:2379,[::1]:2379") == ["10.0.0.1:2379", "[::1]:2379"]


async def test_an_unreachable_etcd_fails_open_with_the_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from kubeling.master.store import etcd as etcd_module
    from tests.support.processes import free_port

    monkeypatch.setattr(etcd_module, "_RETRY_FOR", 1.0)  # not the 15 s default
    store = EtcdStore([f"127.0.0.1:{free_port()}"], ProtoCodec(), compaction_interval=0)
    with pytest.raises(EtcdStoreError, match="did not answer"):
        await asyncio.wait_for(store.open(), 60)


async def test_the_store_says_unhealthy_while_etcd_is_gone_and_recovers(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubeling.master.store import etcd as etcd_module

    monkeypatch.setattr(etcd_module, "_UNHEALTHY_AFTER", 0.5)
    with running_etcd(tmp_path_factory.mktemp("etcd-gone")) as lonely:
        store = await opened(lonely, "/h")
        try:
            assert store.healthy()
            lonely.stop(0)
            for _ in range(100):
                if not store.healthy():
                    break
                await asyncio.sleep(0.1)
            assert not store.healthy()
            lonely.start(0)
            await asyncio.wait_for(store.create("/nodes/back", node("back")), 30)
            for _ in range(100):
                if store.healthy():
                    break
                await asyncio.sleep(0.1)
            assert store.healthy()
            assert store.get("/nodes/back") is not None
        finally:
            await store.close()


async def test_a_write_that_gave_up_waiting_for_the_watch_leaves_no_waiter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While the watch is down every write waits for it in vain: the waiters must
    not pile up (no etcd needed: only the cache's revision is looked at)."""
    monkeypatch.setattr(etcd_module, "_CACHE_WAIT", 0.01)
    store = EtcdStore(["127.0.0.1:1"], ProtoCodec())
    await store._until_cached(5)
    waiting = asyncio.ensure_future(store._until_cached(6))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert store._waiters == []


async def test_a_history_replay_etcd_refuses_ends_without_history(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """etcd cancels a watch for other reasons than compaction (auth, a bad range)
    and keeps the stream open: the replay must end there, not wait forever."""

    async def replies() -> AsyncIterator[pb.WatchResponse]:
        yield pb.WatchResponse(created=True)
        yield pb.WatchResponse(canceled=True, cancel_reason="permission denied")
        await asyncio.Event().wait()  # the stream stays open

    @contextlib.asynccontextmanager
    async def stream(create: pb.WatchRequest) -> AsyncIterator[tuple[Any, Any]]:
        yield replies(), asyncio.Queue()

    store = EtcdStore(["127.0.0.1:1"], ProtoCodec())
    monkeypatch.setattr(store, "_watch_stream", stream)
    assert await asyncio.wait_for(store._replay(100), 5.0) == []


async def test_a_value_no_master_can_decode_is_left_out_and_the_watch_goes_on(
    etcd: EtcdCluster,
) -> None:
    from kubeling.master.metrics import STORAGE_DECODE_ERRORS

    prefix = f"/bad-{uuid.uuid4().hex[:6]}"
    store = await opened(etcd, prefix)
    before = STORAGE_DECODE_ERRORS._value.get()
    try:
        # Someone else's bytes under our prefix (damage, or another cluster's key).
        async with grpc.aio.insecure_channel(etcd.endpoint(0)) as channel:
            await pb_grpc.KVStub(channel).Txn(
                pb.TxnRequest(
                    success=[
                        pb.RequestOp(
                            request_put=pb.PutRequest(
                                key=f"{prefix}/nodes/garbage".encode(), value=b"\xff\x00junk"
                            )
                        )
                    ]
                )
            )
        # Writes after it are still seen (the watch did not die on it).
        await asyncio.wait_for(store.create("/nodes/good", node("good")), 10)
        assert store.get("/nodes/good") is not None
        assert store.get("/nodes/garbage") is None
        assert STORAGE_DECODE_ERRORS._value.get() == before + 1
        # A master opening on it now loads the rest.
        again = await opened(etcd, prefix)
        try:
            assert [e.key for e in again.list_prefix("/nodes/")[0]] == ["/nodes/good"]
        finally:
            await again.close()
    finally:
        await store.close()
