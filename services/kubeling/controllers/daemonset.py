"""DaemonSet controller: one pod of the template on every eligible node.

A node is eligible when it matches the template's nodeSelector and required node
affinity and every NoSchedule/NoExecute taint on it is tolerated. Daemon pods
carry the tolerations Kubernetes adds to them (not-ready/unreachable NoExecute,
the pressure taints and unschedulable NoSchedule), so they stay on failing or
cordoned nodes.

The controller puts spec.nodeName on the pods it creates, as Kubernetes did
before 1.12, instead of handing them to the scheduler with node affinity:
simpler, and a daemon pod must land on that one node anyway.

Template changes roll out with RollingUpdate: pods whose template hash (label
`controller-revision-hash`; there is no ControllerRevision kind here) differs
are deleted on at most maxUnavailable nodes at a time; a node gets its new pod
once the old one is gone (one pod per node, so host ports never clash).
maxSurge is not implemented (validation lets it through; it acts as 0).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
from typing import Any

import grpc
import structlog
from google.protobuf import struct_pb2

from kubeling.api.objects import clone
from kubeling.api.selectors import SelectorError
from kubeling.client.informer import Informer, WorkQueue, informers_running, key_of, run_workers
from kubeling.controllers import podutil
from kubeling.controllers.manager import ControllerContext, register
from kubeling.controllers.nodelifecycle import TAINT_NOT_READY, TAINT_UNREACHABLE, tolerates
from kubeling.v1 import apps_pb2, core_pb2

log = structlog.get_logger(__name__)

REVISION_LABEL = "controller-revision-hash"

# Tolerations every daemon pod gets (Kubernetes' AddOrUpdateDaemonPodTolerations):
# a daemon belongs on its node whatever state the node is in.
_DAEMON_TOLERATIONS = (
    (TAINT_NOT_READY, "NoExecute"),
    (TAINT_UNREACHABLE, "NoExecute"),
    ("node.kubernetes.io/disk-pressure", "NoSchedule"),
    ("node.kubernetes.io/memory-pressure", "NoSchedule"),
    ("node.kubernetes.io/pid-pressure", "NoSchedule"),
    ("node.kubernetes.io/unschedulable", "NoSchedule"),
)
_HOST_NETWORK_TOLERATION = ("node.kubernetes.io/network-unavailable", "NoSchedule")


def template_hash(template: core_pb2.PodTemplateSpec) -> str:
    data = template.SerializeToString(deterministic=True)
    return hashlib.sha256(data).hexdigest()[:10]


def daemon_tolerations(spec: core_pb2.PodSpec) -> list[core_pb2.Toleration]:
    """The spec's tolerations plus the daemon defaults it does not already have."""
    result = list(spec.tolerations)
    wanted = list(_DAEMON_TOLERATIONS)
    if spec.host_network:
        wanted.append(_HOST_NETWORK_TOLERATION)
    for key, effect in wanted:
        if not any(t.key == key and t.effect == effect for t in result):
            result.append(core_pb2.Toleration(key=key, operator="Exists", effect=effect))
    return result


def _requirement_matches(req: core_pb2.NodeSelectorRequirement, value: str | None) -> bool:
    op = req.operator
    if op == "Exists":
        return value is not None
    if op == "DoesNotExist":
        return value is None
    if op == "In":
        return value is not None and value in req.values
    if op == "NotIn":
        return value is None or value not in req.values
    if op in ("Gt", "Lt") and value is not None and len(req.values) == 1:
        try:
            have, limit = int(value), int(req.values[0])
        except ValueError:
            return False
        return have > limit if op == "Gt" else have < limit
    return False


def node_affinity_matches(spec: core_pb2.PodSpec, node: core_pb2.Node) -> bool:
    labels = node.metadata.labels
    if any(labels.get(k) != v for k, v in spec.node_selector.items()):
        return False
    affinity = spec.affinity.node_affinity
    if not affinity.HasField("required_during_scheduling_ignored_during_execution"):
        return True
    fields = {"metadata.name": node.metadata.name}
    # Terms are ORed, the requirements within a term ANDed; no terms match nothing.
    for term in affinity.required_during_scheduling_ignored_during_execution.node_selector_terms:
        if not term.match_expressions and not term.match_fields:
            continue
        if all(_requirement_matches(r, labels.get(r.key)) for r in term.match_expressions) and all(
            _requirement_matches(r, fields.get(r.key)) for r in term.match_fields
        ):
            return True
    return False


def node_should_run(spec: core_pb2.PodSpec, node: core_pb2.Node) -> tuple[bool, bool]:
    """(should a daemon pod be created there, may an existing one stay there)."""
    if not node_affinity_matches(spec, node):
        return False, False
    tolerations = daemon_tolerations(spec)
    run, keep = True, True
    for taint in node.spec.taints:
        if taint.effect not in ("NoSchedule", "NoExecute") or tolerates(tolerations, taint):
            continue
        run = False
        if taint.effect == "NoExecute":
            keep = False
    return run, keep


