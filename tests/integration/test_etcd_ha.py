"""Several real master processes on one real etcd: no single point of failure.

- kill -9 the master holding the controller Lease while a Deployment scales from 2
  to 20: the other master takes the Lease and finishes the work, with no pod lost
  or made twice;
- a watch survives its master's restart (and a move to another master) without a
  missed or repeated event, resuming from its last resourceVersion.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from kubeling.client import Client
from kubeling.v1 import apps_pb2, core_pb2
from tests.support.etcd import EtcdCluster, running_etcd
from tests.support.processes import MasterProcess

pytestmark = pytest.mark.slow

NS = "default"


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    with running_etcd(tmp_path_factory.mktemp("etcd-ha")) as cluster:
        yield cluster


@contextlib.contextmanager
def master_processes(
    tmp_path: Path, etcd: EtcdCluster, count: int
) -> Iterator[list[MasterProcess]]:
    prefix = f"/kubeling-{uuid.uuid4().hex[:8]}"
    store = ["--store", f"etcd://{etcd.endpoints}", "--etcd-prefix", prefix]
    procs = [MasterProcess(tmp_path / f"m{i}", None, *store) for i in range(count)]
    try:
        for proc in procs:
            proc.start()
        yield procs
    finally:
        for proc in procs:
            proc.stop()


def deployment(name: str, replicas: int) -> apps_pb2.Deployment:
    d = apps_pb2.Deployment()
    d.metadata.name = name
    d.metadata.namespace = NS
    d.spec.replicas = replicas
    d.spec.selector.match_labels["app"] = name
    d.spec.template.metadata.labels["app"] = name
    d.spec.template.spec.containers.add(name="c", image="busybox:1.36")
    return d


async def leader_pid(api: Client, not_pid: int = 0) -> int:
    """The PID in the controller Lease's holder identity (host_address_pid), once
    it is not `not_pid` (within 60 s)."""
    deadline = time.monotonic() + 60
    while True:
        with contextlib.suppress(grpc.aio.AioRpcError):
            lease = await api.leases.get("kubeling-controller-manager", "kube-system")
            holder = lease.spec.holder_identity
            if holder and int(holder.rsplit("_", 1)[1]) != not_pid:
                return int(holder.rsplit("_", 1)[1])
        if time.monotonic() > deadline:
            raise TimeoutError("no (other) master took the controller Lease")
        await asyncio.sleep(0.2)


async def pods_of(api: Client, app: str) -> list[core_pb2.Pod]:
    listed = await api.pods.list(NS, label_selector=f"app={app}")
    return [p for p in listed.items if not p.metadata.deletion_timestamp.seconds]


async def test_killing_the_leading_master_mid_scale_loses_and_doubles_nothing(
    tmp_path: Path, etcd: EtcdCluster
) -> None:
    with master_processes(tmp_path, etcd, 2) as procs:
        by_pid = {p.process.pid: p for p in procs if p.process is not None}
        async with contextlib.AsyncExitStack() as stack:
            clients = [
                await stack.enter_async_context(Client(p.address, timeout=10)) for p in procs
            ]
            leader = by_pid[await leader_pid(clients[0])]
            other = clients[1 - procs.index(leader)]
            await other.deployments.create(deployment("web", 2))
            deadline = time.monotonic() + 60
            while len(await pods_of(other, "web")) < 2:
                assert time.monotonic() < deadline, "the 2 first pods never came"
                await asyncio.sleep(0.2)

            current = await other.deployments.get("web", NS)
            current.spec.replicas = 20
            await other.deployments.update(current)
            # Kill the leader as soon as it has started on the new pods.
            while len(await pods_of(other, "web")) <= 2:  # noqa: ASYNC110 (polls the API)
                await asyncio.sleep(0.01)
            assert leader.process is not None
            killed = leader.process.pid
            leader.kill9()
            made_before = len(await pods_of(other, "web"))
            print("pods made before the kill:", made_before)

            # The survivor takes the Lease (15 s lease) and completes the scale-up.
            new_pid = await leader_pid(other, not_pid=killed)
            assert new_pid in by_pid
            deadline = time.monotonic() + 60
            while len(await pods_of(other, "web")) < 20:
                assert time.monotonic() < deadline, "the new leader did not finish"
                await asyncio.sleep(0.5)
            await asyncio.sleep(3)  # nothing more gets made afterwards
            pods = await pods_of(other, "web")
            assert len(pods) == 20, (made_before, [p.metadata.name for p in pods])
            assert len({p.metadata.name for p in pods}) == 20
            sets = await other.replica_sets.list(NS)
            assert len(sets.items) == 1
            assert {p.metadata.owner_references[0].uid for p in pods} == {
                sets.items[0].metadata.uid
            }


async def test_a_watch_resumes_across_master_restart_and_master_change(
    tmp_path: Path, etcd: EtcdCluster
) -> None:
    """Writes go on through master B while the watcher's master A is restarted
    (kill -9, then start); the watcher resumes on B, then again on the restarted A,
    each time from the last resourceVersion it saw: it sees every write exactly
    once, in order."""
    with master_processes(tmp_path, etcd, 2) as (a, b):
        async with Client(a.address, timeout=10) as on_a, Client(b.address, timeout=10) as on_b:
            start = await on_a.services.list(NS)
            seen: list[tuple[str, str, str]] = []
            last = start.resource_version

            async def follow(api: Client, until: int) -> None:
                nonlocal last
                with contextlib.suppress(grpc.aio.AioRpcError):
                    async for event in api.services.watch(NS, resource_version=last):
                        if event.type == "BOOKMARK":
                            last = event.object.metadata.resource_version
                            continue
                        meta = event.object.metadata
                        seen.append((event.type, meta.name, meta.resource_version))
                        last = meta.resource_version
                        if len(seen) >= until:
                            return

            writes = 0

            async def write(count: int) -> None:
                nonlocal writes
                for _ in range(count):
                    svc = core_pb2.Service()
                    svc.metadata.name = f"s{writes}"
                    svc.metadata.namespace = NS
                    svc.spec.cluster_ip = "None"
                    svc.spec.ports.add(port=80, protocol="TCP")
                    await on_b.services.create(svc)
                    writes += 1

            watching = asyncio.create_task(follow(on_a, 10_000))
            await write(10)
            a.kill9()  # the watch on A breaks
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await asyncio.wait_for(watching, 10)
            await write(10)  # while nobody watches
            # Resume on B from the last revision seen.
            await asyncio.wait_for(follow(on_b, 20), 20)
            await write(5)
            a.start()  # a restarted A replays etcd's history into its cache
            async with Client(a.address, timeout=10) as again:
                await asyncio.wait_for(follow(again, 25), 20)
            names = [name for _, name, _ in seen]
            assert names == [f"s{i}" for i in range(25)]
            assert all(t == "ADDED" for t, _, _ in seen)
            revisions = [int(rv) for _, _, rv in seen]
            assert revisions == sorted(revisions) and len(set(revisions)) == 25
