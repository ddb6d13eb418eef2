"""Validation of the apps API group: Deployments, ReplicaSets, DaemonSets and
StatefulSets, whose pod templates are checked as the core group checks a pod spec
(a StatefulSet's volumeClaimTemplates as the storage group checks a claim)."""

from __future__ import annotations

import re
from typing import cast

from google.protobuf import struct_pb2
from google.protobuf.message import Message

from kubeling.api import naming
from kubeling.api.selectors import SelectorError, selector_from_match
from kubeling.master.validation.common import (
    Errors,
    UpdateValidator,
    Validator,
    check,
    duplicate,
    forbidden,
    immutable,
    int_value,
    invalid,
    non_negative,
    required,
    unsupported,
    validate_annotations,
    validate_labels,
)
from kubeling.master.validation.core import RESTART_POLICIES, pod_spec
from kubeling.master.validation.storage import claim_template_errors
from kubeling.v1 import apps_pb2

_PERCENT_RE = re.compile("[0-9]+%")
_PERCENT_MESSAGE = (
    "a valid percent string must be a numeric string followed by an ending '%' "
    "(e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')"
)


def _int_or_percent(path: str, value: struct_pb2.Value, *, max_percent: bool) -> tuple[int, Errors]:
    """(the count or percentage, problems) of a maxSurge/maxUnavailable value."""
    kind = value.WhichOneof("kind")
    if kind is None:
        return 0, []
    if kind == "number_value":
        number = int_value(value)
        if number is None:
            return 0, [invalid(path, value, "must be an integer")]
        return number, non_negative(path, number)
    if kind == "string_value":
        text = value.string_value
        if not _PERCENT_RE.fullmatch(text):
            return 0, [invalid(path, text, _PERCENT_MESSAGE)]
        percent = int(text[:-1])
        if max_percent and percent > 100:
            return percent, [invalid(path, text, "must not be greater than 100%")]
        return percent, []
    return 0, [invalid(path, value, "must be an integer or a percentage")]


_WorkloadSpec = (
    apps_pb2.ReplicaSetSpec
    | apps_pb2.DeploymentSpec
    | apps_pb2.DaemonSetSpec
    | apps_pb2.StatefulSetSpec
)


def _unavailable_and_surge(
    path: str,
    rolling: apps_pb2.RollingUpdateDeployment | apps_pb2.RollingUpdateDaemonSet,
    *,
    surge_max_percent: bool,
) -> tuple[int, int, Errors]:
    """maxUnavailable and maxSurge (counts or percentages) and their problems."""
    unavailable, u_errs = _int_or_percent(
        f"{path}.maxUnavailable", rolling.max_unavailable, max_percent=True
    )
    surge, s_errs = _int_or_percent(
        f"{path}.maxSurge", rolling.max_surge, max_percent=surge_max_percent
    )
    return unavailable, surge, u_errs + s_errs


def _selector_and_template(noun: str, spec: _WorkloadSpec) -> Errors:
    selector, template = spec.selector, spec.template
    errs: Errors = []
    if not spec.HasField("selector"):
        errs.append(required("spec.selector"))
    elif not selector.match_labels and not selector.match_expressions:
        # An empty selector selects every pod in the namespace.
        errs.append(invalid("spec.selector", selector, f"empty selector is invalid for {noun}"))
    else:
        try:
            parsed = selector_from_match(
                selector.match_labels,
                [(e.key, e.operator, list(e.values)) for e in selector.match_expressions],
            )
        except SelectorError as exc:
            errs.append(invalid("spec.selector", selector, str(exc)))
        else:
            # Otherwise the controller would never see the pods it creates.
            if not parsed.matches(template.metadata.labels):
                errs.append(
                    invalid(
                        "spec.template.metadata.labels",
                        template.metadata.labels,
                        "`selector` does not match template `labels`",
                    )
                )
    errs += validate_labels("spec.template.metadata.labels", template.metadata.labels)
    errs += validate_annotations(
        "spec.template.metadata.annotations", template.metadata.annotations
    )
    errs += pod_spec("spec.template.spec", template.spec)
    # Controllers replace exited pods themselves; the pods must not just stop.
    if template.spec.restart_policy in RESTART_POLICIES and (
        template.spec.restart_policy != "Always"
    ):
        errs.append(
            unsupported(
                "spec.template.spec.restartPolicy", template.spec.restart_policy, ("Always",)
            )
        )
    return errs


def _replica_set(obj: Message) -> Errors:
    spec = cast(apps_pb2.ReplicaSet, obj).spec
    errs = _selector_and_template("replicaset", spec)
    errs += non_negative("spec.replicas", spec.replicas)
    errs += non_negative("spec.minReadySeconds", spec.min_ready_seconds)
    return errs


