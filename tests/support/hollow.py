"""A kubelet on the fake CRI runtime (a hollow node) against a real master, with
short periods so that tests see its effects quickly."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubeling.client import Client
from kubeling.cri.fake import FakeRuntime
from kubeling.kubelet.kubelet import Kubelet, KubeletConfig

BUSYBOX = "docker.io/library/busybox:latest"


def kubelet_config(
    master: str, tmp_path: Path, name: str, pod_cidr: str = "", **fields: Any
) -> KubeletConfig:
    """A kubelet on loopback for the master at `master`; `fields`: further settings."""
    return KubeletConfig(
        master=master,
        node_name=name,
        listen="127.0.0.1:0",
        node_ip="127.0.0.1",
        pod_cidr=pod_cidr,
        pod_log_dir=tmp_path / "pods",
        relist_period=0.1,
        status_interval=1.0,
        lease_renew_interval=0.5,
        backoff_initial=0.4,
        backoff_max=1.6,
        backoff_reset=60,
        **fields,
    )


@dataclass
class HollowNode:
    name: str
    kubelet: Kubelet
    runtime: FakeRuntime
    api: Client


@contextlib.asynccontextmanager
async def hollow_node(
    config: KubeletConfig, api: Client, runtime_pod_cidr: str
) -> AsyncIterator[HollowNode]:
    """Run a kubelet with `config` on a fake runtime that has busybox; on the way out
    stop it and delete the pods bound to its node."""
    runtime = FakeRuntime(pod_cidr=runtime_pod_cidr, images=[BUSYBOX])
    kubelet = Kubelet(config, runtime, api)
    await kubelet.start()
    node = HollowNode(config.node_name, kubelet, runtime, api)
    try:
        yield node
    finally:
        await node.kubelet.stop()  # the test may have replaced the kubelet
        for pod in (await api.pods.list("", field_selector=f"spec.nodeName={node.name}")).items:
            await api.pods.delete(pod.metadata.name, pod.metadata.namespace, 0)
