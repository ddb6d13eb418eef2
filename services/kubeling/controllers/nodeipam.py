"""Node IPAM: give every Node a pod CIDR from the cluster CIDR.

What kube-controller-manager's node IPAM controller does with
`--allocate-node-cidrs --cluster-cidr --node-cidr-mask-size` (the range
allocator): the cluster CIDR is cut into subnets of `node_cidr_mask_size` bits;
a Node without `spec.podCIDR` gets the lowest free one (`spec.podCIDR` and
`spec.podCIDRs`), and a deleted Node's subnet becomes free again. On start
every subnet that Nodes already hold is marked taken before anything is
allocated, so a restarted controller never hands out a CIDR twice. When the
range is exhausted the Node gets a Warning event `CIDRNotAvailable` and waits
(retried when a subnet is freed, and periodically).

The allocation is kept in memory only: the Nodes themselves are the record.
With an empty `cluster_cidr` the controller does nothing (Kubernetes'
`--allocate-node-cidrs=false`).
"""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any

import grpc
import structlog

from kubeling.api.objects import clone
from kubeling.client.informer import Informer, WorkQueue, informers_running, run_workers
from kubeling.controllers.manager import ControllerContext, register
from kubeling.v1 import core_pb2

log = structlog.get_logger(__name__)

# Kubernetes refuses a node mask more than 16 bits longer than the cluster's.
MAX_SUBNET_BITS = 16
EXHAUSTED_RETRY = 10.0  # seconds before a node without a free CIDR tries again
_CONFLICT_RETRIES = 5


class CIDRSet:
    """The subnets of `cluster_cidr` with prefix `mask_size`, each free or held by
    one or more Nodes (a CIDR found on two Nodes stays taken until both are gone)."""

    def __init__(self, cluster_cidr: str, mask_size: int) -> None:
        network = ipaddress.ip_network(cluster_cidr.strip(), strict=False)
        if not network.prefixlen <= mask_size <= network.max_prefixlen:
            raise ValueError(
                f"node CIDR mask size {mask_size} must be between the cluster CIDR's "
                f"prefix {network.prefixlen} and {network.max_prefixlen}"
            )
        if mask_size - network.prefixlen > MAX_SUBNET_BITS:
            raise ValueError(
                f"node CIDR mask size {mask_size} is more than {MAX_SUBNET_BITS} bits "
                f"larger than the cluster CIDR {network}"
            )
        self.network = network
        self.mask_size = mask_size
        self.size = 1 << (mask_size - network.prefixlen)
        self._shift = network.max_prefixlen - mask_size
        self._base = int(network.network_address)
        self._holders: dict[int, set[str]] = {}  # subnet index -> node names
        self._held: dict[str, set[int]] = {}  # node name -> subnet indexes
        self._hint = 0  # no free subnet below this index

    def subnet(self, index: int) -> str:
        address = ipaddress.ip_address(self._base + (index << self._shift))
        return f"{address}/{self.mask_size}"

    def indexes(self, cidr: str) -> range:
        """The subnets a CIDR overlaps (none for one outside the cluster CIDR)."""
        try:
            network = ipaddress.ip_network(cidr.strip(), strict=False)
        except ValueError:
            return range(0)
        if network.version != self.network.version or not network.overlaps(self.network):
            return range(0)
        first = max(int(network.network_address), self._base)
        last = min(int(network.broadcast_address), int(self.network.broadcast_address))
        return range((first - self._base) >> self._shift, ((last - self._base) >> self._shift) + 1)

    def free_count(self) -> int:
        return self.size - len(self._holders)

    def held_by(self, node: str) -> list[str]:
        return [self.subnet(i) for i in sorted(self._held.get(node, ()))]

    def occupy(self, node: str, cidrs: list[str]) -> None:
        """Record that `node` holds exactly these CIDRs (replacing what it held)."""
        wanted = {i for cidr in cidrs for i in self.indexes(cidr)}
        self._set(node, wanted)

    def release(self, node: str) -> bool:
        """Free what `node` held; True when a subnet became free."""
        before = len(self._holders)
        self._set(node, set())
        return len(self._holders) < before

    def allocate(self, node: str) -> str | None:
        """The lowest free subnet, now held by `node`; None when none is free."""
        index = self._hint
        while index < self.size and index in self._holders:
            index += 1
        self._hint = index
        if index >= self.size:
            return None
        self._set(node, self._held.get(node, set()) | {index})
        return self.subnet(index)

    def _set(self, node: str, wanted: set[int]) -> None:
        held = self._held.pop(node, set())
        for index in held - wanted:
            holders = self._holders.get(index)
            if holders is not None:
                holders.discard(node)
                if not holders:
                    del self._holders[index]
                    self._hint = min(self._hint, index)
        for index in wanted:
            self._holders.setdefault(index, set()).add(node)
        if wanted:
            self._held[node] = wanted


