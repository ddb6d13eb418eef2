"""kube-proxy's loops under its supervisor, against a real in-process master and the
fake nftables: a crash injected into the sync loop or a watch is counted and
restarted, and a later service change still reaches the table; a sync loop that
keeps crashing turns /healthz, /livez and gRPC health unhealthy and ends `serve`
with exit status 1."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kubeling.client import Client
from kubeling.common import httpserve, rpc
from kubeling.common.lifecycle import EXIT_LOOP_FAILED, until_terminated
from kubeling.common.supervisor import Supervisor
from kubeling.proxy import health, main, server
from kubeling.proxy.conntrack import RecordingConntrack
from kubeling.proxy.kubeproxy import KubeProxy, ProxyConfig
from kubeling.proxy.nft import FakeNftables, Transaction
from tests.support import waiting
from tests.support.inprocess import in_process_master
from tests.unit.proxy.builders import endpoint_slice, make_kube_proxy, service
from tests.unit.test_master_supervision import crash

eventually = functools.partial(waiting.eventually, within=15.0, interval=0.02)

LOOPS = ("proxy-sync", "proxy-services", "proxy-endpointslices", "proxy-node")


def make_proxy(api: Client, backend: FakeNftables, max_crashes: int = 10) -> KubeProxy:
    supervisor = Supervisor("kubeling-proxy", initial_backoff=0.01, max_crashes=max_crashes)
    config = ProxyConfig(node_name="node-1", min_sync_interval=0.0)
    return KubeProxy(config, api, backend, RecordingConntrack(), supervisor)


@contextlib.asynccontextmanager
async def proxy_running(
    tmp_path: Path, backend: FakeNftables
) -> AsyncIterator[tuple[KubeProxy, Client]]:
    async with in_process_master(tmp_path) as api:
        proxy = make_proxy(api, backend)
        await proxy.start()
        try:
            await asyncio.wait_for(proxy.synced.wait(), 15)
            yield proxy, api
        finally:
            await proxy.stop()


async def add_web_service(api: Client, name: str, endpoint: str) -> str:
    """A Service and its EndpointSlice through the API; returns the ClusterIP."""
    svc = service(name, cluster_ip="")
    created = await api.services.create(svc)
    await api.endpoint_slices.create(endpoint_slice(name, endpoints=[(endpoint, True)]))
    return str(created.spec.cluster_ip)


async def test_every_loop_is_supervised(tmp_path: Path) -> None:
    async with proxy_running(tmp_path, FakeNftables()) as (proxy, _):
        for loop in LOOPS:
            await eventually(
                lambda loop=loop: proxy.supervisor.inject_crash(loop) is None,
                retry_on=(LookupError,),
            )
        await eventually(lambda: all(proxy.supervisor.restarts(loop) == 1 for loop in LOOPS))
        assert proxy.healthy()


async def test_crashed_sync_loop_and_watches_recover(tmp_path: Path) -> None:
    backend = FakeNftables()
    async with proxy_running(tmp_path, backend) as (proxy, api):
        first_ip = await add_web_service(api, "before", "10.244.0.5")
        await eventually(lambda: first_ip in backend.dump())

        for loop in ("proxy-sync", "proxy-services", "proxy-endpointslices"):
            await crash(proxy.supervisor, loop)

        # Changes made after the crashes reach the table: the watches resumed and
        # the sync loop runs again.
        ip = await add_web_service(api, "after", "10.244.0.9")
        await eventually(lambda: ip in backend.dump() and ": 10.244.0.9 . 8080" in backend.dump())
        await api.services.delete("before", "default")
        await eventually(lambda: first_ip not in backend.dump())
        assert proxy.healthy() and not proxy.supervisor.failed.is_set()


class GatedNftables(FakeNftables):
    """Holds apply() until released and counts applies that overlap."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()
        self._running = 0
        self.overlaps = 0
        self._lock = threading.Lock()

    def apply(self, tx: Transaction) -> None:
        with self._lock:
            self._running += 1
            self.overlaps += self._running > 1
        try:
            self.entered.set()
            self.release.wait(10)
            super().apply(tx)
        finally:
            with self._lock:
                self._running -= 1


