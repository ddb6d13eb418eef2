"""Pod volumes on the node, handed to containers as CRI bind mounts.

Layout, as the kubelet's: `ROOT/pods/UID/volumes/PLUGIN/NAME`, PLUGIN one of
kubernetes.io~empty-dir, ~configmap, ~secret, ~downward-api, ~projected (hostPath
volumes are the host's path itself, and so are PersistentVolumes). Nothing but the
hosts file (below) is made for a pod without volumes.

- emptyDir: a directory; medium Memory is a tmpfs the kubelet mounts (size from
  sizeLimit) and unmounts when the pod is removed.
- hostPath: the path after its `type` check (DirectoryOrCreate and FileOrCreate
  create it).
- persistentVolumeClaim: the claim is read, then the PersistentVolume bound to it
  (a get each, as the node authorizer allows for claims its pods use); the PV's
  `local` or `hostPath` directory is bind-mounted (read-only when the pod's
  volume says readOnly). A local PV must be this node's (its nodeAffinity names
  it). A directory under this kubelet's local-path directory
  (`ROOT/storage`, where the local-path provisioner puts its volumes) is made on
  first use with mode 0777 (as k3s's provisioner makes it); any other local path
  must exist. A claim not found or not yet bound (WaitForFirstConsumer: the
  provisioner has not made the volume yet) fails the mount (FailedMount) and the
  sync is retried. Once set up, the path is remembered for the pod's life: a
  bound claim's volume never changes, and an unreachable master does not stop a
  running pod's later syncs.
- configMap, secret, downwardAPI, projected: files written by `write_atomic` the
  way the kubelet's AtomicWriter does: the payload goes into a new timestamped
  directory `..2026_12_04_05_00_00.NNN`, the `..data` symlink is swapped to it by
  rename(2), and each visible name is a symlink through `..data`. A reader sees
  the old or the new set, never half of each. A secret volume is a tmpfs (so its
  values never reach the node's disk) when the kubelet may mount; else a plain
  directory whose parent is 0700.

Every pod with an IP (not hostNetwork) also gets the kubelet's hosts file,
`ROOT/pods/UID/etc-hosts`, bind-mounted at each container's /etc/hosts (unless a
volumeMount takes that path): localhost, and the pod's hostname (with its FQDN
when it has a subdomain) on the pod's IP, so an application can resolve its own
name; the runtime's default would be the node's own hosts file.

`VolumeManager.setup` is idempotent and rewrites only what changed: it runs on
every sync of a running pod (the kubelet also wakes pods with such volumes every
few seconds), so a changed ConfigMap or Secret reaches the pod's files within
that period. A volume whose source cannot be read fails the pod's start
(FailedMount) until it can; a volume set up before keeps its last files.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc
import structlog

from kubeling.api import storage as st
from kubeling.api.kinds import pv_node
from kubeling.api.quantity import as_int_bytes, parse_quantity
from kubeling.client import Client
from kubeling.client.client import ResourceClient
from kubeling.cri.api import pb
from kubeling.kubelet.downward import DownwardError, field_value, resource_value
from kubeling.node.containerd import mounts_under
from kubeling.v1 import core_pb2, storage_pb2

log = structlog.get_logger(__name__)

DEFAULT_MODE = 0o644
DATA_LINK = "..data"
EMPTY_DIR = "kubernetes.io~empty-dir"
CONFIG_MAP = "kubernetes.io~configmap"
SECRET = "kubernetes.io~secret"
DOWNWARD_API = "kubernetes.io~downward-api"
PROJECTED = "kubernetes.io~projected"
NODE_MARKER = ".node"  # in each pod directory: the node whose kubelet made it
HOSTS_FILE = "etc-hosts"  # in each pod directory: the containers' /etc/hosts


class VolumeError(Exception):
    """A volume cannot be set up (yet): the message is the FailedMount event's."""


class ObjectSource(Protocol):
    """ConfigMaps and Secrets as the node may read them; None: not found; a
    VolumeError when they cannot be read now."""

    async def config_map(self, namespace: str, name: str) -> core_pb2.ConfigMap | None: ...

    async def secret(self, namespace: str, name: str) -> core_pb2.Secret | None: ...


