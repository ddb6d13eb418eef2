"""kubeling.node.imagebuild without the network: cache keys, the rootfs tar -> layer
conversion, the mmdebstrap command line, a build through a fake mmdebstrap (runner
injected), and `kubeling image build`'s errors."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import os
import stat
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from kubeling.cli.main import main as cli_main
from kubeling.node import imagebuild
from kubeling.node.imagebuild import (
    PROVIDED,
    Recipe,
    archive_path,
    build_image,
    cache_key,
    mmdebstrap_command,
    normalize_name,
    provided_archives,
)
from kubeling.node.images import ImageBuildError, layer_from_rootfs_tar, read_archive_names

REDIS = Recipe(name="docker.io/library/redis:7", packages=("redis-server", "procps"))


# ---------------------------------------------------------------------------
# Cache key


def test_cache_key_ignores_package_order_and_duplicates() -> None:
    swapped = dataclasses.replace(REDIS, packages=("procps", "redis-server", "procps"))
    assert cache_key(swapped) == cache_key(REDIS)


@pytest.mark.parametrize(
    "change",
    [
        {"packages": ("redis-server",)},
        {"cmd": ("redis-server",)},
        {"entrypoint": ("/bin/sh",)},
        {"env": ("A=1",)},
        {"user": "redis"},
        {"workdir": "/data"},
        {"exposed_ports": ("6379/tcp",)},
        {"variant": "minbase"},
        {"tags": ("docker.io/library/redis:7.0",)},
        {"hooks": ("true",)},
        {"mirror": "http://example.invalid/debian"},
        {"suite": "trixie"},
    ],
)
def test_cache_key_changes_with_config(change: dict[str, object]) -> None:
    assert cache_key(dataclasses.replace(REDIS, **change)) != cache_key(REDIS)  # type: ignore[arg-type]


def test_cache_key_changes_with_builder_version(monkeypatch: pytest.MonkeyPatch) -> None:
    before = cache_key(REDIS)
    monkeypatch.setattr(imagebuild, "BUILDER_VERSION", "test")
    assert cache_key(REDIS) != before


def test_cache_key_follows_the_files_directory(tmp_path: Path) -> None:
    files = tmp_path / "files"
    (files / "etc").mkdir(parents=True)
    conf = files / "etc" / "app.conf"
    conf.write_text("a = 1\n")
    conf.chmod(0o644)
    recipe = dataclasses.replace(REDIS, files=files)
    first = cache_key(recipe)
    assert first != cache_key(REDIS)
    assert cache_key(recipe) == first  # stable

    conf.write_text("a = 2\n")
    second = cache_key(recipe)
    assert second != first
    conf.chmod(0o600)
    third = cache_key(recipe)
    assert third != second
    (files / "etc" / "other").write_text("")
    assert cache_key(recipe) != third
    (files / "etc" / "other").unlink()
    assert cache_key(recipe) == third


def test_the_kubeling_image_key_covers_the_project(monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = PROVIDED["kubeling"]
    before = cache_key(recipe)
    monkeypatch.setattr(imagebuild, "project_digest", lambda: "changed")
    assert cache_key(recipe) != before
    assert cache_key(REDIS) == cache_key(REDIS)


def test_runtime_requirements_are_the_locked_runtime_closure() -> None:
    text = imagebuild.runtime_requirements(imagebuild.PROJECT_ROOT / "requirements.lock")
    pins = dict(imagebuild._pins(text))
    assert "grpcio" in pins and "pip-nftables" in pins and "protobuf" in pins
    # Dependencies of dependencies are in; development tools are not.
    assert "multidict" in pins
    for dev in ("pytest", "mypy", "ruff", "grpcio-tools", "hypothesis"):
        assert dev not in pins
    # Every pin carries its hashes (pip --require-hashes refuses otherwise).
    for name in pins:
        block = text[text.index(f"{name}==") :].split("\n", 2)
        assert "--hash=sha256:" in block[1], name


# ---------------------------------------------------------------------------
# Names


@pytest.mark.parametrize(
    ("name", "full"),
    [
        ("redis:7", "docker.io/library/redis:7"),
        ("redis", "docker.io/library/redis:latest"),
        ("me/app:1.0", "docker.io/me/app:1.0"),
        ("localhost:5000/app:1", "localhost:5000/app:1"),
        ("registry.example/a/b:v1", "registry.example/a/b:v1"),
        ("docker.io/library/redis:7", "docker.io/library/redis:7"),
    ],
)
def test_normalize_name(name: str, full: str) -> None:
    assert normalize_name(name) == full


@pytest.mark.parametrize("name", ["", "Redis:7", "redis:", "redis:bad tag", "a//b", "x@sha256:00"])
def test_normalize_name_rejects(name: str) -> None:
    with pytest.raises(ValueError):
        normalize_name(name)


# ---------------------------------------------------------------------------
# rootfs tar -> layer


def _add(
    tar: tarfile.TarFile,
    name: str,
    kind: bytes,
    *,
    data: bytes = b"",
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
    link: str = "",
    mtime: int = 2_000_000_000,
) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.uid, info.gid, info.mtime = kind, mode, uid, gid, mtime
    info.uname, info.gname = "someone", "somegroup"
    info.linkname = link
    if kind == tarfile.REGTYPE:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    else:
        if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
            info.devmajor, info.devminor = 1, 3
        tar.addfile(info)


def _synthetic_rootfs(path: Path) -> None:
    """The shape of mmdebstrap's tar: "./" names, a hard link that sorts before its
    target, device nodes, a symlink, files owned by a system user."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, "./", tarfile.DIRTYPE, mode=0o755)
        _add(tar, "./usr/", tarfile.DIRTYPE, mode=0o755)
        _add(tar, "./usr/bin/", tarfile.DIRTYPE, mode=0o755)
        _add(tar, "./usr/bin/perl5.36", tarfile.REGTYPE, data=b"#!perl\n", mode=0o755)
        # "perl" < "perl5.36": after sorting the link would come before its data.
        _add(tar, "./usr/bin/perl", tarfile.LNKTYPE, link="./usr/bin/perl5.36")
        _add(tar, "./bin", tarfile.SYMTYPE, link="usr/bin", mode=0o777)
        _add(tar, "./dev/", tarfile.DIRTYPE, mode=0o755)
        _add(tar, "./dev/null", tarfile.CHRTYPE, mode=0o666)
        _add(tar, "./dev/sda", tarfile.BLKTYPE, mode=0o660)
        _add(tar, "./dev/fd", tarfile.SYMTYPE, link="/proc/self/fd")
        _add(tar, "./data/", tarfile.DIRTYPE, mode=0o750, uid=100, gid=101)
        _add(tar, "./data/secret", tarfile.REGTYPE, data=b"x", mode=0o600, uid=100, gid=101)
        _add(tar, "./tmp/", tarfile.DIRTYPE, mode=0o1777)
        _add(tar, "./old", tarfile.REGTYPE, data=b"old", mtime=1000)


