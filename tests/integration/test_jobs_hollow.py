"""Jobs end to end on a hollow node: an in-process master running the scheduler,
the job and garbage collector controllers, and a real kubelet on the fake CRI
runtime, whose containers exit by themselves (FAKE_RUN_FOR, FAKE_EXIT_CODE). What
this adds to tests/unit/test_job_controller.py: the kubelet's own phases, its
deletion of stopped pods, and the tracking finalizer together; and a CronJob (its
controller on a fake clock) whose Jobs run there, with history pruned through the
garbage collector's CronJob -> Job -> Pod cascade."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kubeling.api import batch
from kubeling.client import Client
from kubeling.client.events import EventRecorder
from kubeling.controllers.cronjob import CronJobController, job_name
from kubeling.controllers.manager import ControllerContext, ControllerSettings
from kubeling.v1 import batch_pb2, core_pb2
from tests.support import hollow, waiting
from tests.support.hollow import HollowNode, hollow_node
from tests.support.inprocess import in_process_master

NODE = "node-jobs"
POD_CIDR = "10.244.9.0/24"
NS = "default"
eventually = functools.partial(waiting.eventually, within=45.0, interval=0.1)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Client]:
    controllers = {"job", "scheduler", "garbagecollector"}
    async with in_process_master(tmp_path / "master", controllers, bookmark_interval=1) as client:
        yield client


@pytest.fixture
async def node(api: Client, tmp_path: Path) -> AsyncIterator[HollowNode]:
    config = hollow.kubelet_config(api.target, tmp_path, NODE, POD_CIDR)
    async with hollow_node(config, api, POD_CIDR) as handle:
        yield handle


def job(name: str, env: dict[str, str], **spec: object) -> batch_pb2.Job:
    j = batch_pb2.Job(api_version="batch/v1", kind="Job")
    j.metadata.name = name
    j.metadata.namespace = NS
    for key, value in spec.items():
        setattr(j.spec, key, value)
    pod = j.spec.template.spec
    pod.restart_policy = "Never"
    pod.termination_grace_period_seconds = 1
    container = pod.containers.add(name="main", image="busybox")
    for key, value in env.items():
        container.env.add(name=key, value=value)
    return j


def finished(j: batch_pb2.Job) -> str:
    return batch.finished_type(j)


async def pods_of(api: Client, name: str) -> list[core_pb2.Pod]:
    return (await api.pods.list(NS, f"{batch.JOB_NAME_LABEL}={name}")).items


async def test_parallel_job_completes_on_a_node(api: Client, node: HollowNode) -> None:
    await api.jobs.create(job("work", {"FAKE_RUN_FOR": "0.5s"}, parallelism=2, completions=4))
    most = 0

    async def complete() -> bool:
        nonlocal most
        running = [p for p in await pods_of(api, "work") if p.status.phase == "Running"]
        most = max(most, len(running))
        return finished(await api.jobs.get("work", NS)) == batch.COMPLETE

    await eventually(complete)
    done = await api.jobs.get("work", NS)
    assert (done.status.succeeded, done.status.failed, done.status.active) == (4, 0, 0)
    assert most <= 2
    pods = await pods_of(api, "work")
    assert len(pods) == 4
    assert all(p.status.phase == "Succeeded" for p in pods)
    assert all(batch.TRACKING_FINALIZER not in p.metadata.finalizers for p in pods)
    assert all(p.spec.node_name == NODE for p in pods)


async def test_failing_job_stops_at_its_backoff_limit(api: Client, node: HollowNode) -> None:
    await api.jobs.create(
        job("broken", {"FAKE_RUN_FOR": "0.2s", "FAKE_EXIT_CODE": "1"}, backoff_limit=1)
    )

    async def failed() -> bool:
        return finished(await api.jobs.get("broken", NS)) == batch.FAILED

    # Back-off: 10 s after the first failure before the second pod.
    await eventually(failed, within=60.0)
    j = await api.jobs.get("broken", NS)
    reason = next(c.reason for c in j.status.conditions if c.type == batch.FAILED)
    assert reason == "BackoffLimitExceeded"
    assert j.status.failed == 2
    assert len(await pods_of(api, "broken")) == 2


async def test_deadline_stops_running_pods_through_the_kubelet(
    api: Client, node: HollowNode
) -> None:
    await api.jobs.create(job("forever", {}, parallelism=2, active_deadline_seconds=2))

    async def failed() -> bool:
        return finished(await api.jobs.get("forever", NS)) == batch.FAILED

    await eventually(failed)
    j = await api.jobs.get("forever", NS)
    reason = next(c.reason for c in j.status.conditions if c.type == batch.FAILED)
    assert reason == "DeadlineExceeded"
    # The kubelet stopped them and removed them: the finalizer held none back.
    await eventually(lambda: _no_pods(api, "forever"))


async def _no_pods(api: Client, name: str) -> bool:
    return not await pods_of(api, name)


async def test_cron_job_runs_jobs_and_prunes_their_history(api: Client, node: HollowNode) -> None:
    recorder = EventRecorder(api, "test-cronjob")
    controller = CronJobController(ControllerContext(api, recorder, ControllerSettings()))
    clock = [dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10)]
    controller.clock = lambda: clock[0]
    task = asyncio.create_task(controller.run())
    try:
        cj = batch_pb2.CronJob(api_version="batch/v1", kind="CronJob")
        cj.metadata.name = "tick"
        cj.metadata.namespace = NS
        cj.spec.schedule = "* * * * *"
        cj.spec.successful_jobs_history_limit = 1
        cj.spec.job_template.spec.CopyFrom(job("x", {"FAKE_RUN_FOR": "0.2s"}).spec)
        created = await api.cron_jobs.create(cj)
        start = created.metadata.creation_timestamp.ToDatetime(tzinfo=dt.UTC)
        first = start.replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
        names = [job_name("tick", first + dt.timedelta(minutes=i)) for i in range(2)]
        for i, name in enumerate(names):
            clock[0] = first + dt.timedelta(minutes=i, seconds=1)
            controller.queue.add(f"{NS}/tick")

            async def complete(name: str = name) -> bool:
                return finished(await api.jobs.get(name, NS)) == batch.COMPLETE

            await eventually(complete, retry_on=waiting.TRANSIENT_ERRORS)
        controller.queue.add(f"{NS}/tick")

        async def pruned() -> bool:
            jobs = [j.metadata.name for j in (await api.jobs.list(NS)).items]
            return jobs == [names[1]] and not await pods_of(api, names[0])

        await eventually(pruned)
        status = (await api.cron_jobs.get("tick", NS)).status
        assert status.HasField("last_successful_time") and not status.active
        assert len(await pods_of(api, names[1])) == 1
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await recorder.flush()