class StorageSource(Protocol):
    """Claims and volumes as the node may read them (None: not found)."""

    async def claim(
        self, namespace: str, name: str
    ) -> storage_pb2.PersistentVolumeClaim | None: ...

    async def volume(self, name: str) -> storage_pb2.PersistentVolume | None: ...


class ApiObjects:
    """Reads through the kubelet's API client: a get per object (the node
    authorizer lets a node get only what its pods refer to, not list or watch).
    The client's own resources follow its channel when its certificate is renewed;
    each read is bounded by `timeout` so a sync never waits on a silent master."""

    def __init__(self, api: Client, timeout: float = 10.0) -> None:
        self.api = api
        self.timeout = timeout

    async def _get(self, resource: ResourceClient[Any], namespace: str, name: str) -> Any:
        what = f"{resource.kind.name.lower()} {namespace}/{name}"
        try:
            async with asyncio.timeout(self.timeout):
                return await resource.get(name, namespace=namespace)
        except TimeoutError:
            raise VolumeError(f"reading {what}: no answer in {self.timeout:g} s") from None
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            # Unreachable master, refused read: the caller retries on a later sync.
            raise VolumeError(f"reading {what}: {exc.code().name}: {exc.details()}") from None

    async def config_map(self, namespace: str, name: str) -> core_pb2.ConfigMap | None:
        result: core_pb2.ConfigMap | None = await self._get(self.api.config_maps, namespace, name)
        return result

    async def secret(self, namespace: str, name: str) -> core_pb2.Secret | None:
        result: core_pb2.Secret | None = await self._get(self.api.secrets, namespace, name)
        return result

    async def claim(self, namespace: str, name: str) -> storage_pb2.PersistentVolumeClaim | None:
        result: storage_pb2.PersistentVolumeClaim | None = await self._get(
            self.api.persistent_volume_claims, namespace, name
        )
        return result

    async def volume(self, name: str) -> storage_pb2.PersistentVolume | None:
        result: storage_pb2.PersistentVolume | None = await self._get(
            self.api.persistent_volumes, "", name
        )
        return result


# ---------------------------------------------------------------- atomic writer


@dataclass(frozen=True)
class FileData:
    content: bytes
    mode: int = DEFAULT_MODE


def _check_relative(path: str) -> None:
    parts = path.split("/")
    if not path or path.startswith("/") or ".." in parts or parts[0].startswith(".."):
        raise VolumeError(f"invalid path {path!r}: must be relative without '..'")


def _current_payload(target: Path) -> dict[str, FileData] | None:
    data = target / DATA_LINK
    if not data.is_symlink():
        return None
    found: dict[str, FileData] = {}
    base = data.resolve()
    for dirpath, _, files in os.walk(base):
        for name in files:
            full = Path(dirpath) / name
            mode = stat.S_IMODE(full.stat().st_mode)
            found[str(full.relative_to(base))] = FileData(full.read_bytes(), mode)
    return found


def write_atomic(target: Path, payload: dict[str, FileData], gid: int | None = None) -> bool:
    """Make `target` hold exactly `payload` (relative path → file); True if it
    changed. Readers through the visible symlinks see one whole version. `gid`
    (the pod's fsGroup) owns the files, which its members may read (mode | 0440,
    as the kubelet's volume ownership)."""
    if gid is not None:
        payload = {p: FileData(d.content, d.mode | 0o440) for p, d in payload.items()}
    for path in payload:
        _check_relative(path)
    target.mkdir(parents=True, exist_ok=True)
    if _current_payload(target) == payload:
        return False
    stamp = time.strftime("..%Y_%m_%d_%H_%M_%S.", time.gmtime())
    version = Path(tempfile.mkdtemp(prefix=stamp, dir=target))
    version.chmod(0o755)  # readable by a container's non-root user
    for path, data in payload.items():
        file = version / path
        file.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        file.write_bytes(data.content)
        if gid is not None:
            os.chown(file, -1, gid)
        file.chmod(data.mode)
    data_link = target / DATA_LINK
    old = os.readlink(data_link) if data_link.is_symlink() else None
    temporary = target / "..data_tmp"
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(version.name)
    os.rename(temporary, data_link)  # the atomic switch
    visible = {path.split("/", 1)[0] for path in payload}
    for name in visible:
        link = target / name
        if not link.is_symlink():
            link.symlink_to(f"{DATA_LINK}/{name}")
    for entry in target.iterdir():
        if not entry.name.startswith("..") and entry.name not in visible:
            entry.unlink() if entry.is_symlink() else shutil.rmtree(entry, ignore_errors=True)
    if old is not None and old != version.name:
        shutil.rmtree(target / old, ignore_errors=True)
    return True


