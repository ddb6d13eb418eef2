"""The kubelet's persistentVolumeClaim volume (kubelet/volumes.py) and local-path
cleanup (kubelet/localpath.py), with claims and volumes from an in-memory source:
an unbound or missing claim fails the mount (FailedMount, retried), a local-path
directory is made 0777 inside ROOT/storage, a local PV of another node and a
missing local directory elsewhere are refused, readOnly reaches the CRI mount,
the path is kept once set up; the cleaner removes only directories inside the
node's local-path directory, never while mounted, then drops the finalizer."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest

from kubeling.api import storage as st
from kubeling.api.kinds import HOSTNAME_LABEL
from kubeling.kubelet.localpath import LocalPathCleaner
from kubeling.kubelet.volumes import VolumeError, VolumeManager, container_mounts
from kubeling.v1 import core_pb2, storage_pb2

NODE = "n1"


class Storage:
    """Claims and volumes by name, as the API would return them."""

    def __init__(self) -> None:
        self.claims: dict[tuple[str, str], storage_pb2.PersistentVolumeClaim] = {}
        self.volumes: dict[str, storage_pb2.PersistentVolume] = {}
        self.reads = 0

    async def claim(self, namespace: str, name: str) -> storage_pb2.PersistentVolumeClaim | None:
        self.reads += 1
        return self.claims.get((namespace, name))

    async def volume(self, name: str) -> storage_pb2.PersistentVolume | None:
        return self.volumes.get(name)

    def bind(self, claim: str, pv: storage_pb2.PersistentVolume) -> None:
        pvc = storage_pb2.PersistentVolumeClaim()
        pvc.metadata.name, pvc.metadata.namespace, pvc.metadata.uid = claim, "default", "c-uid"
        pvc.spec.volume_name = pv.metadata.name
        pvc.status.phase = "Bound"
        pv.spec.claim_ref.name, pv.spec.claim_ref.uid = claim, "c-uid"
        self.claims[("default", claim)] = pvc
        self.volumes[pv.metadata.name] = pv


def local_pv(name: str, path: Path, node: str = NODE) -> storage_pb2.PersistentVolume:
    pv = storage_pb2.PersistentVolume()
    pv.metadata.name = name
    pv.spec.local.path = str(path)
    term = pv.spec.node_affinity.required.node_selector_terms.add()
    term.match_expressions.add(key=HOSTNAME_LABEL, operator="In", values=[node])
    pv.metadata.finalizers.append(st.LOCAL_PATH_CLEANUP_FINALIZER)
    return pv


def pod(claim: str = "data", read_only: bool = False) -> core_pb2.Pod:
    p = core_pb2.Pod()
    p.metadata.name, p.metadata.namespace, p.metadata.uid = "db-0", "default", "p-uid"
    container = p.spec.containers.add(name="db", image="busybox")
    container.volume_mounts.add(name="data", mount_path="/var/lib/db")
    source = p.spec.volumes.add(name="data").persistent_volume_claim
    source.claim_name, source.read_only = claim, read_only
    return p


@pytest.fixture
def storage() -> Storage:
    return Storage()


@pytest.fixture
def manager(tmp_path: Path, storage: Storage) -> VolumeManager:
    return VolumeManager(tmp_path / "root", storage, tmpfs=False, node_name=NODE)  # type: ignore[arg-type]


async def test_missing_or_unbound_claim_fails_the_mount(
    manager: VolumeManager, storage: Storage
) -> None:
    with pytest.raises(VolumeError, match='persistentvolumeclaim "data" not found'):
        await manager.setup(pod())
    pending = storage_pb2.PersistentVolumeClaim()
    pending.metadata.name, pending.metadata.namespace = "data", "default"
    pending.status.phase = "Pending"
    storage.claims[("default", "data")] = pending
    with pytest.raises(VolumeError, match="is not bound yet"):
        await manager.setup(pod())


async def test_local_path_directory_is_made_and_kept(
    manager: VolumeManager, storage: Storage
) -> None:
    directory = manager.local_path_dir / "pvc-1_default_data"
    storage.bind("data", local_pv("pvc-1", directory))
    paths, warnings = await manager.setup(pod())
    assert paths == {"data": directory} and warnings == []
    assert stat.S_IMODE(directory.stat().st_mode) == 0o777
    # Set up once: later syncs need no API reads, even when the master is away.
    reads = storage.reads
    storage.claims.clear()
    assert (await manager.setup(pod()))[0] == {"data": directory}
    assert storage.reads == reads
    assert manager.in_use(directory)
    await manager.teardown("p-uid")
    assert not manager.in_use(directory)
    assert directory.is_dir()  # the data outlives the pod


async def test_read_only_claim_mounts_read_only(manager: VolumeManager, storage: Storage) -> None:
    directory = manager.local_path_dir / "pvc-2_default_data"
    storage.bind("data", local_pv("pvc-2", directory))
    p = pod(read_only=True)
    paths, _ = await manager.setup(p)
    [mount] = container_mounts(p, p.spec.containers[0], paths)
    assert (mount.host_path, mount.readonly) == (str(directory), True)
    writable = pod()
    [mount] = container_mounts(writable, writable.spec.containers[0], paths)
    assert not mount.readonly


async def test_other_nodes_volume_and_missing_foreign_directory_are_refused(
    manager: VolumeManager, storage: Storage, tmp_path: Path
) -> None:
    storage.bind("data", local_pv("pvc-3", manager.local_path_dir / "x", node="n2"))
    with pytest.raises(VolumeError, match='is on node "n2"'):
        await manager.setup(pod())
    elsewhere = tmp_path / "disks" / "ssd1"
    storage.bind("data", local_pv("pvc-4", elsewhere))
    with pytest.raises(VolumeError, match="is not a directory"):
        await manager.setup(pod())
    assert not elsewhere.exists()  # never made outside the local-path directory
    elsewhere.mkdir(parents=True)
    assert (await manager.setup(pod()))[0] == {"data": elsewhere}


async def test_host_path_volume(manager: VolumeManager, storage: Storage, tmp_path: Path) -> None:
    pv = storage_pb2.PersistentVolume()
    pv.metadata.name = "task"
    pv.spec.host_path.path = str(tmp_path / "mnt" / "data")
    pv.spec.host_path.type = "DirectoryOrCreate"
    storage.bind("data", pv)
    assert (await manager.setup(pod()))[0] == {"data": tmp_path / "mnt" / "data"}


class FakeVolumes:
    def __init__(self) -> None:
        self.updated: list[storage_pb2.PersistentVolume] = []

    async def update(self, pv: storage_pb2.PersistentVolume) -> storage_pb2.PersistentVolume:
        self.updated.append(pv)
        return pv


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def record(self, obj: Any, type_: str, reason: str, message: str) -> None:
        self.events.append((reason, message))


def cleaner(manager: VolumeManager) -> tuple[LocalPathCleaner, FakeVolumes, Recorder]:
    volumes, recorder = FakeVolumes(), Recorder()
    api: Any = type("Api", (), {"persistent_volumes": volumes})()
    return LocalPathCleaner(api, NODE, manager, recorder), volumes, recorder  # type: ignore[arg-type]


async def test_cleanup_removes_only_its_own_directories(
    manager: VolumeManager, storage: Storage, tmp_path: Path
) -> None:
    ours = manager.local_path_dir / "pvc-5_default_data"
    storage.bind("data", local_pv("pvc-5", ours))
    await manager.setup(pod())
    (ours / "rows").write_text("1,alice\n")
    clean, volumes, recorder = cleaner(manager)
    pv = storage.volumes["pvc-5"]
    # Mounted by a pod of this node: wait.
    assert not await clean.clean(pv)
    assert ours.is_dir() and not volumes.updated
    await manager.teardown("p-uid")
    assert await clean.clean(pv)
    assert not ours.exists()
    assert list(volumes.updated[-1].metadata.finalizers) == []
    # A path outside the local-path directory is never removed.
    foreign = tmp_path / "precious"
    foreign.mkdir()
    assert await clean.clean(local_pv("pvc-6", foreign))
    assert foreign.is_dir()
    assert recorder.events and recorder.events[0][0] == "VolumeCleanupSkipped"
    # Nor the local-path directory itself.
    assert await clean.clean(local_pv("pvc-7", manager.local_path_dir))
    assert manager.local_path_dir.is_dir()


async def test_local_path_dir_may_be_elsewhere(storage: Storage, tmp_path: Path) -> None:
    """--local-path-dir: volumes made (and only removed) there, not under ROOT."""
    disk = tmp_path / "big-disk"
    manager = VolumeManager(
        tmp_path / "root", storage, tmpfs=False, node_name=NODE, local_path_dir=disk
    )  # type: ignore[arg-type]
    directory = disk / "pvc-8_default_data"
    storage.bind("data", local_pv("pvc-8", directory))
    assert (await manager.setup(pod()))[0] == {"data": directory}
    assert stat.S_IMODE(directory.stat().st_mode) == 0o777
    assert manager.owns_local_path(directory)
    assert not manager.owns_local_path(tmp_path / "root" / "storage" / "pvc-8_default_data")
