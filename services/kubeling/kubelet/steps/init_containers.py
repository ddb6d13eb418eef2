"""Step: init containers, one at a time, in order, each to successful completion.

Reads each init container's latest instance in the pod's sandbox. One that
succeeded is passed over. Stops the sync at the first that has not: while it
runs (its exit wakes the worker), when it failed and restartPolicy is Never (the
pod has failed), or after starting it (or waiting out its back-off: retry then).
"""

from __future__ import annotations

from kubeling.kubelet.steps.base import NodeServices, PodContext, SyncResult
from kubeling.kubelet.steps.start import start_container


class RunInitContainers:
    name = "init-containers"

    def __init__(self, node: NodeServices) -> None:
        self.node = node

    async def run(self, ctx: PodContext) -> SyncResult | None:
        pod, current = ctx.spec, ctx.current
        assert current is not None, "the sandbox step runs first"
        for spec in pod.spec.init_containers:
            latest = current.latest(spec.name, ctx.sandbox_id)
            if latest is not None and latest.exited and latest.exit_code == 0:
                ctx.waiting.pop(spec.name, None)
                continue
            if latest is not None and latest.running:
                return SyncResult()
            if latest is not None and latest.exited and pod.spec.restart_policy == "Never":
                return SyncResult()  # the pod has failed
            retry = await start_container(self.node, ctx, spec, latest, init=True)
            return SyncResult(retry_after=retry)
        return None
