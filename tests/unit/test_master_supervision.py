"""The master's loops under its supervisor: a crash injected into any one of them
(each controller, the scheduler, an informer, the namespace controller, leader
election and its renewal, the store's writer) restarts that loop, is counted, and
the work it does still happens afterwards; a loop that keeps crashing turns the
master unhealthy. The store's writer refuses a group it cannot plan and goes on."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from kubeling.client import Client
from kubeling.client.pods import pod_bind
from kubeling.common.supervisor import Supervisor
from kubeling.controllers.manager import ControllerSettings
from kubeling.master.codec import ProtoCodec
from kubeling.master.server import Master, MasterConfig
from kubeling.master.store.base import StoreError
from kubeling.master.store.sqlite import SqliteStore
from kubeling.v1 import apps_pb2, core_pb2
from tests.integration.test_controllers_misc import (
    gone,
    make_daemon_set,
    owned_pod,
    service_slices,
    set_pod_status,
)
from tests.integration.test_controllers_misc import make_node as ready_node
from tests.integration.test_controllers_misc import make_pod as labelled_pod
from tests.integration.test_scheduler import make_node, make_pod
from tests.integration.test_workloads import deployment, replica_set
from tests.support import waiting
from tests.support.inprocess import serving

pytestmark = pytest.mark.asyncio(loop_scope="session")

NS = "default"

eventually = functools.partial(waiting.eventually, within=15.0, interval=0.05)
eventually_passes = functools.partial(waiting.eventually_passes, within=15.0, interval=0.05)


def crashes(loop: str) -> float:
    return REGISTRY.get_sample_value("kubeling_loop_crashes_total", {"loop": loop}) or 0.0


@contextlib.asynccontextmanager
async def master_running(
    tmp_path: Path, settings: ControllerSettings | None = None, **config: Any
) -> AsyncIterator[tuple[Master, Client]]:
    """An in-process master (all controllers unless `controllers` says otherwise)."""
    config.setdefault("controllers", {"*"})
    master = Master(
        MasterConfig(
            listen="127.0.0.1:0",
            tls=False,
            data_dir=tmp_path,
            controller_settings=settings or ControllerSettings(cluster_cidr="10.244.0.0/16"),
            bookmark_interval=1.0,
            **config,
        )
    )
    async with serving(master) as api:
        yield master, api


async def crash(supervisor: Supervisor, loop: str) -> None:
    """Inject a crash into `loop` once it runs, and wait for its restart."""
    before_crashes, before_restarts = crashes(loop), supervisor.restarts(loop)
    await eventually(lambda: supervisor.inject_crash(loop) is None, retry_on=(LookupError,))
    await eventually(lambda: supervisor.restarts(loop) > before_restarts)
    assert crashes(loop) == before_crashes + 1


# ------------------------------------------------------------ what each loop does


async def replica_set_gets_pods(master: Master, api: Client) -> None:
    rs = await api.replica_sets.create(replica_set("after-crash", 2))

    async def owned_pods() -> bool:
        pods = (await api.pods.list(NS, label_selector="app=after-crash")).items
        owned = [p for p in pods if p.metadata.owner_references[0].uid == rs.metadata.uid]
        return len(owned) == 2

    await eventually(owned_pods)


async def pod_gets_bound(master: Master, api: Client) -> None:
    await api.nodes.create(make_node("node-1"))
    await api.pods.create(make_pod("after-crash"))

    async def bound() -> str:
        return (await api.pods.get("after-crash", NS)).spec.node_name

    assert await eventually(bound) == "node-1"


async def deployment_gets_replica_set(master: Master, api: Client) -> None:
    made = await api.deployments.create(deployment("after-crash", 1))

    async def owned() -> bool:
        items = (await api.replica_sets.list(NS)).items
        return any(rs.metadata.owner_references[0].uid == made.metadata.uid for rs in items)

    await eventually(owned)


async def daemon_set_covers_node(master: Master, api: Client) -> None:
    await api.nodes.create(ready_node("worker-1", {"role": "worker"}))
    await api.daemon_sets.create(make_daemon_set("after-crash"))

    async def placed() -> bool:
        pods = (await api.pods.list(NS, label_selector="app=after-crash")).items
        return [p.spec.node_name for p in pods] == ["worker-1"]

    await eventually(placed)


async def service_gets_endpoints(master: Master, api: Client) -> None:
    svc = core_pb2.Service()
    svc.metadata.name = "after-crash"
    svc.metadata.namespace = NS
    svc.spec.selector["app"] = "after-crash"
    svc.spec.ports.add(name="http", port=80)
    await api.services.create(svc)
    await api.pods.create(labelled_pod("backend", {"app": "after-crash"}, node="n1"))
    await set_pod_status(api, "backend", True, "10.244.0.11")

    async def listed() -> bool:
        slices = await service_slices(api, "after-crash")
        return [e.addresses[0] for s in slices for e in s.endpoints] == ["10.244.0.11"]

    await eventually(listed)


async def orphan_is_collected(master: Master, api: Client) -> None:
    ghost = apps_pb2.ReplicaSet(api_version="apps/v1", kind="ReplicaSet")
    ghost.metadata.name = "ghost"
    ghost.metadata.uid = "uid-of-an-owner-that-never-existed"
    await api.pods.create(owned_pod("orphan", ghost))
    await eventually(lambda: gone(api, "orphan"))


async def node_gets_pod_cidr(master: Master, api: Client) -> None:
    await api.nodes.create(ready_node("worker-1"))

    async def cidr() -> str:
        return (await api.nodes.get("worker-1")).spec.pod_cidr

    assert (await eventually(cidr)).startswith("10.244.")


async def silent_node_becomes_unknown(master: Master, api: Client) -> None:
    await api.nodes.create(ready_node("silent"))

    async def ready_status() -> bool:
        node = await api.nodes.get("silent")
        return any(c.type == "Ready" and c.status == "Unknown" for c in node.status.conditions)

    await eventually(ready_status)


async def namespace_is_finalized(master: Master, api: Client) -> None:
    ns = core_pb2.Namespace()
    ns.metadata.name = "after-crash"
    await api.namespaces.create(ns)
    inside = labelled_pod("inside", {})
    inside.metadata.namespace = "after-crash"
    await api.pods.create(inside)
    await api.namespaces.delete("after-crash")

    async def deleted() -> bool:
        try:
            await api.namespaces.get("after-crash")
        except grpc.aio.AioRpcError as exc:
            return exc.code() == grpc.StatusCode.NOT_FOUND
        return False

    await eventually(deleted)


async def controllers_untouched_and_working(master: Master, api: Client) -> None:
    """A crash in the lease renewal restarts the renewal only: still leading, and
    the controllers were not restarted."""
    await replica_set_gets_pods(master, api)
    assert master.elector is not None and master.elector.is_leader
    assert master.supervisor.restarts("replicaset") == 0


async def writes_work(master: Master, api: Client) -> None:
    async def created() -> bool:
        await api.pods.create(make_pod("after-crash"))
        return True

    await eventually_passes(created)


@dataclass
class Case:
    loop: str
    check: Callable[[Master, Client], Awaitable[None]]
    settings: dict[str, Any] = field(default_factory=dict)


CASES = [
    Case("replicaset", replica_set_gets_pods),
    Case("replicaset.pods", replica_set_gets_pods),
    Case("deployment", deployment_gets_replica_set),
    Case("daemonset", daemon_set_covers_node),
    Case("endpointslice", service_gets_endpoints),
    Case("garbagecollector", orphan_is_collected),
    Case("nodeipam", node_gets_pod_cidr),
    Case(
        "nodelifecycle",
        silent_node_becomes_unknown,
        {"node_monitor_grace_period": 1.0, "node_monitor_period": 0.2},
    ),
    Case("scheduler", pod_gets_bound),
    Case("scheduler.pods", pod_gets_bound),
    Case("scheduler.nodes", pod_gets_bound),
    Case("namespace-controller", namespace_is_finalized),
    Case("leader-election", replica_set_gets_pods),
    Case("leader-renew", controllers_untouched_and_working),
    Case("store-writer", writes_work),
]


@pytest.mark.parametrize("case", CASES, ids=[c.loop for c in CASES])
async def test_a_crashed_loop_restarts_and_its_work_goes_on(tmp_path: Path, case: Case) -> None:
    settings = ControllerSettings(cluster_cidr="10.244.0.0/16", **case.settings)
    async with master_running(tmp_path, settings) as (master, api):
        await crash(master.supervisor, case.loop)
        await case.check(master, api)
        assert master.healthy()
        assert not master.supervisor.failed.is_set()


# ------------------------------------------------------------ the store's writer


class PoisonCodec(ProtoCodec):
    """Fails while the writer plans a group that holds a pod named `poison`."""

    def stamp(self, value: Any, rev: int) -> None:
        if value.metadata.name == "poison":
            raise RuntimeError("planning failed (injected)")
        super().stamp(value, rev)


async def test_a_group_that_fails_planning_fails_its_writes_and_the_writer_goes_on(
    tmp_path: Path,
) -> None:
    store = SqliteStore(tmp_path / "state.db", PoisonCodec())
    await store.open()
    try:
        first = await store.create("/pods/default/first", make_pod("first"))
        with pytest.raises(StoreError, match="planning failed"):
            await asyncio.wait_for(store.create("/pods/default/poison", make_pod("poison")), 5)
        # Later writes succeed, with the next revision (the failed group used none).
        second = await asyncio.wait_for(store.create("/pods/default/second", make_pod("second")), 5)
        assert second == first + 1
    finally:
        await store.close()
    reopened = SqliteStore(tmp_path / "state.db", ProtoCodec())
    await reopened.open()
    try:
        entries, _ = reopened.list_prefix("/pods/")
        assert sorted(e.key for e in entries) == ["/pods/default/first", "/pods/default/second"]
    finally:
        await reopened.close()


async def test_an_api_write_the_store_cannot_plan_is_unavailable_and_the_server_stays_up(
    tmp_path: Path,
) -> None:
    async with master_running(tmp_path, controllers=set()) as (master, api):
        master.store._codec = PoisonCodec()  # the running writer plans with it
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await api.pods.create(make_pod("poison"))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "planning failed" in (info.value.details() or "")
        created = await api.pods.create(make_pod("fine"))
        assert created.metadata.resource_version
        assert master.healthy()


async def test_while_the_writer_is_down_writes_fail_fast_and_resume_after_its_restart(
    tmp_path: Path,
) -> None:
    async with master_running(tmp_path, controllers=set()) as (master, api):
        master.supervisor.initial_backoff = 2.0  # a long enough gap to write into
        await api.pods.create(make_pod("before"))
        await api.nodes.create(make_node("node-1"))
        master.supervisor.inject_crash("store-writer")
        await asyncio.sleep(0)  # let the writer see its crash
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await api.pods.create(make_pod("during"))
        assert time.monotonic() - started < 1.0  # refused, not queued until the restart
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "writer is not running" in (info.value.details() or "")
        # Writes beyond CRUD (Pods/Bind) answer the same, not a bare INTERNAL.
        with pytest.raises(grpc.aio.AioRpcError) as bind:
            await pod_bind(api, "before", "node-1", NS)
        assert bind.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "writer is not running" in (bind.value.details() or "")
        await eventually(lambda: master.supervisor.restarts("store-writer") == 1)
        after = await api.pods.create(make_pod("after"))
        assert after.metadata.resource_version
        names = [p.metadata.name for p in (await api.pods.list(NS)).items]
        assert sorted(names) == ["after", "before"]


# ------------------------------------------------------------ giving up


async def health_of(api: Client, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(api.channel)
    reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return int(reply.status)


async def test_a_loop_that_keeps_crashing_makes_the_master_unhealthy(tmp_path: Path) -> None:
    async with master_running(
        tmp_path, controllers={"replicaset"}, loop_crash_limit=3, metrics_bind="127.0.0.1:0"
    ) as (master, api):
        master.supervisor.initial_backoff = 0.01
        url = f"http://127.0.0.1:{master.metrics_port}/healthz"
        async with aiohttp.ClientSession() as http:
            async with http.get(url) as response:
                assert response.status == 200
            assert await health_of(api) == health_pb2.HealthCheckResponse.SERVING
            for _ in range(2):
                await crash(master.supervisor, "replicaset")
            # The third crash within the window: the supervisor gives up.
            await eventually(
                lambda: master.supervisor.inject_crash("replicaset") is None,
                retry_on=(LookupError,),
            )
            await asyncio.wait_for(master.supervisor.failed.wait(), 10)
            assert master.supervisor.failure is not None
            assert master.supervisor.failure.loop == "replicaset"
            not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
            await eventually(lambda: _is(health_of(api), not_serving))
            assert await health_of(api, "kubeling.v1.Pods") == not_serving
            async with http.get(url) as response:
                assert response.status == 503


async def _is(value: Awaitable[int], wanted: int) -> bool:
    return await value == wanted
