"""The PersistentVolume controller against an in-process master: static binding
(smallest fit, class, modes), WaitForFirstConsumer waiting for the scheduler's
selected node, local-path provisioning on that node (path from the node's
announced directory, nodeAffinity, cleanup finalizer, reclaim policy from the
class), Immediate local-path refused with an event, and reclaim (Delete removes
the PV, Retain leaves it Released). No scheduler or kubelet runs: the test writes
the selected-node annotation as the scheduler would."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kubeling.api import storage as st
from kubeling.api.kinds import pv_node
from kubeling.api.objects import clone
from kubeling.client import Client
from kubeling.client.events import EventRecorder
from kubeling.controllers.manager import ControllerContext, ControllerSettings
from kubeling.controllers.volumebinding import VolumeBindingController, find_volume
from kubeling.v1 import core_pb2, storage_pb2
from tests.support import waiting
from tests.support.inprocess import in_process_master

NS = "default"
eventually = functools.partial(
    waiting.eventually, within=15.0, interval=0.05, retry_on=waiting.TRANSIENT_ERRORS
)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Client]:
    async with in_process_master(tmp_path) as client:
        recorder = EventRecorder(client, "test-pv-binder")
        controller = VolumeBindingController(
            ControllerContext(client, recorder, ControllerSettings(workers=2))
        )
        task = asyncio.create_task(controller.run())
        try:
            yield client
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await recorder.flush()


def claim(
    name: str, size: str = "1Gi", cls: str | None = None
) -> storage_pb2.PersistentVolumeClaim:
    pvc = storage_pb2.PersistentVolumeClaim(api_version="v1", kind="PersistentVolumeClaim")
    pvc.metadata.name = name
    pvc.metadata.namespace = NS
    pvc.spec.access_modes.append("ReadWriteOnce")
    pvc.spec.resources.requests["storage"] = size
    if cls is not None:
        pvc.spec.storage_class_name = cls
    return pvc


def volume(name: str, size: str, cls: str = "", modes: tuple[str, ...] = ("ReadWriteOnce",),
           reclaim: str = "Retain") -> storage_pb2.PersistentVolume:  # fmt: skip
    pv = storage_pb2.PersistentVolume(api_version="v1", kind="PersistentVolume")
    pv.metadata.name = name
    pv.spec.capacity["storage"] = size
    pv.spec.access_modes.extend(modes)
    pv.spec.host_path.path = f"/srv/{name}"
    pv.spec.storage_class_name = cls
    pv.spec.persistent_volume_reclaim_policy = reclaim
    return pv


async def bound(api: Client, name: str) -> storage_pb2.PersistentVolumeClaim:
    pvc = await api.persistent_volume_claims.get(name, NS)
    assert pvc.status.phase == "Bound", pvc.status.phase
    return pvc


def test_find_volume_picks_the_smallest_fit() -> None:
    pvc = claim("c", "2Gi", "")
    pvc.metadata.uid = "u1"
    volumes = [
        volume("big", "10Gi"),
        volume("small", "1Gi"),
        volume("right", "3Gi"),
        volume("rwx", "2Gi", modes=("ReadWriteMany",)),
        volume("other-class", "2Gi", cls="fast"),
    ]
    for pv in volumes:
        pv.status.phase = "Available"
    found = find_volume(pvc, volumes)
    assert found is not None and found.metadata.name == "right"
    taken = clone(volumes[2])
    taken.spec.claim_ref.name, taken.spec.claim_ref.namespace = "someone", NS
    found = find_volume(pvc, [volumes[0], taken])
    assert found is not None and found.metadata.name == "big"


async def test_static_claim_binds_smallest_available_volume(api: Client) -> None:
    await api.persistent_volumes.create(volume("pv-10", "10Gi"))
    await api.persistent_volumes.create(volume("pv-2", "2Gi"))
    await api.persistent_volumes.create(volume("pv-1", "1Gi"))
    await api.persistent_volume_claims.create(claim("data", "1500Mi", cls=""))
    pvc = await eventually(lambda: bound(api, "data"))
    assert pvc.spec.volume_name == "pv-2"
    assert dict(pvc.status.capacity) == {"storage": "2Gi"}
    assert list(pvc.status.access_modes) == ["ReadWriteOnce"]
    pv = await api.persistent_volumes.get("pv-2")
    assert pv.status.phase == "Bound"
    assert (pv.spec.claim_ref.name, pv.spec.claim_ref.uid) == ("data", pvc.metadata.uid)

    async def others_available() -> bool:
        for name in ("pv-1", "pv-10"):
            assert (await api.persistent_volumes.get(name)).status.phase == "Available"
        return True

    await eventually(others_available)
    # Retain: the claim goes, the volume stays Released with its data.
    await api.persistent_volume_claims.delete("data", NS)

    async def released() -> bool:
        pv = await api.persistent_volumes.get("pv-2")
        assert pv.status.phase == "Released"
        return True

    await eventually(released)
    await asyncio.sleep(0.3)
    assert (await api.persistent_volumes.get("pv-2")).status.phase == "Released"
    # The admin frees it (claimRef removed): Available again, and a new claim binds.
    pv = await api.persistent_volumes.get("pv-2")
    pv.spec.ClearField("claim_ref")
    await api.persistent_volumes.update(pv)

    async def available() -> bool:
        assert (await api.persistent_volumes.get("pv-2")).status.phase == "Available"
        return True

    await eventually(available)
    await api.persistent_volume_claims.create(claim("again", "2Gi", cls=""))
    again = await eventually(lambda: bound(api, "again"))
    assert again.spec.volume_name == "pv-2"


async def test_reclaim_delete_removes_the_volume(api: Client) -> None:
    await api.persistent_volumes.create(volume("pv-del", "1Gi", reclaim="Delete"))
    await api.persistent_volume_claims.create(claim("tmp", cls=""))
    await eventually(lambda: bound(api, "tmp"))
    await api.persistent_volume_claims.delete("tmp", NS)

    async def gone() -> bool:
        names = [pv.metadata.name for pv in (await api.persistent_volumes.list()).items]
        return "pv-del" not in names

    await eventually(gone)


async def node(api: Client, name: str, local_dir: str) -> None:
    n = core_pb2.Node(api_version="v1", kind="Node")
    n.metadata.name = name
    n.metadata.labels["kubernetes.io/hostname"] = name
    n.metadata.annotations[st.LOCAL_PATH_DIR_ANNOTATION] = local_dir
    await api.nodes.create(n)


async def test_wait_for_first_consumer_provisions_on_the_selected_node(api: Client) -> None:
    await node(api, "node-a", "/var/lib/kubelet-a/storage")
    created = await api.persistent_volume_claims.create(claim("db-data", "3Gi"))
    assert created.spec.storage_class_name == st.LOCAL_PATH_CLASS
    await asyncio.sleep(0.5)
    # No consumer scheduled yet: nothing bound, nothing provisioned.
    assert (await api.persistent_volume_claims.get("db-data", NS)).status.phase == "Pending"
    assert not (await api.persistent_volumes.list()).items

    async def told() -> bool:
        events = await api.events.list(NS, field_selector="involvedObject.name=db-data")
        return any(e.reason == "WaitForFirstConsumer" for e in events.items)

    await eventually(told)
    # The scheduler chose node-a for the claim's pod.
    pvc = clone(created)
    pvc.metadata.annotations[st.SELECTED_NODE_ANNOTATION] = "node-a"
    await api.persistent_volume_claims.update(pvc)
    pvc = await eventually(lambda: bound(api, "db-data"))
    pv = await api.persistent_volumes.get(pvc.spec.volume_name)
    assert pv.metadata.name == f"pvc-{created.metadata.uid}"
    assert pv.spec.local.path == (
        f"/var/lib/kubelet-a/storage/pvc-{created.metadata.uid}_{NS}_db-data"
    )
    assert pv_node(pv) == "node-a"
    assert pv.spec.persistent_volume_reclaim_policy == "Delete"
    assert pv.spec.storage_class_name == st.LOCAL_PATH_CLASS
    assert dict(pv.spec.capacity) == {"storage": "3Gi"}
    assert list(pv.metadata.finalizers) == [st.LOCAL_PATH_CLEANUP_FINALIZER]
    assert pv.metadata.annotations[st.PROVISIONED_BY_ANNOTATION] == st.LOCAL_PATH_PROVISIONER
    assert pvc.metadata.annotations[st.STORAGE_PROVISIONER_ANNOTATION] == st.LOCAL_PATH_PROVISIONER
    # Claim deleted, reclaim Delete: the PV is marked and waits for the node's
    # kubelet to remove the directory and its finalizer.
    await api.persistent_volume_claims.delete("db-data", NS)

    async def marked() -> bool:
        pv2 = await api.persistent_volumes.get(pv.metadata.name)
        return pv2.metadata.HasField("deletion_timestamp")

    await eventually(marked)
    # Play the kubelet: the directory is gone, drop the finalizer.
    pv2 = await api.persistent_volumes.get(pv.metadata.name)
    del pv2.metadata.finalizers[:]
    await api.persistent_volumes.update(pv2)

    async def gone() -> bool:
        return not (await api.persistent_volumes.list()).items

    await eventually(gone)


async def test_immediate_local_path_class_cannot_provision(api: Client) -> None:
    sc = storage_pb2.StorageClass(api_version="storage.k8s.io/v1", kind="StorageClass")
    sc.metadata.name = "now"
    sc.provisioner = st.LOCAL_PATH_PROVISIONER
    sc.volume_binding_mode = "Immediate"
    await api.storage_classes.create(sc)
    await api.persistent_volume_claims.create(claim("early", cls="now"))

    async def refused() -> bool:
        events = await api.events.list(NS, field_selector="involvedObject.name=early")
        messages = [e.message for e in events.items if e.reason == "ProvisioningFailed"]
        assert messages and "no node was specified" in messages[0]
        return True

    await eventually(refused)
    assert (await api.persistent_volume_claims.get("early", NS)).status.phase == "Pending"
    assert not (await api.persistent_volumes.list()).items


async def test_static_volume_in_wffc_class_must_suit_the_selected_node(api: Client) -> None:
    sc = storage_pb2.StorageClass(api_version="storage.k8s.io/v1", kind="StorageClass")
    sc.metadata.name = "manual"
    sc.provisioner = st.NO_PROVISIONER
    sc.volume_binding_mode = "WaitForFirstConsumer"
    await api.storage_classes.create(sc)
    await node(api, "node-a", "/a")
    await node(api, "node-b", "/b")
    for name, on in (("on-a", "node-a"), ("on-b", "node-b")):
        pv = volume(name, "1Gi", cls="manual")
        pv.spec.ClearField("host_path")
        pv.spec.local.path = f"/disks/{name}"
        term = pv.spec.node_affinity.required.node_selector_terms.add()
        term.match_expressions.add(key="kubernetes.io/hostname", operator="In", values=[on])
        await api.persistent_volumes.create(pv)
    pvc = claim("pick", cls="manual")
    pvc.metadata.annotations[st.SELECTED_NODE_ANNOTATION] = "node-b"
    await api.persistent_volume_claims.create(pvc)
    got = await eventually(lambda: bound(api, "pick"))
    assert got.spec.volume_name == "on-b"
