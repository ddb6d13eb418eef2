from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kubeling.common import rpc
from kubeling.cri.client import RuntimeClient
from kubeling.cri.errors import CRIError
from kubeling.cri.fake import FakeCRIServer, FakeRuntime
from tests.cri.helpers import container_config, sandbox_config, start_pod


async def test_unavailable_after_retry_budget(sock_dir: Path) -> None:
    async with RuntimeClient(f"unix://{sock_dir}/none.sock", retry_timeout=0.3) as client:
        began = time.monotonic()
        with pytest.raises(CRIError) as err:
            await client.version()
        assert err.value.unavailable
        assert 0.25 < time.monotonic() - began < 3


async def test_non_idempotent_calls_are_not_retried(sock_dir: Path) -> None:
    async with RuntimeClient(f"unix://{sock_dir}/none.sock", retry_timeout=5) as client:
        began = time.monotonic()
        with pytest.raises(CRIError) as err:
            await client.start_container("x")
        assert err.value.unavailable
        assert time.monotonic() - began < 1


async def test_reconnects_when_runtime_restarts(sock_dir: Path) -> None:
    fake = FakeRuntime()
    endpoint = f"unix://{sock_dir}/cri.sock"
    first = FakeCRIServer(fake, endpoint)
    await first.start()
    async with RuntimeClient(endpoint, retry_timeout=5) as client:
        assert (await client.version()).runtime_api_version == "v1"
        await first.stop(0)

        async def restart_later() -> FakeCRIServer:
            await asyncio.sleep(0.3)
            second = FakeCRIServer(fake, endpoint)
            await second.start()
            return second

        restart = asyncio.create_task(restart_later())
        began = time.monotonic()
        assert (await client.status()).status.conditions
        assert time.monotonic() - began < 3
        await (await restart).stop(0)


async def test_reopen_keeps_working(client: RuntimeClient) -> None:
    await client.version()
    await client.reopen()
    assert (await client.version()).runtime_name == "kubeling-fake"


async def test_fake_server_has_health_and_loopback_port() -> None:
    async with FakeCRIServer() as server:
        assert server.endpoint.startswith("127.0.0.1:")
        channel = rpc.channel(server.endpoint)
        try:
            health = health_pb2_grpc.HealthStub(channel)
            reply = await health.Check(
                health_pb2.HealthCheckRequest(service="runtime.v1.RuntimeService")
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            # Methods the fake does not implement answer UNIMPLEMENTED, like old runtimes.
            call = channel.unary_unary("/runtime.v1.RuntimeService/Attach")
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call(b"")
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        finally:
            await channel.close()


async def test_exec_timeout_is_deadline_exceeded(server: FakeCRIServer) -> None:
    sandbox, config = sandbox_config(), container_config(env={"FAKE_EXEC_DELAY": "5s"})
    async with RuntimeClient(server.endpoint, timeout=5) as client:
        _, container_id = await start_pod(client, sandbox, config)
        began = time.monotonic()
        with pytest.raises(CRIError) as err:
            await client.exec_sync(container_id, ["sleep", "5"], 1)
        assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - began < 2


async def test_a_call_in_flight_survives_a_reopen(server: FakeCRIServer) -> None:
    # reopen() (after another call saw the runtime go) must not cancel calls still
    # running on the old channel: grpc.aio would raise CancelledError in their tasks,
    # which nobody asked for and which ended the kubelet's loops (chaos soak, seed 42).
    sandbox, config = sandbox_config(), container_config(env={"FAKE_EXEC_DELAY": "0.5s"})
    async with RuntimeClient(server.endpoint, timeout=5) as client:
        _, container_id = await start_pod(client, sandbox, config)
        slow = asyncio.create_task(client.exec_sync(container_id, ["echo", "hi"], 5))
        await asyncio.sleep(0.1)  # the exec is on the wire
        await client.reopen()
        result = await slow
        assert result.exit_code == 0
        assert (await client.version()).runtime_name == "kubeling-fake"
