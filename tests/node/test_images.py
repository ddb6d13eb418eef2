from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from kubeling.node import images
from kubeling.node.images import (
    ANNOTATION_CONTAINERD_NAME,
    ANNOTATION_REF_NAME,
    BUSYBOX_IMAGE,
    PAUSE_IMAGE,
    Busybox,
    Entry,
    ImageSpec,
    busybox_spec,
    layer_tar,
    pause_spec,
    read_archive_names,
    write_oci_archive,
)

FAKE = Busybox(
    binary=b"\x7fELF fake busybox", applets=("sh", "echo", "ls", "[", "[["), version="1.35.0"
)


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _read_layout(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        out: dict[str, bytes] = {}
        for member in tar.getmembers():
            if member.isfile():
                f = tar.extractfile(member)
                assert f is not None
                out[member.name] = f.read()
        return out


def _verify_layout(
    path: Path,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, tarfile.TarInfo], bytes]:
    """Check every digest and size by recomputing it; return index, config, layer members."""
    files = _read_layout(path)
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    for name, data in files.items():
        if name.startswith("blobs/sha256/"):
            assert hashlib.sha256(data).hexdigest() == name.rsplit("/", 1)[1]

    def blob(desc: dict[str, Any]) -> bytes:
        data = files["blobs/sha256/" + desc["digest"].split(":", 1)[1]]
        assert len(data) == desc["size"]
        return data

    index = json.loads(files["index.json"])
    assert index["schemaVersion"] == 2
    assert index["mediaType"] == images.MEDIA_INDEX
    digests = {d["digest"] for d in index["manifests"]}
    assert len(digests) == 1  # all names point at one manifest
    manifest = json.loads(blob(index["manifests"][0]))
    assert manifest["mediaType"] == images.MEDIA_MANIFEST
    assert manifest["config"]["mediaType"] == images.MEDIA_CONFIG
    config = json.loads(blob(manifest["config"]))
    (layer_desc,) = manifest["layers"]
    assert layer_desc["mediaType"] == images.MEDIA_LAYER_GZIP
    raw = gzip.decompress(blob(layer_desc))
    assert config["rootfs"] == {"type": "layers", "diff_ids": [_sha(raw)]}
    assert config["os"] == "linux"
    assert config["architecture"] == images.host_architecture()
    with tarfile.open(fileobj=io.BytesIO(raw)) as layer:
        members = {m.name: m for m in layer.getmembers()}
    for m in members.values():
        assert (m.uid, m.gid, m.mtime) == (0, 0, 0)
    return index, config, members, raw


def test_layer_tar_is_reproducible_and_complete() -> None:
    entries = [Entry("usr/bin/tool", "file", 0o755, b"x"), Entry("tmp", "dir", 0o1777)]
    one = layer_tar(entries)
    assert one == layer_tar(list(reversed(entries)))
    with tarfile.open(fileobj=io.BytesIO(one)) as tar:
        names = [m.name for m in tar.getmembers()]
        assert names == ["tmp", "usr", "usr/bin", "usr/bin/tool"]
        assert tar.getmember("tmp").mode == 0o1777
    with pytest.raises(ValueError):
        layer_tar([Entry("../etc", "dir")])
    with pytest.raises(ValueError):
        layer_tar([Entry("a", "dir"), Entry("/a", "dir")])


def test_busybox_archive(tmp_path: Path) -> None:
    built = write_oci_archive(tmp_path / "busybox.tar", busybox_spec(FAKE))
    assert built.names == (BUSYBOX_IMAGE, "docker.io/library/busybox:1.35.0")
    index, config, members, _ = _verify_layout(built.path)
    assert [
        (d["annotations"][ANNOTATION_CONTAINERD_NAME], d["annotations"][ANNOTATION_REF_NAME])
        for d in index["manifests"]
    ] == [
        (BUSYBOX_IMAGE, "latest"),
        ("docker.io/library/busybox:1.35.0", "1.35.0"),
    ]
    assert index["manifests"][0]["digest"] == built.manifest_digest
    assert config["config"]["Cmd"] == ["sh"]
    assert config["config"]["Env"] == [f"PATH={images.DEFAULT_PATH}"]
    assert members["bin/busybox"].mode == 0o755
    assert members["bin/sh"].issym() and members["bin/sh"].linkname == "busybox"
    assert members["bin/["].issym() and members["bin/[["].issym()
    assert members["tmp"].mode == 0o1777
    for needed in ("etc/passwd", "etc/group", "etc/hosts", "proc", "sys", "dev", "root"):
        assert needed in members
    assert read_archive_names(built.path) == {n: built.manifest_digest for n in built.names}


