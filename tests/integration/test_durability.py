"""Every acknowledged write survives kill -9 of the master."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from kubeling.client import Client
from kubeling.v1 import core_pb2
from tests.support.processes import MasterProcess

pytestmark = pytest.mark.asyncio(loop_scope="session")


def make_pod(name: str) -> core_pb2.Pod:
    pod = core_pb2.Pod()
    pod.metadata.name = name
    pod.metadata.namespace = "default"
    pod.spec.containers.add(name="main", image="busybox")
    return pod


async def test_acknowledged_creates_survive_kill_9(tmp_path: Path) -> None:
    master = MasterProcess(tmp_path / "data").start()
    acknowledged: list[str] = []
    try:
        async with Client(master.address, timeout=5) as api:

            async def writer(worker: int) -> None:
                for i in range(10_000):
                    name = f"w{worker}-{i}"
                    try:
                        await api.pods.create(make_pod(name))
                    except grpc.aio.AioRpcError:
                        return  # the master is gone
                    acknowledged.append(name)

            writers = [asyncio.create_task(writer(w)) for w in range(8)]
            while len(acknowledged) < 300:  # noqa: ASYNC110 - polling a plain list
                await asyncio.sleep(0.01)
            master.kill9()
            await asyncio.gather(*writers)
        assert len(acknowledged) >= 300

        master.start()  # same data directory, same port
        async with Client(master.address, timeout=10) as api:
            stored = {p.metadata.name for p in (await api.pods.list("default")).items}
            assert set(acknowledged) <= stored
            # Revisions carry on after the restart: no reuse of a revision.
            newest = max(int(p.metadata.resource_version) for p in (await api.pods.list()).items)
            after = await api.pods.create(make_pod("after-restart"))
            assert int(after.metadata.resource_version) > newest
    finally:
        master.stop()