# ---------------------------------------------------------------- mounting


async def _run(*argv: str) -> None:
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await process.communicate()
    if process.returncode != 0:
        raise VolumeError(f"{' '.join(argv[:3])} failed: {err.decode(errors='replace').strip()}")


def _is_mount_point(path: Path) -> bool:
    return str(path.resolve()) in mounts_under(str(path))


async def mount_tmpfs(path: Path, size_bytes: int = 0, mode: int = 0o755) -> bool:
    """Mount a tmpfs on `path` unless one is there; True if it was mounted now."""
    if _is_mount_point(path):
        return False
    options = f"mode={mode:o}" + (f",size={size_bytes}" if size_bytes else "")
    await _run("mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path))
    return True


# ---------------------------------------------------------------- the manager


def _mode(explicit: int | None, default: int) -> int:
    return explicit if explicit is not None else default


class VolumeManager:
    """Sets up and removes the volumes of the pods on this node."""

    def __init__(
        self,
        root: Path,
        objects: ObjectSource | None,
        *,
        tmpfs: bool = True,
        node_name: str = "",
        local_path_dir: Path | None = None,
    ) -> None:
        """`tmpfs`: the kubelet may mount (root); without it Memory emptyDirs and
        secrets are plain directories. `node_name` marks the pod directories this
        kubelet made (`known_pods`): kubelets sharing a root (lab nodes on one
        machine) never remove each other's. `local_path_dir`: where this node's
        local-path volumes live (default ROOT/storage)."""
        self.root = root
        self.objects = objects
        self.tmpfs = tmpfs and os.geteuid() == 0
        self.node_name = node_name
        self.local_path_dir = local_path_dir or root / st.LOCAL_PATH_SUBDIR
        # (pod uid, volume name) -> the PersistentVolume's path, once set up.
        self._claimed: dict[tuple[str, str], Path] = {}

    def pod_dir(self, uid: str) -> Path:
        return self.root / "pods" / uid

    def volume_dir(self, uid: str, plugin: str, name: str) -> Path:
        return self.pod_dir(uid) / "volumes" / plugin / name

    async def setup(
        self, pod: core_pb2.Pod, pod_ip: str = "", host_ip: str = ""
    ) -> tuple[dict[str, Path], list[str]]:
        """Every volume of `pod` ready: (volume name → host path, warnings). Raises
        VolumeError for a volume never set up whose source is not readable; one set
        up before keeps its last content (its error is a warning)."""
        paths: dict[str, Path] = {}
        warnings: list[str] = []
        for volume in pod.spec.volumes:
            try:
                paths[volume.name] = await self._setup_one(pod, volume, pod_ip, host_ip)
            except (VolumeError, DownwardError, OSError) as exc:
                message = f'MountVolume.SetUp failed for volume "{volume.name}" : {exc}'
                existing = self._existing(pod.metadata.uid, volume)
                if existing is None:
                    raise VolumeError(message) from None
                warnings.append(message)
                paths[volume.name] = existing
        return paths, warnings

    def _existing(self, uid: str, volume: core_pb2.Volume) -> Path | None:
        if volume.HasField("persistent_volume_claim"):
            return self._claimed.get((uid, volume.name))
        plugin = _plugin(volume)
        if plugin is None:
            return None
        path = self.volume_dir(uid, plugin, volume.name)
        return path if (path / DATA_LINK).is_symlink() else None

    async def _setup_one(
        self, pod: core_pb2.Pod, volume: core_pb2.Volume, pod_ip: str, host_ip: str
    ) -> Path:
        uid = pod.metadata.uid
        if volume.HasField("host_path"):
            return await asyncio.to_thread(check_host_path, volume.host_path)
        if volume.HasField("persistent_volume_claim"):
            known = self._claimed.get((uid, volume.name))
            if known is None:
                known = await self._claim_path(pod, volume.persistent_volume_claim)
                self._claimed[(uid, volume.name)] = known
            return known
        plugin = _plugin(volume)
        if plugin is None:
            raise VolumeError("the volume has no source this kubelet supports")
        path = self.volume_dir(uid, plugin, volume.name)
        fresh = not path.exists()
        if fresh:
            await asyncio.to_thread(self._make_dirs, path, plugin)
        security = pod.spec.security_context
        gid = security.fs_group if security.HasField("fs_group") else None
        if volume.HasField("empty_dir"):
            if volume.empty_dir.medium == "Memory" and self.tmpfs:
                limit = volume.empty_dir.size_limit
                size = as_int_bytes(parse_quantity(limit)) if limit else 0
                fresh = await mount_tmpfs(path, size, mode=0o777) or fresh
            if fresh:
                # As the kubelet: any container user may write; with an fsGroup new
                # files belong to it (setgid).
                if gid is not None:
                    os.chown(path, -1, gid)
                path.chmod(0o777 if gid is None else 0o2777)
            return path
        if plugin == SECRET and self.tmpfs:
            await mount_tmpfs(path, mode=0o755)
        payload = await self._payload(pod, volume, pod_ip, host_ip)
        if await asyncio.to_thread(write_atomic, path, payload, gid) and not fresh:
            log.info("volume updated", pod=pod.metadata.name, volume=volume.name)
        return path

    async def _claim_path(
        self, pod: core_pb2.Pod, source: core_pb2.PersistentVolumeClaimVolumeSource
    ) -> Path:
        """The bound PersistentVolume's directory on this node (made for local-path)."""
        objects = self.objects
        if objects is None or not hasattr(objects, "claim"):
            raise VolumeError("this kubelet reads no PersistentVolumeClaims")
        storage: StorageSource = objects  # type: ignore[assignment]
        namespace, name = pod.metadata.namespace or "default", source.claim_name
        pvc = await storage.claim(namespace, name)
        if pvc is None:
            raise VolumeError(f'persistentvolumeclaim "{name}" not found')
        if not pvc.spec.volume_name or pvc.status.phase != st.CLAIM_BOUND:
            phase = pvc.status.phase or "Pending"
            raise VolumeError(f'PersistentVolumeClaim "{name}" is not bound yet (phase {phase})')
        pv = await storage.volume(pvc.spec.volume_name)
        if pv is None:
            raise VolumeError(f'persistentvolume "{pvc.spec.volume_name}" not found')
        ref = pv.spec.claim_ref
        if ref.uid and ref.uid != pvc.metadata.uid:
            raise VolumeError(f'persistentvolume "{pv.metadata.name}" is bound to another claim')
        if pv.spec.HasField("host_path"):
            return await asyncio.to_thread(check_host_path, pv.spec.host_path)
        if not pv.spec.HasField("local"):
            raise VolumeError(
                f'persistentvolume "{pv.metadata.name}" has no source this kubelet supports'
            )
        owner = pv_node(pv)
        if owner and self.node_name and owner != self.node_name:
            raise VolumeError(
                f'persistentvolume "{pv.metadata.name}" is on node "{owner}", '
                f'not "{self.node_name}"'
            )
        return await asyncio.to_thread(self._local_dir, Path(pv.spec.local.path))

    def _local_dir(self, path: Path) -> Path:
        if self.owns_local_path(path):
            if not path.is_dir():
                path.mkdir(parents=True, exist_ok=True)
                path.chmod(0o777)  # past the umask: any container user writes, as k3s
            return path
        if not path.is_dir():
            raise VolumeError(f"local volume path {path} is not a directory on this node")
        return path

    def in_use(self, path: Path) -> bool:
        """Whether a pod of this node has `path` set up as a claim's volume."""
        return any(known == path for known in self._claimed.values())

    def owns_local_path(self, path: Path) -> bool:
        """Whether `path` is a volume directory inside this node's local-path dir
        (the only places the kubelet makes or removes)."""
        base = self.local_path_dir.resolve()
        try:
            resolved = path.resolve()
        except OSError:
            return False
        return resolved != base and resolved.parent == base

    async def write_hosts(self, pod: core_pb2.Pod, pod_ip: str, cluster_domain: str) -> Path:
        """The pod's hosts file (written when its content changes); a VolumeError
        when it cannot be written."""
        path = self.pod_dir(pod.metadata.uid) / HOSTS_FILE
        content = hosts_file(pod, pod_ip, cluster_domain)
        try:
            await asyncio.to_thread(self._write_hosts, path, content)
        except OSError as exc:
            raise VolumeError(f"writing the pod's hosts file: {exc}") from None
        return path

    def _write_hosts(self, path: Path, content: bytes) -> None:
        self._make_pod_dir(path.parent)
        if path.exists() and path.read_bytes() == content:
            return
        # A new inode only before the first container mounts it; afterwards the
        # content (pod IP, hostname) does not change for the sandbox's life.
        staged = path.with_name(f".{HOSTS_FILE}.tmp")
        staged.write_bytes(content)
        staged.chmod(0o644)
        os.replace(staged, path)

    def _make_pod_dir(self, pod: Path) -> None:
        pod.mkdir(parents=True, exist_ok=True, mode=0o750)
        marker = pod / NODE_MARKER
        if not marker.exists():
            marker.write_text(self.node_name)

    def _make_dirs(self, path: Path, plugin: str) -> None:
        # The parents are private to root; the volume itself is reached through the
        # container's bind mount, so its own mode is what container users see.
        self._make_pod_dir(path.parent.parent.parent)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700 if plugin == SECRET else 0o750)
        path.mkdir(exist_ok=True, mode=0o755)

    async def _payload(
        self, pod: core_pb2.Pod, volume: core_pb2.Volume, pod_ip: str, host_ip: str
    ) -> dict[str, FileData]:
        ns = pod.metadata.namespace
        if volume.HasField("config_map"):
            source = volume.config_map
            mode = _mode(source.default_mode if source.HasField("default_mode") else None, 0o644)
            return await self._config_map(ns, source.name, source.items, source.optional, mode)
        if volume.HasField("secret"):
            s = volume.secret
            mode = _mode(s.default_mode if s.HasField("default_mode") else None, 0o644)
            return await self._secret(ns, s.secret_name, s.items, s.optional, mode)
        if volume.HasField("downward_api"):
            d = volume.downward_api
            mode = _mode(d.default_mode if d.HasField("default_mode") else None, 0o644)
            return _downward(pod, d.items, mode, pod_ip, host_ip)
        p = volume.projected
        mode = _mode(p.default_mode if p.HasField("default_mode") else None, 0o644)
        payload: dict[str, FileData] = {}
        for projection in p.sources:
            if projection.HasField("config_map"):
                c = projection.config_map
                payload.update(await self._config_map(ns, c.name, c.items, c.optional, mode))
            elif projection.HasField("secret"):
                s2 = projection.secret
                payload.update(await self._secret(ns, s2.name, s2.items, s2.optional, mode))
            elif projection.HasField("downward_api"):
                payload.update(_downward(pod, projection.downward_api.items, mode, pod_ip, host_ip))
        return payload

    async def _config_map(
        self,
        namespace: str,
        name: str,
        items: Iterable[core_pb2.KeyToPath],
        optional: bool,
        mode: int,
    ) -> dict[str, FileData]:
        found = await self._objects().config_map(namespace, name)
        if found is None:
            if optional:
                return {}
            raise VolumeError(f'configmap "{name}" not found')
        data = {key: value.encode() for key, value in found.data.items()}
        data.update(found.binary_data)
        return _select(data, items, optional, mode, f'configmap "{name}"')

    async def _secret(
        self,
        namespace: str,
        name: str,
        items: Iterable[core_pb2.KeyToPath],
        optional: bool,
        mode: int,
    ) -> dict[str, FileData]:
        found = await self._objects().secret(namespace, name)
        if found is None:
            if optional:
                return {}
            raise VolumeError(f'secret "{name}" not found')
        return _select(dict(found.data), items, optional, mode, f'secret "{name}"')

    def _objects(self) -> ObjectSource:
        if self.objects is None:
            raise VolumeError("this kubelet reads no ConfigMaps or Secrets")
        return self.objects

    async def teardown(self, uid: str) -> None:
        """Unmount the pod's tmpfs volumes, then delete its directory."""
        for key in [k for k in self._claimed if k[0] == uid]:
            del self._claimed[key]
        pod = self.pod_dir(uid)
        if not pod.exists():
            return
        for point in await asyncio.to_thread(mounts_under, str(pod)):
            await _run("umount", point)
        await asyncio.to_thread(shutil.rmtree, pod, True)

    def known_pods(self) -> list[str]:
        """The uids with a directory this node made (to remove those no longer bound)."""
        pods = self.root / "pods"
        if not pods.is_dir():
            return []
        return sorted(p.name for p in pods.iterdir() if self._ours(p / NODE_MARKER))

    def _ours(self, marker: Path) -> bool:
        try:
            return marker.read_text() == self.node_name
        except OSError:
            return False


