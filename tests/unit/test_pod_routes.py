"""The kubelet's routes to other nodes' pod CIDRs (`--sync-pod-routes`)."""

from __future__ import annotations

from typing import Any

from kubeling.kubelet.routes import PodRouteSync, wanted_routes
from kubeling.v1 import core_pb2


def node(name: str, cidr: str, ip: str) -> core_pb2.Node:
    obj = core_pb2.Node()
    obj.metadata.name = name
    obj.spec.pod_cidr = cidr
    if ip:
        obj.status.addresses.add(type="InternalIP", address=ip)
    obj.status.addresses.add(type="Hostname", address=name)
    return obj


def test_routes_go_to_every_other_node_with_a_cidr_and_an_address() -> None:
    nodes = [
        node("a", "10.244.0.0/24", "10.99.0.11"),
        node("b", "10.244.1.0/24", "10.99.0.12"),
        node("c", "", "10.99.0.13"),  # no CIDR yet
        node("d", "10.244.3.0/24", ""),  # no address yet
    ]
    assert wanted_routes(nodes, "a") == {"10.244.1.0/24": "10.99.0.12"}


class FakeIp:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.fail: set[str] = set()

    async def __call__(self, args: list[str]) -> tuple[int, str]:
        self.calls.append(args)
        if args[:2] == ["route", "show"]:
            return 0, "10.244.9.0/24 via 10.99.0.19 dev eth0 proto 88\n"
        return (2, "RTNETLINK answers: Network is unreachable") if args[2] in self.fail else (0, "")


class Api:
    nodes: Any = None


async def test_routes_follow_nodes_joining_moving_and_leaving() -> None:
    ip = FakeIp()
    sync = PodRouteSync(Api(), "a", run=ip)  # type: ignore[arg-type]
    store = sync.nodes.store
    store["a"] = node("a", "10.244.0.0/24", "10.99.0.11")
    store["b"] = node("b", "10.244.1.0/24", "10.99.0.12")
    await sync.adopt()  # a route an earlier run added, to a node now gone
    assert sync.installed == {"10.244.9.0/24": "10.99.0.19"}
    ip.calls.clear()
    await sync.sync()
    assert ip.calls == [
        ["route", "del", "10.244.9.0/24", "via", "10.99.0.19"],
        ["route", "replace", "10.244.1.0/24", "via", "10.99.0.12", "proto", "88"],
    ]
    ip.calls.pop(0)
    await sync.sync()  # nothing changed: no calls
    assert len(ip.calls) == 1
    store["b"] = node("b", "10.244.1.0/24", "10.99.0.22")  # moved
    store["c"] = node("c", "10.244.2.0/24", "10.99.0.13")
    ip.fail.add("10.244.2.0/24")
    await sync.sync()
    assert ip.calls[1:] == [
        ["route", "replace", "10.244.1.0/24", "via", "10.99.0.22", "proto", "88"],
        ["route", "replace", "10.244.2.0/24", "via", "10.99.0.13", "proto", "88"],
    ]
    assert sync.installed == {"10.244.1.0/24": "10.99.0.22"}  # the failed one is retried
    ip.fail.clear()
    del store["b"]
    await sync.sync()
    assert ip.calls[3:] == [
        ["route", "del", "10.244.1.0/24", "via", "10.99.0.22"],
        ["route", "replace", "10.244.2.0/24", "via", "10.99.0.13", "proto", "88"],
    ]
    assert sync.installed == {"10.244.2.0/24": "10.99.0.13"}
