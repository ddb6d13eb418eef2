"""What every pod sync step shares: the step contract, the per-sync context and the
node-wide services (runtime, back-offs, start slots) the steps use.

A step is a small object with `name` and `async run(ctx) -> SyncResult | None`:
None lets the sync go on to the next step; a SyncResult stops the sync there and
is what the pod's worker gets (when to sync again, or that the pod is done). A
step that wants a retry but lets later steps run calls `ctx.retry(seconds)`: the
sync then ends with the soonest retry asked for.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from kubeling.cri.api import pb
from kubeling.cri.errors import CRIError
from kubeling.cri.runtime import Runtime
from kubeling.kubelet.backoff import Backoff
from kubeling.kubelet.dns import DNSSettings
from kubeling.kubelet.runtime_state import ContainerInstance, RuntimePod
from kubeling.kubelet.status import Waiting
from kubeling.kubelet.volumes import ObjectSource, VolumeManager
from kubeling.v1 import core_pb2

# Seconds before trying again after a sandbox or container could not be created.
CREATE_RETRY = 2.0
# Grace of a pod the API no longer has: it was force-deleted (or removed while the
# kubelet was away); nothing waits for it any more, so it is killed at once.
REMOVED_POD_GRACE = 0
DEFAULT_GRACE = 30


class Recorder(Protocol):
    def record(self, obj: object, type_: str, reason: str, message: str) -> None: ...


class ProbeView(Protocol):
    def liveness_failed(self, pod_uid: str, container: str, container_id: str = "") -> bool: ...


@dataclass
class SyncResult:
    """What the worker should do next."""

    retry_after: float | None = None  # seconds; None: wait for the next change
    done: bool = False  # the pod is gone and cleaned up: the worker may stop


class StartSlots:
    """Bounds how many pods the runtime starts at once. containerd on a small machine
    is CPU-bound: fifty sandboxes at once all finish late; a few at a time finish in
    order, so most pods run much sooner.

    A sync takes a slot (`SlotLease.acquire`) right before asking the runtime to
    create something (a sandbox, a container) and keeps it until the sync ends, so a
    pod's sandbox and containers start together; it gives the slot back while it waits
    on anything else (an image pull, a container's graceful stop). A pod that already
    has its sandbox (`resume`) gets the next free slot before pods that have none
    yet: pods back from a pull finish first instead of queueing behind new ones."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"start slots must be at least 1, got {size}")
        self.size = size
        self.in_use = 0
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []  # a heap
        self._order = itertools.count()

    def lease(self) -> SlotLease:
        return SlotLease(self)

    async def _acquire(self, resume: bool) -> None:
        if self.in_use < self.size and not self._waiters:
            self.in_use += 1
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (0 if resume else 1, next(self._order), turn))
        try:
            await turn  # a releasing sync hands its slot over (in_use stays)
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self._release()  # handed over just as we were cancelled: pass it on
            raise

    def _release(self) -> None:
        while self._waiters:
            _, _, turn = heapq.heappop(self._waiters)
            if not turn.done():  # skip waiters that were cancelled
                turn.set_result(None)
                return
        self.in_use -= 1


class SlotLease:
    """One sync's hold on a start slot (at most one; idempotent)."""

    def __init__(self, slots: StartSlots) -> None:
        self._slots = slots
        self.held = False

    async def acquire(self, *, resume: bool = False) -> None:
        """Hold a slot; `resume`: the pod already has its sandbox (goes first)."""
        if not self.held:
            await self._slots._acquire(resume)
            self.held = True

    def release(self) -> None:
        if self.held:
            self.held = False
            self._slots._release()


@dataclass
class NodeServices:
    """Node-wide things the steps use; one per kubelet."""

    runtime: Runtime
    log_root: Path
    host_ip: str
    backoff: Backoff  # crash-loop back-off, keyed "{uid}/{container}"
    image_backoff: Backoff  # image pull back-off, keyed "{uid}/{container}/image"
    recorder: Recorder
    probes: ProbeView
    slots: StartSlots
    # Why each container is not running, per pod uid (read by the status code).
    waiting: dict[str, dict[str, Waiting]] = field(default_factory=dict)
    # When each pod first reached each start-up step (time.monotonic), for the
    # pod start-up benchmark and metrics: first_sync, sandbox, images, started.
    milestones: dict[str, dict[str, float]] = field(default_factory=dict)
    # --cluster-dns, --cluster-domain, --resolv-conf: each pod's resolv.conf.
    dns: DNSSettings = field(default_factory=DNSSettings)
    # Pod volumes (None: pods get none, as hollow nodes) and where containers'
    # env reads ConfigMaps and Secrets from.
    volumes: VolumeManager | None = None
    objects: ObjectSource | None = None

    def mark(self, uid: str, step: str) -> None:
        self.milestones.setdefault(uid, {}).setdefault(step, time.monotonic())

    async def stop_container(self, container_id: str, grace: int) -> None:
        """StopContainer; a container already gone is stopped."""
        try:
            await self.runtime.stop_container(container_id, grace)
        except CRIError as exc:
            if not exc.not_found:
                raise

    async def remove_sandbox(self, sandbox_id: str) -> None:
        # Stop first: RemovePodSandbox refuses a sandbox that is not fully stopped.
        for call in (self.runtime.stop_pod_sandbox, self.runtime.remove_pod_sandbox):
            try:
                await call(sandbox_id)
            except CRIError as exc:
                if not exc.not_found:
                    raise


@dataclass
class PodContext:
    """What one sync of one pod knows; steps read and fill it in order."""

    uid: str
    pod: core_pb2.Pod | None  # None: the API no longer has the pod
    current: RuntimePod | None  # what the runtime holds for it (relisted before the sync)
    grace: int  # seconds a container gets to stop
    lease: SlotLease
    waiting: dict[str, Waiting] = field(default_factory=dict)
    # Set by the sandbox step: the sandbox the containers go into.
    sandbox_id: str = ""
    pod_ip: str = ""
    sandbox: pb.PodSandboxConfig | None = None
    # Running containers stopped by this sync to be started again at once (their
    # definition changed), by container name.
    replaced: dict[str, ContainerInstance] = field(default_factory=dict)
    # Set by the volumes step: each volume's path on the node.
    volume_paths: dict[str, Path] = field(default_factory=dict)
    retry_after: float | None = None

    @property
    def spec(self) -> core_pb2.Pod:
        """The pod (steps that run a pod are only called with one)."""
        if self.pod is None:
            raise ValueError(f"pod {self.uid} is gone from the API")
        return self.pod

    def retry(self, after: float | None) -> None:
        """Ask to sync again after `after` seconds (the soonest ask wins)."""
        if after is not None:
            self.retry_after = after if self.retry_after is None else min(self.retry_after, after)


class Step(Protocol):
    name: str

    async def run(self, ctx: PodContext) -> SyncResult | None: ...


def grace_period(pod: core_pb2.Pod | None) -> int:
    """Seconds the pod's containers get between SIGTERM and SIGKILL."""
    if pod is None:
        return REMOVED_POD_GRACE
    meta = pod.metadata
    if meta.HasField("deletion_grace_period_seconds"):
        return int(meta.deletion_grace_period_seconds)
    if pod.spec.HasField("termination_grace_period_seconds"):
        return int(pod.spec.termination_grace_period_seconds)
    return DEFAULT_GRACE


def should_restart(pod: core_pb2.Pod, instance: ContainerInstance) -> bool:
    policy = pod.spec.restart_policy or "Always"
    if policy == "Always":
        return True
    if policy == "OnFailure":
        return instance.exit_code != 0
    return False
