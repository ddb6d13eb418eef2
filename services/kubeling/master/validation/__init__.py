"""API validation: what Kubernetes would reject, reported field by field.

`validate` checks a whole (already defaulted) object; `validate_update` checks
only what may not change between the stored object and its replacement (the
registry runs both on update). Every problem is reported, not just the first,
with Kubernetes' field paths (JSON names: `spec.containers[0].image`) and
Kubernetes' phrasing ("Required value", "Unsupported value: ...") so users can
search for the messages they know.

One module per API group (core, apps, batch, discovery, coordination, storage), as Kubernetes
keeps one validation package per group; each maps its kinds to their checks.
The field helpers and object metadata rules they share live in `common`.
"""

from __future__ import annotations

from google.protobuf.message import Message

from kubeling.api.errors import FieldViolation
from kubeling.api.kinds import Kind
from kubeling.master.validation import apps, batch, coordination, core, discovery, storage
from kubeling.master.validation.common import (
    TOTAL_ANNOTATION_SIZE_LIMIT,
    UpdateValidator,
    Validator,
    meta_update,
    object_meta,
)
from kubeling.master.validation.core import NODE_PORT_RANGE
from kubeling.master.validation.discovery import MAX_ENDPOINTS_PER_SLICE

__all__ = [
    "MAX_ENDPOINTS_PER_SLICE",
    "NODE_PORT_RANGE",
    "TOTAL_ANNOTATION_SIZE_LIMIT",
    "validate",
    "validate_update",
]

_GROUPS = (core, apps, batch, discovery, coordination, storage)
_VALIDATORS: dict[type[Message], Validator] = {
    kind: check for group in _GROUPS for kind, check in group.VALIDATORS.items()
}
_UPDATE_VALIDATORS: dict[type[Message], UpdateValidator] = {
    kind: check for group in _GROUPS for kind, check in group.UPDATE_VALIDATORS.items()
}


def _check_kind(kind: Kind, *objs: Message) -> None:
    for obj in objs:
        if not isinstance(obj, kind.message):
            raise TypeError(f"expected a {kind.name}, got {type(obj).__name__}")


def validate(kind: Kind, obj: Message) -> list[FieldViolation]:
    """Every problem with a defaulted `kind` object; empty when it is valid."""
    _check_kind(kind, obj)
    errs = object_meta(kind, obj.metadata)  # type: ignore[attr-defined]
    validator = _VALIDATORS.get(kind.message)
    if validator is not None:
        errs += validator(obj)
    return errs


def validate_update(kind: Kind, new: Message, old: Message) -> list[FieldViolation]:
    """What `new` may not change relative to the stored `old` (run `validate` too)."""
    _check_kind(kind, new, old)
    errs = meta_update(new.metadata, old.metadata)  # type: ignore[attr-defined]
    validator = _UPDATE_VALIDATORS.get(kind.message)
    if validator is not None:
        errs += validator(new, old)
    return errs
