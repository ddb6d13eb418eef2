"""The kubelet's pod life cycle edges and its supervised loops, on the fake CRI
runtime against an in-process master: a force delete cuts a graceful stop short,
force-deleted pods leave no per-pod state, and a crash injected into each of the
kubelet's loops is restarted, counted, and the kubelet goes on working."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY

from kubeling.client import Client
from kubeling.kubelet.hollow import HollowCluster, HollowSettings
from kubeling.kubelet.workers import PodState
from kubeling.node.cni import CONFLIST_NAME
from kubeling.v1 import core_pb2
from tests.support import hollow
from tests.support.hollow import HollowNode, hollow_node
from tests.support.inprocess import in_process_master
from tests.support.waiting import eventually, eventually_passes

pytestmark = pytest.mark.asyncio(loop_scope="session")

NODE = "node-lifecycle"
POD_CIDR = "10.244.8.0/24"


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Client]:
    async with in_process_master(tmp_path / "master", bookmark_interval=1) as client:
        yield client


@pytest.fixture
async def node(api: Client, tmp_path: Path) -> AsyncIterator[HollowNode]:
    config = hollow.kubelet_config(api.target, tmp_path, NODE, POD_CIDR)
    async with hollow_node(config, api, POD_CIDR) as handle:
        yield handle


def make_pod(name: str, grace: int = 1, **container: Any) -> core_pb2.Pod:
    pod = core_pb2.Pod()
    pod.metadata.name = name
    pod.metadata.namespace = "default"
    pod.spec.node_name = NODE
    pod.spec.termination_grace_period_seconds = grace
    main = pod.spec.containers.add(name="main", image=container.get("image", "busybox"))
    main.image_pull_policy = container.get("policy", "")
    for key, value in container.get("env", {}).items():
        main.env.add(name=key, value=value)
    if "readiness" in container:
        main.readiness_probe.CopyFrom(container["readiness"])
    return pod


async def running(api: Client, name: str) -> core_pb2.Pod | None:
    pod = await api.pods.get(name, "default")
    statuses = pod.status.container_statuses
    return pod if statuses and all(s.state.HasField("running") for s in statuses) else None


async def gone(api: Client, name: str) -> bool:
    try:
        await api.pods.get(name, "default")
    except grpc.aio.AioRpcError as exc:
        return exc.code() == grpc.StatusCode.NOT_FOUND
    return False


def leftovers(node: HollowNode) -> dict[str, int]:
    """Per-pod state the kubelet still holds, and what the runtime still runs."""
    state = {k: v for k, v in node.kubelet.per_pod_state().items() if v}
    if node.runtime.sandbox_count:
        state["sandboxes"] = node.runtime.sandbox_count
    if node.runtime.container_count:
        state["containers"] = node.runtime.container_count
    return state


def no_leftovers(node: HollowNode) -> dict[str, Any]:
    """`eventually` arguments: wait until nothing is left, else say what is."""

    async def describe() -> str:
        return f"; left: {leftovers(node)}"

    return {"describe": describe}


async def test_a_force_delete_cuts_a_graceful_stop_short(node: HollowNode) -> None:
    api = node.api
    stubborn = make_pod("stubborn", grace=30, env={"FAKE_IGNORE_SIGTERM": "1"})
    uid = (await api.pods.create(stubborn)).metadata.uid
    await eventually_passes(lambda: running(api, "stubborn"))
    await api.pods.delete("stubborn", "default", grace_period_seconds=30)

    async def stopping() -> bool:
        events = await api.events.list("default", field_selector="involvedObject.name=stubborn")
        return "Killing" in {e.reason for e in events.items}

    await eventually_passes(stopping)
    assert node.kubelet.workers.state(uid) is PodState.TERMINATING
    assert node.runtime.container_count == 1  # SIGTERM ignored: it runs on

    started = time.monotonic()
    await api.pods.delete("stubborn", "default", grace_period_seconds=0)
    await eventually(lambda: not leftovers(node), 5, **no_leftovers(node))
    assert time.monotonic() - started < 2.0
    assert await gone(api, "stubborn")


async def test_force_deleted_pods_leave_no_per_pod_state(node: HollowNode) -> None:
    api = node.api
    probe = core_pb2.Probe(period_seconds=1, timeout_seconds=1)
    probe.exec.command.extend(["true"])
    crash = {"FAKE_RUN_FOR": "0.05s", "FAKE_EXIT_CODE": "1"}
    pods = [
        make_pod("crashing", env=crash),
        make_pod("no-image", image="example.com/missing:1", policy="Never"),
        make_pod("probed", readiness=probe),
        make_pod("plain"),
    ]
    uids = {p.metadata.name: (await api.pods.create(p)).metadata.uid for p in pods}

    async def all_busy() -> bool:
        got = {n: await api.pods.get(n, "default") for n in uids}
        crashing = got["crashing"].status.container_statuses
        no_image = got["no-image"].status.container_statuses
        return (
            bool(crashing)
            and crashing[0].restart_count >= 1
            and bool(no_image)
            and no_image[0].state.waiting.reason == "ErrImageNeverPull"
            and bool(got["probed"].status.container_statuses)
            and got["probed"].status.container_statuses[0].ready
            and bool(await running(api, "plain"))
        )

    await eventually_passes(all_busy, 10)
    before = node.kubelet.per_pod_state()
    assert before["desired"] == before["posted"] == 4
    assert before["backoff"] and before["image_backoff"] and before["waiting"]
    assert node.kubelet.probes.readiness(uids["probed"], "main") is True

    for name in uids:
        await api.pods.delete(name, "default", grace_period_seconds=0)
    await eventually(lambda: not leftovers(node), 5, **no_leftovers(node))
    assert node.kubelet.probes.readiness(uids["probed"], "main") is None


def crashes(loop: str) -> float:
    return REGISTRY.get_sample_value("kubeling_loop_crashes_total", {"loop": loop}) or 0.0


async def crash(node: HollowNode, loop: str) -> None:
    """Crash the kubelet's loop and wait until it runs again."""
    supervisor = node.kubelet.supervisor
    before = crashes(loop)

    def inject() -> bool:
        supervisor.inject_crash(loop)  # LookupError until the loop has started
        return True

    await eventually(inject, 5, retry_on=(LookupError,))
    await eventually(lambda: supervisor.restarts(loop) == 1, 5)
    assert crashes(loop) == before + 1
    assert not supervisor.failed.is_set()


