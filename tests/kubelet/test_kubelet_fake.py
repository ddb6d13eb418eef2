"""The kubelet against a real master process and the fake CRI runtime.

Fast tests of the pod lifecycle logic; tests/kubelet/test_kubelet_containerd.py
runs the same kubelet against real containerd.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from kubeling.client import Client
from kubeling.kubelet.kubelet import Kubelet, KubeletConfig
from kubeling.v1 import core_pb2
from tests.support import hollow
from tests.support.hollow import HollowNode, hollow_node
from tests.support.processes import MasterProcess
from tests.support.waiting import eventually_passes

pytestmark = pytest.mark.asyncio(loop_scope="session")

NODE = "node-fake"
POD_CIDR = "10.244.7.0/24"


def kubelet_config(master: MasterProcess, tmp_path: Path) -> KubeletConfig:
    return hollow.kubelet_config(master.address, tmp_path, NODE, POD_CIDR)


@pytest.fixture
async def node(master: MasterProcess, api: Client, tmp_path: Path) -> AsyncIterator[HollowNode]:
    async with hollow_node(kubelet_config(master, tmp_path), api, POD_CIDR) as handle:
        yield handle


def make_pod(name: str, *containers: dict[str, Any], **spec: Any) -> core_pb2.Pod:
    pod = core_pb2.Pod()
    pod.metadata.name = name
    pod.metadata.namespace = "default"
    pod.spec.node_name = NODE
    pod.spec.termination_grace_period_seconds = 1
    for c in containers or ({"name": "main"},):
        container = pod.spec.containers.add(name=c["name"], image=c.get("image", "busybox"))
        for key, value in c.get("env", {}).items():
            container.env.add(name=key, value=value)
        if "readiness" in c:
            container.readiness_probe.CopyFrom(c["readiness"])
        if "liveness" in c:
            container.liveness_probe.CopyFrom(c["liveness"])
        if "policy" in c:
            container.image_pull_policy = c["policy"]
    for init in spec.pop("init", []):
        container = pod.spec.init_containers.add(name=init["name"], image="busybox")
        for key, value in init.get("env", {}).items():
            container.env.add(name=key, value=value)
    for key, value in spec.items():
        setattr(pod.spec, key, value)
    return pod


async def phase_of(api: Client, name: str, phase: str) -> core_pb2.Pod | None:
    pod = await api.pods.get(name, "default")
    return pod if pod.status.phase == phase else None


async def test_node_registers_with_lease_and_ready_condition(node: HollowNode) -> None:
    got = await node.api.nodes.get(NODE)
    assert got.spec.pod_cidr == "10.244.7.0/24"
    assert got.status.capacity["pods"] == "110"
    assert {a.type: a.address for a in got.status.addresses}["InternalIP"] == "127.0.0.1"
    assert got.status.node_info.container_runtime_version.startswith("kubeling-fake://")
    assert got.status.daemon_endpoints.kubelet_endpoint.port == node.kubelet.server.port
    ready = {c.type: c.status for c in got.status.conditions}
    assert ready == {
        "Ready": "True",
        "MemoryPressure": "False",
        "DiskPressure": "False",
        "PIDPressure": "False",
    }
    lease = await eventually_passes(lambda: node.api.leases.get(NODE, "kube-node-lease"))
    first = lease.spec.renew_time.ToNanoseconds()
    assert lease.spec.lease_duration_seconds == 40

    async def renewed() -> bool:
        again = await node.api.leases.get(NODE, "kube-node-lease")
        return again.spec.renew_time.ToNanoseconds() > first

    await eventually_passes(renewed, 5)


async def test_node_turns_not_ready_while_the_runtime_is_down(node: HollowNode) -> None:
    node.runtime.runtime_ready = False

    async def condition(status: str) -> bool:
        got = await node.api.nodes.get(NODE)
        ready = next(c for c in got.status.conditions if c.type == "Ready")
        return ready.status == status and (status == "True" or bool(ready.reason))

    await eventually_passes(lambda: condition("False"), 5)
    node.runtime.runtime_ready = True
    await eventually_passes(lambda: condition("True"), 5)


async def test_pod_runs_and_reports_status(node: HollowNode) -> None:
    await node.api.pods.create(make_pod("runs"))
    pod = await eventually_passes(lambda: phase_of(node.api, "runs", "Running"))
    status = pod.status
    assert status.pod_ip.startswith("10.244.7.")
    assert status.host_ip == "127.0.0.1"
    assert status.HasField("start_time")
    (container,) = status.container_statuses
    assert container.state.HasField("running")
    assert container.ready and container.restart_count == 0
    assert container.container_id.startswith("containerd://")
    conditions = {c.type: c.status for c in status.conditions}
    assert conditions == {
        "PodScheduled": "True",
        "Initialized": "True",
        "ContainersReady": "True",
        "Ready": "True",
    }
    assert node.runtime.sandbox_count == 1


async def test_exit_codes_and_restart_policies(node: HollowNode) -> None:
    once = {"name": "main", "env": {"FAKE_RUN_FOR": "0.1s", "FAKE_EXIT_CODE": "0"}}
    failing = {"name": "main", "env": {"FAKE_RUN_FOR": "0.1s", "FAKE_EXIT_CODE": "3"}}
    await node.api.pods.create(make_pod("never-ok", once, restart_policy="Never"))
    await node.api.pods.create(make_pod("never-fail", failing, restart_policy="Never"))
    await node.api.pods.create(make_pod("onfailure-ok", once, restart_policy="OnFailure"))
    ok = await eventually_passes(lambda: phase_of(node.api, "never-ok", "Succeeded"))
    assert ok.status.container_statuses[0].state.terminated.reason == "Completed"
    failed = await eventually_passes(lambda: phase_of(node.api, "never-fail", "Failed"))
    terminated = failed.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (3, "Error")
    await eventually_passes(lambda: phase_of(node.api, "onfailure-ok", "Succeeded"))


async def test_crashing_container_backs_off_and_restarts(node: HollowNode) -> None:
    crash = {"name": "main", "env": {"FAKE_RUN_FOR": "0.05s", "FAKE_EXIT_CODE": "1"}}
    await node.api.pods.create(make_pod("crash", crash))

    async def restarted_with_backoff() -> bool:
        pod = await node.api.pods.get("crash", "default")
        (status,) = pod.status.container_statuses
        return (
            status.restart_count >= 2
            and status.last_state.terminated.exit_code == 1
            and status.state.waiting.reason == "CrashLoopBackOff"
        )

    await eventually_passes(restarted_with_backoff, 15)
    assert (await node.api.pods.get("crash", "default")).status.phase == "Running"
    events = await node.api.events.list("default", field_selector="involvedObject.name=crash")
    assert "BackOff" in {e.reason for e in events.items}


async def test_init_containers_run_in_order_first(node: HollowNode) -> None:
    init = [
        {"name": "first", "env": {"FAKE_RUN_FOR": "0.1s"}},
        {"name": "second", "env": {"FAKE_RUN_FOR": "0.1s"}},
    ]
    await node.api.pods.create(make_pod("inits", init=init))
    pod = await eventually_passes(lambda: phase_of(node.api, "inits", "Running"))
    firsts = [s.state.terminated for s in pod.status.init_container_statuses]
    assert [t.exit_code for t in firsts] == [0, 0]
    assert firsts[0].finished_at.ToNanoseconds() <= firsts[1].started_at.ToNanoseconds()
    app_started = pod.status.container_statuses[0].state.running.started_at.ToNanoseconds()
    assert firsts[1].finished_at.ToNanoseconds() <= app_started


async def test_failing_init_container_with_never_fails_the_pod(node: HollowNode) -> None:
    init = [{"name": "bad", "env": {"FAKE_RUN_FOR": "0.05s", "FAKE_EXIT_CODE": "2"}}]
    await node.api.pods.create(make_pod("bad-init", init=init, restart_policy="Never"))
    pod = await eventually_passes(lambda: phase_of(node.api, "bad-init", "Failed"))
    assert pod.status.container_statuses[0].state.waiting.reason == "PodInitializing"


async def test_image_never_pulled_when_missing(node: HollowNode) -> None:
    spec = {"name": "main", "image": "example.com/missing:1", "policy": "Never"}
    await node.api.pods.create(make_pod("no-image", spec))

    async def reason() -> bool:
        pod = await node.api.pods.get("no-image", "default")
        return pod.status.container_statuses[0].state.waiting.reason == "ErrImageNeverPull"

    await eventually_passes(reason)


async def test_readiness_probe_drives_ready(node: HollowNode) -> None:
    failing = core_pb2.Probe(period_seconds=1, timeout_seconds=1, failure_threshold=1)
    failing.exec.command.extend(["false"])
    await node.api.pods.create(make_pod("not-ready", {"name": "main", "readiness": failing}))
    pod = await eventually_passes(lambda: phase_of(node.api, "not-ready", "Running"))
    await asyncio.sleep(1.5)
    pod = await node.api.pods.get("not-ready", "default")
    assert not pod.status.container_statuses[0].ready
    ready = {c.type: c.status for c in pod.status.conditions}["Ready"]
    assert ready == "False"

    passing = core_pb2.Probe(period_seconds=1, timeout_seconds=1)
    passing.exec.command.extend(["true"])
    await node.api.pods.create(make_pod("ready", {"name": "main", "readiness": passing}))

    async def is_ready() -> bool:
        got = await node.api.pods.get("ready", "default")
        return {c.type: c.status for c in got.status.conditions}["Ready"] == "True"

    await eventually_passes(is_ready)


async def test_liveness_failure_restarts_the_container(node: HollowNode) -> None:
    probe = core_pb2.Probe(period_seconds=1, timeout_seconds=1, failure_threshold=1)
    probe.exec.command.extend(["check"])
    spec = {"name": "main", "liveness": probe, "env": {"FAKE_EXEC_FAIL_AFTER": "0.5s"}}
    await node.api.pods.create(make_pod("unhealthy", spec))

    async def restarted() -> bool:
        pod = await node.api.pods.get("unhealthy", "default")
        return pod.status.container_statuses[0].restart_count >= 1

    await eventually_passes(restarted, 15)


async def test_deletion_stops_containers_then_removes_the_pod(node: HollowNode) -> None:
    await node.api.pods.create(make_pod("doomed"))
    await eventually_passes(lambda: phase_of(node.api, "doomed", "Running"))
    before = node.runtime.sandbox_count
    marked = await node.api.pods.delete("doomed", "default", grace_period_seconds=5)
    assert marked.metadata.HasField("deletion_timestamp")

    async def gone() -> bool:
        try:
            await node.api.pods.get("doomed", "default")
        except grpc.aio.AioRpcError as exc:
            return exc.code() == grpc.StatusCode.NOT_FOUND
        return False

    await eventually_passes(gone)
    assert node.runtime.sandbox_count == before - 1


async def test_restarted_kubelet_adopts_without_restarting(
    node: HollowNode, master: MasterProcess, tmp_path: Path
) -> None:
    await node.api.pods.create(make_pod("adopted"))
    pod = await eventually_passes(lambda: phase_of(node.api, "adopted", "Running"))
    container_id = pod.status.container_statuses[0].container_id
    await node.kubelet.stop()

    # A pod bound elsewhere leaves a sandbox behind: the new kubelet removes it.
    stray = make_pod("stray")
    stray.metadata.uid = "not-on-the-master"
    from kubeling.kubelet.containers import sandbox_config

    await node.runtime.run_pod_sandbox(sandbox_config(stray, tmp_path, 0))
    count = node.runtime.sandbox_count

    second = Kubelet(kubelet_config(master, tmp_path), node.runtime, node.api)
    await second.start()
    node.kubelet = second  # the fixture stops it
    await eventually_passes(lambda: asyncio.sleep(0, node.runtime.sandbox_count == count - 1))
    await asyncio.sleep(0.5)
    again = await node.api.pods.get("adopted", "default")
    assert again.status.container_statuses[0].container_id == container_id
    assert again.status.container_statuses[0].restart_count == 0
