"""The servicelb controller: which node addresses a LoadBalancer Service publishes
(pure functions), and the controller against an in-process master following
Services and nodes."""

from __future__ import annotations

import functools
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from kubeling.api.objects import now
from kubeling.client import Client
from kubeling.controllers.context import ControllerContext
from kubeling.controllers.servicelb import (
    ServiceLBController,
    assign_ingress,
    desired_ingress,
    node_addresses,
)
from kubeling.v1 import core_pb2
from tests.support import waiting
from tests.support.inprocess import in_process_master

eventually = functools.partial(waiting.eventually, within=15.0, interval=0.1)


def node(name: str, ip: str, ready: str = "True", unschedulable: bool = False) -> core_pb2.Node:
    out = core_pb2.Node()
    out.metadata.name = name
    out.spec.unschedulable = unschedulable
    out.status.conditions.add(type="Ready", status=ready, last_heartbeat_time=now())
    out.status.addresses.add(type="Hostname", address=name)
    if ip:
        out.status.addresses.add(type="InternalIP", address=ip)
    return out


def service(
    name: str, type_: str = "LoadBalancer", lb_ip: str = "", port: int = 80, created: int = 0
) -> core_pb2.Service:
    svc = core_pb2.Service()
    svc.metadata.name = name
    svc.metadata.namespace = "default"
    svc.metadata.creation_timestamp.seconds = created
    svc.spec.type = type_
    svc.spec.selector["app"] = name
    svc.spec.ports.add(name="http", port=port)
    if lb_ip:
        svc.spec.load_balancer_ip = lb_ip
    return svc


def test_node_addresses_ready_schedulable_sorted_unique() -> None:
    nodes = [
        node("b", "192.168.1.20"),
        node("a", "192.168.1.10"),
        node("dup", "192.168.1.10"),
        node("down", "192.168.1.30", ready="False"),
        node("unknown", "192.168.1.31", ready="Unknown"),
        node("cordoned", "192.168.1.40", unschedulable=True),
        node("noip", ""),
    ]
    assert node_addresses(nodes) == ["192.168.1.10", "192.168.1.20"]


def test_desired_ingress_by_type_and_load_balancer_ip() -> None:
    addresses = ["192.168.1.10", "192.168.1.20"]
    assert desired_ingress(service("a"), addresses) == addresses
    assert desired_ingress(service("a", "NodePort"), addresses) == []
    assert desired_ingress(service("a", lb_ip="192.168.1.20"), addresses) == ["192.168.1.20"]
    # Not a node's address: cannot be honoured, every node is published.
    assert desired_ingress(service("a", lb_ip="10.0.0.1"), addresses) == addresses


def test_assign_ingress_gives_a_shared_port_to_the_older_service_only() -> None:
    addresses = ["192.168.1.10", "192.168.1.20"]
    old, new = service("old", created=100), service("new", created=200)
    other_port = service("other", port=8443, created=300)
    pinned = service("pinned", lb_ip="192.168.1.20", port=9000, created=50)
    later = service("later", port=9000, created=60)
    got = assign_ingress([new, other_port, old, pinned, later], addresses)
    assert got[("default", "old")] == addresses
    assert got[("default", "new")] == []  # pending: port 80 is old's everywhere
    assert got[("default", "other")] == addresses
    assert got[("default", "pinned")] == ["192.168.1.20"]
    assert got[("default", "later")] == ["192.168.1.10"]


def test_assign_ingress_leaves_out_addresses_used_as_external_ips() -> None:
    addresses = ["192.168.1.10", "192.168.1.20"]
    ext = service("ext", "ClusterIP", created=999)
    ext.spec.external_ips.append("192.168.1.10")
    got = assign_ingress([service("lb", created=1), ext], addresses)
    assert got[("default", "lb")] == ["192.168.1.20"]
    assert got[("default", "ext")] == []
    # Another protocol on the same port does not conflict.
    udp = service("udp", created=2)
    udp.spec.ports[0].protocol = "UDP"
    assert assign_ingress([service("lb", created=1), udp], addresses)[("default", "udp")] == (
        addresses
    )


