"""Informers and work queues survive errors: a watch that fails with something other
than a gRPC status re-lists and carries on; a sync that raises is retried with
back-off (and counted) without ending its worker."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
from prometheus_client import REGISTRY

from kubeling.client.client import ResourceClient
from kubeling.client.informer import Informer, WorkQueue, run_workers
from kubeling.v1 import core_pb2
from tests.integration.test_scheduler import make_pod
from tests.support.inprocess import in_process_master
from tests.support.waiting import eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")


class BreaksOnce:
    """The real pods client, whose first watch fails (not with a gRPC status) on
    the event for the pod named `trigger`."""

    def __init__(self, real: ResourceClient[core_pb2.Pod]) -> None:
        self.real = real
        self.kind = real.kind
        self.watches = 0

    async def watch(self, *args: Any) -> AsyncIterator[Any]:
        self.watches += 1
        first = self.watches == 1
        async for event in self.real.watch(*args):
            if first and event.object.metadata.name == "trigger":
                raise RuntimeError("undecodable event (injected)")
            yield event


async def test_an_informer_whose_watch_fails_lists_again_and_goes_on(tmp_path: Path) -> None:
    async with in_process_master(tmp_path) as api:
        await api.pods.create(make_pod("before"))
        resource = BreaksOnce(api.pods)
        informer: Informer[core_pb2.Pod] = Informer(cast(Any, resource))
        task = asyncio.create_task(informer.run())
        try:
            await asyncio.wait_for(informer.synced.wait(), 10)
            await api.pods.create(make_pod("trigger"))
            await eventually(lambda: resource.watches == 2)
            await api.pods.delete("before", "default")
            await api.pods.create(make_pod("after"))
            await eventually(lambda: sorted(informer.store) == ["default/after", "default/trigger"])
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def retries(queue: str) -> float:
    return REGISTRY.get_sample_value("workqueue_retries_total", {"name": queue}) or 0.0


async def test_a_failing_sync_is_retried_and_its_worker_lives_on() -> None:
    queue = WorkQueue(base_delay=0.01)
    attempts: dict[str, int] = {}
    done: set[str] = set()

    async def sync(key: str) -> None:
        attempts[key] = attempts.get(key, 0) + 1
        if key == "flaky" and attempts[key] <= 2:
            raise ValueError("not yet (injected)")
        done.add(key)

    before = retries("test-flaky")
    queue.add("flaky")
    workers = asyncio.create_task(run_workers(queue, sync, 1, "test-flaky"))
    try:
        await eventually(lambda: "flaky" in done)
        queue.add("other")  # the same single worker still takes new keys
        await eventually(lambda: "other" in done)
    finally:
        workers.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await workers
    assert attempts == {"flaky": 3, "other": 1}
    assert retries("test-flaky") == before + 2
    adds = REGISTRY.get_sample_value("workqueue_adds_total", {"name": "test-flaky"})
    assert adds is not None and adds >= 4  # two first adds (one before naming) + two retries
