"""Pod workers (kubelet/workers.py): the latest state wins, syncing → terminating →
terminated, a shorter grace period interrupts the stop in flight, and the workers
survive their dispatch loop's crash."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from kubeling.common.supervisor import Supervisor
from kubeling.kubelet.steps import SyncResult
from kubeling.kubelet.workers import PodState, PodWorkers
from tests.support.waiting import eventually


@dataclass
class Pods:
    """What the kubelet would say about each pod, and the syncs the workers ran."""

    grace: dict[str, int | None] = field(default_factory=dict)
    syncs: list[tuple[str, int | None]] = field(default_factory=list)
    block: dict[str, asyncio.Event] = field(default_factory=dict)  # syncs wait on it
    results: dict[str, SyncResult] = field(default_factory=dict)
    cancelled: list[str] = field(default_factory=list)
    entered: asyncio.Event = field(default_factory=asyncio.Event)

    async def sync(self, uid: str) -> SyncResult:
        grace = self.grace.get(uid)
        self.syncs.append((uid, grace))
        self.entered.set()
        gate = self.block.get(uid)
        if gate is not None:
            try:
                await gate.wait()
            except asyncio.CancelledError:
                self.cancelled.append(uid)
                raise
        if grace is not None:
            return SyncResult(done=True)
        return self.results.get(uid, SyncResult())

    def grace_of(self, uid: str) -> int | None:
        return self.grace.get(uid)


@pytest.fixture
async def running() -> AsyncIterator[tuple[Pods, PodWorkers, Supervisor]]:
    pods = Pods()
    workers = PodWorkers(pods.sync, pods.grace_of)
    supervisor = Supervisor("test", initial_backoff=0.01)
    supervisor.start("pod-workers", workers.run)
    try:
        yield pods, workers, supervisor
    finally:
        await supervisor.stop()


async def test_updates_during_a_sync_collapse_into_one_more(
    running: tuple[Pods, PodWorkers, Supervisor],
) -> None:
    pods, workers, _ = running
    pods.block["a"] = gate = asyncio.Event()
    workers.update("a")
    await eventually(lambda: pods.syncs)
    for _ in range(5):
        workers.update("a")
    assert workers.pending("a")
    pods.block["a"] = second = asyncio.Event()
    gate.set()
    await eventually(lambda: len(pods.syncs) == 2)
    assert not workers.pending("a")  # the five updates made this one sync
    second.set()
    assert pods.syncs == [("a", None), ("a", None)]
    assert workers.state("a") is PodState.SYNCING


async def test_a_deleted_pod_terminates_and_is_forgotten(
    running: tuple[Pods, PodWorkers, Supervisor],
) -> None:
    pods, workers, _ = running
    workers.update("a")
    await eventually(lambda: pods.syncs)
    pods.grace["a"] = 30
    workers.update("a")
    assert workers.state("a") is PodState.TERMINATING
    await eventually(lambda: not workers.active())
    assert pods.syncs == [("a", None), ("a", 30)]


async def test_deletion_interrupts_a_sync_in_flight(
    running: tuple[Pods, PodWorkers, Supervisor],
) -> None:
    pods, workers, _ = running
    pods.block["a"] = asyncio.Event()  # e.g. a long image pull
    workers.update("a")
    await eventually(lambda: pods.syncs)
    pods.grace["a"] = 30
    pods.block.pop("a")
    workers.update("a")
    await eventually(lambda: not workers.active())
    assert pods.cancelled == ["a"]
    assert pods.syncs == [("a", None), ("a", 30)]


async def test_the_same_or_a_longer_grace_lets_the_stop_go_on(
    running: tuple[Pods, PodWorkers, Supervisor],
) -> None:
    pods, workers, _ = running
    pods.grace["a"] = 30
    pods.block["a"] = gate = asyncio.Event()
    workers.update("a")
    await eventually(lambda: pods.syncs)
    workers.update("a")  # the same grace again
    pods.grace["a"] = 31
    workers.update("a")  # a longer one
    gate.set()
    await eventually(lambda: not workers.active())
    # Not interrupted: the stop ended, then the pending update made one more kill.
    assert pods.cancelled == []
    assert pods.syncs == [("a", 30), ("a", 31)]


async def test_a_shorter_grace_cuts_the_stop_in_flight_short(
    running: tuple[Pods, PodWorkers, Supervisor],
) -> None:
    pods, workers, _ = running
    pods.grace["a"] = 30
    pods.block["a"] = asyncio.Event()  # a container ignoring SIGTERM
    workers.update("a")
    await eventually(lambda: pods.syncs)
    pods.grace["a"] = 0  # force delete
    pods.block.pop("a")
    workers.update("a")
    await eventually(lambda: not workers.active())
    assert pods.cancelled == ["a"]
    assert pods.syncs == [("a", 30), ("a", 0)]


async def test_a_failing_sync_is_retried() -> None:
    calls = 0

    async def flaky(uid: str) -> SyncResult:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        return SyncResult()

    workers = PodWorkers(flaky)
    supervisor = Supervisor("test")
    supervisor.start("pod-workers", workers.run)
    try:
        workers.update("a")
        await eventually(lambda: calls == 2, 5)
        assert supervisor.restarts("pod-workers") == 0  # a pod's failure is the pod's
    finally:
        await supervisor.stop()


async def test_a_sync_cancelled_from_inside_is_retried() -> None:
    # A CRI call whose channel was closed raises CancelledError in the sync although
    # the worker was not cancelled: the worker retries instead of ending for good.
    calls = 0

    async def cut(uid: str) -> SyncResult:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise asyncio.CancelledError
        return SyncResult()

    workers = PodWorkers(cut)
    supervisor = Supervisor("test")
    supervisor.start("pod-workers", workers.run)
    try:
        workers.update("a")
        await eventually(lambda: calls == 2, 5)
        assert workers.state("a") is PodState.SYNCING
    finally:
        await supervisor.stop()


async def test_workers_resume_after_their_dispatch_loop_crashes(
    running: tuple[Pods, PodWorkers, Supervisor],
) -> None:
    pods, workers, supervisor = running
    pods.block["a"] = asyncio.Event()
    workers.update("a")
    await eventually(lambda: pods.syncs)
    supervisor.inject_crash("pod-workers")
    await eventually(lambda: pods.cancelled == ["a"])
    workers.update("b")  # while the loop is down or just back
    pods.block.pop("a")
    await eventually(lambda: supervisor.restarts("pod-workers") == 1)
    # "a" was cut off mid-sync: it syncs again; "b" gets its first sync.
    await eventually(lambda: pods.syncs.count(("a", None)) == 2 and ("b", None) in pods.syncs)
    assert workers.active() == {"a", "b"}
