"""A kubelet on a test's private containerd (tests/support/containerd.py): its
settings, and the clean-up every real-kubelet test needs (the node's pods gone
before the kubelet stops, mounts under the test's folder undone)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from kubeling.client import Client
from kubeling.kubelet.kubelet import KubeletConfig
from kubeling.node.containerd import mounts_under
from tests.support.containerd import POD_CIDR, PrivateContainerd
from tests.support.waiting import eventually_passes


def kubelet_config(
    master: str, node_name: str, containerd: PrivateContainerd, **fields: Any
) -> KubeletConfig:
    """A kubelet on loopback for `containerd`, with fast loops; `fields`: more settings."""
    settings: dict[str, Any] = {
        "master": master,
        "node_name": node_name,
        "runtime_endpoint": containerd.endpoint,
        "listen": "127.0.0.1:0",
        "node_ip": "127.0.0.1",
        "pod_cidr": POD_CIDR,
        "pod_log_dir": containerd.base / "pods",
        "relist_period": 0.2,
        "status_interval": 2.0,
        "lease_renew_interval": 1.0,
        "backoff_initial": 1.0,
        "backoff_max": 4.0,
    }
    settings.update(fields)
    return KubeletConfig(**settings)


async def remove_node_pods(api: Client, node_name: str, within: float = 60) -> None:
    """Delete every pod bound to the node and wait until its kubelet finalized them,
    so no container outlives the test."""
    selector = f"spec.nodeName={node_name}"
    for pod in (await api.pods.list("", field_selector=selector)).items:
        await api.pods.delete(pod.metadata.name, pod.metadata.namespace, 1)

    async def none_left() -> bool:
        return not (await api.pods.list("", field_selector=selector)).items

    await eventually_passes(none_left, within)


def unmount_all(path: Path) -> None:
    """Undo every mount under `path` (tmpfs volumes of a failed test)."""
    for point in mounts_under(str(path)):
        subprocess.run(["umount", "-l", point], check=False)
