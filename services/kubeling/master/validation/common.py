"""What every API group's validation shares: the error builders that phrase
problems as Kubernetes does, small field checks, and object metadata rules."""

from __future__ import annotations

import ipaddress
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence

from google.protobuf import json_format, struct_pb2
from google.protobuf.message import Message

from kubeling.api import naming
from kubeling.api.errors import FieldViolation
from kubeling.api.kinds import Kind
from kubeling.v1 import meta_pb2

TOTAL_ANNOTATION_SIZE_LIMIT = 256 * 1024
PROTOCOLS = ("SCTP", "TCP", "UDP")
_STANDARD_FINALIZERS = frozenset({"kubernetes", "orphan", "foregroundDeletion"})
_IMMUTABLE = "field is immutable"

Errors = list[FieldViolation]
# A kind's checks of a whole object, and of what an update may not change.
Validator = Callable[[Message], Errors]
UpdateValidator = Callable[[Message, Message], Errors]


# ------------------------------------------------------------ error builders


def show(value: object) -> str:
    """Render a value the way Kubernetes error messages do (strings quoted)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, struct_pb2.Value):
        return show(json_format.MessageToDict(value))
    if isinstance(value, Message):
        return json.dumps(json_format.MessageToDict(value), sort_keys=True, ensure_ascii=False)
    if isinstance(value, Mapping):
        return json.dumps(dict(value), sort_keys=True, ensure_ascii=False)
    return str(value)


def required(path: str, detail: str = "") -> FieldViolation:
    return FieldViolation(path, f"Required value: {detail}" if detail else "Required value")


def invalid(path: str, value: object, detail: str) -> FieldViolation:
    return FieldViolation(path, f"Invalid value: {show(value)}: {detail}")


def unsupported(path: str, value: str, supported: Sequence[str]) -> FieldViolation:
    shown = ", ".join(show(s) for s in supported)
    return FieldViolation(path, f"Unsupported value: {show(value)}: supported values: {shown}")


def duplicate(path: str, value: object) -> FieldViolation:
    return FieldViolation(path, f"Duplicate value: {show(value)}")


def forbidden(path: str, detail: str) -> FieldViolation:
    return FieldViolation(path, f"Forbidden: {detail}")


def too_many(path: str, actual: int, limit: int) -> FieldViolation:
    return FieldViolation(path, f"Too many: {actual}: must have at most {limit} items")


def one_of(path: str, value: str, supported: Sequence[str]) -> Errors:
    """Required when empty, Unsupported when not one of `supported`."""
    if not value:
        return [required(path)]
    if value not in supported:
        return [unsupported(path, value, supported)]
    return []


def check(path: str, value: str, checker: Callable[[str], list[str]]) -> Errors:
    """One Invalid violation per message a `naming` checker returns."""
    return [invalid(path, value, message) for message in checker(value)]


def unique_name(
    path: str, name: str, checker: Callable[[str], list[str]], seen: set[str]
) -> Errors:
    """`check` of a name that must also differ from the ones in `seen` (it joins them)."""
    errs = check(path, name, checker)
    if name in seen:
        errs.append(duplicate(path, name))
    seen.add(name)
    return errs


def non_negative(path: str, value: int) -> Errors:
    return [] if value >= 0 else [invalid(path, value, "must be greater than or equal to 0")]


def port_number(path: str, value: int, low: int = 1) -> Errors:
    if low <= value <= 65535:
        return []
    return [invalid(path, value, f"must be between {low} and 65535, inclusive")]


def ip_version(text: str) -> int | None:
    """4 or 6 for an IP address, None for anything else."""
    try:
        return ipaddress.ip_address(text).version
    except ValueError:
        return None


# ---------------------------------------------------------------- IntOrString


def int_value(value: struct_pb2.Value) -> int | None:
    """The integer in a number Value, None when it is not a whole number."""
    number = value.number_value
    if not math.isfinite(number) or not number.is_integer():
        return None
    return int(number)


# ------------------------------------------------------------------ metadata


def validate_labels(path: str, labels: Mapping[str, str]) -> Errors:
    errs: Errors = []
    for key in sorted(labels):
        errs += check(path, key, naming.label_key)
        errs += check(path, labels[key], naming.label_value)
    return errs


def validate_annotations(path: str, annotations: Mapping[str, str]) -> Errors:
    errs: Errors = []
    size = 0
    for key in sorted(annotations):
        # Kubernetes checks the lower-cased key, so "Example.com/x" is accepted.
        errs += [invalid(path, key, m) for m in naming.annotation_key(key.lower())]
        size += len(key.encode()) + len(annotations[key].encode())
    if size > TOTAL_ANNOTATION_SIZE_LIMIT:
        errs.append(
            FieldViolation(path, f"Too long: must have at most {TOTAL_ANNOTATION_SIZE_LIMIT} bytes")
        )
    return errs


def validate_finalizers(path: str, finalizers: Iterable[str]) -> Errors:
    errs: Errors = []
    for i, finalizer in enumerate(finalizers):
        item = f"{path}[{i}]"
        problems = check(item, finalizer, naming.label_key)
        errs += problems
        # Unqualified names are reserved for the system's own finalizers.
        if not problems and "/" not in finalizer and finalizer not in _STANDARD_FINALIZERS:
            errs.append(
                invalid(
                    item,
                    finalizer,
                    "name is neither a standard finalizer name nor is it fully qualified",
                )
            )
    return errs


def _owner_references(path: str, refs: Sequence[meta_pb2.OwnerReference]) -> Errors:
    errs: Errors = []
    controllers: list[str] = []
    for i, ref in enumerate(refs):
        item = f"{path}[{i}]"
        for field, value in (
            ("apiVersion", ref.api_version),
            ("kind", ref.kind),
            ("name", ref.name),
            ("uid", ref.uid),
        ):
            if not value:
                errs.append(required(f"{item}.{field}"))
        if ref.HasField("controller") and ref.controller:
            controllers.append(f"{ref.kind}/{ref.name}")
    if len(controllers) > 1:
        # Two controllers would fight over the object.
        errs.append(
            invalid(
                path,
                controllers[1],
                "Only one reference can have Controller set to true. "
                f'Found "true" in references for {" and ".join(controllers)}',
            )
        )
    return errs


def object_meta(kind: Kind, meta: meta_pb2.ObjectMeta) -> Errors:
    errs: Errors = []
    # Services and Namespaces become DNS names, so their names must be one label.
    name_check = naming.dns1123_label if kind.name in ("Namespace", "Service") else None
    if not meta.name:
        errs.append(required("metadata.name", "name or generateName is required"))
    else:
        errs += check("metadata.name", meta.name, name_check or naming.dns1123_subdomain)
    if kind.namespaced:
        if not meta.namespace:
            errs.append(required("metadata.namespace"))
        else:
            errs += check("metadata.namespace", meta.namespace, naming.dns1123_label)
    elif meta.namespace:
        errs.append(forbidden("metadata.namespace", "not allowed on this type"))
    errs += validate_labels("metadata.labels", meta.labels)
    errs += validate_annotations("metadata.annotations", meta.annotations)
    errs += validate_finalizers("metadata.finalizers", meta.finalizers)
    errs += _owner_references("metadata.ownerReferences", meta.owner_references)
    return errs


# -------------------------------------------------------------------- update


def immutable(path: str, new: object, old: object, shown: object = None) -> Errors:
    if new == old:
        return []
    return [invalid(path, new if shown is None else shown, _IMMUTABLE)]


def meta_update(new: meta_pb2.ObjectMeta, old: meta_pb2.ObjectMeta) -> Errors:
    errs = immutable("metadata.name", new.name, old.name)
    errs += immutable("metadata.namespace", new.namespace, old.namespace)
    errs += immutable("metadata.uid", new.uid, old.uid)
    errs += immutable(
        "metadata.creationTimestamp",
        new.creation_timestamp,
        old.creation_timestamp,
        new.creation_timestamp.ToJsonString(),
    )
    return errs
