"""Steps that stop a pod: its containers, then its sandboxes (kept for a finished pod,
removed for a deleted one).

StopContainers reads the runtime snapshot and stops every running or created
container with the pod's grace period (SIGTERM, SIGKILL when it runs out), all at
once, recording a Killing event each while the API still has the pod. It holds no
start slot. A stop that is interrupted (the pod's worker cancels it because the
grace period was shortened) is simply called again with the shorter grace.

StopSandboxes stops the ready sandboxes and keeps them (a finished pod's
containers keep their logs); RemoveSandboxes stops and removes every sandbox of
a deleted pod. Neither stops the sync.
"""

from __future__ import annotations

import asyncio

from kubeling.cri.errors import CRIError
from kubeling.kubelet.runtime_state import RuntimePod
from kubeling.kubelet.steps.base import NodeServices, PodContext, SyncResult
from kubeling.v1 import core_pb2


async def stop_containers(
    node: NodeServices, pod: core_pb2.Pod | None, current: RuntimePod | None, grace: int
) -> None:
    if current is None:
        return
    running = [c for c in current.containers if c.running or c.created]
    if pod is not None:
        for container in running:
            node.recorder.record(pod, "Normal", "Killing", f"Stopping container {container.name}")
    await asyncio.gather(*(node.stop_container(c.id, grace) for c in running))


class StopContainers:
    name = "stop-containers"

    def __init__(self, node: NodeServices) -> None:
        self.node = node

    async def run(self, ctx: PodContext) -> SyncResult | None:
        ctx.lease.release()
        await stop_containers(self.node, ctx.pod, ctx.current, ctx.grace)
        return None


class StopSandboxes:
    name = "stop-sandboxes"

    def __init__(self, node: NodeServices) -> None:
        self.node = node

    async def run(self, ctx: PodContext) -> SyncResult | None:
        for sandbox in ctx.current.sandboxes if ctx.current else []:
            if sandbox.ready:
                try:
                    await self.node.runtime.stop_pod_sandbox(sandbox.id)
                except CRIError as exc:
                    if not exc.not_found:
                        raise
        return None


class RemoveSandboxes:
    name = "remove-sandboxes"

    def __init__(self, node: NodeServices) -> None:
        self.node = node

    async def run(self, ctx: PodContext) -> SyncResult | None:
        for sandbox in ctx.current.sandboxes if ctx.current else []:
            await self.node.remove_sandbox(sandbox.id)
        return None