def test_archives_are_deterministic(tmp_path: Path) -> None:
    a = write_oci_archive(tmp_path / "a.tar", busybox_spec(FAKE))
    b = write_oci_archive(tmp_path / "b.tar", busybox_spec(FAKE))
    assert a.manifest_digest == b.manifest_digest
    assert a.path.read_bytes() == b.path.read_bytes()
    other = Busybox(FAKE.binary + b"!", FAKE.applets, FAKE.version)
    assert (
        write_oci_archive(tmp_path / "c.tar", busybox_spec(other)).manifest_digest
        != a.manifest_digest
    )


def test_pause_archives(tmp_path: Path) -> None:
    built = write_oci_archive(tmp_path / "pause.tar", pause_spec(b"\x7fELF pause", FAKE))
    assert built.names == (PAUSE_IMAGE,)
    _, config, members, _ = _verify_layout(built.path)
    assert config["config"]["Entrypoint"] == ["/pause"]
    assert config["config"]["User"] == "65535:65535"
    assert set(members) == {"pause"}
    # Without a compiler the busybox shell stands in.
    fallback = write_oci_archive(tmp_path / "p2.tar", pause_spec(None, FAKE))
    _, config, members, _ = _verify_layout(fallback.path)
    assert config["config"]["Entrypoint"][:2] == ["/bin/sh", "-c"]
    assert "bin/sleep" not in members or members["bin/sleep"].issym()


def test_tags_follow_package_version() -> None:
    assert images.busybox_tags("1.36.1") == [BUSYBOX_IMAGE, "docker.io/library/busybox:1.36.1"]
    assert images.busybox_tags("1.35.0+git2") == [BUSYBOX_IMAGE]
    assert images._upstream_version("1:1.35.0-4+deb12u1+b1") == "1.35.0"
    assert images._upstream_version("1.36.1") == "1.36.1"


def test_spec_requires_a_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_oci_archive(tmp_path / "x.tar", ImageSpec(names=[], entries=[]))


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")
def test_pause_compiles_reproducibly(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    one = images.compile_pause(tmp_path / "a")
    assert one is not None and one.startswith(b"\x7fELF")
    assert one == images.compile_pause(tmp_path / "b")


def _busybox_installed() -> bool:
    result = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Status}", "busybox-static"],
        capture_output=True,
        text=True,
        check=False,
    )
    return "install ok installed" in result.stdout


@pytest.mark.skipif(
    shutil.which("dpkg-query") is None or not _busybox_installed(),
    reason="busybox-static is not installed",
)
def test_build_images_from_package(tmp_path: Path) -> None:
    built = images.build_images(tmp_path / "out")
    assert sorted(p.path.name for p in built) == ["busybox.tar", "pause.tar"]
    _, _, members, _raw = _verify_layout(tmp_path / "out" / "busybox.tar")
    assert members["bin/sh"].linkname == "busybox"
    assert members["bin/echo"].issym()
    assert members["bin/busybox"].size > 500_000  # the real static binary
    # Rebuilding gives byte-identical archives.
    again = images.build_images(tmp_path / "again")
    assert [b.manifest_digest for b in again] == [b.manifest_digest for b in built]
    assert (tmp_path / "again" / "busybox.tar").read_bytes() == (
        tmp_path / "out" / "busybox.tar"
    ).read_bytes()
