"""The fake's behaviour language (FAKE_* settings) and its fake-only hooks; what the
fake shares with containerd is in test_contract.py."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from kubeling.cri.api import pb
from kubeling.cri.errors import CRIError
from kubeling.cri.fake import SANDBOX_ERROR_ANNOTATION
from kubeling.cri.runtime import Runtime
from tests.cri.helpers import container_config, sandbox_config, start_pod


async def test_run_for_then_exit_code(runtime: Runtime) -> None:
    config = container_config(env={"FAKE_RUN_FOR": "200ms", "FAKE_EXIT_CODE": "3"})
    _, container_id = await start_pod(runtime, container=config)
    assert (await runtime.container_status(container_id)).status.state == pb.CONTAINER_RUNNING
    await asyncio.sleep(0.3)
    status = (await runtime.container_status(container_id)).status
    assert status.state == pb.CONTAINER_EXITED
    assert (status.exit_code, status.reason) == (3, "Error")
    # finished_at is when it exited, not when we looked.
    assert status.finished_at - status.started_at == pytest.approx(0.2e9, abs=1e6)


async def test_run_for_via_args_completes(runtime: Runtime) -> None:
    config = container_config(args=["FAKE_RUN_FOR=0"])
    _, container_id = await start_pod(runtime, container=config)
    status = (await runtime.container_status(container_id)).status
    assert (status.state, status.exit_code, status.reason) == (pb.CONTAINER_EXITED, 0, "Completed")


async def test_start_error(runtime: Runtime) -> None:
    config = container_config(env={"FAKE_START_ERROR": 'exec: "nginx": not found'})
    with pytest.raises(CRIError) as err:
        await start_pod(runtime, container=config)
    assert err.value.code == grpc.StatusCode.UNKNOWN
    assert "not found" in err.value.details
    (container,) = await runtime.list_containers()
    status = (await runtime.container_status(container.id)).status
    assert (status.state, status.exit_code, status.reason) == (
        pb.CONTAINER_EXITED,
        128,
        "StartError",
    )
    assert status.message == 'exec: "nginx": not found'


async def test_oom_over_memory_limit(runtime: Runtime) -> None:
    config = container_config(env={"FAKE_MEMORY": "64Mi"}, memory_limit=32 * 1024 * 1024)
    _, container_id = await start_pod(runtime, container=config)
    status = (await runtime.container_status(container_id)).status
    assert (status.state, status.exit_code, status.reason) == (
        pb.CONTAINER_EXITED,
        137,
        "OOMKilled",
    )


async def test_stop_respects_stop_delay(runtime: Runtime) -> None:
    config = container_config(env={"FAKE_STOP_DELAY": "150ms", "FAKE_STOP_EXIT_CODE": "0"})
    _, container_id = await start_pod(runtime, container=config)
    began = time.monotonic()
    await runtime.stop_container(container_id, 5)
    assert 0.14 < time.monotonic() - began < 1.0
    status = (await runtime.container_status(container_id)).status
    assert (status.exit_code, status.reason) == (0, "Completed")


async def test_stop_zero_grace_is_sigkill(runtime: Runtime) -> None:
    config = container_config(env={"FAKE_STOP_DELAY": "10s"})
    _, container_id = await start_pod(runtime, container=config)
    began = time.monotonic()
    await runtime.stop_container(container_id, 0)
    assert time.monotonic() - began < 0.5
    assert (await runtime.container_status(container_id)).status.exit_code == 137
    await runtime.stop_container(container_id, 0)  # stopping an exited container is a no-op


async def test_exec_configured_results(runtime: Runtime) -> None:
    env = {"FAKE_EXEC_STDOUT": "ok", "FAKE_EXEC_STDERR": "warn", "FAKE_EXEC_EXIT_CODE": "2"}
    _, container_id = await start_pod(runtime, container=container_config(env=env))
    assert await runtime.exec_sync(container_id, ["cat", "/tmp/healthy"]) == (b"ok", b"warn", 2)


async def test_exec_builtins_and_fail_after(runtime: Runtime) -> None:
    config = container_config(env={"FAKE_EXEC_FAIL_AFTER": "100ms"})
    _, container_id = await start_pod(runtime, container=config)
    assert (await runtime.exec_sync(container_id, ["/bin/false"])).exit_code == 1
    assert (await runtime.exec_sync(container_id, ["true"])).exit_code == 0
    await asyncio.sleep(0.12)
    result = await runtime.exec_sync(container_id, ["true"])
    assert (result.exit_code, result.stderr) == (1, b"unhealthy\n")


async def test_stats_report_the_configured_usage(runtime: Runtime) -> None:
    config = container_config(env={"FAKE_MEMORY": "64Mi", "FAKE_CPU_MILLICORES": "250"})
    _, container_id = await start_pod(runtime, container=config)
    stats = await runtime.container_stats(container_id)
    assert stats.memory.working_set_bytes.value == 64 * 1024 * 1024
    assert stats.cpu.usage_nano_cores.value == 250_000_000


async def test_bad_fake_setting_is_invalid_argument(runtime: Runtime) -> None:
    sandbox = sandbox_config()
    sandbox_id = await runtime.run_pod_sandbox(sandbox)
    config = container_config(env={"FAKE_RUN_FOR": "soon"})
    with pytest.raises(CRIError) as err:
        await runtime.create_container(sandbox_id, config, sandbox)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "FAKE_RUN_FOR" in err.value.details


async def test_failed_sandbox_leaves_name_reserved(runtime: Runtime) -> None:
    broken = sandbox_config(annotations={SANDBOX_ERROR_ANNOTATION: "runc: boom"})
    with pytest.raises(CRIError, match="runc: boom"):
        await runtime.run_pod_sandbox(broken)
    with pytest.raises(CRIError, match="is reserved"):
        await runtime.run_pod_sandbox(sandbox_config())
    # The kubelet's recovery: find the stale sandbox by its pod labels and remove it.
    (stale,) = await runtime.list_pod_sandbox(labels={"io.kubernetes.pod.uid": "uid-1"})
    await runtime.stop_pod_sandbox(stale.id)
    await runtime.remove_pod_sandbox(stale.id)
    assert await runtime.run_pod_sandbox(sandbox_config())
