"""The kinds the API serves: names, message types and gRPC service of each.

One table that the master, the client and the CLI all read, so adding a kind is
adding a row here and its messages in protos/.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from google.protobuf.message import Message

from kubeling.v1 import (
    apps_pb2,
    batch_pb2,
    coordination_pb2,
    core_pb2,
    discovery_pb2,
    storage_pb2,
)

FieldsOf = Callable[[Message], dict[str, str]]


def _meta_fields(obj: Message) -> dict[str, str]:
    meta = obj.metadata  # type: ignore[attr-defined]
    return {"metadata.name": meta.name, "metadata.namespace": meta.namespace}


def _pod_fields(obj: Message) -> dict[str, str]:
    pod: core_pb2.Pod = obj  # type: ignore[assignment]
    return {
        **_meta_fields(pod),
        "spec.nodeName": pod.spec.node_name,
        "spec.restartPolicy": pod.spec.restart_policy,
        "status.phase": pod.status.phase,
        "status.podIP": pod.status.pod_ip,
    }


def _node_fields(obj: Message) -> dict[str, str]:
    node: core_pb2.Node = obj  # type: ignore[assignment]
    return {**_meta_fields(node), "spec.unschedulable": str(node.spec.unschedulable).lower()}


def _event_fields(obj: Message) -> dict[str, str]:
    event: core_pb2.Event = obj  # type: ignore[assignment]
    ref = event.involved_object
    return {
        **_meta_fields(event),
        "involvedObject.kind": ref.kind,
        "involvedObject.name": ref.name,
        "involvedObject.namespace": ref.namespace,
        "involvedObject.uid": ref.uid,
        "reason": event.reason,
        "type": event.type,
    }


def _pv_fields(obj: Message) -> dict[str, str]:
    """`spec.nodeName`: the one node a local PV's nodeAffinity names (kubernetes.io/
    hostname In [NODE]), "" otherwise; a kubelet lists only its own node's PVs."""
    pv: storage_pb2.PersistentVolume = obj  # type: ignore[assignment]
    return {
        **_meta_fields(pv),
        "spec.nodeName": pv_node(pv),
        "spec.storageClassName": pv.spec.storage_class_name,
        "status.phase": pv.status.phase,
    }


HOSTNAME_LABEL = "kubernetes.io/hostname"


def pv_node(pv: storage_pb2.PersistentVolume) -> str:
    """The node a PV lives on when its nodeAffinity is one `kubernetes.io/hostname
    In [NODE]` term (what the local-path provisioner writes), else ""."""
    terms = pv.spec.node_affinity.required.node_selector_terms
    if len(terms) != 1:
        return ""
    for req in terms[0].match_expressions:
        if req.key == HOSTNAME_LABEL and req.operator == "In" and len(req.values) == 1:
            return str(req.values[0])
    return ""


def _pvc_fields(obj: Message) -> dict[str, str]:
    pvc: storage_pb2.PersistentVolumeClaim = obj  # type: ignore[assignment]
    return {**_meta_fields(pvc), "status.phase": pvc.status.phase}


def _service_fields(obj: Message) -> dict[str, str]:
    svc: core_pb2.Service = obj  # type: ignore[assignment]
    return {**_meta_fields(svc), "spec.type": svc.spec.type, "spec.clusterIP": svc.spec.cluster_ip}


@dataclass(frozen=True)
class Kind:
    name: str  # "Pod"
    plural: str  # "pods"
    api_version: str  # "v1", "apps/v1"
    message: type[Message]
    list_message: type[Message]
    watch_event: type[Message]
    create_request: type[Message]
    update_request: type[Message]
    request_field: str  # the object's field in Create/Update requests: "pod"
    namespaced: bool
    has_status: bool
    short_names: tuple[str, ...] = ()
    fields_of: FieldsOf = _meta_fields
    # The gRPC service's name when it is not NAME + "s" ("StorageClasses").
    service_name: str = ""

    @property
    def service(self) -> str:
        """The gRPC service name, e.g. kubeling.v1.Pods."""
        return f"kubeling.v1.{self.service_name or self.name + 's'}"

    @property
    def field_names(self) -> frozenset[str]:
        return frozenset(self.fields_of(self.message()))

    def key(self, namespace: str, name: str) -> str:
        return f"/{self.plural}/{namespace}/{name}" if self.namespaced else f"/{self.plural}/{name}"

    def prefix(self, namespace: str = "") -> str:
        if self.namespaced and namespace:
            return f"/{self.plural}/{namespace}/"
        return f"/{self.plural}/"


def _kind(
    module: object, name: str, plural: str, api_version: str, request_field: str, **kw: object
) -> Kind:
    return Kind(
        name=name,
        plural=plural,
        api_version=api_version,
        message=getattr(module, name),
        list_message=getattr(module, f"{name}List"),
        watch_event=getattr(module, f"{name}WatchEvent"),
        create_request=getattr(module, f"Create{name}Request"),
        update_request=getattr(module, f"Update{name}Request"),
        request_field=request_field,
        **kw,  # type: ignore[arg-type]
    )


