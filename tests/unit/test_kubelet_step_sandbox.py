"""The sandbox step (kubelet/steps/sandbox.py) on the fake CRI runtime."""

from __future__ import annotations

from pathlib import Path

import grpc

from kubeling.cri.errors import CRIError
from kubeling.kubelet.steps import SyncResult
from kubeling.kubelet.steps.app_containers import StartAppContainers
from kubeling.kubelet.steps.sandbox import EnsureSandbox
from tests.kubelet.step_support import context, events, fake, make_pod, node_services, snapshot


async def test_a_new_pod_gets_a_sandbox_holding_a_start_slot(tmp_path: Path) -> None:
    node = node_services(tmp_path)
    pod = make_pod()
    ctx = await context(node, pod)
    assert ctx.current is None
    assert await EnsureSandbox(node).run(ctx) is None
    assert fake(node).sandbox_count == 1
    assert ctx.sandbox_id and ctx.pod_ip.startswith("10.244.0.")
    assert ctx.sandbox is not None and ctx.sandbox.metadata.uid == pod.metadata.uid
    assert ctx.lease.held and node.slots.in_use == 1
    assert "sandbox" in node.milestones[pod.metadata.uid]


async def test_a_ready_sandbox_is_used_as_it_is(tmp_path: Path) -> None:
    node = node_services(tmp_path)
    pod = make_pod()
    first = await context(node, pod, sandbox=True)
    again = await context(node, pod)
    assert await EnsureSandbox(node).run(again) is None
    assert (again.sandbox_id, again.pod_ip) == (first.sandbox_id, first.pod_ip)
    assert fake(node).sandbox_count == 1
    assert not again.lease.held  # nothing was created


async def test_a_stale_sandbox_is_removed_with_its_containers_before_a_new_one(
    tmp_path: Path,
) -> None:
    node = node_services(tmp_path)
    pod = make_pod()
    ctx = await context(node, pod, sandbox=True)
    await StartAppContainers(node).run(ctx)
    await node.runtime.stop_pod_sandbox(ctx.sandbox_id)  # its network died
    again = await context(node, pod)
    assert await EnsureSandbox(node).run(again) is None
    assert again.sandbox_id != ctx.sandbox_id
    current = await snapshot(node, pod.metadata.uid)
    assert current is not None
    assert [(s.id, s.attempt, s.ready) for s in current.sandboxes] == [(again.sandbox_id, 1, True)]
    assert current.containers == []  # the old sandbox's container went with it


async def test_a_pod_with_nothing_left_to_run_gets_no_new_sandbox(tmp_path: Path) -> None:
    node = node_services(tmp_path)
    pod = make_pod(restart_policy="Never")
    ctx = await context(node, pod, sandbox=True)
    await StartAppContainers(node).run(ctx)
    current = await snapshot(node, pod.metadata.uid)
    assert current is not None
    fake(node).exit_container(current.containers[0].id, 0, "Completed")
    await node.runtime.stop_pod_sandbox(ctx.sandbox_id)
    again = await context(node, pod)
    assert await EnsureSandbox(node).run(again) == SyncResult()
    assert fake(node).sandbox_count == 1 and again.sandbox_id == ""


async def test_a_failed_sandbox_says_why_and_retries(tmp_path: Path) -> None:
    node = node_services(tmp_path)
    fake(node).inject_error("run_pod_sandbox", CRIError(grpc.StatusCode.UNKNOWN, "no network"))
    pod = make_pod("web", {"name": "a"}, {"name": "b"})
    ctx = await context(node, pod)
    assert await EnsureSandbox(node).run(ctx) == SyncResult(retry_after=2.0)
    assert {n: w.reason for n, w in ctx.waiting.items()} == {
        "a": "ContainerCreating",
        "b": "ContainerCreating",
    }
    assert "no network" in ctx.waiting["a"].message
    assert events(node).reasons() == ["FailedCreatePodSandBox"]
