"""Build OCI images from Debian packages with mmdebstrap, and the images kubeling
provides (`kubeling image build`).

A recipe names the image, the Debian packages to install, an optional directory
copied onto the root, shell commands run in the finished root, and the runtime
config (cmd, entrypoint, env, user, workdir, ports). Building one:

1. ``mmdebstrap --variant=... --include=a,b bookworm rootfs.tar`` in root mode
   (kubeling's builders run as root), docs, man pages and locales excluded the way
   Debian's slim images do it; files and commands go in as ``--customize-hook`` s.
   Its ``I:`` lines are the progress shown to the user.
2. The root file system tar becomes one reproducible gzip layer
   (``images.layer_from_rootfs_tar``: sorted, mtimes clamped, /dev dropped).
3. ``images.write_oci_archive`` packs layer, config and manifest as an OCI layout in
   a tar, the format ``ctr images import`` and ``kubeling image push`` read.

Archives are cached as ``CACHE/<slug>-<key12>.tar``. The key is a sha256 over
everything that changes the result: suite, mirror, variant, the sorted package set,
the files directory (paths, modes, bytes), the config, the builder version and, for
the ``kubeling`` image, the project's wheel content (its package files and the locked
runtime requirements). Same key, same archive: a rebuild is a file lookup. The key
does not cover the mirror's state, so a Debian point release only reaches a cached
image when something else changes (or the cache is cleared); that is the price of an
instant rebuild.

The ``kubeling`` image carries Python, the libraries kube-proxy and kubeling-dns need
(libnftables1, conntrack, iproute2) and a venv at /opt/kubeling holding the project
and its runtime dependencies, installed from wheels with hashes checked: the project
wheel is built on the host, the dependencies' wheels come from ``pip download
--require-hashes`` of requirements.lock's lines, and the chroot installs them with
``--no-index``. It has two layers: a base (packages, venv, dependencies) cached in
``CACHE/stages`` under a key without the project's source, and the project on top,
pip-installed into the unpacked base in a chroot and diffed against it. A change to
the project's source (which changes the image's key) so rebuilds in seconds, and a
registry push or a node's pull moves only the small top layer.

busybox keeps coming from ``images.py``'s busybox-static builder (offline), under the
same cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from kubeling.node.images import (
    BUSYBOX_IMAGE,
    DEFAULT_PATH,
    ImageBuildError,
    ImageSpec,
    LayerFile,
    busybox_from_deb,
    busybox_installed,
    busybox_spec,
    download_busybox_deb,
    layer_from_rootfs_tar,
    write_oci_archive,
)

DEFAULT_CACHE = Path("/var/cache/kubeling/images")
CACHE_ENV = "KUBELING_IMAGE_CACHE"

BUILDER_VERSION = "2"
"""Bump when the builder's output changes for the same inputs (invalidates caches)."""

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
SOURCE_DATE_EPOCH = 1704067200  # 2024-01-01: layer mtimes are clamped to it
PROJECT_ROOT = Path(__file__).resolve().parents[3]
ASSETS = PROJECT_ROOT / "deploy" / "images"

