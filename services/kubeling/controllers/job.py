"""The Job controller: run pods until `completions` succeed, or fail the Job.

As kube-controller-manager's:

- Pods come from the template with a controller ownerReference, generateName
  `JOB-` (`JOB-INDEX-` for an Indexed Job, whose pods carry their index as the
  `batch.kubernetes.io/job-completion-index` label and annotation, in
  JOB_COMPLETION_INDEX and as their hostname). At most `parallelism` run at once,
  and never more than the successes still missing (`completions` unset: the
  work-queue pattern, where the first success stops new pods and the Job is done
  once every pod has ended). An Indexed Job runs each index 0..completions-1 until
  one pod of it succeeds.
- Counting is Kubernetes' finalizer tracking: every pod is created with the
  `batch.kubernetes.io/job-tracking` finalizer, so it cannot disappear before its
  outcome is counted. A finished pod (Succeeded, Failed, or deleted before it
  succeeded) is first written into `status.uncountedTerminatedPods` (and an
  Indexed success into `completedIndexes`), then its finalizer is removed, then the
  uid moves into `status.succeeded`/`status.failed`. A crash between the steps
  repeats the later ones only: a pod whose finalizer is gone is never counted
  again, and a uid in the uncounted lists is counted once. Finalizer removals not
  yet seen in the pod cache are remembered, so a stale cache cannot count twice.
- A failed pod is replaced after a back-off: 10 s doubled per failure since the
  last success, at most 6 minutes (Kubernetes' numbers; settings
  `job.backoffBaseSeconds`, `job.backoffMaxSeconds`).
- The Job fails when `status.failed` exceeds `backoffLimit` (with restartPolicy
  OnFailure, container restarts of running pods count too) with reason
  BackoffLimitExceeded, or when it has been active `activeDeadlineSeconds` with
  DeadlineExceeded: FailureTarget is set, active pods are deleted, and Failed is
  set once none is left running. Success sets SuccessCriteriaMet, deletes pods
  left running, then Complete and `completionTime`.
- `suspend` deletes the active pods (not counted as failures) and sets the
  Suspended condition; resuming resets `startTime`, which the deadline counts from.
- A finished Job with `ttlSecondsAfterFinished` is deleted that long after it
  finished; the garbage collector removes its pods.
- Pods whose Job is gone, or that their Job released (labels changed so its
  selector no longer matches), lose the finalizer, so the garbage collector (or
  the kubelet) can remove them.

Status is written through UpdateStatus with the cached resourceVersion, so a
write based on a stale Job is refused and the sync retried. Events:
SuccessfulCreate, SuccessfulDelete, Completed, BackoffLimitExceeded,
DeadlineExceeded, Suspended, Resumed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import structlog
from google.protobuf import timestamp_pb2

from kubeling.api import batch
from kubeling.api.objects import clone
from kubeling.api.selectors import SelectorError
from kubeling.client.informer import Informer, WorkQueue, informers_running, key_of, run_workers
from kubeling.controllers import podutil
from kubeling.controllers.manager import ControllerContext, register
from kubeling.v1 import batch_pb2, core_pb2, meta_pb2

log = structlog.get_logger(__name__)

DEFAULT_BACKOFF_BASE = 10.0
DEFAULT_BACKOFF_MAX = 360.0
# Creations per sync, as Kubernetes' burst limit.
_BURST = 500
_ORPHAN = "orphan|"  # queue keys of pods whose Job is gone: "orphan|ns/pod"


def _stamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def _seconds(stamp: timestamp_pb2.Timestamp) -> float:
    return stamp.seconds + stamp.nanos / 1e9


def _is_set(stamp: timestamp_pb2.Timestamp) -> bool:
    return bool(stamp.seconds or stamp.nanos)


def pod_index(pod: core_pb2.Pod) -> int | None:
    """An Indexed Job pod's completion index (annotation first, as Kubernetes)."""
    text = pod.metadata.annotations.get(batch.COMPLETION_INDEX) or pod.metadata.labels.get(
        batch.COMPLETION_INDEX, ""
    )
    return int(text) if text.isdigit() else None


def _terminal(pod: core_pb2.Pod) -> bool:
    return pod.status.phase in ("Succeeded", "Failed")


@dataclass
class _Backoff:
    """Failures since the last success, and when the last one was seen."""

    failures: int = 0
    last_failure: float = 0.0