async def _add_node(api: Client, n: core_pb2.Node) -> None:
    created = await api.nodes.create(n)
    created.status.CopyFrom(n.status)
    await api.nodes.update_status(created)


async def _ingress(api: Client, name: str) -> list[str]:
    svc = await api.services.get(name, "default")
    return [i.ip for i in svc.status.load_balancer.ingress]


@pytest.mark.asyncio(loop_scope="session")
async def test_controller_publishes_follows_nodes_and_clears(tmp_path: Path) -> None:
    async with in_process_master(tmp_path, ["servicelb"]) as api:
        await _add_node(api, node("n2", "192.168.1.20"))
        await _add_node(api, node("n1", "192.168.1.10"))
        await api.services.create(service("lb"))
        await api.services.create(service("plain", "ClusterIP"))
        await api.services.create(service("pinned", lb_ip="192.168.1.20", port=8080))

        async def ingress_is(name: str, expected: list[str]) -> bool:
            return await _ingress(api, name) == expected

        await eventually(lambda: ingress_is("lb", ["192.168.1.10", "192.168.1.20"]))
        await eventually(lambda: ingress_is("pinned", ["192.168.1.20"]))
        assert await _ingress(api, "plain") == []

        # A node joining is published; one turning NotReady is withdrawn.
        await _add_node(api, node("n3", "192.168.1.30"))
        await eventually(lambda: ingress_is("lb", ["192.168.1.10", "192.168.1.20", "192.168.1.30"]))
        n1 = await api.nodes.get("n1")
        n1.status.conditions[0].status = "False"
        await api.nodes.update_status(n1)
        await eventually(lambda: ingress_is("lb", ["192.168.1.20", "192.168.1.30"]))
        await api.nodes.delete("n3")
        await eventually(lambda: ingress_is("lb", ["192.168.1.20"]))

        # Changing the type away from LoadBalancer clears the status.
        lb = await api.services.get("lb", "default")
        lb.spec.type = "NodePort"
        await api.services.update(lb)
        await eventually(lambda: ingress_is("lb", []))


@pytest.mark.asyncio(loop_scope="session")
async def test_controller_hands_a_freed_port_to_the_waiting_service(tmp_path: Path) -> None:
    async with in_process_master(tmp_path, ["servicelb"]) as api:
        await _add_node(api, node("n1", "192.168.1.10"))
        await api.services.create(service("first"))

        async def ingress_is(name: str, expected: list[str]) -> bool:
            return await _ingress(api, name) == expected

        await eventually(lambda: ingress_is("first", ["192.168.1.10"]))
        await api.services.create(service("second"))
        await api.services.create(service("third", port=81))
        await eventually(lambda: ingress_is("third", ["192.168.1.10"]))
        assert await _ingress(api, "second") == []
        await api.services.delete("first", "default")
        await eventually(lambda: ingress_is("second", ["192.168.1.10"]))


def test_only_a_change_in_what_a_node_publishes_resyncs_the_load_balancers() -> None:
    api = cast(Client, SimpleNamespace(services=object(), nodes=object()))
    settings = SimpleNamespace(workers=1)
    controller = ServiceLBController(
        cast(ControllerContext, SimpleNamespace(api=api, settings=settings))
    )
    controller.services.store["default/lb"] = service("lb")
    queued: list[str] = []
    controller.queue.add = queued.append  # type: ignore[method-assign]

    before = node("n1", "192.168.1.10")
    heartbeat = node("n1", "192.168.1.10")
    controller._on_node("MODIFIED", before, heartbeat)
    assert queued == []  # a heartbeat
    not_ready = node("n1", "192.168.1.10", ready="False")
    controller._on_node("MODIFIED", heartbeat, not_ready)
    assert queued == ["default/lb"]
    controller._on_node("DELETED", not_ready, not_ready)
    assert queued == ["default/lb"]  # it published nothing any more
    controller._on_node("ADDED", None, before)
    controller._on_node("DELETED", before, before)
    assert queued == ["default/lb"] * 3