def needs_refresh(pod: core_pb2.Pod) -> bool:
    """The pod has volumes whose files follow API objects or its own metadata."""
    return any(_plugin(v) in _ATOMIC for v in pod.spec.volumes)


def _plugin(volume: core_pb2.Volume) -> str | None:
    for field_name, plugin in (
        ("empty_dir", EMPTY_DIR),
        ("config_map", CONFIG_MAP),
        ("secret", SECRET),
        ("downward_api", DOWNWARD_API),
        ("projected", PROJECTED),
    ):
        if volume.HasField(field_name):  # type: ignore[arg-type]
            return plugin
    return None


def _select(
    data: dict[str, bytes],
    items: Iterable[core_pb2.KeyToPath],
    optional: bool,
    mode: int,
    what: str,
) -> dict[str, FileData]:
    chosen = list(items)
    if not chosen:
        return {key: FileData(value, mode) for key, value in data.items()}
    result: dict[str, FileData] = {}
    for item in chosen:
        if item.key not in data:
            if optional:
                continue
            raise VolumeError(f"{what} has no key {item.key!r}")
        item_mode = item.mode if item.HasField("mode") else mode
        result[item.path] = FileData(data[item.key], item_mode)
    return result


def _downward(
    pod: core_pb2.Pod,
    items: Iterable[core_pb2.DownwardAPIVolumeFile],
    mode: int,
    pod_ip: str,
    host_ip: str,
) -> dict[str, FileData]:
    result: dict[str, FileData] = {}
    for item in items:
        if item.HasField("field_ref"):
            text = field_value(pod, item.field_ref.field_path, pod_ip, host_ip)
        else:
            ref = item.resource_field_ref
            text = resource_value(pod, ref.container_name, ref.resource, ref.divisor)
        result[item.path] = FileData(text.encode(), item.mode if item.HasField("mode") else mode)
    return result


