"""Node IPAM controller against an in-process master: pod CIDRs for Nodes."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
from pathlib import Path

import grpc
import pytest

from kubeling.client import Client
from kubeling.controllers.manager import ControllerSettings
from kubeling.v1 import core_pb2
from tests.support import waiting
from tests.support.inprocess import in_process_master

pytestmark = pytest.mark.asyncio(loop_scope="session")

eventually = functools.partial(waiting.eventually, within=15.0, interval=0.1)


def cluster(
    tmp_path: Path,
    cluster_cidr: str = "10.244.0.0/16",
    mask_size: int = 24,
    controllers: frozenset[str] = frozenset({"nodeipam"}),
) -> contextlib.AbstractAsyncContextManager[Client]:
    settings = ControllerSettings(cluster_cidr=cluster_cidr, node_cidr_mask_size=mask_size)
    return in_process_master(tmp_path, controllers, settings, bookmark_interval=1.0)


async def add_node(api: Client, name: str, pod_cidr: str = "") -> core_pb2.Node:
    node = core_pb2.Node()
    node.metadata.name = name
    if pod_cidr:
        node.spec.pod_cidr = pod_cidr
        node.spec.pod_cidrs.append(pod_cidr)
    return await api.nodes.create(node)


async def cidr_of(api: Client, name: str) -> str:
    node = await api.nodes.get(name)
    if node.spec.pod_cidr:
        assert list(node.spec.pod_cidrs) == [node.spec.pod_cidr]
    return node.spec.pod_cidr


async def all_cidrs(api: Client, names: list[str]) -> dict[str, str] | None:
    got = {name: await cidr_of(api, name) for name in names}
    return got if all(got.values()) else None


# ---------------------------------------------------------------- the controller


async def test_nodes_get_distinct_subnets_of_the_cluster_cidr(tmp_path: Path) -> None:
    async with cluster(tmp_path) as api:
        # One node brings its own CIDR (a kubelet with --pod-cidr): it is kept and
        # never handed out again.
        await add_node(api, "own", "10.244.0.0/24")
        names = [f"node-{i}" for i in range(4)]
        for name in names:
            await add_node(api, name)
        got = await eventually(lambda: all_cidrs(api, names))
        assert len(set(got.values())) == len(names)
        cluster_cidr = ipaddress.ip_network("10.244.0.0/16")
        for cidr in got.values():
            network = ipaddress.ip_network(cidr)
            assert network.prefixlen == 24 and network.subnet_of(cluster_cidr)
        assert set(got.values()) == {f"10.244.{i}.0/24" for i in range(1, 5)}
        assert await cidr_of(api, "own") == "10.244.0.0/24"


async def test_assignments_survive_a_controller_restart(tmp_path: Path) -> None:
    names = ["web-b", "web-c", "web-x"]
    async with cluster(tmp_path, "10.200.0.0/16", 26) as api:
        for name in names:
            await add_node(api, name)
        before = await eventually(lambda: all_cidrs(api, names))
        assert set(before.values()) == {"10.200.0.0/26", "10.200.0.64/26", "10.200.0.128/26"}
    # Meanwhile, with no controller running: one node goes, two come (listed
    # before the others, so a controller that did not first mark what is taken
    # would hand them web-b's and web-c's CIDRs).
    async with cluster(tmp_path, controllers=frozenset()) as api:
        await api.nodes.delete("web-x")
        await add_node(api, "new-d")
        await add_node(api, "new-e")
    async with cluster(tmp_path, "10.200.0.0/16", 26) as api:
        after = await eventually(lambda: all_cidrs(api, ["web-b", "web-c", "new-d", "new-e"]))
        assert after["web-b"] == before["web-b"] and after["web-c"] == before["web-c"]
        assert {after["new-d"], after["new-e"]} == {before["web-x"], "10.200.0.192/26"}


async def test_exhaustion_warns_and_a_deleted_nodes_cidr_is_reused(tmp_path: Path) -> None:
    async with cluster(tmp_path, "10.9.0.0/23", 24) as api:  # room for two nodes
        await add_node(api, "n1")
        await add_node(api, "n2")
        first = await eventually(lambda: all_cidrs(api, ["n1", "n2"]))
        assert set(first.values()) == {"10.9.0.0/24", "10.9.1.0/24"}
        third = await add_node(api, "n3")

        async def warned() -> list[core_pb2.Event]:
            events = (await api.events.list("", field_selector="reason=CIDRNotAvailable")).items
            return [e for e in events if e.involved_object.uid == third.metadata.uid]

        events = await eventually(warned)
        assert events[0].type == "Warning"
        assert events[0].involved_object.kind == "Node"
        assert events[0].involved_object.name == "n3"
        assert await cidr_of(api, "n3") == ""

        await api.nodes.delete("n1")
        got = await eventually(lambda: all_cidrs(api, ["n3"]))
        assert got["n3"] == first["n1"]
        assert await cidr_of(api, "n2") == first["n2"]


async def test_a_conflicting_write_is_retried_by_rereading(tmp_path: Path) -> None:
    """Many nodes at once while their objects keep changing (labels written by
    someone else): every node still ends with one distinct CIDR."""
    async with cluster(tmp_path, "10.50.0.0/20", 24) as api:
        names = [f"busy-{i}" for i in range(12)]
        for name in names:
            await add_node(api, name)

        async def churn() -> None:
            for round_ in range(20):
                for name in names:
                    try:
                        node = await api.nodes.get(name)
                        node.metadata.labels["round"] = str(round_)
                        await api.nodes.update(node)
                    except grpc.aio.AioRpcError:
                        pass  # our own conflicts with the controller are fine

        await churn()
        got = await eventually(lambda: all_cidrs(api, names))
        assert len(set(got.values())) == len(names)


async def test_no_cluster_cidr_allocates_nothing(tmp_path: Path) -> None:
    async with cluster(tmp_path, "") as api:
        await add_node(api, "plain")
        await asyncio.sleep(1.5)
        assert await cidr_of(api, "plain") == ""
