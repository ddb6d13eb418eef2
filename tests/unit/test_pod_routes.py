"""The kubelet's routes to other nodes' pod CIDRs (`--sync-pod-routes`)."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pytest

from kubeling.kubelet.routes import (
    HostNetwork,
    PodRouteSync,
    read_host_network,
    refusal,
    wanted_routes,
)
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


def lan_host() -> HostNetwork:
    """A node at 10.99.0.11/24 on a LAN whose router is 10.99.0.1."""
    return HostNetwork(
        addresses=[ipaddress.ip_address("10.99.0.11"), ipaddress.ip_address("127.0.0.1")],
        connected=[ipaddress.ip_network("10.99.0.0/24"), ipaddress.ip_network("172.17.0.0/16")],
        gateways=[ipaddress.ip_address("10.99.0.1")],
    )


async def read_lan_host() -> HostNetwork:
    return lan_host()


async def test_routes_follow_nodes_joining_moving_and_leaving() -> None:
    ip = FakeIp()
    sync = PodRouteSync(Api(), "a", run=ip, host=read_lan_host)  # type: ignore[arg-type]
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


@pytest.mark.parametrize(
    ("cidr", "via", "reason"),
    [
        ("0.0.0.0/0", "10.99.0.12", "it is a default route"),
        ("10.0.0.0/8", "10.99.0.12", "the range holds 10.99.0.11, an address or gateway"),
        ("127.0.0.0/30", "10.99.0.12", "the range holds 127.0.0.1"),
        ("10.99.0.128/25", "10.99.0.12", "the range overlaps the connected network 10.99.0.0/24"),
        ("172.17.5.0/24", "10.99.0.12", "the range overlaps the connected network 172.17.0.0/16"),
        ("10.244.0.0/23", "10.99.0.12", "the range overlaps this node's pod CIDR 10.244.0.0/24"),
        ("10.244.1.0/24", "192.168.7.7", "the gateway 192.168.7.7 is not on a connected network"),
        ("10.244.1.0/24", "10.99.0.11", "the gateway 10.99.0.11 is this node's own address"),
        ("10.244.1.0/24", "fd00::1", "the gateway's address family differs"),
        ("10.244.1.5/24", "10.99.0.12", "not a route"),
        ("nonsense", "10.99.0.12", "not a route"),
    ],
)
def test_routes_that_would_harm_the_node_are_refused(cidr: str, via: str, reason: str) -> None:
    assert refusal(cidr, via, lan_host(), ["10.244.0.0/24"]).startswith(reason)


def test_a_peer_range_via_a_peer_on_the_lan_is_allowed() -> None:
    assert refusal("10.244.1.0/24", "10.99.0.12", lan_host(), ["10.244.0.0/24"]) == ""


async def test_a_hostile_node_cannot_take_the_default_route_or_shadow_the_node() -> None:
    ip = FakeIp()
    sync = PodRouteSync(Api(), "a", run=ip, host=read_lan_host)  # type: ignore[arg-type]
    store = sync.nodes.store
    store["a"] = node("a", "10.244.0.0/24", "10.99.0.11")
    store["b"] = node("b", "10.244.1.0/24", "10.99.0.12")
    store["evil"] = node("evil", "0.0.0.0/0", "10.99.0.66")
    store["shadow"] = node("shadow", "10.244.0.0/23", "10.99.0.67")
    await sync.sync()
    assert ip.calls == [["route", "replace", "10.244.1.0/24", "via", "10.99.0.12", "proto", "88"]]
    assert set(sync.refused) == {"0.0.0.0/0", "10.244.0.0/23"}
    assert sync.installed == {"10.244.1.0/24": "10.99.0.12"}


async def test_a_route_installed_earlier_that_is_now_refused_is_removed() -> None:
    ip = FakeIp()
    sync = PodRouteSync(Api(), "a", run=ip, host=read_lan_host)  # type: ignore[arg-type]
    sync.installed = {"0.0.0.0/0": "10.99.0.66"}
    sync.nodes.store["evil"] = node("evil", "0.0.0.0/0", "10.99.0.66")
    await sync.sync()
    assert ip.calls == [["route", "del", "0.0.0.0/0", "via", "10.99.0.66"]]
    assert sync.installed == {}


async def test_no_route_is_added_when_the_host_cannot_be_read() -> None:
    ip = FakeIp()

    async def unreadable() -> HostNetwork:
        raise OSError("ip: not found")

    sync = PodRouteSync(Api(), "a", run=ip, host=unreadable)  # type: ignore[arg-type]
    sync.nodes.store["b"] = node("b", "10.244.1.0/24", "10.99.0.12")
    await sync.sync()
    assert ip.calls == [] and sync.installed == {}


async def test_the_host_network_is_read_from_ip_json() -> None:
    answers = {
        "addr": [
            {"ifname": "lo", "addr_info": [{"local": "127.0.0.1", "prefixlen": 8}]},
            {"ifname": "eth0", "addr_info": [
                {"local": "10.99.0.11", "prefixlen": 24},
                {"local": "fd00::11", "prefixlen": 64},
            ]},
        ],
        "-4": [
            {"dst": "default", "gateway": "10.99.0.1", "dev": "eth0"},
            {"dst": "10.99.0.0/24", "dev": "eth0", "protocol": "kernel", "scope": "link"},
            {"dst": "10.244.1.0/24", "gateway": "10.99.0.12", "protocol": "88"},
            {"dst": "10.88.0.0/16", "dev": "cni0", "protocol": "kernel", "scope": "link"},
        ],
        "-6": [{"dst": "default", "gateway": "fd00::1", "dev": "eth0"}],
    }  # fmt: skip

    async def run(args: list[str]) -> tuple[int, str]:
        return 0, json.dumps(answers[args[1]])

    host = await read_host_network(run)
    assert [str(a) for a in host.addresses] == ["127.0.0.1", "10.99.0.11", "fd00::11"]
    assert [str(n) for n in host.connected] == [
        "127.0.0.0/8", "10.99.0.0/24", "fd00::/64", "10.99.0.0/24", "10.88.0.0/16"
    ]  # fmt: skip
    assert [str(g) for g in host.gateways] == ["10.99.0.1", "fd00::1"]  # not our own route's
