"""The scheduler controller: watch pods and nodes, decide one pod at a time, bind
many at once.

Decisions are sequential, so each sees every earlier one: a chosen node is
accounted in the cache at once ("assumed") and the bind call runs in the
background, up to `parallelBinds` at a time. One watch of all pods feeds both
the queue (pods without a node) and the cache (pods with one); a second
field-selected watch would deliver every pending pod twice for no extra
information.

A pod with PersistentVolumeClaims goes through the VolumeBinding step first
(scheduler/volumebinding.py): a missing or unbound Immediate claim makes it
unschedulable, a bound local volume's nodeAffinity joins its node affinity, and
the claims of WaitForFirstConsumer classes get the chosen node in their
`volume.kubernetes.io/selected-node` annotation before the pod is bound. Claim,
volume and StorageClass changes wake unschedulable pods. As kube-scheduler's
PreBind, the pod is bound only once those claims are bound (the volume made on
that node), so its kubelet never sees it before its volume; a claim still
unbound after scheduler.volumeBindTimeout seconds (30) sends the pod back to
the queue.

A pod that fits nowhere gets PodScheduled=False/Unschedulable and a
FailedScheduling event, and waits in the unschedulable set until something that
could make room happens (a node added or changed in a way that matters, a bound
pod deleted or finished) or the periodic retry comes round.

Settings (ControllerSettings.extra): scheduler.percentageOfNodesToScore (5; 0 for
Kubernetes' adaptive value), scheduler.parallelBinds (128: a bind waits for the
store's commit, and under a burst of creates the binds must hold as many calls
in flight as the creators do, or the master serves them a smaller share and
pending pods pile up; kube-scheduler bounds them only by its client's QPS),
scheduler.retryInterval (seconds, 5), scheduler.volumeBindTimeout (seconds, 30).

Metrics, as kube-scheduler's: `scheduler_schedule_attempts_total{result}`
(scheduled, unschedulable, error) and `scheduler_scheduling_attempt_duration_seconds`
(from taking the pod off the queue to its bind, or to the unschedulable verdict).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Coroutine
from typing import Any

import grpc
import structlog
from prometheus_client import Counter, Histogram

from kubeling.api import storage as st
from kubeling.api.objects import clone, now
from kubeling.client.events import EventRecorder
from kubeling.client.informer import Informer, WorkQueue, key_of, run_workers, start_informer
from kubeling.client.pods import Binder
from kubeling.controllers.context import ControllerContext
from kubeling.scheduler.algorithm import DEFAULT_PERCENTAGE, Algorithm
from kubeling.scheduler.cache import NodeCache
from kubeling.scheduler.framework import DEFAULT_SCHEDULER, PodInfo
from kubeling.scheduler.volumebinding import check_volumes, claim_names, with_volume_affinity
from kubeling.v1 import core_pb2, storage_pb2

log = structlog.get_logger(__name__)

SCHEDULE_ATTEMPTS = Counter(
    "scheduler_schedule_attempts",
    "Number of attempts to schedule pods, by the result",
    ["result", "profile"],
)
ATTEMPT_DURATION = Histogram(
    "scheduler_scheduling_attempt_duration_seconds",
    "Scheduling attempt latency (the decision and the binding)",
    ["result", "profile"],
    buckets=(0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1, 2, 4, 8),
)


def _attempt(result: str, started: float) -> None:
    SCHEDULE_ATTEMPTS.labels(result, DEFAULT_SCHEDULER).inc()
    ATTEMPT_DURATION.labels(result, DEFAULT_SCHEDULER).observe(time.monotonic() - started)


# Node events come in bursts (a rack joining): wake unschedulable pods once per burst.
_WAKE_DELAY = 0.05


def _setting(context: ControllerContext, name: str, default: float) -> float:
    value = context.settings.extra.get(f"scheduler.{name}")
    return float(value) if value else default


def _scheduled_condition(pod: core_pb2.Pod) -> tuple[str, str, str] | None:
    for c in pod.status.conditions:
        if c.type == "PodScheduled":
            return c.status, c.reason, c.message
    return None


class Scheduler:
    def __init__(self, context: ControllerContext) -> None:
        self.api = context.api
        # Its own recorder so events show "default-scheduler" as their source.
        self.recorder = EventRecorder(context.api, DEFAULT_SCHEDULER)
        self.cache = NodeCache()
        percentage = int(_setting(context, "percentageOfNodesToScore", DEFAULT_PERCENTAGE))
        self.algorithm = Algorithm(self.cache, percentage)
        self.retry_interval = _setting(context, "retryInterval", 5.0)
        self.volume_bind_timeout = _setting(context, "volumeBindTimeout", 30.0)
        self._binds = asyncio.Semaphore(int(_setting(context, "parallelBinds", 128)))
        self.nodes: Informer[core_pb2.Node] = Informer(context.api.nodes)
        self.pods: Informer[core_pb2.Pod] = Informer(context.api.pods)
        self.claims: Informer[storage_pb2.PersistentVolumeClaim] = Informer(
            context.api.persistent_volume_claims
        )
        self.volumes: Informer[storage_pb2.PersistentVolume] = Informer(
            context.api.persistent_volumes
        )
        self.classes: Informer[storage_pb2.StorageClass] = Informer(context.api.storage_classes)
        self.queue = WorkQueue(name="scheduler")
        self.unschedulable: set[str] = set()
        self._binding: set[str] = set()  # keys with a bind call in flight
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake_handle: asyncio.TimerHandle | None = None
        self.scheduled = 0  # successful binds, for benchmarks and tests
        self._binder = Binder(context.api)

    async def run(self) -> None:
        self.nodes.add_handler(self._on_node)
        self.pods.add_handler(self._on_pod)
        for storage in (self.claims, self.volumes, self.classes):
            storage.add_handler(self._on_storage)
        # Supervised loops of their own when the manager runs us under a supervisor.
        informers = [
            start_informer(self.nodes, "scheduler.nodes"),
            start_informer(self.pods, "scheduler.pods"),
            start_informer(self.claims, "scheduler.persistentvolumeclaims"),
            start_informer(self.volumes, "scheduler.persistentvolumes"),
            start_informer(self.classes, "scheduler.storageclasses"),
        ]
        try:
            # Deciding before both are synced would ignore nodes or their pods.
            await self.nodes.synced.wait()
            await self.pods.synced.wait()
            for storage in (self.claims, self.volumes, self.classes):
                await storage.synced.wait()
            informers.append(asyncio.create_task(self._retry_periodically()))
            log.info("scheduler running", nodes=self.cache.node_count, pending=len(self.queue))
            await run_workers(self.queue, self._schedule_one, 1, "scheduler")
        finally:
            if self._wake_handle is not None:
                self._wake_handle.cancel()
            for task in [*informers, *self._tasks]:
                task.cancel()
            for task in [*informers, *self._tasks]:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await self.recorder.flush()

    # ----------------------------------------------------------------- events

    @staticmethod
    def _wanted(pod: core_pb2.Pod) -> bool:
        return (
            not pod.spec.node_name
            and not pod.metadata.HasField("deletion_timestamp")
            and pod.spec.scheduler_name in ("", DEFAULT_SCHEDULER)
        )

    def _on_node(self, kind: str, old: Any, new: Any) -> None:
        if kind == "DELETED":
            self.cache.remove_node(new.metadata.name)
        elif self.cache.upsert_node(new):
            self._wake()

    def _on_pod(self, kind: str, old: Any, new: Any) -> None:
        key = key_of(new)
        if kind == "DELETED":
            self.unschedulable.discard(key)
            if self.cache.remove_pod(key):
                self._wake()
            return
        if new.spec.node_name:
            self.unschedulable.discard(key)
            if self.cache.observe_pod(new):
                self._wake()
            return
        if key in self.unschedulable:
            if old is not None and old.spec == new.spec:
                return  # only its status changed (our own condition): nothing new to try
            self.unschedulable.discard(key)
        if self._wanted(new):
            self.queue.add(key)

    def _on_storage(self, kind: str, old: Any, new: Any) -> None:
        # A claim made or bound, a volume provisioned: pods waiting on them may fit.
        self._wake()

    def _wake(self) -> None:
        if self._wake_handle is None and self.unschedulable:
            loop = asyncio.get_running_loop()
            self._wake_handle = loop.call_later(_WAKE_DELAY, self._retry_unschedulable)

    def _retry_unschedulable(self) -> None:
        self._wake_handle = None
        for key in self.unschedulable:
            self.queue.add(key)
        self.unschedulable.clear()

    async def _retry_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.retry_interval)
            self._retry_unschedulable()

    # --------------------------------------------------------------- decisions

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _schedule_one(self, key: str) -> None:
        if key in self._binding:
            return
        # Wait for a bind slot first, so the decision uses the freshest cache.
        await self._binds.acquire()
        handed_off = False
        started = time.monotonic()
        try:
            namespace, _, name = key.rpartition("/")
            pod = self.pods.get(namespace, name)
            if pod is None or not self._wanted(pod) or key in self._binding:
                return
            to_select: list[storage_pb2.PersistentVolumeClaim] = []
            considered = pod
            if claim_names(pod):
                decision = check_volumes(
                    pod,
                    self.claims.get,
                    lambda name: self.volumes.get("", name),
                    lambda name: self.classes.get("", name),
                    self.volumes.list,
                )
                if decision.error:
                    _attempt("unschedulable", started)
                    self.unschedulable.add(key)
                    self._spawn(self._report_unschedulable(pod, decision.error))
                    return
                considered = with_volume_affinity(pod, decision.affinities)
                to_select = decision.to_select
            info = PodInfo.of(considered)
            result = self.algorithm.schedule(info)
            if isinstance(result, str):
                self.cache.assume(info, result)
                self._binding.add(key)
                self._spawn(self._bind(pod, info, result, started, to_select))
                handed_off = True
            else:
                _attempt("unschedulable", started)
                self.unschedulable.add(key)
                self._spawn(self._report_unschedulable(pod, result[1]))
        finally:
            if not handed_off:
                self._binds.release()

    async def _select_node(
        self, claims: list[storage_pb2.PersistentVolumeClaim], node: str
    ) -> None:
        """PreBind: the WaitForFirstConsumer claims learn their pod's node."""
        for pvc in claims:
            if pvc.metadata.annotations.get(st.SELECTED_NODE_ANNOTATION) == node:
                continue
            updated = clone(pvc)
            updated.metadata.annotations[st.SELECTED_NODE_ANNOTATION] = node
            await self.api.persistent_volume_claims.update(updated)

    async def _claims_bound(self, claims: list[storage_pb2.PersistentVolumeClaim]) -> None:
        """Wait until every claim is bound (TimeoutError after volumeBindTimeout)."""
        async with asyncio.timeout(self.volume_bind_timeout):
            while True:
                pending = []
                for pvc in claims:
                    seen = self.claims.get(pvc.metadata.namespace, pvc.metadata.name)
                    if seen is None or not seen.spec.volume_name or seen.status.phase != "Bound":
                        pending.append(pvc)
                if not pending:
                    return
                await asyncio.sleep(0.05)

    async def _bind(
        self,
        pod: core_pb2.Pod,
        info: PodInfo,
        node: str,
        started: float,
        to_select: list[storage_pb2.PersistentVolumeClaim] | None = None,
    ) -> None:
        meta = pod.metadata
        if to_select:
            try:
                await self._select_node(to_select, node)
                await self._claims_bound(to_select)
            except Exception as exc:
                # A claim changed meanwhile (or the API failed): decide again.
                _attempt("error", started)
                self.cache.forget(info.key, info.uid)
                self._binding.discard(info.key)
                self._binds.release()
                why = "claims not bound in time" if isinstance(exc, TimeoutError) else str(exc)
                log.info("volumes not ready for the pod; retrying", pod=info.key, error=why)
                self.queue.retry(info.key)
                return
        try:
            await self._binder.bind(meta.name, node, meta.namespace, meta.uid)
        except grpc.aio.AioRpcError as exc:
            _attempt("error", started)
            self.cache.forget(info.key, info.uid)
            code = exc.code()
            if code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ABORTED):
                # Bound by someone else, being deleted, or replaced (uid): not ours now.
                log.info("bind dropped", pod=info.key, node=node, error=exc.details())
            else:
                # NOT_FOUND: the pod is gone (the retry finds nothing) or the node is
                # (the retry picks another); anything else is transient.
                log.info("bind failed; retrying", pod=info.key, node=node, error=exc.details())
                self.queue.retry(info.key)
            return
        except Exception:
            _attempt("error", started)
            self.cache.forget(info.key, info.uid)
            log.exception("bind failed; retrying", pod=info.key, node=node)
            self.queue.retry(info.key)
            return
        finally:
            self._binding.discard(info.key)
            self._binds.release()
        self.scheduled += 1
        _attempt("scheduled", started)
        # About the pod as it was scheduled, as kube-scheduler's event is.
        self.recorder.record(
            pod, "Normal", "Scheduled", f"Successfully assigned {info.key} to {node}"
        )

    async def _report_unschedulable(self, pod: core_pb2.Pod, message: str) -> None:
        self.recorder.record(pod, "Warning", "FailedScheduling", message)
        log.info("pod unschedulable", pod=key_of(pod), message=message)
        for _ in range(2):
            if _scheduled_condition(pod) == ("False", "Unschedulable", message):
                return  # already says so: no write, no watch event
            updated = clone(pod)
            condition = next(
                (c for c in updated.status.conditions if c.type == "PodScheduled"), None
            )
            if condition is None:
                condition = updated.status.conditions.add(type="PodScheduled")
            if condition.status != "False":
                condition.last_transition_time.CopyFrom(now())
            condition.status = "False"
            condition.reason = "Unschedulable"
            condition.message = message
            try:
                # With the pod's resourceVersion: the rest of the status stays as read.
                await self.api.pods.update_status(updated)
                return
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.ABORTED:
                    log.info("unschedulable status not written", pod=key_of(pod),
                             error=exc.details())  # fmt: skip
                    return
            # Changed meanwhile: read it again and retry once if still pending.
            try:
                pod = await self.api.pods.get(pod.metadata.name, pod.metadata.namespace)
            except grpc.aio.AioRpcError:
                return
            if not self._wanted(pod):
                return
