"""What the scheduler knows about one pod and one node, and the checks between them.

Everything here is pure (plain objects in, answers out) so it is unit-tested
without a master. The rules follow kube-scheduler's default plugins:
NodeUnschedulable, TaintToleration, NodeAffinity, NodePorts, NodeResourcesFit,
NodeResourcesBalancedAllocation, and owner spreading; the failure reasons use
Kubernetes' wording so `describe` output reads the same.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

from kubeling.api.quantity import QuantityError, as_int_bytes, cpu_millis, parse_quantity
from kubeling.v1 import core_pb2

DEFAULT_SCHEDULER = "default-scheduler"
# kube-scheduler scores a container without requests as if it asked for this much,
# so that empty pods still spread instead of piling onto one node.
DEFAULT_CPU_MILLIS = 100
DEFAULT_MEMORY_BYTES = 200 * 1024 * 1024

TAINT_NOT_READY = "node.kubernetes.io/not-ready"
TAINT_UNSCHEDULABLE = "node.kubernetes.io/unschedulable"

REASON_NOT_READY = "node(s) were not ready"
REASON_UNSCHEDULABLE = "node(s) were unschedulable"
REASON_AFFINITY = "node(s) didn't match Pod's node affinity/selector"
REASON_PORTS = "node(s) didn't have free ports for the requested pod ports"
REASON_CPU = "Insufficient cpu"
REASON_MEMORY = "Insufficient memory"
REASON_PODS = "Too many pods"

WILDCARD_IP = "0.0.0.0"

HostPort = tuple[str, str, int]  # (host IP, protocol, port)
Taint = tuple[str, str, str]  # (key, value, effect)


def _quantity(text: str) -> Fraction:
    try:
        return parse_quantity(text)
    except QuantityError:
        return Fraction(0)  # the master validates; a bad value must not stop the loop


@functools.lru_cache(maxsize=4096)
def _requests(cpu_text: str | None, mem_text: str | None) -> tuple[int, int, int, int]:
    # Cached: replicas repeat the same few request strings, and parsing them into
    # Fractions costs more than the rest of a scheduling decision's pod work.
    cpu = cpu_millis(_quantity(cpu_text)) if cpu_text is not None else 0
    mem = as_int_bytes(_quantity(mem_text)) if mem_text is not None else 0
    nz_cpu = cpu if cpu_text is not None else DEFAULT_CPU_MILLIS
    nz_mem = mem if mem_text is not None else DEFAULT_MEMORY_BYTES
    return cpu, mem, nz_cpu, nz_mem


def container_requests(container: core_pb2.Container) -> tuple[int, int, int, int]:
    """(cpu millis, memory bytes, and the same with scoring defaults for absent ones)."""
    requests = container.resources.requests
    return _requests(requests.get("cpu"), requests.get("memory"))


def pod_requests(spec: core_pb2.PodSpec) -> tuple[int, int, int, int]:
    """The pod's effective requests: the sum over its containers, or the largest
    init container if that is more (init containers run one at a time, before)."""
    total = [0, 0, 0, 0]
    for container in spec.containers:
        for i, value in enumerate(container_requests(container)):
            total[i] += value
    for container in spec.init_containers:
        for i, value in enumerate(container_requests(container)):
            total[i] = max(total[i], value)
    return total[0], total[1], total[2], total[3]


def pod_host_ports(spec: core_pb2.PodSpec) -> tuple[HostPort, ...]:
    return tuple(
        (port.host_ip or WILDCARD_IP, port.protocol or "TCP", port.host_port)
        for container in spec.containers
        for port in container.ports
        if port.host_port > 0
    )


def controller_uid(pod: core_pb2.Pod) -> str:
    for ref in pod.metadata.owner_references:
        if ref.HasField("controller") and ref.controller:
            return ref.uid
    return ""


@dataclass(frozen=True, slots=True)
class PodInfo:
    """The parts of a pod the scheduler uses, computed once per attempt."""

    key: str
    uid: str
    cpu: int
    memory: int
    nz_cpu: int
    nz_memory: int
    host_ports: tuple[HostPort, ...]
    owner: str
    node_selector: Mapping[str, str]
    affinity: core_pb2.NodeSelector | None
    tolerations: Sequence[core_pb2.Toleration]
    # Pods with the same signature pass the same node-only checks: the cache keeps
    # the static result per signature (all replicas of a deployment share one).
    signature: tuple[object, ...]

    @classmethod
    def of(cls, pod: core_pb2.Pod) -> PodInfo:
        spec = pod.spec
        meta = pod.metadata
        cpu, mem, nz_cpu, nz_mem = pod_requests(spec)
        affinity: core_pb2.NodeSelector | None = None
        affinity_bytes = b""
        if spec.HasField("affinity") and spec.affinity.HasField("node_affinity"):
            node_affinity = spec.affinity.node_affinity
            if node_affinity.HasField("required_during_scheduling_ignored_during_execution"):
                affinity = node_affinity.required_during_scheduling_ignored_during_execution
                affinity_bytes = affinity.SerializeToString(deterministic=True)
        tolerations = list(spec.tolerations)
        signature = (
            tuple(sorted(spec.node_selector.items())),
            affinity is not None,
            affinity_bytes,
            tuple(t.SerializeToString(deterministic=True) for t in tolerations),
        )
        return cls(
            key=f"{meta.namespace}/{meta.name}" if meta.namespace else meta.name,
            uid=meta.uid,
            cpu=cpu,
            memory=mem,
            nz_cpu=nz_cpu,
            nz_memory=nz_mem,
            host_ports=pod_host_ports(spec),
            owner=controller_uid(pod),
            node_selector=dict(spec.node_selector),
            affinity=affinity,
            tolerations=tolerations,
            signature=signature,
        )


@dataclass(frozen=True, slots=True)
class NodeStatic:
    """The parts of a node whose change can turn pods' node-only checks around."""

    name: str
    labels: Mapping[str, str]
    ready: bool
    unschedulable: bool
    taints: tuple[Taint, ...]  # only NoSchedule and NoExecute: they gate scheduling

    @classmethod
    def of(cls, node: core_pb2.Node) -> NodeStatic:
        ready = any(c.type == "Ready" and c.status == "True" for c in node.status.conditions)
        taints = tuple(
            (t.key, t.value, t.effect)
            for t in node.spec.taints
            if t.effect in ("NoSchedule", "NoExecute")
        )
        return cls(
            name=node.metadata.name,
            labels=dict(node.metadata.labels),
            ready=ready,
            unschedulable=node.spec.unschedulable,
            taints=taints,
        )


