"""Node lifecycle: notice nodes whose kubelet went silent and evict their pods.

What kube-controller-manager's node lifecycle controller and taint manager do,
in one loop every `node_monitor_period`:

1. A node whose heartbeat (its Lease in kube-node-lease, or its Ready
   condition's lastHeartbeatTime) has not changed for `node_monitor_grace_period`
   gets every condition set to Unknown (NodeStatusUnknown) and its pods marked
   not ready, so Services stop sending them traffic.
2. The node's Ready condition decides its NoExecute taint:
   Unknown -> node.kubernetes.io/unreachable, False -> node.kubernetes.io/not-ready,
   True -> neither (the taint goes when the kubelet reports Ready again).
3. Pods on a node with NoExecute taints are deleted once they no longer
   tolerate them: at once for a taint they do not tolerate at all, after the
   smallest tolerationSeconds of the matching tolerations otherwise. A pod with
   no toleration for not-ready/unreachable is treated as tolerating it for
   `pod_eviction_timeout` (what Kubernetes' DefaultTolerationSeconds admission
   plugin writes into every pod).

Staleness is measured by when this controller saw the heartbeat change (a local
monotonic clock), not by the timestamps in it, so clock skew does not matter;
right after start every node gets a full grace period.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import grpc
import structlog
from google.protobuf.timestamp_pb2 import Timestamp

from kubeling.api.objects import clone, now
from kubeling.client.informer import Informer, informers_running
from kubeling.controllers.manager import ControllerContext, register
from kubeling.v1 import core_pb2, meta_pb2

log = structlog.get_logger(__name__)

NODE_LEASE_NAMESPACE = "kube-node-lease"
TAINT_UNREACHABLE = "node.kubernetes.io/unreachable"
TAINT_NOT_READY = "node.kubernetes.io/not-ready"
NO_EXECUTE = "NoExecute"
_CONDITION_TAINTS = {"Unknown": TAINT_UNREACHABLE, "False": TAINT_NOT_READY}
_UNKNOWN_REASON = "NodeStatusUnknown"
_UNKNOWN_MESSAGE = "Kubelet stopped posting node status."


# ---------------------------------------------------------------- taints


def toleration_matches(toleration: core_pb2.Toleration, taint: core_pb2.Taint) -> bool:
    """Kubernetes' ToleratesTaint: an empty effect matches every effect, an empty
    key with Exists matches every key, Equal (the default) compares values."""
    if toleration.effect and toleration.effect != taint.effect:
        return False
    operator = toleration.operator or "Equal"
    if not toleration.key:
        return operator == "Exists"
    if toleration.key != taint.key:
        return False
    if operator == "Exists":
        return True
    return operator == "Equal" and toleration.value == taint.value


def tolerates(tolerations: Iterable[core_pb2.Toleration], taint: core_pb2.Taint) -> bool:
    return any(toleration_matches(t, taint) for t in tolerations)


def eviction_delay(
    tolerations: Iterable[core_pb2.Toleration], taint: core_pb2.Taint, default: float
) -> float | None:
    """Seconds a pod may stay on a node with this NoExecute taint; None: forever."""
    matching = [t for t in tolerations if toleration_matches(t, taint)]
    if not matching:
        return default if taint.key in (TAINT_UNREACHABLE, TAINT_NOT_READY) else 0.0
    limits = [max(0, t.toleration_seconds) for t in matching if t.HasField("toleration_seconds")]
    return float(min(limits)) if limits else None


def _seconds(stamp: Timestamp) -> float:
    return stamp.seconds + stamp.nanos / 1e9


def _condition(conditions: Iterable[meta_pb2.Condition], type_: str) -> meta_pb2.Condition | None:
    for condition in conditions:
        if condition.type == type_:
            return condition
    return None


# ---------------------------------------------------------------- controller


@dataclass
class _Heartbeat:
    signature: bytes
    seen_at: float  # monotonic time the signature last changed


@register("nodelifecycle")
class NodeLifecycleController:
    def __init__(self, context: ControllerContext) -> None:
        self.api = context.api
        self.recorder = context.recorder
        self.settings = context.settings
        self.nodes = Informer(self.api.nodes)
        self.leases = Informer(self.api.leases, namespace=NODE_LEASE_NAMESPACE)
        self.pods = Informer(self.api.pods)
        self._heartbeats: dict[str, _Heartbeat] = {}
        # First sighting of a taint without timeAdded, for the eviction clock.
        self._taint_seen: dict[tuple[str, str], float] = {}
        self._evicted: dict[str, float] = {}  # pod uid -> when we deleted it

    async def run(self) -> None:
        informers: list[Informer[Any]] = [self.nodes, self.leases, self.pods]
        async with informers_running(informers, "nodelifecycle"):
            while True:
                try:
                    await self.monitor()
                except asyncio.CancelledError:
                    raise
                except grpc.aio.AioRpcError as exc:
                    log.info("node monitor pass failed", error=exc.details())
                except Exception:
                    log.exception("node monitor pass failed")
                await asyncio.sleep(self.settings.node_monitor_period)

    async def monitor(self) -> None:
        """One pass over every node (public so tests can drive it)."""
        names = set()
        pods_by_node: dict[str, list[core_pb2.Pod]] = {}
        for pod in self.pods.list():
            if pod.spec.node_name:
                pods_by_node.setdefault(pod.spec.node_name, []).append(pod)
        for node in self.nodes.list():
            name = node.metadata.name
            names.add(name)
            pods = pods_by_node.get(name, [])
            try:
                node = await self._check_health(node, pods)
                node = await self._sync_taints(node)
                await self._evict(node, pods)
            except grpc.aio.AioRpcError as exc:
                # A conflict or a node deleted meanwhile: the next pass retries.
                log.info("node not processed", node=name, error=exc.details())
        for gone in set(self._heartbeats) - names:
            del self._heartbeats[gone]
        self._taint_seen = {k: v for k, v in self._taint_seen.items() if k[0] in names}
        horizon = time.monotonic() - 600
        self._evicted = {uid: t for uid, t in self._evicted.items() if t > horizon}

    def _stale(self, node: core_pb2.Node) -> bool:
        name = node.metadata.name
        lease = self.leases.get(NODE_LEASE_NAMESPACE, name)
        ready = _condition(node.status.conditions, "Ready")
        signature = b"".join(
            (
                lease.spec.renew_time.SerializeToString() if lease is not None else b"-",
                b"|",
                ready.last_heartbeat_time.SerializeToString() if ready is not None else b"-",
            )
        )
        clock = time.monotonic()
        seen = self._heartbeats.get(name)
        if seen is None or seen.signature != signature:
            self._heartbeats[name] = _Heartbeat(signature, clock)
            return False
        return clock - seen.seen_at > self.settings.node_monitor_grace_period

    async def _check_health(self, node: core_pb2.Node, pods: list[core_pb2.Pod]) -> core_pb2.Node:
        if not self._stale(node):
            return node
        updated = clone(node)
        stamp = now()
        ready = _condition(updated.status.conditions, "Ready")
        was_ready = ready is not None and ready.status == "True"
        if ready is None:
            updated.status.conditions.add(
                type="Ready",
                status="Unknown",
                reason="NodeStatusNeverUpdated",
                message="Kubelet never posted node status.",
                last_transition_time=stamp,
            )
        for condition in updated.status.conditions:
            if condition.status != "Unknown":
                condition.status = "Unknown"
                condition.reason = _UNKNOWN_REASON
                condition.message = _UNKNOWN_MESSAGE
                condition.last_transition_time.CopyFrom(stamp)
        if updated != node:
            node = await self.api.nodes.update_status(updated)
            log.info("node stopped posting status", node=node.metadata.name)
            if was_ready or ready is None:
                self.recorder.record(
                    node,
                    "Normal",
                    "NodeNotReady",
                    f"Node {node.metadata.name} status is now: NodeNotReady",
                )
        await self._mark_pods_not_ready(pods)
        return node

    async def _mark_pods_not_ready(self, pods: list[core_pb2.Pod]) -> None:
        """Nobody can vouch for pods on a silent node: take them out of Services."""
        for pod in pods:
            ready = _condition(pod.status.conditions, "Ready")
            if ready is None or ready.status != "True":
                continue
            updated = clone(pod)
            for condition in updated.status.conditions:
                if condition.type == "Ready":
                    condition.status = "False"
                    condition.last_transition_time.CopyFrom(now())
            try:
                await self.api.pods.update_status(updated)
            except grpc.aio.AioRpcError as exc:
                log.info("pod not marked not ready", pod=pod.metadata.name, error=exc.details())

    async def _sync_taints(self, node: core_pb2.Node) -> core_pb2.Node:
        ready = _condition(node.status.conditions, "Ready")
        wanted = _CONDITION_TAINTS.get(ready.status if ready is not None else "Unknown")
        ours = set(_CONDITION_TAINTS.values())
        have = {t.key for t in node.spec.taints if t.effect == NO_EXECUTE and t.key in ours}
        if have == ({wanted} if wanted else set()):
            return node
        updated = clone(node)
        keep = [
            t
            for t in updated.spec.taints
            if not (t.effect == NO_EXECUTE and t.key in ours and t.key != wanted)
        ]
        del updated.spec.taints[:]
        updated.spec.taints.extend(keep)
        if wanted and wanted not in have:
            updated.spec.taints.add(key=wanted, effect=NO_EXECUTE, time_added=now())
        node = await self.api.nodes.update(updated)
        log.info("node taints changed", node=node.metadata.name, taint=wanted or "none")
        return node

    async def _evict(self, node: core_pb2.Node, pods: list[core_pb2.Pod]) -> None:
        taints = [t for t in node.spec.taints if t.effect == NO_EXECUTE]
        if not taints:
            return
        wall = time.time()
        default = self.settings.pod_eviction_timeout
        for pod in pods:
            meta = pod.metadata
            if meta.HasField("deletion_timestamp") or meta.uid in self._evicted:
                continue
            due = self._eviction_due(node, taints, pod, default, wall)
            if due is None or due > wall:
                continue
            self._evicted[meta.uid] = time.monotonic()
            try:
                await self.api.pods.delete(meta.name, meta.namespace, uid=meta.uid)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    self._evicted.pop(meta.uid, None)
                    raise
                continue
            log.info("pod evicted", pod=f"{meta.namespace}/{meta.name}", node=node.metadata.name)
            self.recorder.record(
                pod,
                "Normal",
                "TaintManagerEviction",
                f"Marking for deletion Pod {meta.namespace}/{meta.name}",
            )

    def _eviction_due(
        self,
        node: core_pb2.Node,
        taints: list[core_pb2.Taint],
        pod: core_pb2.Pod,
        default: float,
        wall: float,
    ) -> float | None:
        """Wall-clock time the pod must be gone by; None when it may stay."""
        due: float | None = None
        for taint in taints:
            delay = eviction_delay(pod.spec.tolerations, taint, default)
            if delay is None:
                continue
            if taint.HasField("time_added"):
                since = _seconds(taint.time_added)
            else:
                since = self._taint_seen.setdefault((node.metadata.name, taint.key), wall)
            when = since + delay
            due = when if due is None else min(due, when)
        return due
