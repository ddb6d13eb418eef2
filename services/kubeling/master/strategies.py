"""The per-kind rules that differ from the generic registry behaviour."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Awaitable, Callable
from typing import cast

import grpc
import structlog
from google.protobuf.message import Message

from kubeling.api import batch, errors
from kubeling.api import storage as st
from kubeling.api.errors import FieldViolation
from kubeling.api.kinds import (
    JOB,
    NAMESPACE,
    NODE,
    PERSISTENT_VOLUME,
    PERSISTENT_VOLUME_CLAIM,
    POD,
    SERVICE,
    STORAGE_CLASS,
    Kind,
)
from kubeling.master.allocators import AllocationError, IPAllocator, PortAllocator, owner_of
from kubeling.master.registry import Strategy
from kubeling.master.store.base import Store
from kubeling.master.validation import NODE_PORT_RANGE
from kubeling.master.validation.core import node_loopback_addresses
from kubeling.v1 import batch_pb2, core_pb2, internal_pb2, storage_pb2

log = structlog.get_logger(__name__)

DEFAULT_SERVICE_CIDR = "10.96.0.0/12"
# Service types that get node ports (a LoadBalancer is a NodePort plus addresses).
NODE_PORT_TYPES = ("NodePort", "LoadBalancer")
PROTECTED_NAMESPACES = frozenset({"default"})


class PodStrategy(Strategy):
    def prepare_create(self, obj: Message) -> None:
        super().prepare_create(obj)
        cast(core_pb2.Pod, obj).status.phase = "Pending"

    def deletion_grace(self, obj: Message, requested: int | None) -> int:
        pod = cast(core_pb2.Pod, obj)
        if not pod.spec.node_name:
            return 0  # no kubelet has it: nothing to stop, remove at once
        if requested is not None:
            return requested
        return pod.spec.termination_grace_period_seconds


class NodeStrategy(Strategy):
    """Node addresses are checked (loopback only for a loopback-only master); a pod
    range must lie inside the master's --cluster-cidr when it has one: kubelets
    route pod ranges to nodes, so a range elsewhere would capture other traffic.
    The range is checked when it is set (create, or "" to a range), so Nodes made
    before the cluster CIDR changed keep working."""

    keeps_status_on_create = True

    def __init__(
        self, kind: Kind, loopback_addresses: bool = False, cluster_cidr: str = ""
    ) -> None:
        super().__init__(kind)
        # Only a master no other machine can reach accepts loopback node addresses.
        self.loopback_addresses = loopback_addresses
        self.cluster_cidrs = [
            ipaddress.ip_network(c.strip(), strict=False)
            for c in cluster_cidr.split(",")
            if c.strip()
        ]

    def validate(self, obj: Message) -> list[FieldViolation]:
        errs = super().validate(obj)
        if not self.loopback_addresses:
            errs += node_loopback_addresses(cast(core_pb2.Node, obj).status.addresses)
        return errs

    def _outside_cluster_cidr(self, node: core_pb2.Node, old: core_pb2.Node | None) -> None:
        if not self.cluster_cidrs:
            return
        errs = []
        ranges = [("spec.podCIDR", node.spec.pod_cidr)] + [
            (f"spec.podCIDRs[{i}]", c) for i, c in enumerate(node.spec.pod_cidrs)
        ]
        before = {old.spec.pod_cidr, *old.spec.pod_cidrs} if old is not None else set()
        allowed = ", ".join(str(c) for c in self.cluster_cidrs)
        for path, text in ranges:
            if not text or text in before:
                continue
            try:
                network = ipaddress.ip_network(text, strict=False)
            except ValueError:
                continue  # validation says why
            inside = any(
                network.version == c.version and network.subnet_of(c)  # type: ignore[arg-type]
                for c in self.cluster_cidrs
            )
            if not inside:
                errs.append(
                    FieldViolation(
                        path,
                        f"Invalid value: {text!r}: must be inside the cluster CIDR ({allowed})",
                    )
                )
        if errs:
            raise errors.invalid("Node", node.metadata.name, errs)

    async def before_create(self, obj: Message) -> Callable[[], Awaitable[None]]:
        self._outside_cluster_cidr(cast(core_pb2.Node, obj), None)
        return await super().before_create(obj)

    async def before_update(self, new: Message, old: Message) -> Callable[[], Awaitable[None]]:
        self._outside_cluster_cidr(cast(core_pb2.Node, new), cast(core_pb2.Node, old))
        return await super().before_update(new, old)


class JobStrategy(Strategy):
    """As Kubernetes' Job strategy: unless `spec.manualSelector`, the server labels
    the template with the Job's uid and name and selects on the uid, so a Job's
    pods are its own even when another Job uses the same labels. An update that
    leaves the generated labels, the selector or completions out (a manifest
    applied again) keeps them: they are the server's or defaulted, and may not
    change anyway."""

    def prepare_create(self, obj: Message) -> None:
        super().prepare_create(obj)
        job = cast(batch_pb2.Job, obj)
        if job.spec.manual_selector:
            return
        meta = job.metadata
        labels = job.spec.template.metadata.labels
        labels[batch.CONTROLLER_UID_LABEL] = meta.uid
        labels[batch.JOB_NAME_LABEL] = meta.name
        labels[batch.LEGACY_CONTROLLER_UID_LABEL] = meta.uid
        labels[batch.LEGACY_JOB_NAME_LABEL] = meta.name
        match = job.spec.selector.match_labels
        match.setdefault(batch.CONTROLLER_UID_LABEL, meta.uid)

    def prepare_update(self, new: Message, old: Message) -> None:
        super().prepare_update(new, old)
        job, prev = cast(batch_pb2.Job, new), cast(batch_pb2.Job, old)
        # completions may not change, and a manifest without it (defaulted on
        # create) means "as it is", not "unset".
        if not job.spec.HasField("completions") and prev.spec.HasField("completions"):
            job.spec.completions = prev.spec.completions
        if job.spec.manual_selector:
            return
        if not job.spec.HasField("selector"):
            job.spec.selector.CopyFrom(prev.spec.selector)
        labels = job.spec.template.metadata.labels
        for key in batch.GENERATED_LABELS:
            if key not in labels and key in prev.spec.template.metadata.labels:
                labels[key] = prev.spec.template.metadata.labels[key]
        for key in batch.GENERATED_LABELS:
            if key not in job.metadata.labels and key in prev.metadata.labels:
                job.metadata.labels[key] = prev.metadata.labels[key]


class PersistentVolumeClaimStrategy(Strategy):
    """A claim starts Pending; one created without `storageClassName` gets the
    default StorageClass (the one annotated storageclass.kubernetes.io/is-default-class,
    the newest when several are), as Kubernetes' DefaultStorageClass admission. No
    default class: the field stays unset and only a class-less PV can bind it."""

    store: Store | None = None

    def attach(self, store: Store) -> None:
        self.store = store

    def default_class(self) -> str:
        if self.store is None:
            return ""
        entries, _ = self.store.list_prefix(STORAGE_CLASS.prefix())
        defaults = [
            cast(storage_pb2.StorageClass, e.value) for e in entries if st.is_default_class(e.value)
        ]
        if not defaults:
            return ""
        newest = max(
            defaults,
            key=lambda c: (c.metadata.creation_timestamp.ToNanoseconds(), c.metadata.name),
        )
        return newest.metadata.name

    def prepare_create(self, obj: Message) -> None:
        super().prepare_create(obj)
        pvc = cast(storage_pb2.PersistentVolumeClaim, obj)
        pvc.status.phase = st.CLAIM_PENDING
        if not pvc.spec.HasField("storage_class_name"):
            name = self.default_class()
            if name:
                pvc.spec.storage_class_name = name

    def prepare_update(self, new: Message, old: Message) -> None:
        """A manifest applied again leaves out what the server filled in (the
        bound volume, the default class): keep them, as kubectl's merge would."""
        super().prepare_update(new, old)
        pvc, prev = (
            cast(storage_pb2.PersistentVolumeClaim, new),
            cast(storage_pb2.PersistentVolumeClaim, old),
        )
        if not pvc.spec.volume_name:
            pvc.spec.volume_name = prev.spec.volume_name
        if not pvc.spec.HasField("storage_class_name") and prev.spec.HasField("storage_class_name"):
            pvc.spec.storage_class_name = prev.spec.storage_class_name


