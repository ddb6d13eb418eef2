"""End to end on the real machine: images built from Debian packages, a private
containerd from our config, and a pod sandbox plus a busybox container through CRI.

Traffic safety: containerd (and so the CNI bridge and every pod) runs in a network
namespace this test creates and destroys, with only loopback up and no route
anywhere; the bridge plugin's IPv4 forwarding switch is flipped there, not on the
host. Nothing here sends a packet.
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
from dataclasses import dataclass
from pathlib import Path

import pytest

from kubeling.node.cni import write_bridge_cni_config
from kubeling.node.containerd import (
    ContainerdProcess,
    mounts_under,
    remove_leftovers,
    shim_pids,
    write_containerd_config,
)
from kubeling.node.images import BUSYBOX_IMAGE, PAUSE_IMAGE, build_images, import_images

pytestmark = pytest.mark.slow

TOOLS = ("containerd", "ctr", "runc", "nsenter", "unshare", "ip", "umount")
CGROUP_ROOT = Path("/sys/fs/cgroup")


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (containerd, mounts, network namespaces)"
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return f"not installed: {', '.join(missing)} (deploy/containerd/install-deps.sh)"
    if not Path("/usr/lib/cni/bridge").exists():
        return "containernetworking-plugins is not installed"
    try:
        import cri_api.v1.api_pb2  # noqa: F401
    except ImportError:
        return "the container-runtime-interface-api package is not installed"
    return None


@dataclass
class Node:
    base: Path
    address: str
    cgroup_parent: str
    proc: ContainerdProcess
    timings: dict[str, float]


def _cri_teardown(address: str) -> None:
    """Stop and remove every sandbox through CRI: the first step of the tear-down order."""
    import grpc
    from cri_api.v1 import api_pb2 as cri
    from cri_api.v1 import api_pb2_grpc as cri_grpc

    with grpc.insecure_channel(f"unix://{address}") as channel:
        runtime = cri_grpc.RuntimeServiceStub(channel)
        for sandbox in runtime.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=10).items:
            runtime.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=sandbox.id), timeout=30)
            runtime.RemovePodSandbox(
                cri.RemovePodSandboxRequest(pod_sandbox_id=sandbox.id), timeout=30
            )


def _remove_cgroups(parent: str) -> None:
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


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    # A short base path: unix socket paths are limited to 108 bytes.
    base = Path(tempfile.mkdtemp(prefix="klnode-", dir="/tmp"))
    address = str(base / "containerd.sock")
    netns = base / "netns"
    cgroup_parent = f"/kubeling-test-{secrets.token_hex(4)}"
    proc = ContainerdProcess(
        base / "config.toml", address=address, netns=str(netns), log_path=base / "containerd.log"
    )
    timings: dict[str, float] = {}
    try:
        # A private network namespace pinned by a bind mount on a file of ours, so
        # /run/netns (other containerds' pods) is not touched.
        netns.touch()
        subprocess.run(["unshare", f"--net={netns}", "true"], check=True)
        subprocess.run(["nsenter", f"--net={netns}", "ip", "link", "set", "lo", "up"], check=True)

        t0 = time.monotonic()
        build_images(base / "images")
        timings["build images"] = time.monotonic() - t0

        write_bridge_cni_config(
            base / "net.d",
            pod_cidr="10.244.7.0/24",
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
        timings["containerd start"] = time.monotonic() - t0
        yield Node(base, address, cgroup_parent, proc, timings)
    finally:
        # Tear-down order: sandboxes via CRI, then containerd, then leftovers.
        if proc.running():
            with contextlib.suppress(Exception):
                _cri_teardown(address)
        proc.stop()
        remove_leftovers(address, root=str(base / "root"), state=str(base / "state"))
        _remove_cgroups(cgroup_parent)
        for point in mounts_under(str(base)):
            subprocess.run(["umount", "-l", point], check=False, capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
        print("timings:", {k: round(v, 3) for k, v in timings.items()})


def test_import_is_idempotent(node: Node) -> None:
    t0 = time.monotonic()
    imported = import_images(node.base / "images", node.address)
    node.timings["import images"] = time.monotonic() - t0
    assert BUSYBOX_IMAGE in imported
    assert PAUSE_IMAGE in imported
    # Everything is present now: the second call imports nothing.
    assert import_images(node.base / "images", node.address) == []


def test_pod_sandbox_and_busybox_container(node: Node) -> None:
    import grpc
    from cri_api.v1 import api_pb2 as cri
    from cri_api.v1 import api_pb2_grpc as cri_grpc

    import_images(node.base / "images", node.address)
    logs = node.base / "pods" / "default_hello"
    logs.mkdir(parents=True)

    with grpc.insecure_channel(f"unix://{node.address}") as channel:
        runtime = cri_grpc.RuntimeServiceStub(channel)
        image_service = cri_grpc.ImageServiceStub(channel)
        version = runtime.Version(cri.VersionRequest(), timeout=10)
        assert version.runtime_name == "containerd"

        # CRI sees the imported image under its docker.io name.
        status = image_service.ImageStatus(
            cri.ImageStatusRequest(image=cri.ImageSpec(image="busybox")), timeout=10
        )
        assert BUSYBOX_IMAGE in status.image.repo_tags

        sandbox_config = cri.PodSandboxConfig(
            metadata=cri.PodSandboxMetadata(
                name="hello", namespace="default", uid=secrets.token_hex(8), attempt=0
            ),
            hostname="hello",
            log_directory=str(logs),
            labels={"io.kubernetes.pod.name": "hello"},
            linux=cri.LinuxPodSandboxConfig(cgroup_parent=node.cgroup_parent),
        )
        t0 = time.monotonic()
        sandbox_id = runtime.RunPodSandbox(
            cri.RunPodSandboxRequest(config=sandbox_config), timeout=60
        ).pod_sandbox_id
        node.timings["RunPodSandbox"] = time.monotonic() - t0

        sandbox = runtime.PodSandboxStatus(
            cri.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id), timeout=10
        ).status
        assert sandbox.state == cri.SANDBOX_READY
        assert sandbox.network.ip.startswith("10.244.7.")

        container_config = cri.ContainerConfig(
            metadata=cri.ContainerMetadata(name="echo", attempt=0),
            image=cri.ImageSpec(image="busybox"),
            command=["echo", "hello"],
            log_path="echo/0.log",
        )
        t0 = time.monotonic()
        container_id = runtime.CreateContainer(
            cri.CreateContainerRequest(
                pod_sandbox_id=sandbox_id, config=container_config, sandbox_config=sandbox_config
            ),
            timeout=60,
        ).container_id
        runtime.StartContainer(cri.StartContainerRequest(container_id=container_id), timeout=60)
        node.timings["CreateContainer+StartContainer"] = time.monotonic() - t0

        deadline = time.monotonic() + 30
        while True:
            state = runtime.ContainerStatus(
                cri.ContainerStatusRequest(container_id=container_id), timeout=10
            ).status
            if state.state == cri.CONTAINER_EXITED or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert state.state == cri.CONTAINER_EXITED, state
        assert state.exit_code == 0, state
        # CRI log lines: "<time> stdout F hello".
        assert (logs / "echo" / "0.log").read_text().split()[-3:] == ["stdout", "F", "hello"]

        t0 = time.monotonic()
        runtime.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=30)
        runtime.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=30)
        node.timings["Stop+RemovePodSandbox"] = time.monotonic() - t0
        assert not runtime.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=10).items


def test_leftovers_after_containerd_stops_first(node: Node) -> None:
    """The wrong tear-down order (containerd stopped with a pod running) is recoverable:
    remove_leftovers kills the pod's processes and shims and unmounts what remains,
    and a restarted containerd can still remove the stale sandbox."""
    import grpc
    from cri_api.v1 import api_pb2 as cri
    from cri_api.v1 import api_pb2_grpc as cri_grpc

    import_images(node.base / "images", node.address)
    logs = node.base / "pods" / "default_sleeper"
    logs.mkdir(parents=True)
    sandbox_config = cri.PodSandboxConfig(
        metadata=cri.PodSandboxMetadata(name="sleeper", namespace="default", uid="u-sleeper"),
        log_directory=str(logs),
        linux=cri.LinuxPodSandboxConfig(cgroup_parent=node.cgroup_parent),
    )
    with grpc.insecure_channel(f"unix://{node.address}") as channel:
        runtime = cri_grpc.RuntimeServiceStub(channel)
        sandbox_id = runtime.RunPodSandbox(
            cri.RunPodSandboxRequest(config=sandbox_config), timeout=60
        ).pod_sandbox_id
        container_id = runtime.CreateContainer(
            cri.CreateContainerRequest(
                pod_sandbox_id=sandbox_id,
                config=cri.ContainerConfig(
                    metadata=cri.ContainerMetadata(name="sleep"),
                    image=cri.ImageSpec(image="busybox"),
                    command=["sleep", "3600"],
                    log_path="sleep/0.log",
                ),
                sandbox_config=sandbox_config,
            ),
            timeout=60,
        ).container_id
        runtime.StartContainer(cri.StartContainerRequest(container_id=container_id), timeout=60)

    state = node.base / "state"
    node.proc.stop()
    assert shim_pids(node.address), "shims outlive containerd"
    assert mounts_under(str(state)), "rootfs/shm/netns mounts outlive containerd"

    left = remove_leftovers(node.address, root=str(node.base / "root"), state=str(state))
    assert set(left.deleted_containers) == {sandbox_id, container_id}
    assert left.killed_shims
    assert shim_pids(node.address) == []
    assert mounts_under(str(node.base / "root"), str(state)) == []

    # A restarted containerd reports the sandbox as not ready and removes it.
    node.proc.start()
    with grpc.insecure_channel(f"unix://{node.address}") as channel:
        runtime = cri_grpc.RuntimeServiceStub(channel)
        (stale,) = runtime.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=10).items
        assert stale.id == sandbox_id
        assert stale.state == cri.SANDBOX_NOTREADY
        runtime.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=30)
        runtime.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=30)
    # CNI DEL could not run without the pod's netns; drop libcni's cached result.
    for cached in Path("/var/lib/cni/results").glob(f"kubeling-{sandbox_id}-*"):
        cached.unlink()
