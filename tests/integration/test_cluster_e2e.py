"""The whole control plane at once: a master with every controller and the
scheduler, and three kubelets on the fake runtime (hollow nodes).

Covers the scheduler/controllers issue's end-to-end cases: a Deployment of 6
spreads over 3 nodes and runs; deleting it deletes its ReplicaSets and pods; a
node that stops heartbeating loses its pods to the other nodes.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kubeling.api.objects import from_dict
from kubeling.client import Client
from kubeling.controllers.manager import ControllerSettings
from kubeling.cri.fake import FakeRuntime
from kubeling.kubelet.kubelet import Kubelet, KubeletConfig
from kubeling.v1 import apps_pb2
from tests.support.inprocess import in_process_master
from tests.support.waiting import eventually_passes

pytestmark = pytest.mark.asyncio(loop_scope="session")

NODES = ("e2e-a", "e2e-b", "e2e-c")


@dataclass
class Cluster:
    api: Client
    kubelets: dict[str, Kubelet]

    async def running_pods(self, selector: str) -> list[tuple[str, str]]:
        pods = (await self.api.pods.list("default", selector)).items
        return [
            (p.metadata.name, p.spec.node_name)
            for p in pods
            if p.status.phase == "Running" and not p.metadata.HasField("deletion_timestamp")
        ]


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    settings = ControllerSettings(
        node_monitor_grace_period=3.0, node_monitor_period=0.5, pod_eviction_timeout=1.0
    )
    async with in_process_master(
        tmp_path / "master", {"*"}, settings, client_timeout=30.0, bookmark_interval=1.0
    ) as api:
        kubelets: dict[str, Kubelet] = {}
        for i, name in enumerate(NODES):
            cidr = f"10.244.{10 + i}.0/24"
            config = KubeletConfig(
                master=api.target,
                node_name=name,
                listen="",
                node_ip=f"127.0.0.{10 + i}",
                pod_cidr=cidr,
                pod_log_dir=tmp_path / name,
                relist_period=0.2,
                status_interval=1.0,
                lease_renew_interval=0.5,
            )
            kubelets[name] = Kubelet(config, FakeRuntime(pod_cidr=cidr), api)
            await kubelets[name].start()
        try:
            yield Cluster(api, kubelets)
        finally:
            for kubelet in kubelets.values():
                await kubelet.stop()


def deployment(name: str, replicas: int) -> apps_pb2.Deployment:
    return from_dict(
        {
            "metadata": {"name": name, "namespace": "default"},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {
                        "terminationGracePeriodSeconds": 1,
                        "containers": [
                            {
                                "name": "web",
                                "image": "busybox",
                                "resources": {"requests": {"cpu": "100m", "memory": "32Mi"}},
                            }
                        ],
                    },
                },
            },
        },
        apps_pb2.Deployment,
    )


async def test_deployment_spreads_runs_and_is_garbage_collected(cluster: Cluster) -> None:
    api = cluster.api
    await api.deployments.create(deployment("spread", 6))

    async def six_running() -> list[tuple[str, str]]:
        running = await cluster.running_pods("app=spread")
        return running if len(running) == 6 else []

    running = await eventually_passes(six_running, 30)
    assert Counter(node for _, node in running) == {name: 2 for name in NODES}

    await api.deployments.delete("spread", "default")

    async def all_gone() -> bool:
        replica_sets = (await api.replica_sets.list("default", "app=spread")).items
        pods = (await api.pods.list("default", "app=spread")).items
        return not replica_sets and not pods

    await eventually_passes(all_gone, 30)


async def test_node_that_stops_heartbeating_loses_its_pods(cluster: Cluster) -> None:
    api = cluster.api
    await api.deployments.create(deployment("survivor", 3))

    async def three_running() -> list[tuple[str, str]]:
        running = await cluster.running_pods("app=survivor")
        return running if len(running) == 3 else []

    before = await eventually_passes(three_running, 30)
    lost = before[0][1]
    await cluster.kubelets[lost].stop()  # the node goes silent: no lease, no status

    async def moved() -> list[tuple[str, str]]:
        running = await cluster.running_pods("app=survivor")
        on_live = [p for p in running if p[1] != lost]
        return on_live if len(on_live) == 3 else []

    after = await eventually_passes(moved, 60)
    assert all(node != lost for _, node in after)
    node = await api.nodes.get(lost)
    ready = next(c for c in node.status.conditions if c.type == "Ready")
    assert ready.status == "Unknown"
    assert "node.kubernetes.io/unreachable" in {t.key for t in node.spec.taints}
    await asyncio.sleep(0)
