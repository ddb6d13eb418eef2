"""The liveness step (kubelet/steps/liveness.py) on the fake CRI runtime."""

from __future__ import annotations

from pathlib import Path

from kubeling.kubelet.steps import SyncResult
from kubeling.kubelet.steps.app_containers import StartAppContainers
from kubeling.kubelet.steps.liveness import KillUnhealthy
from tests.kubelet.step_support import context, events, make_pod, node_services, probes, snapshot


async def test_a_container_failing_liveness_is_killed_and_the_sync_goes_again(
    tmp_path: Path,
) -> None:
    node = node_services(tmp_path)
    pod = make_pod("web", {"name": "sick"}, {"name": "well"})
    await StartAppContainers(node).run(await context(node, pod, sandbox=True))
    probes(node).failed.add((pod.metadata.uid, "sick"))
    ctx = await context(node, pod, sandbox=True)
    assert await KillUnhealthy(node).run(ctx) == SyncResult(retry_after=0.0)
    current = await snapshot(node, pod.metadata.uid)
    assert current is not None
    states = {c.name: c.running for c in current.containers}
    assert states == {"sick": False, "well": True}
    assert events(node).items[-1][1] == "Killing"


async def test_healthy_containers_let_the_sync_go_on(tmp_path: Path) -> None:
    node = node_services(tmp_path)
    pod = make_pod()
    await StartAppContainers(node).run(await context(node, pod, sandbox=True))
    ctx = await context(node, pod, sandbox=True)
    assert await KillUnhealthy(node).run(ctx) is None
    current = await snapshot(node, pod.metadata.uid)
    assert current is not None and current.containers[0].running
