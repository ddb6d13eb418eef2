"""The CronJob controller: a Job for each time the schedule names.

As kube-controller-manager's (cronjob_controllerv2):

- The schedule (api/cron.py, croniter) is read in `spec.timeZone`, UTC when unset.
  Each sync finds the latest scheduled time after `status.lastScheduleTime` (or the
  CronJob's creation) that is not in the future; earlier missed times are skipped.
  With `startingDeadlineSeconds` only times within that window count, and a time
  found too late is a MissSchedule event. More than 100 missed times is a
  TooManyMissedTimes warning (the clock or a long outage), and the latest one still
  runs.
- Its Job is named `CRONJOB-<scheduled time in minutes since the epoch>`, so one
  scheduled time makes at most one Job, whichever master's controller gets there
  (a Job that already exists is taken as made). The Job carries the jobTemplate's
  labels and annotations, a controller ownerReference and the scheduled time in
  `batch.kubernetes.io/cronjob-scheduled-timestamp`.
- concurrencyPolicy: Allow runs Jobs side by side; Forbid skips a time while a Job
  is active (lastScheduleTime stays, so with a starting deadline the time may still
  run once the active Job ends, as in Kubernetes); Replace deletes the active Jobs
  first.
- `suspend` creates nothing (times missed meanwhile are subject to the deadline).
- status.active lists the running Jobs; finished ones leave it (SawCompletedJob),
  a Complete one sets lastSuccessfulTime. Finished Jobs beyond
  successfulJobsHistoryLimit / failedJobsHistoryLimit are deleted oldest first
  (their pods go with them through the garbage collector).
- The sync is queued again for the next scheduled time. `clock` is injectable so
  tests can move time without waiting for it.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Callable
from typing import Any

import grpc
import structlog
from croniter.croniter import CroniterError
from google.protobuf import timestamp_pb2

from kubeling.api import batch, cron
from kubeling.api.objects import clone
from kubeling.client.informer import Informer, WorkQueue, informers_running, key_of, run_workers
from kubeling.controllers import podutil
from kubeling.controllers.manager import ControllerContext, register
from kubeling.v1 import batch_pb2, meta_pb2

log = structlog.get_logger(__name__)

# Kubernetes' guard: more missed times than this means something is wrong.
MAX_MISSED_TIMES = 100


def _utc(stamp: timestamp_pb2.Timestamp) -> dt.datetime:
    return stamp.ToDatetime(tzinfo=dt.UTC)


def _is_set(stamp: timestamp_pb2.Timestamp) -> bool:
    return bool(stamp.seconds or stamp.nanos)


def _stamp(when: dt.datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when)
    return stamp


def job_name(cron_job_name: str, scheduled: dt.datetime) -> str:
    """Kubernetes' name for the Job of one scheduled time."""
    return f"{cron_job_name}-{int(scheduled.timestamp()) // 60}"


def _started(job: batch_pb2.Job) -> tuple[float, str]:
    stamp = job.status.start_time if _is_set(job.status.start_time) else None
    created = job.metadata.creation_timestamp
    when = stamp if stamp is not None else created
    return when.seconds + when.nanos / 1e9, job.metadata.name


