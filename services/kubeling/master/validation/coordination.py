"""Validation of the coordination API group: Leases."""

from __future__ import annotations

from typing import cast

from google.protobuf.message import Message

from kubeling.master.validation.common import (
    Errors,
    UpdateValidator,
    Validator,
    invalid,
    non_negative,
)
from kubeling.v1 import coordination_pb2


def _lease(obj: Message) -> Errors:
    spec = cast(coordination_pb2.Lease, obj).spec
    errs: Errors = []
    if spec.HasField("lease_duration_seconds") and spec.lease_duration_seconds <= 0:
        errs.append(
            invalid(
                "spec.leaseDurationSeconds", spec.lease_duration_seconds, "must be greater than 0"
            )
        )
    if spec.HasField("lease_transitions"):
        errs += non_negative("spec.leaseTransitions", spec.lease_transitions)
    return errs


VALIDATORS: dict[type[Message], Validator] = {coordination_pb2.Lease: _lease}
UPDATE_VALIDATORS: dict[type[Message], UpdateValidator] = {}
