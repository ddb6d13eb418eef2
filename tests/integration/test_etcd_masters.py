"""Several masters on one real etcd serve ONE cluster: what one writes the others
read (consistently, right after), conflicts are decided across masters, watches on
one master see writes made through another, and losing an etcd member (of three)
does not stop writes."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from kubeling.client import Client
from kubeling.v1 import core_pb2
from tests.support.etcd import EtcdCluster, running_etcd
from tests.support.inprocess import in_process_master


@pytest.fixture(scope="module")
def etcd3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    with running_etcd(tmp_path_factory.mktemp("etcd3"), members=3) as cluster:
        yield cluster


@contextlib.asynccontextmanager
async def masters(tmp_path: Path, etcd: EtcdCluster, count: int = 2) -> AsyncIterator[list[Client]]:
    """`count` in-process masters (plaintext, loopback) sharing one etcd prefix."""
    prefix = f"/kubeling-{uuid.uuid4().hex[:8]}"
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                in_process_master(
                    tmp_path / f"m{i}",
                    store=f"etcd://{etcd.endpoints}",
                    etcd_prefix=prefix,
                )
            )
            for i in range(count)
        ]
        yield clients


def configmap_like(name: str, label: str = "x") -> core_pb2.Service:
    svc = core_pb2.Service()
    svc.metadata.name = name
    svc.metadata.namespace = "default"
    svc.metadata.labels["v"] = label
    svc.spec.cluster_ip = "None"
    svc.spec.ports.add(port=80, protocol="TCP")
    return svc


async def test_a_write_through_one_master_is_read_at_once_through_another(
    tmp_path: Path, etcd3: EtcdCluster
) -> None:
    async with masters(tmp_path, etcd3) as (a, b):
        for i in range(20):
            made = await a.services.create(configmap_like(f"s{i}"))
            # No sleep: B's Get is a consistent read (it catches up with etcd first).
            got = await b.services.get(f"s{i}", "default")
            assert got.metadata.uid == made.metadata.uid
            assert got.metadata.resource_version == made.metadata.resource_version
        listed = await b.services.list("default")
        assert sorted(s.metadata.name for s in listed.items) == sorted(f"s{i}" for i in range(20))
        # Namespaces were made once, not once per master.
        names = [n.metadata.name for n in (await b.namespaces.list()).items]
        assert names.count("default") == 1


async def test_conflicting_updates_through_two_masters_exactly_one_wins(
    tmp_path: Path, etcd3: EtcdCluster
) -> None:
    async with masters(tmp_path, etcd3) as (a, b):
        made = await a.services.create(configmap_like("shared"))
        updates = []
        for i, client in enumerate([a, b] * 5):
            change = core_pb2.Service()
            change.CopyFrom(made)
            change.metadata.labels["v"] = f"writer{i}"
            updates.append(client.services.update(change))
        results = await asyncio.gather(*updates, return_exceptions=True)
        won = [r for r in results if isinstance(r, core_pb2.Service)]
        lost = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert len(won) == 1, results
        assert len(lost) == 9 and all(e.code() == grpc.StatusCode.ABORTED for e in lost)
        for client in (a, b):
            now = await client.services.get("shared", "default")
            assert now.metadata.labels["v"] == won[0].metadata.labels["v"]


async def test_a_watch_on_one_master_sees_writes_through_the_other(
    tmp_path: Path, etcd3: EtcdCluster
) -> None:
    async with masters(tmp_path, etcd3) as (a, b):
        start = await b.services.list("default")
        events: list[tuple[str, str]] = []

        async def watch() -> None:
            async for event in b.services.watch("default", resource_version=start.resource_version):
                if event.type == "BOOKMARK":
                    continue
                events.append((event.type, event.object.metadata.name))
                if len(events) == 3:
                    return

        watching = asyncio.create_task(watch())
        made = await a.services.create(configmap_like("w"))
        made.metadata.labels["v"] = "changed"
        await a.services.update(made)
        await a.services.delete("w", "default")
        await asyncio.wait_for(watching, 10)
        assert events == [("ADDED", "w"), ("MODIFIED", "w"), ("DELETED", "w")]


async def test_writes_continue_with_one_etcd_member_stopped(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # Its own cluster: stopping a member must not disturb the module's.
    with running_etcd(tmp_path_factory.mktemp("etcd-lose-one"), members=3) as etcd:
        async with masters(tmp_path, etcd) as (a, b):
            await a.services.create(configmap_like("before"))
            for index in range(3):
                etcd.stop(index)  # each member in turn, the others keep quorum
                try:
                    for client in (a, b):
                        name = f"m{index}-{'ab'[(a, b).index(client)]}"
                        await client.services.create(configmap_like(name))
                        got = await client.services.get(name, "default")
                        assert got.metadata.name == name
                finally:
                    etcd.start(index)
            listed = await b.services.list("default")
            assert len(listed.items) == 7


async def test_two_masters_allocating_at_once_never_hand_out_one_ip_or_port_twice(
    tmp_path: Path, etcd3: EtcdCluster
) -> None:
    async with masters(tmp_path, etcd3) as (a, b):

        def node_port_service(name: str) -> core_pb2.Service:
            svc = core_pb2.Service()
            svc.metadata.name = name
            svc.metadata.namespace = "default"
            svc.spec.type = "NodePort"
            svc.spec.selector["app"] = name
            svc.spec.ports.add(port=80, protocol="TCP")
            return svc

        made = await asyncio.gather(
            *(
                client.services.create(node_port_service(f"{side}{i}"))
                for i in range(25)
                for side, client in (("a", a), ("b", b))
            )
        )
        ips = [s.spec.cluster_ip for s in made]
        ports = [s.spec.ports[0].node_port for s in made]
        assert len(set(ips)) == 50 and all(ips)
        assert len(set(ports)) == 50 and all(ports)
        # A freed IP can be taken again through the other master.
        freed = made[0].spec.cluster_ip
        await a.services.delete(made[0].metadata.name, "default")
        again = node_port_service("again")
        again.spec.cluster_ip = freed
        assert (await b.services.create(again)).spec.cluster_ip == freed
        # ...and one in use cannot.
        taken = node_port_service("taken")
        taken.spec.cluster_ip = made[1].spec.cluster_ip
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await a.services.create(taken)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "spec.clusterIP" in (refused.value.details() or "")
