"""Drive one pod to its desired state in the runtime (upstream's SyncPod).

`PodSyncer.sync` is called by the pod's worker with the latest spec (or None once
the pod is gone from the master) and a fresh view of the runtime. It picks the
pipeline of steps the pod needs (steps/: run, finish or kill) and runs it; the
result says when it wants to be called again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from kubeling.cri.runtime import Runtime
from kubeling.kubelet.backoff import Backoff
from kubeling.kubelet.dns import DNSSettings
from kubeling.kubelet.runtime_state import RuntimePod
from kubeling.kubelet.status import TERMINAL_PHASES, Waiting
from kubeling.kubelet.steps import (
    NodeServices,
    Pipelines,
    PodContext,
    StartSlots,
    SyncResult,
    grace_period,
    run_steps,
)
from kubeling.kubelet.steps.base import ProbeView, Recorder
from kubeling.kubelet.volumes import ObjectSource, VolumeManager
from kubeling.v1 import core_pb2

__all__ = ["PodSyncer", "SyncResult"]


@dataclass
class PodSyncer:
    runtime: Runtime
    log_root: Path
    host_ip: str
    backoff: Backoff
    image_backoff: Backoff
    recorder: Recorder
    probes: ProbeView
    # Why each container is not running, per pod uid (read by the status code).
    waiting: dict[str, dict[str, Waiting]] = field(default_factory=dict)
    # When each pod first reached each start-up step (time.monotonic), for the
    # pod start-up benchmark and metrics: first_sync, sandbox, images, started.
    milestones: dict[str, dict[str, float]] = field(default_factory=dict)
    # Pods the runtime starts at once (see StartSlots).
    parallel_starts: int = 4
    dns: DNSSettings = field(default_factory=DNSSettings)
    volumes: VolumeManager | None = None
    objects: ObjectSource | None = None

    def __post_init__(self) -> None:
        self.slots = StartSlots(self.parallel_starts)
        self.node = NodeServices(
            runtime=self.runtime,
            log_root=self.log_root,
            host_ip=self.host_ip,
            backoff=self.backoff,
            image_backoff=self.image_backoff,
            recorder=self.recorder,
            probes=self.probes,
            slots=self.slots,
            waiting=self.waiting,
            milestones=self.milestones,
            dns=self.dns,
            volumes=self.volumes,
            objects=self.objects,
        )
        self.pipelines = Pipelines.default(self.node)

    def mark(self, uid: str, step: str) -> None:
        self.milestones.setdefault(uid, {}).setdefault(step, time.monotonic())

    async def sync(
        self, uid: str, pod: core_pb2.Pod | None, current: RuntimePod | None
    ) -> SyncResult:
        grace = grace_period(pod)
        lease = self.slots.lease()
        if pod is None or pod.metadata.HasField("deletion_timestamp"):
            return await run_steps(self.pipelines.kill, PodContext(uid, pod, current, grace, lease))
        if pod.status.phase in TERMINAL_PHASES:
            # Finished: stop what runs, release the network, keep containers for logs.
            ctx = PodContext(uid, pod, current, grace, lease)
            return await run_steps(self.pipelines.finish, ctx)
        self.mark(uid, "first_sync")
        waiting = self.waiting.setdefault(uid, {})
        return await run_steps(
            self.pipelines.run, PodContext(uid, pod, current, grace, lease, waiting)
        )
