"""ClusterIP and NodePort allocation with several masters over one store.

Each "master" is its own Service Registry and ServiceStrategy (its own in-memory
state) over ONE shared store object, as two masters share one etcd: only the
store's records may decide what is taken. Small ranges make a broken allocator
(one that trusted its own memory) hand out a duplicate for certain.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from kubeling.api.errors import ApiError
from kubeling.api.kinds import SERVICE
from kubeling.master.allocators import PortAllocator
from kubeling.master.codec import (
    SERVICE_IP_ALLOCATIONS,
    SERVICE_NODE_PORT_ALLOCATIONS,
    ProtoCodec,
    internal_key,
    internal_prefix,
)
from kubeling.master.registry import Registry
from kubeling.master.store.base import Store
from kubeling.master.store.sqlite import SqliteStore
from kubeling.master.strategies import ServiceStrategy, strategy_for
from kubeling.v1 import core_pb2, internal_pb2

# 10.99.0.0/28: .2 to .14 are handed out (13 addresses).
SMALL_CIDR = "10.99.0.0/28"
IP_COUNT = 13
PORTS = (30100, 30109)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    shared = SqliteStore(tmp_path / "state.db", ProtoCodec(), history=1000)
    await shared.open()
    try:
        yield shared
    finally:
        await shared.close()


def master(store: Store) -> Registry:
    """One master's Service registry: its own strategy and allocators."""
    registry = Registry(SERVICE, store, strategy_for(SERVICE, SMALL_CIDR))
    strategy = services_strategy(registry)
    strategy._node_ports = PortAllocator(store, *PORTS)  # a small range: clashes are certain
    return registry


def services_strategy(registry: Registry) -> ServiceStrategy:
    assert isinstance(registry.strategy, ServiceStrategy)
    return registry.strategy


def service(name: str, node_port: bool = False, cluster_ip: str = "") -> core_pb2.Service:
    svc = core_pb2.Service()
    svc.metadata.name = name
    svc.metadata.namespace = "default"
    svc.spec.selector["app"] = name
    svc.spec.ports.add(port=80)
    svc.spec.cluster_ip = cluster_ip
    if node_port:
        svc.spec.type = "NodePort"
    return svc


def records(store: Store, prefix: str) -> dict[str, internal_pb2.Allocation]:
    entries, _ = store.list_prefix(internal_prefix(prefix))
    return {e.value.metadata.name: e.value for e in entries}


async def test_two_masters_never_hand_out_the_same_ip_or_port(store: Store) -> None:
    a, b = master(store), master(store)
    made = await asyncio.gather(
        *(
            (a if i % 2 else b).create(service(f"svc-{i}", node_port=i < PORTS[1] - PORTS[0] + 1))
            for i in range(IP_COUNT)
        )
    )
    ips = [svc.spec.cluster_ip for svc in made]
    assert len(set(ips)) == IP_COUNT
    ports = [svc.spec.ports[0].node_port for svc in made if svc.spec.type == "NodePort"]
    assert len(ports) == PORTS[1] - PORTS[0] + 1 and len(set(ports)) == len(ports)
    assert all(PORTS[0] <= p <= PORTS[1] for p in ports)
    # Each taken value is one record naming its Service.
    ip_records = records(store, SERVICE_IP_ALLOCATIONS)
    assert set(ip_records) == set(ips)
    for svc in made:
        owner = ip_records[svc.spec.cluster_ip].owner
        assert (owner.name, owner.uid) == (svc.metadata.name, svc.metadata.uid)
    assert set(records(store, SERVICE_NODE_PORT_ALLOCATIONS)) == {str(p) for p in ports}
    # The range is full for both masters, whichever asks.
    for registry in (a, b):
        with pytest.raises(ApiError) as info:
            await registry.create(service("one-too-many"))
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.violations[0].field == "spec.clusterIP"
        assert "range is full" in info.value.violations[0].description


async def test_released_values_are_reusable_by_the_other_master(store: Store) -> None:
    a, b = master(store), master(store)
    made = [await a.create(service(f"svc-{i}", node_port=i < 10)) for i in range(IP_COUNT)]
    gone = made[3]
    await a.delete("default", gone.metadata.name)
    assert gone.spec.cluster_ip not in records(store, SERVICE_IP_ALLOCATIONS)
    again = await b.create(service("again", node_port=True))
    assert again.spec.cluster_ip == gone.spec.cluster_ip
    assert again.spec.ports[0].node_port == gone.spec.ports[0].node_port
    # An update that drops the node port (NodePort -> ClusterIP) frees it for A.
    changed = service("again", cluster_ip=again.spec.cluster_ip)
    changed.spec.type = "ClusterIP"
    await b.update(changed)
    assert str(again.spec.ports[0].node_port) not in records(store, SERVICE_NODE_PORT_ALLOCATIONS)
    other = made[IP_COUNT - 1]
    moved = service(other.metadata.name, node_port=True, cluster_ip=other.spec.cluster_ip)
    updated = await a.update(moved)
    assert updated.spec.ports[0].node_port == again.spec.ports[0].node_port


