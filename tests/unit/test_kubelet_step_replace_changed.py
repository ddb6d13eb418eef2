"""The replace-changed step (kubelet/steps/replace_changed.py) on the fake CRI runtime."""

from __future__ import annotations

from pathlib import Path

from kubeling.kubelet.steps.app_containers import StartAppContainers
from kubeling.kubelet.steps.replace_changed import ReplaceChangedContainers
from tests.kubelet.step_support import context, events, make_pod, node_services, snapshot


async def test_a_changed_definition_replaces_the_container_at_once(tmp_path: Path) -> None:
    node = node_services(tmp_path)
    pod = make_pod("web", {"name": "a"}, {"name": "b"})
    await StartAppContainers(node).run(await context(node, pod, sandbox=True))
    before = await snapshot(node, pod.metadata.uid)
    assert before is not None
    old = {c.name: c.id for c in before.containers}

    pod.spec.containers[0].image = "docker.io/library/busybox:latest"  # a new image for "a"
    ctx = await context(node, pod, sandbox=True)
    assert await ReplaceChangedContainers(node).run(ctx) is None
    assert list(ctx.replaced) == ["a"]
    assert not ctx.lease.held
    assert events(node).items[-1][1:] == (
        "Killing",
        "Container a definition changed, will be restarted",
    )
    await StartAppContainers(node).run(ctx)
    assert ctx.retry_after is None  # no crash-loop back-off for a replacement

    after = await snapshot(node, pod.metadata.uid)
    assert after is not None
    new_a = after.latest("a")
    assert new_a is not None and new_a.running and new_a.id != old["a"]
    assert new_a.attempt == 1  # a new instance: its own name in the runtime
    b = after.latest("b")
    assert b is not None and b.id == old["b"] and b.running  # unchanged: left alone


async def test_unchanged_containers_are_not_touched(tmp_path: Path) -> None:
    node = node_services(tmp_path)
    pod = make_pod()
    await StartAppContainers(node).run(await context(node, pod, sandbox=True))
    ctx = await context(node, pod, sandbox=True)
    assert await ReplaceChangedContainers(node).run(ctx) is None
    assert ctx.replaced == {}
