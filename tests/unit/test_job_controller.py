"""The Job controller against an in-process master.

No kubelet runs: the test plays it, setting pod phases (Running, Succeeded,
Failed) through UpdateStatus as a kubelet reports them. Pods stay unscheduled,
so a deleted one goes at once, unless the Job's tracking finalizer holds it.
The controller runs in the test's loop with a short failure back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from kubeling.api import batch
from kubeling.api.objects import clone
from kubeling.client import Client
from kubeling.client.events import EventRecorder
from kubeling.controllers.job import JobController
from kubeling.controllers.manager import ControllerContext, ControllerSettings
from kubeling.v1 import batch_pb2, core_pb2
from tests.support import waiting
from tests.support.inprocess import in_process_master

NS = "default"
eventually = functools.partial(waiting.eventually, within=20.0, interval=0.05)


@dataclass
class Env:
    api: Client
    controller: JobController

    async def pods(self, job: str) -> list[core_pb2.Pod]:
        result = await self.api.pods.list(NS, f"{batch.JOB_NAME_LABEL}={job}")
        return result.items

    async def job(self, name: str) -> batch_pb2.Job:
        return await self.api.jobs.get(name, NS)

    async def set_suspend(self, name: str, suspend: bool) -> None:
        """Update the Job's spec, again when the controller's status write won."""
        for _ in range(10):
            j = await self.job(name)
            j.spec.suspend = suspend
            try:
                await self.api.jobs.update(j)
                return
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.ABORTED:
                    raise
        raise AssertionError("could not update the job")

    async def set_phase(self, pod: core_pb2.Pod, phase: str, restarts: int = 0) -> None:
        for _ in range(10):
            try:
                fresh = await self.api.pods.get(pod.metadata.name, NS)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    return
                raise
            update = clone(fresh)
            update.status.phase = phase
            if restarts:
                update.status.container_statuses.add(name="main", restart_count=restarts)
            try:
                await self.api.pods.update_status(update)
                return
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.ABORTED:
                    raise
        raise AssertionError("could not set the pod's phase")


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    # The garbage collector removes a deleted Job's pods (ttlSecondsAfterFinished).
    async with in_process_master(tmp_path, {"garbagecollector"}, bookmark_interval=1.0) as api:
        settings = ControllerSettings(
            workers=2, extra={"job.backoffBaseSeconds": "0.05", "job.backoffMaxSeconds": "0.2"}
        )
        recorder = EventRecorder(api, "test-job-controller")
        controller = JobController(ControllerContext(api, recorder, settings))
        task = asyncio.create_task(controller.run())
        try:
            yield Env(api, controller)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await recorder.flush()


def job(name: str, **spec: object) -> batch_pb2.Job:
    j = batch_pb2.Job(api_version="batch/v1", kind="Job")
    j.metadata.name = name
    j.metadata.namespace = NS
    for key, value in spec.items():
        setattr(j.spec, key, value)
    template = j.spec.template
    template.metadata.labels["app"] = name
    template.spec.restart_policy = "Never"
    template.spec.containers.add(name="main", image="busybox", command=["true"])
    return j


def condition(j: batch_pb2.Job, type_: str) -> tuple[str, str] | None:
    for c in j.status.conditions:
        if c.type == type_ and c.status == "True":
            return c.reason, c.message
    return None


async def events_of(api: Client, name: str) -> list[str]:
    result = await api.events.list(NS, field_selector=f"involvedObject.name={name}")
    return [e.reason for e in result.items]


def live(pods: list[core_pb2.Pod]) -> list[core_pb2.Pod]:
    return [
        p
        for p in pods
        if p.status.phase not in ("Succeeded", "Failed")
        and not p.metadata.HasField("deletion_timestamp")
    ]


async def test_parallelism_2_completions_4_completes_with_at_most_2_active(env: Env) -> None:
    await env.api.jobs.create(job("pi", parallelism=2, completions=4))
    most_active = 0
    finished: set[str] = set()
    created: set[str] = set()

    async def step() -> bool:
        nonlocal most_active
        pods = await env.pods("pi")
        created.update(p.metadata.uid for p in pods)
        running = live(pods)
        most_active = max(most_active, len(running))
        j = await env.job("pi")
        if condition(j, batch.COMPLETE):
            return True
        # Play the kubelet: each pod runs, then succeeds.
        for pod in running:
            if pod.metadata.uid not in finished:
                finished.add(pod.metadata.uid)
                await env.set_phase(pod, "Succeeded")
        return False

    await eventually(step)
    j = await env.job("pi")
    assert most_active <= 2
    assert j.status.succeeded == 4
    assert j.status.failed == 0
    assert j.status.active == 0
    assert len(created) == 4
    assert condition(j, batch.SUCCESS_CRITERIA_MET) is not None
    assert j.status.HasField("completion_time") and j.status.HasField("start_time")
    assert not j.status.HasField("uncounted_terminated_pods")
    # Every pod was released: none keeps the tracking finalizer.
    for pod in await env.pods("pi"):
        assert batch.TRACKING_FINALIZER not in pod.metadata.finalizers
        assert pod.metadata.owner_references[0].kind == "Job"
        assert pod.metadata.owner_references[0].controller
        assert pod.metadata.generate_name == "pi-"
    await eventually(lambda: _has_events(env.api, "pi", {"SuccessfulCreate", "Completed"}))


async def _has_events(api: Client, name: str, wanted: set[str]) -> bool:
    return wanted <= set(await events_of(api, name))


async def test_always_failing_stops_at_backoff_limit(env: Env) -> None:
    await env.api.jobs.create(job("fails", backoff_limit=2))
    failed: set[str] = set()

    async def step() -> bool:
        j = await env.job("fails")
        if condition(j, batch.FAILED):
            return True
        for pod in live(await env.pods("fails")):
            if pod.metadata.uid not in failed:
                failed.add(pod.metadata.uid)
                await env.set_phase(pod, "Failed")
        return False

    await eventually(step)
    j = await env.job("fails")
    assert condition(j, batch.FAILED) == (
        "BackoffLimitExceeded",
        "Job has reached the specified backoff limit",
    )
    assert condition(j, batch.FAILURE_TARGET) is not None
    assert condition(j, batch.COMPLETE) is None
    assert j.status.failed == 3  # backoffLimit + 1
    assert j.status.succeeded == 0
    assert len(failed) == 3
    # No more pods come once it failed.
    await asyncio.sleep(0.5)
    assert len(await env.pods("fails")) == 3
    assert not live(await env.pods("fails"))
    await eventually(lambda: _has_events(env.api, "fails", {"BackoffLimitExceeded"}))


async def test_failed_pods_are_replaced_after_a_backoff(env: Env) -> None:
    env.controller.backoff_base = env.controller.backoff_max = 0.6
    await env.api.jobs.create(job("retry", backoff_limit=4))
    pod = (await eventually(lambda: _one_pod(env, "retry")))[0]
    await env.set_phase(pod, "Failed")
    seen_failed = asyncio.get_running_loop().time()
    second = await eventually(lambda: _pod_other_than(env, "retry", pod.metadata.uid))
    waited = asyncio.get_running_loop().time() - seen_failed
    assert waited >= 0.5, f"replaced after {waited:.2f}s, before its back-off"
    await env.set_phase(second, "Succeeded")
    await eventually(lambda: _complete(env, "retry"))
    j = await env.job("retry")
    assert (j.status.succeeded, j.status.failed) == (1, 1)


async def _one_pod(env: Env, name: str) -> list[core_pb2.Pod] | None:
    pods = live(await env.pods(name))
    return pods or None


async def _pod_other_than(env: Env, name: str, uid: str) -> core_pb2.Pod | None:
    for pod in live(await env.pods(name)):
        if pod.metadata.uid != uid:
            return pod
    return None


async def _complete(env: Env, name: str) -> bool:
    return condition(await env.job(name), batch.COMPLETE) is not None


async def test_active_deadline_fails_the_job_and_deletes_active_pods(env: Env) -> None:
    await env.api.jobs.create(job("slow", parallelism=2, completions=2, active_deadline_seconds=1))
    pods = await eventually(lambda: _count(env, "slow", 2))
    for pod in pods:
        await env.set_phase(pod, "Running")

    async def failed() -> bool:
        return condition(await env.job("slow"), batch.FAILED) is not None

    await eventually(failed)
    j = await env.job("slow")
    assert condition(j, batch.FAILED) == (
        "DeadlineExceeded",
        "Job was active longer than specified deadline",
    )
    assert j.status.active == 0
    # Its running pods were deleted (counted as failed: they never succeeded).
    assert await env.pods("slow") == []
    assert j.status.failed == 2
    await eventually(lambda: _has_events(env.api, "slow", {"DeadlineExceeded"}))


async def _count(env: Env, name: str, n: int) -> list[core_pb2.Pod] | None:
    pods = live(await env.pods(name))
    return pods if len(pods) == n else None


async def test_indexed_job_runs_each_index_once(env: Env) -> None:
    await env.api.jobs.create(
        job("idx", parallelism=2, completions=4, completion_mode="Indexed", backoff_limit=3)
    )
    seen: list[int] = []
    handled: set[str] = set()
    failed_once = False

    async def step() -> bool:
        nonlocal failed_once
        j = await env.job("idx")
        if condition(j, batch.COMPLETE):
            return True
        for pod in live(await env.pods("idx")):
            if pod.metadata.uid in handled:
                continue
            handled.add(pod.metadata.uid)
            index = int(pod.metadata.annotations[batch.COMPLETION_INDEX])
            assert pod.metadata.labels[batch.COMPLETION_INDEX] == str(index)
            assert pod.metadata.name.startswith(f"idx-{index}-")
            assert pod.spec.hostname == f"idx-{index}"
            env_vars = {e.name: e.value for e in pod.spec.containers[0].env}
            assert env_vars[batch.COMPLETION_INDEX_ENV] == str(index)
            if index == 1 and not failed_once:
                failed_once = True  # index 1 fails once: it runs again
                await env.set_phase(pod, "Failed")
                continue
            seen.append(index)
            await env.set_phase(pod, "Succeeded")
        return False

    await eventually(step)
    j = await env.job("idx")
    assert sorted(seen) == [0, 1, 2, 3]
    assert j.status.completed_indexes == "0-3"
    assert (j.status.succeeded, j.status.failed) == (4, 1)


async def test_indexed_job_needs_completions(env: Env) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await env.api.jobs.create(job("noc", parallelism=2, completion_mode="Indexed"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "spec.completions" in (caught.value.details() or "")


async def test_work_queue_job_completes_when_one_succeeds_and_all_ended(env: Env) -> None:
    await env.api.jobs.create(job("queue", parallelism=3))
    pods = await eventually(lambda: _count(env, "queue", 3))
    await env.set_phase(pods[0], "Succeeded")
    await asyncio.sleep(0.3)
    assert not await _complete(env, "queue")  # two still run
    assert len(live(await env.pods("queue"))) == 2  # and no new pod replaces the first
    for pod in pods[1:]:
        await env.set_phase(pod, "Succeeded")
    await eventually(lambda: _complete(env, "queue"))
    assert (await env.job("queue")).status.succeeded == 3


async def test_suspend_deletes_active_pods_and_resume_starts_them(env: Env) -> None:
    await env.api.jobs.create(job("pause", parallelism=2, completions=2))
    await eventually(lambda: _count(env, "pause", 2))
    await env.set_suspend("pause", True)

    async def suspended() -> bool:
        current = await env.job("pause")
        return (
            condition(current, batch.SUSPENDED) is not None
            and not await env.pods("pause")
            and current.status.active == 0
        )

    await eventually(suspended)
    assert (await env.job("pause")).status.failed == 0  # suspending is not failing
    await env.set_suspend("pause", False)
    await eventually(lambda: _count(env, "pause", 2))
    j = await env.job("pause")
    resumed = next(c for c in j.status.conditions if c.type == batch.SUSPENDED)
    assert (resumed.status, resumed.reason) == ("False", "JobResumed")


async def test_created_suspended_runs_nothing(env: Env) -> None:
    await env.api.jobs.create(job("held", suspend=True))
    await eventually(lambda: _suspended(env, "held"))
    await asyncio.sleep(0.3)
    assert await env.pods("held") == []
    assert not (await env.job("held")).status.HasField("start_time")


async def _suspended(env: Env, name: str) -> bool:
    return condition(await env.job(name), batch.SUSPENDED) is not None


async def test_ttl_after_finished_deletes_the_job_and_its_pods(env: Env) -> None:
    await env.api.jobs.create(job("short", ttl_seconds_after_finished=1))
    pod = (await eventually(lambda: _one_pod(env, "short")))[0]
    await env.set_phase(pod, "Succeeded")
    await eventually(lambda: _complete(env, "short"))

    async def gone() -> bool:
        try:
            await env.job("short")
        except grpc.aio.AioRpcError as exc:
            return exc.code() == grpc.StatusCode.NOT_FOUND
        return False

    await eventually(gone)
    await eventually(lambda: _no_pods(env, "short"))


async def _no_pods(env: Env, name: str) -> bool:
    return not await env.pods(name)


async def test_deleted_job_releases_its_pods(env: Env) -> None:
    await env.api.jobs.create(job("drop", parallelism=2, completions=2))
    await eventually(lambda: _count(env, "drop", 2))
    await env.api.jobs.delete("drop", NS)
    # The garbage collector deletes them; the finalizer must not keep them.
    await eventually(lambda: _no_pods(env, "drop"))


async def test_on_failure_restarts_count_toward_the_backoff_limit(env: Env) -> None:
    j = job("restarts", backoff_limit=2)
    j.spec.template.spec.restart_policy = "OnFailure"
    await env.api.jobs.create(j)
    pod = (await eventually(lambda: _one_pod(env, "restarts")))[0]
    await env.set_phase(pod, "Running", restarts=2)

    async def failed() -> bool:
        return condition(await env.job("restarts"), batch.FAILED) is not None

    await eventually(failed)
    assert condition(await env.job("restarts"), batch.FAILED) is not None
    assert condition(await env.job("restarts"), batch.FAILED)[0] == "BackoffLimitExceeded"  # type: ignore[index]


async def test_a_released_pod_loses_the_tracking_finalizer(env: Env) -> None:
    await env.api.jobs.create(job("keep", parallelism=1, completions=1))
    pod = (await eventually(lambda: _one_pod(env, "keep")))[0]
    for _ in range(10):
        fresh = await env.api.pods.get(pod.metadata.name, NS)
        del fresh.metadata.labels[batch.CONTROLLER_UID_LABEL]
        try:
            await env.api.pods.update(fresh)
            break
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.ABORTED:
                raise

    async def released() -> bool:
        current = await env.api.pods.get(pod.metadata.name, NS)
        return not current.metadata.owner_references and not current.metadata.finalizers

    await eventually(released)
    # The Job runs a new pod in its place.
    replacement = await eventually(lambda: _pod_other_than(env, "keep", pod.metadata.uid))
    assert replacement.metadata.owner_references[0].kind == "Job"
