"""Step: remove old container instances.

Reads every container instance of the pod in the runtime snapshot. Keeps the two
newest instances of each container in the current sandbox (the current one and
the one before it, for `logs --previous`) and removes older exited ones and
stopped ones of earlier sandboxes. A failed removal is logged and tried again on a
later sync. Gives back the start slot (nothing is started after it). Never stops
the sync.
"""

from __future__ import annotations

import structlog

from kubeling.cri.errors import CRIError
from kubeling.kubelet.steps.base import NodeServices, PodContext, SyncResult

log = structlog.get_logger(__name__)


class PruneOldContainers:
    name = "prune"

    def __init__(self, node: NodeServices) -> None:
        self.node = node

    async def run(self, ctx: PodContext) -> SyncResult | None:
        ctx.lease.release()  # nothing more to start in this sync
        current = ctx.current
        if current is None:
            return None
        for name in {c.name for c in current.containers}:
            old = [c for c in current.instances(name)[2:] if c.exited]
            old += [c for c in current.instances(name) if c.sandbox_id != ctx.sandbox_id]
            for instance in {c.id: c for c in old}.values():
                if instance.running:
                    continue
                try:
                    await self.node.runtime.remove_container(instance.id)
                except CRIError as exc:
                    if not exc.not_found:
                        log.warning("remove container failed", error=exc.details)
        return None
