"""The loop supervisor: crashes are restarted with back-off and counted; a loop that
keeps crashing gives up and makes the process unhealthy; injected crashes behave as
real ones."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from prometheus_client import REGISTRY

from kubeling.common.lifecycle import EXIT_LOOP_FAILED, until_terminated
from kubeling.common.supervisor import LoopFailed, Supervisor


def crashes(loop: str) -> float:
    return REGISTRY.get_sample_value("kubeling_loop_crashes_total", {"loop": loop}) or 0.0


async def test_a_crashing_loop_is_restarted_and_counted() -> None:
    runs = 0
    recovered = asyncio.Event()

    async def loop() -> None:
        nonlocal runs
        runs += 1
        if runs <= 2:
            raise RuntimeError(f"boom {runs}")
        recovered.set()
        await asyncio.Event().wait()

    before = crashes("t-restart")
    supervisor = Supervisor("test", initial_backoff=0.01)
    supervisor.start("t-restart", loop)
    await asyncio.wait_for(recovered.wait(), 5)
    assert runs == 3
    assert supervisor.restarts("t-restart") == 2
    assert crashes("t-restart") - before == 2
    assert not supervisor.failed.is_set()
    await supervisor.stop()


async def test_a_loop_that_keeps_crashing_gives_up_and_fails_the_process() -> None:
    async def loop() -> None:
        raise ValueError("never works")

    failures: list[LoopFailed] = []
    supervisor = Supervisor("test", initial_backoff=0.001, max_crashes=3, window=60)
    supervisor.on_failure(failures.append)
    task = supervisor.start("t-giveup", loop)
    code = await asyncio.wait_for(until_terminated(supervisor), 5)
    assert code == EXIT_LOOP_FAILED
    assert [f.loop for f in failures] == ["t-giveup"]
    assert isinstance(failures[0].cause, ValueError)
    with pytest.raises(LoopFailed):
        await task
    await supervisor.stop()


async def test_backoff_doubles_between_crashes() -> None:
    starts: list[float] = []
    loop_time = asyncio.get_running_loop().time

    async def loop() -> None:
        starts.append(loop_time())
        if len(starts) < 4:
            raise RuntimeError("again")
        await asyncio.Event().wait()

    supervisor = Supervisor("test", initial_backoff=0.05, max_backoff=1)
    supervisor.start("t-backoff", loop)
    for _ in range(200):
        if len(starts) == 4:
            break
        await asyncio.sleep(0.02)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1 and gaps[2] >= 0.2
    await supervisor.stop()


async def test_an_injected_crash_restarts_the_loop_with_fresh_state() -> None:
    generations: list[int] = []
    started = asyncio.Event()
    cancelled_inside = 0

    async def loop() -> None:
        nonlocal cancelled_inside
        generations.append(len(generations))
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled_inside += 1
            raise

    supervisor = Supervisor("test", initial_backoff=0.01)
    supervisor.start("t-inject", loop)
    await asyncio.wait_for(started.wait(), 5)
    started.clear()
    before = crashes("t-inject")
    supervisor.inject_crash("t-inject")
    await asyncio.wait_for(started.wait(), 5)
    assert generations == [0, 1]
    assert cancelled_inside == 1  # the old run was ended, not left running
    assert crashes("t-inject") - before == 1
    await supervisor.stop()
    assert cancelled_inside == 2


async def test_a_loop_that_returns_is_not_restarted() -> None:
    runs = 0

    async def loop() -> None:
        nonlocal runs
        runs += 1

    supervisor = Supervisor("test")
    await supervisor.start("t-return", loop)
    assert runs == 1 and supervisor.restarts("t-return") == 0


async def test_cancelling_a_supervised_loop_stops_it() -> None:
    inside = asyncio.Event()

    async def loop() -> None:
        inside.set()
        await asyncio.Event().wait()

    supervisor = Supervisor("test")
    task = asyncio.create_task(supervisor.supervise("t-cancel", loop))
    await asyncio.wait_for(inside.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert supervisor.restarts("t-cancel") == 0


async def test_a_loop_raising_cancelled_error_by_itself_is_a_crash() -> None:
    # A grpc.aio channel closed under a pending call raises CancelledError in the
    # caller although nobody cancelled it; the loop must restart, not end silently.
    runs = 0
    back = asyncio.Event()

    async def loop() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise asyncio.CancelledError
        back.set()
        await asyncio.Event().wait()

    before = crashes("t-stray")
    supervisor = Supervisor("test", initial_backoff=0.01)
    supervisor.start("t-stray", loop)
    await asyncio.wait_for(back.wait(), 5)
    assert runs == 2 and crashes("t-stray") - before == 1
    await supervisor.stop()


async def test_a_loop_that_swallows_its_cancellation_is_cancelled_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As a loop that retries an RPC error raised at the moment of its cancel: the
    # first cancellation is consumed; the supervisor's stop must not wait forever.
    monkeypatch.setattr("kubeling.common.supervisor.CANCEL_GRACE", 0.05)
    inside = asyncio.Event()
    cancels = 0

    async def loop() -> None:
        nonlocal cancels
        inside.set()
        while True:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancels += 1
                if cancels == 1:
                    continue  # swallowed
                raise

    supervisor = Supervisor("test")
    supervisor.start("t-stubborn", loop)
    await asyncio.wait_for(inside.wait(), 5)
    stopping = asyncio.create_task(supervisor.stop())
    done, _ = await asyncio.wait({stopping}, timeout=3)
    while not stopping.done():  # (the failure case: free the test's loop)
        stopping.cancel()
        await asyncio.wait({stopping}, timeout=0.1)
    assert stopping in done, "the supervisor still waits for the loop"
    assert cancels == 2
    assert supervisor.restarts("t-stubborn") == 0