def _deployment(obj: Message) -> Errors:
    spec = cast(apps_pb2.Deployment, obj).spec
    errs = _selector_and_template("deployment", spec)
    errs += non_negative("spec.replicas", spec.replicas)
    errs += non_negative("spec.minReadySeconds", spec.min_ready_seconds)
    errs += non_negative("spec.revisionHistoryLimit", spec.revision_history_limit)
    if spec.HasField("progress_deadline_seconds"):
        deadline = spec.progress_deadline_seconds
        deadline_errs = non_negative("spec.progressDeadlineSeconds", deadline)
        # A deadline inside minReadySeconds would fail every rollout.
        if not deadline_errs and deadline <= spec.min_ready_seconds:
            deadline_errs.append(
                invalid(
                    "spec.progressDeadlineSeconds", deadline, "must be greater than minReadySeconds"
                )
            )
        errs += deadline_errs
    strategy = spec.strategy
    if strategy.type == "Recreate":
        if strategy.HasField("rolling_update"):
            errs.append(
                forbidden(
                    "spec.strategy.rollingUpdate",
                    "may not be specified when strategy `type` is 'Recreate'",
                )
            )
    elif strategy.type == "RollingUpdate":
        path = "spec.strategy.rollingUpdate"
        rolling = strategy.rolling_update
        unavailable, surge, rolling_errs = _unavailable_and_surge(
            path, rolling, surge_max_percent=False
        )
        errs += rolling_errs
        # Neither adding nor removing a pod means the rollout can never progress.
        if not rolling_errs and unavailable == 0 and surge == 0:
            errs.append(
                invalid(
                    f"{path}.maxUnavailable",
                    rolling.max_unavailable,
                    "may not be 0 when `maxSurge` is 0",
                )
            )
    else:
        errs.append(unsupported("spec.strategy.type", strategy.type, ("Recreate", "RollingUpdate")))
    return errs


def _daemon_set(obj: Message) -> Errors:
    spec = cast(apps_pb2.DaemonSet, obj).spec
    errs = _selector_and_template("daemonset", spec)
    errs += non_negative("spec.minReadySeconds", spec.min_ready_seconds)
    errs += non_negative("spec.revisionHistoryLimit", spec.revision_history_limit)
    strategy = spec.update_strategy
    if strategy.type == "RollingUpdate":
        path = "spec.updateStrategy.rollingUpdate"
        rolling = strategy.rolling_update
        unavailable, surge, rolling_errs = _unavailable_and_surge(
            path, rolling, surge_max_percent=True
        )
        errs += rolling_errs
        if not rolling_errs:
            # One pod per node: a node either surges or goes unavailable, never both.
            if unavailable and surge:
                errs.append(
                    invalid(
                        f"{path}.maxSurge",
                        rolling.max_surge,
                        "may not be set when maxUnavailable is non-zero",
                    )
                )
            elif not unavailable and not surge:
                errs.append(required(f"{path}.maxUnavailable", "cannot be 0 when maxSurge is 0"))
    elif strategy.type != "OnDelete":
        errs.append(
            unsupported("spec.updateStrategy.type", strategy.type, ("RollingUpdate", "OnDelete"))
        )
    return errs


POD_MANAGEMENT_POLICIES = ("OrderedReady", "Parallel")
RETENTION_POLICIES = ("Retain", "Delete")
# What a StatefulSet update may change (Kubernetes' list, in its message).
_STATEFUL_SET_MUTABLE = (
    "replicas",
    "ordinals",
    "template",
    "update_strategy",
    "persistent_volume_claim_retention_policy",
    "min_ready_seconds",
)


