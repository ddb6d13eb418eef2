"""Pod volumes on the node (kubelet/volumes.py) and the volume steps, with
ConfigMaps and Secrets from an in-memory source and the fake CRI runtime."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import grpc
import pytest

from kubeling.api import kinds
from kubeling.client import Client
from kubeling.cri.api import pb
from kubeling.kubelet.steps.app_containers import StartAppContainers
from kubeling.kubelet.steps.sandbox import EnsureSandbox
from kubeling.kubelet.steps.volumes import MountVolumes, UnmountVolumes
from kubeling.kubelet.volumes import (
    DATA_LINK,
    ApiObjects,
    FileData,
    VolumeError,
    VolumeManager,
    check_host_path,
    container_mounts,
    hosts_file,
    write_atomic,
)
from kubeling.node.containerd import mounts_under
from kubeling.v1 import core_pb2
from tests.kubelet.step_support import context, events, fake, make_pod, node_services


class Objects:
    """ConfigMaps and Secrets the test sets, by (namespace, name)."""

    def __init__(self) -> None:
        self.maps: dict[tuple[str, str], core_pb2.ConfigMap] = {}
        self.secrets: dict[tuple[str, str], core_pb2.Secret] = {}

    def put_map(self, name: str, data: dict[str, str], ns: str = "default") -> None:
        cm = core_pb2.ConfigMap()
        cm.metadata.name, cm.metadata.namespace = name, ns
        cm.data.update(data)
        self.maps[(ns, name)] = cm

    def put_secret(self, name: str, data: dict[str, bytes], ns: str = "default") -> None:
        secret = core_pb2.Secret()
        secret.metadata.name, secret.metadata.namespace = name, ns
        secret.data.update(data)
        self.secrets[(ns, name)] = secret

    async def config_map(self, namespace: str, name: str) -> core_pb2.ConfigMap | None:
        return self.maps.get((namespace, name))

    async def secret(self, namespace: str, name: str) -> core_pb2.Secret | None:
        return self.secrets.get((namespace, name))


def read(path: Path) -> str:
    return path.read_text()


def manager(tmp_path: Path, objects: Objects | None = None) -> VolumeManager:
    return VolumeManager(tmp_path / "root", objects or Objects(), tmpfs=False)


# ------------------------------------------------------------------ atomic writer


def test_write_atomic_links_files_through_data(tmp_path: Path) -> None:
    target = tmp_path / "vol"
    assert write_atomic(target, {"a": FileData(b"1"), "dir/b": FileData(b"2", 0o600)})
    data = target / DATA_LINK
    assert data.is_symlink() and os.readlink(data).startswith("..")
    assert os.readlink(target / "a") == f"{DATA_LINK}/a"
    assert (target / "a").read_bytes() == b"1"
    assert (target / "dir" / "b").read_bytes() == b"2"
    assert stat.S_IMODE((target / "dir" / "b").stat().st_mode) == 0o600
    assert not write_atomic(target, {"a": FileData(b"1"), "dir/b": FileData(b"2", 0o600)})


def test_write_atomic_swaps_versions_and_drops_removed_names(tmp_path: Path) -> None:
    target = tmp_path / "vol"
    write_atomic(target, {"a": FileData(b"1"), "b": FileData(b"2")})
    first = os.readlink(target / DATA_LINK)
    assert write_atomic(target, {"a": FileData(b"changed")})
    assert os.readlink(target / DATA_LINK) != first
    assert not (target / first).exists()  # the old version is gone
    assert (target / "a").read_bytes() == b"changed"
    assert not (target / "b").exists() and not (target / "b").is_symlink()
    versions = [p.name for p in target.iterdir() if p.name.startswith("..20")]
    assert len(versions) == 1


def test_write_atomic_refuses_paths_out_of_the_volume(tmp_path: Path) -> None:
    for bad in ("../x", "/etc/x", "a/../../x", "..data"):
        with pytest.raises(VolumeError):
            write_atomic(tmp_path / "vol", {bad: FileData(b"")})


# ------------------------------------------------------------------ sources


def pod_with(*volumes: core_pb2.Volume) -> core_pb2.Pod:
    pod = make_pod()
    pod.metadata.labels["app"] = "web"
    pod.spec.volumes.extend(volumes)
    return pod


async def test_a_config_map_volume_with_items_and_modes(tmp_path: Path) -> None:
    objects = Objects()
    objects.put_map("conf", {"app.ini": "x=1", "other": "o"})
    volume = core_pb2.Volume(name="conf")
    volume.config_map.name = "conf"
    volume.config_map.items.add(key="app.ini", path="etc/app.ini", mode=0o600)
    pod = pod_with(volume)
    paths, warnings = await manager(tmp_path, objects).setup(pod)
    path = paths["conf"]
    assert warnings == []
    pod_dir = tmp_path / "root/pods" / pod.metadata.uid
    assert path == pod_dir / "volumes/kubernetes.io~configmap/conf"
    assert (path / "etc/app.ini").read_text() == "x=1"
    assert stat.S_IMODE((path / "etc/app.ini").stat().st_mode) == 0o600
    assert not (path / "other").exists()


async def test_a_secret_volume_defaults_to_0644_in_a_private_parent(tmp_path: Path) -> None:
    objects = Objects()
    objects.put_secret("creds", {"password": b"s3cret"})
    volume = core_pb2.Volume(name="creds")
    volume.secret.secret_name = "creds"
    paths, _ = await manager(tmp_path, objects).setup(pod_with(volume))
    file = paths["creds"] / "password"
    assert file.read_bytes() == b"s3cret"
    assert stat.S_IMODE(file.stat().st_mode) == 0o644
    assert stat.S_IMODE(paths["creds"].parent.stat().st_mode) == 0o700


async def test_a_missing_source_fails_unless_optional(tmp_path: Path) -> None:
    volume = core_pb2.Volume(name="conf")
    volume.config_map.name = "absent"
    with pytest.raises(VolumeError, match='volume "conf" : configmap "absent" not found'):
        await manager(tmp_path).setup(pod_with(volume))
    volume.config_map.optional = True
    paths, _ = await manager(tmp_path).setup(pod_with(volume))
    assert [p.name for p in paths["conf"].iterdir() if not p.name.startswith("..")] == []


async def test_a_missing_key_fails_unless_optional(tmp_path: Path) -> None:
    objects = Objects()
    objects.put_map("conf", {"a": "1"})
    volume = core_pb2.Volume(name="conf")
    volume.config_map.name = "conf"
    volume.config_map.items.add(key="b", path="b")
    with pytest.raises(VolumeError, match="has no key 'b'"):
        await manager(tmp_path, objects).setup(pod_with(volume))


async def test_a_set_up_volume_keeps_its_files_when_its_source_goes(tmp_path: Path) -> None:
    objects = Objects()
    objects.put_map("conf", {"a": "1"})
    volume = core_pb2.Volume(name="conf")
    volume.config_map.name = "conf"
    pod = pod_with(volume)
    volumes = manager(tmp_path, objects)
    await volumes.setup(pod)
    objects.put_map("conf", {"a": "2"})
    paths, _ = await volumes.setup(pod)
    assert (paths["conf"] / "a").read_text() == "2"  # updated in place
    objects.maps.clear()
    paths, warnings = await volumes.setup(pod)
    assert (paths["conf"] / "a").read_text() == "2"
    assert len(warnings) == 1 and "not found" in warnings[0]


async def test_downward_api_and_projected_volumes(tmp_path: Path) -> None:
    objects = Objects()
    objects.put_map("conf", {"k": "v"})
    objects.put_secret("creds", {"token": b"t"})
    downward = core_pb2.Volume(name="info")
    downward.downward_api.items.add(path="labels").field_ref.field_path = "metadata.labels"
    downward.downward_api.items.add(path="name").field_ref.field_path = "metadata.name"
    limit = downward.downward_api.items.add(path="mem")
    limit.resource_field_ref.container_name = "main"
    limit.resource_field_ref.resource = "limits.memory"
    limit.resource_field_ref.divisor = "1Mi"
    projected = core_pb2.Volume(name="all")
    projected.projected.sources.add().config_map.name = "conf"
    projected.projected.sources.add().secret.name = "creds"
    projected.projected.sources.add().downward_api.items.add(
        path="ns"
    ).field_ref.field_path = "metadata.namespace"
    pod = pod_with(downward, projected)
    pod.spec.containers[0].resources.limits["memory"] = "64Mi"
    paths, _ = await manager(tmp_path, objects).setup(pod)
    assert (paths["info"] / "labels").read_text() == 'app="web"'
    assert (paths["info"] / "name").read_text() == "web"
    assert (paths["info"] / "mem").read_text() == "64"
    assert sorted(p.name for p in paths["all"].iterdir() if not p.name.startswith("..")) == [
        "k",
        "ns",
        "token",
    ]
    assert (paths["all"] / "ns").read_text() == "default"


@pytest.mark.skipif(os.geteuid() != 0, reason="giving files to a group needs root")
async def test_fs_group_owns_volume_files_and_empty_dirs(tmp_path: Path) -> None:
    objects = Objects()
    objects.put_secret("tls", {"key.pem": b"k"})
    secret = core_pb2.Volume(name="tls")
    secret.secret.secret_name = "tls"
    secret.secret.default_mode = 0o600
    scratch = core_pb2.Volume(name="scratch")
    scratch.empty_dir.SetInParent()
    pod = pod_with(secret, scratch)
    pod.spec.security_context.fs_group = 2000
    volumes = manager(tmp_path, objects)
    paths, _ = await volumes.setup(pod)
    key = (paths["tls"] / "key.pem").stat()
    assert (key.st_gid, stat.S_IMODE(key.st_mode)) == (2000, 0o640)
    folder = paths["scratch"].stat()
    assert (folder.st_gid, stat.S_IMODE(folder.st_mode)) == (2000, 0o2777)
    version = os.readlink(paths["tls"] / DATA_LINK)
    await volumes.setup(pod)
    assert os.readlink(paths["tls"] / DATA_LINK) == version  # unchanged: not rewritten


async def test_empty_dir_is_world_writable_and_teardown_removes_the_pod(tmp_path: Path) -> None:
    volume = core_pb2.Volume(name="scratch")
    volume.empty_dir.SetInParent()
    pod = pod_with(volume)
    volumes = manager(tmp_path)
    paths, _ = await volumes.setup(pod)
    assert stat.S_IMODE(paths["scratch"].stat().st_mode) == 0o777
    (paths["scratch"] / "file").write_text("x")
    assert volumes.known_pods() == [pod.metadata.uid]
    other_node = VolumeManager(volumes.root, Objects(), tmpfs=False, node_name="other")
    assert other_node.known_pods() == []  # a kubelet sharing the root leaves it alone
    await volumes.teardown(pod.metadata.uid)
    assert not volumes.pod_dir(pod.metadata.uid).exists()
    assert volumes.known_pods() == []


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
async def test_memory_empty_dir_is_a_tmpfs_unmounted_on_teardown(tmp_path: Path) -> None:
    volume = core_pb2.Volume(name="mem")
    volume.empty_dir.medium = "Memory"
    volume.empty_dir.size_limit = "4Mi"
    pod = pod_with(volume)
    volumes = VolumeManager(tmp_path / "root", Objects(), tmpfs=True)
    try:
        paths, _ = await volumes.setup(pod)
        await volumes.setup(pod)  # idempotent: not mounted twice
        assert mounts_under(str(paths["mem"])) == [str(paths["mem"])]
        size = os.statvfs(paths["mem"])
        assert size.f_blocks * size.f_frsize == 4 * 1024 * 1024
        await volumes.teardown(pod.metadata.uid)
        assert mounts_under(str(tmp_path)) == []
        assert not volumes.pod_dir(pod.metadata.uid).exists()
    finally:
        unmount_all(tmp_path)


def unmount_all(path: Path) -> None:
    for point in mounts_under(str(path)):
        subprocess.run(["umount", "-l", point], check=False)


def test_host_path_types(tmp_path: Path) -> None:
    def source(path: Path, kind: str) -> core_pb2.HostPathVolumeSource:
        return core_pb2.HostPathVolumeSource(path=str(path), type=kind)

    made = tmp_path / "made" / "deep"
    assert check_host_path(source(made, "DirectoryOrCreate")) == made and made.is_dir()
    file = tmp_path / "f"
    check_host_path(source(file, "FileOrCreate"))
    assert file.is_file()
    check_host_path(source(file, "File"))
    check_host_path(source(tmp_path / "anything", ""))  # no check
    for path, kind in ((file, "Directory"), (made, "File"), (file, "Socket"),
                       (tmp_path / "absent", "Directory")):  # fmt: skip
        with pytest.raises(VolumeError, match="type check failed"):
            check_host_path(source(path, kind))
    with pytest.raises(VolumeError, match="is not a directory"):
        check_host_path(source(tmp_path / "no" / "file", "FileOrCreate"))


# ------------------------------------------------------------------ mounts


def test_container_mounts_with_sub_path_and_read_only(tmp_path: Path) -> None:
    scratch, conf = tmp_path / "scratch", tmp_path / "conf"
    scratch.mkdir()
    write_atomic(conf, {"app.ini": FileData(b"x")})
    pod = make_pod()
    pod.spec.volumes.add(name="scratch").empty_dir.SetInParent()
    pod.spec.volumes.add(name="conf").config_map.name = "conf"
    container = pod.spec.containers[0]
    container.volume_mounts.add(name="scratch", mount_path="/data")
    container.volume_mounts.add(name="scratch", mount_path="/logs", sub_path="logs", read_only=True)
    container.volume_mounts.add(name="conf", mount_path="/etc/app.ini", sub_path="app.ini")
    mounts = container_mounts(pod, container, {"scratch": scratch, "conf": conf})
    assert [(m.container_path, m.host_path, m.readonly) for m in mounts] == [
        ("/data", str(scratch), False),
        ("/logs", str(scratch / "logs"), True),
        ("/etc/app.ini", str(conf / "app.ini"), True),  # configMaps are read-only
    ]
    assert (scratch / "logs").is_dir()  # a missing subPath directory is made
    assert all(m.propagation == pb.PROPAGATION_PRIVATE for m in mounts)


def test_sub_path_directories_take_the_volumes_mode(tmp_path: Path) -> None:
    """As the kubelet: an emptyDir's subPath is writable by anyone (past the umask);
    one made in a hostPath is no more open than the hostPath itself."""
    scratch, host = tmp_path / "scratch", tmp_path / "host"
    scratch.mkdir()
    scratch.chmod(0o777)
    host.mkdir()
    host.chmod(0o750)
    pod = make_pod()
    pod.spec.volumes.add(name="scratch").empty_dir.SetInParent()
    pod.spec.volumes.add(name="host").host_path.path = str(host)
    container = pod.spec.containers[0]
    container.volume_mounts.add(name="scratch", mount_path="/a", sub_path="x/y")
    container.volume_mounts.add(name="host", mount_path="/b", sub_path="data/db")
    container_mounts(pod, container, {"scratch": scratch, "host": host})
    for made in (scratch / "x", scratch / "x" / "y"):
        assert stat.S_IMODE(made.stat().st_mode) == 0o777
    for made in (host / "data", host / "data" / "db"):
        assert stat.S_IMODE(made.stat().st_mode) == 0o750


def test_a_sub_path_may_not_leave_its_volume(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "escape").symlink_to("/etc")
    pod = make_pod()
    pod.spec.volumes.add(name="scratch").empty_dir.SetInParent()
    container = pod.spec.containers[0]
    container.volume_mounts.add(name="scratch", mount_path="/x", sub_path="escape")
    with pytest.raises(VolumeError, match="leads out"):
        container_mounts(pod, container, {"scratch": scratch})
    container.volume_mounts[0].sub_path = "../up"
    with pytest.raises(VolumeError):
        container_mounts(pod, container, {"scratch": scratch})


def test_a_sub_path_to_a_missing_key_is_refused_not_made(tmp_path: Path) -> None:
    """A configMap volume's entries are its keys, rewritten as a whole on change: a
    directory made for a missing key would be deleted under the container's mount."""
    conf = tmp_path / "conf"
    write_atomic(conf, {"app.ini": FileData(b"x")})
    pod = make_pod()
    pod.spec.volumes.add(name="conf").config_map.name = "conf"
    container = pod.spec.containers[0]
    container.volume_mounts.add(name="conf", mount_path="/etc/other", sub_path="other.ini")
    with pytest.raises(VolumeError, match="no such key"):
        container_mounts(pod, container, {"conf": conf})
    assert not (conf / "other.ini").exists()


