"""The registry push client against a real Debian docker-registry on loopback."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubeling.node.images import (
    BUSYBOX_IMAGE,
    PAUSE_IMAGE,
    Busybox,
    busybox_spec,
    pause_spec,
    write_oci_archive,
)
from kubeling.node.registry import (
    REGISTRY_BINARY,
    RegistryClient,
    RegistryError,
    parse_reference,
    push_archive,
    registry_base_url,
    write_registry_config,
)
from tests.support.processes import free_port

FAKE = Busybox(binary=b"\x7fELF fake busybox", applets=("sh", "echo"), version="1.35.0")


def test_parse_reference() -> None:
    assert parse_reference(BUSYBOX_IMAGE) == parse_reference("busybox")
    assert parse_reference("busybox").repository == "library/busybox"
    assert parse_reference("busybox:1.35.0").tag == "1.35.0"
    assert parse_reference(PAUSE_IMAGE).repository == "kubeling/pause"
    assert parse_reference("10.99.0.1:5000/app/web:2").repository == "app/web"
    with pytest.raises(RegistryError):
        parse_reference("busybox@sha256:00")


def test_plain_http_only_for_loopback_and_named_networks() -> None:
    lab = [ipaddress.ip_network("10.99.0.0/24")]
    assert registry_base_url("127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert registry_base_url("localhost:5000") == "http://localhost:5000"
    assert registry_base_url("10.99.0.1:5000") == "https://10.99.0.1:5000"
    assert registry_base_url("10.99.0.1:5000", lab) == "http://10.99.0.1:5000"
    assert registry_base_url("registry.example:443", lab) == "https://registry.example:443"


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[str]:
    if not Path(REGISTRY_BINARY).exists():
        pytest.skip("docker-registry is not installed (apt-get install docker-registry)")
    addr = f"127.0.0.1:{free_port()}"
    config = write_registry_config(tmp_path / "config.yml", addr=addr, root=tmp_path / "data")
    with (tmp_path / "registry.log").open("wb") as log:
        proc = subprocess.Popen(
            [REGISTRY_BINARY, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://{addr}/v2/", timeout=1) as reply:
                    assert reply.status == 200
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        "docker-registry did not start: " + (tmp_path / "registry.log").read_text()
                    ) from None
                time.sleep(0.1)
        yield addr
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(tmp_path / "data", ignore_errors=True)


def test_push_then_pull_back(registry: str, tmp_path: Path) -> None:
    archive = write_oci_archive(tmp_path / "busybox.tar", busybox_spec(FAKE))
    results = push_archive(archive.path, registry)
    assert sorted(r.reference for r in results) == [
        f"{registry}/library/busybox:1.35.0",
        f"{registry}/library/busybox:latest",
    ]
    assert all(r.digest == archive.manifest_digest for r in results)
    # The first tag uploads layer and config; the second finds them there.
    assert [(r.blobs_uploaded, r.blobs_skipped) for r in results] == [(2, 0), (0, 2)]

    client = RegistryClient(registry, f"http://{registry}")
    assert "library/busybox" in client.catalog()
    assert client.tags("library/busybox") == ["1.35.0", "latest"]
    media_type, manifest = client.get_manifest("library/busybox", "latest")
    assert media_type == "application/vnd.oci.image.manifest.v1+json"
    assert "sha256:" + hashlib.sha256(manifest).hexdigest() == archive.manifest_digest
    # Every blob the manifest names is served with the right bytes.
    for desc in [json.loads(manifest)["config"], *json.loads(manifest)["layers"]]:
        with urllib.request.urlopen(
            f"http://{registry}/v2/library/busybox/blobs/{desc['digest']}"
        ) as reply:
            assert "sha256:" + hashlib.sha256(reply.read()).hexdigest() == desc["digest"]

    # Pushing again sends no blob.
    again = push_archive(archive.path, registry)
    assert all(r.blobs_uploaded == 0 for r in again)

    pause = write_oci_archive(tmp_path / "pause.tar", pause_spec(b"\x7fELF pause", FAKE))
    (result,) = push_archive(pause.path, registry)
    assert result.reference == f"{registry}/kubeling/pause:1.0"
    assert sorted(client.catalog()) == ["kubeling/pause", "library/busybox"]


def test_errors_are_clear(registry: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"not a tar")
    with pytest.raises(RegistryError, match="not a readable OCI image archive"):
        push_archive(bad, registry)
    archive = write_oci_archive(tmp_path / "busybox.tar", busybox_spec(FAKE))
    port = free_port()
    with pytest.raises(RegistryError, match=f"registry 127.0.0.1:{port}"):
        push_archive(archive.path, f"127.0.0.1:{port}", timeout=2)


def test_cli_push_and_list(
    registry: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from kubeling.cli.main import main

    archive = write_oci_archive(tmp_path / "busybox.tar", busybox_spec(FAKE))
    assert main(["image", "push", str(archive.path), "--registry", registry]) == 0
    out = capsys.readouterr().out
    assert f"pushed {registry}/library/busybox:latest {archive.manifest_digest}" in out
    assert main(["image", "list", "--registry", registry]) == 0
    assert capsys.readouterr().out.split() == [
        f"{registry}/library/busybox:1.35.0",
        f"{registry}/library/busybox:latest",
    ]
    assert main(["image", "push", str(tmp_path / "nope.tar"), "--registry", registry]) == 1
    assert "nope.tar: no such archive" in capsys.readouterr().err


def test_mirror_hosts_toml(tmp_path: Path) -> None:
    import tomllib

    from kubeling.node.containerd import write_registry_mirror

    path = write_registry_mirror(tmp_path, "docker.io", "http://10.99.0.1:5000")
    assert path == tmp_path / "docker.io" / "hosts.toml"
    parsed = tomllib.loads(path.read_text())
    assert parsed == {
        "server": "https://registry-1.docker.io",
        "host": {"http://10.99.0.1:5000": {"capabilities": ["pull", "resolve"]}},
    }


def test_lab_state_keeps_the_registry_process(tmp_path: Path) -> None:
    from kubeling.lab.lab import LabState, Proc

    state = LabState(prefix="kl-", master_netns="kl-net", registry=Proc(42, "/x/config.yml"))
    state.save(tmp_path / "lab.json")
    assert LabState.load(tmp_path / "lab.json").registry == Proc(42, "/x/config.yml")
    LabState(prefix="kl-", master_netns="kl-net").save(tmp_path / "old.json")
    assert LabState.load(tmp_path / "old.json").registry is None