def _stateful_set(obj: Message) -> Errors:
    spec = cast(apps_pb2.StatefulSet, obj).spec
    # As Kubernetes: the template is checked with the claim templates as its
    # volumes, so a volumeMount may name a claim template.
    checked = apps_pb2.StatefulSetSpec()
    checked.CopyFrom(spec)
    volumes = {v.name for v in checked.template.spec.volumes}
    for claim in spec.volume_claim_templates:
        if claim.metadata.name and claim.metadata.name not in volumes:
            volume = checked.template.spec.volumes.add(name=claim.metadata.name)
            volume.persistent_volume_claim.claim_name = claim.metadata.name
    errs = _selector_and_template("statefulset", checked)
    errs += non_negative("spec.replicas", spec.replicas)
    errs += non_negative("spec.minReadySeconds", spec.min_ready_seconds)
    errs += non_negative("spec.revisionHistoryLimit", spec.revision_history_limit)
    errs += non_negative("spec.ordinals.start", spec.ordinals.start)
    if not spec.service_name:
        errs.append(required("spec.serviceName"))
    else:
        errs += check("spec.serviceName", spec.service_name, naming.dns1123_label)
    if spec.pod_management_policy not in POD_MANAGEMENT_POLICIES:
        errs.append(
            unsupported(
                "spec.podManagementPolicy", spec.pod_management_policy, POD_MANAGEMENT_POLICIES
            )
        )
    strategy = spec.update_strategy
    if strategy.type == "OnDelete":
        if strategy.HasField("rolling_update"):
            errs.append(
                forbidden(
                    "spec.updateStrategy.rollingUpdate",
                    "only allowed for updateStrategy 'RollingUpdate'",
                )
            )
    elif strategy.type == "RollingUpdate":
        path = "spec.updateStrategy.rollingUpdate"
        rolling = strategy.rolling_update
        errs += non_negative(f"{path}.partition", rolling.partition)
        if rolling.HasField("max_unavailable"):
            unavailable, u_errs = _int_or_percent(
                f"{path}.maxUnavailable", rolling.max_unavailable, max_percent=True
            )
            errs += u_errs
            if not u_errs and unavailable < 1:
                errs.append(
                    invalid(
                        f"{path}.maxUnavailable", rolling.max_unavailable, "must be greater than 0"
                    )
                )
    else:
        errs.append(
            unsupported("spec.updateStrategy.type", strategy.type, ("RollingUpdate", "OnDelete"))
        )
    retention = spec.persistent_volume_claim_retention_policy
    policies = (("whenDeleted", retention.when_deleted), ("whenScaled", retention.when_scaled))
    for name, value in policies:
        path = f"spec.persistentVolumeClaimRetentionPolicy.{name}"
        if value not in RETENTION_POLICIES:
            errs.append(unsupported(path, value, RETENTION_POLICIES))
    names: set[str] = set()
    for i, template in enumerate(spec.volume_claim_templates):
        path = f"spec.volumeClaimTemplates[{i}]"
        errs += claim_template_errors(path, template)
        if template.metadata.name in names:
            errs.append(duplicate(f"{path}.metadata.name", template.metadata.name))
        names.add(template.metadata.name)
    return errs


def _stateful_set_update(new_obj: Message, old_obj: Message) -> Errors:
    new = cast(apps_pb2.StatefulSet, new_obj).spec
    old = cast(apps_pb2.StatefulSet, old_obj).spec
    before, after = apps_pb2.StatefulSetSpec(), apps_pb2.StatefulSetSpec()
    before.CopyFrom(old)
    after.CopyFrom(new)
    for field in _STATEFUL_SET_MUTABLE:
        before.ClearField(field)  # type: ignore[arg-type]
        after.ClearField(field)  # type: ignore[arg-type]
    if before != after:
        return [
            forbidden(
                "spec",
                "updates to statefulset spec for fields other than 'replicas', 'ordinals', "
                "'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and "
                "'minReadySeconds' are forbidden",
            )
        ]
    return []


def _controller_revision(obj: Message) -> Errors:
    revision = cast(apps_pb2.ControllerRevision, obj)
    return non_negative("revision", int(revision.revision))


def _controller_revision_update(new_obj: Message, old_obj: Message) -> Errors:
    new = cast(apps_pb2.ControllerRevision, new_obj)
    old = cast(apps_pb2.ControllerRevision, old_obj)
    # A snapshot: only its revision number may change (a rollback renumbers it).
    return immutable("data", new.data, old.data, shown="...")


def _selector_update(new_obj: Message, old_obj: Message) -> Errors:
    new, old = new_obj.spec.selector, old_obj.spec.selector  # type: ignore[attr-defined]
    # Changing it would orphan the existing pods (or adopt foreign ones).
    return immutable("spec.selector", new, old)


VALIDATORS: dict[type[Message], Validator] = {
    apps_pb2.ReplicaSet: _replica_set,
    apps_pb2.Deployment: _deployment,
    apps_pb2.DaemonSet: _daemon_set,
    apps_pb2.StatefulSet: _stateful_set,
    apps_pb2.ControllerRevision: _controller_revision,
}
UPDATE_VALIDATORS: dict[type[Message], UpdateValidator] = {
    apps_pb2.ReplicaSet: _selector_update,
    apps_pb2.Deployment: _selector_update,
    apps_pb2.DaemonSet: _selector_update,
    apps_pb2.StatefulSet: _stateful_set_update,
    apps_pb2.ControllerRevision: _controller_revision_update,
}
