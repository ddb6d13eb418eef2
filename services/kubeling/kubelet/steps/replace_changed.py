"""Step: replace running app containers whose definition changed (e.g. a new image).

Reads each app container's running instance and the hash of the spec it was made
from (an annotation). A running container whose hash differs from its spec's is
stopped with the pod's grace period (no start slot held; a Killing event) and
put in ctx.replaced, so the app container step starts the new definition at once,
without a crash-loop back-off. Never stops the sync.
"""

from __future__ import annotations

from kubeling.kubelet.containers import container_hash
from kubeling.kubelet.steps.base import NodeServices, PodContext, SyncResult


class ReplaceChangedContainers:
    name = "replace-changed"

    def __init__(self, node: NodeServices) -> None:
        self.node = node

    async def run(self, ctx: PodContext) -> SyncResult | None:
        pod, current = ctx.spec, ctx.current
        assert current is not None, "the sandbox step runs first"
        for spec in pod.spec.containers:
            latest = current.latest(spec.name, ctx.sandbox_id)
            if latest is None or not latest.running:
                continue
            if not latest.hash or latest.hash == container_hash(spec):
                continue
            self.node.recorder.record(
                pod,
                "Normal",
                "Killing",
                f"Container {spec.name} definition changed, will be restarted",
            )
            ctx.lease.release()
            await self.node.stop_container(latest.id, ctx.grace)
            ctx.replaced[spec.name] = latest
        return None
