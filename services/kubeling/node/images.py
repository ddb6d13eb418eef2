"""Build small OCI image archives from Debian packages and import them into containerd.

No image registry is reachable from the machines kubeling runs on, so the images a
node needs are made locally:

* ``docker.io/library/busybox:latest`` (plus the exact upstream version tag) from the
  ``busybox-static`` Debian package, so manifests that say ``image: busybox`` run
  unchanged;
* the pod sandbox ("pause") image from a tiny static C program, falling back to the
  busybox shell when no C compiler is present.

Each image is written as an OCI image layout packed in a tar file, the format
``ctr images import`` reads (k3s imports its air-gap image folder the same way).
The output is deterministic: the same .deb and compiler give the same digests.

Command line::

    python -m kubeling.node.images build --out DIR [--deb busybox-static.deb]
    python -m kubeling.node.images import --dir DIR --address /run/containerd/containerd.sock
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

BUSYBOX_IMAGE = "docker.io/library/busybox:latest"
PAUSE_IMAGE = "localhost/kubeling/pause:1.0"
"""The sandbox image. A ``localhost/`` name: should anything ever try to pull it, the
attempt goes to loopback, never to a real network."""

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_CONTAINERD_NAME = "io.containerd.image.name"

# OCI architecture names differ from uname's.
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386", "i386": "386"}

PAUSE_C = r"""
/* Pod sandbox process: keeps the pod's namespaces alive until told to stop.
 * As PID 1 the kernel drops signals that have no handler, so TERM/INT are waited
 * for explicitly, and orphans re-parented to it are reaped. */
#include <signal.h>
#include <stdio.h>
#include <sys/wait.h>

int main(int argc, char **argv) {
    (void)argv;
    if (argc > 1) { puts("pause (kubeling)"); return 0; } /* build smoke test */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGCHLD);
    /* Blocked signals stay pending for sigwait, so nothing races a handler. */
    if (sigprocmask(SIG_BLOCK, &set, NULL) != 0) { perror("sigprocmask"); return 2; }
    for (;;) {
        int sig = 0;
        if (sigwait(&set, &sig) != 0) continue;
        if (sig != SIGCHLD) return 0;
        while (waitpid(-1, NULL, WNOHANG) > 0) {}
    }
}
"""


class ImageBuildError(RuntimeError):
    """A step of building or importing an image failed."""


# ---------------------------------------------------------------------------
# Root filesystems and layers


@dataclass(frozen=True)
class Entry:
    """One file system object of an image layer."""

    path: str  # relative, no leading slash: "bin/sh"
    kind: Literal["dir", "file", "symlink"]
    mode: int = 0o755
    data: bytes = b""
    target: str = ""  # symlink target


def _parents(path: str) -> list[str]:
    parts = path.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def layer_tar(entries: Iterable[Entry], *, mtime: int = 0) -> bytes:
    """An uncompressed, reproducible layer tar: sorted paths, root-owned, fixed mtime.

    Missing parent directories are added (0755) so every path has a directory entry,
    which keeps permissions independent of the unpacker's defaults.
    """
    by_path: dict[str, Entry] = {}
    for entry in entries:
        path = entry.path.strip("/")
        if not path or ".." in path.split("/"):
            raise ValueError(f"bad layer path {entry.path!r}")
        if path in by_path:
            raise ValueError(f"duplicate layer path {path!r}")
        by_path[path] = entry
    for path in list(by_path):
        for parent in _parents(path):
            by_path.setdefault(parent, Entry(parent, "dir", 0o755))

    buf = io.BytesIO()
    # USTAR keeps headers free of PAX records whose content could vary.
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for path in sorted(by_path):
            entry = by_path[path]
            info = tarfile.TarInfo(path)
            info.mtime = mtime
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = entry.mode
            if entry.kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif entry.kind == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = entry.target
                tar.addfile(info)
            else:
                info.size = len(entry.data)
                tar.addfile(info, io.BytesIO(entry.data))
    return buf.getvalue()


def gzip_bytes(data: bytes) -> bytes:
    """Gzip with no timestamp or file name in the header, so output is reproducible."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", filename="", mtime=0, compresslevel=9) as gz:
        gz.write(data)
    return buf.getvalue()