# ------------------------------------------------------------------ steps


async def test_the_steps_mount_volumes_into_containers_and_remove_them(tmp_path: Path) -> None:
    objects = Objects()
    node = node_services(tmp_path)
    node.volumes = manager(tmp_path, objects)
    node.objects = objects
    pod = make_pod()
    volume = pod.spec.volumes.add(name="conf")
    volume.config_map.name = "conf"
    pod.spec.containers[0].volume_mounts.add(name="conf", mount_path="/etc/conf")
    ctx = await context(node, pod)
    result = await MountVolumes(node).run(ctx)
    assert result is not None and result.retry_after == 5.0
    assert ctx.waiting["main"].reason == "ContainerCreating"
    assert 'configmap "conf" not found' in ctx.waiting["main"].message
    assert "FailedMount" in events(node).reasons()
    assert fake(node).sandbox_count == 0

    objects.put_map("conf", {"k": "v"})
    ctx = await context(node, pod)
    assert await MountVolumes(node).run(ctx) is None
    assert await EnsureSandbox(node).run(ctx) is None
    await StartAppContainers(node).run(ctx)
    assert "main" not in ctx.waiting
    stored = next(iter(fake(node)._containers.values())).config
    assert [(m.container_path, m.readonly) for m in stored.mounts] == [
        ("/etc/conf", True),
        ("/etc/hosts", False),  # the kubelet's hosts file, writable as the kubelet's
    ]
    assert read(Path(stored.mounts[0].host_path, "k")) == "v"
    assert f"{ctx.pod_ip}\tweb\n" in read(Path(stored.mounts[1].host_path))

    await UnmountVolumes(node).run(ctx)
    assert not node.volumes.pod_dir(pod.metadata.uid).exists()


