"""PersistentVolume, PersistentVolumeClaim, StorageClass and StatefulSet in the
API: defaults, validation with Kubernetes' field paths, what an update may not
change, the default `local-path` StorageClass the master makes and the claim
defaulting that names it (Kubernetes' DefaultStorageClass admission)."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from kubeling.api import kinds
from kubeling.api import storage as st
from kubeling.client import Client
from kubeling.master.defaults import apply_defaults
from kubeling.master.validation import validate, validate_update
from kubeling.v1 import storage_pb2
from tests.support.inprocess import in_process_master


def build(kind: kinds.Kind, data: dict[str, Any]) -> Any:
    obj = json_format.ParseDict(data, kind.message())
    apply_defaults(kind, obj)
    return obj


def problems(kind: kinds.Kind, data: dict[str, Any]) -> dict[str, str]:
    return {v.field: v.description for v in validate(kind, build(kind, data))}


def update_problems(kind: kinds.Kind, old: dict[str, Any], new: dict[str, Any]) -> dict[str, str]:
    return {
        v.field: v.description for v in validate_update(kind, build(kind, new), build(kind, old))
    }


def pvc_data(**spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "data", "namespace": "default"},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "1Gi"}},
            **spec,
        },
    }


def pv_data(**spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "pv1"},
        "spec": {
            "capacity": {"storage": "5Gi"},
            "accessModes": ["ReadWriteOnce"],
            "hostPath": {"path": "/srv/pv1"},
            **spec,
        },
    }


TEMPLATE = {
    "metadata": {"labels": {"app": "db"}},
    "spec": {
        "containers": [
            {
                "name": "db",
                "image": "postgres:15",
                # The claim template's name: a volume of every pod.
                "volumeMounts": [{"name": "data", "mountPath": "/var/lib/postgresql"}],
            }
        ]
    },
}


def sts_data(**spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "db", "namespace": "default"},
        "spec": {
            "serviceName": "db",
            "selector": {"matchLabels": {"app": "db"}},
            "template": copy.deepcopy(TEMPLATE),
            "volumeClaimTemplates": [
                {
                    "metadata": {"name": "data"},
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "resources": {"requests": {"storage": "1Gi"}},
                    },
                }
            ],
            **spec,
        },
    }


# ------------------------------------------------------------------ defaults


def test_statefulset_defaults_as_kubernetes() -> None:
    spec = build(kinds.STATEFUL_SET, sts_data()).spec
    assert spec.replicas == 1
    assert spec.pod_management_policy == "OrderedReady"
    assert spec.update_strategy.type == "RollingUpdate"
    assert spec.update_strategy.rolling_update.HasField("partition")
    assert spec.update_strategy.rolling_update.partition == 0
    assert spec.revision_history_limit == 10
    retention = spec.persistent_volume_claim_retention_policy
    assert (retention.when_deleted, retention.when_scaled) == ("Retain", "Retain")
    assert spec.volume_claim_templates[0].spec.volume_mode == "Filesystem"
    assert spec.template.spec.restart_policy == "Always"


def test_storage_defaults() -> None:
    sc = build(kinds.STORAGE_CLASS, {"metadata": {"name": "x"}, "provisioner": "a.io/b"})
    assert (sc.reclaim_policy, sc.volume_binding_mode) == ("Delete", "Immediate")
    pv = build(kinds.PERSISTENT_VOLUME, pv_data())
    assert pv.spec.persistent_volume_reclaim_policy == "Retain"
    assert pv.spec.volume_mode == "Filesystem"
    pvc = build(kinds.PERSISTENT_VOLUME_CLAIM, pvc_data())
    assert pvc.spec.volume_mode == "Filesystem"
    assert not pvc.spec.HasField("storage_class_name")  # the strategy fills it in


# ---------------------------------------------------------------- validation


def test_valid_objects_pass() -> None:
    assert problems(kinds.PERSISTENT_VOLUME_CLAIM, pvc_data()) == {}
    assert problems(kinds.PERSISTENT_VOLUME, pv_data()) == {}
    assert problems(kinds.STATEFUL_SET, sts_data()) == {}


def test_claim_needs_modes_and_storage() -> None:
    data = pvc_data(accessModes=[], resources={"requests": {"storage": "0"}})
    found = problems(kinds.PERSISTENT_VOLUME_CLAIM, data)
    assert found["spec.accessModes"] == "Required value: at least 1 access mode is required"
    assert "must be greater than zero" in found["spec.resources.requests[storage]"]
    data = pvc_data(accessModes=["ReadWriteSometimes"], resources={})
    found = problems(kinds.PERSISTENT_VOLUME_CLAIM, data)
    assert found["spec.accessModes[0]"].startswith('Unsupported value: "ReadWriteSometimes"')
    assert "must include storage" in found["spec.resources.requests[storage]"]


def test_pv_sources() -> None:
    data = pv_data()
    del data["spec"]["hostPath"]
    assert "spec" in problems(kinds.PERSISTENT_VOLUME, data)
    data = pv_data(local={"path": "/data"})
    found = problems(kinds.PERSISTENT_VOLUME, data)
    assert "spec.local" in found  # two sources
    del data["spec"]["hostPath"]
    found = problems(kinds.PERSISTENT_VOLUME, data)
    assert found == {"spec.nodeAffinity": "Required value: Local volume requires node affinity"}
    data["spec"]["nodeAffinity"] = {
        "required": {
            "nodeSelectorTerms": [
                {"matchExpressions": [{"key": st_hostname(), "operator": "In", "values": ["n1"]}]}
            ]
        }
    }
    assert problems(kinds.PERSISTENT_VOLUME, data) == {}
    assert kinds.pv_node(build(kinds.PERSISTENT_VOLUME, data)) == "n1"
    data["spec"]["local"]["path"] = "relative/dir"
    assert "spec.local.path" in problems(kinds.PERSISTENT_VOLUME, data)


def st_hostname() -> str:
    return kinds.HOSTNAME_LABEL


def test_claim_update_only_grows_and_binds() -> None:
    kind = kinds.PERSISTENT_VOLUME_CLAIM
    old = pvc_data(storageClassName="local-path")
    grown = pvc_data(storageClassName="local-path", resources={"requests": {"storage": "2Gi"}})
    assert update_problems(kind, old, grown) == {}
    assert update_problems(kind, grown, old) == {
        "spec.resources.requests.storage": "Forbidden: field can not be less than previous value"
    }
    bound = pvc_data(storageClassName="local-path", volumeName="pvc-1")
    assert update_problems(kind, old, bound) == {}
    # Once bound, the volume may not change; neither may the modes or the class.
    moved = pvc_data(storageClassName="local-path", volumeName="pvc-2")
    assert "spec" in update_problems(kind, bound, moved)
    other = pvc_data(storageClassName="fast")
    assert "spec" in update_problems(kind, old, other)
    modes = pvc_data(storageClassName="local-path", accessModes=["ReadWriteMany"])
    assert "immutable" in update_problems(kind, old, modes)["spec"]


def test_storage_class_rules() -> None:
    kind = kinds.STORAGE_CLASS
    assert problems(kind, {"metadata": {"name": "x"}}) == {"provisioner": "Required value"}
    bad = {"metadata": {"name": "x"}, "provisioner": "a.io/b", "volumeBindingMode": "Later"}
    assert problems(kind, bad)["volumeBindingMode"].startswith('Unsupported value: "Later"')
    old = {"metadata": {"name": "x"}, "provisioner": "a.io/b"}
    new = {"metadata": {"name": "x"}, "provisioner": "a.io/c"}
    assert "immutable" in update_problems(kind, old, new)["provisioner"]


def test_statefulset_rules() -> None:
    kind = kinds.STATEFUL_SET
    found = problems(kind, sts_data(serviceName=""))
    assert found == {"spec.serviceName": "Required value"}
    data = sts_data(selector={"matchLabels": {"app": "other"}})
    assert "spec.template.metadata.labels" in problems(kind, data)
    data = sts_data(podManagementPolicy="Random")
    found = problems(kind, data)
    assert found["spec.podManagementPolicy"].startswith('Unsupported value: "Random"')
    data = sts_data(updateStrategy={"type": "OnDelete", "rollingUpdate": {"partition": 1}})
    assert "spec.updateStrategy.rollingUpdate" in problems(kind, data)
    data = sts_data(updateStrategy={"type": "RollingUpdate", "rollingUpdate": {"partition": -1}})
    assert "spec.updateStrategy.rollingUpdate.partition" in problems(kind, data)
    data = sts_data(persistentVolumeClaimRetentionPolicy={"whenDeleted": "Keep"})
    assert "spec.persistentVolumeClaimRetentionPolicy.whenDeleted" in problems(kind, data)
    data = sts_data()
    data["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] = "Bad_Name"
    data["spec"]["volumeClaimTemplates"][0]["spec"]["accessModes"] = []
    found = problems(kind, data)
    assert "spec.volumeClaimTemplates[0].metadata.name" in found
    assert "spec.volumeClaimTemplates[0].spec.accessModes" in found


def test_statefulset_update_limits() -> None:
    kind = kinds.STATEFUL_SET
    old = sts_data()
    scaled = sts_data(replicas=5, updateStrategy={"rollingUpdate": {"partition": 2}})
    assert update_problems(kind, old, scaled) == {}
    renamed = sts_data(serviceName="other")
    assert "are forbidden" in update_problems(kind, old, renamed)["spec"]
    claims = sts_data()
    claims["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] = "2Gi"
    assert "spec" in update_problems(kind, old, claims)
    # Without the claim template the mount names no volume.
    data = sts_data(volumeClaimTemplates=[])
    found = problems(kind, data)
    assert found == {"spec.template.spec.containers[0].volumeMounts[0].name": 'Not found: "data"'}


def test_pod_claim_volume_needs_a_name() -> None:
    pod = {
        "metadata": {"name": "p", "namespace": "default"},
        "spec": {
            "containers": [{"name": "c", "image": "busybox"}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": ""}}],
        },
    }
    found = problems(kinds.POD, pod)
    assert found == {"spec.volumes[0].persistentVolumeClaim.claimName": "Required value"}


# -------------------------------------------------------------------- master


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Client]:
    async with in_process_master(tmp_path) as client:
        yield client


async def test_master_makes_the_default_local_path_class(api: Client) -> None:
    sc = await api.storage_classes.get(st.LOCAL_PATH_CLASS)
    assert sc.provisioner == st.LOCAL_PATH_PROVISIONER
    assert sc.volume_binding_mode == st.WAIT_FOR_FIRST_CONSUMER
    assert sc.reclaim_policy == "Delete"
    assert st.is_default_class(sc)


async def test_claim_gets_the_default_class_unless_it_names_one(api: Client) -> None:
    pvc = build(kinds.PERSISTENT_VOLUME_CLAIM, pvc_data())
    created = await api.persistent_volume_claims.create(pvc)
    assert created.spec.storage_class_name == st.LOCAL_PATH_CLASS
    assert created.status.phase == "Pending"
    static = build(kinds.PERSISTENT_VOLUME_CLAIM, pvc_data(storageClassName=""))
    static.metadata.name = "static"
    created = await api.persistent_volume_claims.create(static)
    assert created.spec.HasField("storage_class_name")
    assert created.spec.storage_class_name == ""
    # Without a default class, the field stays unset.
    sc = await api.storage_classes.get(st.LOCAL_PATH_CLASS)
    del sc.metadata.annotations[st.DEFAULT_CLASS_ANNOTATION]
    await api.storage_classes.update(sc)
    plain = build(kinds.PERSISTENT_VOLUME_CLAIM, pvc_data())
    plain.metadata.name = "plain"
    created = await api.persistent_volume_claims.create(plain)
    assert not created.spec.HasField("storage_class_name")


async def test_invalid_claim_is_refused_with_its_field(api: Client) -> None:
    pvc = storage_pb2.PersistentVolumeClaim()
    pvc.metadata.name = "bad"
    pvc.metadata.namespace = "default"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await api.persistent_volume_claims.create(pvc)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "spec.accessModes" in (caught.value.details() or "")
