"""A StatefulSet with a local-path volume end to end on hollow nodes: an
in-process master running the scheduler, the StatefulSet, PersistentVolume and
garbage collector controllers, and two real kubelets on the fake CRI runtime,
each with its own --root-dir.

What this adds to the unit tests: the whole chain (claim from the template ->
scheduler's selected node -> local-path PV on that node -> the kubelet makes the
directory and bind-mounts it), the data surviving the pod's deletion (a file the
test writes into the PV directory is there when the StatefulSet recreates pod -0,
on the same node, mounted from the same directory), the pod's stable DNS name
through a headless Service's EndpointSlice, and reclaim: the claim
deleted, the PV goes and the kubelet removes the directory before the PV's
finalizer is dropped."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from dnslib import QTYPE

from kubeling.api import storage as st
from kubeling.api.kinds import pv_node
from kubeling.api.wellknown import SERVICE_NAME_LABEL
from kubeling.client import Client
from kubeling.dns.records import ClusterIndex
from kubeling.v1 import apps_pb2, core_pb2
from tests.support import hollow, waiting
from tests.support.hollow import HollowNode, hollow_node
from tests.support.inprocess import in_process_master

NS = "default"
eventually = functools.partial(
    waiting.eventually, within=45.0, interval=0.1, retry_on=waiting.TRANSIENT_ERRORS
)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Client]:
    controllers = {
        "scheduler",
        "statefulset",
        "persistentvolume-binder",
        "pvc-protection",
        "garbagecollector",
        "endpointslice",
    }
    async with in_process_master(tmp_path / "master", controllers, bookmark_interval=1) as client:
        yield client


@pytest.fixture
async def nodes(api: Client, tmp_path: Path) -> AsyncIterator[dict[str, HollowNode]]:
    async with contextlib.AsyncExitStack() as stack:
        found: dict[str, HollowNode] = {}
        for i, name in enumerate(("node-a", "node-b")):
            cidr = f"10.244.{20 + i}.0/24"
            config = hollow.kubelet_config(
                api.target, tmp_path / name, name, cidr, root_dir=tmp_path / name / "root"
            )
            found[name] = await stack.enter_async_context(hollow_node(config, api, cidr))
        yield found


def stateful_set() -> apps_pb2.StatefulSet:
    sts = apps_pb2.StatefulSet(api_version="apps/v1", kind="StatefulSet")
    sts.metadata.name, sts.metadata.namespace = "db", NS
    sts.spec.replicas = 1
    sts.spec.service_name = "db"
    sts.spec.selector.match_labels["app"] = "db"
    template = sts.spec.template
    template.metadata.labels["app"] = "db"
    template.spec.termination_grace_period_seconds = 1
    container = template.spec.containers.add(name="db", image="busybox")
    container.volume_mounts.add(name="data", mount_path="/var/lib/db")
    claim = sts.spec.volume_claim_templates.add()
    claim.metadata.name = "data"
    claim.spec.access_modes.append("ReadWriteOnce")
    claim.spec.resources.requests["storage"] = "1Gi"
    return sts


async def running(api: Client, name: str, not_uid: str = "") -> core_pb2.Pod:
    pod = await api.pods.get(name, NS)
    assert pod.metadata.uid != not_uid
    assert pod.status.phase == "Running", pod.status.phase
    return pod


async def mount_source(node: HollowNode, pod: core_pb2.Pod) -> str:
    """Where the fake runtime was told to bind /var/lib/db from, for `pod`."""
    for item in await node.runtime.list_containers():
        if item.labels.get("io.kubernetes.pod.uid") != pod.metadata.uid:
            continue
        status = (await node.runtime.container_status(item.id)).status
        for mount in status.mounts:
            if mount.container_path == "/var/lib/db":
                return str(mount.host_path)
    raise LookupError(f"no container of {pod.metadata.name} mounts /var/lib/db")


async def test_data_survives_the_pod_and_follows_it_to_its_node(
    api: Client, nodes: dict[str, HollowNode], tmp_path: Path
) -> None:
    await api.stateful_sets.create(stateful_set())
    first = await eventually(lambda: running(api, "db-0"))
    node = nodes[first.spec.node_name]
    pvc = await api.persistent_volume_claims.get("data-db-0", NS)
    assert pvc.status.phase == "Bound"
    assert pvc.metadata.annotations[st.SELECTED_NODE_ANNOTATION] == node.name
    pv = await api.persistent_volumes.get(pvc.spec.volume_name)
    assert pv_node(pv) == node.name
    directory = Path(pv.spec.local.path)
    assert directory.parent == (tmp_path / node.name / "root" / "storage").absolute()
    assert stat.S_IMODE((await asyncio.to_thread(directory.stat)).st_mode) == 0o777
    assert await eventually(lambda: mount_source(node, first)) == str(directory)
    # The "database" writes a row.
    (directory / "rows").write_text("1,alice\n")

    # The headless Service gives the pod its stable DNS name.
    svc = core_pb2.Service(api_version="v1", kind="Service")
    svc.metadata.name, svc.metadata.namespace = "db", NS
    svc.spec.cluster_ip = "None"
    svc.spec.selector["app"] = "db"
    svc.spec.ports.add(name="pg", port=5432, protocol="TCP")
    svc = await api.services.create(svc)

    async def resolves() -> str:
        index = ClusterIndex()
        index.put_service(svc)
        for piece in (await api.endpoint_slices.list(NS, f"{SERVICE_NAME_LABEL}=db")).items:
            index.put_slice(piece)
        answer = index.resolve(f"db-0.db.{NS}.svc.cluster.local", QTYPE.A)
        assert answer is not None and answer.answers
        return str(answer.answers[0].rdata)

    assert await eventually(resolves) == first.status.pod_ip

    await api.pods.delete("db-0", NS)
    second = await eventually(lambda: running(api, "db-0", not_uid=first.metadata.uid))
    assert second.spec.node_name == node.name  # follows its data
    assert await eventually(lambda: mount_source(node, second)) == str(directory)
    assert (directory / "rows").read_text() == "1,alice\n"

    # Scale to zero and drop the claim: reclaim Delete removes the PV, and the
    # node's kubelet the directory, before the PV object goes.
    sts = await api.stateful_sets.get("db", NS)
    sts.spec.replicas = 0
    await api.stateful_sets.update(sts)

    async def no_pods() -> bool:
        return not (await api.pods.list(NS, "app=db")).items

    await eventually(no_pods)
    await api.persistent_volume_claims.delete("data-db-0", NS)

    async def volume_gone() -> bool:
        names = [v.metadata.name for v in (await api.persistent_volumes.list()).items]
        return pv.metadata.name not in names

    await eventually(volume_gone)
    assert not await asyncio.to_thread(directory.exists)