async def test_a_failed_unmount_is_retried_before_the_pod_is_forgotten(tmp_path: Path) -> None:
    node = node_services(tmp_path)
    volumes = manager(tmp_path)
    node.volumes = volumes
    pod = make_pod()
    pod.spec.volumes.add(name="scratch").empty_dir.SetInParent()
    await volumes.setup(pod)

    async def busy(uid: str) -> None:
        raise VolumeError("umount: target is busy")

    volumes.teardown = busy  # type: ignore[method-assign]
    result = await UnmountVolumes(node).run(await context(node, pod))
    assert result is not None and result.retry_after == 5.0 and not result.done


class _Resource:
    """A client resource whose get answers with `outcome` (or never)."""

    def __init__(self, kind: kinds.Kind, outcome: object) -> None:
        self.kind = kind
        self.outcome = outcome

    async def get(self, name: str, namespace: str = "") -> object:
        if self.outcome is None:
            await asyncio.Event().wait()  # a master that never answers
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome


def _api(config_maps: object, secrets: object) -> Client:
    return cast(
        Client,
        SimpleNamespace(
            config_maps=_Resource(kinds.CONFIG_MAP, config_maps),
            secrets=_Resource(kinds.SECRET, secrets),
        ),
    )


def _rpc_error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    empty = grpc.aio.Metadata()
    return grpc.aio.AioRpcError(code, empty, empty, details="from the test")


