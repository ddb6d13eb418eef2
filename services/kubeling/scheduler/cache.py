"""The scheduler's picture of the cluster: per-node allocatable and requested
resources in plain parallel lists indexed by node slot, updated one watch event
(or one assumption) at a time, so scheduling a pod never lists anything.

A pod is accounted once per key: an assumed pod (bound by us, watch event not
seen yet) becomes confirmed when its event arrives, and is forgotten if the bind
fails. Pods bound to a node not seen yet get a slot that is not `present`.
"""

from __future__ import annotations

from dataclasses import dataclass

from kubeling.scheduler.framework import Allocatable, HostPort, NodeStatic, PodInfo, PortTable
from kubeling.v1 import core_pb2


@dataclass(slots=True)
class Placed:
    slot: int
    uid: str
    cpu: int
    memory: int
    nz_cpu: int
    nz_memory: int
    host_ports: tuple[HostPort, ...]
    owner: str
    assumed: bool


class NodeCache:
    def __init__(self) -> None:
        self.names: list[str] = []
        self.slot_of: dict[str, int] = {}
        self.present: list[bool] = []
        self.static: list[NodeStatic | None] = []
        self.alloc_cpu: list[int] = []
        self.alloc_mem: list[int] = []
        self.alloc_pods: list[int] = []
        self.req_cpu: list[int] = []
        self.req_mem: list[int] = []
        self.nz_cpu: list[int] = []
        self.nz_mem: list[int] = []
        self.pod_count: list[int] = []
        self.ports: list[PortTable | None] = []
        # owner uid -> slot -> replicas of that owner on the node.
        self.owners: dict[str, dict[int, int]] = {}
        self.pods: dict[str, Placed] = {}
        self.node_count = 0
        # Bumped whenever a node's static part changes: invalidates static results.
        self.generation = 0

    # ------------------------------------------------------------------ nodes

    def _slot(self, name: str) -> int:
        slot = self.slot_of.get(name)
        if slot is None:
            slot = len(self.names)
            self.slot_of[name] = slot
            self.names.append(name)
            self.present.append(False)
            self.static.append(None)
            for column in (self.alloc_cpu, self.alloc_mem, self.alloc_pods, self.req_cpu,
                           self.req_mem, self.nz_cpu, self.nz_mem, self.pod_count):  # fmt: skip
                column.append(0)
            self.ports.append(None)
        return slot

    def upsert_node(self, node: core_pb2.Node) -> bool:
        """Add or refresh a node; True when anything scheduling depends on changed
        (heartbeat-only updates return False, so they wake no pods)."""
        slot = self._slot(node.metadata.name)
        static = NodeStatic.of(node)
        alloc = Allocatable.of(node)
        changed = not self.present[slot] or self.static[slot] != static
        if changed:
            self.generation += 1
        if not self.present[slot]:
            self.present[slot] = True
            self.node_count += 1
        self.static[slot] = static
        if (self.alloc_cpu[slot], self.alloc_mem[slot], self.alloc_pods[slot]) != (
            alloc.cpu, alloc.memory, alloc.pods,
        ):  # fmt: skip
            self.alloc_cpu[slot] = alloc.cpu
            self.alloc_mem[slot] = alloc.memory
            self.alloc_pods[slot] = alloc.pods
            changed = True
        return changed

    def remove_node(self, name: str) -> None:
        # The slot stays (pods on it may still be deleted later); it just stops
        # being a candidate.
        slot = self.slot_of.get(name)
        if slot is None or not self.present[slot]:
            return
        self.present[slot] = False
        self.static[slot] = None
        self.node_count -= 1
        self.generation += 1

    # ------------------------------------------------------------------- pods

    def _account(self, placed: Placed, sign: int) -> None:
        slot = placed.slot
        self.req_cpu[slot] += sign * placed.cpu
        self.req_mem[slot] += sign * placed.memory
        self.nz_cpu[slot] += sign * placed.nz_cpu
        self.nz_mem[slot] += sign * placed.nz_memory
        self.pod_count[slot] += sign
        if placed.host_ports:
            table = self.ports[slot]
            if table is None:
                table = self.ports[slot] = PortTable()
            table.add(placed.host_ports, sign)
        if placed.owner:
            counts = self.owners.setdefault(placed.owner, {})
            count = counts.get(slot, 0) + sign
            if count > 0:
                counts[slot] = count
            else:
                counts.pop(slot, None)
                if not counts:
                    del self.owners[placed.owner]

    def assume(self, pod: PodInfo, node_name: str) -> None:
        """Account a pod we are binding, before the API confirms it."""
        self._place(pod, node_name, assumed=True)

    def _place(self, pod: PodInfo, node_name: str, assumed: bool) -> None:
        old = self.pods.get(pod.key)
        if old is not None:
            if old.uid == pod.uid and self.names[old.slot] == node_name:
                old.assumed = old.assumed and assumed
                return
            self._account(old, -1)
        placed = Placed(
            self._slot(node_name), pod.uid, pod.cpu, pod.memory, pod.nz_cpu,
            pod.nz_memory, pod.host_ports, pod.owner, assumed,
        )  # fmt: skip
        self.pods[pod.key] = placed
        self._account(placed, 1)

    def forget(self, key: str, uid: str) -> None:
        """Undo an assumption whose bind failed (a confirmed pod stays)."""
        placed = self.pods.get(key)
        if placed is not None and placed.uid == uid and placed.assumed:
            del self.pods[key]
            self._account(placed, -1)

    def observe_pod(self, pod: core_pb2.Pod) -> bool:
        """Apply a watched pod; True when it freed resources (may unblock pods)."""
        key = f"{pod.metadata.namespace}/{pod.metadata.name}"
        if not pod.spec.node_name:
            return False  # pending: an assumption for it must survive its other updates
        if pod.status.phase in ("Succeeded", "Failed"):
            # Finished pods no longer hold resources (kube-scheduler ignores them too).
            return self.remove_pod(key)
        old = self.pods.get(key)
        if old is not None and old.uid == pod.metadata.uid and not old.assumed:
            return False  # requests and node are fixed once bound: nothing to redo
        self._place(PodInfo.of(pod), pod.spec.node_name, assumed=False)
        return False

    def remove_pod(self, key: str) -> bool:
        placed = self.pods.pop(key, None)
        if placed is None:
            return False
        self._account(placed, -1)
        return True
