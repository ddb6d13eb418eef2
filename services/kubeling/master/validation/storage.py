"""Validation of the storage kinds (Kubernetes' rules, its phrasing and field paths):
PersistentVolume, PersistentVolumeClaim (core/v1) and StorageClass (storage.k8s.io/v1).

- A PV has a `storage` capacity, at least one access mode, exactly one source
  (`hostPath` or `local`), and a `local` PV a nodeAffinity (the data is on one
  node). Its source may not change after create.
- A claim asks for access modes and a `storage` request. After create its spec is
  immutable except `resources.requests` growing (expansion), and `volumeName` /
  `storageClassName` being filled in once (the binder binds, defaulting names
  the class) — as Kubernetes' ValidatePersistentVolumeClaimUpdate.
- A StorageClass names its provisioner; provisioner, parameters, reclaimPolicy
  and volumeBindingMode are immutable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import cast

from google.protobuf.message import Message

from kubeling.api import naming
from kubeling.api import storage as st
from kubeling.api.quantity import QuantityError, parse_quantity
from kubeling.master.validation.common import (
    Errors,
    UpdateValidator,
    Validator,
    check,
    duplicate,
    forbidden,
    immutable,
    invalid,
    one_of,
    required,
    unsupported,
)
from kubeling.master.validation.core import _node_selector_requirement
from kubeling.v1 import storage_pb2

PV_RECLAIM_POLICIES = (st.RECLAIM_DELETE, st.RECLAIM_RECYCLE, st.RECLAIM_RETAIN)
CLASS_RECLAIM_POLICIES = (st.RECLAIM_DELETE, st.RECLAIM_RETAIN)


def _access_modes(path: str, modes: Sequence[str]) -> Errors:
    if not modes:
        return [required(path, "at least 1 access mode is required")]
    errs: Errors = []
    seen: set[str] = set()
    for i, mode in enumerate(modes):
        if mode not in st.ACCESS_MODES:
            errs.append(unsupported(f"{path}[{i}]", mode, st.ACCESS_MODES))
        elif mode in seen:
            errs.append(duplicate(f"{path}[{i}]", mode))
        seen.add(mode)
    if "ReadWriteOncePod" in seen and len(seen) > 1:
        errs.append(forbidden(path, "may not use ReadWriteOncePod with other access modes"))
    return errs


def _storage(path: str, resources: Mapping[str, str], what: str) -> Errors:
    """`storage` present, a quantity, and above zero."""
    if "storage" not in resources:
        return [required(f"{path}[storage]", f"{what} must include storage")]
    text = resources["storage"]
    try:
        value = parse_quantity(text)
    except QuantityError:
        return [invalid(f"{path}[storage]", text, "quantities must match the regular expression "
                        "'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'")]  # fmt: skip
    if value <= 0:
        return [invalid(f"{path}[storage]", text, "must be greater than zero")]
    errs: Errors = []
    for name in resources:
        if name != "storage":
            errs.append(unsupported(f"{path}[{name}]", name, ("storage",)))
    return errs


def _absolute(path: str, value: str) -> Errors:
    if not value:
        return [required(path)]
    if not value.startswith("/"):
        return [invalid(path, value, "must be an absolute path")]
    if ".." in value.split("/"):
        return [invalid(path, value, "must not contain '..'")]
    return []


def _volume_node_affinity(path: str, affinity: storage_pb2.VolumeNodeAffinity) -> Errors:
    if not affinity.HasField("required"):
        return [required(f"{path}.required")]
    terms = affinity.required.node_selector_terms
    terms_path = f"{path}.required.nodeSelectorTerms"
    if not terms:
        return [required(terms_path, "must have at least one node selector term")]
    errs: Errors = []
    for i, term in enumerate(terms):
        if not term.match_expressions and not term.match_fields:
            errs.append(required(f"{terms_path}[{i}]", "must have at least one requirement"))
        for j, req in enumerate(term.match_expressions):
            errs += _node_selector_requirement(f"{terms_path}[{i}].matchExpressions[{j}]", req)
    return errs


def _persistent_volume(obj: Message) -> Errors:
    pv = cast(storage_pb2.PersistentVolume, obj)
    spec = pv.spec
    errs = _access_modes("spec.accessModes", spec.access_modes)
    errs += _storage("spec.capacity", spec.capacity, "capacity")
    if spec.persistent_volume_reclaim_policy:
        errs += one_of(
            "spec.persistentVolumeReclaimPolicy",
            spec.persistent_volume_reclaim_policy,
            PV_RECLAIM_POLICIES,
        )
    if spec.storage_class_name:
        errs += check("spec.storageClassName", spec.storage_class_name, naming.dns1123_subdomain)
    if spec.HasField("volume_mode"):
        errs += one_of("spec.volumeMode", spec.volume_mode, st.VOLUME_MODES)
    sources = [n for n, f in (("hostPath", "host_path"), ("local", "local")) if spec.HasField(f)]  # type: ignore[arg-type]
    if not sources:
        errs.append(required("spec", "must specify a volume type"))
    for name in sources[1:]:
        errs.append(forbidden(f"spec.{name}", "may not specify more than 1 volume type"))
    if spec.HasField("host_path"):
        errs += _absolute("spec.hostPath.path", spec.host_path.path)
    if spec.HasField("local"):
        errs += _absolute("spec.local.path", spec.local.path)
        if not spec.HasField("node_affinity"):
            errs.append(required("spec.nodeAffinity", "Local volume requires node affinity"))
    if spec.HasField("node_affinity"):
        errs += _volume_node_affinity("spec.nodeAffinity", spec.node_affinity)
    if spec.HasField("claim_ref") and not spec.claim_ref.name:
        errs.append(required("spec.claimRef.name"))
    return errs


def _persistent_volume_update(new_obj: Message, old_obj: Message) -> Errors:
    new = cast(storage_pb2.PersistentVolume, new_obj).spec
    old = cast(storage_pb2.PersistentVolume, old_obj).spec
    errs = immutable("spec.hostPath", new.host_path, old.host_path)
    errs += immutable("spec.local", new.local, old.local)
    if old.HasField("node_affinity"):
        errs += immutable("spec.nodeAffinity", new.node_affinity, old.node_affinity)
    errs += immutable("spec.volumeMode", new.volume_mode, old.volume_mode)
    return errs


def _claim_spec(path: str, spec: storage_pb2.PersistentVolumeClaimSpec) -> Errors:
    errs = _access_modes(f"{path}.accessModes", spec.access_modes)
    errs += _storage(f"{path}.resources.requests", spec.resources.requests, "resource requests")
    if spec.resources.limits:
        errs += _storage(f"{path}.resources.limits", spec.resources.limits, "resource limits")
    if spec.HasField("storage_class_name") and spec.storage_class_name:
        errs += check(f"{path}.storageClassName", spec.storage_class_name, naming.dns1123_subdomain)
    if spec.HasField("volume_mode"):
        errs += one_of(f"{path}.volumeMode", spec.volume_mode, st.VOLUME_MODES)
    if spec.volume_name:
        errs += check(f"{path}.volumeName", spec.volume_name, naming.dns1123_subdomain)
    return errs


def claim_template_errors(path: str, pvc: storage_pb2.PersistentVolumeClaim) -> Errors:
    """A StatefulSet's volumeClaimTemplates[i]: a valid name and claim spec."""
    errs: Errors = []
    if not pvc.metadata.name:
        errs.append(required(f"{path}.metadata.name"))
    else:
        errs += check(f"{path}.metadata.name", pvc.metadata.name, naming.dns1123_subdomain)
    errs += _claim_spec(f"{path}.spec", pvc.spec)
    return errs


