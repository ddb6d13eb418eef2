"""The node authorizer for storage: a kubelet reads the claims its pods mount and
the PVs bound to them or on its node, lists/watches only its node's PVs, and may
only drop the local-path cleanup finalizer of its own PVs; other nodes' claims
and volumes are refused. Other roles as for any kind."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from kubeling.api import storage as st
from kubeling.api.errors import ApiError
from kubeling.api.kinds import HOSTNAME_LABEL, PERSISTENT_VOLUME, PERSISTENT_VOLUME_CLAIM, POD
from kubeling.api.objects import clone
from kubeling.common import identity
from kubeling.common.identity import Identity
from kubeling.master.authz import Authorizer
from kubeling.master.server import Master, MasterConfig
from kubeling.v1 import core_pb2, meta_pb2, storage_pb2

W1 = identity.node_identity("w1")
W2 = identity.node_identity("w2")


@pytest.fixture
async def authz(tmp_path: Path) -> AsyncIterator[Authorizer]:
    master = Master(MasterConfig(listen="127.0.0.1:0", data_dir=tmp_path, tls=False,
                                 controllers=set()))  # fmt: skip
    await master.store.open()
    await master._ensure_namespaces()
    try:
        yield Authorizer(master.registries)
    finally:
        await master.store.close()
        await master.supervisor.stop()


def allowed(authz: Authorizer, who: Identity, kind: object, method: str, request: object) -> bool:
    try:
        authz.check_kind(kind, method, who, request)  # type: ignore[arg-type]
    except ApiError as refused:
        assert refused.code == grpc.StatusCode.PERMISSION_DENIED, refused
        assert f"user {who}" in refused.message
        return False
    return True


def get(name: str, namespace: str = "") -> meta_pb2.GetRequest:
    return meta_pb2.GetRequest(name=name, namespace=namespace)


async def setup(authz: Authorizer) -> storage_pb2.PersistentVolume:
    """Pod `db-0` on w1 mounts claim `data`, bound to local PV `pv-w1` on w1;
    PV `pv-w2` is w2's."""
    pod = core_pb2.Pod()
    pod.metadata.name, pod.metadata.namespace = "db-0", "default"
    pod.spec.node_name = "w1"
    pod.spec.containers.add(name="c", image="i")
    pod.spec.volumes.add(name="data").persistent_volume_claim.claim_name = "data"
    await authz.registries[POD.name].create(pod)
    claim = storage_pb2.PersistentVolumeClaim()
    claim.metadata.name, claim.metadata.namespace = "data", "default"
    claim.spec.access_modes.append("ReadWriteOnce")
    claim.spec.resources.requests["storage"] = "1Gi"
    await authz.registries[PERSISTENT_VOLUME_CLAIM.name].create(claim)
    mine = None
    for name, node in (("pv-w1", "w1"), ("pv-w2", "w2")):
        pv = storage_pb2.PersistentVolume()
        pv.metadata.name = name
        pv.metadata.finalizers.append(st.LOCAL_PATH_CLEANUP_FINALIZER)
        pv.spec.capacity["storage"] = "1Gi"
        pv.spec.access_modes.append("ReadWriteOnce")
        pv.spec.local.path = f"/var/lib/{node}/storage/{name}"
        term = pv.spec.node_affinity.required.node_selector_terms.add()
        term.match_expressions.add(key=HOSTNAME_LABEL, operator="In", values=[node])
        if node == "w1":
            pv.spec.claim_ref.name, pv.spec.claim_ref.namespace = "data", "default"
        created = await authz.registries[PERSISTENT_VOLUME.name].create(pv)
        if node == "w1":
            mine = created
    assert mine is not None
    return mine  # type: ignore[return-value]


async def test_node_reads_its_claims_and_volumes_only(authz: Authorizer) -> None:
    await setup(authz)
    assert allowed(authz, W1, PERSISTENT_VOLUME_CLAIM, "Get", get("data", "default"))
    assert not allowed(authz, W2, PERSISTENT_VOLUME_CLAIM, "Get", get("data", "default"))
    assert not allowed(authz, W1, PERSISTENT_VOLUME_CLAIM, "Get", get("other", "default"))
    assert not allowed(authz, W1, PERSISTENT_VOLUME_CLAIM, "List", meta_pb2.ListRequest())
    delete = get("data", "default")
    assert not allowed(authz, W1, PERSISTENT_VOLUME_CLAIM, "Delete", delete)
    assert allowed(authz, W1, PERSISTENT_VOLUME, "Get", get("pv-w1"))
    assert not allowed(authz, W1, PERSISTENT_VOLUME, "Get", get("pv-w2"))
    assert allowed(authz, W2, PERSISTENT_VOLUME, "Get", get("pv-w2"))
    assert not allowed(authz, W1, PERSISTENT_VOLUME, "Get", get("absent"))
    for selector, ok in (("spec.nodeName=w1", True), ("spec.nodeName=w2", False), ("", False)):
        request = meta_pb2.WatchRequest(field_selector=selector)
        assert allowed(authz, W1, PERSISTENT_VOLUME, "Watch", request) == ok, selector
        listing = meta_pb2.ListRequest(field_selector=selector)
        assert allowed(authz, W1, PERSISTENT_VOLUME, "List", listing) == ok, selector
    assert not allowed(authz, W1, PERSISTENT_VOLUME, "Delete", get("pv-w1"))
    create = storage_pb2.CreatePersistentVolumeRequest()
    create.persistent_volume.metadata.name = "new"
    assert not allowed(authz, W1, PERSISTENT_VOLUME, "Create", create)


async def test_node_may_only_drop_the_cleanup_finalizer_of_its_own_volume(
    authz: Authorizer,
) -> None:
    mine = await setup(authz)
    done = clone(mine)
    del done.metadata.finalizers[:]
    request = storage_pb2.UpdatePersistentVolumeRequest(persistent_volume=done)
    assert allowed(authz, W1, PERSISTENT_VOLUME, "Update", request)
    # Not another node's PV, not any other change.
    assert not allowed(authz, W2, PERSISTENT_VOLUME, "Update", request)
    theirs = clone(done)
    theirs.metadata.name = "pv-w2"
    stolen = storage_pb2.UpdatePersistentVolumeRequest(persistent_volume=theirs)
    assert not allowed(authz, W1, PERSISTENT_VOLUME, "Update", stolen)
    moved = clone(done)
    moved.spec.local.path = "/etc"
    moved_request = storage_pb2.UpdatePersistentVolumeRequest(persistent_volume=moved)
    assert not allowed(authz, W1, PERSISTENT_VOLUME, "Update", moved_request)
    relabeled = clone(mine)
    relabeled.metadata.labels["x"] = "y"
    label_request = storage_pb2.UpdatePersistentVolumeRequest(persistent_volume=relabeled)
    assert not allowed(authz, W1, PERSISTENT_VOLUME, "Update", label_request)
    status = storage_pb2.UpdatePersistentVolumeRequest(persistent_volume=mine)
    assert not allowed(authz, W1, PERSISTENT_VOLUME, "UpdateStatus", status)
