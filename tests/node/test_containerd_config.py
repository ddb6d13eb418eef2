from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from kubeling.node.containerd import (
    ContainerdProcess,
    mounts_under,
    netns_path,
    write_containerd_config,
)

CRI = "io.containerd.grpc.v1.cri"


def _write(tmp_path: Path, **extra: str) -> Path:
    return write_containerd_config(
        tmp_path / "etc" / "config.toml",
        root="/var/lib/kl/n1",
        state="/run/kl/n1",
        grpc_address="/run/kl/n1/containerd.sock",
        cni_conf_dir="/etc/kl/n1/net.d",
        sandbox_image="localhost/kubeling/pause:1.0",
        **extra,
    )


def test_config_parses_with_expected_settings(tmp_path: Path) -> None:
    conf = tomllib.loads(_write(tmp_path, registry_config_dir="/etc/kl/certs.d").read_text())
    assert conf["version"] == 2
    assert conf["root"] == "/var/lib/kl/n1"
    assert conf["state"] == "/run/kl/n1"
    assert conf["grpc"]["address"] == "/run/kl/n1/containerd.sock"
    assert conf["ttrpc"]["address"] == "/run/kl/n1/containerd.sock.ttrpc"
    assert CRI in conf["required_plugins"]
    assert conf["plugins"]["io.containerd.internal.v1.opt"]["path"] == "/var/lib/kl/n1/opt"
    cri = conf["plugins"][CRI]
    assert cri["restrict_oom_score_adj"] is True
    assert cri["netns_mounts_under_state_dir"] is True
    assert cri["sandbox_image"] == "localhost/kubeling/pause:1.0"
    assert cri["stream_server_address"] == "127.0.0.1"
    assert cri["cni"] == {
        "bin_dir": "/usr/lib/cni",
        "conf_dir": "/etc/kl/n1/net.d",
        "max_conf_num": 1,
    }
    assert cri["registry"]["config_path"] == "/etc/kl/certs.d"
    runc = cri["containerd"]["runtimes"]["runc"]
    assert runc["runtime_type"] == "io.containerd.runc.v2"
    assert runc["options"] == {"SystemdCgroup": False, "Root": "/run/kl/n1/runc"}


def test_config_optional_parts(tmp_path: Path) -> None:
    conf = tomllib.loads(_write(tmp_path, runc_root="/run/kl/runc-n1").read_text())
    cri = conf["plugins"][CRI]
    assert "registry" not in cri
    assert cri["containerd"]["runtimes"]["runc"]["options"]["Root"] == "/run/kl/runc-n1"


def test_config_escapes_strings(tmp_path: Path) -> None:
    path = write_containerd_config(
        tmp_path / "c.toml",
        root='/tmp/we"ird\\dir',
        state="/tmp/tab\there",
        grpc_address="/tmp/s.sock",
        cni_conf_dir="/tmp/é",
        sandbox_image="p:1",
    )
    conf = tomllib.loads(path.read_text())
    assert conf["root"] == '/tmp/we"ird\\dir'
    assert conf["state"] == "/tmp/tab\there"
    assert conf["plugins"][CRI]["cni"]["conf_dir"] == "/tmp/é"


@pytest.mark.skipif(shutil.which("containerd") is None, reason="containerd is not installed")
def test_containerd_accepts_config(tmp_path: Path) -> None:
    """containerd's own parser merges our file into its defaults without complaint."""
    path = _write(tmp_path)
    result = subprocess.run(
        ["containerd", "--config", str(path), "config", "dump"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    dumped = tomllib.loads(result.stdout)
    cri = dumped["plugins"][CRI]
    assert cri["restrict_oom_score_adj"] is True
    assert cri["cni"]["bin_dir"] == "/usr/lib/cni"
    assert cri["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"] is False
    assert "io.containerd.snapshotter.v1.btrfs" in dumped["disabled_plugins"]


def test_process_command_uses_nsenter() -> None:
    plain = ContainerdProcess("/c.toml", address="/s.sock")
    assert plain.command() == ["containerd", "--config", "/c.toml"]
    inns = ContainerdProcess("/c.toml", address="/s.sock", netns="node1")
    assert inns.command()[:3] == ["nsenter", "--net=/var/run/netns/node1", "--"]
    assert netns_path("/tmp/x/netns") == "/tmp/x/netns"
    assert inns.stop() is None  # never started: nothing to signal


def test_start_failure_reports_log(tmp_path: Path) -> None:
    proc = ContainerdProcess(
        tmp_path / "c.toml",
        address=str(tmp_path / "s.sock"),
        log_path=tmp_path / "log",
        containerd="/bin/false",
    )
    with pytest.raises(RuntimeError, match="exited with 1"):
        proc.start(timeout=5)
    assert not proc.running()


def test_mounts_under_finds_nothing_in_fresh_dir(tmp_path: Path) -> None:
    assert mounts_under(str(tmp_path)) == []
    assert "/proc" in mounts_under("/proc") or not os.path.ismount("/proc")
