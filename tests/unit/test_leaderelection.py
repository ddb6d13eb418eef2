"""LeaderElector against an in-process master with short durations."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from kubeling.api.objects import clone, now
from kubeling.client import Client
from kubeling.controllers.leaderelection import LeaderElector
from tests.support.inprocess import in_process_master
from tests.support.waiting import eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")


def elector(api: Client, identity: str, release_on_cancel: bool = True) -> LeaderElector:
    return LeaderElector(
        api,
        identity=identity,
        lease_duration=2.0,
        renew_deadline=1.0,
        retry_period=0.2,
        release_on_cancel=release_on_cancel,
    )


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Client]:
    async with in_process_master(tmp_path, client_timeout=5) as client:
        yield client


class Work:
    """What a leader runs: marks itself running until cancelled."""

    def __init__(self) -> None:
        self.running = False
        self.starts = 0
        self.cancelled = 0

    def __call__(self) -> Callable[[], Awaitable[None]]:
        async def work() -> None:
            self.running = True
            self.starts += 1
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
            finally:
                self.running = False

        return work


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_only_one_leads_and_the_other_takes_over_on_stop(api: Client) -> None:
    a, b = elector(api, "a"), elector(api, "b")
    work_a, work_b = Work(), Work()
    task_a = asyncio.create_task(a.run(work_a()))
    task_b = asyncio.create_task(b.run(work_b()))
    try:
        await eventually(lambda: work_a.running or work_b.running)
        # Several renew periods later still exactly one leader.
        await asyncio.sleep(1.5)
        assert work_a.running != work_b.running
        assert a.is_leader != b.is_leader
        leader, standby = (a, b) if a.is_leader else (b, a)
        lease = await api.leases.get("kubeling-controller-manager", "kube-system")
        assert lease.spec.holder_identity == leader.identity
        assert lease.spec.lease_duration_seconds == 2

        # A clean stop releases the lease: the standby needs no expiry wait.
        started = time.monotonic()
        await stop(task_a if leader is a else task_b)
        await eventually(lambda: standby.is_leader, within=3.0)
        assert time.monotonic() - started < 1.5
        lease = await api.leases.get("kubeling-controller-manager", "kube-system")
        assert lease.spec.holder_identity == standby.identity
        assert lease.spec.lease_transitions >= 1
        assert (work_b if standby is b else work_a).running
    finally:
        await stop(task_a)
        await stop(task_b)


async def test_a_crashed_leader_is_replaced_after_the_lease_expires(api: Client) -> None:
    a = elector(api, "a", release_on_cancel=False)
    b = elector(api, "b")
    work_a, work_b = Work(), Work()
    task_a = asyncio.create_task(a.run(work_a()))
    await eventually(lambda: work_a.running)
    task_b = asyncio.create_task(b.run(work_b()))
    try:
        await asyncio.sleep(0.5)
        assert not work_b.running
        await stop(task_a)  # no release: b must wait for expiry
        started = time.monotonic()
        await eventually(lambda: work_b.running, within=6.0)
        assert time.monotonic() - started >= 1.0
    finally:
        await stop(task_a)
        await stop(task_b)


async def test_losing_the_lease_cancels_the_work(api: Client) -> None:
    a = elector(api, "a")
    work = Work()
    task = asyncio.create_task(a.run(work()))
    try:
        await eventually(lambda: work.running)
        # Someone else writes the lease (as if they had acquired it meanwhile).
        lease = await api.leases.get("kubeling-controller-manager", "kube-system")
        taken = clone(lease)
        taken.spec.holder_identity = "intruder"
        taken.spec.lease_duration_seconds = 3600
        taken.spec.renew_time.CopyFrom(now())
        await api.leases.update(taken)
        await eventually(lambda: work.cancelled == 1, within=5.0)
        assert not a.is_leader
        assert not task.done()  # back to campaigning, not leading
        await asyncio.sleep(0.5)
        assert work.starts == 1
    finally:
        await stop(task)


async def test_work_that_returns_releases_the_lease(api: Client) -> None:
    a = elector(api, "a")

    async def short() -> None:
        await asyncio.sleep(0.1)

    await asyncio.wait_for(a.run(short), 5)
    lease = await api.leases.get("kubeling-controller-manager", "kube-system")
    assert lease.spec.holder_identity == ""


async def test_durations_must_be_ordered() -> None:
    with pytest.raises(ValueError):
        LeaderElector(None, lease_duration=1, renew_deadline=2, retry_period=0.5)  # type: ignore[arg-type]
