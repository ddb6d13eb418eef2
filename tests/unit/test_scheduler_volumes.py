"""The scheduler's VolumeBinding step: pure decisions (missing claim, unbound
Immediate claim, bound local volume's node affinity ANDed with the pod's, WFFC
claims to select), and in an in-process master with the scheduler and the
PersistentVolume controller: a pod's WaitForFirstConsumer claim is provisioned
on the node the pod is bound to, and a later pod using the claim follows it
there; a missing claim leaves the pod Pending with Kubernetes' message."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kubeling.api import storage as st
from kubeling.api.kinds import HOSTNAME_LABEL
from kubeling.client import Client
from kubeling.controllers.manager import ControllerSettings
from kubeling.scheduler.framework import REASON_AFFINITY, PodInfo
from kubeling.scheduler.volumebinding import (
    NO_VOLUME,
    UNBOUND_IMMEDIATE,
    VolumeDecision,
    check_volumes,
    with_volume_affinity,
)
from kubeling.v1 import core_pb2, storage_pb2
from tests.support import waiting
from tests.support.inprocess import in_process_master
from tests.unit.test_scheduler import cluster, make_node, make_pod

eventually = functools.partial(
    waiting.eventually, within=20.0, interval=0.05, retry_on=waiting.TRANSIENT_ERRORS
)


def pod_with_claim(name: str, claim: str) -> core_pb2.Pod:
    pod = make_pod(name)
    pod.spec.volumes.add(name="data").persistent_volume_claim.claim_name = claim
    return pod


def pvc(name: str, cls: str = "", volume: str = "") -> storage_pb2.PersistentVolumeClaim:
    claim = storage_pb2.PersistentVolumeClaim()
    claim.metadata.name, claim.metadata.namespace = name, "default"
    claim.spec.storage_class_name = cls
    claim.spec.volume_name = volume
    return claim


def local_pv(name: str, node: str) -> storage_pb2.PersistentVolume:
    pv = storage_pb2.PersistentVolume()
    pv.metadata.name = name
    term = pv.spec.node_affinity.required.node_selector_terms.add()
    term.match_expressions.add(key=HOSTNAME_LABEL, operator="In", values=[node])
    return pv


def wffc(name: str = "local-path") -> storage_pb2.StorageClass:
    sc = storage_pb2.StorageClass(provisioner=st.LOCAL_PATH_PROVISIONER)
    sc.metadata.name = name
    sc.volume_binding_mode = st.WAIT_FOR_FIRST_CONSUMER
    return sc


def decide(
    pod: core_pb2.Pod,
    claims: list[storage_pb2.PersistentVolumeClaim],
    volumes: list[storage_pb2.PersistentVolume],
    classes: list[storage_pb2.StorageClass],
) -> VolumeDecision:
    by_claim = {(c.metadata.namespace, c.metadata.name): c for c in claims}
    by_volume = {v.metadata.name: v for v in volumes}
    by_class = {c.metadata.name: c for c in classes}
    return check_volumes(
        pod,
        lambda ns, n: by_claim.get((ns, n)),
        by_volume.get,
        by_class.get,
        lambda: list(volumes),
    )


def test_missing_and_unbound_immediate_claims_are_unschedulable() -> None:
    pod = pod_with_claim("p", "data")
    assert decide(pod, [], [], []).error == 'persistentvolumeclaim "data" not found'
    immediate = storage_pb2.StorageClass(provisioner="x.io/y", volume_binding_mode="Immediate")
    immediate.metadata.name = "fast"
    assert decide(pod, [pvc("data", "fast")], [], [immediate]).error == UNBOUND_IMMEDIATE
    assert decide(pod, [pvc("data", "")], [], []).error == UNBOUND_IMMEDIATE
    decision = decide(pod, [pvc("data", "local-path")], [], [wffc()])
    assert decision.error == ""
    assert [c.metadata.name for c in decision.to_select] == ["data"]
    assert decision.affinities == []


def test_bound_local_volume_pins_the_pod_to_its_node() -> None:
    algorithm = cluster(
        *(make_node(n, labels={HOSTNAME_LABEL: n}) for n in ("n1", "n2", "n3")),
    )
    pod = pod_with_claim("p", "data")
    decision = decide(pod, [pvc("data", "local-path", "pv1")], [local_pv("pv1", "n2")], [])
    assert decision.error == "" and not decision.to_select
    pinned = with_volume_affinity(pod, decision.affinities)
    for _ in range(5):
        assert algorithm.schedule(PodInfo.of(pinned)) == "n2"
    # ANDed with the pod's own affinity: a pod that wants n1 fits nowhere.
    wants_n1 = clone_with_affinity(pod, "n1")
    conflicting = with_volume_affinity(wants_n1, decision.affinities)
    result = algorithm.schedule(PodInfo.of(conflicting))
    assert isinstance(result, tuple) and REASON_AFFINITY in result[1]
    # The original pod object is left alone.
    assert not pod.spec.HasField("affinity")


def test_static_wffc_claim_goes_where_a_free_volume_is() -> None:
    algorithm = cluster(
        *(make_node(n, labels={HOSTNAME_LABEL: n}) for n in ("n1", "n2", "n3")),
    )
    manual = wffc("manual")
    manual.provisioner = "kubernetes.io/no-provisioner"
    claim = pvc("data", "manual")
    claim.spec.access_modes.append("ReadWriteOnce")
    claim.spec.resources.requests["storage"] = "1Gi"
    pod = pod_with_claim("p", "data")
    assert decide(pod, [claim], [], [manual]).error == NO_VOLUME
    volumes = []
    for name, node, size in (("small", "n1", "100Mi"), ("on-n3", "n3", "5Gi")):
        pv = local_pv(name, node)
        pv.spec.storage_class_name = "manual"
        pv.spec.capacity["storage"] = size
        pv.spec.access_modes.append("ReadWriteOnce")
        pv.status.phase = "Available"
        volumes.append(pv)
    decision = decide(pod, [claim], volumes, [manual])
    assert decision.error == "" and [c.metadata.name for c in decision.to_select] == ["data"]
    pinned = with_volume_affinity(pod, decision.affinities)
    for _ in range(5):
        assert algorithm.schedule(PodInfo.of(pinned)) == "n3"  # n1's PV is too small


def clone_with_affinity(pod: core_pb2.Pod, node: str) -> core_pb2.Pod:
    copy = core_pb2.Pod()
    copy.CopyFrom(pod)
    required = copy.spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution
    term = required.node_selector_terms.add()
    term.match_expressions.add(key=HOSTNAME_LABEL, operator="In", values=[node])
    return copy


# ----------------------------------------------------------- in-process master


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Client]:
    async with in_process_master(tmp_path, {"scheduler", "persistentvolume-binder"}) as client:
        yield client


async def test_wffc_claim_is_provisioned_where_its_pod_goes_and_pins_the_next(
    api: Client,
) -> None:
    for name in ("node-1", "node-2", "node-3"):
        node = make_node(name, labels={HOSTNAME_LABEL: name})
        node.metadata.annotations[st.LOCAL_PATH_DIR_ANNOTATION] = f"/var/lib/{name}/storage"
        await api.nodes.create(node)
    claim = storage_pb2.PersistentVolumeClaim()
    claim.metadata.name, claim.metadata.namespace = "data", "default"
    claim.spec.access_modes.append("ReadWriteOnce")
    claim.spec.resources.requests["storage"] = "1Gi"
    await api.persistent_volume_claims.create(claim)
    await asyncio.sleep(0.3)
    await api.pods.create(pod_with_claim("first", "data"))

    async def placed(name: str) -> str:
        node = (await api.pods.get(name, "default")).spec.node_name
        assert node
        return node

    node = await eventually(lambda: placed("first"))

    async def bound() -> storage_pb2.PersistentVolumeClaim:
        got = await api.persistent_volume_claims.get("data", "default")
        assert got.status.phase == "Bound"
        return got

    got = await eventually(bound)
    assert got.metadata.annotations[st.SELECTED_NODE_ANNOTATION] == node
    pv = await api.persistent_volumes.get(got.spec.volume_name)
    assert pv.spec.local.path.startswith(f"/var/lib/{node}/storage/pvc-")
    # The pod goes; its replacement must land where the data is, every time.
    await api.pods.delete("first", "default")
    for i in range(3):
        await api.pods.create(pod_with_claim(f"again-{i}", "data"))
        assert await eventually(lambda i=i: placed(f"again-{i}")) == node


async def test_missing_claim_leaves_the_pod_pending_with_the_reason(api: Client) -> None:
    await api.nodes.create(make_node("node-1", labels={HOSTNAME_LABEL: "node-1"}))
    await asyncio.sleep(0.2)
    await api.pods.create(pod_with_claim("orphan", "nothing"))

    async def reason() -> str:
        pod = await api.pods.get("orphan", "default")
        [cond] = [c for c in pod.status.conditions if c.type == "PodScheduled"]
        assert (cond.status, cond.reason) == ("False", "Unschedulable")
        return cond.message

    assert await eventually(reason) == 'persistentvolumeclaim "nothing" not found'
    # The claim appears: the pod is scheduled (claim and volume events wake it).
    claim = storage_pb2.PersistentVolumeClaim()
    claim.metadata.name, claim.metadata.namespace = "nothing", "default"
    claim.spec.access_modes.append("ReadWriteOnce")
    claim.spec.resources.requests["storage"] = "1Gi"
    await api.persistent_volume_claims.create(claim)

    async def scheduled() -> bool:
        return bool((await api.pods.get("orphan", "default")).spec.node_name)

    await eventually(scheduled)


async def test_pod_is_bound_only_once_its_claim_is(tmp_path: Path) -> None:
    """No binder runs: the claim gets its selected node but is never bound, so
    the pod is never bound either (PreBind waits, times out, retries)."""
    settings = ControllerSettings(extra={"scheduler.volumeBindTimeout": "0.3"})
    async with in_process_master(tmp_path, {"scheduler"}, settings) as api:
        await api.nodes.create(make_node("node-1", labels={HOSTNAME_LABEL: "node-1"}))
        claim = storage_pb2.PersistentVolumeClaim()
        claim.metadata.name, claim.metadata.namespace = "data", "default"
        claim.spec.access_modes.append("ReadWriteOnce")
        claim.spec.resources.requests["storage"] = "1Gi"
        await api.persistent_volume_claims.create(claim)
        await asyncio.sleep(0.2)
        await api.pods.create(pod_with_claim("waits", "data"))

        async def selected() -> bool:
            got = await api.persistent_volume_claims.get("data", "default")
            return got.metadata.annotations.get(st.SELECTED_NODE_ANNOTATION) == "node-1"

        await eventually(selected)
        await asyncio.sleep(1.0)  # several timeouts and retries
        assert not (await api.pods.get("waits", "default")).spec.node_name
