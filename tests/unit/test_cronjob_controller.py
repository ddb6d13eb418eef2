"""The CronJob controller against an in-process master, with a fake clock.

The controller's clock is the test's: a test creates a CronJob, moves the clock
past a scheduled minute and asks for a sync, so nothing waits for real minutes.
No Job controller runs: the test finishes Jobs by writing their Complete or Failed
condition through UpdateStatus, as the Job controller would.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from kubeling.api import batch
from kubeling.api.objects import clone, now
from kubeling.client import Client
from kubeling.client.events import EventRecorder
from kubeling.controllers.cronjob import CronJobController, job_name
from kubeling.controllers.manager import ControllerContext, ControllerSettings
from kubeling.v1 import batch_pb2
from tests.support import waiting
from tests.support.inprocess import in_process_master

NS = "default"
eventually = functools.partial(waiting.eventually, within=15.0, interval=0.05)
# Long enough for a queued sync to have run when a test checks that nothing happened.
SETTLE = 0.4


@dataclass
class Env:
    api: Client
    controller: CronJobController
    clock: list[dt.datetime]

    def at(self, when: dt.datetime, name: str) -> None:
        """Move the clock to `when` and sync the CronJob `name`."""
        self.clock[0] = when
        self.controller.queue.add(f"{NS}/{name}")

    async def jobs(self, cron_job: str) -> list[batch_pb2.Job]:
        items = (await self.api.jobs.list(NS)).items
        owned = [
            j
            for j in items
            if any(r.kind == "CronJob" and r.name == cron_job for r in j.metadata.owner_references)
            and not j.metadata.HasField("deletion_timestamp")
        ]
        return sorted(owned, key=lambda j: j.metadata.name)

    async def names(self, cron_job: str) -> list[str]:
        return [j.metadata.name for j in await self.jobs(cron_job)]

    async def cron_job(self, name: str) -> batch_pb2.CronJob:
        return await self.api.cron_jobs.get(name, NS)

    async def finish(self, name: str, outcome: str = batch.COMPLETE) -> None:
        job = await self.api.jobs.get(name, NS)
        done = clone(job)
        done.status.conditions.add(
            type=outcome, status="True", reason="Test", last_transition_time=now()
        )
        if outcome == batch.COMPLETE:
            done.status.completion_time.CopyFrom(now())
        await self.api.jobs.update_status(done)

    async def events(self, name: str) -> list[str]:
        result = await self.api.events.list(NS, field_selector=f"involvedObject.name={name}")
        return [e.reason for e in result.items]


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with in_process_master(tmp_path, {"garbagecollector"}, bookmark_interval=1.0) as api:
        recorder = EventRecorder(api, "test-cronjob-controller")
        controller = CronJobController(ControllerContext(api, recorder, ControllerSettings()))
        # Before any CronJob the tests make: nothing is due until they move it.
        clock = [dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10)]
        controller.clock = lambda: clock[0]
        task = asyncio.create_task(controller.run())
        try:
            yield Env(api, controller, clock)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await recorder.flush()


def cron_job(name: str, schedule: str = "* * * * *", **spec: object) -> batch_pb2.CronJob:
    cj = batch_pb2.CronJob(api_version="batch/v1", kind="CronJob")
    cj.metadata.name = name
    cj.metadata.namespace = NS
    cj.spec.schedule = schedule
    for key, value in spec.items():
        setattr(cj.spec, key, value)
    template = cj.spec.job_template
    template.metadata.labels["from"] = name
    template.spec.template.spec.restart_policy = "OnFailure"
    template.spec.template.spec.containers.add(name="c", image="busybox", command=["date"])
    return cj


async def create(env: Env, cj: batch_pb2.CronJob) -> dt.datetime:
    """Create `cj`; returns the first whole minute after its creation."""
    created = await env.api.cron_jobs.create(cj)
    at = created.metadata.creation_timestamp.ToDatetime(tzinfo=dt.UTC)
    return at.replace(second=0, microsecond=0) + dt.timedelta(minutes=1)


def second(seconds: float) -> dt.timedelta:
    return dt.timedelta(seconds=seconds)


MINUTE = dt.timedelta(minutes=1)


async def test_fires_at_the_scheduled_minute(env: Env) -> None:
    m1 = await create(env, cron_job("tick"))
    env.at(m1 - second(1), "tick")
    await asyncio.sleep(SETTLE)
    assert await env.names("tick") == []  # not yet

    env.at(m1 + second(2), "tick")
    expected = job_name("tick", m1)
    assert expected == f"tick-{int(m1.timestamp()) // 60}"
    await eventually(lambda: _names_are(env, "tick", [expected]))
    job = (await env.jobs("tick"))[0]
    assert job.metadata.labels["from"] == "tick"
    ref = job.metadata.owner_references[0]
    assert (ref.kind, ref.controller) == ("CronJob", True)
    scheduled = dt.datetime.fromisoformat(
        job.metadata.annotations[batch.CRONJOB_SCHEDULED_TIMESTAMP]
    )
    assert scheduled == m1
    assert job.spec.template.spec.containers[0].command == ["date"]

    async def status_updated() -> bool:
        cj = await env.cron_job("tick")
        return [r.name for r in cj.status.active] == [
            expected
        ] and cj.status.last_schedule_time.ToDatetime(tzinfo=dt.UTC) == m1

    await eventually(status_updated)
    # The same minute again makes no second Job; the next minute does (Allow).
    env.at(m1 + second(30), "tick")
    await asyncio.sleep(SETTLE)
    assert await env.names("tick") == [expected]
    env.at(m1 + MINUTE + second(1), "tick")
    await eventually(
        lambda: _names_are(env, "tick", sorted([expected, job_name("tick", m1 + MINUTE)]))
    )
    await eventually(lambda: _has_events(env, "tick", {"SuccessfulCreate"}))


async def _names_are(env: Env, name: str, wanted: list[str]) -> bool:
    return await env.names(name) == sorted(wanted)


async def _has_events(env: Env, name: str, wanted: set[str]) -> bool:
    return wanted <= set(await env.events(name))


async def test_forbid_skips_while_a_job_runs(env: Env) -> None:
    m1 = await create(env, cron_job("solo", concurrency_policy="Forbid"))
    env.at(m1 + second(1), "solo")
    first = job_name("solo", m1)
    await eventually(lambda: _names_are(env, "solo", [first]))
    env.at(m1 + MINUTE + second(1), "solo")
    await eventually(lambda: _has_events(env, "solo", {"JobAlreadyActive"}))
    assert await env.names("solo") == [first]
    # Once it finished, the skipped time runs (no starting deadline, as Kubernetes).
    await env.finish(first)
    env.at(m1 + MINUTE + second(5), "solo")
    await eventually(lambda: _names_are(env, "solo", [first, job_name("solo", m1 + MINUTE)]))

    async def last_success_set() -> bool:
        return (await env.cron_job("solo")).status.HasField("last_successful_time")

    await eventually(last_success_set)


async def test_replace_deletes_the_running_job(env: Env) -> None:
    m1 = await create(env, cron_job("swap", concurrency_policy="Replace"))
    env.at(m1 + second(1), "swap")
    first = job_name("swap", m1)
    await eventually(lambda: _names_are(env, "swap", [first]))
    env.at(m1 + MINUTE + second(1), "swap")
    second_job = job_name("swap", m1 + MINUTE)
    await eventually(lambda: _names_are(env, "swap", [second_job]))

    async def only_second_active() -> bool:
        return [r.name for r in (await env.cron_job("swap")).status.active] == [second_job]

    await eventually(only_second_active)


async def test_history_limits_prune_old_jobs(env: Env) -> None:
    m1 = await create(
        env, cron_job("hist", successful_jobs_history_limit=1, failed_jobs_history_limit=1)
    )
    names = [job_name("hist", m1 + i * MINUTE) for i in range(4)]
    outcomes = [batch.COMPLETE, batch.FAILED, batch.COMPLETE, batch.FAILED]
    for i, (name, outcome) in enumerate(zip(names, outcomes, strict=True)):
        env.at(m1 + i * MINUTE + second(1), "hist")
        await eventually(lambda name=name: _exists(env, "hist", name))
        await env.finish(name, outcome)
    env.at(m1 + 3 * MINUTE + second(30), "hist")
    # The newest success and the newest failure stay.
    await eventually(lambda: _names_are(env, "hist", [names[2], names[3]]))
    await eventually(lambda: _has_events(env, "hist", {"SuccessfulDelete", "SawCompletedJob"}))


async def _exists(env: Env, cron_job_name: str, name: str) -> bool:
    return name in await env.names(cron_job_name)


async def test_starting_deadline_skips_a_time_seen_too_late(env: Env) -> None:
    m1 = await create(env, cron_job("late", starting_deadline_seconds=10))
    env.at(m1 + second(30), "late")  # 30 s late for m1: outside the 10 s window
    await asyncio.sleep(SETTLE)
    assert await env.names("late") == []
    env.at(m1 + MINUTE + second(5), "late")  # 5 s late for the next: inside
    await eventually(lambda: _names_are(env, "late", [job_name("late", m1 + MINUTE)]))


async def test_suspended_makes_no_jobs(env: Env) -> None:
    m1 = await create(env, cron_job("off", suspend=True))
    env.at(m1 + second(1), "off")
    await asyncio.sleep(SETTLE)
    assert await env.names("off") == []
    cj = await env.cron_job("off")
    cj.spec.suspend = False
    await env.api.cron_jobs.update(cj)
    env.at(m1 + second(3), "off")
    # Resumed without a starting deadline: the time missed meanwhile runs.
    await eventually(lambda: _names_are(env, "off", [job_name("off", m1)]))


async def test_too_many_missed_times_warns_and_runs_the_latest(env: Env) -> None:
    m1 = await create(env, cron_job("behind"))
    latest = m1 + 150 * MINUTE
    env.at(latest + second(1), "behind")
    await eventually(lambda: _names_are(env, "behind", [job_name("behind", latest)]))
    await eventually(lambda: _has_events(env, "behind", {"TooManyMissedTimes"}))


async def test_time_zone_is_the_schedule_s(env: Env) -> None:
    m1 = await create(env, cron_job("tokyo", "0 9 * * *", time_zone="Asia/Tokyo"))
    # 09:00 in Tokyo (UTC+9, no daylight saving) is 00:00 UTC.
    midnight = (m1 + dt.timedelta(days=1)).replace(hour=0, minute=0)
    env.at(midnight + second(1), "tokyo")
    await eventually(lambda: _names_are(env, "tokyo", [job_name("tokyo", midnight)]))
    job = (await env.jobs("tokyo"))[0]
    stamp = job.metadata.annotations[batch.CRONJOB_SCHEDULED_TIMESTAMP]
    assert stamp.endswith("+09:00") and "T09:00:00" in stamp


async def test_bad_schedule_is_refused(env: Env) -> None:
    for schedule, words in (
        ("61 * * * *", "out of range"),
        ("0 0 * * * *", "expected exactly 5 fields"),
        ("TZ=UTC 0 * * * *", "timeZone field"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await env.api.cron_jobs.create(cron_job("bad", schedule))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        details = caught.value.details() or ""
        assert "spec.schedule" in details and words in details, details