@dataclass(frozen=True, slots=True)
class Allocatable:
    cpu: int
    memory: int
    pods: int

    @classmethod
    def of(cls, node: core_pb2.Node) -> Allocatable:
        # Absent resources are zero, as in Kubernetes: such a node fits no request.
        values = node.status.allocatable
        cpu = values.get("cpu")
        mem = values.get("memory")
        pods = values.get("pods")
        return cls(
            cpu=cpu_millis(_quantity(cpu)) if cpu is not None else 0,
            memory=as_int_bytes(_quantity(mem)) if mem is not None else 0,
            pods=int(_quantity(pods)) if pods is not None else 0,
        )


# ------------------------------------------------------------------- tolerations


def tolerates(toleration: core_pb2.Toleration, key: str, value: str, effect: str) -> bool:
    """Kubernetes' Toleration.ToleratesTaint: an empty effect matches every effect,
    an empty key (with Exists) every key; Equal (or no operator) compares values."""
    if toleration.effect and toleration.effect != effect:
        return False
    if toleration.key and toleration.key != key:
        return False
    if toleration.operator == "Exists":
        return True
    if toleration.operator in ("", "Equal"):
        return toleration.value == value
    return False


def tolerated(tolerations: Iterable[core_pb2.Toleration], taint: Taint) -> bool:
    key, value, effect = taint
    return any(tolerates(t, key, value, effect) for t in tolerations)


def untolerated_taint(
    tolerations: Sequence[core_pb2.Toleration], taints: Iterable[Taint]
) -> Taint | None:
    for taint in taints:
        if not tolerated(tolerations, taint):
            return taint
    return None


# ---------------------------------------------------------------- node affinity


def _requirement_matches(req: core_pb2.NodeSelectorRequirement, value: str | None) -> bool:
    op = req.operator
    if op == "In":
        return value is not None and value in req.values
    if op == "NotIn":
        return value is None or value not in req.values
    if op == "Exists":
        return value is not None
    if op == "DoesNotExist":
        return value is None
    if op in ("Gt", "Lt"):
        # Both sides must be integers (one value), as in Kubernetes; else no match.
        if value is None or len(req.values) != 1:
            return False
        try:
            have, want = int(value), int(req.values[0])
        except ValueError:
            return False
        return have > want if op == "Gt" else have < want
    return False


def _term_matches(term: core_pb2.NodeSelectorTerm, node: NodeStatic) -> bool:
    # An empty term selects nothing (Kubernetes' rule), not everything.
    if not term.match_expressions and not term.match_fields:
        return False
    for req in term.match_expressions:
        if not _requirement_matches(req, node.labels.get(req.key)):
            return False
    for req in term.match_fields:
        value = node.name if req.key == "metadata.name" else None
        if value is None or not _requirement_matches(req, value):
            return False
    return True


