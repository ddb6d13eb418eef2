"""The images kubeling provides, as `make images` built them into the image cache.

Building needs deb.debian.org, so it belongs to `make images`, not here: each test
takes the archive already in the cache for the image's current key and skips when it
is missing (under KUBELING_REQUIRE_REAL=1 the skip is a failure, see conftest.py).

Checks: the archive is an OCI layout whose names and config are the recipe's; its
layers unpack; real commands run from it (`chroot` into the unpacked layers, inside
`unshare --mount --pid --net --fork`, so /proc and /dev mounts vanish with the
namespaces and nothing can reach a network); the postgres entrypoint initializes a
database and accepts a password login; containerd imports every archive.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kubeling.cli.main import main as cli_main
from kubeling.node.imagebuild import KUBELING_IMAGE, PROVIDED, image_cache_dir, provided_archives
from kubeling.node.images import MEDIA_LAYER_GZIP, MEDIA_MANIFEST, read_archive_names
from tests.node import test_registry

registry = test_registry.registry  # the fixture: a docker-registry on loopback

pytestmark = pytest.mark.slow

CACHE = image_cache_dir()


def archive_of(key: str) -> Path:
    path = provided_archives(CACHE).get(key)
    if path is None:
        pytest.skip(f"{key} is not built in {CACHE} for its current inputs: run `make images`")
    return path


def _blob(tar: tarfile.TarFile, digest: str) -> bytes:
    member = tar.extractfile("blobs/sha256/" + digest.split(":", 1)[1])
    assert member is not None
    return member.read()


def read_image(archive: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """index.json, the manifest and the config of a one-manifest archive."""
    with tarfile.open(archive) as tar:
        layout = tar.extractfile("oci-layout")
        assert layout is not None
        assert json.load(layout) == {"imageLayoutVersion": "1.0.0"}
        index_file = tar.extractfile("index.json")
        assert index_file is not None
        index = json.load(index_file)
        digests = {m["digest"] for m in index["manifests"]}
        assert len(digests) == 1, "every name points at the same manifest"
        manifest = json.loads(_blob(tar, digests.pop()))
        config = json.loads(_blob(tar, manifest["config"]["digest"]))
    return index, manifest, config


@contextlib.contextmanager
def unpacked(archive: Path) -> Iterator[Path]:
    """The image's root file system in a temporary directory, removed afterwards.
    Layers are unpacked bottom first; the images made here have no whiteouts."""
    tmp = Path(tempfile.mkdtemp(prefix="klimg-", dir="/tmp"))
    try:
        _, manifest, _ = read_image(archive)
        root = tmp / "root"
        root.mkdir()
        for layer in manifest["layers"]:
            with tarfile.open(archive) as tar:
                member = tar.getmember("blobs/sha256/" + layer["digest"].split(":", 1)[1])
                tar.extract(member, tmp, filter="data")
            blob = tmp / member.name
            with tarfile.open(blob) as layer_tar:
                assert not [n for n in layer_tar.getnames() if "/.wh." in f"/{n}"]
            unpack = ["tar", "-xzf", str(blob), "-C", str(root), "--numeric-owner"]
            subprocess.run(unpack, check=True)
            blob.unlink()
        yield root
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_in(root: Path, script: str, env: dict[str, str], timeout: float = 120) -> str:
    """Run a shell script chrooted into `root` in fresh mount, PID and network
    namespaces (only loopback, brought up here); returns stdout+stderr."""
    for tool in ("unshare", "chroot"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    env_args = " ".join(shlex.quote(f"{k}={v}") for k, v in env.items())
    r = shlex.quote(str(root))
    outer = (
        f"mount -t proc proc {r}/proc && mount --rbind /dev {r}/dev"
        f" && mount -t tmpfs -o mode=1777 shm {r}/dev/shm"
        " && ip link set lo up"
        # The host's env and chroot: busybox has no /usr/bin/env.
        f" && exec env -i {env_args} {shutil.which('chroot')} {r}"
        f" /bin/sh -c {shlex.quote(script)}"
    )
    proc = subprocess.run(
        ["unshare", "--mount", "--pid", "--net", "--fork", "--kill-child", "sh", "-c", outer],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    return output


def image_env(config: dict[str, Any]) -> dict[str, str]:
    return dict(e.split("=", 1) for e in config["config"]["Env"])


# ---------------------------------------------------------------------------


@pytest.mark.parametrize("key", list(PROVIDED))
def test_archive_is_an_oci_layout_with_the_recipes_names(key: str) -> None:
    recipe = PROVIDED[key]
    archive = archive_of(key)
    _, manifest, config = read_image(archive)
    names = set(read_archive_names(archive))
    assert recipe.name in names
    if recipe.source == "mmdebstrap":
        assert names == set(recipe.names)
    assert manifest["mediaType"] == MEDIA_MANIFEST
    # kubeling: a cached base layer plus one with the project.
    count = 2 if recipe.python_project else 1
    assert [layer["mediaType"] for layer in manifest["layers"]] == [MEDIA_LAYER_GZIP] * count
    assert len(config["rootfs"]["diff_ids"]) == count
    assert config["os"] == "linux"
    runtime = config["config"]
    assert runtime.get("Cmd", []) == list(recipe.cmd)
    assert runtime.get("Entrypoint", []) == list(recipe.entrypoint)
    assert runtime["Env"] == list(recipe.full_env())
    assert runtime.get("User", "") == recipe.user
    assert runtime.get("WorkingDir", "") == recipe.workdir
    assert sorted(runtime.get("ExposedPorts", {})) == sorted(recipe.exposed_ports)
    # The manifest's size fields are what the blobs hold.
    with tarfile.open(archive) as tar:
        for desc in [manifest["config"], *manifest["layers"]]:
            member = tar.getmember("blobs/sha256/" + desc["digest"].split(":", 1)[1])
            assert member.size == desc["size"]


@pytest.mark.parametrize(
    ("key", "script", "expect"),
    [
        ("busybox", "echo hello from busybox", "hello from busybox"),
        (
            "debian:bookworm-slim",
            "apt-get --version | head -1; ls /usr/share/man 2>&1 | wc -l; ls /usr/share/doc/bash",
            "copyright",
        ),
        ("python:3.11-slim", "python3 -c 'import sys, ssl; print(sys.version)'; python -V", "3.11"),
        ("redis:7", "redis-server --version", "Redis server v=7."),
        ("postgres:15", "postgres --version", "(PostgreSQL) 15."),
        (
            "kubeling",
            "/opt/kubeling/bin/python -c 'import kubeling.v1.core_pb2, nftables, grpc;"
            ' nftables.Nftables(); print("imports ok")\''
            " && command -v kubeling-dns && command -v kubeling-proxy"
            " && conntrack --version && ip -V",
            "imports ok",
        ),
    ],
)
def test_commands_run_from_the_image(key: str, script: str, expect: str) -> None:
    archive = archive_of(key)
    _, _, config = read_image(archive)
    with unpacked(archive) as root:
        output = run_in(root, script, image_env(config))
    assert expect in output
    if key == "kubeling":
        assert "/opt/kubeling/bin/kubeling-dns" in output
        assert "/opt/kubeling/bin/kubeling-proxy" in output
    if key == "debian:bookworm-slim":
        assert "apt " in output


def test_redis_answers_ping_as_the_redis_user() -> None:
    archive = archive_of("redis:7")
    _, _, config = read_image(archive)
    runtime = config["config"]
    command = " ".join(shlex.quote(c) for c in runtime["Cmd"])
    script = (
        f"cd {runtime['WorkingDir']} && setpriv --reuid={runtime['User']} --regid=redis"
        f" --init-groups {command} & pid=$!; "
        "for i in $(seq 100); do redis-cli -h 127.0.0.1 ping 2>/dev/null && break; sleep 0.1; "
        "done; echo redis-uid=$(id -u redis); grep '^Uid:' /proc/$pid/status; "
        "kill $pid; wait $pid"
    )
    with unpacked(archive) as root:
        output = run_in(root, script, image_env(config))
    assert "PONG" in output
    uid = output.split("redis-uid=", 1)[1].split()[0]
    assert f"Uid:\t{uid}\t" in output
    assert "Running mode=standalone, port=6379" in output  # logs go to stdout


def test_postgres_entrypoint_initializes_and_takes_password_logins() -> None:
    archive = archive_of("postgres:15")
    _, _, config = read_image(archive)
    password = "s3cret-" + os.urandom(6).hex()
    env = {
        **image_env(config),
        "POSTGRES_PASSWORD": password,
        "POSTGRES_USER": "app",
        "POSTGRES_DB": "appdb",
    }
    entry = " ".join([*config["config"]["Entrypoint"], *config["config"]["Cmd"]])
    psql = "psql -h 127.0.0.1 -U app -d appdb -Atc 'select current_user, current_database()'"
    script = (
        f"{entry} & pid=$!; "
        "for i in $(seq 150); do pg_isready -q -h 127.0.0.1 && break; sleep 0.2; done; "
        f'PGPASSWORD="$POSTGRES_PASSWORD" {psql}; '
        f"PGPASSWORD=wrong {psql} 2>&1 | sed 's/^/wrong: /'; "
        "grep -c \"^listen_addresses = '\\*'\" $PGDATA/postgresql.conf; "
        "grep '^host all all 0.0.0.0/0' $PGDATA/pg_hba.conf; "
        "stat -c '%U %a' $PGDATA; "
        "kill -INT $pid; wait $pid"
    )
    with unpacked(archive) as root:
        output = run_in(root, script, env, timeout=180)
    assert "app|appdb" in output
    assert "wrong: " in output and "password authentication failed" in output
    assert "host all all 0.0.0.0/0 scram-sha-256" in output
    assert "postgres 700" in output
    assert password not in output  # never echoed


def test_containerd_imports_every_provided_archive(containerd: Any) -> None:
    archives = provided_archives(CACHE)
    if not archives:
        pytest.skip(f"no provided image is built in {CACHE}: run `make images`")
    for key, archive in archives.items():
        ctr = ["ctr", "--address", containerd.address, "-n", "k8s.io", "images"]
        subprocess.run(
            [*ctr, "import", str(archive)],
            check=True,
            capture_output=True,
            timeout=300,
        )
        listing = subprocess.run(
            [*ctr, "ls", "-q"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        for name in read_archive_names(archive):
            assert name in listing, key


def test_push_finds_provided_images_in_the_cache(
    registry: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`kubeling image push redis:7` takes the cached archive (no build), and the
    kubeling image's two layers arrive too."""
    archive_of("redis:7")
    archive_of("kubeling")
    assert cli_main(["image", "push", "redis:7", "--registry", registry]) == 0
    out = capsys.readouterr()
    assert f"pushed {registry}/library/redis:7 " in out.out
    assert "library/redis:7.0" not in out.out  # only the tag asked for
    assert "cached" in out.err and "building" not in out.err
    assert cli_main(["image", "push", "kubeling", "--registry", registry]) == 0
    pushed = capsys.readouterr().out
    assert "(3 blobs uploaded" in pushed  # two layers and the config
    assert cli_main(["image", "list", "--registry", registry]) == 0
    listed = capsys.readouterr().out.split()
    assert f"{registry}/library/redis:7" in listed
    assert f"{registry}/{KUBELING_IMAGE.removeprefix('docker.io/')}" in listed