async def test_api_objects_read_through_the_clients_resources() -> None:
    """The client's own resources (which follow its channel on a renewed
    certificate): found, NOT_FOUND is None, another status a VolumeError."""
    found = core_pb2.ConfigMap(data={"k": "v"})
    objects = ApiObjects(_api(found, _rpc_error(grpc.StatusCode.NOT_FOUND)))
    assert await objects.config_map("default", "cm") is found
    assert await objects.secret("default", "s") is None
    refused = ApiObjects(_api(_rpc_error(grpc.StatusCode.PERMISSION_DENIED), None))
    with pytest.raises(VolumeError, match="reading configmap default/cm: PERMISSION_DENIED"):
        await refused.config_map("default", "cm")


async def test_api_objects_give_up_on_a_silent_master() -> None:
    objects = ApiObjects(_api(None, None), timeout=0.05)
    with pytest.raises(VolumeError, match=r"reading secret default/s: no answer in 0\.05 s"):
        await objects.secret("default", "s")


# ------------------------------------------------------------------ hosts file


def test_the_hosts_file_names_the_pod_on_its_ip() -> None:
    pod = make_pod("web")
    text = hosts_file(pod, "10.244.1.7", "cluster.local").decode()
    lines = text.splitlines()
    assert lines[0] == "# Kubernetes-managed hosts file."
    assert "127.0.0.1\tlocalhost" in lines and lines[-1] == "10.244.1.7\tweb"
    # hostname and subdomain: the FQDN first, as the kubelet writes it.
    pod.spec.hostname, pod.spec.subdomain = "db-0", "db"
    last = hosts_file(pod, "10.244.1.7", "example.org").decode().splitlines()[-1]
    assert last == "10.244.1.7\tdb-0.db.default.svc.example.org\tdb-0"


