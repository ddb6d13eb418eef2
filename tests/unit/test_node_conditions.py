"""Node pressure conditions: each default eviction threshold both ways, the
conditions the NodeAgent posts from fed signals, and one measurement of this
machine."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import cast

import pytest

from kubeling.client import Client
from kubeling.cri.api import pb
from kubeling.cri.client import RuntimeClient
from kubeling.cri.fake import FakeCRIServer, FakeRuntime
from kubeling.kubelet import pressure
from kubeling.kubelet.node import NodeAgent, NodeSettings
from kubeling.kubelet.pressure import MI, FsStats, Pressure, Signals
from kubeling.v1 import meta_pb2

GI = 1024 * MI
ROOMY_FS = FsStats(available=50 * GI, capacity=100 * GI, inodes_free=500_000, inodes=1_000_000)
CALM = Signals(
    memory_available=4 * GI,
    memory_capacity=8 * GI,
    nodefs=ROOMY_FS,
    imagefs=ROOMY_FS,
    pid_available=30_000,
    pid_max=32_768,
)


def fs(**changes: int) -> FsStats:
    return dataclasses.replace(ROOMY_FS, **changes)


def test_a_calm_node_has_no_pressure() -> None:
    assert pressure.pressure(CALM) == Pressure()


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        # memory.available<100Mi
        ({"memory_available": 100 * MI - 1}, Pressure(memory=("memory.available",))),
        ({"memory_available": 100 * MI}, Pressure()),
        # nodefs.available<10%
        ({"nodefs": fs(available=10 * GI - 1)}, Pressure(disk=("nodefs.available",))),
        ({"nodefs": fs(available=10 * GI)}, Pressure()),
        # nodefs.inodesFree<5%
        ({"nodefs": fs(inodes_free=49_999)}, Pressure(disk=("nodefs.inodesFree",))),
        ({"nodefs": fs(inodes_free=50_000)}, Pressure()),
        # imagefs.available<15%
        ({"imagefs": fs(available=15 * GI - 1)}, Pressure(disk=("imagefs.available",))),
        ({"imagefs": fs(available=15 * GI)}, Pressure()),
        # imagefs.inodesFree<5%
        ({"imagefs": fs(inodes_free=49_999)}, Pressure(disk=("imagefs.inodesFree",))),
        ({"imagefs": fs(inodes_free=50_000)}, Pressure()),
        # pid.available<10%
        ({"pid_available": 3276}, Pressure(pid=("pid.available",))),
        ({"pid_available": 3277}, Pressure()),
        # A filesystem without inode accounting has no inode signal.
        ({"nodefs": fs(inodes_free=0, inodes=0)}, Pressure()),
    ],
)
def test_each_default_threshold_both_ways(changes: dict[str, object], expected: Pressure) -> None:
    assert pressure.pressure(dataclasses.replace(CALM, **changes)) == expected  # type: ignore[arg-type]


def test_one_disk_for_both_trips_the_image_threshold_first() -> None:
    # 12% free: above nodefs' 10%, below imagefs' 15% (a single-disk node).
    shared = fs(available=12 * GI)
    found = pressure.pressure(dataclasses.replace(CALM, nodefs=shared, imagefs=shared))
    assert found == Pressure(disk=("imagefs.available",))


def test_thresholds_can_be_changed() -> None:
    strict = pressure.Thresholds(memory_available=5 * GI)
    assert pressure.pressure(CALM, strict).memory == ("memory.available",)


def agent(signals: list[Signals], tmp_path: Path) -> NodeAgent:
    settings = NodeSettings(name="n1", node_ip="127.0.0.1", kubelet_port=10250, nodefs=tmp_path)
    # conditions() with a health given talks to neither the API nor the runtime.
    return NodeAgent(cast(Client, None), FakeRuntime(), settings, signals=lambda: signals[0])


def by_type(conditions: list[meta_pb2.Condition]) -> dict[str, tuple[str, str, str]]:
    return {c.type: (c.status, c.reason, c.message) for c in conditions}


async def test_agent_posts_conditions_with_kubernetes_reasons(tmp_path: Path) -> None:
    signals = [CALM]
    node = agent(signals, tmp_path)
    ready = (True, "KubeletReady", "kubelet is posting ready status")
    calm = by_type(await node.conditions(None, ready))
    assert calm["MemoryPressure"] == (
        "False",
        "KubeletHasSufficientMemory",
        "kubelet has sufficient memory available",
    )
    assert calm["DiskPressure"] == (
        "False",
        "KubeletHasNoDiskPressure",
        "kubelet has no disk pressure",
    )
    assert calm["PIDPressure"] == (
        "False",
        "KubeletHasSufficientPID",
        "kubelet has sufficient PID available",
    )
    assert calm["Ready"][0] == "True"
    signals[0] = dataclasses.replace(
        CALM, memory_available=50 * MI, nodefs=fs(available=GI), pid_available=10
    )
    stressed = by_type(await node.conditions(None, ready))
    assert stressed["MemoryPressure"] == (
        "True",
        "KubeletHasInsufficientMemory",
        "kubelet has insufficient memory available",
    )
    assert stressed["DiskPressure"] == (
        "True",
        "KubeletHasDiskPressure",
        "kubelet has disk pressure",
    )
    assert stressed["PIDPressure"] == (
        "True",
        "KubeletHasInsufficientPID",
        "kubelet has insufficient PID available",
    )


async def test_pressure_stays_for_the_transition_period(tmp_path: Path) -> None:
    signals = [dataclasses.replace(CALM, memory_available=MI)]
    clock = [1000.0]
    settings = NodeSettings(
        name="n1",
        node_ip="127.0.0.1",
        kubelet_port=10250,
        nodefs=tmp_path,
        pressure_transition_period=300,
    )
    node = NodeAgent(
        cast(Client, None),
        FakeRuntime(),
        settings,
        signals=lambda: signals[0],
        clock=lambda: clock[0],
    )
    ready = (True, "KubeletReady", "kubelet is posting ready status")

    async def memory_pressure() -> str:
        return by_type(await node.conditions(None, ready))["MemoryPressure"][0]

    assert await memory_pressure() == "True"
    signals[0] = CALM  # relieved, but not for long enough yet
    clock[0] += 299
    assert await memory_pressure() == "True"
    clock[0] += 1
    assert await memory_pressure() == "False"
    signals[0] = dataclasses.replace(CALM, memory_available=MI)
    assert await memory_pressure() == "True"  # a new crossing shows at once


async def test_a_failed_measurement_keeps_the_last_verdict(tmp_path: Path) -> None:
    signals = [dataclasses.replace(CALM, memory_available=MI)]
    node = agent(signals, tmp_path)
    assert (await node.measure_pressure()).memory == ("memory.available",)

    def broken() -> Signals:
        raise OSError("no /proc here")

    node._signals = broken
    assert (await node.measure_pressure()).memory == ("memory.available",)


def test_this_machine_is_measured(tmp_path: Path) -> None:
    signals = pressure.measure(tmp_path / "not" / "made" / "yet")
    meminfo = Path("/proc/meminfo").read_text()
    total_kib = int(
        next(line for line in meminfo.splitlines() if line.startswith("MemTotal:")).split()[1]
    )
    assert signals.memory_capacity == total_kib * 1024
    assert 0 < signals.memory_available <= signals.memory_capacity
    assert 0 < signals.nodefs.available <= signals.nodefs.capacity
    assert signals.imagefs == signals.nodefs  # no image filesystem given: the same one
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    assert signals.pid_max <= pid_max
    # This process and pytest's threads are tasks, so fewer than all are available.
    assert 0 < signals.pid_available < signals.pid_max
    image = pressure.measure(tmp_path, Path("/"))
    assert image.imagefs.capacity > 0


async def test_image_filesystem_comes_from_the_runtime(tmp_path: Path) -> None:
    class Runtime(FakeRuntime):
        calls = 0

        async def image_fs_info(self) -> pb.ImageFsInfoResponse:
            self.calls += 1
            reply = pb.ImageFsInfoResponse()
            reply.image_filesystems.add().fs_id.mountpoint = "/"
            return reply

    runtime = Runtime()
    settings = NodeSettings(name="n1", node_ip="127.0.0.1", kubelet_port=10250, nodefs=tmp_path)
    node = NodeAgent(cast(Client, None), runtime, settings)
    assert await node._image_fs() == Path("/")
    assert await node._image_fs() == Path("/") and runtime.calls == 1  # asked once
    # Measured on this machine: the image filesystem is "/", the nodefs tmp_path's.
    assert (await node.measure_pressure()) == pressure.pressure(
        pressure.measure(tmp_path, Path("/")), settings.thresholds
    )


async def test_a_runtime_without_image_fs_info_shares_the_nodefs(tmp_path: Path) -> None:
    async with (
        FakeCRIServer(FakeRuntime()) as server,
        RuntimeClient(server.endpoint, retry_timeout=1) as client,
    ):
        settings = NodeSettings(name="n1", node_ip="127.0.0.1", kubelet_port=1, nodefs=tmp_path)
        node = NodeAgent(cast(Client, None), client, settings)
        assert await node._image_fs() is None  # UNIMPLEMENTED: not asked again
        assert node._imagefs_known
