"""The stop steps (kubelet/steps/stop.py) and forgetting a pod (steps/forget.py) on
the fake CRI runtime."""

from __future__ import annotations

import time
from pathlib import Path

from kubeling.kubelet.status import Waiting
from kubeling.kubelet.steps import PodContext, SyncResult, run_steps
from kubeling.kubelet.steps.app_containers import StartAppContainers
from kubeling.kubelet.steps.forget import ForgetPod
from kubeling.kubelet.steps.stop import RemoveSandboxes, StopContainers, StopSandboxes
from tests.kubelet.step_support import context, events, fake, make_pod, node_services, snapshot


async def test_a_finished_pod_is_stopped_and_its_sandbox_kept(tmp_path: Path) -> None:
    node = node_services(tmp_path)
    pod = make_pod("web", {"name": "a"}, {"name": "b"})
    await StartAppContainers(node).run(await context(node, pod, sandbox=True))
    ctx = await context(node, pod)
    assert await run_steps([StopContainers(node), StopSandboxes(node)], ctx) == SyncResult()
    current = await snapshot(node, pod.metadata.uid)
    assert current is not None
    assert [c.running for c in current.containers] == [False, False]
    assert [s.ready for s in current.sandboxes] == [False]  # kept, for the logs
    assert events(node).reasons()[-2:] == ["Killing", "Killing"]


async def test_containers_get_the_grace_period_then_are_killed(tmp_path: Path) -> None:
    node = node_services(tmp_path)
    pod = make_pod("web", {"name": "main", "env": {"FAKE_IGNORE_SIGTERM": "1"}})
    await StartAppContainers(node).run(await context(node, pod, sandbox=True))
    ctx = await context(node, pod)
    ctx.grace = 1
    started = time.monotonic()
    await StopContainers(node).run(ctx)
    assert 0.9 < time.monotonic() - started < 3
    current = await snapshot(node, pod.metadata.uid)
    assert current is not None and current.containers[0].exit_code == 137


async def test_a_deleted_pod_leaves_nothing_behind(tmp_path: Path) -> None:
    node = node_services(tmp_path)
    pod, other = make_pod("gone"), make_pod("stays")
    uid = pod.metadata.uid
    for each in (pod, other):
        await StartAppContainers(node).run(await context(node, each, sandbox=True))
        node.backoff.step(f"{each.metadata.uid}/main")
        node.image_backoff.step(f"{each.metadata.uid}/main/image")
        node.mark(each.metadata.uid, "first_sync")
    node.waiting[uid]["main"] = Waiting("CrashLoopBackOff")
    current = await snapshot(node, uid)
    # The API no longer has the pod (force-deleted): no pod, grace 0.
    ctx = PodContext(uid, None, current, 0, node.slots.lease())
    kill = [StopContainers(node), RemoveSandboxes(node), ForgetPod(node)]
    assert await run_steps(kill, ctx) == SyncResult(done=True)
    assert await snapshot(node, uid) is None
    assert fake(node).sandbox_count == 1
    assert uid not in node.waiting and uid not in node.milestones
    assert f"{uid}/main" not in node.backoff and f"{uid}/main/image" not in node.image_backoff
    other_uid = other.metadata.uid
    assert f"{other_uid}/main" in node.backoff and other_uid in node.milestones
