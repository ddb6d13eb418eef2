"""A real kubelet process (on the fake CRI runtime over gRPC, with a real master
process) serves /metrics and /healthz on --healthz-bind-address: running pods and
containers, pod start duration, relist duration, CRI operation durations and errors
with real values; /healthz turns 503 while the runtime is unreachable and back."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kubeling.client import Client
from kubeling.cri.fake import FakeCRIServer, FakeRuntime
from kubeling.v1 import core_pb2
from tests.support.processes import MasterProcess, free_port, stop_process
from tests.support.waiting import eventually, eventually_passes

NODE = "metrics-node"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass
class Rig:
    api: Client
    runtime: FakeRuntime
    cri: FakeCRIServer
    endpoint: str
    http: str
    kubelet: subprocess.Popen[bytes]
    log: Path


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    master = await asyncio.to_thread(MasterProcess(tmp_path / "master").start)
    runtime = FakeRuntime(images=["busybox"], missing_images=["missing:1"])
    # Unix socket paths are limited to ~107 bytes; pytest's tmp_path can be longer.
    sock_dir = Path(tempfile.mkdtemp(prefix="klm-", dir="/tmp"))
    endpoint = f"unix://{sock_dir}/cri.sock"
    http = f"127.0.0.1:{free_port()}"
    log = tmp_path / "kubelet.log"
    command = [
        sys.executable, "-m", "kubeling.kubelet.main",
        "--master", master.address,
        "--node-name", NODE,
        "--node-ip", "127.0.0.1",
        "--runtime-endpoint", endpoint,
        "--listen", "127.0.0.1:0",
        "--healthz-bind-address", http,
        "--pod-log-dir", str(tmp_path / "pods"),
    ]  # fmt: skip
    rig: Rig | None = None
    try:
        cri = FakeCRIServer(runtime, endpoint)
        await cri.start()
        with log.open("ab") as out:
            kubelet = await asyncio.to_thread(
                subprocess.Popen,
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        rig = Rig(Client(master.address), runtime, cri, endpoint, f"http://{http}", kubelet, log)
        yield rig
    finally:
        if rig is not None:
            await rig.api.close()
            # In a thread: the kubelet's last CRI calls are answered by this loop.
            await asyncio.to_thread(stop_process, rig.kubelet)
            await rig.cri.stop(0)  # the test may have replaced the first server
        master.stop()
        shutil.rmtree(sock_dir, ignore_errors=True)


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


async def scrape(rig: Rig) -> Samples:
    status, text = await get(f"{rig.http}/metrics")
    assert status == 200
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def pod(name: str, image: str) -> core_pb2.Pod:
    obj = core_pb2.Pod()
    obj.metadata.name = name
    obj.metadata.namespace = "default"
    obj.spec.node_name = NODE
    obj.spec.containers.add(name="main", image=image)
    return obj


async def test_kubelet_metrics_and_healthz(rig: Rig) -> None:
    async def kubelet_log() -> str:
        return "\nkubelet log:\n" + rig.log.read_text(errors="replace")[-3000:]

    async def healthz() -> int:
        assert rig.kubelet.poll() is None, "the kubelet exited"
        try:
            return (await get(f"{rig.http}/healthz"))[0]
        except aiohttp.ClientConnectionError:
            return 0

    await eventually(lambda: healthz(), 20, describe=kubelet_log)
    await eventually_passes(lambda: rig.api.nodes.get(NODE), 20, describe=kubelet_log)

    await rig.api.pods.create(pod("web", "busybox"))
    await rig.api.pods.create(pod("broken", "missing:1"))

    async def web_running() -> bool:
        return (await rig.api.pods.get("web", "default")).status.phase == "Running"

    await eventually(web_running, 20, describe=kubelet_log)

    async def settled() -> Samples:
        samples = await scrape(rig)
        # The relist after the start saw the pod; the missing image was tried.
        assert value(samples, "kubelet_running_pods") == 2  # both have a sandbox
        assert value(samples, "kubelet_running_containers", container_state="running") == 1
        assert value(
            samples, "kubelet_runtime_operations_errors_total", operation_type="pull_image"
        )
        return samples

    samples = await eventually_passes(settled, 20, describe=kubelet_log)
    assert value(samples, "kubelet_running_containers", container_state="exited") == 0
    assert value(samples, "kubelet_pod_start_duration_seconds_count") == 1
    assert 0 < value(samples, "kubelet_pod_start_duration_seconds_sum") < 20
    assert value(samples, "kubelet_pleg_relist_duration_seconds_count") >= 1
    ops = "kubelet_runtime_operations_duration_seconds_count"
    assert value(samples, ops, operation_type="run_podsandbox") == 2
    assert value(samples, ops, operation_type="create_container") == 1
    assert value(samples, ops, operation_type="start_container") == 1
    assert value(samples, ops, operation_type="list_podsandbox") >= 1
    assert value(samples, ops, operation_type="status") >= 1
    # A pull the runtime refused counts as an error; a successful start does not.
    assert value(samples, "kubelet_runtime_operations_errors_total", operation_type="pull_image")
    assert not value(
        samples, "kubelet_runtime_operations_errors_total", operation_type="start_container"
    )
    assert await healthz() == 200

    # The runtime goes away: /healthz says so; it comes back: healthy again.
    async def healthz_is(code: int) -> bool:
        return await healthz() == code

    await rig.cri.stop(0)
    await eventually(lambda: healthz_is(503), 30, describe=kubelet_log)
    rig.cri = FakeCRIServer(rig.runtime, rig.endpoint)
    await rig.cri.start()
    await eventually(lambda: healthz_is(200), 30, describe=kubelet_log)