def test_layer_from_rootfs_tar(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs.tar"
    _synthetic_rootfs(rootfs)
    layer = layer_from_rootfs_tar(rootfs, tmp_path / "layer.tar.gz", mtime=1_700_000_000)

    blob = layer.path.read_bytes()
    assert layer.digest == "sha256:" + hashlib.sha256(blob).hexdigest()
    assert layer.size == len(blob)
    raw = gzip.decompress(blob)
    assert layer.diff_id == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert layer.raw_size == len(raw)

    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        assert names == sorted(names)
        assert names == [
            "bin",
            "data",
            "data/secret",
            "dev",
            "old",
            "tmp",
            "usr",
            "usr/bin",
            "usr/bin/perl",
            "usr/bin/perl5.36",
        ]
        by = {m.name: m for m in members}
        # The first of the hard-linked pair in sorted order carries the data now.
        assert by["usr/bin/perl"].isreg() and by["usr/bin/perl"].mode == 0o755
        assert tar.extractfile("usr/bin/perl").read() == b"#!perl\n"  # type: ignore[union-attr]
        assert by["usr/bin/perl5.36"].islnk()
        assert by["usr/bin/perl5.36"].linkname == "usr/bin/perl"
        assert by["bin"].issym() and by["bin"].linkname == "usr/bin"
        assert by["dev"].isdir()
        assert (by["data"].uid, by["data"].gid, by["data"].mode) == (100, 101, 0o750)
        assert (by["data/secret"].uid, by["data/secret"].mode) == (100, 0o600)
        assert by["tmp"].mode == 0o1777
        assert all(m.uname == "" and m.gname == "" for m in members)
        # Clamped to the epoch; older files keep their time.
        assert by["usr/bin/perl"].mtime == 1_700_000_000
        assert by["old"].mtime == 1000

    # Unpacks with the hard link resolved.
    out = tmp_path / "out"
    with tarfile.open(layer.path) as tar:
        tar.extractall(out, filter="tar")
    assert (out / "usr/bin/perl5.36").read_bytes() == b"#!perl\n"
    assert os.stat(out / "usr/bin/perl5.36").st_ino == os.stat(out / "usr/bin/perl").st_ino
    assert stat.S_IMODE(os.stat(out / "data/secret").st_mode) == 0o600

    # Deterministic: the same input gives the same digests.
    again = layer_from_rootfs_tar(rootfs, tmp_path / "again.tar.gz", mtime=1_700_000_000)
    assert (again.digest, again.diff_id) == (layer.digest, layer.diff_id)


# ---------------------------------------------------------------------------
# The mmdebstrap command line


def test_mmdebstrap_command_for_a_recipe(tmp_path: Path) -> None:
    files = tmp_path / "files"
    files.mkdir()
    recipe = dataclasses.replace(REDIS, files=files, hooks=("mkdir -p /data",), variant="minbase")
    cmd = mmdebstrap_command(recipe, tmp_path / "rootfs.tar")
    assert cmd[0] == "mmdebstrap"
    assert "--variant=minbase" in cmd
    assert "--include=procps,redis-server" in cmd  # sorted
    assert "--dpkgopt=path-exclude=/usr/share/doc/*" in cmd
    assert "--dpkgopt=path-exclude=/usr/share/man/*" in cmd
    assert "--dpkgopt=path-exclude=/usr/share/locale/*" in cmd
    hooks = [c.split("=", 1)[1] for c in cmd if c.startswith("--customize-hook=")]
    assert hooks[0] == f"sync-in {files} /"
    assert hooks[1] == "chroot \"$1\" /bin/sh -c 'mkdir -p /data'"
    assert cmd[-3:] == ["bookworm", str(tmp_path / "rootfs.tar"), "http://deb.debian.org/debian"]


def test_mmdebstrap_command_for_the_kubeling_image(tmp_path: Path) -> None:
    recipe = PROVIDED["kubeling"]
    with pytest.raises(ImageBuildError):
        mmdebstrap_command(recipe, tmp_path / "r.tar")  # the wheels are required
    cmd = mmdebstrap_command(recipe, tmp_path / "r.tar", wheels=tmp_path / "wheels")
    include = next(c for c in cmd if c.startswith("--include="))
    for package in ("python3", "python3-venv", "libnftables1", "conntrack", "iproute2"):
        assert package in include.split("=", 1)[1].split(",")
    text = "\n".join(cmd)
    assert f"sync-in {tmp_path / 'wheels'} /tmp/kubeling-wheels" in text
    assert "python3 -m venv /opt/kubeling" in text
    assert "pip install --quiet --no-index --no-deps" in text
    assert "import grpc, nftables; nftables.Nftables()" in text  # the base stage
    assert "kubeling-0" not in text  # the project goes into a layer of its own


def test_provided_images_have_the_expected_names() -> None:
    assert list(PROVIDED) == [
        "busybox",
        "debian:bookworm-slim",
        "python:3.11-slim",
        "redis:7",
        "postgres:15",
        "kubeling",
    ]
    assert PROVIDED["redis:7"].name == "docker.io/library/redis:7"
    assert PROVIDED["postgres:15"].name == "docker.io/library/postgres:15"
    assert PROVIDED["kubeling"].name == imagebuild.KUBELING_IMAGE
    assert imagebuild.KUBELING_IMAGE.startswith("docker.io/kubeling/kubeling:")
    assert PROVIDED["postgres:15"].files is not None
    assert (PROVIDED["postgres:15"].files / "usr/local/bin/docker-entrypoint.sh").is_file()


# ---------------------------------------------------------------------------
# A whole build with a fake mmdebstrap


def _contents(cache: Path) -> list[str]:
    """What a cache directory holds, besides the lock file builds serialize on."""
    return sorted(p.name for p in cache.iterdir() if p.name != ".lock")


def test_builds_in_one_cache_take_turns(tmp_path: Path) -> None:
    """A second build of the same image waits for the first and then finds it cached."""
    import threading

    release = threading.Event()
    started = threading.Event()
    runner = FakeMmdebstrap()

    def slow(cmd: Sequence[str], env: Mapping[str, str], progress: imagebuild.Progress) -> None:
        started.set()
        assert release.wait(10)
        runner(cmd, env, progress)

    first = threading.Thread(
        target=build_image, args=(REDIS, tmp_path, print), kwargs={"runner": slow}
    )
    first.start()
    assert started.wait(10)
    lines: list[str] = []
    second = threading.Thread(
        target=lambda: lines.append(str(build_image(REDIS, tmp_path, lines.append, runner=runner)))
    )
    second.start()
    second.join(0.5)
    assert second.is_alive()  # waiting on the lock
    release.set()
    first.join(10)
    second.join(10)
    assert len(runner.calls) == 1  # built once
    assert any("waiting for another image build" in line for line in lines)
    assert any("cached" in line for line in lines)


class FakeMmdebstrap:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(
        self, cmd: Sequence[str], env: Mapping[str, str], progress: imagebuild.Progress
    ) -> None:
        self.calls.append(list(cmd))
        assert env["SOURCE_DATE_EPOCH"] == str(imagebuild.SOURCE_DATE_EPOCH)
        progress("I: fake mmdebstrap")
        _synthetic_rootfs(Path(cmd[-2]))


def test_build_image_caches_and_replaces_old_archives(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    runner = FakeMmdebstrap()
    lines: list[str] = []
    recipe = dataclasses.replace(REDIS, cmd=("redis-server",), user="redis", workdir="/data")

    archive = build_image(recipe, cache, lines.append, runner=runner)
    assert archive == archive_path(recipe, cache)
    assert archive.name == f"redis-7-{cache_key(recipe)[:12]}.tar"
    assert len(runner.calls) == 1
    assert "I: fake mmdebstrap" in lines
    assert any("built" in line and "MB" in line for line in lines)
    assert list(read_archive_names(archive)) == ["docker.io/library/redis:7"]
    with tarfile.open(archive) as tar:
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
        manifest_digest = index["manifests"][0]["digest"].split(":")[1]
        manifest = json.load(tar.extractfile(f"blobs/sha256/{manifest_digest}"))  # type: ignore[arg-type]
        config = json.load(
            tar.extractfile(f"blobs/sha256/{manifest['config']['digest'].split(':')[1]}")  # type: ignore[arg-type]
        )
    assert config["config"]["Cmd"] == ["redis-server"]
    assert config["config"]["User"] == "redis"
    assert config["config"]["WorkingDir"] == "/data"
    assert [p.name for p in cache.iterdir() if not p.name.startswith(".")] == [archive.name]

    # Nothing changed: no mmdebstrap, "cached".
    lines.clear()
    assert build_image(recipe, cache, lines.append, runner=runner) == archive
    assert len(runner.calls) == 1
    assert any("cached" in line for line in lines)

    # A change builds anew and removes the old archive of the same image only.
    other = cache / "redis-7.0-0123456789ab.tar"
    other.write_bytes(b"")
    changed = dataclasses.replace(recipe, packages=("redis-server",))
    new = build_image(changed, cache, lines.append, runner=runner)
    assert new != archive and new.is_file() and not archive.exists()
    assert other.exists()
    assert len(runner.calls) == 2
    # No work directories left behind.
    assert _contents(cache) == sorted([new.name, other.name])


def test_provided_archives_never_build(tmp_path: Path) -> None:
    assert provided_archives(tmp_path) == {}
    path = archive_path(PROVIDED["redis:7"], tmp_path)
    path.write_bytes(b"")
    stale = tmp_path / "postgres-15-000000000000.tar"
    stale.write_bytes(b"")
    assert provided_archives(tmp_path) == {"redis:7": path}


def test_a_failing_build_leaves_no_archive(tmp_path: Path) -> None:
    def failing(cmd: Sequence[str], env: Mapping[str, str], progress: imagebuild.Progress) -> None:
        raise ImageBuildError("mmdebstrap failed")

    with pytest.raises(ImageBuildError):
        build_image(REDIS, tmp_path, lambda _: None, runner=failing)
    assert _contents(tmp_path) == []


# ---------------------------------------------------------------------------
# `kubeling image build` errors


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli_main(argv)
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["image", "build", "app:1"], "needs --packages"),
        (["image", "build", "App:1", "--packages", "bash"], "bad image name 'App:1'"),
        (["image", "build", "app:1", "--packages", "Bad_Name"], "bad Debian package name"),
        (
            ["image", "build", "app:1", "--packages", "bash", "--file", "/nonexistent/dir"],
            "--file /nonexistent/dir: not a directory",
        ),
        (["image", "build", "app:1", "--packages", "bash", "--env", "NOEQUALS"], "KEY=VALUE"),
        (["image", "build"], "one NAME:TAG"),
        (["image", "build", "--provided", "nginx:1"], "not a provided image"),
    ],
)
def test_cli_build_errors(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _cli([*argv, "--cache", str(tmp_path)], capsys)
    assert code != 0
    assert message in err
    assert list(tmp_path.iterdir()) == []


def test_cli_build_without_mmdebstrap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    code, err = _cli(
        ["image", "build", "app:1", "--packages", "bash", "--cache", str(tmp_path / "c")], capsys
    )
    assert code != 0
    assert "mmdebstrap is not installed: apt-get install -y mmdebstrap" in err


def test_cli_build_surfaces_a_missing_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A stand-in mmdebstrap printing what the real one prints for an unknown package."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "mmdebstrap"
    fake.write_text(
        "#!/bin/sh\n"
        "echo 'I: running apt-get update...' >&2\n"
        "echo 'Reading package lists...'\n"
        "echo 'E: Unable to locate package nosuchpkg' >&2\n"
        "echo 'E: setup failed: E: apt-get --yes install nosuchpkg failed' >&2\n"
        "exit 25\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    code, err = _cli(
        ["image", "build", "app:1", "--packages", "nosuchpkg", "--cache", str(tmp_path / "c")],
        capsys,
    )
    assert code != 0
    assert "I: running apt-get update..." in err  # progress streamed
    assert "no such Debian package: nosuchpkg" in err
    assert "exit 25" in err
    assert _contents(tmp_path / "c") == []


def test_changes_tar_holds_what_an_install_changed(tmp_path: Path) -> None:
    """The kubeling image's project layer: new and changed paths over the base, and
    whiteouts for removed ones."""
    root = tmp_path / "root"
    (root / "opt/venv/bin").mkdir(parents=True)
    (root / "opt/venv/lib").mkdir(parents=True)
    (root / "opt/venv/bin/python").write_text("base")
    (root / "opt/venv/lib/keep.py").write_text("keep")
    (root / "opt/venv/lib/edit.py").write_text("old")
    (root / "opt/old/sub").mkdir(parents=True)
    (root / "opt/old/sub/x").write_text("x")
    before = imagebuild._tree_state(root)

    (root / "opt/venv/lib/pkg").mkdir()
    (root / "opt/venv/lib/pkg/new.py").write_text("new")
    (root / "opt/venv/lib/edit.py").write_text("changed")
    os.symlink("python", root / "opt/venv/bin/python3")
    (root / "opt/old/sub/x").unlink()
    (root / "opt/old/sub").rmdir()
    (root / "opt/old").rmdir()

    out = tmp_path / "changes.tar"
    count = imagebuild.write_changes_tar(root, before, out)
    with tarfile.open(out) as tar:
        names = tar.getnames()
        assert sorted(names) == sorted(
            [
                "opt",  # a child was removed: its entry changed
                "opt/.wh.old",  # only the removed top directory gets a whiteout
                "opt/venv/bin",
                "opt/venv/bin/python3",
                "opt/venv/lib",
                "opt/venv/lib/edit.py",
                "opt/venv/lib/pkg",
                "opt/venv/lib/pkg/new.py",
            ]
        )
        assert tar.getmember("opt/venv/bin/python3").issym()
        assert tar.extractfile("opt/venv/lib/edit.py").read() == b"changed"  # type: ignore[union-attr]
    assert count == len(names)


def test_project_digest_follows_protos_not_generated_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Building the wheel regenerates kubeling/v1 from protos/: the key must not
    depend on whether that happened yet, and must follow the .proto sources."""
    import kubeling

    package = tmp_path / "services" / "kubeling"
    (package / "v1").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "v1" / "core_pb2.py").write_text("generated 1")
    (tmp_path / "protos").mkdir()
    (tmp_path / "protos" / "core.proto").write_text("message A {}")
    monkeypatch.setattr(kubeling, "__file__", str(package / "__init__.py"))
    monkeypatch.setattr(imagebuild, "PROJECT_ROOT", tmp_path)

    first = imagebuild.project_digest()
    (package / "v1" / "core_pb2.py").write_text("generated 2")
    assert imagebuild.project_digest() == first
    (tmp_path / "protos" / "core.proto").write_text("message B {}")
    second = imagebuild.project_digest()
    assert second != first
    (package / "__init__.py").write_text("# changed")
    assert imagebuild.project_digest() != second
