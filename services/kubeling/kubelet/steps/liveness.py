"""Step: kill running app containers that failed their liveness (or startup) probe.

Reads the probe manager's verdict for each running app container (not one
replaced by this sync). Each failed one is stopped with the pod's grace period (no
start slot held; a Killing event). Stops the sync when it killed any, asking to be
called again at once: the next sync sees the exit and restarts the container
under the usual crash-loop back-off.
"""

from __future__ import annotations

from kubeling.kubelet.steps.base import NodeServices, PodContext, SyncResult


class KillUnhealthy:
    name = "liveness"

    def __init__(self, node: NodeServices) -> None:
        self.node = node

    async def run(self, ctx: PodContext) -> SyncResult | None:
        pod, current = ctx.spec, ctx.current
        assert current is not None, "the sandbox step runs first"
        killed = False
        for spec in pod.spec.containers:
            latest = current.latest(spec.name, ctx.sandbox_id)
            if latest is None or not latest.running or spec.name in ctx.replaced:
                continue
            if not self.node.probes.liveness_failed(ctx.uid, spec.name, latest.id):
                continue
            self.node.recorder.record(
                pod,
                "Normal",
                "Killing",
                f"Container {spec.name} failed liveness probe, will be restarted",
            )
            ctx.lease.release()
            await self.node.stop_container(latest.id, ctx.grace)
            killed = True
        return SyncResult(retry_after=0.0) if killed else None