async def test_a_crash_during_a_sync_is_recovered_by_a_full_sync(tmp_path: Path) -> None:
    backend = GatedNftables()
    async with proxy_running(tmp_path, backend) as (proxy, api):
        backend.release.clear()
        backend.entered.clear()
        ip = await add_web_service(api, "web", "10.244.0.5")
        assert await asyncio.to_thread(backend.entered.wait, 10)
        syncs = proxy.state.syncs
        proxy.supervisor.inject_crash("proxy-sync")
        backend.release.set()
        await eventually(lambda: proxy.supervisor.restarts("proxy-sync") == 1)
        await eventually(lambda: proxy.state.syncs > syncs and ip in backend.dump())
        assert backend.overlaps == 0
        assert proxy.state.last_result is not None and proxy.state.last_result.full


async def test_a_cancelled_sync_returns_only_after_its_transaction() -> None:
    """A transaction runs in a thread, which cannot be stopped: a sync cancelled by a
    crash (or stop) waits for it, so that a restarted loop never runs a second one
    meanwhile; what it took stays queued, and a full sync follows."""
    backend = GatedNftables()
    backend.release.clear()
    proxy = make_kube_proxy(backend)
    svc = service()
    proxy.services.store["default/web"] = svc
    proxy._on_service("ADDED", None, svc)
    task = asyncio.create_task(proxy.sync_once(full=False))
    assert await asyncio.to_thread(backend.entered.wait, 10)
    task.cancel()
    # The broken behaviour (returning at once) would finish the task in one step.
    done, _ = await asyncio.wait([task], timeout=0.2)
    assert not done
    backend.release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert "default/web" in proxy._dirty and proxy._needs_full
    assert proxy.state.queued_since is not None


async def health_of(channel: grpc.aio.Channel, service_name: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    reply = await stub.Check(health_pb2.HealthCheckRequest(service=service_name), timeout=5)
    return int(reply.status)


async def crash_until_it_gives_up(proxy: KubeProxy, loop: str) -> None:
    """Crash `loop` until its supervisor gives up (max_crashes=3 in the window)."""
    for _ in range(2):
        await crash(proxy.supervisor, loop)
    await eventually(lambda: proxy.supervisor.inject_crash(loop) is None, retry_on=(LookupError,))
    await asyncio.wait_for(proxy.supervisor.failed.wait(), 10)
    assert proxy.supervisor.failure is not None and proxy.supervisor.failure.loop == loop


async def test_a_sync_loop_that_keeps_crashing_makes_the_proxy_unhealthy(
    tmp_path: Path,
) -> None:
    serving = health_pb2.HealthCheckResponse.SERVING
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    async with in_process_master(tmp_path) as api:
        proxy = make_proxy(api, FakeNftables(), max_crashes=3)
        # What main.serve sets up, kept running here so the answers can be read.
        runner = await health.serve_health(proxy, "127.0.0.1:0")
        grpc_server = await server.serve_proxy_api("127.0.0.1:0", proxy)
        health.follow_supervisor(proxy, grpc_server)
        channel = rpc.channel(f"127.0.0.1:{grpc_server.port}")
        url = f"http://127.0.0.1:{httpserve.bound_port(runner)}"
        try:
            await proxy.start()
            await asyncio.wait_for(proxy.synced.wait(), 15)
            async with aiohttp.ClientSession() as http:
                for path in ("/healthz", "/livez"):
                    async with http.get(url + path) as response:
                        assert response.status == 200, path
                assert await health_of(channel, server.SERVICE_NAME) == serving

                await crash_until_it_gives_up(proxy, "proxy-sync")

                assert not proxy.healthy()
                for path in ("/healthz", "/livez"):
                    async with http.get(url + path) as response:
                        assert response.status == 503, path
                await eventually(lambda: _is(health_of(channel, server.SERVICE_NAME), not_serving))
                assert await health_of(channel) == not_serving
            assert await until_terminated(proxy.supervisor) == EXIT_LOOP_FAILED
        finally:
            await proxy.stop()
            await channel.close()
            await grpc_server.stop(0)
            await runner.cleanup()


async def _is(value: Awaitable[int], wanted: int) -> bool:
    return await value == wanted


async def test_serve_returns_exit_status_1_when_a_loop_gives_up(tmp_path: Path) -> None:
    async with in_process_master(tmp_path) as api:
        proxy = make_proxy(api, FakeNftables(), max_crashes=3)
        served = asyncio.create_task(main.serve(proxy, "127.0.0.1:0", "127.0.0.1:0"))
        try:
            await asyncio.wait_for(proxy.synced.wait(), 15)
            await crash_until_it_gives_up(proxy, "proxy-sync")
            assert await asyncio.wait_for(served, 10) == EXIT_LOOP_FAILED
        finally:
            served.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await served
            await proxy.stop()
