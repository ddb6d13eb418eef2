"""Every CRI call is reported once to the client's observer, under upstream's
operation names, with failures marked; the kubelet's series count them."""

from __future__ import annotations

import time

import pytest
from prometheus_client import REGISTRY

from kubeling.cri.client import RuntimeClient, operation_type
from kubeling.cri.errors import CRIError
from kubeling.cri.fake import FakeCRIServer, FakeRuntime
from kubeling.kubelet import metrics
from tests.support.processes import free_port

Seen = list[tuple[str, float, bool]]


def test_operation_names_are_upstreams() -> None:
    names = {
        "RunPodSandbox": "run_podsandbox",
        "StopPodSandbox": "stop_podsandbox",
        "PodSandboxStatus": "podsandbox_status",
        "ListPodSandbox": "list_podsandbox",
        "CreateContainer": "create_container",
        "ListContainers": "list_containers",
        "ExecSync": "exec_sync",
        "ListContainerStats": "list_container_stats",
        "ImageFsInfo": "image_fs_info",
        "Version": "version",
    }
    assert {method: operation_type(method) for method in names} == names


async def test_each_call_is_observed_once() -> None:
    seen: Seen = []
    async with (
        FakeCRIServer(FakeRuntime(images=["busybox"], missing_images=["gone"])) as server,
        RuntimeClient(server.endpoint, retry_timeout=2, observe=lambda *o: seen.append(o)) as c,
    ):
        await c.version()
        assert await c.list_pod_sandbox() == []
        with pytest.raises(CRIError):
            await c.pull_image("gone")
        with pytest.raises(CRIError):  # the fake has no image filesystem
            await c.image_fs_info()
    assert [(name, failed) for name, _, failed in seen] == [
        ("version", False),
        ("list_podsandbox", False),
        ("pull_image", True),
        ("image_fs_info", True),
    ]
    assert all(0 <= seconds < 2 for _, seconds, _ in seen)


async def test_retries_of_an_unreachable_runtime_are_one_failed_operation() -> None:
    seen: Seen = []
    endpoint = f"127.0.0.1:{free_port()}"  # nothing listens there
    async with RuntimeClient(endpoint, retry_timeout=0.3, observe=lambda *o: seen.append(o)) as c:
        began = time.monotonic()
        with pytest.raises(CRIError):
            await c.status()
        took = time.monotonic() - began
    assert len(seen) == 1
    name, seconds, failed = seen[0]
    assert (name, failed) == ("status", True)
    assert 0.25 < seconds <= took  # the retries are inside the one operation


def test_the_kubelet_series_count_operations() -> None:
    def sample(name: str) -> float:
        return REGISTRY.get_sample_value(name, {"operation_type": "remove_image"}) or 0.0

    errors = "kubelet_runtime_operations_errors_total"
    count = "kubelet_runtime_operations_duration_seconds_count"
    errors_before, count_before = sample(errors), sample(count)
    metrics.observe_runtime_operation("remove_image", 0.02, failed=False)
    metrics.observe_runtime_operation("remove_image", 0.03, failed=True)
    assert sample(errors) == errors_before + 1
    assert sample(count) == count_before + 2
