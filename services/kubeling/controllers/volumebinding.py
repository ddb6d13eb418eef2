"""The PersistentVolume controller: binds claims to volumes, provisions local-path
volumes, and reclaims volumes whose claim is gone (Kubernetes' persistentvolume
binder and k3s's local-path-provisioner, in one loop).

Binding (a claim without `spec.volumeName`): the smallest Available PV of the
claim's class whose access modes include the claim's, whose capacity covers the
request and whose volumeMode is the same wins. The PV is written first
(`spec.claimRef` with the claim's uid, then status Bound), then the claim
(`spec.volumeName`, then status Bound with the PV's capacity and modes); a crash
between the steps is finished by the next sync, which sees a PV already reserved
for the claim. A claim naming a volume (pre-bound) gets that one if it is free.

Classes with `volumeBindingMode: WaitForFirstConsumer` bind nothing until the
scheduler chose a node for the claim's first pod: the scheduler (its
VolumeBinding step, scheduler/volumebinding.py) writes
`volume.kubernetes.io/selected-node` on the claim before it binds the pod, and a
static PV then must be usable on that node. With no PV to bind and a class
whose provisioner is the local-path one, a volume is provisioned:

- on the selected node (an Immediate local-path class has none: the claim stays
  Pending with a ProvisioningFailed event, as k3s's provisioner answers "no node
  was specified");
- as a PV `pvc-UID` with `local.path` = `<node dir>/pvc-UID_NS_NAME` and a
  nodeAffinity `kubernetes.io/hostname In [node]`, so every later pod using the
  claim is scheduled to the node holding its data; the node dir is what the
  node's kubelet announced in its Node's `kubeling.io/local-path-dir` annotation
  (its `--root-dir`/storage), else the class parameter `nodePath`, else
  /var/lib/kubeling/storage;
- reclaim policy from the class (Delete by default), pre-bound to the claim.

The master cannot make directories on nodes, so the kubelet does: it creates the
directory (0777, as k3s) when it first mounts the volume. Removing it is also the
kubelet's: every provisioned PV carries the `kubeling.io/local-path-cleanup`
finalizer, and the kubelet of the PV's node (which watches the PVs whose
nodeAffinity names it) deletes the directory of a PV being deleted, then drops the
finalizer, so the PV object disappears only once its data is gone. (k3s runs a
helper pod on the node instead; a kubelet-side cleanup needs no image.)

Reclaim: a bound PV whose claim is gone (checked against the API, not only the
cache) becomes Released; with reclaim policy Delete it is deleted (a local-path
PV then waits on its finalizer for the kubelet), with Retain it stays Released
until an admin removes or reuses it.

Events (on the claim): ProvisioningSucceeded, ProvisioningFailed,
WaitForFirstConsumer; (on the volume) VolumeDelete failures.
"""

from __future__ import annotations

import posixpath
from fractions import Fraction
from typing import Any

import grpc
import structlog

from kubeling.api import storage as st
from kubeling.api.kinds import HOSTNAME_LABEL
from kubeling.api.objects import clone
from kubeling.client.informer import Informer, WorkQueue, informers_running, run_workers
from kubeling.controllers.manager import ControllerContext, register
from kubeling.v1 import core_pb2, meta_pb2, storage_pb2

log = structlog.get_logger(__name__)

_CLAIM = "claim|"
_VOLUME = "volume|"


def _volume_mode(mode_holder: Any) -> str:
    return str(mode_holder.volume_mode) if mode_holder.HasField("volume_mode") else "Filesystem"


def _claim_key(pvc: storage_pb2.PersistentVolumeClaim) -> str:
    return f"{pvc.metadata.namespace}/{pvc.metadata.name}"


def node_matches_volume(pv: storage_pb2.PersistentVolume, node: core_pb2.Node | None) -> bool:
    """Whether `node` satisfies the PV's nodeAffinity (no affinity: every node)."""
    if not pv.spec.HasField("node_affinity"):
        return True
    if node is None:
        return False
    labels = dict(node.metadata.labels)
    labels.setdefault(HOSTNAME_LABEL, node.metadata.name)
    for term in pv.spec.node_affinity.required.node_selector_terms:
        if all(_requirement(req, labels) for req in term.match_expressions):
            return True
    return False


def _requirement(req: core_pb2.NodeSelectorRequirement, labels: dict[str, str]) -> bool:
    value = labels.get(req.key)
    op = req.operator
    if op == "In":
        return value is not None and value in req.values
    if op == "NotIn":
        return value is None or value not in req.values
    if op == "Exists":
        return value is not None
    if op == "DoesNotExist":
        return value is None
    if op in ("Gt", "Lt") and value is not None and req.values:
        try:
            left, right = int(value), int(req.values[0])
        except ValueError:
            return False
        return left > right if op == "Gt" else left < right
    return False