def _persistent_volume_claim(obj: Message) -> Errors:
    return _claim_spec("spec", cast(storage_pb2.PersistentVolumeClaim, obj).spec)


def _persistent_volume_claim_update(new_obj: Message, old_obj: Message) -> Errors:
    new = cast(storage_pb2.PersistentVolumeClaim, new_obj)
    old = cast(storage_pb2.PersistentVolumeClaim, old_obj)
    errs: Errors = []
    # Storage may grow (expansion) but never shrink below what was asked for.
    new_size, old_size = (
        st.storage_of(new.spec.resources.requests),
        st.storage_of(old.spec.resources.requests),
    )
    if new_size is not None and old_size is not None and new_size < old_size:
        errs.append(
            forbidden(
                "spec.resources.requests.storage", "field can not be less than previous value"
            )
        )
    # What else may change: volumeName and storageClassName filled in once.
    compare_new = storage_pb2.PersistentVolumeClaimSpec()
    compare_old = storage_pb2.PersistentVolumeClaimSpec()
    compare_new.CopyFrom(new.spec)
    compare_old.CopyFrom(old.spec)
    compare_new.ClearField("resources")
    compare_old.ClearField("resources")
    if not compare_old.volume_name:
        compare_old.volume_name = compare_new.volume_name
    named_now = compare_new.HasField("storage_class_name")
    if not compare_old.HasField("storage_class_name") and named_now:
        compare_old.storage_class_name = compare_new.storage_class_name
    if compare_new != compare_old:
        errs.append(
            forbidden(
                "spec",
                "spec is immutable after creation except resources.requests for bound claims",
            )
        )
    return errs


def _storage_class(obj: Message) -> Errors:
    sc = cast(storage_pb2.StorageClass, obj)
    errs: Errors = []
    if not sc.provisioner:
        errs.append(required("provisioner"))
    else:
        errs += check("provisioner", sc.provisioner, naming.label_key)
    if sc.HasField("reclaim_policy"):
        errs += one_of("reclaimPolicy", sc.reclaim_policy, CLASS_RECLAIM_POLICIES)
    if sc.HasField("volume_binding_mode"):
        errs += one_of("volumeBindingMode", sc.volume_binding_mode, st.BINDING_MODES)
    return errs


def _storage_class_update(new_obj: Message, old_obj: Message) -> Errors:
    new, old = cast(storage_pb2.StorageClass, new_obj), cast(storage_pb2.StorageClass, old_obj)
    errs = immutable("provisioner", new.provisioner, old.provisioner)
    errs += immutable("parameters", dict(new.parameters), dict(old.parameters))
    errs += immutable("reclaimPolicy", new.reclaim_policy, old.reclaim_policy)
    errs += immutable("volumeBindingMode", new.volume_binding_mode, old.volume_binding_mode)
    return errs


VALIDATORS: dict[type[Message], Validator] = {
    storage_pb2.PersistentVolume: _persistent_volume,
    storage_pb2.PersistentVolumeClaim: _persistent_volume_claim,
    storage_pb2.StorageClass: _storage_class,
}
UPDATE_VALIDATORS: dict[type[Message], UpdateValidator] = {
    storage_pb2.PersistentVolume: _persistent_volume_update,
    storage_pb2.PersistentVolumeClaim: _persistent_volume_claim_update,
    storage_pb2.StorageClass: _storage_class_update,
}
