"""The kubelet follows its Node's podCIDR: no CNI config and not Ready until the
master (node IPAM) assigns one, then the bridge config with the pod and service
routes, Ready, and pods start. The kubelet runs on the fake CRI runtime against a
real master process without controllers: the tests play node IPAM themselves."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import grpc
import pytest

from kubeling.client import Client
from kubeling.cri.fake import FakeRuntime
from kubeling.kubelet.kubelet import NO_POD_CIDR_MESSAGE, Kubelet, KubeletConfig
from kubeling.node.cni import CONFLIST_NAME
from kubeling.v1 import core_pb2, meta_pb2
from tests.support import hollow
from tests.support.hollow import HollowNode, hollow_node
from tests.support.processes import MasterProcess
from tests.support.waiting import eventually_passes

pytestmark = pytest.mark.asyncio(loop_scope="session")

CLUSTER_CIDR = "10.244.0.0/16"
SERVICE_CIDR = "10.96.0.0/12"


def kubelet_config(
    master: MasterProcess, tmp_path: Path, name: str, pod_cidr: str = ""
) -> KubeletConfig:
    return hollow.kubelet_config(
        master.address,
        tmp_path,
        name,
        pod_cidr,
        cni_conf_dir=tmp_path / "net.d",
        cni_ipam_dir=tmp_path / "ipam",
        cluster_cidr=CLUSTER_CIDR,
        service_cidr=SERVICE_CIDR,
    )


def conflist(tmp_path: Path) -> Path:
    """Where the kubelet of `kubelet_config(..., tmp_path, ...)` writes its CNI config."""
    return tmp_path / "net.d" / CONFLIST_NAME


def running_node(
    master: MasterProcess, api: Client, tmp_path: Path, name: str, pod_cidr: str = ""
) -> contextlib.AbstractAsyncContextManager[HollowNode]:
    return hollow_node(kubelet_config(master, tmp_path, name, pod_cidr), api, "10.244.9.0/24")


def ready_condition(node: core_pb2.Node) -> meta_pb2.Condition:
    return next(c for c in node.status.conditions if c.type == "Ready")


async def ready_is(api: Client, name: str, status: str) -> meta_pb2.Condition | None:
    condition = ready_condition(await api.nodes.get(name))
    return condition if condition.status == status else None


async def assign_pod_cidr(api: Client, name: str, cidr: str) -> None:
    """What the master's node IPAM controller does (retrying on conflicts with
    the kubelet's status posts)."""
    for _ in range(20):
        node = await api.nodes.get(name)
        node.spec.pod_cidr = cidr
        node.spec.pod_cidrs.append(cidr)
        try:
            await api.nodes.update(node)
            return
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.ABORTED:
                raise
    raise AssertionError("pod CIDR not assigned: too many conflicts")


def make_pod(name: str, node: str) -> core_pb2.Pod:
    pod = core_pb2.Pod()
    pod.metadata.name = name
    pod.metadata.namespace = "default"
    pod.spec.node_name = node
    pod.spec.termination_grace_period_seconds = 1
    pod.spec.containers.add(name="main", image="busybox")
    return pod


async def test_not_ready_until_the_pod_cidr_is_assigned_then_cni_config_and_ready(
    master: MasterProcess, api: Client, tmp_path: Path
) -> None:
    async with running_node(master, api, tmp_path, "cidr-late") as node:
        condition = await eventually_passes(lambda: ready_is(api, node.name, "False"))
        assert condition.reason == "NetworkPluginNotReady"
        assert condition.message == NO_POD_CIDR_MESSAGE
        assert (await api.nodes.get(node.name)).spec.pod_cidr == ""
        assert not conflist(tmp_path).exists()

        # A pod bound here anyway (no scheduler involved) waits for the network.
        await api.pods.create(make_pod("early", node.name))

        async def told() -> bool:
            events = await api.events.list("default", field_selector="reason=NetworkNotReady")
            return any(e.involved_object.name == "early" for e in events.items)

        await eventually_passes(told)
        await asyncio.sleep(0.5)
        assert node.runtime.sandbox_count == 0
        assert (await api.pods.get("early", "default")).status.phase in ("", "Pending")

        await assign_pod_cidr(api, node.name, "10.244.9.0/24")

        await eventually_passes(lambda: asyncio.sleep(0, conflist(tmp_path).exists()), 5)
        config = json.loads(conflist(tmp_path).read_text())
        ipam = config["plugins"][0]["ipam"]
        assert ipam["ranges"] == [[{"subnet": "10.244.9.0/24", "gateway": "10.244.9.1"}]]
        assert ipam["routes"] == [
            {"dst": CLUSTER_CIDR, "gw": "10.244.9.1"},
            {"dst": SERVICE_CIDR, "gw": "10.244.9.1"},
        ]
        condition = await eventually_passes(lambda: ready_is(api, node.name, "True"), 5)
        assert condition.reason == "KubeletReady"

        async def running() -> bool:
            pod = await api.pods.get("early", "default")
            return pod.status.phase == "Running" and pod.status.pod_ip.startswith("10.244.9.")

        await eventually_passes(running)


async def test_a_pod_cidr_from_the_flag_or_the_node_means_ready_at_once(
    master: MasterProcess, api: Client, tmp_path: Path
) -> None:
    # --pod-cidr: the config is written during registration, Ready from the start.
    async with running_node(master, api, tmp_path, "cidr-flag", "10.244.3.0/24") as node:
        first = await api.nodes.get(node.name)
        assert first.spec.pod_cidr == "10.244.3.0/24"
        assert ready_condition(first).status == "True"
        ipam = json.loads(conflist(tmp_path).read_text())["plugins"][0]["ipam"]
        assert ipam["ranges"][0][0]["subnet"] == "10.244.3.0/24"
        assert [r["dst"] for r in ipam["routes"]] == [CLUSTER_CIDR, SERVICE_CIDR]
        # This node's own lease folder (--cni-ipam-dir), not the machine-wide one.
        assert ipam["dataDir"] == str(tmp_path / "ipam")
        since = ready_condition(first).last_transition_time

    # A restarted kubelet whose Node already has a CIDR (and no flag) never
    # reports NotReady on the way.
    conflist(tmp_path).unlink()
    async with running_node(master, api, tmp_path, "cidr-flag") as again:
        got = await api.nodes.get(again.name)
        assert ready_condition(got).status == "True"
        assert ready_condition(got).last_transition_time == since
        assert conflist(tmp_path).exists()


async def test_without_cni_conf_dir_the_node_is_ready_without_a_pod_cidr(
    master: MasterProcess, api: Client, tmp_path: Path
) -> None:
    runtime = FakeRuntime(images=[hollow.BUSYBOX])
    config = kubelet_config(master, tmp_path, "cidr-none")
    config.cni_conf_dir = None
    kubelet = Kubelet(config, runtime, api)
    await kubelet.start()
    try:
        got = await api.nodes.get("cidr-none")
        assert got.spec.pod_cidr == ""
        assert ready_condition(got).status == "True"
    finally:
        await kubelet.stop()
