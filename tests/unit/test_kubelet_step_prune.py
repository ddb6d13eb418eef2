"""The prune step (kubelet/steps/prune.py) on the fake CRI runtime."""

from __future__ import annotations

import asyncio
from pathlib import Path

from kubeling.kubelet.steps.app_containers import StartAppContainers
from kubeling.kubelet.steps.prune import PruneOldContainers
from tests.kubelet.step_support import context, fake, make_pod, node_services, snapshot


async def test_the_two_newest_instances_of_a_container_are_kept(tmp_path: Path) -> None:
    node = node_services(tmp_path)
    node.backoff.initial = node.backoff.maximum = 0.001  # restart at once
    pod = make_pod()
    for _ in range(4):
        await StartAppContainers(node).run(await context(node, pod, sandbox=True))
        current = await snapshot(node, pod.metadata.uid)
        assert current is not None
        latest = current.latest("main")
        assert latest is not None and latest.running
        fake(node).exit_container(latest.id, 1)
        await asyncio.sleep(0.01)  # past the 1 ms crash-loop back-off
    current = await snapshot(node, pod.metadata.uid)
    assert current is not None
    assert [c.attempt for c in current.instances("main")] == [3, 2, 1, 0]
    ctx = await context(node, pod, sandbox=True)
    assert await PruneOldContainers(node).run(ctx) is None
    current = await snapshot(node, pod.metadata.uid)
    assert current is not None
    assert [c.attempt for c in current.instances("main")] == [3, 2]
