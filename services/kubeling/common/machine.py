"""Facts about this machine for the Node object (capacity, addresses, system info)."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
from pathlib import Path

from kubeling.v1 import core_pb2

_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}
# Interfaces that carry pod traffic, not the node's own address.
_POD_INTERFACE_PREFIXES = ("kubeling", "cni", "veth", "docker", "flannel")


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def memory_kib() -> int:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1])
    return 0


def os_image() -> str:
    for line in _read("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip('"')
    return platform.system()


def node_ip() -> str:
    """The first global IPv4 address of an interface that is not a pod bridge."""
    try:
        out = subprocess.run(
            ["ip", "-j", "-4", "addr", "show", "scope", "global"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout
        for link in json.loads(out or "[]"):
            if str(link.get("ifname", "")).startswith(_POD_INTERFACE_PREFIXES):
                continue
            for addr in link.get("addr_info", []):
                if addr.get("family") == "inet":
                    return str(addr["local"])
    except (OSError, subprocess.SubprocessError, ValueError, KeyError):
        pass
    return "127.0.0.1"


def capacity(max_pods: int = 110) -> dict[str, str]:
    return {
        "cpu": str(os.cpu_count() or 1),
        "memory": f"{memory_kib()}Ki",
        "pods": str(max_pods),
    }


def system_info(runtime_version: str, kubelet_version: str) -> core_pb2.NodeSystemInfo:
    uname = os.uname()
    return core_pb2.NodeSystemInfo(
        machine_id=_read("/etc/machine-id"),
        system_uuid=_read("/sys/class/dmi/id/product_uuid"),
        boot_id=_read("/proc/sys/kernel/random/boot_id"),
        kernel_version=uname.release,
        os_image=os_image(),
        container_runtime_version=runtime_version,
        kubelet_version=kubelet_version,
        operating_system="linux",
        architecture=_ARCH.get(platform.machine(), platform.machine()),
    )


def hostname() -> str:
    return socket.gethostname()
