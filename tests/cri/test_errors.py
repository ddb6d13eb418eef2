from __future__ import annotations

import grpc
import pytest

from kubeling.cri.errors import CRIError
from kubeling.cri.runtime import Runtime
from tests.cri.helpers import container_config, sandbox_config, start_pod


async def test_unknown_ids(runtime: Runtime) -> None:
    for call in (
        runtime.pod_sandbox_status("missing"),
        runtime.stop_pod_sandbox("missing"),
        runtime.container_status("missing"),
        runtime.start_container("missing"),
        runtime.stop_container("missing", 1),
        runtime.exec_sync("missing", ["true"]),
        runtime.container_stats("missing"),
        runtime.create_container("missing", container_config(), sandbox_config()),
    ):
        with pytest.raises(CRIError) as err:
            await call
        assert err.value.not_found, err.value
    # Removal is idempotent, as the CRI contract asks.
    await runtime.remove_pod_sandbox("missing")
    await runtime.remove_container("missing")


async def test_duplicate_sandbox_name_is_reserved(runtime: Runtime) -> None:
    first = await runtime.run_pod_sandbox(sandbox_config())
    with pytest.raises(CRIError) as err:
        await runtime.run_pod_sandbox(sandbox_config())
    assert err.value.code == grpc.StatusCode.UNKNOWN
    assert (
        err.value.details == 'failed to reserve sandbox name "web_default_uid-1_0": '
        f'name "web_default_uid-1_0" is reserved for "{first}"'
    )
    # A new attempt number is a new name.
    assert await runtime.run_pod_sandbox(sandbox_config(attempt=1))


async def test_duplicate_container_name_is_reserved(runtime: Runtime) -> None:
    sandbox = sandbox_config()
    sandbox_id, _ = await start_pod(runtime, sandbox)
    with pytest.raises(CRIError, match="failed to reserve container name"):
        await runtime.create_container(sandbox_id, container_config(), sandbox)


async def test_remove_ready_sandbox_refused(runtime: Runtime) -> None:
    sandbox_id = await runtime.run_pod_sandbox(sandbox_config())
    with pytest.raises(CRIError, match="is not fully stopped"):
        await runtime.remove_pod_sandbox(sandbox_id)


async def test_start_twice_and_start_in_stopped_sandbox(runtime: Runtime) -> None:
    sandbox = sandbox_config()
    sandbox_id, container_id = await start_pod(runtime, sandbox)
    with pytest.raises(CRIError, match="CONTAINER_RUNNING state"):
        await runtime.start_container(container_id)
    late = await runtime.create_container(sandbox_id, container_config("late"), sandbox)
    await runtime.stop_pod_sandbox(sandbox_id)
    with pytest.raises(CRIError, match="is not running"):
        await runtime.start_container(late)


async def test_image_must_be_pulled_first(runtime: Runtime) -> None:
    sandbox = sandbox_config()
    sandbox_id = await runtime.run_pod_sandbox(sandbox)
    with pytest.raises(CRIError) as err:
        await runtime.create_container(sandbox_id, container_config(image="nginx"), sandbox)
    assert err.value.not_found


async def test_bad_fake_setting_is_invalid_argument(runtime: Runtime) -> None:
    sandbox = sandbox_config()
    sandbox_id = await runtime.run_pod_sandbox(sandbox)
    config = container_config(env={"FAKE_RUN_FOR": "soon"})
    with pytest.raises(CRIError) as err:
        await runtime.create_container(sandbox_id, config, sandbox)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "FAKE_RUN_FOR" in err.value.details


async def test_failed_sandbox_leaves_name_reserved(runtime: Runtime) -> None:
    from kubeling.cri.fake import SANDBOX_ERROR_ANNOTATION

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