@dataclass(frozen=True)
class LayerFile:
    """A gzip layer written to a file, with the digests an OCI config and manifest
    need."""

    path: Path
    digest: str  # of the gzip bytes (the blob)
    size: int
    diff_id: str  # of the uncompressed tar
    raw_size: int


class _HashingWriter(io.RawIOBase):
    """Passes bytes on to `sink` (when given) while hashing and counting them."""

    def __init__(self, sink: IO[bytes] | None = None) -> None:
        self.sink = sink
        self.hash = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.hash.update(view)
        self.size += view.nbytes
        if self.sink is not None:
            self.sink.write(view)
        return view.nbytes


def _rootfs_path(name: str) -> str:
    """ "./usr/bin/x" or "/usr/bin/x" -> "usr/bin/x"; "." and "./" -> ""."""
    path = name
    while path.startswith("./"):
        path = path[2:]
    return path.strip("/") if path not in (".", "") else ""


def layer_from_rootfs_tar(
    rootfs: Path, out: Path, *, mtime: int = 0, compresslevel: int = 6
) -> LayerFile:
    """Turn a root file system tar (mmdebstrap's output) into a reproducible gzip layer.

    Entries come out sorted by path with no leading "./", uid/gid and modes kept, user
    and group names, xattrs and other PAX records dropped, and mtimes clamped to
    `mtime` (newer files get `mtime`, older keep theirs). Device nodes are dropped (the
    runtime mounts its own /dev; unpacking them needs privileges). A hard link must
    follow its target in the stream, and sorting can reorder them, so each group of
    hard-linked paths is rewritten with the first path in sorted order as the file
    and the others linking to it.
    """
    with tarfile.open(rootfs, mode="r:") as src:
        members: dict[str, tarfile.TarInfo] = {}
        for member in src.getmembers():
            path = _rootfs_path(member.name)
            if not path or ".." in path.split("/"):
                continue
            if member.ischr() or member.isblk():
                continue
            if path.startswith("dev/"):
                continue
            members[path] = member

        # Hard-link groups: original target path -> every path of the group.
        groups: dict[str, list[str]] = {}
        for path, member in members.items():
            if member.islnk():
                target = _rootfs_path(member.linkname)
                if target in members and not members[target].islnk():
                    groups.setdefault(target, [target]).append(path)
        data_of: dict[str, str] = {}  # path written as the file -> path holding the data
        link_to: dict[str, str] = {}  # path written as a hard link -> its (new) target
        for target, paths in groups.items():
            first, *rest = sorted(paths)
            data_of[first] = target
            for path in rest:
                link_to[path] = first

        raw_hash = _HashingWriter()
        with out.open("wb") as fh:
            gz_hash = _HashingWriter(fh)
            with gzip.GzipFile(
                fileobj=gz_hash, mode="wb", filename="", mtime=0, compresslevel=compresslevel
            ) as gz:
                tee = _Tee(gz, raw_hash)
                with tarfile.open(fileobj=tee, mode="w", format=tarfile.PAX_FORMAT) as dst:
                    for path in sorted(members):
                        member = members[path]
                        if member.islnk() and path not in link_to and path not in data_of:
                            # Its target is missing or itself a link: skip it rather
                            # than write a dangling hard link.
                            continue
                        info = tarfile.TarInfo(path)
                        info.mode = member.mode
                        info.uid, info.gid = member.uid, member.gid
                        info.uname = info.gname = ""
                        info.mtime = min(int(member.mtime), mtime) if mtime else int(member.mtime)
                        info.pax_headers = {}
                        if path in link_to:
                            info.type = tarfile.LNKTYPE
                            info.linkname = link_to[path]
                            dst.addfile(info)
                        elif path in data_of or member.isreg():
                            origin = members[data_of.get(path, path)]
                            info.type = tarfile.REGTYPE
                            info.mode = origin.mode
                            info.size = origin.size
                            dst.addfile(info, src.extractfile(origin))
                        elif member.isdir():
                            info.type = tarfile.DIRTYPE
                            dst.addfile(info)
                        elif member.issym():
                            info.type = tarfile.SYMTYPE
                            info.linkname = member.linkname
                            dst.addfile(info)
                        elif member.isfifo():
                            info.type = tarfile.FIFOTYPE
                            dst.addfile(info)
    return LayerFile(
        path=out,
        digest="sha256:" + gz_hash.hash.hexdigest(),
        size=gz_hash.size,
        diff_id="sha256:" + raw_hash.hash.hexdigest(),
        raw_size=raw_hash.size,
    )


