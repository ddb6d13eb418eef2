"""The app containers step (kubelet/steps/app_containers.py) and the container start
it shares with init containers (steps/start.py, steps/images.py), on the fake CRI
runtime."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from kubeling.cri.api import pb
from kubeling.cri.fake import FakeRuntime
from kubeling.kubelet.steps import run_steps
from kubeling.kubelet.steps.app_containers import StartAppContainers
from kubeling.kubelet.steps.sandbox import EnsureSandbox
from tests.kubelet.step_support import (
    BUSYBOX,
    context,
    events,
    fake,
    make_pod,
    node_services,
    snapshot,
)


async def test_missing_containers_start_and_running_ones_are_left_alone(tmp_path: Path) -> None:
    node = node_services(tmp_path)
    pod = make_pod("web", {"name": "a"}, {"name": "b"})
    ctx = await context(node, pod, sandbox=True)
    assert await StartAppContainers(node).run(ctx) is None
    current = await snapshot(node, pod.metadata.uid)
    assert current is not None
    ids = {c.name: c.id for c in current.containers if c.running}
    assert sorted(ids) == ["a", "b"]
    assert events(node).reasons() == ["Created", "Started", "Created", "Started"]

    again = await context(node, pod, sandbox=True)
    assert await StartAppContainers(node).run(again) is None and again.retry_after is None
    current = await snapshot(node, pod.metadata.uid)
    assert current is not None and {c.name: c.id for c in current.containers} == ids


async def test_restart_policy_decides_whether_an_exited_container_starts_again(
    tmp_path: Path,
) -> None:
    node = node_services(tmp_path)
    never = make_pod("never", restart_policy="Never")
    on_failure = make_pod("on-failure", restart_policy="OnFailure")
    for pod, code in ((never, 1), (on_failure, 0)):
        ctx = await context(node, pod, sandbox=True)
        await StartAppContainers(node).run(ctx)
        current = await snapshot(node, pod.metadata.uid)
        assert current is not None
        fake(node).exit_container(current.containers[0].id, code)
        again = await context(node, pod, sandbox=True)
        await StartAppContainers(node).run(again)
        current = await snapshot(node, pod.metadata.uid)
        assert current is not None and len(current.containers) == 1
        assert "main" not in again.waiting


async def test_a_crash_loop_backs_off_and_says_so(tmp_path: Path) -> None:
    node = node_services(tmp_path)
    pod = make_pod()
    step = StartAppContainers(node)
    ctx = await context(node, pod, sandbox=True)
    await step.run(ctx)
    for attempt in (1, 2):
        current = await snapshot(node, pod.metadata.uid)
        assert current is not None
        latest = current.latest("main")
        assert latest is not None and latest.running and latest.attempt == attempt - 1
        fake(node).exit_container(latest.id, 1)
        ctx = await context(node, pod, sandbox=True)
        await step.run(ctx)
        if attempt == 1:
            assert ctx.retry_after is None  # the first restart is at once
    # The second crash waits out the back-off (0.5 s here).
    assert ctx.retry_after is not None and 0 < ctx.retry_after <= 0.5
    assert ctx.waiting["main"].reason == "CrashLoopBackOff"
    assert "BackOff" in events(node).reasons()
    await asyncio.sleep(ctx.retry_after)
    ctx = await context(node, pod, sandbox=True)
    await step.run(ctx)
    current = await snapshot(node, pod.metadata.uid)
    assert current is not None
    latest = current.latest("main")
    assert latest is not None and latest.running and latest.attempt == 2
    assert "main" not in ctx.waiting


async def test_a_start_error_is_shown_and_backs_off(tmp_path: Path) -> None:
    node = node_services(tmp_path)
    pod = make_pod("web", {"name": "main", "env": {"FAKE_START_ERROR": "exec: not found"}})
    ctx = await context(node, pod, sandbox=True)
    await StartAppContainers(node).run(ctx)
    assert ctx.waiting["main"].reason == "RunContainerError"
    assert "exec: not found" in ctx.waiting["main"].message
    assert ctx.retry_after == 0.5


async def test_images_pull_by_policy_and_never_pull_is_reported(tmp_path: Path) -> None:
    node = node_services(tmp_path)
    pod = make_pod(
        "web",
        {"name": "pulled", "image": "example.com/app:1"},
        {"name": "never", "image": "example.com/other:1", "policy": "Never"},
    )
    ctx = await context(node, pod, sandbox=True)
    await StartAppContainers(node).run(ctx)
    assert await node.runtime.image_status("example.com/app:1") is not None
    assert ctx.waiting["never"].reason == "ErrImageNeverPull"
    assert ctx.retry_after is not None and 0.4 < ctx.retry_after <= 0.5  # the image back-off
    assert {"Pulling", "Pulled", "ErrImageNeverPull"} <= set(events(node).reasons())
    again = await context(node, pod, sandbox=True)
    await StartAppContainers(node).run(again)
    assert again.waiting["never"].reason == "ErrImageNeverPull"  # kept during the back-off


async def test_a_pull_holds_no_start_slot(tmp_path: Path) -> None:
    """With one start slot, a pod whose image pull takes long does not hold up
    another pod's start."""
    runtime = GatedPulls(images=[BUSYBOX])
    node = node_services(tmp_path, runtime, parallel_starts=1)
    slow = make_pod("slow", {"name": "main", "image": "example.com/big:1"})
    quick = make_pod("quick")
    steps = [EnsureSandbox(node), StartAppContainers(node)]
    slow_sync = asyncio.create_task(run_steps(steps, await context(node, slow)))
    await asyncio.wait_for(runtime.pulling.wait(), 5)
    assert node.slots.in_use == 0  # the slow pod made its sandbox, then gave its slot back
    await asyncio.wait_for(run_steps(steps, await context(node, quick)), 5)
    current = await snapshot(node, quick.metadata.uid)
    assert current is not None and current.containers[0].running
    assert not slow_sync.done()  # still pulling
    runtime.release.set()
    await slow_sync
    current = await snapshot(node, slow.metadata.uid)
    assert current is not None and current.containers[0].running
    assert node.slots.in_use == 0


class GatedPulls(FakeRuntime):
    """Image pulls that wait until the test lets them finish."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pulling = asyncio.Event()
        self.release = asyncio.Event()

    async def pull_image(
        self, image: str, sandbox_config: pb.PodSandboxConfig | None = None
    ) -> str:
        self.pulling.set()
        await self.release.wait()
        return await super().pull_image(image, sandbox_config)