# What Debian's slim images leave out; copyright files stay (licences).
DPKG_EXCLUDES = (
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/lintian/*",
)

# Logs and caches the package installs leave behind: timestamps, no use in an image.
CLEANUP_HOOK = (
    'rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin "$1"/var/log/apt/*.log'
    ' "$1"/var/log/dpkg.log "$1"/var/log/alternatives.log "$1"/var/cache/ldconfig/aux-cache'
)


def _kubeling_version() -> str:
    try:
        return importlib.metadata.version("kubeling")
    except importlib.metadata.PackageNotFoundError:  # running from a bare checkout
        return "0.0.0"


KUBELING_VERSION = _kubeling_version()
KUBELING_IMAGE = f"docker.io/kubeling/kubeling:{KUBELING_VERSION}"

Progress = Callable[[str], None]
Runner = Callable[[Sequence[str], Mapping[str, str], Progress], None]
"""Runs a command (mmdebstrap), streaming its output lines to the progress callback;
raises ImageBuildError when it fails. Injectable so tests never reach the network."""


def image_cache_dir() -> Path:
    """The archive cache: $KUBELING_IMAGE_CACHE, else /var/cache/kubeling/images."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else DEFAULT_CACHE


# ---------------------------------------------------------------------------
# Recipes and names


@dataclass(frozen=True)
class Recipe:
    """What an image is made of. `name` is the full reference the archive is keyed by;
    `tags` are further names the same image carries."""

    name: str
    packages: tuple[str, ...] = ()
    files: Path | None = None  # its tree is copied onto the image's root
    cmd: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()
    env: tuple[str, ...] = ()  # "K=V"; PATH defaults to DEFAULT_PATH
    user: str = ""
    workdir: str = ""
    exposed_ports: tuple[str, ...] = ()  # "6379/tcp"
    variant: str = "essential"
    tags: tuple[str, ...] = ()
    hooks: tuple[str, ...] = ()  # shell commands run inside the finished root (chroot)
    python_project: bool = False  # install kubeling into a venv at /opt/kubeling
    source: Literal["mmdebstrap", "busybox"] = "mmdebstrap"
    suite: str = SUITE
    mirror: str = MIRROR
    labels: tuple[tuple[str, str], ...] = field(default=())

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *(t for t in self.tags if t != self.name))

    def full_env(self) -> tuple[str, ...]:
        if any(e.startswith("PATH=") for e in self.env):
            return self.env
        return (f"PATH={DEFAULT_PATH}", *self.env)


_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_HOST = re.compile(r"(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)(?::[0-9]+)?")


def normalize_name(name: str) -> str:
    """`redis:7` -> `docker.io/library/redis:7`; `me/app` -> `docker.io/me/app:latest`;
    `localhost:5000/app:1` stays. Raises ValueError on a malformed reference."""
    if not name or "@" in name or name != name.strip():
        raise ValueError(f"bad image name {name!r}: expected [HOST/]PATH[:TAG]")
    path, tag = name, "latest"
    last = path.rsplit("/", 1)[-1]
    if ":" in last:
        path, tag = path.rsplit(":", 1)
    parts = path.split("/")
    host = "docker.io"
    # The first part is a registry host when it looks like one (Docker's rule).
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        host, parts = parts[0], parts[1:]
        if not _HOST.fullmatch(host):
            raise ValueError(f"bad image name {name!r}: bad registry host {host!r}")
    if host == "docker.io" and len(parts) == 1:
        parts = ["library", *parts]
    for part in parts:
        if not _COMPONENT.fullmatch(part):
            raise ValueError(
                f"bad image name {name!r}: path component {part!r} must be lowercase "
                "letters, digits and single separators (. _ -)"
            )
    if not _TAG.fullmatch(tag):
        raise ValueError(f"bad image name {name!r}: bad tag {tag!r}")
    return f"{host}/{'/'.join(parts)}:{tag}"


_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]+(?::[a-z0-9-]+)?(?:=[A-Za-z0-9.+~:-]+)?")


def check_packages(packages: Iterable[str]) -> tuple[str, ...]:
    """Debian package names (optionally `name:arch` / `name=version`), deduplicated."""
    out: list[str] = []
    for package in packages:
        if not _PACKAGE.fullmatch(package):
            raise ValueError(f"bad Debian package name {package!r}")
        if package not in out:
            out.append(package)
    return tuple(out)


def _slug(name: str) -> str:
    short = name.removeprefix("docker.io/").removeprefix("library/")
    return re.sub(r"[^A-Za-z0-9.]+", "-", short).strip("-")


# ---------------------------------------------------------------------------
# The provided images


def _provided() -> dict[str, Recipe]:
    lib = "docker.io/library"
    py_path = f"PATH=/opt/kubeling/bin:{DEFAULT_PATH}"
    return {
        "busybox": Recipe(name=BUSYBOX_IMAGE, source="busybox", cmd=("sh",)),
        "debian:bookworm-slim": Recipe(
            name=f"{lib}/debian:bookworm-slim",
            tags=(f"{lib}/debian:12-slim",),
            variant="minbase",  # essential + apt, like Debian's own slim image
            cmd=("bash",),
        ),
        "python:3.11-slim": Recipe(
            name=f"{lib}/python:3.11-slim",
            tags=(f"{lib}/python:3.11-slim-bookworm",),
            variant="minbase",
            packages=("python3", "python-is-python3", "ca-certificates", "netbase"),
            env=("LANG=C.UTF-8",),
            cmd=("python3",),
        ),
        "redis:7": Recipe(
            name=f"{lib}/redis:7",
            tags=(f"{lib}/redis:7.0",),
            packages=("redis-server",),
            # Without a config file redis listens on every address, in the
            # foreground, logging to stdout; protected mode off lets pods connect.
            cmd=("redis-server", "--protected-mode", "no"),
            hooks=("mkdir -p /data && chown redis:redis /data && chmod 0755 /data",),
            user="redis",
            workdir="/data",
            exposed_ports=("6379/tcp",),
        ),
        "postgres:15": Recipe(
            name=f"{lib}/postgres:15",
            packages=("postgresql-15",),
            files=ASSETS / "postgres" / "rootfs",
            # The package's postinst makes a "main" cluster; ours is made at first
            # start, in PGDATA, by the entrypoint.
            hooks=(
                "rm -rf /var/lib/postgresql/15/main /etc/postgresql/15/main /var/log/postgresql/*",
                "mkdir -p /var/lib/postgresql/data && chown postgres:postgres"
                " /var/lib/postgresql/data && chmod 0700 /var/lib/postgresql/data",
                "chmod 0755 /usr/local/bin/docker-entrypoint.sh",
            ),
            env=(
                f"PATH=/usr/lib/postgresql/15/bin:{DEFAULT_PATH}",
                "PGDATA=/var/lib/postgresql/data",
                "LANG=C.UTF-8",
            ),
            entrypoint=("docker-entrypoint.sh",),
            cmd=("postgres",),
            exposed_ports=("5432/tcp",),
        ),
        "kubeling": Recipe(
            name=KUBELING_IMAGE,
            packages=(
                "python3",
                "python3-venv",
                "libnftables1",
                "conntrack",
                "iproute2",
                "ca-certificates",
                "libstdc++6",  # grpcio's manylinux wheel links it
            ),
            python_project=True,
            env=(py_path, "LANG=C.UTF-8", "PYTHONUNBUFFERED=1"),
            cmd=("kubeling", "--help"),
        ),
    }


PROVIDED: dict[str, Recipe] = _provided()


def provided_recipe(name: str) -> Recipe | None:
    """The provided recipe for a short key (`redis:7`) or any of its full names."""
    if name in PROVIDED:
        return PROVIDED[name]
    try:
        full = normalize_name(name)
    except ValueError:
        return None
    for recipe in PROVIDED.values():
        if full in recipe.names:
            return recipe
    return None


# ---------------------------------------------------------------------------
# Cache key


def _hash_tree(h: hashlib._Hash, root: Path, *, skip: Callable[[Path], bool] | None = None) -> None:
    """Feed paths, modes and bytes (or link targets) of a tree, in sorted order."""
    for path in sorted(root.rglob("*")):
        if skip is not None and skip(path):
            continue
        rel = path.relative_to(root).as_posix()
        st = path.lstat()
        h.update(f"{rel}\0{st.st_mode:o}\0".encode())
        if path.is_symlink():
            h.update(os.readlink(path).encode())
        elif path.is_file():
            with path.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        h.update(b"\0")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_closure(dist: str = "kubeling") -> list[str]:
    """Normalized names of the installed distribution's runtime dependencies, all the
    way down (no extras), from importlib.metadata."""
    from packaging.requirements import Requirement

    seen: set[str] = set()
    todo = [dist]
    while todo:
        name = todo.pop()
        for line in importlib.metadata.distribution(name).requires or []:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            key = _norm(req.name)
            if key not in seen:
                seen.add(key)
                todo.append(req.name)
    return sorted(seen)


def lock_entries(lock: Path) -> dict[str, str]:
    """requirements.lock -> normalized name: its requirement block (pin and hashes),
    comments dropped."""
    entries: dict[str, str] = {}
    current = ""
    for raw in lock.read_text().splitlines():
        line = raw.rstrip()
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not raw[0].isspace():
            current = _norm(re.split(r"[=<>!~\[; ]", line, maxsplit=1)[0])
            entries[current] = line
        elif current:
            entries[current] += "\n" + line
    return entries


def runtime_requirements(lock: Path) -> str:
    """The lock's blocks for kubeling's runtime closure, as a --require-hashes file."""
    entries = lock_entries(lock)
    closure = runtime_closure()
    missing = [n for n in closure if n not in entries]
    if missing:
        raise ImageBuildError(f"{lock}: no pinned entry for {', '.join(missing)}")
    return "\n".join(entries[n] for n in closure) + "\n"


def project_digest() -> str:
    """What the project wheel holds, from its inputs: the kubeling package's files, the
    .proto sources its generated code comes from, the build files and the locked
    runtime requirements. Hashing inputs instead of a freshly built wheel keeps a
    cached build instant (zip timestamps would vary anyway).

    In a checkout the generated code (kubeling/v1, kubeling/etcdpb) is left out for
    its protos/: building the wheel regenerates it, so hashing it would key the
    image on whether `make proto` ran since the last .proto edit."""
    import kubeling

    h = hashlib.sha256()
    package = Path(kubeling.__file__).resolve().parent
    protos = PROJECT_ROOT / "protos"
    generated = {package / "v1", package / "etcdpb"} if protos.is_dir() else set()

    def skip(path: Path) -> bool:
        return (
            path.is_dir()
            or "__pycache__" in path.parts
            or path.suffix == ".pyc"
            or any(g in path.parents for g in generated)
        )

    _hash_tree(h, package, skip=skip)
    if protos.is_dir():
        h.update(b"\0protos\0")
        _hash_tree(h, protos, skip=lambda p: p.is_dir())
    for name in ("pyproject.toml", "setup.py"):
        path = PROJECT_ROOT / name
        if path.is_file():
            h.update(name.encode() + b"\0" + path.read_bytes())
    lock = PROJECT_ROOT / "requirements.lock"
    if lock.is_file():
        h.update(runtime_requirements(lock).encode())
    return h.hexdigest()


def recipe_config(recipe: Recipe) -> dict[str, object]:
    """Every recipe field that changes the image, in a canonical form."""
    return {
        "builder": BUILDER_VERSION,
        "source": recipe.source,
        "suite": recipe.suite,
        "mirror": recipe.mirror,
        "variant": recipe.variant,
        "packages": sorted(set(recipe.packages)),
        "names": list(recipe.names),
        "cmd": list(recipe.cmd),
        "entrypoint": list(recipe.entrypoint),
        "env": list(recipe.full_env()),
        "user": recipe.user,
        "workdir": recipe.workdir,
        "ports": sorted(recipe.exposed_ports),
        "hooks": list(recipe.hooks),
        "labels": sorted(recipe.labels),
        "python_project": recipe.python_project,
        "epoch": SOURCE_DATE_EPOCH,
        "excludes": list(DPKG_EXCLUDES),
    }


def _busybox_version() -> str:
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Status} ${Version}", "busybox-static"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
    except FileNotFoundError:
        return "download"
    return out.split()[-1] if "install ok installed" in out else "download"


def cache_key(recipe: Recipe) -> str:
    h = hashlib.sha256(json.dumps(recipe_config(recipe), sort_keys=True).encode())
    if recipe.files is not None:
        h.update(b"\0files\0")
        _hash_tree(h, recipe.files)
    if recipe.python_project:
        h.update(b"\0project\0" + project_digest().encode())
    if recipe.source == "busybox":
        h.update(b"\0busybox\0" + _busybox_version().encode())
    return h.hexdigest()


def archive_path(recipe: Recipe, cache: Path) -> Path:
    return cache / f"{_slug(recipe.name)}-{cache_key(recipe)[:12]}.tar"


def provided_archives(cache: Path) -> dict[str, Path]:
    """The provided images already built for their current cache key (never builds)."""
    found: dict[str, Path] = {}
    for key, recipe in PROVIDED.items():
        path = archive_path(recipe, cache)
        if path.is_file():
            found[key] = path
    return found


# ---------------------------------------------------------------------------
# mmdebstrap


def _in_chroot(command: str, env: Mapping[str, str] | None = None) -> str:
    """A customize hook running `command` with /bin/sh inside the new root ($1)."""
    prefix = ""
    if env:
        prefix = "env " + " ".join(shlex.quote(f"{k}={v}") for k, v in env.items()) + " "
    return f'chroot "$1" {prefix}/bin/sh -c {shlex.quote(command)}'


def mmdebstrap_command(recipe: Recipe, out: Path, *, wheels: Path | None = None) -> list[str]:
    """The mmdebstrap command line that writes the recipe's root file system to `out`.

    For a python_project recipe this is the base stage: a venv at /opt/kubeling
    holding the wheels of `wheels` (the project's runtime dependencies); the project
    itself goes into a layer of its own (`project_layer`)."""
    cmd = ["mmdebstrap", f"--variant={recipe.variant}", "--mode=root", "--format=tar"]
    if recipe.packages:
        cmd.append("--include=" + ",".join(sorted(set(recipe.packages))))
    cmd += [f"--dpkgopt={opt}" for opt in DPKG_EXCLUDES]
    cmd.append('--aptopt=APT::Install-Recommends "false"')
    hooks: list[str] = []
    if recipe.files is not None:
        hooks.append(f"sync-in {shlex.quote(str(recipe.files))} /")
    if recipe.python_project:
        if wheels is None:
            raise ImageBuildError(f"{recipe.name}: no wheels directory for the project")
        pip_env = {"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_CACHE_DIR": "1"}
        hooks += [
            'mkdir -p "$1/tmp/kubeling-wheels"',
            f"sync-in {shlex.quote(str(wheels))} /tmp/kubeling-wheels",
            _in_chroot("python3 -m venv /opt/kubeling"),
            _in_chroot(
                "/opt/kubeling/bin/pip install --quiet --no-index --no-deps"
                " /tmp/kubeling-wheels/*.whl",
                {**pip_env, "SOURCE_DATE_EPOCH": str(SOURCE_DATE_EPOCH)},
            ),
            # Fail the build, not the first pod, when the venv is broken.
            _in_chroot("/opt/kubeling/bin/python -c 'import grpc, nftables; nftables.Nftables()'"),
            'rm -rf "$1/tmp/kubeling-wheels"',
        ]
    hooks += [_in_chroot(h) for h in recipe.hooks]
    hooks.append(CLEANUP_HOOK)
    cmd += [f"--customize-hook={h}" for h in hooks]
    cmd += [recipe.suite, str(out), recipe.mirror]
    return cmd


def run_streaming(cmd: Sequence[str], env: Mapping[str, str], progress: Progress) -> None:
    """Run a command, passing its `I:`/`W:` lines to progress; on failure raise with
    its `E:` lines (or its last lines)."""
    if shutil.which(cmd[0]) is None:
        raise ImageBuildError(
            f"{cmd[0]} is not installed: apt-get install -y {cmd[0]} "
            "(deploy/containerd/install-deps.sh installs it)"
        )
    tail: deque[str] = deque(maxlen=30)
    errors: list[str] = []  # E: lines, should nothing else explain the failure
    with subprocess.Popen(
        list(cmd),
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    ) as proc:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip()
            if not line:
                continue
            tail.append(line)
            if line.startswith("E:"):
                errors.append(line)
            if line.startswith(("I:", "W:")):
                progress(line)
        code = proc.wait()
    if code != 0:
        # The command's own messages (a hook's traceback, apt's "Unable to locate
        # package") are the non-"I:" lines just before mmdebstrap's summary.
        other = [line for line in tail if not line.startswith(("I:", "W:"))]
        detail = "\n".join(other[-15:] or errors or list(tail))
        missing = re.findall(r"Unable to locate package (\S+)", detail)
        if missing:
            detail = f"no such Debian package: {', '.join(missing)}\n{detail}"
        raise ImageBuildError(f"{cmd[0]} failed (exit {code}):\n{detail}")


# ---------------------------------------------------------------------------
# The project's wheels


def project_wheel(dest: Path, progress: Progress) -> Path:
    """The kubeling wheel, built from the checkout into `dest`, with the generated
    protobuf code checked to be inside."""
    if not (PROJECT_ROOT / "setup.py").is_file():
        raise ImageBuildError(f"{PROJECT_ROOT}: not a kubeling source checkout")
    progress("building the kubeling wheel")
    build = dest / ".build"
    pip = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"]
    _run_quiet([*pip, "-w", str(build), str(PROJECT_ROOT)], cwd=PROJECT_ROOT)
    built = sorted(build.glob("kubeling-*.whl"))
    if len(built) != 1:
        raise ImageBuildError(f"pip wheel made {[p.name for p in built]}, expected one")
    with zipfile.ZipFile(built[0]) as wheel:
        members = set(wheel.namelist())
    for needed in ("kubeling/v1/core_pb2.py", "kubeling/etcdpb/__init__.py"):
        if needed not in members:
            raise ImageBuildError(f"{built[0].name} lacks generated {needed}: run make proto")
    dest.mkdir(parents=True, exist_ok=True)
    wheel_path = dest / built[0].name
    shutil.move(str(built[0]), wheel_path)
    shutil.rmtree(build)
    return wheel_path


def dependency_wheels(dest: Path, cache: Path, progress: Progress) -> Path:
    """The runtime dependencies' wheels, downloaded with the lock's hashes checked
    (kept in CACHE/wheels between builds) and copied into `dest`."""
    progress("downloading the runtime dependencies' wheels (hashes checked)")
    requirements_text = runtime_requirements(PROJECT_ROOT / "requirements.lock")
    wheel_cache = cache / "wheels"
    wheel_cache.mkdir(parents=True, exist_ok=True)
    dest.mkdir(parents=True, exist_ok=True)
    requirements = dest / ".requirements.txt"
    requirements.write_text(requirements_text)
    pip = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--require-hashes"]
    _run_quiet([*pip, "--only-binary=:all:", "-r", str(requirements), "-d", str(wheel_cache)])
    requirements.unlink()
    pins = {_norm(n): v for n, v in _pins(requirements_text)}
    for wheel_path in sorted(wheel_cache.glob("*.whl")):
        name, version = wheel_path.name.split("-")[:2]
        if pins.get(_norm(name)) == version:
            shutil.copy2(wheel_path, dest / wheel_path.name)
    return dest


def _pins(requirements: str) -> list[tuple[str, str]]:
    return re.findall(r"^([A-Za-z0-9_.-]+)==([^\s;\\]+)", requirements, flags=re.M)


def _run_quiet(cmd: Sequence[str], cwd: Path | None = None) -> None:
    try:
        subprocess.run(list(cmd), check=True, capture_output=True, text=True, cwd=cwd, timeout=900)
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or exc.stdout or "").strip().splitlines()[-15:]
        raise ImageBuildError(f"{' '.join(cmd[:4])} failed:\n" + "\n".join(detail)) from exc


# ---------------------------------------------------------------------------
# Building


def check_recipe(recipe: Recipe) -> None:
    """Reject what mmdebstrap would fail on late (or not at all)."""
    for name in recipe.names:
        if normalize_name(name) != name:
            raise ValueError(f"image name {name!r} is not a full reference")
    check_packages(recipe.packages)
    if recipe.files is not None and not recipe.files.is_dir():
        raise ValueError(f"--file {recipe.files}: not a directory")
    for env in recipe.env:
        if "=" not in env or not env.split("=", 1)[0]:
            raise ValueError(f"environment variable {env!r}: expected KEY=VALUE")


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def build_image(
    recipe: Recipe,
    cache: Path,
    progress: Progress,
    *,
    runner: Runner = run_streaming,
) -> Path:
    """Build the recipe's OCI archive into the cache (or find it there); its path."""
    try:
        check_recipe(recipe)
    except ValueError as exc:
        raise ImageBuildError(str(exc)) from None
    archive = archive_path(recipe, cache)
    if archive.is_file():
        progress(f"{recipe.name}: cached {archive}")
        return archive
    cache.mkdir(parents=True, exist_ok=True)
    with _cache_lock(cache, progress):
        # Another builder may have made it while this one waited.
        if archive.is_file():
            progress(f"{recipe.name}: cached {archive}")
            return archive
        return _build_locked(recipe, cache, archive, progress, runner)


@contextlib.contextmanager
def _cache_lock(cache: Path, progress: Progress) -> Iterator[None]:
    """One build at a time per cache (`make images`, a lab's `up`, a test run may
    overlap): they share the stage and wheel directories, and two mmdebstraps on two
    cores would only slow each other down."""
    with (cache / ".lock").open("a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress(f"waiting for another image build in {cache}")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _build_locked(
    recipe: Recipe, cache: Path, archive: Path, progress: Progress, runner: Runner
) -> Path:
    start = time.monotonic()
    progress(f"{recipe.name}: building ({recipe.source}, {len(recipe.packages)} packages)")
    raw_size = 0
    # The work directory lives in the cache so the final rename stays on one file system.
    with tempfile.TemporaryDirectory(prefix=".build-", dir=cache) as tmp:
        work = Path(tmp)
        work.chmod(0o755)  # apt downloads as user _apt, which must reach its lists
        if recipe.source == "busybox":
            spec = _busybox_spec(work)
        elif recipe.python_project:
            base = python_base_layer(recipe, cache, work, progress, runner)
            upper = project_layer(base, work, progress)
            layers = [base, upper]
        else:
            layers = [_mmdebstrap_layer(recipe, None, work, progress, runner)]
        if recipe.source != "busybox":
            raw_size = sum(layer.raw_size for layer in layers)
            spec = ImageSpec(
                names=list(recipe.names),
                entries=(),
                layers=layers,
                cmd=list(recipe.cmd),
                entrypoint=list(recipe.entrypoint),
                env=list(recipe.full_env()),
                user=recipe.user,
                workdir=recipe.workdir,
                exposed_ports=list(recipe.exposed_ports),
                labels=dict(recipe.labels),
                created_by=f"kubeling image build: mmdebstrap {recipe.variant} {recipe.suite}"
                + (f" +{','.join(sorted(recipe.packages))}" if recipe.packages else ""),
                mtime=SOURCE_DATE_EPOCH,
            )
        write_oci_archive(archive, spec)
    for old in cache.glob(f"{_slug(recipe.name)}-*.tar"):
        # Only this image's older keys: "<slug>-<12 hex>.tar".
        if old != archive and re.fullmatch(
            re.escape(_slug(recipe.name)) + r"-[0-9a-f]{12}\.tar", old.name
        ):
            old.unlink(missing_ok=True)
    size = archive.stat().st_size
    sizes = _size(size) + (f" compressed, {_size(raw_size)} uncompressed" if raw_size else "")
    progress(f"{recipe.name}: built {archive} ({sizes}) in {time.monotonic() - start:.1f} s")
    return archive


def _mmdebstrap_layer(
    recipe: Recipe, wheels: Path | None, work: Path, progress: Progress, runner: Runner
) -> LayerFile:
    """mmdebstrap's root file system for the recipe as a gzip layer in `work`."""
    rootfs = work / "rootfs.tar"
    env = {"SOURCE_DATE_EPOCH": str(SOURCE_DATE_EPOCH), "TMPDIR": str(work)}
    runner(mmdebstrap_command(recipe, rootfs, wheels=wheels), env, progress)
    if not rootfs.is_file():
        raise ImageBuildError(f"mmdebstrap wrote no {rootfs.name}")
    progress(f"{recipe.name}: writing the layer ({_size(rootfs.stat().st_size)} rootfs)")
    layer = layer_from_rootfs_tar(rootfs, work / "rootfs.tar.gz", mtime=SOURCE_DATE_EPOCH)
    rootfs.unlink()
    return layer


# ---------------------------------------------------------------------------
# The kubeling image: a cached base layer (Debian packages and a venv with the locked
# dependencies) and a small layer with the project, so a change to the project's
# source rebuilds seconds' worth, not the whole root file system.


def _base_key(recipe: Recipe) -> str:
    h = hashlib.sha256(json.dumps(recipe_config(recipe), sort_keys=True).encode())
    h.update(b"\0base\0" + runtime_requirements(PROJECT_ROOT / "requirements.lock").encode())
    if recipe.files is not None:
        _hash_tree(h, recipe.files)
    return h.hexdigest()


def python_base_layer(
    recipe: Recipe, cache: Path, work: Path, progress: Progress, runner: Runner
) -> LayerFile:
    """The base layer from CACHE/stages, else built with mmdebstrap and kept there."""
    stages = cache / "stages"
    stem = f"{_slug(recipe.name)}-base-"
    blob, meta = (stages / f"{stem}{_base_key(recipe)[:12]}{ext}" for ext in (".tar.gz", ".json"))
    if blob.is_file() and meta.is_file():
        fields = json.loads(meta.read_text())
        progress(f"{recipe.name}: base layer cached {blob}")
        return LayerFile(path=blob, **fields)
    wheels = dependency_wheels(work / "wheels", cache, progress)
    layer = _mmdebstrap_layer(recipe, wheels, work, progress, runner)
    shutil.rmtree(wheels)
    stages.mkdir(parents=True, exist_ok=True)
    for old in stages.glob(f"{stem}*"):
        old.unlink(missing_ok=True)
    fields = {k: getattr(layer, k) for k in ("digest", "size", "diff_id", "raw_size")}
    tmp = meta.with_name(meta.name + ".tmp")
    tmp.write_text(json.dumps(fields))
    # The blob first, the description last: a description always has its blob.
    layer.path.replace(blob)
    tmp.replace(meta)
    return LayerFile(path=blob, **fields)


def _in_namespaces(root: Path, argv: Sequence[str], env: Mapping[str, str]) -> None:
    """Run argv chrooted into `root`, with /proc and /dev mounted in a private mount
    namespace (they vanish with it) and no network."""
    r = shlex.quote(str(root))
    env_args = " ".join(shlex.quote(f"{k}={v}") for k, v in env.items())
    chroot = shutil.which("chroot") or "/usr/sbin/chroot"  # env -i drops the caller's PATH
    script = (
        f"mount -t proc proc {r}/proc && mount --rbind /dev {r}/dev"
        f" && exec env -i {env_args} {chroot} {r} {shlex.join(argv)}"
    )
    _run_quiet(
        ["unshare", "--mount", "--pid", "--net", "--fork", "--kill-child", "sh", "-c", script]
    )


def _tree_state(root: Path) -> dict[str, tuple[int, int, int]]:
    """Relative path -> (inode, ctime, size), for finding what an install changed."""
    state: dict[str, tuple[int, int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            state[os.path.relpath(path, root)] = (st.st_ino, st.st_ctime_ns, st.st_size)
    return state


def project_layer(base: LayerFile, work: Path, progress: Progress) -> LayerFile:
    """The project installed over the base layer: the base is unpacked, the project
    wheel is pip-installed into /opt/kubeling inside it (chroot), and what changed
    becomes the layer (new and changed paths; whiteouts for removed ones)."""
    wheel = project_wheel(work / "project", progress)
    root = work / "root"
    root.mkdir()
    progress("installing the project over the base layer")
    _run_quiet(["tar", "-xzf", str(base.path), "-C", str(root), "--numeric-owner"])
    before = _tree_state(root)
    inside = Path("/tmp") / wheel.name
    shutil.copyfile(wheel, root / inside.relative_to("/"))
    env = {
        "PATH": f"/opt/kubeling/bin:{DEFAULT_PATH}",
        "SOURCE_DATE_EPOCH": str(SOURCE_DATE_EPOCH),  # hash-checked .pyc files
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_CACHE_DIR": "1",
    }
    pip = ["/opt/kubeling/bin/pip", "install", "--quiet", "--no-index", "--no-deps"]
    _in_namespaces(root, [*pip, str(inside)], env)
    # Fail the build, not the first pod, when the image cannot run the project.
    check = "import kubeling.v1.core_pb2, kubeling.cli.main, grpc, nftables; nftables.Nftables()"
    _in_namespaces(root, ["/opt/kubeling/bin/python", "-c", check], env)
    (root / inside.relative_to("/")).unlink()
    upper = work / "upper.tar"
    count = write_changes_tar(root, before, upper)
    shutil.rmtree(root)
    layer = layer_from_rootfs_tar(upper, work / "upper.tar.gz", mtime=SOURCE_DATE_EPOCH)
    upper.unlink()
    progress(f"project layer: {count} paths, {_size(layer.size)}")
    return layer


def write_changes_tar(root: Path, before: Mapping[str, tuple[int, int, int]], out: Path) -> int:
    """A tar of what changed under `root` since `before` (its _tree_state): new and
    changed paths (a changed directory's entry too), and an OCI whiteout
    (`.wh.NAME`) per removed path. Returns the number of entries."""
    after = _tree_state(root)
    changed = sorted(p for p, st in after.items() if before.get(p) != st)
    removed = sorted(p for p in before if p not in after)
    # Under a removed directory only the directory's whiteout is needed.
    removed = [p for p in removed if not any(p.startswith(q + "/") for q in removed)]
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for rel in changed:
            tar.add(root / rel, arcname=rel, recursive=False)
        for rel in removed:
            parent, _, name = rel.rpartition("/")
            info = tarfile.TarInfo(f"{parent}/.wh.{name}" if parent else f".wh.{name}")
            tar.addfile(info, io.BytesIO(b""))
    return len(changed) + len(removed)


def _busybox_spec(work: Path) -> ImageSpec:
    try:
        busybox = busybox_installed()
    except ImageBuildError:
        busybox = busybox_from_deb(download_busybox_deb(work), work)
    return busybox_spec(busybox)


def build_provided(
    names: Iterable[str] | None, cache: Path, progress: Progress, *, runner: Runner = run_streaming
) -> dict[str, Path]:
    """Build (or find cached) the provided images `names` (keys of PROVIDED or any of
    their full names); None means all of them."""
    wanted: list[tuple[str, Recipe]] = []
    for name in PROVIDED if names is None else names:
        recipe = provided_recipe(name)
        if recipe is None:
            raise ImageBuildError(f"{name}: not a provided image (provided: {', '.join(PROVIDED)})")
        key = next(k for k, r in PROVIDED.items() if r is recipe)
        if all(k != key for k, _ in wanted):
            wanted.append((key, recipe))
    return {key: build_image(recipe, cache, progress, runner=runner) for key, recipe in wanted}