class PersistentVolumeStrategy(Strategy):
    def prepare_create(self, obj: Message) -> None:
        super().prepare_create(obj)
        cast(storage_pb2.PersistentVolume, obj).status.phase = st.PV_PENDING

    def prepare_update(self, new: Message, old: Message) -> None:
        """A bound PV keeps its claimRef when an update leaves it out (a manifest
        applied again); a Released one may have it cleared to be reused."""
        super().prepare_update(new, old)
        pv, prev = cast(storage_pb2.PersistentVolume, new), cast(storage_pb2.PersistentVolume, old)
        if not pv.spec.HasField("claim_ref") and prev.status.phase == st.PV_BOUND:
            pv.spec.claim_ref.CopyFrom(prev.spec.claim_ref)


class NamespaceStrategy(Strategy):
    """Deleting a namespace marks it Terminating; the namespace controller deletes
    its content, then clears spec.finalizers, which removes it."""

    def held(self, obj: Message) -> bool:
        return bool(cast(core_pb2.Namespace, obj).spec.finalizers)

    def on_delete_marked(self, obj: Message) -> None:
        cast(core_pb2.Namespace, obj).status.phase = "Terminating"

    def deletion_grace(self, obj: Message, requested: int | None) -> int:
        name = cast(core_pb2.Namespace, obj).metadata.name
        if name in PROTECTED_NAMESPACES:
            raise errors.ApiError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f'namespace "{name}" is protected and may not be deleted',
            )
        return 0


