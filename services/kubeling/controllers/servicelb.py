"""ServiceLB: load balancer addresses for Services of type LoadBalancer on bare
machines, as k3s's ServiceLB does.

There is no cloud to hand out addresses, so every node is the load balancer: a
LoadBalancer Service gets `status.loadBalancer.ingress` set to the InternalIP of
every Ready, schedulable node (sorted, deduplicated), and kube-proxy on each node
answers on those addresses at the Service's ports (proxy/rules.py maps them like
the ClusterIP). A Service that asks for `spec.loadBalancerIP` gets just that
address when it is one of those nodes' IPs, and all of them otherwise (the
request cannot be honoured, and an empty ingress would publish nothing).

Two Services cannot answer on the same address, protocol and port (kube-proxy's
map has one entry per `ip . proto . port`; k3s's ServiceLB pods would fight over
the host port). So addresses are handed out in order of Service age (creation
time, then namespace/name): a node address is left out of a Service's ingress
when an older LoadBalancer Service already publishes it on a port and protocol
they share, or when any Service lists it in `spec.externalIPs` on such a port. A
Service left with no address has an empty ingress (pending, as in k3s) until the
older one goes or changes.

A Service whose type changes away from LoadBalancer has its ingress cleared; a
node that comes, goes, turns Ready or unschedulable or changes its InternalIP
resyncs every LoadBalancer Service (its heartbeats do not), and so does any
Service change (one may free or take addresses). The assignment is recomputed
from the caches for each sync: linear in the number of Services, fine at this
project's scale. Status is written only when it differs,
through UpdateStatus.
"""

from __future__ import annotations

from typing import Any

import grpc
import structlog

from kubeling.api.objects import clone
from kubeling.client.informer import Informer, WorkQueue, informers_running, key_of, run_workers
from kubeling.controllers.manager import ControllerContext, register
from kubeling.v1 import core_pb2

log = structlog.get_logger(__name__)

LOAD_BALANCER = "LoadBalancer"


def _node_ready(node: core_pb2.Node) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions)


def node_addresses(nodes: list[core_pb2.Node]) -> list[str]:
    """The InternalIPs of the Ready, schedulable nodes, sorted and deduplicated."""
    addresses = {
        a.address
        for node in nodes
        if _node_ready(node) and not node.spec.unschedulable
        for a in node.status.addresses
        if a.type == "InternalIP" and a.address
    }
    return sorted(addresses)


def desired_ingress(svc: core_pb2.Service, addresses: list[str]) -> list[str]:
    """The ingress IPs the Service asks for (empty unless a LoadBalancer), before
    conflicts with other Services are taken out."""
    if svc.spec.type != LOAD_BALANCER:
        return []
    wanted = svc.spec.load_balancer_ip
    if wanted and wanted in addresses:
        return [wanted]
    return addresses


def _ports(svc: core_pb2.Service) -> set[tuple[str, int]]:
    return {((p.protocol or "TCP").upper(), p.port) for p in svc.spec.ports}


def _age(svc: core_pb2.Service) -> tuple[int, int, str, str]:
    stamp = svc.metadata.creation_timestamp
    return (stamp.seconds, stamp.nanos, svc.metadata.namespace, svc.metadata.name)


def assign_ingress(
    services: list[core_pb2.Service], addresses: list[str]
) -> dict[tuple[str, str], list[str]]:
    """Every Service's ingress IPs, by (namespace, name): what it asks for, less
    the addresses an older LoadBalancer Service, or any Service's externalIPs,
    already use on a shared protocol and port."""
    taken: set[tuple[str, str, int]] = set()  # (ip, protocol, port)
    for svc in services:
        taken.update(
            (ip, proto, port) for ip in svc.spec.external_ips for proto, port in _ports(svc)
        )
    out: dict[tuple[str, str], list[str]] = {}
    for svc in sorted(services, key=_age):
        ports = _ports(svc)
        granted = [
            ip
            for ip in desired_ingress(svc, addresses)
            if not any((ip, proto, port) in taken for proto, port in ports)
        ]
        taken.update((ip, proto, port) for ip in granted for proto, port in ports)
        out[(svc.metadata.namespace, svc.metadata.name)] = granted
    return out


@register("servicelb")
class ServiceLBController:
    def __init__(self, context: ControllerContext) -> None:
        self.api = context.api
        self.workers = context.settings.workers
        self.services = Informer(self.api.services)
        self.nodes = Informer(self.api.nodes)
        self.queue = WorkQueue()
        self.services.add_handler(self._on_service)
        self.nodes.add_handler(self._on_node)

    def _on_service(self, kind: str, old: Any, new: Any) -> None:
        if new is not None:
            self.queue.add(key_of(new))
        # It may have taken or freed addresses other LoadBalancers want.
        self._enqueue_load_balancers()

    def _on_node(self, kind: str, old: Any, new: Any) -> None:
        # Only what the node publishes matters, not its heartbeats: each status
        # update would otherwise resync every LoadBalancer Service.
        before = node_addresses([old]) if old is not None else []
        after = node_addresses([new]) if new is not None and kind != "DELETED" else []
        if before != after:
            self._enqueue_load_balancers()

    def _enqueue_load_balancers(self) -> None:
        # A sync that changes nothing writes nothing, so over-queueing is cheap.
        for svc in self.services.list():
            if svc.spec.type == LOAD_BALANCER:
                self.queue.add(key_of(svc))

    async def run(self) -> None:
        informers: list[Informer[Any]] = [self.services, self.nodes]
        async with informers_running(informers, "servicelb"):
            await run_workers(self.queue, self.sync, self.workers, "servicelb")

    async def sync(self, key: str) -> None:
        namespace, name = key.split("/", 1)
        svc = self.services.get(namespace, name)
        if svc is None or svc.metadata.HasField("deletion_timestamp"):
            return
        everyone = [
            s for s in self.services.list() if not s.metadata.HasField("deletion_timestamp")
        ]
        assigned = assign_ingress(everyone, node_addresses(self.nodes.list()))
        wanted = assigned.get((namespace, name), [])
        # A hostname entry (ip "") is never ours: it differs, so it is replaced.
        if [i.ip for i in svc.status.load_balancer.ingress] == wanted:
            return
        updated = clone(svc)
        del updated.status.load_balancer.ingress[:]
        for ip in wanted:
            updated.status.load_balancer.ingress.add(ip=ip)
        try:
            await self.api.services.update_status(updated)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return  # deleted meanwhile
            raise  # a conflict: retried from the newer cached copy
        log.info("load balancer ingress set", service=key, ingress=wanted)
