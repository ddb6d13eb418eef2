"""Step: forget a deleted pod's per-pod state kept by the sync (the last step of a
kill).

Reads nothing from the runtime. Drops the pod's waiting reasons, start-up
milestones, crash-loop and image back-off entries, whether or not the API still
has the pod (a force-deleted pod is gone from it and must not leak them). Ends
the sync: the pod is done.
"""

from __future__ import annotations

from kubeling.kubelet.steps.base import NodeServices, PodContext, SyncResult


class ForgetPod:
    name = "forget"

    def __init__(self, node: NodeServices) -> None:
        self.node = node

    async def run(self, ctx: PodContext) -> SyncResult | None:
        node = self.node
        node.waiting.pop(ctx.uid, None)
        node.milestones.pop(ctx.uid, None)
        node.backoff.forget_prefix(f"{ctx.uid}/")
        node.image_backoff.forget_prefix(f"{ctx.uid}/")
        return SyncResult(done=True)