class ServiceStrategy(Strategy):
    """Allocates cluster IPs and node ports as records in the store
    (master/allocators.py); a taken IP or port is rejected.

    Repair (`repair`), as Kubernetes' allocation repair controllers: it makes a
    record for every Service holding an IP or port without one (Services written
    before records existed, so an upgraded cluster needs no migration step), and
    deletes records older than REPAIR_GRACE whose owner Service does not hold
    that value (a master died between taking it and writing the Service, or
    between deleting the Service and its records). The grace covers the time
    between a record's create and its Service's write, and clock skew between
    masters. Every master repairs, not only the Lease holder: every write a
    pass makes is conditional (create-if-absent, delete-if-unchanged), so passes
    racing on two masters are harmless, and it keeps working while no leader is
    elected (the controllers' Lease is the controllers' business, not the API's).
    A master repairs before its first allocation (so an upgraded store is
    migrated before anything new is handed out) and then again whenever an
    allocation finds the last pass older than REPAIR_INTERVAL; `repair_loop`
    runs it on a timer as well when the master supervises it.
    """

    REPAIR_GRACE = 60.0
    REPAIR_INTERVAL = 180.0

    def __init__(self, kind: Kind, service_cidr: str = DEFAULT_SERVICE_CIDR) -> None:
        super().__init__(kind)
        self.service_cidr = service_cidr
        self._store: Store | None = None
        self._ips: IPAllocator | None = None
        self._node_ports: PortAllocator | None = None
        self._repair_lock = asyncio.Lock()
        self._repaired_at: float | None = None  # loop time of the last pass

    def attach(self, store: Store) -> None:
        self._store = store
        self._ips = IPAllocator(store, self.service_cidr)
        self._node_ports = PortAllocator(store, *NODE_PORT_RANGE)

    @property
    def ips(self) -> IPAllocator:
        assert self._ips is not None, "ServiceStrategy used before Registry attached a store"
        return self._ips

    @property
    def node_ports(self) -> PortAllocator:
        assert self._node_ports is not None, "ServiceStrategy used before attach"
        return self._node_ports

    def load(self, services: list[Message]) -> None:
        """Nothing to load: what is taken lives in the store. The first
        allocation repairs first (server.py may instead await `repair()`)."""

    # ------------------------------------------------------------------ repair

    async def _repair_if_due(self) -> None:
        loop = asyncio.get_running_loop()
        last = self._repaired_at
        if last is not None and loop.time() - last < self.REPAIR_INTERVAL:
            return
        async with self._repair_lock:
            if self._repaired_at != last:
                return  # someone else repaired while we waited
            await self.repair()

    async def repair_loop(self) -> None:
        """Repair every REPAIR_INTERVAL (for the master's supervisor; the master
        repairs once itself before serving)."""
        while True:
            await asyncio.sleep(self.REPAIR_INTERVAL)
            async with self._repair_lock:
                await self.repair()

    async def repair(self) -> tuple[int, int]:
        """One pass; returns (records made, records deleted)."""
        assert self._store is not None
        made = deleted = 0
        services = self._store.list_prefix(self.kind.prefix())[0]
        for entry in services:
            svc = cast(core_pb2.Service, entry.value)
            owner = owner_of(svc)
            if self.ips.in_range(svc.spec.cluster_ip):
                made += await self.ips.adopt(self.ips.parse(svc.spec.cluster_ip), owner)
            for port in svc.spec.ports:
                if self.node_ports.in_range(port.node_port):
                    made += await self.node_ports.adopt(port.node_port, owner)
        cutoff = time.time() - self.REPAIR_GRACE
        for allocator in (self.ips, self.node_ports):
            for record in allocator.records():
                allocation = cast(internal_pb2.Allocation, record.value)
                if allocation.metadata.creation_timestamp.seconds > cutoff:
                    continue  # its Service may be being written right now
                if self._owner_holds(allocation, allocator is self.ips):
                    continue
                if await allocator.delete_record(record):
                    deleted += 1
                    log.warning(
                        "leaked service allocation released",
                        key=record.key,
                        owner=f"{allocation.owner.namespace}/{allocation.owner.name}",
                    )
        self._repaired_at = asyncio.get_running_loop().time()
        return made, deleted

    def _owner_holds(self, allocation: internal_pb2.Allocation, is_ip: bool) -> bool:
        assert self._store is not None
        owner = allocation.owner
        entry = self._store.get(self.kind.key(owner.namespace, owner.name))
        if entry is None:
            return False
        svc = cast(core_pb2.Service, entry.value)
        if svc.metadata.uid != owner.uid:
            return False
        if is_ip:
            return svc.spec.cluster_ip == allocation.metadata.name
        return any(str(p.node_port) == allocation.metadata.name for p in svc.spec.ports)

    # ------------------------------------------------------------------ hooks

    async def before_create(self, obj: Message) -> Callable[[], Awaitable[None]]:
        await self._repair_if_due()
        svc = cast(core_pb2.Service, obj)
        owner = owner_of(svc)
        taken_ip = ""
        taken_ports: list[int] = []

        async def undo() -> None:
            if taken_ip:
                await self.ips.release(taken_ip, owner)
            for port in taken_ports:
                await self.node_ports.release(port, owner)

        try:
            if svc.spec.type == "ExternalName":
                pass  # a DNS alias: no cluster IP, no node ports
            elif svc.spec.cluster_ip == "":
                svc.spec.cluster_ip = taken_ip = await self.ips.allocate(owner)
            elif svc.spec.cluster_ip != "None":
                await self.ips.reserve(svc.spec.cluster_ip, owner)
                taken_ip = svc.spec.cluster_ip
            del svc.spec.cluster_ips[:]
            if svc.spec.cluster_ip:
                svc.spec.cluster_ips.append(svc.spec.cluster_ip)
            taken_ports += await self._take_node_ports(svc, set())
        except errors.ApiError:
            await undo()
            raise
        except AllocationError as exc:
            await undo()
            raise errors.invalid(
                "Service", svc.metadata.name, [FieldViolation("spec.clusterIP", str(exc))]
            ) from None
        except BaseException:
            await undo()
            raise
        return undo

    async def _take_node_ports(self, svc: core_pb2.Service, already_ours: set[int]) -> list[int]:
        taken: list[int] = []
        if svc.spec.type not in NODE_PORT_TYPES:
            return taken
        owner = owner_of(svc)
        try:
            for i, port in enumerate(svc.spec.ports):
                if port.node_port in already_ours:
                    continue
                try:
                    if port.node_port == 0:
                        port.node_port = await self.node_ports.allocate(owner)
                    else:
                        await self.node_ports.reserve(port.node_port, owner)
                except AllocationError as exc:
                    raise errors.invalid(
                        "Service",
                        svc.metadata.name,
                        [FieldViolation(f"spec.ports[{i}].nodePort", str(exc))],
                    ) from None
                taken.append(port.node_port)
        except BaseException:
            for port_number in taken:
                await self.node_ports.release(port_number, owner)
            raise
        return taken

    def prepare_update(self, new: Message, old: Message) -> None:
        super().prepare_update(new, old)
        svc, prev = cast(core_pb2.Service, new), cast(core_pb2.Service, old)
        # Re-applying a manifest without the allocated values keeps them.
        if not svc.spec.cluster_ip:
            svc.spec.cluster_ip = prev.spec.cluster_ip
        if not svc.spec.cluster_ips:
            svc.spec.cluster_ips.extend(prev.spec.cluster_ips)
        if svc.spec.type in NODE_PORT_TYPES:
            old_ports = {(p.port, p.protocol or "TCP"): p.node_port for p in prev.spec.ports}
            for port in svc.spec.ports:
                if port.node_port == 0:
                    port.node_port = old_ports.get((port.port, port.protocol or "TCP"), 0)

    async def before_update(self, new: Message, old: Message) -> Callable[[], Awaitable[None]]:
        svc, prev = cast(core_pb2.Service, new), cast(core_pb2.Service, old)
        ours = {p.node_port for p in prev.spec.ports if p.node_port}
        if svc.spec.type in NODE_PORT_TYPES and any(
            p.node_port not in ours for p in svc.spec.ports
        ):
            await self._repair_if_due()
        taken = await self._take_node_ports(svc, ours)
        owner = owner_of(svc)

        async def undo() -> None:
            for port in taken:
                await self.node_ports.release(port, owner)

        return undo

    async def after_update(self, new: Message, old: Message) -> None:
        svc, prev = cast(core_pb2.Service, new), cast(core_pb2.Service, old)
        still = {p.node_port for p in svc.spec.ports}
        owner = owner_of(prev)
        for port in prev.spec.ports:
            if port.node_port and port.node_port not in still:
                await self.node_ports.release(port.node_port, owner)

    async def after_delete(self, obj: Message) -> None:
        svc = cast(core_pb2.Service, obj)
        owner = owner_of(svc)
        if svc.spec.cluster_ip and svc.spec.cluster_ip != "None":
            await self.ips.release(svc.spec.cluster_ip, owner)
        for port in svc.spec.ports:
            if port.node_port:
                await self.node_ports.release(port.node_port, owner)


def strategy_for(
    kind: Kind,
    service_cidr: str = DEFAULT_SERVICE_CIDR,
    loopback_node_addresses: bool = False,
    cluster_cidr: str = "",
) -> Strategy:
    if kind is POD:
        return PodStrategy(kind)
    if kind is NODE:
        return NodeStrategy(kind, loopback_node_addresses, cluster_cidr)
    if kind is NAMESPACE:
        return NamespaceStrategy(kind)
    if kind is SERVICE:
        return ServiceStrategy(kind, service_cidr)
    if kind is JOB:
        return JobStrategy(kind)
    if kind is PERSISTENT_VOLUME_CLAIM:
        return PersistentVolumeClaimStrategy(kind)
    if kind is PERSISTENT_VOLUME:
        return PersistentVolumeStrategy(kind)
    return Strategy(kind)