def _cidrs_of(node: core_pb2.Node) -> list[str]:
    cidrs = list(node.spec.pod_cidrs)
    if node.spec.pod_cidr and node.spec.pod_cidr not in cidrs:
        cidrs.insert(0, node.spec.pod_cidr)
    return cidrs


@register("nodeipam")
class NodeIpamController:
    def __init__(self, context: ControllerContext) -> None:
        self.api = context.api
        self.recorder = context.recorder
        self.settings = context.settings
        self.nodes = Informer(self.api.nodes)
        self.queue = WorkQueue()
        self.cidrs: CIDRSet | None = None
        self._waiting: set[str] = set()  # nodes waiting for a CIDR to be freed
        self.nodes.add_handler(self._on_node)

    def _on_node(self, kind: str, old: Any, new: Any) -> None:
        if kind == "DELETED" or new is None:  # DELETED carries the last state as `new`
            self.queue.add((new if new is not None else old).metadata.name)
            return
        if old is not None and _cidrs_of(old) == _cidrs_of(new) and _cidrs_of(new):
            return  # status updates and the like: nothing to allocate
        self.queue.add(new.metadata.name)

    async def run(self) -> None:
        cluster_cidr = self.settings.cluster_cidr
        if not cluster_cidr:
            await asyncio.Event().wait()  # allocation is off: nothing to do, ever
            return
        try:
            self.cidrs = CIDRSet(cluster_cidr, self.settings.node_cidr_mask_size)
        except ValueError as exc:
            log.error("node IPAM disabled: bad cluster CIDR", cidr=cluster_cidr, error=str(exc))
            await asyncio.Event().wait()
            return
        async with informers_running([self.nodes], "nodeipam"):
            # Everything Nodes already hold is taken before anything is handed out.
            for node in self.nodes.list():
                self.cidrs.occupy(node.metadata.name, _cidrs_of(node))
            log.info(
                "node IPAM running",
                cluster_cidr=str(self.cidrs.network),
                mask_size=self.cidrs.mask_size,
                free=self.cidrs.free_count(),
            )
            await run_workers(self.queue, self.sync, self.settings.workers, "nodeipam")

    async def sync(self, name: str) -> None:
        cidrs = self.cidrs
        assert cidrs is not None
        node = self.nodes.get("", name)
        if node is None:
            self._release(name)
            return
        if _cidrs_of(node):
            self._waiting.discard(name)
            cidrs.occupy(name, _cidrs_of(node))
            return
        # Ours from an earlier attempt whose update failed, or a fresh one.
        held = cidrs.held_by(name)
        cidr = held[0] if held else cidrs.allocate(name)
        if cidr is None:
            self._waiting.add(name)
            log.warning("no pod CIDR available", node=name, cluster_cidr=str(cidrs.network))
            self.recorder.record(
                node, "Warning", "CIDRNotAvailable", f"Node {name} status is now: CIDRNotAvailable"
            )
            self.queue.add_after(name, EXHAUSTED_RETRY)
            return
        self._waiting.discard(name)
        await self._assign(node, cidr)

    async def _assign(self, node: core_pb2.Node, cidr: str) -> None:
        """Write the CIDR into the Node, re-reading it on conflicts."""
        cidrs = self.cidrs
        assert cidrs is not None
        name = node.metadata.name
        for attempt in range(_CONFLICT_RETRIES):
            if _cidrs_of(node):
                # Someone (a kubelet with --pod-cidr) was faster: keep theirs.
                cidrs.occupy(name, _cidrs_of(node))
                return
            updated = clone(node)
            updated.spec.pod_cidr = cidr
            del updated.spec.pod_cidrs[:]
            updated.spec.pod_cidrs.append(cidr)
            try:
                await self.api.nodes.update(updated)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    self._release(name)
                    return
                if exc.code() != grpc.StatusCode.ABORTED or attempt == _CONFLICT_RETRIES - 1:
                    raise  # retried with back-off; the CIDR stays reserved for it
                try:
                    node = await self.api.nodes.get(name)
                except grpc.aio.AioRpcError as get_error:
                    if get_error.code() == grpc.StatusCode.NOT_FOUND:
                        self._release(name)
                        return
                    raise
                continue
            log.info("pod CIDR assigned", node=name, cidr=cidr)
            return

    def _release(self, name: str) -> None:
        cidrs = self.cidrs
        assert cidrs is not None
        self._waiting.discard(name)
        freed = cidrs.held_by(name)
        if cidrs.release(name):
            log.info("pod CIDR released", node=name, cidrs=freed)
            for waiting in sorted(self._waiting):
                self.queue.add(waiting)