def node_selector_matches(selector: core_pb2.NodeSelector, node: NodeStatic) -> bool:
    """Terms are ORed; requirements within a term are ANDed."""
    return any(_term_matches(term, node) for term in selector.node_selector_terms)


def affinity_matches(pod: PodInfo, node: NodeStatic) -> bool:
    labels = node.labels
    for key, value in pod.node_selector.items():
        if labels.get(key) != value:
            return False
    return pod.affinity is None or node_selector_matches(pod.affinity, node)


# ---------------------------------------------------------------- static filter


def static_reason(pod: PodInfo, node: NodeStatic) -> str | None:
    """The first node-only check the pod fails on this node, or None.

    Order follows kube-scheduler's filter plugins (unschedulable, taints, affinity);
    Ready comes after taints so a node tainted not-ready reports the taint, as
    Kubernetes does. Pods tolerating the matching taint (DaemonSet pods) may use
    unschedulable or not-ready nodes, also as in Kubernetes.
    """
    if node.unschedulable and not tolerated(
        pod.tolerations, (TAINT_UNSCHEDULABLE, "", "NoSchedule")
    ):
        return REASON_UNSCHEDULABLE
    taint = untolerated_taint(pod.tolerations, node.taints)
    if taint is not None:
        return f"node(s) had untolerated taint {{{taint[0]}: {taint[1]}}}"
    if not node.ready and not tolerated(pod.tolerations, (TAINT_NOT_READY, "", "NoSchedule")):
        return REASON_NOT_READY
    if not affinity_matches(pod, node):
        return REASON_AFFINITY
    return None


# ------------------------------------------------------------------- host ports


class PortTable:
    """Host ports in use on one node, with counts (two pods may share one only
    when one of them is being removed, but the counts keep removal exact)."""

    __slots__ = ("exact", "wildcard_free")

    def __init__(self) -> None:
        self.exact: collections.Counter[HostPort] = collections.Counter()
        # (protocol, port) -> uses on any IP: a wildcard request conflicts with all.
        self.wildcard_free: collections.Counter[tuple[str, int]] = collections.Counter()

    def add(self, ports: Iterable[HostPort], sign: int = 1) -> None:
        for ip, proto, port in ports:
            self.exact[(ip, proto, port)] += sign
            self.wildcard_free[(proto, port)] += sign
            if self.exact[(ip, proto, port)] <= 0:
                del self.exact[(ip, proto, port)]
            if self.wildcard_free[(proto, port)] <= 0:
                del self.wildcard_free[(proto, port)]

    def conflicts(self, ports: Iterable[HostPort]) -> bool:
        for ip, proto, port in ports:
            if ip == WILDCARD_IP:
                if self.wildcard_free[(proto, port)] > 0:
                    return True
            elif self.exact[(ip, proto, port)] > 0 or self.exact[(WILDCARD_IP, proto, port)] > 0:
                return True
        return False

    def __bool__(self) -> bool:
        return bool(self.exact)


# ------------------------------------------------------------------------ scores


def resource_scores(cap_cpu: int, cap_mem: int, req_cpu: int, req_mem: int) -> tuple[float, float]:
    """(least allocated, balanced allocation), each 0..100, for a node whose
    (non-zero) requests would be req_* with the pod on it."""
    frac_cpu = req_cpu / cap_cpu if cap_cpu > 0 else 1.0
    frac_mem = req_mem / cap_mem if cap_mem > 0 else 1.0
    frac_cpu = min(frac_cpu, 1.0)
    frac_mem = min(frac_mem, 1.0)
    least = (2.0 - frac_cpu - frac_mem) * 50.0
    # Standard deviation of two fractions is half their distance.
    balanced = (1.0 - abs(frac_cpu - frac_mem) / 2.0) * 100.0
    return least, balanced


def spread_score(count: int, most: int) -> float:
    """Fewer replicas of the same owner on the node score higher (0..100)."""
    if most <= 0:
        return 100.0
    return (most - count) * 100.0 / most


# ----------------------------------------------------------------------- message


def failure_message(total_nodes: int, reasons: Mapping[str, int]) -> str:
    """Kubernetes' FitError text: counts per reason, sorted as strings."""
    if total_nodes == 0:
        return "no nodes available to schedule pods"
    parts = sorted(f"{count} {reason}" for reason, count in reasons.items())
    return f"0/{total_nodes} nodes are available: {', '.join(parts)}."
