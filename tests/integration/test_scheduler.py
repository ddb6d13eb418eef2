"""The scheduler inside an in-process master, against nodes created through the API
(no kubelets: a node is just its object with allocatable and Ready=True)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kubeling.client import Client
from kubeling.v1 import core_pb2
from tests.support.inprocess import in_process_master
from tests.support.waiting import eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")


def make_node(
    name: str,
    cpu: str = "2",
    labels: dict[str, str] | None = None,
    taints: list[tuple[str, str, str]] | None = None,
) -> core_pb2.Node:
    node = core_pb2.Node()
    node.metadata.name = name
    node.metadata.labels.update(labels or {})
    node.status.allocatable.update({"cpu": cpu, "memory": "4Gi", "pods": "110"})
    node.status.conditions.add(type="Ready", status="True")
    for key, value, effect in taints or []:
        node.spec.taints.add(key=key, value=value, effect=effect)
    return node


def make_pod(name: str, cpu: str = "100m", owner: str = "") -> core_pb2.Pod:
    pod = core_pb2.Pod()
    pod.metadata.name = name
    pod.metadata.namespace = "default"
    container = pod.spec.containers.add(name="main", image="busybox:1.36")
    container.resources.requests.update({"cpu": cpu, "memory": "64Mi"})
    if owner:
        pod.metadata.owner_references.add(
            api_version="apps/v1", kind="ReplicaSet", name=owner, uid=owner, controller=True
        )
    return pod


async def node_of(api: Client, name: str) -> str:
    node_name: str = ""

    async def bound() -> bool:
        nonlocal node_name
        node_name = (await api.pods.get(name, "default")).spec.node_name
        return bool(node_name)

    await eventually(bound)
    return node_name


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Client]:
    async with in_process_master(tmp_path, {"scheduler"}) as client:
        yield client


async def add_nodes(api: Client, *nodes: core_pb2.Node) -> None:
    for node in nodes:
        await api.nodes.create(node)
    # Let the scheduler's node watch catch up before pods arrive.
    await asyncio.sleep(0.3)


async def test_replicas_spread_over_nodes_and_events_are_recorded(api: Client) -> None:
    await add_nodes(api, *(make_node(f"node-{i}") for i in range(1, 4)))
    for i in range(6):
        await api.pods.create(make_pod(f"web-{i}", owner="rs-web"))
    placed = Counter([await node_of(api, f"web-{i}") for i in range(6)])
    assert placed == Counter({"node-1": 2, "node-2": 2, "node-3": 2})

    pod = await api.pods.get("web-0", "default")
    scheduled = next(c for c in pod.status.conditions if c.type == "PodScheduled")
    assert scheduled.status == "True"

    async def event_recorded() -> bool:
        events = (await api.events.list("default")).items
        return any(
            e.reason == "Scheduled"
            and e.involved_object.name == "web-0"
            and e.message == f"Successfully assigned default/web-0 to {pod.spec.node_name}"
            for e in events
        )

    await eventually(event_recorded)


async def test_node_selector_affinity_and_taints_are_respected(api: Client) -> None:
    await add_nodes(
        api,
        make_node("plain"),
        make_node("ssd", labels={"disk": "ssd", "zone": "a"}),
        make_node("gpu", labels={"zone": "b"}, taints=[("gpu", "true", "NoSchedule")]),
    )
    selected = make_pod("selected")
    selected.spec.node_selector["disk"] = "ssd"
    await api.pods.create(selected)

    affine = make_pod("affine")
    term = affine.spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution.node_selector_terms.add()  # noqa: E501
    term.match_expressions.add(key="zone", operator="In", values=["b"])
    affine.spec.tolerations.add(key="gpu", operator="Equal", value="true", effect="NoSchedule")
    await api.pods.create(affine)

    for i in range(4):  # without the toleration, never the tainted node
        await api.pods.create(make_pod(f"plain-{i}"))

    assert await node_of(api, "selected") == "ssd"
    assert await node_of(api, "affine") == "gpu"
    for i in range(4):
        assert await node_of(api, f"plain-{i}") in ("plain", "ssd")


async def test_unschedulable_pod_is_reported_then_placed_on_a_new_node(api: Client) -> None:
    await add_nodes(
        api,
        make_node("small-1", cpu="1"),
        make_node("small-2", cpu="1"),
        make_node("down", cpu="8", taints=[("node.kubernetes.io/unreachable", "", "NoExecute")]),
    )
    await api.pods.create(make_pod("hungry", cpu="2"))
    expected = (
        "0/3 nodes are available: 1 node(s) had untolerated taint "
        "{node.kubernetes.io/unreachable: }, 2 Insufficient cpu."
    )

    async def reported() -> bool:
        pod = await api.pods.get("hungry", "default")
        return any(
            c.type == "PodScheduled"
            and c.status == "False"
            and c.reason == "Unschedulable"
            and c.message == expected
            for c in pod.status.conditions
        )

    await eventually(reported)
    pod = await api.pods.get("hungry", "default")
    assert pod.status.phase == "Pending" and not pod.spec.node_name

    async def warned() -> bool:
        events = (await api.events.list("default")).items
        return any(
            e.reason == "FailedScheduling" and e.type == "Warning" and e.message == expected
            for e in events
        )

    await eventually(warned)

    await api.nodes.create(make_node("big", cpu="4"))
    assert await node_of(api, "hungry") == "big"
    pod = await api.pods.get("hungry", "default")
    scheduled = next(c for c in pod.status.conditions if c.type == "PodScheduled")
    assert scheduled.status == "True"


async def test_pods_for_other_schedulers_are_left_alone(api: Client) -> None:
    await add_nodes(api, make_node("n1"))
    other = make_pod("other")
    other.spec.scheduler_name = "my-scheduler"
    await api.pods.create(other)
    await api.pods.create(make_pod("mine"))
    # The barrier: "mine", queued after "other", is bound, so "other" was seen first.
    assert await node_of(api, "mine") == "n1"
    assert not (await api.pods.get("other", "default")).spec.node_name


async def test_binds_in_flight_never_overfill_a_node(api: Client) -> None:
    """A burst larger than the room: the scheduler binds many pods at once
    (parallelBinds), deciding each against the pods still being bound, so the
    nodes fill up exactly, no pod is bound twice, and the rest wait Unschedulable."""
    await add_nodes(api, make_node("fill-1", cpu="1"), make_node("fill-2", cpu="1"))
    names = [f"burst-{i:02d}" for i in range(30)]
    await asyncio.gather(*(api.pods.create(make_pod(name, cpu="100m")) for name in names))

    async def settled() -> bool:
        pods = (await api.pods.list("default")).items
        mine = [p for p in pods if p.metadata.name.startswith("burst-")]
        bound = [p for p in mine if p.spec.node_name]
        waiting = [
            p
            for p in mine
            if any(
                c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable"
                for c in p.status.conditions
            )
        ]
        return len(bound) == 20 and len(waiting) == 10

    await eventually(settled, within=30)
    pods = [p for p in (await api.pods.list("default")).items if p.metadata.name in names]
    per_node = Counter(p.spec.node_name for p in pods if p.spec.node_name)
    assert per_node == Counter({"fill-1": 10, "fill-2": 10})  # 10 x 100m = 1 CPU each
    # Every bind went through once: one Scheduled event per bound pod at most, and
    # none for a pod that is still pending.
    events = (await api.events.list("default")).items
    scheduled = Counter(e.involved_object.name for e in events if e.reason == "Scheduled")
    assert all(n == 1 for n in scheduled.values())
    assert set(scheduled) <= {p.metadata.name for p in pods if p.spec.node_name}
