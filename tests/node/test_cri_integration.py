"""End to end on the real machine: images built from Debian packages, a private
containerd from our config, and a pod sandbox plus a busybox container through CRI.

Traffic safety: containerd (and so the CNI bridge and every pod) runs in a network
namespace this test creates and destroys, with only loopback up and no route
anywhere; the bridge plugin's IPv4 forwarding switch is flipped there, not on the
host. Nothing here sends a packet.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubeling.node.containerd import mounts_under, remove_leftovers, shim_pids
from kubeling.node.images import BUSYBOX_IMAGE, PAUSE_IMAGE, import_images
from tests.support.containerd import PrivateContainerd, private_containerd, skip_reason

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def node() -> Iterator[PrivateContainerd]:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    with private_containerd(import_now=False) as started:
        yield started
        print("timings:", {k: round(v, 3) for k, v in started.timings.items()})


def test_import_is_idempotent(node: PrivateContainerd) -> None:
    t0 = time.monotonic()
    imported = import_images(node.base / "images", node.address)
    node.timings["import images"] = time.monotonic() - t0
    assert BUSYBOX_IMAGE in imported
    assert PAUSE_IMAGE in imported
    # Everything is present now: the second call imports nothing.
    assert import_images(node.base / "images", node.address) == []


def test_pod_sandbox_and_busybox_container(node: PrivateContainerd) -> None:
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


def test_leftovers_after_containerd_stops_first(node: PrivateContainerd) -> None:
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