async def test_an_ip_taken_by_the_other_master_is_refused_naming_the_field(
    store: Store,
) -> None:
    a, b = master(store), master(store)
    first = await a.create(service("first", node_port=True))
    with pytest.raises(ApiError) as info:
        await b.create(service("second", cluster_ip=first.spec.cluster_ip))
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.violations[0].field == "spec.clusterIP"
    assert "already allocated" in info.value.violations[0].description
    clash = service("third", node_port=True)
    clash.spec.ports[0].node_port = first.spec.ports[0].node_port
    with pytest.raises(ApiError) as info:
        await b.create(clash)
    assert info.value.violations[0].field == "spec.ports[0].nodePort"
    # The failed creates left no record behind: only "first" holds anything.
    assert {r.owner.name for r in records(store, SERVICE_IP_ALLOCATIONS).values()} == {"first"}
    assert {r.owner.name for r in records(store, SERVICE_NODE_PORT_ALLOCATIONS).values()} == {
        "first"
    }


async def test_a_create_that_loses_the_name_race_releases_its_allocations(store: Store) -> None:
    a, b = master(store), master(store)
    results = await asyncio.gather(
        a.create(service("same", node_port=True)),
        b.create(service("same", node_port=True)),
        return_exceptions=True,
    )
    won = [r for r in results if isinstance(r, core_pb2.Service)]
    lost = [r for r in results if isinstance(r, ApiError)]
    assert len(won) == 1 and len(lost) == 1
    assert lost[0].code == grpc.StatusCode.ALREADY_EXISTS
    assert set(records(store, SERVICE_IP_ALLOCATIONS)) == {won[0].spec.cluster_ip}
    assert set(records(store, SERVICE_NODE_PORT_ALLOCATIONS)) == {
        str(won[0].spec.ports[0].node_port)
    }


async def _leak(store: Store, prefix: str, name: str, owner: str, age: float) -> None:
    """A record as a master killed before writing its Service leaves it."""
    record = internal_pb2.Allocation()
    record.metadata.name = name
    record.metadata.creation_timestamp.FromSeconds(int(time.time() - age))
    record.owner.kind, record.owner.namespace = "Service", "default"
    record.owner.name, record.owner.uid = owner, "uid-of-a-service-never-written"
    await store.create(internal_key(prefix, name), record)


async def test_leaked_records_are_repaired_and_old_services_adopted(store: Store) -> None:
    a, b = master(store), master(store)
    # Explicit values: a random pick could land on the ones leaked below.
    wanted = service("held", node_port=True, cluster_ip="10.99.0.2")
    wanted.spec.ports[0].node_port = PORTS[0]
    held = await a.create(wanted)
    # Leaks: old ones (the master died long ago) and a young one (maybe in flight).
    await _leak(store, SERVICE_IP_ALLOCATIONS, "10.99.0.9", "ghost", age=3600)
    await _leak(store, SERVICE_NODE_PORT_ALLOCATIONS, "30105", "ghost", age=3600)
    await _leak(store, SERVICE_IP_ALLOCATIONS, "10.99.0.10", "young", age=1)
    # A Service written before records existed (an upgraded store): no record.
    old = service("from-before", cluster_ip="10.99.0.11")
    old.metadata.uid = "old-uid"
    await store.create(SERVICE.key("default", "from-before"), old)

    made, deleted = await services_strategy(b).repair()
    assert (made, deleted) == (1, 2)
    ips = records(store, SERVICE_IP_ALLOCATIONS)
    assert set(ips) == {held.spec.cluster_ip, "10.99.0.10", "10.99.0.11"}
    assert ips["10.99.0.11"].owner.uid == "old-uid"
    assert set(records(store, SERVICE_NODE_PORT_ALLOCATIONS)) == {str(held.spec.ports[0].node_port)}
    # The repaired IP is free again; the adopted one is not.
    await b.create(service("reuses", cluster_ip="10.99.0.9"))
    with pytest.raises(ApiError) as info:
        await a.create(service("clashes", cluster_ip="10.99.0.11"))
    assert info.value.violations[0].field == "spec.clusterIP"
    # A second pass finds nothing to do (the young record is not old enough yet).
    assert await services_strategy(a).repair() == (0, 0)


async def test_the_first_allocation_repairs_an_upgraded_store(store: Store) -> None:
    old = service("from-before", cluster_ip="10.99.0.5")
    old.metadata.uid = "old-uid"
    await store.create(SERVICE.key("default", "from-before"), old)
    fresh = master(store)
    with pytest.raises(ApiError) as info:
        await fresh.create(service("clashes", cluster_ip="10.99.0.5"))
    assert info.value.violations[0].field == "spec.clusterIP"


def test_internal_records_decode_by_prefix_but_are_no_api_kind() -> None:
    codec = ProtoCodec()
    record = internal_pb2.Allocation()
    record.metadata.name = "10.99.0.3"
    record.owner.name = "web"
    key = internal_key(SERVICE_IP_ALLOCATIONS, "10.99.0.3")
    assert codec.decode(key, codec.encode(record)) == record
    codec.stamp(record, 7)
    assert codec.revision_of(record) == 7
    with pytest.raises(KeyError):
        codec.kind_of_key(key)  # no registry, hence no List/Watch/Get, serves it
    assert codec.kind_of_key(SERVICE.key("default", "web")) is SERVICE
