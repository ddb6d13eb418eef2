"""A private containerd for tests and benchmarks, torn down in the right order.

Traffic safety: containerd (and so the CNI bridge and every pod) runs in a network
namespace made here and destroyed afterwards, with only loopback up and no route
anywhere; the bridge plugin's IPv4 forwarding switch flips there, not on the host.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from kubeling.node.cni import write_bridge_cni_config
from kubeling.node.containerd import (
    ContainerdProcess,
    mounts_under,
    remove_all_sandboxes,
    remove_leftovers,
    write_containerd_config,
)
from kubeling.node.images import PAUSE_IMAGE, build_images, import_images

TOOLS = ("containerd", "ctr", "runc", "nsenter", "unshare", "ip", "umount")
CGROUP_ROOT = Path("/sys/fs/cgroup")
POD_CIDR = "10.244.7.0/24"


def skip_reason() -> str | None:
    """Why a real containerd cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "needs root (containerd, mounts, network namespaces)"
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return f"not installed: {', '.join(missing)} (deploy/containerd/install-deps.sh)"
    if not Path("/usr/lib/cni/bridge").exists():
        return "containernetworking-plugins is not installed"
    return None


@dataclass
class PrivateContainerd:
    base: Path
    address: str
    netns: Path
    cgroup_parent: str
    proc: ContainerdProcess
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        return f"unix://{self.address}"

    @property
    def images(self) -> Path:
        return self.base / "images"


def remove_cgroups(parent: str) -> None:
    # runc removes each container's cgroup, not the parent the test chose.
    for hierarchy in CGROUP_ROOT.iterdir():
        path = hierarchy / parent.lstrip("/")
        if path.is_dir():
            for sub in sorted(path.rglob("*"), key=lambda p: -len(p.parts)):
                if sub.is_dir():
                    with contextlib.suppress(OSError):
                        sub.rmdir()
            with contextlib.suppress(OSError):
                path.rmdir()


@contextlib.contextmanager
def private_containerd(import_now: bool = True) -> Iterator[PrivateContainerd]:
    """Build the images, start containerd in its own network namespace, import the
    images; on exit remove sandboxes through CRI, stop containerd by PID, clean up."""
    # A short base path: unix socket paths are limited to 108 bytes.
    base = Path(tempfile.mkdtemp(prefix="klnode-", dir="/tmp"))
    address = str(base / "containerd.sock")
    netns = base / "netns"
    cgroup_parent = f"/kubeling-test-{secrets.token_hex(4)}"
    proc = ContainerdProcess(
        base / "config.toml", address=address, netns=str(netns), log_path=base / "containerd.log"
    )
    node = PrivateContainerd(base, address, netns, cgroup_parent, proc)
    try:
        # A private network namespace pinned by a bind mount on a file of ours, so
        # /run/netns (other containerds' pods) is not touched.
        netns.touch()
        subprocess.run(["unshare", f"--net={netns}", "true"], check=True)
        subprocess.run(["nsenter", f"--net={netns}", "ip", "link", "set", "lo", "up"], check=True)
        t0 = time.monotonic()
        build_images(node.images)
        node.timings["build images"] = time.monotonic() - t0
        write_bridge_cni_config(
            base / "net.d",
            pod_cidr=POD_CIDR,
            bridge="kltest0",
            routes=["10.244.0.0/16"],
            ipam_data_dir=str(base / "ipam"),
        )
        write_containerd_config(
            base / "config.toml",
            root=str(base / "root"),
            state=str(base / "state"),
            grpc_address=address,
            cni_conf_dir=str(base / "net.d"),
            sandbox_image=PAUSE_IMAGE,
        )
        t0 = time.monotonic()
        proc.start()
        node.timings["containerd start"] = time.monotonic() - t0
        if import_now:
            t0 = time.monotonic()
            import_images(node.images, address)
            node.timings["import images"] = time.monotonic() - t0
        yield node
    finally:
        # Tear-down order: sandboxes via CRI, then containerd, then leftovers.
        if proc.running():
            with contextlib.suppress(Exception):
                remove_all_sandboxes(address)
        proc.stop()
        remove_leftovers(address, root=str(base / "root"), state=str(base / "state"))
        remove_cgroups(cgroup_parent)
        for point in mounts_under(str(base)):
            subprocess.run(["umount", "-l", point], check=False, capture_output=True)
        with contextlib.suppress(OSError):
            subprocess.run(["umount", "-l", str(netns)], check=False, capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