def find_volume(
    pvc: storage_pb2.PersistentVolumeClaim,
    volumes: list[storage_pb2.PersistentVolume],
    node: core_pb2.Node | None = None,
    need_node: bool = False,
) -> storage_pb2.PersistentVolume | None:
    """The smallest PV that fits the claim (api/storage.py volume_fits; usable on
    `node` when `need_node`), or None."""
    best: tuple[Fraction, str] | None = None
    found: storage_pb2.PersistentVolume | None = None
    for pv in volumes:
        if not st.volume_fits(pvc, pv):
            continue
        if need_node and not node_matches_volume(pv, node):
            continue
        rank = (st.storage_of(pv.spec.capacity) or Fraction(0), pv.metadata.name)
        if best is None or rank < best:
            best, found = rank, pv
    return found


@register("persistentvolume-binder")
class VolumeBindingController:
    def __init__(self, context: ControllerContext) -> None:
        self.api = context.api
        self.recorder = context.recorder
        self.workers = context.settings.workers
        self.claims: Informer[storage_pb2.PersistentVolumeClaim] = Informer(
            self.api.persistent_volume_claims
        )
        self.volumes: Informer[storage_pb2.PersistentVolume] = Informer(self.api.persistent_volumes)
        self.classes: Informer[storage_pb2.StorageClass] = Informer(self.api.storage_classes)
        self.nodes: Informer[core_pb2.Node] = Informer(self.api.nodes)
        self.queue = WorkQueue(name="persistentvolume-binder")
        self.claims.add_handler(self._on_claim)
        self.volumes.add_handler(self._on_volume)
        self.classes.add_handler(self._on_class)

    async def run(self) -> None:
        informers: list[Informer[Any]] = [self.claims, self.volumes, self.classes, self.nodes]
        async with informers_running(informers, "persistentvolume-binder"):
            await run_workers(self.queue, self.sync, self.workers, "persistentvolume-binder")

    # ------------------------------------------------------------ event handlers

    def _on_claim(self, kind: str, old: Any, new: Any) -> None:
        pvc = new if new is not None else old
        self.queue.add(_CLAIM + _claim_key(pvc))
        if pvc.spec.volume_name:
            self.queue.add(_VOLUME + pvc.spec.volume_name)
        if kind == "DELETED":
            # Its volume is released: look at every PV reserved for it.
            for pv in self.volumes.list():
                ref = pv.spec.claim_ref
                if ref.namespace == pvc.metadata.namespace and ref.name == pvc.metadata.name:
                    self.queue.add(_VOLUME + pv.metadata.name)

    def _on_volume(self, kind: str, old: Any, new: Any) -> None:
        pv = new if new is not None else old
        self.queue.add(_VOLUME + pv.metadata.name)
        ref = pv.spec.claim_ref
        if ref.name:
            self.queue.add(_CLAIM + f"{ref.namespace}/{ref.name}")
        if kind != "DELETED" and not ref.name:
            # A PV became free: pending claims may bind now.
            for pvc in self.claims.list():
                if not pvc.spec.volume_name:
                    self.queue.add(_CLAIM + _claim_key(pvc))

    def _on_class(self, kind: str, old: Any, new: Any) -> None:
        for pvc in self.claims.list():
            if not pvc.spec.volume_name:
                self.queue.add(_CLAIM + _claim_key(pvc))

    # ---------------------------------------------------------------------- sync

    async def sync(self, key: str) -> None:
        if key.startswith(_CLAIM):
            namespace, _, name = key.removeprefix(_CLAIM).partition("/")
            pvc = self.claims.get(namespace, name)
            if pvc is not None and not pvc.metadata.HasField("deletion_timestamp"):
                await self._sync_claim(pvc)
        else:
            pv = self.volumes.get("", key.removeprefix(_VOLUME))
            if pv is not None:
                await self._sync_volume(pv)

    async def _sync_claim(self, pvc: storage_pb2.PersistentVolumeClaim) -> None:
        if pvc.spec.volume_name:
            await self._sync_bound_claim(pvc)
            return
        class_name = st.claim_class(pvc)
        sc = self.classes.get("", class_name) if class_name else None
        mode = st.binding_mode(sc) if sc is not None else st.IMMEDIATE
        selected = pvc.metadata.annotations.get(st.SELECTED_NODE_ANNOTATION, "")
        if mode == st.WAIT_FOR_FIRST_CONSUMER and not selected:
            # The scheduler picks the node with the claim's first pod.
            if pvc.status.phase != st.CLAIM_BOUND:
                self.recorder.record(
                    pvc, "Normal", "WaitForFirstConsumer",
                    "waiting for first consumer to be created before binding",
                )  # fmt: skip
            return
        node = self.nodes.get("", selected) if selected else None
        pv = find_volume(pvc, self.volumes.list(), node, need_node=bool(selected))
        if pv is not None:
            await self._bind(pvc, pv)
            return
        if sc is None or not sc.provisioner or sc.provisioner == st.NO_PROVISIONER:
            return  # waits for a matching PV to be made
        if not st.provisions_here(sc):
            return  # an external provisioner's (none runs here)
        await self._provision(pvc, sc, selected)

    async def _sync_bound_claim(self, pvc: storage_pb2.PersistentVolumeClaim) -> None:
        pv = self.volumes.get("", pvc.spec.volume_name)
        if pv is None:
            try:
                pv = await self.api.persistent_volumes.get(pvc.spec.volume_name)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise
                if pvc.status.phase == st.CLAIM_BOUND:
                    await self._claim_status(pvc, st.CLAIM_LOST, None)
                return
        ref = pv.spec.claim_ref
        if not ref.name:
            await self._bind(pvc, pv)  # pre-bound by the user: reserve the PV
            return
        if (ref.namespace, ref.name) != (pvc.metadata.namespace, pvc.metadata.name) or (
            ref.uid and ref.uid != pvc.metadata.uid
        ):
            return  # the PV is someone else's: the claim stays Pending
        await self._bind(pvc, pv)

    async def _bind(
        self, pvc: storage_pb2.PersistentVolumeClaim, pv: storage_pb2.PersistentVolume
    ) -> None:
        """PV first (claimRef, status), then the claim (volumeName, status)."""
        ref = pv.spec.claim_ref
        if not (ref.uid == pvc.metadata.uid and ref.name == pvc.metadata.name):
            updated = clone(pv)
            updated.spec.claim_ref.CopyFrom(
                meta_pb2.ObjectReference(
                    kind="PersistentVolumeClaim",
                    api_version="v1",
                    namespace=pvc.metadata.namespace,
                    name=pvc.metadata.name,
                    uid=pvc.metadata.uid,
                    resource_version=pvc.metadata.resource_version,
                )
            )
            updated.metadata.annotations[st.BOUND_BY_CONTROLLER_ANNOTATION] = "yes"
            pv = await self.api.persistent_volumes.update(updated)
        if pv.status.phase != st.PV_BOUND:
            updated = clone(pv)
            updated.status.phase = st.PV_BOUND
            updated.status.message = ""
            updated.status.reason = ""
            pv = await self.api.persistent_volumes.update_status(updated)
        if pvc.spec.volume_name != pv.metadata.name:
            claim = clone(pvc)
            claim.spec.volume_name = pv.metadata.name
            claim.metadata.annotations[st.BIND_COMPLETED_ANNOTATION] = "yes"
            claim.metadata.annotations[st.BOUND_BY_CONTROLLER_ANNOTATION] = "yes"
            pvc = await self.api.persistent_volume_claims.update(claim)
        await self._claim_status(pvc, st.CLAIM_BOUND, pv)

    async def _claim_status(
        self,
        pvc: storage_pb2.PersistentVolumeClaim,
        phase: str,
        pv: storage_pb2.PersistentVolume | None,
    ) -> None:
        updated = clone(pvc)
        updated.status.phase = phase
        if pv is not None:
            del updated.status.access_modes[:]
            updated.status.access_modes.extend(pv.spec.access_modes)
            updated.status.capacity.clear()
            updated.status.capacity.update(pv.spec.capacity)
        if updated.status == pvc.status:
            return
        await self.api.persistent_volume_claims.update_status(updated)
        if phase == st.CLAIM_LOST:
            self.recorder.record(
                pvc, "Warning", "ClaimLost",
                f"Bound claim has lost its PersistentVolume {pvc.spec.volume_name!r}. "
                "Data on the volume is lost!",
            )  # fmt: skip

    # -------------------------------------------------------------- provisioning

    def _node_dir(self, node_name: str, sc: storage_pb2.StorageClass) -> str:
        node = self.nodes.get("", node_name)
        if node is not None:
            announced = node.metadata.annotations.get(st.LOCAL_PATH_DIR_ANNOTATION, "")
            if announced.startswith("/"):
                return announced
        return sc.parameters.get("nodePath") or st.DEFAULT_LOCAL_PATH_DIR

    async def _provision(
        self, pvc: storage_pb2.PersistentVolumeClaim, sc: storage_pb2.StorageClass, node: str
    ) -> None:
        if not node:
            self._event_once(
                pvc, "Warning", "ProvisioningFailed",
                f"failed to provision volume with StorageClass {sc.metadata.name!r}: "
                "configuration error, no node was specified (local-path volumes need "
                "volumeBindingMode WaitForFirstConsumer)",
            )  # fmt: skip
            return
        if pvc.metadata.annotations.get(st.STORAGE_PROVISIONER_ANNOTATION) != sc.provisioner:
            claim = clone(pvc)
            claim.metadata.annotations[st.STORAGE_PROVISIONER_ANNOTATION] = sc.provisioner
            claim.metadata.annotations[st.BETA_STORAGE_PROVISIONER_ANNOTATION] = sc.provisioner
            pvc = await self.api.persistent_volume_claims.update(claim)
        pv = storage_pb2.PersistentVolume(api_version="v1", kind="PersistentVolume")
        pv.metadata.name = st.volume_name_for(pvc)
        pv.metadata.annotations[st.PROVISIONED_BY_ANNOTATION] = sc.provisioner
        pv.metadata.finalizers.append(st.LOCAL_PATH_CLEANUP_FINALIZER)
        spec = pv.spec
        spec.capacity["storage"] = pvc.spec.resources.requests.get("storage", "")
        spec.access_modes.extend(pvc.spec.access_modes)
        spec.persistent_volume_reclaim_policy = st.reclaim_policy(sc)
        spec.storage_class_name = sc.metadata.name
        spec.volume_mode = _volume_mode(pvc.spec)
        spec.mount_options.extend(sc.mount_options)
        spec.local.path = posixpath.join(self._node_dir(node, sc), st.local_path_dir_name(pvc))
        term = spec.node_affinity.required.node_selector_terms.add()
        term.match_expressions.add(key=HOSTNAME_LABEL, operator="In", values=[node])
        spec.claim_ref.CopyFrom(
            meta_pb2.ObjectReference(
                kind="PersistentVolumeClaim",
                api_version="v1",
                namespace=pvc.metadata.namespace,
                name=pvc.metadata.name,
                uid=pvc.metadata.uid,
            )
        )
        try:
            created = await self.api.persistent_volumes.create(pv)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                self.recorder.record(
                    pvc, "Warning", "ProvisioningFailed",
                    f"failed to provision volume with StorageClass {sc.metadata.name!r}: "
                    f"{exc.details()}",
                )  # fmt: skip
                raise
            created = await self.api.persistent_volumes.get(pv.metadata.name)
        else:
            self.recorder.record(
                pvc, "Normal", "ProvisioningSucceeded",
                f"Successfully provisioned volume {created.metadata.name} on node {node}",
            )  # fmt: skip
            log.info("provisioned", claim=_claim_key(pvc), volume=created.metadata.name,
                     node=node, path=created.spec.local.path)  # fmt: skip
        await self._bind(pvc, created)

    def _event_once(self, obj: Any, type_: str, reason: str, message: str) -> None:
        # The recorder aggregates repeats into one Event with a count.
        self.recorder.record(obj, type_, reason, message)

    # ------------------------------------------------------------------- reclaim

    async def _sync_volume(self, pv: storage_pb2.PersistentVolume) -> None:
        if pv.metadata.HasField("deletion_timestamp"):
            return
        ref = pv.spec.claim_ref
        if not ref.name:
            # New, or Released and freed by an admin (claimRef removed): usable again.
            if pv.status.phase in (st.PV_PENDING, st.PV_RELEASED, st.PV_BOUND, ""):
                await self._volume_phase(pv, st.PV_AVAILABLE)
            return
        pvc = self.claims.get(ref.namespace, ref.name)
        if pvc is not None and (not ref.uid or pvc.metadata.uid == ref.uid):
            if pvc.spec.volume_name == pv.metadata.name and pv.status.phase != st.PV_BOUND:
                await self._volume_phase(pv, st.PV_BOUND)
            return
        if not ref.uid:
            return  # reserved for a claim not made yet (pre-bound by the admin)
        # The cache may be behind: only the API says the claim is really gone.
        try:
            live = await self.api.persistent_volume_claims.get(ref.name, ref.namespace)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
        else:
            if live.metadata.uid == ref.uid:
                return
        if pv.status.phase != st.PV_RELEASED:
            pv = await self._volume_phase(pv, st.PV_RELEASED)
        if pv.spec.persistent_volume_reclaim_policy == st.RECLAIM_DELETE:
            try:
                await self.api.persistent_volumes.delete(pv.metadata.name, uid=pv.metadata.uid)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    self.recorder.record(pv, "Warning", "VolumeFailedDelete", exc.details() or "")
                    raise
            log.info("volume deleted (reclaim Delete)", volume=pv.metadata.name)

    async def _volume_phase(
        self, pv: storage_pb2.PersistentVolume, phase: str
    ) -> storage_pb2.PersistentVolume:
        updated = clone(pv)
        updated.status.phase = phase
        return await self.api.persistent_volumes.update_status(updated)