def max_unavailable(ds: apps_pb2.DaemonSet, desired: int) -> int:
    value = ds.spec.update_strategy.rolling_update.max_unavailable
    count = _scaled(value, desired)
    # With no surge, zero would never make progress; Kubernetes' validation forbids it.
    return max(1, count)


def _scaled(value: struct_pb2.Value, total: int) -> int:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        return int(value.number_value)
    if kind == "string_value" and value.string_value.endswith("%"):
        with contextlib.suppress(ValueError):
            return math.ceil(float(value.string_value[:-1]) * total / 100)
    return 1


def _deleting(pod: core_pb2.Pod) -> bool:
    return pod.metadata.HasField("deletion_timestamp")


def _age_key(pod: core_pb2.Pod) -> tuple[int, int, str]:
    created = pod.metadata.creation_timestamp
    return created.seconds, created.nanos, pod.metadata.name


@register("daemonset")
class DaemonSetController:
    def __init__(self, context: ControllerContext) -> None:
        self.api = context.api
        self.recorder = context.recorder
        self.workers = context.settings.workers
        self.daemon_sets = Informer(self.api.daemon_sets)
        self.nodes = Informer(self.api.nodes)
        self.pods = Informer(self.api.pods)
        self.queue = WorkQueue()
        self.daemon_sets.add_handler(self._on_daemon_set)
        self.nodes.add_handler(self._on_node)
        self.pods.add_handler(self._on_pod)

    # ------------------------------------------------------------ handlers

    def _on_daemon_set(self, kind: str, old: Any, new: Any) -> None:
        self.queue.add(key_of(new if new is not None else old))

    def _on_node(self, kind: str, old: Any, new: Any) -> None:
        # Heartbeats change only status; placement depends on labels and taints.
        if (
            kind == "MODIFIED"
            and old is not None
            and new is not None
            and old.metadata.labels == new.metadata.labels
            and old.spec == new.spec
        ):
            return
        for ds in self.daemon_sets.list():
            self.queue.add(key_of(ds))

    def _on_pod(self, kind: str, old: Any, new: Any) -> None:
        for pod in (old, new):
            if pod is None:
                continue
            ref = podutil.controller_of(pod)
            if ref is not None and ref.kind == "DaemonSet":
                self.queue.add(f"{pod.metadata.namespace}/{ref.name}")

    async def run(self) -> None:
        informers: list[Informer[Any]] = [self.daemon_sets, self.nodes, self.pods]
        async with informers_running(informers, "daemonset"):
            await run_workers(self.queue, self.sync, self.workers, "daemonset")

    # ------------------------------------------------------------ sync

    async def sync(self, key: str) -> None:
        namespace, name = key.split("/", 1)
        ds = self.daemon_sets.get(namespace, name)
        if ds is None or ds.metadata.HasField("deletion_timestamp"):
            return  # the garbage collector removes its pods
        try:
            selector = podutil.selector_of(ds.spec.selector)
        except SelectorError as exc:
            self.recorder.record(ds, "Warning", "SelectorError", str(exc))
            return
        # A live list, not the cache: a pod we created a moment ago must count,
        # or a quick second sync would create another on the same node.
        listed = await self.api.pods.list(namespace, label_selector=str(selector))
        pods = await podutil.claim_pods(self.api, ds, selector, listed.items)
        revision = template_hash(ds.spec.template)
        nodes = {n.metadata.name: n for n in self.nodes.list()}
        # Live nodes too: a node created a moment ago may not be cached yet, and a
        # pod on it must not be mistaken for a pod on a deleted node.
        if any(p.spec.node_name not in nodes for p in pods):
            nodes = {n.metadata.name: n for n in (await self.api.nodes.list()).items}

        by_node: dict[str, list[core_pb2.Pod]] = {}
        delete_now: list[core_pb2.Pod] = []  # no kubelet will stop them: grace 0
        for pod in pods:
            if pod.spec.node_name in nodes:
                by_node.setdefault(pod.spec.node_name, []).append(pod)
            elif not _deleting(pod) or pod.metadata.deletion_grace_period_seconds:
                delete_now.append(pod)

        create_on: list[str] = []
        delete: list[core_pb2.Pod] = []
        current: dict[str, core_pb2.Pod] = {}  # node -> its one live daemon pod
        desired = misscheduled = 0
        should_run_nodes: list[str] = []
        for node_name, node in sorted(nodes.items()):
            run, keep = node_should_run(ds.spec.template.spec, node)
            node_pods = by_node.get(node_name, [])
            live = sorted((p for p in node_pods if not _deleting(p)), key=_age_key)
            failed = [p for p in live if p.status.phase == "Failed"]
            live = [p for p in live if p.status.phase != "Failed"]
            delete += failed  # a failed daemon is replaced, as Kubernetes does
            if run:
                desired += 1
                should_run_nodes.append(node_name)
                if live:
                    current[node_name] = live[0]
                    delete += live[1:]  # keep the oldest
                elif not node_pods:
                    create_on.append(node_name)  # else wait for the old one to go
            elif keep and live:
                current[node_name] = live[0]  # tolerated NoSchedule taint: stays
                delete += live[1:]
            elif live:
                misscheduled += 1
                delete += live

        if ds.spec.update_strategy.type != "OnDelete":
            delete += self._rolling_update(ds, revision, should_run_nodes, current, delete)

        await self._apply(ds, revision, create_on, delete, delete_now)
        await self._update_status(ds, revision, desired, misscheduled, should_run_nodes, current)

    def _rolling_update(
        self,
        ds: apps_pb2.DaemonSet,
        revision: str,
        should_run: list[str],
        current: dict[str, core_pb2.Pod],
        deleting: list[core_pb2.Pod],
    ) -> list[core_pb2.Pod]:
        """Old-template pods to delete now: unavailable ones at once, available
        ones while no more than maxUnavailable nodes lack an available pod."""
        doomed = {p.metadata.uid for p in deleting}
        min_ready = ds.spec.min_ready_seconds
        unavailable = 0
        old_available: list[core_pb2.Pod] = []
        result: list[core_pb2.Pod] = []
        for node_name in should_run:
            pod = current.get(node_name)
            if pod is None or pod.metadata.uid in doomed:
                unavailable += 1
                continue
            available = podutil.is_pod_available(pod, min_ready)
            if not available:
                unavailable += 1
            if pod.metadata.labels.get(REVISION_LABEL) == revision:
                continue
            if available:
                old_available.append(pod)
            else:
                result.append(pod)  # not serving anyway: replace it now
        budget = max_unavailable(ds, len(should_run)) - unavailable
        result += old_available[: max(0, budget)]
        return result

    async def _apply(
        self,
        ds: apps_pb2.DaemonSet,
        revision: str,
        create_on: list[str],
        delete: list[core_pb2.Pod],
        delete_now: list[core_pb2.Pod],
    ) -> None:
        jobs: list[Any] = [podutil.delete_pod(self.api, self.recorder, ds, p) for p in delete]
        jobs += [self._force_delete(ds, p) for p in delete_now]
        jobs += [self._create(ds, revision, node) for node in create_on]
        results = await asyncio.gather(*jobs, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]  # the work queue retries with back-off

    async def _force_delete(self, ds: apps_pb2.DaemonSet, pod: core_pb2.Pod) -> None:
        meta = pod.metadata
        try:
            await self.api.pods.delete(meta.name, meta.namespace, grace_period_seconds=0,
                                       uid=meta.uid)  # fmt: skip
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return
            raise
        self.recorder.record(
            ds, "Normal", "SuccessfulDelete", f"Deleted pod: {meta.name} (node gone)"
        )

    async def _create(self, ds: apps_pb2.DaemonSet, revision: str, node: str) -> None:
        pod = podutil.pod_from_template(ds.spec.template, ds)
        pod.metadata.labels[REVISION_LABEL] = revision
        pod.spec.node_name = node
        tolerations = daemon_tolerations(pod.spec)
        del pod.spec.tolerations[:]
        pod.spec.tolerations.extend(tolerations)
        await podutil.create_pod(self.api, self.recorder, ds, pod)

    async def _update_status(
        self,
        ds: apps_pb2.DaemonSet,
        revision: str,
        desired: int,
        misscheduled: int,
        should_run: list[str],
        current: dict[str, core_pb2.Pod],
    ) -> None:
        ready = available = updated = scheduled = 0
        wait: float | None = None
        for node_name in should_run:
            pod = current.get(node_name)
            if pod is None:
                continue
            scheduled += 1
            if pod.metadata.labels.get(REVISION_LABEL) == revision:
                updated += 1
            if podutil.is_pod_ready(pod):
                ready += 1
            left = podutil.seconds_until_available(pod, ds.spec.min_ready_seconds)
            if left == 0.0:
                available += 1
            elif left is not None:
                wait = left if wait is None else min(wait, left)
        status = clone(ds.status)
        status.desired_number_scheduled = desired
        status.current_number_scheduled = scheduled
        status.number_misscheduled = misscheduled
        status.number_ready = ready
        status.number_available = available
        status.number_unavailable = max(0, desired - available)
        status.updated_number_scheduled = updated
        status.observed_generation = ds.metadata.generation
        if wait is not None:
            # Becoming available is a matter of time, not of an event.
            self.queue.add_after(key_of(ds), wait + 0.05)
        if status == ds.status:
            return
        new = clone(ds)
        new.status.CopyFrom(status)
        try:
            await self.api.daemon_sets.update_status(new)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.ABORTED:
                raise
            # Our cache still has the version before our last status write;
            # the status is computed from pods, so it applies to the latest one.
            latest = await self.api.daemon_sets.get(ds.metadata.name, ds.metadata.namespace)
            if latest.metadata.generation != ds.metadata.generation:
                raise  # the spec changed: sync again from scratch
            latest.status.CopyFrom(status)
            await self.api.daemon_sets.update_status(latest)
