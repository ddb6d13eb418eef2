"""Step: the pod's sandbox (its network namespace and IP).

Reads the pod's newest sandbox in the runtime snapshot. A ready sandbox is used as
it is. Otherwise (none yet, a failed start, or its network died) the stale
sandboxes and their containers are removed first (a stale sandbox keeps its name
reserved in containerd) and a new one is made, holding a start slot.

Stops the sync when the pod has nothing left to run (every app container exited
for good: no new sandbox), or when the sandbox cannot be made (every container
waits with ContainerCreating, a FailedCreatePodSandBox event, retry in 2 s).
Fills ctx.sandbox_id, ctx.pod_ip and ctx.sandbox (the config containers are
created with). The sandbox gets the pod's resolv.conf by its dnsPolicy
(kubelet/dns.py); entries over the limits are dropped with a DNSConfigForming event.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog

from kubeling.cri.errors import CRIError
from kubeling.kubelet.containers import sandbox_config
from kubeling.kubelet.dns import PodDNS, pod_dns, read_host_resolv
from kubeling.kubelet.runtime_state import RuntimePod
from kubeling.kubelet.status import Waiting
from kubeling.kubelet.steps.base import (
    CREATE_RETRY,
    NodeServices,
    PodContext,
    SyncResult,
    should_restart,
)
from kubeling.kubelet.steps.stop import stop_containers
from kubeling.v1 import core_pb2

log = structlog.get_logger(__name__)


class EnsureSandbox:
    name = "sandbox"

    def __init__(self, node: NodeServices) -> None:
        self.node = node

    async def run(self, ctx: PodContext) -> SyncResult | None:
        pod, current = ctx.spec, ctx.current
        sandbox = current.sandbox if current is not None else None
        if sandbox is not None and sandbox.ready:
            assert current is not None
            ctx.sandbox_id, ctx.pod_ip = sandbox.id, self._pod_ip(pod, sandbox.ip)
        else:
            if current is not None and sandbox is not None and all_done(pod, current, sandbox.id):
                return SyncResult()  # nothing left to run: do not start a new sandbox
            if not await self._new_sandbox(ctx):
                return SyncResult(retry_after=CREATE_RETRY)
            self.node.mark(ctx.uid, "sandbox")
            meta = pod.metadata
            ctx.current = RuntimePod(ctx.uid, meta.namespace, meta.name)
        ctx.sandbox = sandbox_config(pod, self.node.log_root, 0, self._dns(pod).to_cri())
        return None

    def _dns(self, pod: core_pb2.Pod) -> PodDNS:
        return pod_dns(pod, self.node.dns, read_host_resolv(self.node.dns.resolv_conf))

    async def _new_sandbox(self, ctx: PodContext) -> bool:
        pod, current = ctx.spec, ctx.current
        attempt = 0
        if current is not None and current.sandboxes:
            attempt = max(s.attempt for s in current.sandboxes) + 1
            # A stale sandbox (failed start, or its network died) keeps its name
            # reserved in containerd: remove it and its containers first.
            ctx.lease.release()
            await stop_containers(self.node, None, current, ctx.grace)
            for old in current.sandboxes:
                await self.node.remove_sandbox(old.id)
        dns = self._dns(pod)
        for warning in dns.warnings:
            self.node.recorder.record(pod, "Warning", "DNSConfigForming", warning)
        config = sandbox_config(pod, self.node.log_root, attempt, dns.to_cri())
        await asyncio.to_thread(Path(config.log_directory).mkdir, parents=True, exist_ok=True)
        await ctx.lease.acquire()
        try:
            sandbox_id = await self.node.runtime.run_pod_sandbox(config)
            status = await self.node.runtime.pod_sandbox_status(sandbox_id)
        except CRIError as exc:
            message = f"Failed to create pod sandbox: {exc.details}"
            for spec in [*pod.spec.init_containers, *pod.spec.containers]:
                ctx.waiting[spec.name] = Waiting("ContainerCreating", message)
            self.node.recorder.record(pod, "Warning", "FailedCreatePodSandBox", message)
            log.warning("sandbox failed", pod=pod.metadata.name, error=exc.details)
            return False
        ctx.sandbox_id, ctx.pod_ip = sandbox_id, self._pod_ip(pod, status.status.network.ip)
        return True

    def _pod_ip(self, pod: core_pb2.Pod, sandbox_ip: str) -> str:
        """A hostNetwork pod's address is its node's (the runtime reports none)."""
        return self.node.host_ip if pod.spec.host_network else sandbox_ip


def all_done(pod: core_pb2.Pod, current: RuntimePod, sandbox_id: str) -> bool:
    """Every app container has exited for good (restartPolicy allows no more)."""
    for spec in pod.spec.containers:
        latest = current.latest(spec.name, sandbox_id)
        if latest is None or not latest.exited or should_restart(pod, latest):
            return False
    return True