def check_host_path(source: core_pb2.HostPathVolumeSource) -> Path:
    """The hostPath after its type check; the *OrCreate types make what is missing."""
    path = Path(source.path)
    kind = source.type
    if kind == "DirectoryOrCreate" and not path.exists():
        path.mkdir(parents=True, mode=0o755)
    elif kind == "FileOrCreate" and not path.exists():
        if not path.parent.is_dir():
            raise VolumeError(f"hostPath type check failed: {path.parent} is not a directory")
        path.touch(mode=0o644)
    checks = {
        "Directory": (os.path.isdir, "a directory"),
        "DirectoryOrCreate": (os.path.isdir, "a directory"),
        "File": (os.path.isfile, "a file"),
        "FileOrCreate": (os.path.isfile, "a file"),
        "Socket": (lambda p: _is(p, stat.S_ISSOCK), "a socket"),
        "CharDevice": (lambda p: _is(p, stat.S_ISCHR), "a character device"),
        "BlockDevice": (lambda p: _is(p, stat.S_ISBLK), "a block device"),
    }
    if kind in checks:
        check, what = checks[kind]
        if not check(str(path)):
            raise VolumeError(f"hostPath type check failed: {path} is not {what}")
    elif kind:
        raise VolumeError(f"hostPath type {kind!r} is not supported")
    return path