class _Tee(io.RawIOBase):
    """Writes to two file objects: the gzip stream and the uncompressed-digest hash."""

    def __init__(self, first: io.BufferedIOBase, second: _HashingWriter) -> None:
        self.first, self.second = first, second

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.first.write(data)
        return self.second.write(data)

    def tell(self) -> int:  # tarfile asks for the start offset
        return self.second.size


def base_files() -> list[Entry]:
    """The small /etc and mount-point skeleton every image here gets."""
    return [
        Entry("etc", "dir"),
        Entry(
            "etc/passwd",
            "file",
            0o644,
            b"root:x:0:0:root:/root:/bin/sh\n"
            b"daemon:x:1:1:daemon:/usr/sbin:/bin/false\n"
            b"nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        ),
        Entry("etc/group", "file", 0o644, b"root:x:0:\ndaemon:x:1:\nnogroup:x:65534:\n"),
        # The runtime usually bind-mounts its own hosts file; this is the fallback.
        Entry("etc/hosts", "file", 0o644, b"127.0.0.1\tlocalhost\n::1\tlocalhost\n"),
        Entry("root", "dir", 0o700),
        Entry("tmp", "dir", 0o1777),
        Entry("var", "dir"),
        Entry("var/tmp", "dir", 0o1777),
        # Mount points runc fills in.
        Entry("proc", "dir", 0o555),
        Entry("sys", "dir", 0o555),
        Entry("dev", "dir"),
    ]


def busybox_rootfs(busybox: bytes, applets: Iterable[str]) -> list[Entry]:
    """/bin/busybox plus one /bin symlink per applet, like the Docker Hub image."""
    entries = [*base_files(), Entry("bin", "dir"), Entry("bin/busybox", "file", 0o755, busybox)]
    for applet in sorted(set(applets)):
        if not re.fullmatch(r"[A-Za-z0-9_.\[\]-]+", applet) or applet == "busybox":
            continue
        entries.append(Entry(f"bin/{applet}", "symlink", 0o777, target="busybox"))
    return entries


def pause_rootfs(pause: bytes) -> list[Entry]:
    return [Entry("pause", "file", 0o755, pause)]


# ---------------------------------------------------------------------------
# OCI image layout


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int

    def to_json(self, annotations: dict[str, str] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if annotations:
            out["annotations"] = annotations
        return out


def _canonical(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class ImageSpec:
    """What goes into one image: its names, one layer, and the runtime config."""

    names: Sequence[str]
    entries: Sequence[Entry]
    cmd: Sequence[str] = ()
    entrypoint: Sequence[str] = ()
    env: Sequence[str] = (f"PATH={DEFAULT_PATH}",)
    user: str = ""
    architecture: str = field(default_factory=lambda: host_architecture())
    created_by: str = "kubeling.node.images"
    mtime: int = 0
    workdir: str = ""
    exposed_ports: Sequence[str] = ()  # "6379/tcp"
    labels: dict[str, str] = field(default_factory=dict)
    # Layers already written to disk, bottom first (a whole Debian root file system
    # is too big to hold as Entry objects); when given, `entries` is ignored.
    layers: Sequence[LayerFile] = ()


@dataclass(frozen=True)
class BuiltImage:
    path: Path
    names: tuple[str, ...]
    manifest_digest: str


def host_architecture() -> str:
    machine = platform.machine()
    return _ARCH.get(machine, machine)


def oci_layout_blobs(
    spec: ImageSpec,
) -> tuple[dict[str, bytes | Path], dict[str, Any], Descriptor]:
    """All blobs of the image keyed by digest (bytes, or the file holding them), the
    index.json object, and the manifest descriptor."""
    layers: list[tuple[Descriptor, bytes | Path]] = []
    diff_ids: list[str] = []
    for given in spec.layers:
        layers.append((Descriptor(MEDIA_LAYER_GZIP, given.digest, given.size), given.path))
        diff_ids.append(given.diff_id)
    if not spec.layers:
        raw_layer = layer_tar(spec.entries, mtime=spec.mtime)
        layer = gzip_bytes(raw_layer)
        layers.append((Descriptor(MEDIA_LAYER_GZIP, sha256_digest(layer), len(layer)), layer))
        diff_ids.append(sha256_digest(raw_layer))

    runtime: dict[str, Any] = {"Env": list(spec.env)}
    if spec.cmd:
        runtime["Cmd"] = list(spec.cmd)
    if spec.entrypoint:
        runtime["Entrypoint"] = list(spec.entrypoint)
    if spec.user:
        runtime["User"] = spec.user
    if spec.workdir:
        runtime["WorkingDir"] = spec.workdir
    if spec.exposed_ports:
        runtime["ExposedPorts"] = {port: {} for port in spec.exposed_ports}
    if spec.labels:
        runtime["Labels"] = dict(spec.labels)
    config_obj = {
        "architecture": spec.architecture,
        "os": "linux",
        "config": runtime,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": spec.created_by} for _ in diff_ids],
    }
    config = _canonical(config_obj)
    config_desc = Descriptor(MEDIA_CONFIG, sha256_digest(config), len(config))

    manifest_obj = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": config_desc.to_json(),
        "layers": [desc.to_json() for desc, _ in layers],
    }
    manifest = _canonical(manifest_obj)
    manifest_desc = Descriptor(MEDIA_MANIFEST, sha256_digest(manifest), len(manifest))

    # One index entry per name: containerd tags each from io.containerd.image.name,
    # other OCI tools read the tag from ref.name.
    index = {
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [
            manifest_desc.to_json(
                {ANNOTATION_CONTAINERD_NAME: name, ANNOTATION_REF_NAME: _tag_of(name)}
            )
            for name in spec.names
        ],
    }
    blobs: dict[str, bytes | Path] = {desc.digest: data for desc, data in layers}
    blobs |= {
        config_desc.digest: config,
        manifest_desc.digest: manifest,
    }
    return blobs, index, manifest_desc


def _tag_of(name: str) -> str:
    last = name.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else "latest"


def write_oci_archive(path: Path, spec: ImageSpec) -> BuiltImage:
    """Write the image as an OCI layout inside a (reproducible) tar file."""
    if not spec.names:
        raise ValueError("an image needs at least one name")
    blobs, index, manifest_desc = oci_layout_blobs(spec)
    files: list[tuple[str, bytes | Path]] = [
        ("oci-layout", _canonical({"imageLayoutVersion": "1.0.0"})),
        ("index.json", _canonical(index)),
    ]
    files += [(f"blobs/sha256/{d.split(':', 1)[1]}", data) for d, data in sorted(blobs.items())]

    tmp = path.with_name(path.name + ".tmp")
    with tarfile.open(tmp, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for dirname in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(dirname)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, spec.mtime
            tar.addfile(info)
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.mode, info.mtime = 0o644, spec.mtime
            if isinstance(data, Path):
                info.size = data.stat().st_size
                with data.open("rb") as src:
                    tar.addfile(info, src)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    # Rename last so an importer never sees a half-written archive.
    tmp.replace(path)
    return BuiltImage(path, tuple(spec.names), manifest_desc.digest)


def read_archive_names(path: Path) -> dict[str, str]:
    """Image name -> manifest digest, from an OCI archive's index.json."""
    with tarfile.open(path) as tar:
        member = tar.extractfile("index.json")
        if member is None:
            raise ImageBuildError(f"{path}: no index.json")
        index = json.load(member)
    names: dict[str, str] = {}
    for desc in index.get("manifests", []):
        name = desc.get("annotations", {}).get(ANNOTATION_CONTAINERD_NAME)
        if name:
            names[name] = desc["digest"]
    return names


# ---------------------------------------------------------------------------
# Inputs: the busybox-static package and the pause program


def _run(cmd: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            list(cmd), check=True, capture_output=True, text=True, timeout=300, **kwargs
        )
    except FileNotFoundError as exc:
        raise ImageBuildError(f"{cmd[0]} is not installed") from exc
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or exc.stdout or "").strip()
        raise ImageBuildError(f"{' '.join(cmd)} failed: {detail}") from exc


def download_busybox_deb(workdir: Path) -> Path:
    """`apt-get download busybox-static` into workdir (needs apt lists to be present)."""
    _run(["apt-get", "download", "-q", "busybox-static"], cwd=workdir)
    debs = sorted(workdir.glob("busybox-static_*.deb"))
    if not debs:
        raise ImageBuildError("apt-get download busybox-static produced no .deb")
    return debs[-1]


@dataclass(frozen=True)
class Busybox:
    binary: bytes
    applets: tuple[str, ...]
    version: str  # upstream version: "1.35.0"


def _upstream_version(debian_version: str) -> str:
    # "1:1.35.0-4+deb12u1+b1" -> "1.35.0": drop the epoch and the Debian revision.
    version = debian_version.split(":", 1)[-1]
    return version.rsplit("-", 1)[0] if "-" in version else version


def _busybox_applets(binary: Path) -> tuple[str, ...]:
    listing = _run([str(binary), "--list"]).stdout
    return tuple(line.strip() for line in listing.splitlines() if line.strip())


def busybox_from_deb(deb: Path, workdir: Path) -> Busybox:
    """Extract /bin/busybox from a busybox-static .deb and ask it for its applets."""
    version = _run(["dpkg-deb", "-f", str(deb), "Version"]).stdout.strip()
    root = workdir / "busybox-deb"
    root.mkdir(parents=True, exist_ok=True)
    _run(["dpkg-deb", "-x", str(deb), str(root)])
    binary = root / "bin" / "busybox"
    if not binary.is_file():
        raise ImageBuildError(f"{deb}: no bin/busybox inside")
    return Busybox(binary.read_bytes(), _busybox_applets(binary), _upstream_version(version))


def busybox_installed() -> Busybox:
    """The busybox-static package already installed on this machine (offline fallback)."""
    status = _run(["dpkg-query", "-W", "-f", "${Status} ${Version}", "busybox-static"]).stdout
    if "install ok installed" not in status:
        raise ImageBuildError("busybox-static is not installed")
    binary = Path("/bin/busybox")
    return Busybox(
        binary.read_bytes(), _busybox_applets(binary), _upstream_version(status.split()[-1])
    )


def compile_pause(workdir: Path, cc: str = "gcc") -> bytes | None:
    """The pause program as a static binary, or None when no C compiler works."""
    compiler = shutil.which(cc)
    if compiler is None:
        return None
    src = workdir / "pause.c"
    out = workdir / "pause"
    src.write_text(PAUSE_C)
    # No build id and stripped symbols: the bytes depend only on source and compiler.
    cmd = [compiler, "-static", "-Os", "-s", "-Wl,--build-id=none", "-o", str(out), str(src)]
    try:
        _run(cmd)
        _run([str(out), "--version"])
    except ImageBuildError:
        return None
    return out.read_bytes()


def busybox_tags(version: str) -> list[str]:
    """`latest` plus the exact upstream version the package carries."""
    tags = [BUSYBOX_IMAGE]
    if re.fullmatch(r"\d+\.\d+\.\d+", version):
        repo = BUSYBOX_IMAGE.rsplit(":", 1)[0]
        tags.append(f"{repo}:{version}")
    return tags


def busybox_spec(busybox: Busybox) -> ImageSpec:
    return ImageSpec(
        names=busybox_tags(busybox.version),
        entries=busybox_rootfs(busybox.binary, busybox.applets),
        cmd=["sh"],
        created_by=f"kubeling.node.images: busybox-static {busybox.version}",
    )


def pause_spec(pause: bytes | None, busybox: Busybox) -> ImageSpec:
    if pause is not None:
        # Nobody user, as upstream's pause image: the sandbox needs no privileges.
        return ImageSpec(
            names=[PAUSE_IMAGE],
            entries=pause_rootfs(pause),
            entrypoint=["/pause"],
            user="65535:65535",
            created_by="kubeling.node.images: pause.c",
        )
    # Without a compiler: busybox sh as PID 1 with a TERM trap (a bare `sleep` as
    # PID 1 would ignore SIGTERM and only die by SIGKILL after the stop timeout).
    script = 'trap "exit 0" TERM INT; while :; do sleep 3600 & wait $!; done'
    return ImageSpec(
        names=[PAUSE_IMAGE],
        entries=busybox_rootfs(busybox.binary, busybox.applets),
        entrypoint=["/bin/sh", "-c", script],
        created_by="kubeling.node.images: busybox pause fallback",
    )


def build_images(out: Path, *, deb: Path | None = None, cc: str = "gcc") -> list[BuiltImage]:
    """Build busybox.tar and pause.tar in `out`.

    The busybox .deb comes from `deb`, else `apt-get download`, else the installed
    busybox-static package.
    """
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kubeling-images-") as tmp:
        work = Path(tmp)
        if deb is None:
            try:
                deb = download_busybox_deb(work)
            except ImageBuildError:
                deb = None
        busybox = busybox_from_deb(deb, work) if deb is not None else busybox_installed()
        pause = compile_pause(work, cc)
        return [
            write_oci_archive(out / "busybox.tar", busybox_spec(busybox)),
            write_oci_archive(out / "pause.tar", pause_spec(pause, busybox)),
        ]


# ---------------------------------------------------------------------------
# Import into containerd


def containerd_images(
    containerd_address: str, namespace: str = "k8s.io", ctr: str = "ctr"
) -> dict[str, str]:
    """Image name -> target digest of the images in a containerd namespace."""
    listing = _run([ctr, "--address", containerd_address, "-n", namespace, "images", "ls"]).stdout
    images: dict[str, str] = {}
    for line in listing.splitlines()[1:]:
        # REF TYPE DIGEST SIZE PLATFORMS LABELS
        cols = line.split()
        if len(cols) >= 3 and cols[2].startswith("sha256:"):
            images[cols[0]] = cols[2]
    return images


def import_images(
    dir: Path | str,
    containerd_address: str,
    namespace: str = "k8s.io",
    *,
    ctr: str = "ctr",
) -> list[str]:
    """Import every *.tar in `dir` into containerd; returns the names imported.

    An archive is skipped when every name it carries is already present with the
    same digest, so calling this at each kubelet start costs one `ctr images ls`.
    """
    present = containerd_images(containerd_address, namespace, ctr)
    imported: list[str] = []
    for archive in sorted(Path(dir).glob("*.tar")):
        names = read_archive_names(archive)
        if names and all(present.get(n) == d for n, d in names.items()):
            continue
        _run(
            [
                ctr,
                "--address",
                containerd_address,
                "-n",
                namespace,
                "images",
                "import",
                str(archive),
            ]
        )
        imported += sorted(names)
    return imported


# ---------------------------------------------------------------------------
# Command line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kubeling.node.images",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build busybox.tar and pause.tar")
    build.add_argument("--out", type=Path, required=True, help="output folder")
    build.add_argument("--deb", type=Path, help="busybox-static .deb (default: apt-get download)")
    imp = sub.add_parser("import", help="import every *.tar of a folder into containerd")
    imp.add_argument("--dir", type=Path, required=True)
    imp.add_argument("--address", default="/run/containerd/containerd.sock")
    imp.add_argument("--namespace", default="k8s.io")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            for image in build_images(args.out, deb=args.deb):
                print(f"{image.path}\t{image.manifest_digest}\t{' '.join(image.names)}")
        else:
            for name in import_images(args.dir, args.address, args.namespace):
                print(f"imported {name}")
    except ImageBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
