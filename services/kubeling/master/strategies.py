"""The per-kind rules that differ from the generic registry behaviour."""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Callable
from typing import cast

import grpc
from google.protobuf.message import Message

from kubeling.api import errors
from kubeling.api.errors import FieldViolation
from kubeling.api.kinds import NAMESPACE, NODE, POD, SERVICE, Kind
from kubeling.master.allocators import AllocationError, IPAllocator, PortAllocator
from kubeling.master.registry import Strategy
from kubeling.master.validation import NODE_PORT_RANGE
from kubeling.master.validation.core import node_loopback_addresses
from kubeling.v1 import core_pb2

DEFAULT_SERVICE_CIDR = "10.96.0.0/12"
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

    async def before_create(self, obj: Message) -> Callable[[], None]:
        self._outside_cluster_cidr(cast(core_pb2.Node, obj), None)
        return await super().before_create(obj)

    async def before_update(self, new: Message, old: Message) -> Callable[[], None]:
        self._outside_cluster_cidr(cast(core_pb2.Node, new), cast(core_pb2.Node, old))
        return await super().before_update(new, old)


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
    """Allocates cluster IPs and node ports; a taken IP or port is rejected."""

    def __init__(self, kind: Kind, service_cidr: str = DEFAULT_SERVICE_CIDR) -> None:
        super().__init__(kind)
        self.ips = IPAllocator(service_cidr)
        self.node_ports = PortAllocator(*NODE_PORT_RANGE)

    def load(self, services: list[Message]) -> None:
        for obj in services:
            svc = cast(core_pb2.Service, obj)
            if svc.spec.cluster_ip and svc.spec.cluster_ip != "None":
                # Outside a changed service CIDR: keep serving it.
                with contextlib.suppress(AllocationError):
                    self.ips.reserve(svc.spec.cluster_ip)
            for port in svc.spec.ports:
                if port.node_port and port.node_port not in self.node_ports:
                    with contextlib.suppress(AllocationError):
                        self.node_ports.reserve(port.node_port)

    async def before_create(self, obj: Message) -> Callable[[], None]:
        svc = cast(core_pb2.Service, obj)
        taken_ip = ""
        taken_ports: list[int] = []

        def undo() -> None:
            if taken_ip:
                self.ips.release(taken_ip)
            for port in taken_ports:
                self.node_ports.release(port)

        try:
            if svc.spec.cluster_ip == "":
                svc.spec.cluster_ip = taken_ip = self.ips.allocate()
            elif svc.spec.cluster_ip != "None":
                self.ips.reserve(svc.spec.cluster_ip)
                taken_ip = svc.spec.cluster_ip
            del svc.spec.cluster_ips[:]
            svc.spec.cluster_ips.append(svc.spec.cluster_ip)
            taken_ports += self._take_node_ports(svc, set())
        except errors.ApiError:
            undo()
            raise
        except AllocationError as exc:
            undo()
            raise errors.invalid(
                "Service", svc.metadata.name, [FieldViolation("spec.clusterIP", str(exc))]
            ) from None
        return undo

    def _take_node_ports(self, svc: core_pb2.Service, already_ours: set[int]) -> list[int]:
        taken: list[int] = []
        if svc.spec.type != "NodePort":
            return taken
        try:
            for i, port in enumerate(svc.spec.ports):
                if port.node_port in already_ours:
                    continue
                try:
                    if port.node_port == 0:
                        port.node_port = self.node_ports.allocate()
                    else:
                        self.node_ports.reserve(port.node_port)
                except AllocationError as exc:
                    raise errors.invalid(
                        "Service",
                        svc.metadata.name,
                        [FieldViolation(f"spec.ports[{i}].nodePort", str(exc))],
                    ) from None
                taken.append(port.node_port)
        except errors.ApiError:
            for port_number in taken:
                self.node_ports.release(port_number)
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
        if svc.spec.type == "NodePort":
            old_ports = {(p.port, p.protocol or "TCP"): p.node_port for p in prev.spec.ports}
            for port in svc.spec.ports:
                if port.node_port == 0:
                    port.node_port = old_ports.get((port.port, port.protocol or "TCP"), 0)

    async def before_update(self, new: Message, old: Message) -> Callable[[], None]:
        svc, prev = cast(core_pb2.Service, new), cast(core_pb2.Service, old)
        ours = {p.node_port for p in prev.spec.ports if p.node_port}
        taken = self._take_node_ports(svc, ours)

        def undo() -> None:
            for port in taken:
                self.node_ports.release(port)

        return undo

    def after_update(self, new: Message, old: Message) -> None:
        svc, prev = cast(core_pb2.Service, new), cast(core_pb2.Service, old)
        still = {p.node_port for p in svc.spec.ports}
        for port in prev.spec.ports:
            if port.node_port and port.node_port not in still:
                self.node_ports.release(port.node_port)

    def after_delete(self, obj: Message) -> None:
        svc = cast(core_pb2.Service, obj)
        if svc.spec.cluster_ip and svc.spec.cluster_ip != "None":
            self.ips.release(svc.spec.cluster_ip)
        for port in svc.spec.ports:
            if port.node_port:
                self.node_ports.release(port.node_port)


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
    return Strategy(kind)
