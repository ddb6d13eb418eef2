"""The master's request limits (master/limits.py): --max-requests-inflight and
--max-watches-per-client, answered RESOURCE_EXHAUSTED."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest

from kubeling.api.kinds import NAMESPACE
from kubeling.common import rpc
from kubeling.master.limits import peer_host
from kubeling.master.registry import Registry
from kubeling.master.server import Master, MasterConfig
from kubeling.v1 import core_pb2, meta_pb2
from tests.support.inprocess import serving
from tests.support.waiting import eventually

WATCH = "/kubeling.v1.Namespaces/Watch"


def namespace(name: str) -> core_pb2.Namespace:
    ns = core_pb2.Namespace()
    ns.metadata.name = name
    return ns


class HeldCreates:
    """Creates through `registry` wait for `release`: they stay in flight."""

    def __init__(self, registry: Registry) -> None:
        self.entered = 0
        self.release = asyncio.Event()
        create = registry.create

        async def held_create(obj: Any) -> Any:
            self.entered += 1
            await self.release.wait()
            return await create(obj)

        registry.create = held_create  # type: ignore[method-assign]


async def test_requests_over_the_inflight_limit_are_refused_and_below_it_are_served(
    tmp_path: Path,
) -> None:
    master = Master(
        MasterConfig(listen="127.0.0.1:0", tls=False, data_dir=tmp_path, controllers=set(),
                     max_requests_inflight=3)
    )  # fmt: skip
    async with serving(master) as api:
        gate = HeldCreates(master.registries[NAMESPACE.name])  # after start's own creates
        held = [asyncio.create_task(api.namespaces.create(namespace(f"n{i}"))) for i in range(3)]
        await eventually(lambda: gate.entered == 3)
        # The fourth request of any kind is refused while three are being served...
        for extra in (api.namespaces.create(namespace("n3")), api.pods.list("default")):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await extra
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert refused.value.details() == "too many requests in flight, retry later"
        # ...but a watch is long-running and does not count.
        events = api.namespaces.watch()
        first = await asyncio.wait_for(anext(aiter(events)), 10)
        assert first.type == "ADDED"
        await events.aclose()  # type: ignore[attr-defined]
        gate.release.set()
        created = await asyncio.wait_for(asyncio.gather(*held), 10)
        assert [n.metadata.name for n in created] == ["n0", "n1", "n2"]
        assert gate.entered == 3  # the refused create never reached the registry
        await api.namespaces.create(namespace("n3"))  # below the limit again
        assert master.limits.inflight == 0


async def open_watch(channel: grpc.aio.Channel) -> Any:
    """A Namespaces watch, once it delivered its first event (so it is counted)."""
    call = channel.unary_stream(
        WATCH,
        request_serializer=meta_pb2.WatchRequest.SerializeToString,
        response_deserializer=core_pb2.NamespaceWatchEvent.FromString,
    )(meta_pb2.WatchRequest())
    await asyncio.wait_for(call.read(), 10)
    return call


async def test_a_client_beyond_its_watch_limit_is_refused(tmp_path: Path) -> None:
    master = Master(
        MasterConfig(listen="127.0.0.1:0", tls=False, data_dir=tmp_path, controllers=set(),
                     max_watches_per_client=2)
    )  # fmt: skip
    async with serving(master):
        channel = rpc.channel(f"127.0.0.1:{master.server.port}")  # type: ignore[union-attr]
        try:
            watches = [await open_watch(channel) for _ in range(2)]
            assert master.limits.watches == {"127.0.0.1": 2}
            third = channel.unary_stream(
                WATCH, request_serializer=meta_pb2.WatchRequest.SerializeToString
            )(meta_pb2.WatchRequest())
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await asyncio.wait_for(third.read(), 10)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "too many watches open from 127.0.0.1 (limit 2)" in (
                refused.value.details() or ""
            )
            # Closing one makes room for another.
            watches[0].cancel()
            await eventually(lambda: master.limits.watches["127.0.0.1"] == 1)
            watches[0] = await open_watch(channel)
            for call in watches:
                call.cancel()
        finally:
            await channel.close()


class Peer:
    def __init__(self, peer: str) -> None:
        self._peer = peer

    def peer(self) -> str:
        return self._peer


@pytest.mark.parametrize(
    ("peer", "key"),
    [
        ("ipv4:10.0.0.5:51000", "10.0.0.5"),
        ("ipv6:[::1]:51000", "::1"),
        ("ipv6:[fd00::5]:6443", "fd00::5"),
        ("unix:/run/kubeling.sock", "unix:/run/kubeling.sock"),
    ],
)
def test_clients_are_keyed_by_peer_host(peer: str, key: str) -> None:
    assert peer_host(Peer(peer)) == key


def test_the_limits_are_flags_of_the_master() -> None:
    from kubeling.master.main import parse_args

    defaults = parse_args([])
    assert (defaults.max_requests_inflight, defaults.max_watches_per_client) == (400, 100)
    args = parse_args(["--max-requests-inflight", "5", "--max-watches-per-client", "0"])
    assert (args.max_requests_inflight, args.max_watches_per_client) == (5, 0)


async def test_with_tls_clients_are_their_identities(tmp_path: Path) -> None:
    """In flight and watches are counted per certificate user, not per address:
    every client here calls from 127.0.0.1."""
    from kubeling.common import identity
    from tests.integration.test_tls_master import client_as
    from tests.support.inprocess import tls_master

    async with tls_master(
        tmp_path, max_requests_inflight_per_client=2, max_watches_per_client=1
    ) as (master, admin):
        gate = HeldCreates(master.registries[NAMESPACE.name])
        held = [asyncio.create_task(admin.namespaces.create(namespace(f"n{i}"))) for i in range(2)]
        await eventually(lambda: gate.entered == 2)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await admin.pods.list("default")
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "too many requests in flight from kubeling-admin (limit 2)" in (
            refused.value.details() or ""
        )
        async with client_as(master, "viewer", identity.GROUP_VIEW) as viewer:
            await viewer.pods.list("default")  # another identity: its own share
            watch = await open_watch(viewer.channel)
            assert master.limits.watches == {"viewer": 1}
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await open_watch(viewer.channel)
            assert "too many watches open from viewer (limit 1)" in (refused.value.details() or "")
            admin_watch = await open_watch(admin.channel)
            watch.cancel()
            admin_watch.cancel()
        gate.release.set()
        await asyncio.wait_for(asyncio.gather(*held), 10)
        assert master.limits.inflight_by_client == {}