@pytest.mark.parametrize("loop", ["pod-watch", "pod-workers", "relist"])
async def test_pods_start_restart_and_post_status_after_a_loop_crash(
    node: HollowNode, loop: str
) -> None:
    api = node.api
    starts = REGISTRY.get_sample_value("kubelet_pod_start_duration_seconds_count") or 0.0
    await api.pods.create(make_pod("before"))
    await eventually_passes(lambda: running(api, "before"))
    await crash(node, loop)

    await api.pods.create(make_pod("after"))
    await eventually_passes(lambda: running(api, "after"))
    assert REGISTRY.get_sample_value("kubelet_pod_start_duration_seconds_count") == starts + 2
    # A container that exits is seen by the relist and restarted, with its status posted.
    pod = await api.pods.get("before", "default")
    container_id = pod.status.container_statuses[0].container_id.removeprefix("containerd://")
    node.runtime.exit_container(container_id, 1)

    async def restarted() -> bool:
        got = await api.pods.get("before", "default")
        return got.status.container_statuses[0].restart_count == 1

    await eventually_passes(restarted)
    # And a deletion still goes through the kubelet (graceful stop, then removal).
    await api.pods.delete("after", "default")
    await eventually_passes(lambda: gone(api, "after"))


async def test_node_status_and_lease_go_on_after_their_loops_crash(node: HollowNode) -> None:
    api = node.api
    await crash(node, "node-status")
    await crash(node, "lease")
    node.runtime.runtime_ready = False

    async def ready_is(status: str) -> bool:
        got = await api.nodes.get(NODE)
        return next(c for c in got.status.conditions if c.type == "Ready").status == status

    await eventually_passes(lambda: ready_is("False"), 5)
    node.runtime.runtime_ready = True
    await eventually_passes(lambda: ready_is("True"), 5)
    lease = await api.leases.get(NODE, "kube-node-lease")
    first = lease.spec.renew_time.ToNanoseconds()

    async def renewed() -> bool:
        again = await api.leases.get(NODE, "kube-node-lease")
        return again.spec.renew_time.ToNanoseconds() > first

    await eventually_passes(renewed, 5)


async def test_the_pod_cidr_is_followed_after_its_loop_crashes(api: Client, tmp_path: Path) -> None:
    name, cidr = "node-cidr", "10.244.9.0/24"
    config = hollow.kubelet_config(api.target, tmp_path, name, cni_conf_dir=tmp_path / "net")
    async with hollow_node(config, api, cidr) as handle:
        await crash(handle, "pod-cidr")

        async def assign() -> bool:  # as node IPAM does; a status post may conflict
            node = await api.nodes.get(name)
            node.spec.pod_cidr = cidr
            node.spec.pod_cidrs.append(cidr)
            await api.nodes.update(node)
            return True

        await eventually_passes(assign)
        await eventually(lambda: (tmp_path / "net" / CONFLIST_NAME).exists(), 5)
        pod = make_pod("networked")
        pod.spec.node_name = name
        await api.pods.create(pod)
        got = await eventually_passes(lambda: running(api, "networked"))
        assert got.status.pod_ip.startswith("10.244.9.")


async def test_a_hollow_node_whose_loop_gives_up_fails_the_cluster(
    api: Client, tmp_path: Path
) -> None:
    settings = HollowSettings(prefix="hollow-lc", relist_period=0.1, log_dir=tmp_path / "logs")
    cluster = HollowCluster(api.target, 2, settings)
    await cluster.start()
    try:
        supervisor = cluster.kubelets[1].supervisor
        supervisor.max_crashes = 1  # the next crash is one too many

        def inject() -> bool:
            supervisor.inject_crash("relist")
            return True

        await eventually(inject, 5, retry_on=(LookupError,))
        await asyncio.wait_for(cluster.supervisor.failed.wait(), 5)
        assert cluster.supervisor.failure is not None
        assert cluster.supervisor.failure.loop == "relist"
        assert not cluster.kubelets[0].supervisor.failed.is_set()
    finally:
        await cluster.stop()
