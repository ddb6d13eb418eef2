"""The init containers step (kubelet/steps/init_containers.py) on the fake CRI runtime."""

from __future__ import annotations

from pathlib import Path

from kubeling.kubelet.steps import SyncResult
from kubeling.kubelet.steps.init_containers import RunInitContainers
from tests.kubelet.step_support import context, fake, make_pod, node_services, snapshot

INITS = ({"name": "first"}, {"name": "second"})


async def running_names(node: object, uid: str) -> list[str]:
    current = await snapshot(node, uid)  # type: ignore[arg-type]
    return sorted(c.name for c in current.containers if c.running) if current else []


async def test_init_containers_start_one_at_a_time_in_order(tmp_path: Path) -> None:
    node = node_services(tmp_path)
    pod = make_pod(init=INITS)
    uid = pod.metadata.uid
    step = RunInitContainers(node)
    ctx = await context(node, pod, sandbox=True)
    assert await step.run(ctx) == SyncResult()  # started the first: wait for its exit
    assert await running_names(node, uid) == ["first"]

    ctx = await context(node, pod, sandbox=True)
    assert await step.run(ctx) == SyncResult()  # the first still runs: nothing to do
    assert await running_names(node, uid) == ["first"]

    current = await snapshot(node, uid)
    assert current is not None
    fake(node).exit_container(current.containers[0].id, 0, "Completed")
    ctx = await context(node, pod, sandbox=True)
    assert await step.run(ctx) == SyncResult()
    assert await running_names(node, uid) == ["second"]

    current = await snapshot(node, uid)
    assert current is not None
    second = next(c for c in current.containers if c.name == "second")
    fake(node).exit_container(second.id, 0, "Completed")
    ctx = await context(node, pod, sandbox=True)
    assert await step.run(ctx) is None  # all done: the app containers come next


async def test_a_failed_init_container_with_never_fails_the_pod(tmp_path: Path) -> None:
    node = node_services(tmp_path)
    pod = make_pod(init=INITS, restart_policy="Never")
    ctx = await context(node, pod, sandbox=True)
    await RunInitContainers(node).run(ctx)
    current = await snapshot(node, pod.metadata.uid)
    assert current is not None
    fake(node).exit_container(current.containers[0].id, 2)
    ctx = await context(node, pod, sandbox=True)
    assert await RunInitContainers(node).run(ctx) == SyncResult()
    current = await snapshot(node, pod.metadata.uid)
    assert current is not None and len(current.containers) == 1  # no restart, no second


async def test_a_failed_init_container_restarts_after_its_back_off(tmp_path: Path) -> None:
    node = node_services(tmp_path)
    pod = make_pod(init=INITS, restart_policy="Always")
    ctx = await context(node, pod, sandbox=True)
    await RunInitContainers(node).run(ctx)
    current = await snapshot(node, pod.metadata.uid)
    assert current is not None
    fake(node).exit_container(current.containers[0].id, 1)
    ctx = await context(node, pod, sandbox=True)
    result = await RunInitContainers(node).run(ctx)
    assert result is not None and result.retry_after is None  # the first restart is at once
    assert await running_names(node, pod.metadata.uid) == ["first"]
