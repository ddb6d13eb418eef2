"""A real kubelet process with a real master process serves /metrics and /healthz on
--healthz-bind-address: running pods and containers, pod start duration, relist
duration, CRI operation durations and errors with real values, on the fake CRI
runtime (over gRPC) and on a real containerd; /healthz turns 503 while the runtime
is unreachable and 200 again once it is back."""

from __future__ import annotations

import asyncio
import contextlib
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
from tests.support.containerd import POD_CIDR, PrivateContainerd
from tests.support.processes import MasterProcess, free_port, stop_process
from tests.support.waiting import eventually, eventually_passes

NODE = "metrics-node"
# Refused at once by any runtime: nothing listens on port 1 of loopback.
MISSING_IMAGE = "127.0.0.1:1/missing:1"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass
class KubeletRig:
    api: Client
    http: str  # http://127.0.0.1:PORT
    process: subprocess.Popen[bytes]
    log: Path

    async def describe(self) -> str:
        return "\nkubelet log:\n" + self.log.read_text(errors="replace")[-3000:]

    async def healthz(self) -> int:
        assert self.process.poll() is None, "the kubelet exited"
        try:
            return (await get(f"{self.http}/healthz"))[0]
        except aiohttp.ClientConnectionError:
            return 0

    async def scrape(self) -> Samples:
        status, text = await get(f"{self.http}/metrics")
        assert status == 200
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }


@contextlib.asynccontextmanager
async def running_kubelet(tmp_path: Path, endpoint: str, *extra: str) -> AsyncIterator[KubeletRig]:
    """A master process and a kubelet process on `endpoint`, both stopped after."""
    master = await asyncio.to_thread(MasterProcess(tmp_path / "master").start)
    http = f"127.0.0.1:{free_port()}"
    log = tmp_path / "kubelet.log"
    command = [
        sys.executable, "-m", "kubeling.kubelet.main",
        "--master", master.address,
        "--node-name", NODE,
        "--insecure",  # the test master is plaintext on loopback
        "--node-ip", "127.0.0.1",
        "--runtime-endpoint", endpoint,
        "--listen", "127.0.0.1:0",
        "--healthz-bind-address", http,
        "--pod-log-dir", str(tmp_path / "pods"),
        *extra,
    ]  # fmt: skip
    try:
        with log.open("ab") as out:
            process = await asyncio.to_thread(
                subprocess.Popen,
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        try:
            async with Client(master.address) as api:
                yield KubeletRig(api, f"http://{http}", process, log)
        finally:
            # In a thread: with the fake, the kubelet's last CRI calls are answered
            # by this loop.
            await asyncio.to_thread(stop_process, process)
    finally:
        master.stop()


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def pod(name: str, image: str) -> core_pb2.Pod:
    obj = core_pb2.Pod()
    obj.metadata.name = name
    obj.metadata.namespace = "default"
    obj.spec.node_name = NODE
    obj.spec.containers.add(name="main", image=image, command=["sleep", "3600"])
    return obj


async def run_pods_and_check_series(rig: KubeletRig) -> None:
    """A running pod and one whose image cannot be pulled show in the series."""
    await eventually(rig.healthz, 30, describe=rig.describe)
    await eventually_passes(lambda: rig.api.nodes.get(NODE), 30, describe=rig.describe)
    await rig.api.pods.create(pod("web", "busybox"))
    await rig.api.pods.create(pod("broken", MISSING_IMAGE))

    async def web_running() -> bool:
        return (await rig.api.pods.get("web", "default")).status.phase == "Running"

    await eventually(web_running, 60, describe=rig.describe)
    errors = "kubelet_runtime_operations_errors_total"

    async def settled() -> Samples:
        samples = await rig.scrape()
        # A relist after the start saw both sandboxes; the missing image was tried.
        assert value(samples, "kubelet_running_pods") == 2
        assert value(samples, "kubelet_running_containers", container_state="running") == 1
        assert value(samples, errors, operation_type="pull_image")
        return samples

    samples = await eventually_passes(settled, 30, describe=rig.describe)
    assert value(samples, "kubelet_running_containers", container_state="exited") == 0
    assert value(samples, "kubelet_pod_start_duration_seconds_count") == 1
    assert 0 < value(samples, "kubelet_pod_start_duration_seconds_sum") < 60
    assert value(samples, "kubelet_pleg_relist_duration_seconds_count") >= 1
    assert value(samples, "kubelet_pleg_relist_duration_seconds_sum") > 0
    ops = "kubelet_runtime_operations_duration_seconds_count"
    assert value(samples, ops, operation_type="run_podsandbox") == 2
    assert value(samples, ops, operation_type="create_container") == 1
    assert value(samples, ops, operation_type="start_container") == 1
    assert value(samples, ops, operation_type="list_podsandbox") >= 1
    assert value(samples, ops, operation_type="status") >= 1
    # A pull the runtime refused counts as an error; a successful start does not.
    assert not value(samples, errors, operation_type="start_container")
    assert not value(samples, errors, operation_type="run_podsandbox")
    assert await rig.healthz() == 200
    node = await rig.api.nodes.get(NODE)
    conditions = {c.type: (c.status, c.reason) for c in node.status.conditions}
    # This machine has room (the test would be wrong on a full disk).
    assert conditions["MemoryPressure"] == ("False", "KubeletHasSufficientMemory")
    assert conditions["DiskPressure"] == ("False", "KubeletHasNoDiskPressure")
    assert conditions["PIDPressure"] == ("False", "KubeletHasSufficientPID")


async def test_kubelet_metrics_and_healthz_on_the_fake_runtime(tmp_path: Path) -> None:
    runtime = FakeRuntime(images=["busybox"], missing_images=[MISSING_IMAGE])
    # Unix socket paths are limited to ~107 bytes; pytest's tmp_path can be longer.
    sock_dir = Path(tempfile.mkdtemp(prefix="klm-", dir="/tmp"))
    endpoint = f"unix://{sock_dir}/cri.sock"
    cri = FakeCRIServer(runtime, endpoint)
    await cri.start()
    try:
        async with running_kubelet(tmp_path, endpoint) as rig:
            await run_pods_and_check_series(rig)

            async def healthz_is(code: int) -> bool:
                return await rig.healthz() == code

            # The runtime goes away: /healthz says so; it comes back: healthy again.
            await cri.stop(0)
            await eventually(lambda: healthz_is(503), 30, describe=rig.describe)
            cri = FakeCRIServer(runtime, endpoint)
            await cri.start()
            await eventually(lambda: healthz_is(200), 30, describe=rig.describe)
    finally:
        await cri.stop(0)
        shutil.rmtree(sock_dir, ignore_errors=True)


@pytest.mark.slow
async def test_kubelet_metrics_on_containerd(tmp_path: Path, containerd: PrivateContainerd) -> None:
    async with running_kubelet(tmp_path, containerd.endpoint, "--pod-cidr", POD_CIDR) as rig:
        await run_pods_and_check_series(rig)