@register("cronjob")
class CronJobController:
    def __init__(self, context: ControllerContext) -> None:
        self.api = context.api
        self.recorder = context.recorder
        self.workers = context.settings.workers
        self.clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)
        self.cron_jobs: Informer[batch_pb2.CronJob] = Informer(self.api.cron_jobs)
        self.jobs: Informer[batch_pb2.Job] = Informer(self.api.jobs)
        self.queue = WorkQueue()
        self.cron_jobs.add_handler(self._on_cron_job)
        self.jobs.add_handler(self._on_job)

    async def run(self) -> None:
        informers: list[Informer[Any]] = [self.cron_jobs, self.jobs]
        async with informers_running(informers, "cronjob"):
            await run_workers(self.queue, self.sync, self.workers, "cronjob")

    def _on_cron_job(self, kind: str, old: Any, new: Any) -> None:
        self.queue.add(key_of(new if new is not None else old))

    def _on_job(self, kind: str, old: Any, new: Any) -> None:
        job = new if new is not None else old
        ref = podutil.controller_of(job)
        if ref is not None and ref.kind == "CronJob":
            self.queue.add(f"{job.metadata.namespace}/{ref.name}")

    # ---------------------------------------------------------------------- sync

    async def sync(self, key: str) -> None:
        namespace, _, name = key.partition("/")
        cj = self.cron_jobs.get(namespace, name)
        if cj is None:
            return
        now = self.clock()
        jobs = [
            j
            for j in self.jobs.list(namespace)
            if podutil.is_controlled_by(j, cj) and not j.metadata.HasField("deletion_timestamp")
        ]
        status = clone(cj.status)
        self._track_active(cj, status, jobs)
        if cj.metadata.HasField("deletion_timestamp"):
            await self._write_status(cj, status)
            return
        await self._clean_history(cj, jobs)
        try:
            tz = cron.zone(cj.spec.time_zone)
        except (ValueError, LookupError):
            self.recorder.record(
                cj, "Warning", "UnknownTimeZone", f"invalid timeZone: {cj.spec.time_zone!r}"
            )
            await self._write_status(cj, status)
            return
        try:
            await self._schedule(key, cj, status, jobs, tz, now)
        except CroniterError as exc:
            self.recorder.record(
                cj, "Warning", "UnparseableSchedule", f"unparseable schedule: {exc}"
            )
        await self._write_status(cj, status)

    def _track_active(
        self, cj: batch_pb2.CronJob, status: batch_pb2.CronJobStatus, jobs: list[batch_pb2.Job]
    ) -> None:
        """status.active: the owned Jobs still running; note finished ones."""
        by_uid = {j.metadata.uid: j for j in jobs}
        kept: list[meta_pb2.ObjectReference] = []
        for ref in status.active:
            job = by_uid.get(ref.uid)
            if job is None:
                # Gone (deleted by hand or by history): no longer active.
                continue
            finished = batch.finished_type(job)
            if finished:
                self.recorder.record(
                    cj, "Normal", "SawCompletedJob",
                    f"Saw completed job: {job.metadata.name}, condition: {finished}",
                )  # fmt: skip
                continue
            kept.append(ref)
        listed = {r.uid for r in kept}
        for job in jobs:
            if not batch.finished_type(job) and job.metadata.uid not in listed:
                kept.append(_reference(job))  # running but not listed (adopted, lost write)
        for job in jobs:
            if batch.finished_type(job) == batch.COMPLETE and _is_set(job.status.completion_time):
                done = job.status.completion_time
                if not _is_set(status.last_successful_time) or _utc(done) > _utc(
                    status.last_successful_time
                ):
                    status.last_successful_time.CopyFrom(done)
        del status.active[:]
        status.active.extend(kept)

    async def _schedule(
        self,
        key: str,
        cj: batch_pb2.CronJob,
        status: batch_pb2.CronJobStatus,
        jobs: list[batch_pb2.Job],
        tz: dt.tzinfo,
        now: dt.datetime,
    ) -> None:
        spec = cj.spec
        schedule = spec.schedule
        self._requeue_at_next(key, schedule, tz, now)
        if spec.suspend:
            return
        scheduled = self._most_recent_unmet(cj, tz, now)
        if scheduled is None:
            return
        has_deadline = spec.HasField("starting_deadline_seconds")
        deadline = spec.starting_deadline_seconds if has_deadline else None
        if deadline is not None and scheduled + dt.timedelta(seconds=deadline) < now:
            when = scheduled.strftime("%a, %d %b %Y %H:%M:%S %z")
            self.recorder.record(
                cj, "Warning", "MissSchedule", f"Missed scheduled time to start a job: {when}"
            )
            return
        name = job_name(cj.metadata.name, scheduled)
        if any(j.metadata.name == name for j in jobs):
            return  # made already (its status write may have been lost)
        active = list(status.active)
        if spec.concurrency_policy == "Forbid" and active:
            self.recorder.record(
                cj, "Normal", "JobAlreadyActive",
                "Not starting job because prior execution is running and concurrency "
                "policy is Forbid",
            )  # fmt: skip
            return
        if spec.concurrency_policy == "Replace":
            for ref in active:
                await self._delete_job(cj, ref.name, ref.uid)
            del status.active[:]
        job = self._job_for(cj, name, scheduled, tz)
        try:
            created = await self.api.jobs.create(job)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                self.recorder.record(
                    cj, "Warning", "FailedCreate", f"Error creating job: {exc.details()}"
                )
                raise
            existing = await self.api.jobs.get(name, cj.metadata.namespace)
            if not podutil.is_controlled_by(existing, cj):
                self.recorder.record(
                    cj, "Warning", "FailedCreate",
                    f"Error creating job: {name} exists and is not this CronJob's",
                )  # fmt: skip
                return
            created = existing
        else:
            self.recorder.record(cj, "Normal", "SuccessfulCreate", f"Created job {name}")
        if created.metadata.uid not in {r.uid for r in status.active}:
            status.active.append(_reference(created))
        status.last_schedule_time.CopyFrom(_stamp(scheduled))

    def _most_recent_unmet(
        self, cj: batch_pb2.CronJob, tz: dt.tzinfo, now: dt.datetime
    ) -> dt.datetime | None:
        """The latest scheduled time in (earliest, now], or None."""
        spec = cj.spec
        if _is_set(cj.status.last_schedule_time):
            earliest = _utc(cj.status.last_schedule_time)
        else:
            earliest = _utc(cj.metadata.creation_timestamp)
        if spec.HasField("starting_deadline_seconds"):
            window_start = now - dt.timedelta(seconds=spec.starting_deadline_seconds)
            earliest = max(earliest, window_start)
        if earliest >= now:
            return None
        times = cron.times_after(spec.schedule, earliest, tz)
        due = itertools.takewhile(lambda t: t <= now, times)
        missed = list(itertools.islice(due, MAX_MISSED_TIMES + 1))
        if not missed:
            return None
        if len(missed) > MAX_MISSED_TIMES:
            self.recorder.record(
                cj, "Warning", "TooManyMissedTimes",
                "too many missed start times. Set or decrease .spec.startingDeadlineSeconds "
                "or check clock skew",
            )  # fmt: skip
            return cron.last_before(spec.schedule, now, tz)
        return missed[-1]

    def _requeue_at_next(self, key: str, schedule: str, tz: dt.tzinfo, now: dt.datetime) -> None:
        try:
            upcoming = next(cron.times_after(schedule, now, tz))
        except (CroniterError, StopIteration):
            return
        self.queue.add_after(key, (upcoming - now).total_seconds() + 0.1)

    def _job_for(
        self, cj: batch_pb2.CronJob, name: str, scheduled: dt.datetime, tz: dt.tzinfo
    ) -> batch_pb2.Job:
        template = cj.spec.job_template
        job = batch_pb2.Job(api_version="batch/v1", kind="Job")
        job.metadata.name = name
        job.metadata.namespace = cj.metadata.namespace
        job.metadata.labels.update(template.metadata.labels)
        job.metadata.annotations.update(template.metadata.annotations)
        job.metadata.annotations[batch.CRONJOB_SCHEDULED_TIMESTAMP] = scheduled.astimezone(
            tz
        ).isoformat()
        job.metadata.owner_references.append(podutil.owner_ref(cj))
        job.spec.CopyFrom(template.spec)
        return job

    async def _delete_job(self, cj: batch_pb2.CronJob, name: str, uid: str) -> None:
        try:
            await self.api.jobs.delete(
                name, cj.metadata.namespace, uid=uid, propagation_policy="Background"
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return
            self.recorder.record(cj, "Warning", "FailedDelete", f"Deleted job: {exc.details()}")
            raise
        self.recorder.record(cj, "Normal", "SuccessfulDelete", f"Deleted job {name}")

    async def _clean_history(self, cj: batch_pb2.CronJob, jobs: list[batch_pb2.Job]) -> None:
        spec = cj.spec
        for outcome, limit in (
            (batch.COMPLETE, spec.successful_jobs_history_limit),
            (batch.FAILED, spec.failed_jobs_history_limit),
        ):
            has_limit = spec.HasField(
                "successful_jobs_history_limit"
                if outcome == batch.COMPLETE
                else "failed_jobs_history_limit"
            )
            if not has_limit:
                continue
            done = sorted((j for j in jobs if batch.finished_type(j) == outcome), key=_started)
            for job in done[: max(len(done) - limit, 0)]:
                await self._delete_job(cj, job.metadata.name, job.metadata.uid)

    async def _write_status(self, cj: batch_pb2.CronJob, status: batch_pb2.CronJobStatus) -> None:
        if status == cj.status:
            return
        updated = clone(cj)
        updated.status.CopyFrom(status)
        await self.api.cron_jobs.update_status(updated)


def _reference(job: batch_pb2.Job) -> meta_pb2.ObjectReference:
    return meta_pb2.ObjectReference(
        kind="Job",
        namespace=job.metadata.namespace,
        name=job.metadata.name,
        uid=job.metadata.uid,
        api_version="batch/v1",
        resource_version=job.metadata.resource_version,
    )
