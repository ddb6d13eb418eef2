"""The PVC protection controller (Kubernetes' pvc-protection): a claim a pod uses
is not removed before the pod is gone.

As Kubernetes does, a claim in use carries the `kubernetes.io/pvc-protection`
finalizer; deleting it then only marks it (Terminating) until no pod that has
not finished (Succeeded/Failed) refers to it, when the finalizer is removed and
the claim goes, its volume released (controllers/volumebinding.py) and, with
reclaim Delete, removed. Without this, a claim deleted under a running pod would
let the local-path volume's directory be removed while the pod still writes to
it (a kubelet restarted meanwhile would not know the directory is mounted).

Kubernetes' admission adds the finalizer to every claim at create; here the
controller adds it when a pod first uses the claim (Kubernetes' controller does
that too, for claims made before the admission plugin ran), so claims no pod
uses are deleted at once. "No pod uses it" is checked against a live list of the
namespace's pods before the finalizer goes: the cache may not show a pod just
made.
"""

from __future__ import annotations

from typing import Any

import grpc
import structlog

from kubeling.api.objects import clone
from kubeling.client.informer import Informer, WorkQueue, informers_running, key_of, run_workers
from kubeling.controllers.manager import ControllerContext, register
from kubeling.v1 import core_pb2, storage_pb2

log = structlog.get_logger(__name__)

PVC_PROTECTION_FINALIZER = "kubernetes.io/pvc-protection"


def claims_of(pod: core_pb2.Pod) -> list[str]:
    return [
        v.persistent_volume_claim.claim_name
        for v in pod.spec.volumes
        if v.HasField("persistent_volume_claim")
    ]


def uses(pod: core_pb2.Pod, claim: str) -> bool:
    """The pod counts as using the claim until it finished or is gone."""
    return pod.status.phase not in ("Succeeded", "Failed") and claim in claims_of(pod)


@register("pvc-protection")
class VolumeProtectionController:
    def __init__(self, context: ControllerContext) -> None:
        self.api = context.api
        self.workers = context.settings.workers
        self.claims: Informer[storage_pb2.PersistentVolumeClaim] = Informer(
            self.api.persistent_volume_claims
        )
        self.pods: Informer[core_pb2.Pod] = Informer(self.api.pods)
        self.queue = WorkQueue(name="pvc-protection")
        self.claims.add_handler(self._on_claim)
        self.pods.add_handler(self._on_pod)

    async def run(self) -> None:
        informers: list[Informer[Any]] = [self.claims, self.pods]
        async with informers_running(informers, "pvc-protection"):
            await run_workers(self.queue, self.sync, self.workers, "pvc-protection")

    def _on_claim(self, kind: str, old: Any, new: Any) -> None:
        if kind != "DELETED":
            self.queue.add(key_of(new))

    def _on_pod(self, kind: str, old: Any, new: Any) -> None:
        for pod in (old, new):
            if pod is not None:
                for claim in claims_of(pod):
                    self.queue.add(f"{pod.metadata.namespace}/{claim}")

    async def sync(self, key: str) -> None:
        namespace, _, name = key.partition("/")
        pvc = self.claims.get(namespace, name)
        if pvc is None:
            return
        protected = PVC_PROTECTION_FINALIZER in pvc.metadata.finalizers
        in_use = any(uses(p, name) for p in self.pods.list(namespace))
        if not pvc.metadata.HasField("deletion_timestamp"):
            if in_use and not protected:
                await self._set(pvc, add=True)
            return
        if not protected:
            return
        if not in_use:
            # The cache may miss a pod made a moment ago: ask the API.
            live = await self.api.pods.list(namespace)
            in_use = any(uses(p, name) for p in live.items)
        if in_use:
            return  # a pod event wakes us when it finishes or goes
        await self._set(pvc, add=False)
        log.info("claim no longer in use; deletion proceeds", claim=key)

    async def _set(self, pvc: storage_pb2.PersistentVolumeClaim, add: bool) -> None:
        updated = clone(pvc)
        kept = [f for f in updated.metadata.finalizers if f != PVC_PROTECTION_FINALIZER]
        del updated.metadata.finalizers[:]
        updated.metadata.finalizers.extend(kept)
        if add:
            updated.metadata.finalizers.append(PVC_PROTECTION_FINALIZER)
        try:
            await self.api.persistent_volume_claims.update(updated)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise  # a conflict: the work queue retries with the newer claim