async def test_hosts_file_is_in_the_pods_directory_and_mounted_unless_taken(
    tmp_path: Path,
) -> None:
    volumes = manager(tmp_path)
    pod = make_pod("web")
    path = await volumes.write_hosts(pod, "10.244.1.7", "cluster.local")
    assert path == volumes.pod_dir(pod.metadata.uid) / "etc-hosts"
    assert path.read_bytes() == hosts_file(pod, "10.244.1.7", "cluster.local")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    inode = path.stat().st_ino
    await volumes.write_hosts(pod, "10.244.1.7", "cluster.local")
    assert path.stat().st_ino == inode  # unchanged: not replaced under a mount
    # Its directory is the node's (removed with the pod, found by the pruner).
    assert volumes.known_pods() == [pod.metadata.uid]
    container = pod.spec.containers[0]
    mounts = container_mounts(pod, container, {}, path)
    assert [(m.container_path, m.host_path) for m in mounts] == [("/etc/hosts", str(path))]
    # A volumeMount at /etc/hosts is the container's own choice.
    pod.spec.volumes.add(name="own").empty_dir.SetInParent()
    container.volume_mounts.add(name="own", mount_path="/etc/hosts", sub_path="hosts")
    base = tmp_path / "own"
    base.mkdir()
    mounts = container_mounts(pod, container, {"own": base}, path)
    assert [(m.container_path, m.host_path) for m in mounts] == [
        ("/etc/hosts", str(base / "hosts"))
    ]
    await volumes.teardown(pod.metadata.uid)
    assert not path.exists()


async def test_a_host_network_pod_gets_no_hosts_file(tmp_path: Path) -> None:
    node = node_services(tmp_path)
    node.volumes = manager(tmp_path)
    pod = make_pod("agent", host_network=True)
    ctx = await context(node, pod)
    assert await EnsureSandbox(node).run(ctx) is None
    await StartAppContainers(node).run(ctx)
    stored = next(iter(fake(node)._containers.values())).config
    assert all(m.container_path != "/etc/hosts" for m in stored.mounts)
    assert not node.volumes.pod_dir(pod.metadata.uid).exists()
