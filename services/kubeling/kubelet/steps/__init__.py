"""The pod sync as a sequence of small steps (upstream's SyncPod, laid out as Nomad's
task runner hooks): one file per step, each with its contract in its docstring and
its own test (tests/unit/test_kubelet_step_*.py).

Which steps run depends on what the pod needs:

- RUN (a live pod): volumes → sandbox → init containers → replace changed → liveness →
  app containers → prune.
- FINISH (phase Succeeded/Failed): stop containers → stop sandboxes (kept, for logs).
- KILL (deleted, or gone from the API): stop containers → remove sandboxes →
  unmount volumes → forget.

Each step reads and fills the sync's PodContext and either lets the sync go on
(returns None) or ends it with a SyncResult. A new feature (volumes, secrets, DNS
config) adds a step here, as volumes before the sandbox in RUN and after the
sandboxes in KILL.
"""

from __future__ import annotations

from dataclasses import dataclass

from kubeling.kubelet.steps.app_containers import StartAppContainers
from kubeling.kubelet.steps.base import (
    NodeServices,
    PodContext,
    SlotLease,
    StartSlots,
    Step,
    SyncResult,
    grace_period,
)
from kubeling.kubelet.steps.forget import ForgetPod
from kubeling.kubelet.steps.init_containers import RunInitContainers
from kubeling.kubelet.steps.liveness import KillUnhealthy
from kubeling.kubelet.steps.prune import PruneOldContainers
from kubeling.kubelet.steps.replace_changed import ReplaceChangedContainers
from kubeling.kubelet.steps.sandbox import EnsureSandbox
from kubeling.kubelet.steps.stop import RemoveSandboxes, StopContainers, StopSandboxes
from kubeling.kubelet.steps.volumes import MountVolumes, UnmountVolumes

__all__ = [
    "NodeServices",
    "Pipelines",
    "PodContext",
    "SlotLease",
    "StartSlots",
    "Step",
    "SyncResult",
    "grace_period",
]


@dataclass
class Pipelines:
    run: list[Step]
    finish: list[Step]
    kill: list[Step]

    @classmethod
    def default(cls, node: NodeServices) -> Pipelines:
        return cls(
            run=[
                MountVolumes(node),
                EnsureSandbox(node),
                RunInitContainers(node),
                ReplaceChangedContainers(node),
                KillUnhealthy(node),
                StartAppContainers(node),
                PruneOldContainers(node),
            ],
            finish=[StopContainers(node), StopSandboxes(node)],
            kill=[
                StopContainers(node),
                RemoveSandboxes(node),
                UnmountVolumes(node),
                ForgetPod(node),
            ],
        )


async def run_steps(steps: list[Step], ctx: PodContext) -> SyncResult:
    """Run `steps` in order until one ends the sync; the start slot is given back
    however the sync ends."""
    try:
        for step in steps:
            result = await step.run(ctx)
            if result is not None:
                return result
        return SyncResult(retry_after=ctx.retry_after)
    finally:
        ctx.lease.release()
