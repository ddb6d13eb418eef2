"""Steps: the pod's volumes (kubelet/volumes.py).

MountVolumes (first in RUN) sets up every volume of the pod, or brings the
files of configMap/secret/downwardAPI/projected volumes up to date on a later
sync, and fills ctx.volume_paths for the container mounts. A volume that cannot
be set up stops the sync before the sandbox: every container waits with
ContainerCreating, a FailedMount event says why, and the sync is retried in
VOLUME_RETRY seconds (as the kubelet waits for volumes). A volume set up before
whose source can no longer be read keeps its files (a warning event).

UnmountVolumes (in KILL, after the sandboxes are gone) unmounts the pod's tmpfs
volumes and removes its directory.
"""

from __future__ import annotations

import structlog

from kubeling.kubelet.status import Waiting
from kubeling.kubelet.steps.base import NodeServices, PodContext, SyncResult
from kubeling.kubelet.volumes import VolumeError

log = structlog.get_logger(__name__)

VOLUME_RETRY = 5.0


class MountVolumes:
    name = "volumes"

    def __init__(self, node: NodeServices) -> None:
        self.node = node

    async def run(self, ctx: PodContext) -> SyncResult | None:
        pod = ctx.spec
        manager = self.node.volumes
        if manager is None or not pod.spec.volumes:
            return None
        try:
            paths, warnings = await manager.setup(pod, pod.status.pod_ip, self.node.host_ip)
        except VolumeError as exc:
            message = str(exc)
            for spec in [*pod.spec.init_containers, *pod.spec.containers]:
                ctx.waiting[spec.name] = Waiting("ContainerCreating", message)
            self.node.recorder.record(pod, "Warning", "FailedMount", message)
            log.warning("volume not set up", pod=pod.metadata.name, error=message)
            return SyncResult(retry_after=VOLUME_RETRY)
        for message in warnings:
            self.node.recorder.record(pod, "Warning", "FailedMount", message)
        if warnings:
            ctx.retry(VOLUME_RETRY)
        ctx.volume_paths = paths
        return None


class UnmountVolumes:
    name = "unmount-volumes"

    def __init__(self, node: NodeServices) -> None:
        self.node = node

    async def run(self, ctx: PodContext) -> SyncResult | None:
        if self.node.volumes is None:
            return None
        try:
            await self.node.volumes.teardown(ctx.uid)
        except (OSError, VolumeError) as exc:
            # A busy mount: try again rather than forget the pod with it mounted.
            log.warning("pod volumes not removed", uid=ctx.uid, error=str(exc))
            return SyncResult(retry_after=VOLUME_RETRY)
        return None