NAMESPACE = _kind(
    core_pb2, "Namespace", "namespaces", "v1", "namespace",
    namespaced=False, has_status=True, short_names=("ns",),
)  # fmt: skip
NODE = _kind(
    core_pb2, "Node", "nodes", "v1", "node",
    namespaced=False, has_status=True, short_names=("no",), fields_of=_node_fields,
)  # fmt: skip
POD = _kind(
    core_pb2, "Pod", "pods", "v1", "pod",
    namespaced=True, has_status=True, short_names=("po",), fields_of=_pod_fields,
)  # fmt: skip
SERVICE = _kind(
    core_pb2, "Service", "services", "v1", "service",
    namespaced=True, has_status=True, short_names=("svc",), fields_of=_service_fields,
)  # fmt: skip
EVENT = _kind(
    core_pb2, "Event", "events", "v1", "event",
    namespaced=True, has_status=False, short_names=("ev",), fields_of=_event_fields,
)  # fmt: skip
ENDPOINT_SLICE = _kind(
    discovery_pb2, "EndpointSlice", "endpointslices", "discovery.k8s.io/v1", "endpoint_slice",
    namespaced=True, has_status=False,
)  # fmt: skip
REPLICA_SET = _kind(
    apps_pb2, "ReplicaSet", "replicasets", "apps/v1", "replica_set",
    namespaced=True, has_status=True, short_names=("rs",),
)  # fmt: skip
DEPLOYMENT = _kind(
    apps_pb2, "Deployment", "deployments", "apps/v1", "deployment",
    namespaced=True, has_status=True, short_names=("deploy",),
)  # fmt: skip
DAEMON_SET = _kind(
    apps_pb2, "DaemonSet", "daemonsets", "apps/v1", "daemon_set",
    namespaced=True, has_status=True, short_names=("ds",),
)  # fmt: skip
LEASE = _kind(
    coordination_pb2, "Lease", "leases", "coordination.k8s.io/v1", "lease",
    namespaced=True, has_status=False,
)  # fmt: skip
CONFIG_MAP = _kind(
    core_pb2, "ConfigMap", "configmaps", "v1", "config_map",
    namespaced=True, has_status=False, short_names=("cm",),
)  # fmt: skip
SECRET = _kind(
    core_pb2, "Secret", "secrets", "v1", "secret",
    namespaced=True, has_status=False,
)  # fmt: skip
JOB = _kind(
    batch_pb2, "Job", "jobs", "batch/v1", "job",
    namespaced=True, has_status=True,
)  # fmt: skip
CRON_JOB = _kind(
    batch_pb2, "CronJob", "cronjobs", "batch/v1", "cron_job",
    namespaced=True, has_status=True, short_names=("cj",),
)  # fmt: skip
STATEFUL_SET = _kind(
    apps_pb2, "StatefulSet", "statefulsets", "apps/v1", "stateful_set",
    namespaced=True, has_status=True, short_names=("sts",),
)  # fmt: skip
PERSISTENT_VOLUME = _kind(
    storage_pb2, "PersistentVolume", "persistentvolumes", "v1", "persistent_volume",
    namespaced=False, has_status=True, short_names=("pv",), fields_of=_pv_fields,
)  # fmt: skip
PERSISTENT_VOLUME_CLAIM = _kind(
    storage_pb2, "PersistentVolumeClaim", "persistentvolumeclaims", "v1",
    "persistent_volume_claim",
    namespaced=True, has_status=True, short_names=("pvc",), fields_of=_pvc_fields,
)  # fmt: skip
STORAGE_CLASS = _kind(
    storage_pb2, "StorageClass", "storageclasses", "storage.k8s.io/v1", "storage_class",
    namespaced=False, has_status=False, short_names=("sc",), service_name="StorageClasses",
)  # fmt: skip
CONTROLLER_REVISION = _kind(
    apps_pb2, "ControllerRevision", "controllerrevisions", "apps/v1", "controller_revision",
    namespaced=True, has_status=False,
)  # fmt: skip

ALL_KINDS: tuple[Kind, ...] = (
    NAMESPACE, NODE, POD, SERVICE, EVENT, ENDPOINT_SLICE,
    REPLICA_SET, DEPLOYMENT, DAEMON_SET, LEASE, CONFIG_MAP, SECRET,
    JOB, CRON_JOB, STATEFUL_SET, PERSISTENT_VOLUME, PERSISTENT_VOLUME_CLAIM, STORAGE_CLASS,
    CONTROLLER_REVISION,
)  # fmt: skip


def find_kind(text: str) -> Kind | None:
    """Look a kind up as kubectl does: by kind name, plural, singular or short name."""
    wanted = text.lower()
    for kind in ALL_KINDS:
        names = {kind.name.lower(), kind.plural, *kind.short_names}
        if wanted in names:
            return kind
    return None


def kind_by_api(api_version: str, kind_name: str) -> Kind | None:
    """The kind a manifest's apiVersion and kind name."""
    for kind in ALL_KINDS:
        if kind.name == kind_name and kind.api_version == api_version:
            return kind
    return None
