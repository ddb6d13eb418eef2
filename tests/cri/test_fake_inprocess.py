"""The fake used directly, as hollow nodes do: no gRPC, many runtimes per process."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from kubeling.cri.api import pb
from kubeling.cri.errors import CRIError
from kubeling.cri.fake import FakeRuntime, parse_duration
from kubeling.cri.runtime import Runtime
from tests.cri.helpers import container_config, sandbox_config, start_pod


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("2s", 2.0), ("500ms", 0.5), ("1m30s", 90.0), ("1.5", 1.5), ("0", 0.0), ("250us", 0.00025)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "1x", "s", "2s junk"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


async def test_thousands_of_pods_are_cheap() -> None:
    runtimes = [FakeRuntime(pod_cidr=f"10.{i}.0.0/16", images=["busybox"]) for i in range(4)]
    began = time.monotonic()
    for n, rt in enumerate(runtimes):
        for i in range(500):
            sandbox = sandbox_config(f"pod-{i}", f"uid-{n}-{i}", labels={"shard": str(i % 10)})
            config = container_config(env={"FAKE_RUN_FOR": "1h"} if i % 2 else None)
            await start_pod(rt, sandbox, config)
    elapsed = time.monotonic() - began
    assert sum(rt.container_count for rt in runtimes) == 2000
    assert elapsed < 3, elapsed
    rt = runtimes[0]
    assert len(await rt.list_pod_sandbox(labels={"shard": "3"})) == 50
    assert len(await rt.list_containers(state=pb.CONTAINER_RUNNING)) == 500
    ips = {
        (await rt.pod_sandbox_status(s.id)).status.network.ip for s in await rt.list_pod_sandbox()
    }
    assert len(ips) == 500


async def test_ip_pool_exhaustion_and_reuse() -> None:
    rt = FakeRuntime(pod_cidr="10.1.0.0/29")  # .2 - .6 usable
    ids = [await rt.run_pod_sandbox(sandbox_config(f"p{i}", f"u{i}")) for i in range(5)]
    with pytest.raises(CRIError, match="no IP addresses available"):
        await rt.run_pod_sandbox(sandbox_config("p5", "u5"))
    # The failed attempt released its name, so the same pod can try again.
    await rt.stop_pod_sandbox(ids[0])
    sandbox_id = await rt.run_pod_sandbox(sandbox_config("p5", "u5"))
    assert (await rt.pod_sandbox_status(sandbox_id)).status.network.ip == "10.1.0.2"


async def test_host_network_sandbox_has_no_ip() -> None:
    rt = FakeRuntime()
    config = sandbox_config()
    config.linux.security_context.namespace_options.network = pb.NODE
    sandbox_id = await rt.run_pod_sandbox(config)
    status = (await rt.pod_sandbox_status(sandbox_id)).status
    assert status.network.ip == ""
    assert status.linux.namespaces.options.network == pb.NODE


async def test_inject_error_and_crash_hooks() -> None:
    rt = FakeRuntime(images=["busybox"])
    rt.inject_error("run_pod_sandbox", CRIError(grpc.StatusCode.UNAVAILABLE, "restarting"))
    with pytest.raises(CRIError) as err:
        await rt.run_pod_sandbox(sandbox_config())
    assert err.value.unavailable
    _, container_id = await start_pod(rt)
    rt.exit_container(container_id, 2)
    status = (await rt.container_status(container_id)).status
    assert (status.state, status.exit_code, status.reason) == (pb.CONTAINER_EXITED, 2, "Error")


async def test_stored_configs_are_copies() -> None:
    rt = FakeRuntime(images=["busybox"])
    sandbox = sandbox_config()
    sandbox_id = await rt.run_pod_sandbox(sandbox)
    sandbox.labels["mutated"] = "yes"
    (item,) = await rt.list_pod_sandbox()
    assert "mutated" not in item.labels
    item.labels["also"] = "no"
    assert "also" not in (await rt.pod_sandbox_status(sandbox_id)).status.labels


async def test_stop_waits_out_ignored_sigterm_unless_it_exits_first() -> None:
    rt: Runtime = FakeRuntime(images=["busybox"])
    env = {"FAKE_IGNORE_SIGTERM": "1", "FAKE_RUN_FOR": "150ms", "FAKE_EXIT_CODE": "0"}
    _, container_id = await start_pod(rt, container=container_config(env=env))
    began = time.monotonic()
    await rt.stop_container(container_id, 5)
    # It finished its own work during the grace period, so it was not killed.
    assert 0.1 < time.monotonic() - began < 1
    status = (await rt.container_status(container_id)).status
    assert (status.exit_code, status.reason) == (0, "Completed")


async def test_concurrent_stops_share_the_grace_period() -> None:
    rt = FakeRuntime(images=["busybox"])
    env = {"FAKE_IGNORE_SIGTERM": "1"}
    _, container_id = await start_pod(rt, container=container_config(env=env))
    began = time.monotonic()
    await asyncio.gather(*(rt.stop_container(container_id, 1) for _ in range(3)))
    assert 0.9 < time.monotonic() - began < 2
    assert (await rt.container_status(container_id)).status.exit_code == 137