@dataclass
class _Outcome:
    """What this sync found out about pods that finished."""

    succeeded: list[core_pb2.Pod]
    failed: list[core_pb2.Pod]
    dropped: list[core_pb2.Pod]  # finished but not counted (suspended, duplicate index)


@register("job")
class JobController:
    def __init__(self, context: ControllerContext) -> None:
        self.api = context.api
        self.recorder = context.recorder
        self.workers = context.settings.workers
        extra = context.settings.extra
        self.backoff_base = float(extra.get("job.backoffBaseSeconds") or DEFAULT_BACKOFF_BASE)
        self.backoff_max = float(extra.get("job.backoffMaxSeconds") or DEFAULT_BACKOFF_MAX)
        self.clock: Callable[[], float] = time.time  # tests may replace it
        self.jobs: Informer[batch_pb2.Job] = Informer(self.api.jobs)
        self.pods: Informer[core_pb2.Pod] = Informer(self.api.pods)
        self.queue = WorkQueue()
        self.expectations = podutil.Expectations()
        # Pod uids whose finalizer this controller removed, per Job key, until the
        # pod cache shows it gone (a stale pod must not be counted again).
        self.removed: dict[str, set[str]] = {}
        self.backoffs: dict[str, _Backoff] = {}
        self.jobs.add_handler(self._on_job)
        self.pods.add_handler(self._on_pod)

    async def run(self) -> None:
        informers: list[Informer[Any]] = [self.jobs, self.pods]
        async with informers_running(informers, "job"):
            await run_workers(self.queue, self.sync, self.workers, "job")

    # ------------------------------------------------------------ event handlers

    def _on_job(self, kind: str, old: Any, new: Any) -> None:
        job = new if new is not None else old
        key = key_of(job)
        if kind == "DELETED":
            self.expectations.forget(key)
            self.backoffs.pop(key, None)
            # Its pods lose their finalizers (orphan path): look at them again.
            for pod in self.pods.list(job.metadata.namespace):
                if podutil.is_controlled_by(pod, job) and self._tracked(pod):
                    self.queue.add(_ORPHAN + key_of(pod))
        self.queue.add(key)

    def _owner_key(self, pod: core_pb2.Pod) -> str | None:
        ref = podutil.controller_of(pod)
        if ref is None or ref.kind != "Job":
            return None
        return f"{pod.metadata.namespace}/{ref.name}"

    def _on_pod(self, kind: str, old: Any, new: Any) -> None:
        pod: core_pb2.Pod = new if new is not None else old
        key = self._owner_key(pod)
        if key is None:
            if kind != "DELETED" and self._tracked(pod):
                self.queue.add(_ORPHAN + key_of(pod))  # released by its Job: let it go
            if kind == "MODIFIED":
                old_key = self._owner_key(old)
                if old_key is not None:
                    self.queue.add(old_key)
            return
        uid = pod.metadata.uid
        if kind == "ADDED":
            self.expectations.observed_add(key)
        if kind == "DELETED" or pod.metadata.HasField("deletion_timestamp"):
            self.expectations.observed_delete(key, uid)
        removed = self.removed.get(key)
        if removed is not None and (kind == "DELETED" or not self._tracked(pod)):
            removed.discard(uid)
        if kind != "DELETED" and self._tracked(pod):
            job = self.jobs.get(pod.metadata.namespace, podutil.controller_of(pod).name)  # type: ignore[union-attr]
            if job is None or not podutil.is_controlled_by(pod, job):
                self.queue.add(_ORPHAN + key_of(pod))
        self.queue.add(key)

    @staticmethod
    def _tracked(pod: core_pb2.Pod) -> bool:
        return batch.TRACKING_FINALIZER in pod.metadata.finalizers

    # ---------------------------------------------------------------------- sync

    async def sync(self, key: str) -> None:
        if key.startswith(_ORPHAN):
            await self._release_orphan(key.removeprefix(_ORPHAN))
            return
        namespace, _, name = key.partition("/")
        job = self.jobs.get(namespace, name)
        if job is None:
            self.expectations.forget(key)
            self.removed.pop(key, None)
            return
        try:
            selector = podutil.selector_of(job.spec.selector)
        except SelectorError as exc:
            self.recorder.record(job, "Warning", "InvalidSelector", str(exc))
            return
        pods = await podutil.claim_pods(self.api, job, selector, self.pods.list(namespace))
        if job.metadata.HasField("deletion_timestamp"):
            await self._remove_finalizers(key, [p for p in pods if self._tracked(p)])
            return
        if batch.finished_type(job):
            await self._sync_finished(key, job, pods)
            return
        await self._sync_running(key, job, pods)

    async def _release_orphan(self, pod_key: str) -> None:
        namespace, _, name = pod_key.partition("/")
        pod = self.pods.get(namespace, name)
        if pod is None or not self._tracked(pod):
            return
        ref = podutil.controller_of(pod)
        if ref is not None and ref.kind == "Job":
            job = self.jobs.get(namespace, ref.name)
            if job is not None and job.metadata.uid == ref.uid:
                return  # its Job is there: the Job's sync handles it
            try:
                live = await self.api.jobs.get(ref.name, namespace)
                if live.metadata.uid == ref.uid:
                    return  # not in the cache yet
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise
        await self._remove_finalizer(pod)

    # --------------------------------------------------------------- finalizers

    async def _remove_finalizer(self, pod: core_pb2.Pod) -> bool:
        """Drop the tracking finalizer (this version of the pod); False if gone."""
        for _ in range(5):
            updated = clone(pod)
            kept = [f for f in updated.metadata.finalizers if f != batch.TRACKING_FINALIZER]
            if len(kept) == len(updated.metadata.finalizers):
                return True
            del updated.metadata.finalizers[:]
            updated.metadata.finalizers.extend(kept)
            try:
                await self.api.pods.update(updated)
                return True
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    return False
                if exc.code() != grpc.StatusCode.ABORTED:
                    raise
            # Changed meanwhile (the kubelet's status): read it and try again.
            try:
                pod = await self.api.pods.get(pod.metadata.name, pod.metadata.namespace)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    return False
                raise
        raise RuntimeError(f"pod {pod.metadata.name} keeps changing")

    async def _remove_finalizers(self, key: str, pods: list[core_pb2.Pod]) -> None:
        if not pods:
            return
        removed = self.removed.setdefault(key, set())
        results = await asyncio.gather(
            *(self._remove_finalizer(p) for p in pods), return_exceptions=True
        )
        for pod, result in zip(pods, results, strict=True):
            if result is True:
                removed.add(pod.metadata.uid)
        _raise_first(results)

    # ------------------------------------------------------------------ finished

    async def _sync_finished(self, key: str, job: batch_pb2.Job, pods: list[core_pb2.Pod]) -> None:
        """Count what is still uncounted, release every pod, then the TTL."""
        status = clone(job.status)
        uncounted = status.uncounted_terminated_pods
        tracked = [p for p in pods if self._tracked(p)]
        await self._remove_finalizers(key, tracked)
        if uncounted.succeeded or uncounted.failed:
            status.succeeded += len(uncounted.succeeded)
            status.failed += len(uncounted.failed)
            status.ClearField("uncounted_terminated_pods")
        status.active = 0
        status.ready = 0
        job = await self._write_status(job, status)
        ttl_seconds = job.spec.ttl_seconds_after_finished
        if not job.spec.HasField("ttl_seconds_after_finished"):
            return
        finished = batch.condition(job.status, batch.finished_type(job))
        since = _seconds(finished.last_transition_time) if finished is not None else self.clock()
        left = since + ttl_seconds - self.clock()
        if left > 0:
            self.queue.add_after(key, left + 0.05)
            return
        log.info("deleting finished job after its TTL", job=key)
        try:
            await self.api.jobs.delete(
                job.metadata.name,
                job.metadata.namespace,
                uid=job.metadata.uid,
                propagation_policy="Background",
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise

    # ------------------------------------------------------------------- running

    def _classify(
        self, key: str, job: batch_pb2.Job, pods: list[core_pb2.Pod]
    ) -> tuple[_Outcome, set[int]]:
        """Pods that finished and are not counted yet (and the completed indexes,
        with this sync's successes)."""
        uncounted = job.status.uncounted_terminated_pods
        known = set(uncounted.succeeded) | set(uncounted.failed)
        removed = self.removed.get(key, set())
        indexed = job.spec.completion_mode == "Indexed"
        completions = job.spec.completions
        completed = batch.parse_indexes(job.status.completed_indexes)
        outcome = _Outcome([], [], [])
        for pod in pods:
            uid = pod.metadata.uid
            if not self._tracked(pod) or uid in removed or uid in known:
                continue
            if pod.status.phase == "Succeeded":
                if indexed:
                    index = pod_index(pod)
                    if index is None or not 0 <= index < completions or index in completed:
                        outcome.dropped.append(pod)  # a second success of an index
                        continue
                    completed.add(index)
                outcome.succeeded.append(pod)
            elif pod.status.phase == "Failed":
                outcome.failed.append(pod)
            elif pod.metadata.HasField("deletion_timestamp"):
                # Deleted before it succeeded: a failure (it may never report one),
                # unless the Job deleted it on purpose: suspended, or already done.
                if job.spec.suspend or batch.condition(job.status, batch.SUCCESS_CRITERIA_MET):
                    outcome.dropped.append(pod)
                else:
                    outcome.failed.append(pod)
        return outcome, completed

    def _note_backoff(self, key: str, outcome: _Outcome) -> None:
        record = self.backoffs.setdefault(key, _Backoff())
        if outcome.succeeded:
            record.failures = 0
        if outcome.failed:
            record.failures += len(outcome.failed)
            record.last_failure = self.clock()

    def _backoff_left(self, key: str) -> float:
        record = self.backoffs.get(key)
        if record is None or record.failures == 0:
            return 0.0
        delay = min(self.backoff_max, self.backoff_base * 2 ** (record.failures - 1))
        return float(record.last_failure + delay - self.clock())

    async def _sync_running(self, key: str, job: batch_pb2.Job, pods: list[core_pb2.Pod]) -> None:
        spec = job.spec
        now = self.clock()
        outcome, completed = self._classify(key, job, pods)
        self._note_backoff(key, outcome)
        status = clone(job.status)
        uncounted = status.uncounted_terminated_pods
        uncounted.succeeded.extend(p.metadata.uid for p in outcome.succeeded)
        uncounted.failed.extend(p.metadata.uid for p in outcome.failed)
        if spec.completion_mode == "Indexed":
            status.completed_indexes = batch.format_indexes(completed)
        succeeded = status.succeeded + len(uncounted.succeeded)
        failed = status.failed + len(uncounted.failed)
        active = [p for p in pods if podutil.is_pod_active(p)]
        running = [p for p in pods if not _terminal(p)]  # active or terminating

        if not spec.suspend and not _is_set(status.start_time):
            status.start_time.CopyFrom(_stamp(now))
        self._suspension(job, status, now)

        # Failure, then success, as Kubernetes decides them.
        if batch.condition(status, batch.FAILURE_TARGET) is None and not spec.suspend:
            failure = self._failure(job, status, failed, active, now)
            if failure is not None:
                reason, message = failure
                _set_condition(status, batch.FAILURE_TARGET, reason, message, now)
                self.recorder.record(job, "Warning", reason, message)
        failing = batch.condition(status, batch.FAILURE_TARGET) is not None
        met = batch.condition(status, batch.SUCCESS_CRITERIA_MET) is not None
        if not failing and not met and self._succeeded(job, succeeded, completed, active):
            _set_condition(
                status, batch.SUCCESS_CRITERIA_MET, "CompletionsReached",
                "Reached expected number of succeeded pods", now,
            )  # fmt: skip
        ending = failing or batch.condition(status, batch.SUCCESS_CRITERIA_MET) is not None

        # Record the newly finished pods before their finalizers go.
        if outcome.succeeded or outcome.failed:
            job = await self._write_status(job, status)
            status = clone(job.status)
            uncounted = status.uncounted_terminated_pods

        try:
            if ending or spec.suspend:
                await self._delete_pods(key, job, active)
            elif self.expectations.satisfied(key):
                await self._manage(key, job, active, succeeded, completed, now)
        finally:
            # Release the counted (and the dropped) pods, then count them.
            by_uid = {p.metadata.uid: p for p in pods}
            counted = set(uncounted.succeeded) | set(uncounted.failed)
            releasing = [by_uid[u] for u in counted if u in by_uid and self._tracked(by_uid[u])]
            await self._remove_finalizers(key, releasing + outcome.dropped)
            removed = self.removed.get(key, set())
            for field, total in (("succeeded", "succeeded"), ("failed", "failed")):
                uids = list(getattr(uncounted, field))
                done = [
                    u
                    for u in uids
                    if u not in by_uid or u in removed or not self._tracked(by_uid[u])
                ]
                setattr(status, total, getattr(status, total) + len(done))
                left = [u for u in uids if u not in done]
                del getattr(uncounted, field)[:]
                getattr(uncounted, field).extend(left)
            if not uncounted.succeeded and not uncounted.failed:
                status.ClearField("uncounted_terminated_pods")

        active = [p for p in active if podutil.is_pod_active(p)]
        status.active = len(active) if not (ending or spec.suspend) else 0
        status.ready = sum(1 for p in active if podutil.is_pod_ready(p)) if status.active else 0
        status.terminating = sum(1 for p in running if p.metadata.HasField("deletion_timestamp"))
        if ending and not running and not status.HasField("uncounted_terminated_pods"):
            self._finish(job, status, now)
        await self._write_status(job, status)
        self._plan_wakeup(key, job, now)

    def _suspension(self, job: batch_pb2.Job, status: batch_pb2.JobStatus, now: float) -> None:
        current = next((c for c in status.conditions if c.type == batch.SUSPENDED), None)
        if job.spec.suspend:
            if current is None or current.status != "True":
                _set_condition(status, batch.SUSPENDED, "JobSuspended", "Job suspended", now)
                self.recorder.record(job, "Normal", "Suspended", "Job suspended")
        elif current is not None and current.status == "True":
            _set_condition(status, batch.SUSPENDED, "JobResumed", "Job resumed", now, value="False")
            # The deadline counts from the resumption, as Kubernetes resets startTime.
            status.start_time.CopyFrom(_stamp(now))
            self.recorder.record(job, "Normal", "Resumed", "Job resumed")

    def _failure(
        self,
        job: batch_pb2.Job,
        status: batch_pb2.JobStatus,
        failed: int,
        active: list[core_pb2.Pod],
        now: float,
    ) -> tuple[str, str] | None:
        spec = job.spec
        limit = spec.backoff_limit
        if failed > limit:
            return "BackoffLimitExceeded", "Job has reached the specified backoff limit"
        if spec.template.spec.restart_policy == "OnFailure":
            # Restarts in place are failures too (Kubernetes' pastBackoffLimitOnFailure).
            restarts = sum(
                s.restart_count
                for p in active
                for s in [*p.status.init_container_statuses, *p.status.container_statuses]
            )
            if restarts > 0 and restarts >= limit:
                return "BackoffLimitExceeded", "Job has reached the specified backoff limit"
        has_deadline = spec.HasField("active_deadline_seconds")
        deadline = spec.active_deadline_seconds if has_deadline else None
        started = _seconds(status.start_time) if _is_set(status.start_time) else None
        if deadline is not None and started is not None and now - started >= deadline:
            return "DeadlineExceeded", "Job was active longer than specified deadline"
        return None

    @staticmethod
    def _succeeded(
        job: batch_pb2.Job, succeeded: int, completed: set[int], active: list[core_pb2.Pod]
    ) -> bool:
        spec = job.spec
        if spec.completion_mode == "Indexed":
            return len(completed) >= spec.completions
        if spec.HasField("completions"):
            return succeeded >= spec.completions
        # Work queue: one success means the work is done, once every pod ended.
        return succeeded > 0 and not active

    def _finish(self, job: batch_pb2.Job, status: batch_pb2.JobStatus, now: float) -> None:
        target = batch.condition(status, batch.FAILURE_TARGET)
        if target is not None:
            _set_condition(status, batch.FAILED, target.reason, target.message, now)
            return
        _set_condition(
            status, batch.COMPLETE, "CompletionsReached",
            "Reached expected number of succeeded pods", now,
        )  # fmt: skip
        status.completion_time.CopyFrom(_stamp(now))
        self.recorder.record(job, "Normal", "Completed", "Job completed")

    def _plan_wakeup(self, key: str, job: batch_pb2.Job, now: float) -> None:
        spec = job.spec
        if spec.suspend or not spec.HasField("active_deadline_seconds"):
            return
        if not _is_set(job.status.start_time):
            self.queue.add_after(key, spec.active_deadline_seconds)
            return
        left = _seconds(job.status.start_time) + spec.active_deadline_seconds - now
        self.queue.add_after(key, max(left, 0.0) + 0.05)

    # ------------------------------------------------------------------- manage

    async def _manage(
        self,
        key: str,
        job: batch_pb2.Job,
        active: list[core_pb2.Pod],
        succeeded: int,
        completed: set[int],
        now: float,
    ) -> None:
        spec = job.spec
        parallelism = spec.parallelism
        if spec.completion_mode == "Indexed":
            want = min(parallelism, max(spec.completions - len(completed), 0))
        elif spec.HasField("completions"):
            want = min(parallelism, max(spec.completions - succeeded, 0))
        else:
            want = len(active) if succeeded > 0 else parallelism
        extra = self._extra_pods(job, active, want, completed)
        if extra:
            await self._delete_pods(key, job, extra)
            return
        missing = want - len(active)
        if missing <= 0:
            return
        wait = self._backoff_left(key)
        if wait > 0:
            self.queue.add_after(key, wait + 0.05)
            return
        missing = min(missing, _BURST)
        indexes: list[int | None] = [None] * missing
        if spec.completion_mode == "Indexed":
            running = {pod_index(p) for p in active}
            free = [i for i in range(spec.completions) if i not in completed and i not in running]
            indexes = list(free[:missing])
        await self._create_pods(key, job, indexes)

    @staticmethod
    def _extra_pods(
        job: batch_pb2.Job, active: list[core_pb2.Pod], want: int, completed: set[int]
    ) -> list[core_pb2.Pod]:
        """Active pods to delete: over `want`, or (Indexed) for an index that is
        done, out of range or already running in another pod."""
        extra: list[core_pb2.Pod] = []
        keep = list(active)
        if job.spec.completion_mode == "Indexed":
            seen: set[int] = set()
            keep = []
            for pod in sorted(active, key=lambda p: _seconds(p.metadata.creation_timestamp)):
                index = pod_index(pod)
                ok = index is not None and 0 <= index < job.spec.completions
                if not ok or index in completed or index in seen:
                    extra.append(pod)
                else:
                    seen.add(index)  # type: ignore[arg-type]
                    keep.append(pod)
        if len(keep) > want:
            ordered = sorted(keep, key=podutil.deletion_order_key)
            extra += ordered[: len(keep) - want]
        return extra

    async def _create_pods(self, key: str, job: batch_pb2.Job, indexes: list[int | None]) -> None:
        self.expectations.expect(key, adds=len(indexes))
        results = await asyncio.gather(
            *(self._create_one(job, index) for index in indexes), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                self.expectations.observed_add(key)  # never to be seen
        _raise_first(results)

    async def _create_one(self, job: batch_pb2.Job, index: int | None) -> None:
        name = job.metadata.name
        prefix = f"{name}-" if index is None else f"{name}-{index}-"
        pod = podutil.pod_from_template(job.spec.template, job, prefix)
        pod.metadata.finalizers.append(batch.TRACKING_FINALIZER)
        if index is not None:
            pod.metadata.labels[batch.COMPLETION_INDEX] = str(index)
            pod.metadata.annotations[batch.COMPLETION_INDEX] = str(index)
            if not pod.spec.hostname:
                pod.spec.hostname = f"{name}-{index}"[:63].rstrip("-.")
            for container in [*pod.spec.init_containers, *pod.spec.containers]:
                if not any(e.name == batch.COMPLETION_INDEX_ENV for e in container.env):
                    container.env.add(name=batch.COMPLETION_INDEX_ENV, value=str(index))
        await podutil.create_pod(self.api, self.recorder, job, pod)

    async def _delete_pods(self, key: str, job: batch_pb2.Job, pods: list[core_pb2.Pod]) -> None:
        if not pods:
            return
        self.expectations.expect(key, delete_uids=[p.metadata.uid for p in pods])
        results = await asyncio.gather(
            *(podutil.delete_pod(self.api, self.recorder, job, p) for p in pods),
            return_exceptions=True,
        )
        for pod, result in zip(pods, results, strict=True):
            if result is not True:
                self.expectations.observed_delete(key, pod.metadata.uid)
        _raise_first(results)

    # -------------------------------------------------------------------- status

    async def _write_status(self, job: batch_pb2.Job, status: batch_pb2.JobStatus) -> batch_pb2.Job:
        if status == job.status:
            return job
        updated = clone(job)
        updated.status.CopyFrom(status)
        return await self.api.jobs.update_status(updated)


def _set_condition(
    status: batch_pb2.JobStatus,
    type_: str,
    reason: str,
    message: str,
    now: float,
    value: str = "True",
) -> None:
    for c in status.conditions:
        if c.type == type_:
            if c.status != value:
                c.last_transition_time.CopyFrom(_stamp(now))
            c.status, c.reason, c.message = value, reason, message
            c.last_probe_time.CopyFrom(_stamp(now))
            return
    status.conditions.append(
        meta_pb2.Condition(
            type=type_,
            status=value,
            reason=reason,
            message=message,
            last_probe_time=_stamp(now),
            last_transition_time=_stamp(now),
        )
    )


def _raise_first(results: list[Any]) -> None:
    for result in results:
        if isinstance(result, BaseException):
            raise result
