"""The storage API's vocabulary, shared by the master (default StorageClass,
PVC defaulting), the volume binder, the scheduler's VolumeBinding filter, the
StatefulSet controller, the kubelet and the CLI: Kubernetes' annotation names,
phases, and the local-path provisioner's names.

Local-path volumes (as k3s's local-path-provisioner): one directory per volume on
the node the volume's first pod was scheduled to, described by a PV with
`local.path` and a nodeAffinity naming that node, so every later pod using the
claim goes to the node that holds its data.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

from kubeling.api.quantity import QuantityError, parse_quantity

# StorageClass marked as the one a claim without storageClassName gets.
DEFAULT_CLASS_ANNOTATION = "storageclass.kubernetes.io/is-default-class"
# Set by the scheduler on a WaitForFirstConsumer claim: the node its pod goes to.
SELECTED_NODE_ANNOTATION = "volume.kubernetes.io/selected-node"
# Set by the binder on a claim it asks a provisioner for (Kubernetes' names).
STORAGE_PROVISIONER_ANNOTATION = "volume.kubernetes.io/storage-provisioner"
BETA_STORAGE_PROVISIONER_ANNOTATION = "volume.beta.kubernetes.io/storage-provisioner"
# On a PV the provisioner made: who made it.
PROVISIONED_BY_ANNOTATION = "pv.kubernetes.io/provisioned-by"
# On a bound PV/PVC, as Kubernetes' binder writes them.
BOUND_BY_CONTROLLER_ANNOTATION = "pv.kubernetes.io/bound-by-controller"
BIND_COMPLETED_ANNOTATION = "pv.kubernetes.io/bind-completed"

# The local-path provisioner: the default class, its provisioner name, and the
# finalizer that holds a local-path PV until its node's kubelet removed the directory.
LOCAL_PATH_CLASS = "local-path"
LOCAL_PATH_PROVISIONER = "rancher.io/local-path"
LOCAL_PATH_CLEANUP_FINALIZER = "kubeling.io/local-path-cleanup"
# Directory, under the kubelet's --root-dir, holding local-path volumes.
LOCAL_PATH_SUBDIR = "storage"

# Binding modes and reclaim policies.
IMMEDIATE = "Immediate"
WAIT_FOR_FIRST_CONSUMER = "WaitForFirstConsumer"
BINDING_MODES = (IMMEDIATE, WAIT_FOR_FIRST_CONSUMER)
RECLAIM_DELETE = "Delete"
RECLAIM_RETAIN = "Retain"
RECLAIM_RECYCLE = "Recycle"
ACCESS_MODES = ("ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod")
VOLUME_MODES = ("Filesystem", "Block")

# Phases.
PV_PENDING, PV_AVAILABLE, PV_BOUND, PV_RELEASED, PV_FAILED = (
    "Pending",
    "Available",
    "Bound",
    "Released",
    "Failed",
)
CLAIM_PENDING, CLAIM_BOUND, CLAIM_LOST = "Pending", "Bound", "Lost"


def is_default_class(sc: Any) -> bool:
    return str(sc.metadata.annotations.get(DEFAULT_CLASS_ANNOTATION, "")).lower() == "true"


def binding_mode(sc: Any) -> str:
    return str(sc.volume_binding_mode) if sc.HasField("volume_binding_mode") else IMMEDIATE


def reclaim_policy(sc: Any) -> str:
    return str(sc.reclaim_policy) if sc.HasField("reclaim_policy") else RECLAIM_DELETE


def claim_class(pvc: Any) -> str:
    """The claim's class name ("" when none)."""
    return str(pvc.spec.storage_class_name) if pvc.spec.HasField("storage_class_name") else ""


def storage_of(resources: Any) -> Fraction | None:
    """The "storage" quantity of a capacity or requests map, None when absent or bad."""
    text = resources.get("storage", "")
    if not text:
        return None
    try:
        return parse_quantity(text)
    except QuantityError:
        return None


def _volume_mode(holder: Any) -> str:
    return str(holder.volume_mode) if holder.HasField("volume_mode") else "Filesystem"


def volume_fits(pvc: Any, pv: Any) -> bool:
    """Whether PV `pv` may be bound to claim `pvc`: not being deleted, free (or
    reserved for this claim), same class and volumeMode, the claim's access modes,
    at least the requested storage. Node constraints are the caller's."""
    if pv.metadata.HasField("deletion_timestamp"):
        return False
    ref = pv.spec.claim_ref
    if pv.spec.HasField("claim_ref") and ref.name:
        reserved = ref.namespace == pvc.metadata.namespace and ref.name == pvc.metadata.name
        if not reserved or (ref.uid and ref.uid != pvc.metadata.uid):
            return False
    elif pv.status.phase not in (PV_AVAILABLE, PV_PENDING, ""):
        return False
    if pv.spec.storage_class_name != claim_class(pvc):
        return False
    if not set(pvc.spec.access_modes) <= set(pv.spec.access_modes):
        return False
    if _volume_mode(pv.spec) != _volume_mode(pvc.spec):
        return False
    capacity = storage_of(pv.spec.capacity)
    request = storage_of(pvc.spec.resources.requests) or Fraction(0)
    return capacity is not None and capacity >= request


def provisions_here(sc: Any) -> bool:
    """Whether a class's volumes are made by a provisioner this project runs."""
    return sc is not None and sc.provisioner in LOCAL_PATH_PROVISIONERS


def local_path_dir_name(pvc: Any) -> str:
    """The directory name of a claim's local-path volume, as k3s names it."""
    meta = pvc.metadata
    return f"pvc-{meta.uid}_{meta.namespace}_{meta.name}"


def volume_name_for(pvc: Any) -> str:
    """The PV name a provisioner gives a claim's volume (Kubernetes: pvc-UID)."""
    return f"pvc-{pvc.metadata.uid}"


# On a Node: the directory its kubelet keeps local-path volumes in (the kubelet
# writes it when it registers); the provisioner puts each volume under it.
LOCAL_PATH_DIR_ANNOTATION = "kubeling.io/local-path-dir"
# Where local-path volumes go on a node that does not say (k3s's default place).
DEFAULT_LOCAL_PATH_DIR = "/var/lib/kubeling/storage"
# Provisioners this project implements (k3s's name and our own).
LOCAL_PATH_PROVISIONERS = (LOCAL_PATH_PROVISIONER, "kubeling.io/local-path")
# A class whose volumes are all made by hand (Kubernetes' convention).
NO_PROVISIONER = "kubernetes.io/no-provisioner"