def _is(path: str, test: Any) -> bool:
    try:
        return bool(test(os.stat(path).st_mode))
    except OSError:
        return False


# ---------------------------------------------------------------- container mounts


def hosts_file(pod: core_pb2.Pod, pod_ip: str, cluster_domain: str) -> bytes:
    """The kubelet's managed hosts file for a pod on its own network."""
    lines = [
        "# Kubernetes-managed hosts file.",
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        "fe00::0\tip6-localnet",
        "fe00::0\tip6-mcastprefix",
        "fe00::1\tip6-allnodes",
        "fe00::2\tip6-allrouters",
    ]
    hostname = pod.spec.hostname or pod.metadata.name
    if pod.spec.subdomain:
        namespace = pod.metadata.namespace or "default"
        fqdn = f"{hostname}.{pod.spec.subdomain}.{namespace}.svc.{cluster_domain}"
        lines.append(f"{pod_ip}\t{fqdn}\t{hostname}")
    else:
        lines.append(f"{pod_ip}\t{hostname}")
    return ("\n".join(lines) + "\n").encode()


_ATOMIC = (CONFIG_MAP, SECRET, DOWNWARD_API, PROJECTED)


def container_mounts(
    pod: core_pb2.Pod,
    container: core_pb2.Container,
    paths: dict[str, Path],
    hosts: Path | None = None,
) -> list[pb.Mount]:
    """The container's volumeMounts as CRI mounts. configMap, secret, downwardAPI
    and projected volumes are always read-only (as the kubelet mounts them); a
    subPath binds that entry of the volume (a missing directory is made, except in
    those four, whose entries are the source's keys). `hosts`, the pod's hosts
    file, goes to /etc/hosts unless a volumeMount is there."""
    kinds_of = {v.name: _plugin(v) for v in pod.spec.volumes}
    read_only_claims = {
        v.name
        for v in pod.spec.volumes
        if v.HasField("persistent_volume_claim") and v.persistent_volume_claim.read_only
    }
    mounts: list[pb.Mount] = []
    for mount in container.volume_mounts:
        base = paths.get(mount.name)
        if base is None:
            raise VolumeError(f"volume {mount.name!r} of mount {mount.mount_path} is not set up")
        host = base
        if mount.sub_path:
            _check_relative(mount.sub_path)
            host = base / mount.sub_path
            resolved = host.resolve()
            # A symlink in the volume must not lead a subPath out of it.
            if kinds_of.get(mount.name) not in _ATOMIC and not resolved.is_relative_to(
                base.resolve()
            ):
                raise VolumeError(f"subPath {mount.sub_path!r} leads out of its volume")
            if not host.exists():
                if kinds_of.get(mount.name) in _ATOMIC:
                    # Its files are the object's keys, rewritten as a whole on every
                    # change: a directory made here would vanish under the mount.
                    raise VolumeError(
                        f"subPath {mount.sub_path!r} is not in volume {mount.name!r} (no such key)"
                    )
                _make_sub_path(base, host)
        mounts.append(
            pb.Mount(
                container_path=mount.mount_path,
                host_path=str(host),
                readonly=mount.read_only
                or kinds_of.get(mount.name) in _ATOMIC
                or mount.name in read_only_claims,
                propagation=pb.PROPAGATION_PRIVATE,
            )
        )
    if hosts is not None and all(m.container_path != "/etc/hosts" for m in mounts):
        mounts.append(
            pb.Mount(
                container_path="/etc/hosts",
                host_path=str(hosts),
                propagation=pb.PROPAGATION_PRIVATE,
            )
        )
    return mounts


def _make_sub_path(base: Path, host: Path) -> None:
    """Make the missing directories of a subPath with the volume's own mode, past
    the umask, as the kubelet does: an emptyDir's 0777 (2777 with an fsGroup) lets
    any container user write; a hostPath's directories stay as private as it is."""
    mode = stat.S_IMODE(base.stat().st_mode)
    missing = [p for p in (host, *host.parents) if p.is_relative_to(base) and p != base]
    for directory in reversed(missing):
        if not directory.exists():
            directory.mkdir()
            directory.chmod(mode)
