"""Step: start the app containers that should run and do not.

Reads each app container's latest instance in the pod's sandbox and the pod's
restartPolicy. A running one is left alone; one that exited for good (the policy
allows no restart) is left exited; any other is started (a first start, a
restart after the crash-loop back-off, or at once when ctx.replaced says this sync
stopped it for a new definition). Never stops the sync; asks for a retry when a
container waits out a back-off or could not be created.
"""

from __future__ import annotations

from kubeling.kubelet.steps.base import NodeServices, PodContext, SyncResult, should_restart
from kubeling.kubelet.steps.start import start_container


class StartAppContainers:
    name = "app-containers"

    def __init__(self, node: NodeServices) -> None:
        self.node = node

    async def run(self, ctx: PodContext) -> SyncResult | None:
        pod, current = ctx.spec, ctx.current
        assert current is not None, "the sandbox step runs first"
        for spec in pod.spec.containers:
            replaced = ctx.replaced.get(spec.name)
            latest = replaced or current.latest(spec.name, ctx.sandbox_id)
            if replaced is None and latest is not None:
                if latest.running:
                    ctx.waiting.pop(spec.name, None)
                    continue
                if latest.exited and not should_restart(pod, latest):
                    ctx.waiting.pop(spec.name, None)
                    continue
            retry = await start_container(
                self.node, ctx, spec, latest, init=False, replacing=replaced is not None
            )
            ctx.retry(retry)
        return None
