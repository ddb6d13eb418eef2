"""API validation: what Kubernetes would reject, reported field by field.

`validate` checks a whole (already defaulted) object; `validate_update` checks
only what may not change between the stored object and its replacement (the
registry runs both on update). Every problem is reported, not just the first,
with Kubernetes' field paths (JSON names: `spec.containers[0].image`) and
Kubernetes' phrasing ("Required value", "Unsupported value: ...") so users can
search for the messages they know.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from fractions import Fraction
from typing import cast

from google.protobuf import json_format, struct_pb2
from google.protobuf.message import Message

from kubeling.api import naming
from kubeling.api.errors import FieldViolation
from kubeling.api.kinds import Kind
from kubeling.api.quantity import QuantityError, parse_quantity
from kubeling.api.selectors import SelectorError, selector_from_match
from kubeling.v1 import apps_pb2, coordination_pb2, core_pb2, discovery_pb2, meta_pb2

__all__ = [
    "MAX_ENDPOINTS_PER_SLICE",
    "NODE_PORT_RANGE",
    "TOTAL_ANNOTATION_SIZE_LIMIT",
    "validate",
    "validate_update",
]

# The default --service-node-port-range; the node port allocator uses it too.
NODE_PORT_RANGE = (30000, 32767)
TOTAL_ANNOTATION_SIZE_LIMIT = 256 * 1024
MAX_ENDPOINTS_PER_SLICE = 1000
MAX_ADDRESSES_PER_ENDPOINT = 100
MAX_PORTS_PER_SLICE = 100
MAX_CLIENT_IP_TIMEOUT_SECONDS = 86400

_PROTOCOLS = ("SCTP", "TCP", "UDP")
_PULL_POLICIES = ("Always", "IfNotPresent", "Never")
_RESTART_POLICIES = ("Always", "OnFailure", "Never")
_TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
_STANDARD_CONTAINER_RESOURCES = frozenset({"cpu", "memory", "ephemeral-storage"})
_STANDARD_FINALIZERS = frozenset({"kubernetes", "orphan", "foregroundDeletion"})
_QUANTITY_MESSAGE = (
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
)
_PERCENT_RE = re.compile("[0-9]+%")
_PERCENT_MESSAGE = (
    "a valid percent string must be a numeric string followed by an ending '%' "
    "(e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')"
)
_IMMUTABLE = "field is immutable"

Errors = list[FieldViolation]


# ------------------------------------------------------------ error builders


def _show(value: object) -> str:
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
        return _show(json_format.MessageToDict(value))
    if isinstance(value, Message):
        return json.dumps(json_format.MessageToDict(value), sort_keys=True, ensure_ascii=False)
    if isinstance(value, Mapping):
        return json.dumps(dict(value), sort_keys=True, ensure_ascii=False)
    return str(value)


def _required(path: str, detail: str = "") -> FieldViolation:
    return FieldViolation(path, f"Required value: {detail}" if detail else "Required value")


def _invalid(path: str, value: object, detail: str) -> FieldViolation:
    return FieldViolation(path, f"Invalid value: {_show(value)}: {detail}")


def _unsupported(path: str, value: str, supported: Sequence[str]) -> FieldViolation:
    shown = ", ".join(_show(s) for s in supported)
    return FieldViolation(path, f"Unsupported value: {_show(value)}: supported values: {shown}")


def _duplicate(path: str, value: object) -> FieldViolation:
    return FieldViolation(path, f"Duplicate value: {_show(value)}")


def _forbidden(path: str, detail: str) -> FieldViolation:
    return FieldViolation(path, f"Forbidden: {detail}")


def _too_many(path: str, actual: int, limit: int) -> FieldViolation:
    return FieldViolation(path, f"Too many: {actual}: must have at most {limit} items")


def _check(path: str, value: str, checker: Callable[[str], list[str]]) -> Errors:
    """One Invalid violation per message a `naming` checker returns."""
    return [_invalid(path, value, message) for message in checker(value)]


def _non_negative(path: str, value: int) -> Errors:
    return [] if value >= 0 else [_invalid(path, value, "must be greater than or equal to 0")]


def _port_number(path: str, value: int, low: int = 1) -> Errors:
    if low <= value <= 65535:
        return []
    return [_invalid(path, value, f"must be between {low} and 65535, inclusive")]


def _ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def _ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _cidr(text: str) -> bool:
    # Like Go's net.ParseCIDR: the prefix length is required, host bits may be set.
    if "/" not in text:
        return False
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return True


# ------------------------------------------------------------------ metadata


def _labels(path: str, labels: Mapping[str, str]) -> Errors:
    errs: Errors = []
    for key in sorted(labels):
        errs += _check(path, key, naming.label_key)
        errs += _check(path, labels[key], naming.label_value)
    return errs


def _annotations(path: str, annotations: Mapping[str, str]) -> Errors:
    errs: Errors = []
    size = 0
    for key in sorted(annotations):
        # Kubernetes checks the lower-cased key, so "Example.com/x" is accepted.
        errs += [_invalid(path, key, m) for m in naming.annotation_key(key.lower())]
        size += len(key.encode()) + len(annotations[key].encode())
    if size > TOTAL_ANNOTATION_SIZE_LIMIT:
        errs.append(
            FieldViolation(path, f"Too long: must have at most {TOTAL_ANNOTATION_SIZE_LIMIT} bytes")
        )
    return errs


def _finalizers(path: str, finalizers: Iterable[str]) -> Errors:
    errs: Errors = []
    for i, finalizer in enumerate(finalizers):
        item = f"{path}[{i}]"
        problems = _check(item, finalizer, naming.label_key)
        errs += problems
        # Unqualified names are reserved for the system's own finalizers.
        if not problems and "/" not in finalizer and finalizer not in _STANDARD_FINALIZERS:
            errs.append(
                _invalid(
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
                errs.append(_required(f"{item}.{field}"))
        if ref.HasField("controller") and ref.controller:
            controllers.append(f"{ref.kind}/{ref.name}")
    if len(controllers) > 1:
        # Two controllers would fight over the object.
        errs.append(
            _invalid(
                path,
                controllers[1],
                "Only one reference can have Controller set to true. "
                f'Found "true" in references for {" and ".join(controllers)}',
            )
        )
    return errs


def _object_meta(kind: Kind, meta: meta_pb2.ObjectMeta) -> Errors:
    errs: Errors = []
    # Services and Namespaces become DNS names, so their names must be one label.
    name_check = naming.dns1123_label if kind.name in ("Namespace", "Service") else None
    if not meta.name:
        errs.append(_required("metadata.name", "name or generateName is required"))
    else:
        errs += _check("metadata.name", meta.name, name_check or naming.dns1123_subdomain)
    if kind.namespaced:
        if not meta.namespace:
            errs.append(_required("metadata.namespace"))
        else:
            errs += _check("metadata.namespace", meta.namespace, naming.dns1123_label)
    elif meta.namespace:
        errs.append(_forbidden("metadata.namespace", "not allowed on this type"))
    errs += _labels("metadata.labels", meta.labels)
    errs += _annotations("metadata.annotations", meta.annotations)
    errs += _finalizers("metadata.finalizers", meta.finalizers)
    errs += _owner_references("metadata.ownerReferences", meta.owner_references)
    return errs


# --------------------------------------------------------------- IntOrString


def _int_value(value: struct_pb2.Value) -> int | None:
    """The integer in a number Value, None when it is not a whole number."""
    number = value.number_value
    if not math.isfinite(number) or not number.is_integer():
        return None
    return int(number)


def _port_num_or_name(path: str, value: struct_pb2.Value) -> Errors:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        number = _int_value(value)
        if number is None:
            return [_invalid(path, value, "must be an integer")]
        return _port_number(path, number)
    if kind == "string_value":
        if not value.string_value:
            return [_required(path)]
        return _check(path, value.string_value, naming.port_name)
    if kind is None:
        return [_required(path)]
    return [_invalid(path, value, "must be a port number or a port name")]


def _int_or_percent(path: str, value: struct_pb2.Value, *, max_percent: bool) -> tuple[int, Errors]:
    """(the count or percentage, problems) of a maxSurge/maxUnavailable value."""
    kind = value.WhichOneof("kind")
    if kind is None:
        return 0, []
    if kind == "number_value":
        number = _int_value(value)
        if number is None:
            return 0, [_invalid(path, value, "must be an integer")]
        return number, _non_negative(path, number)
    if kind == "string_value":
        text = value.string_value
        if not _PERCENT_RE.fullmatch(text):
            return 0, [_invalid(path, text, _PERCENT_MESSAGE)]
        percent = int(text[:-1])
        if max_percent and percent > 100:
            return percent, [_invalid(path, text, "must not be greater than 100%")]
        return percent, []
    return 0, [_invalid(path, value, "must be an integer or a percentage")]


# ------------------------------------------------------------------ Pod spec


def _quantity(path: str, text: str) -> tuple[Fraction | None, Errors]:
    try:
        value = parse_quantity(text)
    except QuantityError:
        return None, [_invalid(path, text, _QUANTITY_MESSAGE)]
    if value < 0:
        return None, [_invalid(path, text, "must be greater than or equal to 0")]
    return value, []


def _is_extended_resource(name: str) -> bool:
    # Domain-qualified names outside kubernetes.io are devices (GPUs...), which
    # cannot be shared, so they may not be overcommitted nor split.
    prefix = name.partition("/")[0]
    return "/" in name and not (prefix == "kubernetes.io" or prefix.endswith(".kubernetes.io"))


def _resource_list(path: str, resources: Mapping[str, str]) -> tuple[dict[str, Fraction], Errors]:
    errs: Errors = []
    parsed: dict[str, Fraction] = {}
    for name in sorted(resources):
        item = f"{path}[{name}]"
        name_errs = _check(item, name, naming.label_key)
        if not name_errs and "/" not in name and name not in _STANDARD_CONTAINER_RESOURCES:
            name_errs.append(_invalid(item, name, "must be a standard resource for containers"))
        errs += name_errs
        value, value_errs = _quantity(item, resources[name])
        errs += value_errs
        if value is not None:
            if _is_extended_resource(name) and value.denominator != 1:
                errs.append(_invalid(item, resources[name], "must be an integer"))
            parsed[name] = value
    return parsed, errs


def _resources(path: str, res: core_pb2.ResourceRequirements) -> Errors:
    limits, errs = _resource_list(f"{path}.limits", res.limits)
    requests, request_errs = _resource_list(f"{path}.requests", res.requests)
    errs += request_errs
    for name, request in sorted(requests.items()):
        item = f"{path}.requests[{name}]"
        text = res.requests[name]
        limit = limits.get(name)
        if _is_extended_resource(name):
            if name not in res.limits:
                errs.append(
                    _required(
                        f"{path}.limits[{name}]",
                        "Limit must be set for non overcommitable resources",
                    )
                )
            elif limit is not None and request != limit:
                errs.append(
                    _invalid(item, text, f"must be equal to {name} limit of {res.limits[name]}")
                )
        elif limit is not None and request > limit:
            errs.append(
                _invalid(
                    item, text, f"must be less than or equal to {name} limit of {res.limits[name]}"
                )
            )
    return errs


def _probe(path: str, probe: core_pb2.Probe) -> Errors:
    errs: Errors = []
    handlers = [
        name
        for name, present in (
            ("exec", probe.HasField("exec")),
            ("httpGet", probe.HasField("http_get")),
            ("tcpSocket", probe.HasField("tcp_socket")),
        )
        if present
    ]
    if not handlers:
        errs.append(_required(path, "must specify a handler type"))
    errs += [
        _forbidden(f"{path}.{name}", "may not specify more than 1 handler type")
        for name in handlers[1:]
    ]
    if probe.HasField("exec") and not probe.exec.command:
        errs.append(_required(f"{path}.exec.command"))
    if probe.HasField("http_get"):
        http = probe.http_get
        if not http.path:
            errs.append(_required(f"{path}.httpGet.path"))
        errs += _port_num_or_name(f"{path}.httpGet.port", http.port)
        if http.scheme not in ("HTTP", "HTTPS"):
            errs.append(_unsupported(f"{path}.httpGet.scheme", http.scheme, ("HTTP", "HTTPS")))
        for i, header in enumerate(http.http_headers):
            if not header.name:
                errs.append(_required(f"{path}.httpGet.httpHeaders[{i}].name"))
    if probe.HasField("tcp_socket"):
        errs += _port_num_or_name(f"{path}.tcpSocket.port", probe.tcp_socket.port)
    for field, value in (
        ("initialDelaySeconds", probe.initial_delay_seconds),
        ("timeoutSeconds", probe.timeout_seconds),
        ("periodSeconds", probe.period_seconds),
        ("successThreshold", probe.success_threshold),
        ("failureThreshold", probe.failure_threshold),
    ):
        errs += _non_negative(f"{path}.{field}", value)
    if probe.HasField("termination_grace_period_seconds") and (
        probe.termination_grace_period_seconds <= 0
    ):
        errs.append(
            _invalid(
                f"{path}.terminationGracePeriodSeconds",
                probe.termination_grace_period_seconds,
                "must be greater than 0",
            )
        )
    return errs


def _container_ports(path: str, ports: Sequence[core_pb2.ContainerPort]) -> Errors:
    errs: Errors = []
    names: set[str] = set()
    for i, port in enumerate(ports):
        item = f"{path}[{i}]"
        if port.name:
            errs += _check(f"{item}.name", port.name, naming.port_name)
            if port.name in names:
                errs.append(_duplicate(f"{item}.name", port.name))
            names.add(port.name)
        if port.container_port == 0:
            errs.append(_required(f"{item}.containerPort"))
        else:
            errs += _port_number(f"{item}.containerPort", port.container_port)
        if port.host_port != 0:
            errs += _port_number(f"{item}.hostPort", port.host_port)
        if not port.protocol:
            errs.append(_required(f"{item}.protocol"))
        elif port.protocol not in _PROTOCOLS:
            errs.append(_unsupported(f"{item}.protocol", port.protocol, _PROTOCOLS))
        if port.host_ip and not (_ipv4(port.host_ip) or _ipv6(port.host_ip)):
            errs.append(_invalid(f"{item}.hostIP", port.host_ip, "must be a valid IP address"))
    return errs


def _env(path: str, env: Sequence[core_pb2.EnvVar]) -> Errors:
    errs: Errors = []
    for i, var in enumerate(env):
        item = f"{path}[{i}]"
        if not var.name:
            errs.append(_required(f"{item}.name"))
        else:
            errs += _check(f"{item}.name", var.name, naming.c_identifier)
        if var.HasField("value_from"):
            if var.value:
                errs.append(
                    _invalid(
                        f"{item}.valueFrom", "", "may not be specified when `value` is not empty"
                    )
                )
            if not var.value_from.HasField("field_ref"):
                errs.append(_required(f"{item}.valueFrom", "must specify one of: `fieldRef`"))
            elif not var.value_from.field_ref.field_path:
                errs.append(_required(f"{item}.valueFrom.fieldRef.fieldPath"))
    return errs


def _container(path: str, ctr: core_pb2.Container, names: set[str], *, init: bool) -> Errors:
    errs: Errors = []
    if not ctr.name:
        errs.append(_required(f"{path}.name"))
    else:
        errs += _check(f"{path}.name", ctr.name, naming.dns1123_label)
        if ctr.name in names:
            errs.append(_duplicate(f"{path}.name", ctr.name))
        names.add(ctr.name)
    if not ctr.image:
        errs.append(_required(f"{path}.image"))
    elif any(char.isspace() for char in ctr.image):
        errs.append(_invalid(f"{path}.image", ctr.image, "must not contain whitespace"))
    if not ctr.image_pull_policy:
        errs.append(_required(f"{path}.imagePullPolicy"))
    elif ctr.image_pull_policy not in _PULL_POLICIES:
        errs.append(_unsupported(f"{path}.imagePullPolicy", ctr.image_pull_policy, _PULL_POLICIES))
    errs += _container_ports(f"{path}.ports", ctr.ports)
    errs += _env(f"{path}.env", ctr.env)
    errs += _resources(f"{path}.resources", ctr.resources)
    probes = (
        ("livenessProbe", ctr.HasField("liveness_probe"), ctr.liveness_probe),
        ("readinessProbe", ctr.HasField("readiness_probe"), ctr.readiness_probe),
        ("startupProbe", ctr.HasField("startup_probe"), ctr.startup_probe),
    )
    for field, present, probe in probes:
        if not present:
            continue
        if init:
            # Init containers run to completion one by one: nothing to probe.
            errs.append(_forbidden(f"{path}.{field}", "may not be set for init containers"))
            continue
        errs += _probe(f"{path}.{field}", probe)
        # A liveness or startup probe acts on the first success; more would
        # only delay a restart decision without meaning anything.
        if field != "readinessProbe" and probe.success_threshold != 1:
            errs.append(
                _invalid(f"{path}.{field}.successThreshold", probe.success_threshold, "must be 1")
            )
    return errs


def _node_selector_requirement(path: str, req: core_pb2.NodeSelectorRequirement) -> Errors:
    errs = _check(f"{path}.key", req.key, naming.label_key)
    values = f"{path}.values"
    if req.operator in ("In", "NotIn"):
        if not req.values:
            errs.append(_required(values, "must be specified when `operator` is 'In' or 'NotIn'"))
    elif req.operator in ("Exists", "DoesNotExist"):
        if req.values:
            errs.append(
                _forbidden(
                    values, "may not be specified when `operator` is 'Exists' or 'DoesNotExist'"
                )
            )
    elif req.operator in ("Gt", "Lt"):
        if len(req.values) != 1:
            errs.append(
                _required(values, "must be specified single value when `operator` is 'Lt' or 'Gt'")
            )
        elif not re.fullmatch("[-+]?[0-9]+", req.values[0]):
            errs.append(_invalid(f"{values}[0]", req.values[0], "must be an integer"))
    else:
        errs.append(_invalid(f"{path}.operator", req.operator, "not a valid selector operator"))
    return errs


def _node_field_requirement(path: str, req: core_pb2.NodeSelectorRequirement) -> Errors:
    # Node fields can only be selected by name, and only one name per requirement.
    errs: Errors = []
    if req.key != "metadata.name":
        errs.append(_unsupported(f"{path}.key", req.key, ("metadata.name",)))
    if req.operator not in ("In", "NotIn"):
        errs.append(_invalid(f"{path}.operator", req.operator, "not a valid selector operator"))
    elif len(req.values) != 1:
        errs.append(
            _required(
                f"{path}.values",
                "must be only one value when `operator` is 'In' or 'NotIn' for node field selector",
            )
        )
    return errs


def _affinity(path: str, affinity: core_pb2.Affinity) -> Errors:
    node = affinity.node_affinity
    if not node.HasField("required_during_scheduling_ignored_during_execution"):
        return []
    terms_path = (
        f"{path}.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms"
    )
    terms = node.required_during_scheduling_ignored_during_execution.node_selector_terms
    if not terms:
        return [_required(terms_path, "must have at least one node selector term")]
    errs: Errors = []
    for i, term in enumerate(terms):
        for j, req in enumerate(term.match_expressions):
            errs += _node_selector_requirement(f"{terms_path}[{i}].matchExpressions[{j}]", req)
        for j, req in enumerate(term.match_fields):
            errs += _node_field_requirement(f"{terms_path}[{i}].matchFields[{j}]", req)
    return errs


def _taint_effect(path: str, effect: str, *, allow_empty: bool) -> Errors:
    if not effect:
        return [] if allow_empty else [_required(path)]
    if effect not in _TAINT_EFFECTS:
        return [_unsupported(path, effect, _TAINT_EFFECTS)]
    return []


def _tolerations(path: str, tolerations: Sequence[core_pb2.Toleration]) -> Errors:
    errs: Errors = []
    for i, tol in enumerate(tolerations):
        item = f"{path}[{i}]"
        if tol.key:
            errs += _check(f"{item}.key", tol.key, naming.label_key)
        elif tol.operator != "Exists":
            # An empty key only makes sense as "tolerate everything".
            errs.append(
                _invalid(
                    f"{item}.operator",
                    tol.operator,
                    "operator must be Exists when "
                    '`key` is empty, which means "match all values and all keys"',
                )
            )
        if tol.HasField("toleration_seconds") and tol.effect != "NoExecute":
            # Only NoExecute evicts, so only it has a time to tolerate.
            errs.append(
                _invalid(
                    f"{item}.effect",
                    tol.effect,
                    "effect must be 'NoExecute' when `tolerationSeconds` is set",
                )
            )
        if tol.operator in ("Equal", ""):
            errs += _check(f"{item}.value", tol.value, naming.label_value)
        elif tol.operator == "Exists":
            if tol.value:
                errs.append(
                    _invalid(
                        f"{item}.operator",
                        tol.operator,
                        "value must be empty when `operator` is 'Exists'",
                    )
                )
        else:
            errs.append(_unsupported(f"{item}.operator", tol.operator, ("Equal", "Exists")))
        errs += _taint_effect(f"{item}.effect", tol.effect, allow_empty=True)
    return errs


def _pod_spec(path: str, spec: core_pb2.PodSpec) -> Errors:
    errs: Errors = []
    names: set[str] = set()
    for i, ctr in enumerate(spec.init_containers):
        errs += _container(f"{path}.initContainers[{i}]", ctr, names, init=True)
    if not spec.containers:
        errs.append(_required(f"{path}.containers"))
    for i, ctr in enumerate(spec.containers):
        errs += _container(f"{path}.containers[{i}]", ctr, names, init=False)
    if spec.host_network:
        # With the host's network namespace the container binds the host port itself.
        for i, ctr in enumerate(spec.containers):
            for j, port in enumerate(ctr.ports):
                if port.host_port not in (0, port.container_port):
                    errs.append(
                        _invalid(
                            f"{path}.containers[{i}].ports[{j}].containerPort",
                            port.container_port,
                            "must match `hostPort` when `hostNetwork` is true",
                        )
                    )
    if not spec.restart_policy:
        errs.append(_required(f"{path}.restartPolicy"))
    elif spec.restart_policy not in _RESTART_POLICIES:
        errs.append(_unsupported(f"{path}.restartPolicy", spec.restart_policy, _RESTART_POLICIES))
    errs += _labels(f"{path}.nodeSelector", spec.node_selector)
    errs += _affinity(f"{path}.affinity", spec.affinity)
    errs += _tolerations(f"{path}.tolerations", spec.tolerations)
    if spec.HasField("termination_grace_period_seconds"):
        errs += _non_negative(
            f"{path}.terminationGracePeriodSeconds", spec.termination_grace_period_seconds
        )
    if spec.node_name:
        errs += _check(f"{path}.nodeName", spec.node_name, naming.dns1123_subdomain)
    if spec.scheduler_name:
        errs += _check(f"{path}.schedulerName", spec.scheduler_name, naming.dns1123_subdomain)
    if spec.hostname:
        errs += _check(f"{path}.hostname", spec.hostname, naming.dns1123_label)
    return errs


def _pod(obj: Message) -> Errors:
    return _pod_spec("spec", cast(core_pb2.Pod, obj).spec)


# ------------------------------------------------------------------- Service


def _service(obj: Message) -> Errors:
    spec = cast(core_pb2.Service, obj).spec
    errs: Errors = []
    if spec.type in ("LoadBalancer", "ExternalName"):
        errs.append(
            FieldViolation(
                "spec.type",
                f"Unsupported value: {_show(spec.type)}: "
                'supported values: "ClusterIP", "NodePort" '
                f"({spec.type} services are not supported by kubeling)",
            )
        )
    elif spec.type not in ("ClusterIP", "NodePort"):
        errs.append(_unsupported("spec.type", spec.type, ("ClusterIP", "NodePort")))
    headless = spec.cluster_ip == "None"
    if spec.cluster_ip not in ("", "None") and not _ipv4(spec.cluster_ip):
        errs.append(_invalid("spec.clusterIP", spec.cluster_ip, "must be a valid IPv4 address"))
    if headless and spec.type == "NodePort":
        errs.append(
            _invalid(
                "spec.clusterIP", spec.cluster_ip, "may not be set to 'None' for NodePort services"
            )
        )
    for i, ip in enumerate(spec.cluster_ips):
        if ip != "None" and not _ipv4(ip):
            errs.append(_invalid(f"spec.clusterIPs[{i}]", ip, "must be a valid IPv4 address"))
    if spec.cluster_ip and spec.cluster_ips and spec.cluster_ips[0] != spec.cluster_ip:
        errs.append(
            _invalid("spec.clusterIPs[0]", spec.cluster_ips[0], "must be the same as `clusterIP`")
        )

    if not spec.ports and not headless:
        errs.append(_required("spec.ports"))
    names: set[str] = set()
    seen_ports: set[tuple[int, str]] = set()
    seen_node_ports: set[tuple[int, str]] = set()
    low, high = NODE_PORT_RANGE
    for i, port in enumerate(spec.ports):
        item = f"spec.ports[{i}]"
        if not port.name:
            if len(spec.ports) > 1:
                # Endpoints name their ports after these, so several must be told apart.
                errs.append(_required(f"{item}.name"))
        else:
            errs += _check(f"{item}.name", port.name, naming.dns1123_label)
            if port.name in names:
                errs.append(_duplicate(f"{item}.name", port.name))
            names.add(port.name)
        errs += _port_number(f"{item}.port", port.port)
        if not port.protocol:
            errs.append(_required(f"{item}.protocol"))
        elif port.protocol not in _PROTOCOLS:
            errs.append(_unsupported(f"{item}.protocol", port.protocol, _PROTOCOLS))
        errs += _port_num_or_name(f"{item}.targetPort", port.target_port)
        if (port.port, port.protocol) in seen_ports:
            errs.append(_duplicate(item, f"{port.port}/{port.protocol}"))
        seen_ports.add((port.port, port.protocol))
        if port.node_port:
            node_port = f"{item}.nodePort"
            if spec.type != "NodePort":
                errs.append(_forbidden(node_port, f"may not be used when `type` is '{spec.type}'"))
            elif not low <= port.node_port <= high:
                errs.append(
                    _invalid(
                        node_port,
                        port.node_port,
                        "provided port is not in the "
                        f"valid range. The range of valid ports is {low}-{high}",
                    )
                )
            elif (port.node_port, port.protocol) in seen_node_ports:
                errs.append(_duplicate(node_port, port.node_port))
            seen_node_ports.add((port.node_port, port.protocol))

    if spec.session_affinity not in ("ClientIP", "None"):
        errs.append(
            _unsupported("spec.sessionAffinity", spec.session_affinity, ("ClientIP", "None"))
        )
    client_ip = spec.session_affinity_config.client_ip
    if spec.session_affinity == "ClientIP":
        timeout = client_ip.timeout_seconds
        if not 0 < timeout <= MAX_CLIENT_IP_TIMEOUT_SECONDS:
            errs.append(
                _invalid(
                    "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                    timeout,
                    f"must be between 1 and {MAX_CLIENT_IP_TIMEOUT_SECONDS}, inclusive",
                )
            )
    elif spec.HasField("session_affinity_config") and client_ip.HasField("timeout_seconds"):
        errs.append(
            _invalid(
                "spec.sessionAffinityConfig",
                spec.session_affinity_config,
                "must not be set when session affinity is None",
            )
        )
    errs += _labels("spec.selector", spec.selector)
    for field, value in (
        ("internalTrafficPolicy", spec.internal_traffic_policy),
        ("externalTrafficPolicy", spec.external_traffic_policy),
    ):
        if value and value not in ("Cluster", "Local"):
            errs.append(_unsupported(f"spec.{field}", value, ("Cluster", "Local")))
    return errs


# ------------------------------------------------------------- EndpointSlice

_ADDRESS_TYPES = ("FQDN", "IPv4", "IPv6")


def _endpoint_address(path: str, address_type: str, address: str) -> Errors:
    if address_type == "IPv4":
        return [] if _ipv4(address) else [_invalid(path, address, "must be a valid IPv4 address")]
    if address_type == "IPv6":
        return [] if _ipv6(address) else [_invalid(path, address, "must be a valid IPv6 address")]
    if address_type == "FQDN":
        return _check(path, address, naming.dns1123_subdomain)
    return []  # the address type itself is reported


def _endpoint_slice(obj: Message) -> Errors:
    eps = cast(discovery_pb2.EndpointSlice, obj)
    errs: Errors = []
    if not eps.address_type:
        errs.append(_required("addressType"))
    elif eps.address_type not in _ADDRESS_TYPES:
        errs.append(_unsupported("addressType", eps.address_type, _ADDRESS_TYPES))
    if len(eps.endpoints) > MAX_ENDPOINTS_PER_SLICE:
        errs.append(_too_many("endpoints", len(eps.endpoints), MAX_ENDPOINTS_PER_SLICE))
    for i, endpoint in enumerate(eps.endpoints):
        item = f"endpoints[{i}]"
        addresses = endpoint.addresses
        if not addresses:
            errs.append(_required(f"{item}.addresses", "must contain at least 1 address"))
        elif len(addresses) > MAX_ADDRESSES_PER_ENDPOINT:
            errs.append(_too_many(f"{item}.addresses", len(addresses), MAX_ADDRESSES_PER_ENDPOINT))
        for j, address in enumerate(addresses):
            errs += _endpoint_address(f"{item}.addresses[{j}]", eps.address_type, address)
        if endpoint.hostname:
            errs += _check(f"{item}.hostname", endpoint.hostname, naming.dns1123_label)
        if endpoint.node_name:
            errs += _check(f"{item}.nodeName", endpoint.node_name, naming.dns1123_subdomain)
    if len(eps.ports) > MAX_PORTS_PER_SLICE:
        errs.append(_too_many("ports", len(eps.ports), MAX_PORTS_PER_SLICE))
    names: set[str] = set()
    for i, port in enumerate(eps.ports):
        item = f"ports[{i}]"
        # Named after Service ports, which are DNS labels; "" (one unnamed port) is allowed once.
        if port.name:
            errs += _check(f"{item}.name", port.name, naming.dns1123_label)
        if port.name in names:
            errs.append(_duplicate(f"{item}.name", port.name))
        names.add(port.name)
        if port.HasField("port"):
            errs += _port_number(f"{item}.port", port.port, low=0)
        if not port.protocol:
            errs.append(_required(f"{item}.protocol"))
        elif port.protocol not in _PROTOCOLS:
            errs.append(_unsupported(f"{item}.protocol", port.protocol, _PROTOCOLS))
    return errs


# ----------------------------------------------------------------- Workloads


def _selector_and_template(
    noun: str,
    selector: meta_pb2.LabelSelector,
    has_selector: bool,
    template: core_pb2.PodTemplateSpec,
) -> Errors:
    errs: Errors = []
    if not has_selector:
        errs.append(_required("spec.selector"))
    elif not selector.match_labels and not selector.match_expressions:
        # An empty selector selects every pod in the namespace.
        errs.append(_invalid("spec.selector", selector, f"empty selector is invalid for {noun}"))
    else:
        try:
            parsed = selector_from_match(
                selector.match_labels,
                [(e.key, e.operator, list(e.values)) for e in selector.match_expressions],
            )
        except SelectorError as exc:
            errs.append(_invalid("spec.selector", selector, str(exc)))
        else:
            # Otherwise the controller would never see the pods it creates.
            if not parsed.matches(template.metadata.labels):
                errs.append(
                    _invalid(
                        "spec.template.metadata.labels",
                        template.metadata.labels,
                        "`selector` does not match template `labels`",
                    )
                )
    errs += _labels("spec.template.metadata.labels", template.metadata.labels)
    errs += _annotations("spec.template.metadata.annotations", template.metadata.annotations)
    errs += _pod_spec("spec.template.spec", template.spec)
    # Controllers replace exited pods themselves; the pods must not just stop.
    if template.spec.restart_policy in _RESTART_POLICIES and (
        template.spec.restart_policy != "Always"
    ):
        errs.append(
            _unsupported(
                "spec.template.spec.restartPolicy", template.spec.restart_policy, ("Always",)
            )
        )
    return errs


def _replica_set(obj: Message) -> Errors:
    spec = cast(apps_pb2.ReplicaSet, obj).spec
    errs = _selector_and_template(
        "replicaset", spec.selector, spec.HasField("selector"), spec.template
    )
    errs += _non_negative("spec.replicas", spec.replicas)
    errs += _non_negative("spec.minReadySeconds", spec.min_ready_seconds)
    return errs


def _deployment(obj: Message) -> Errors:
    spec = cast(apps_pb2.Deployment, obj).spec
    errs = _selector_and_template(
        "deployment", spec.selector, spec.HasField("selector"), spec.template
    )
    errs += _non_negative("spec.replicas", spec.replicas)
    errs += _non_negative("spec.minReadySeconds", spec.min_ready_seconds)
    errs += _non_negative("spec.revisionHistoryLimit", spec.revision_history_limit)
    if spec.HasField("progress_deadline_seconds"):
        deadline = spec.progress_deadline_seconds
        deadline_errs = _non_negative("spec.progressDeadlineSeconds", deadline)
        # A deadline inside minReadySeconds would fail every rollout.
        if not deadline_errs and deadline <= spec.min_ready_seconds:
            deadline_errs.append(
                _invalid(
                    "spec.progressDeadlineSeconds", deadline, "must be greater than minReadySeconds"
                )
            )
        errs += deadline_errs
    strategy = spec.strategy
    if strategy.type == "Recreate":
        if strategy.HasField("rolling_update"):
            errs.append(
                _forbidden(
                    "spec.strategy.rollingUpdate",
                    "may not be specified when strategy `type` is 'Recreate'",
                )
            )
    elif strategy.type == "RollingUpdate":
        path = "spec.strategy.rollingUpdate"
        rolling = strategy.rolling_update
        unavailable, u_errs = _int_or_percent(
            f"{path}.maxUnavailable", rolling.max_unavailable, max_percent=True
        )
        surge, s_errs = _int_or_percent(f"{path}.maxSurge", rolling.max_surge, max_percent=False)
        errs += u_errs + s_errs
        # Neither adding nor removing a pod means the rollout can never progress.
        if not u_errs and not s_errs and unavailable == 0 and surge == 0:
            errs.append(
                _invalid(
                    f"{path}.maxUnavailable",
                    rolling.max_unavailable,
                    "may not be 0 when `maxSurge` is 0",
                )
            )
    else:
        errs.append(
            _unsupported("spec.strategy.type", strategy.type, ("Recreate", "RollingUpdate"))
        )
    return errs


def _daemon_set(obj: Message) -> Errors:
    spec = cast(apps_pb2.DaemonSet, obj).spec
    errs = _selector_and_template(
        "daemonset", spec.selector, spec.HasField("selector"), spec.template
    )
    errs += _non_negative("spec.minReadySeconds", spec.min_ready_seconds)
    errs += _non_negative("spec.revisionHistoryLimit", spec.revision_history_limit)
    strategy = spec.update_strategy
    if strategy.type == "RollingUpdate":
        path = "spec.updateStrategy.rollingUpdate"
        rolling = strategy.rolling_update
        unavailable, u_errs = _int_or_percent(
            f"{path}.maxUnavailable", rolling.max_unavailable, max_percent=True
        )
        surge, s_errs = _int_or_percent(f"{path}.maxSurge", rolling.max_surge, max_percent=True)
        errs += u_errs + s_errs
        if not u_errs and not s_errs:
            # One pod per node: a node either surges or goes unavailable, never both.
            if unavailable and surge:
                errs.append(
                    _invalid(
                        f"{path}.maxSurge",
                        rolling.max_surge,
                        "may not be set when maxUnavailable is non-zero",
                    )
                )
            elif not unavailable and not surge:
                errs.append(_required(f"{path}.maxUnavailable", "cannot be 0 when maxSurge is 0"))
    elif strategy.type != "OnDelete":
        errs.append(
            _unsupported("spec.updateStrategy.type", strategy.type, ("RollingUpdate", "OnDelete"))
        )
    return errs


# ---------------------------------------------------- Node, Namespace, others


def _node(obj: Message) -> Errors:
    node = cast(core_pb2.Node, obj)
    spec = node.spec
    errs: Errors = []
    if spec.pod_cidr and not _cidr(spec.pod_cidr):
        errs.append(_invalid("spec.podCIDR", spec.pod_cidr, "must be a valid CIDR"))
    seen_cidrs: set[str] = set()
    for i, cidr in enumerate(spec.pod_cidrs):
        if not _cidr(cidr):
            errs.append(_invalid(f"spec.podCIDRs[{i}]", cidr, "must be a valid CIDR"))
        elif cidr in seen_cidrs:
            errs.append(_duplicate(f"spec.podCIDRs[{i}]", cidr))
        seen_cidrs.add(cidr)
    taints: set[tuple[str, str]] = set()
    for i, taint in enumerate(spec.taints):
        item = f"spec.taints[{i}]"
        if not taint.key:
            errs.append(_required(f"{item}.key"))
        else:
            errs += _check(f"{item}.key", taint.key, naming.label_key)
        errs += _check(f"{item}.value", taint.value, naming.label_value)
        errs += _taint_effect(f"{item}.effect", taint.effect, allow_empty=False)
        if (taint.key, taint.effect) in taints:
            errs.append(
                FieldViolation(
                    item,
                    f"Duplicate value: {_show(taint)}: taints must be "
                    "unique by key and effect pair",
                )
            )
        taints.add((taint.key, taint.effect))
    for field, resources in (
        ("capacity", node.status.capacity),
        ("allocatable", node.status.allocatable),
    ):
        for name in sorted(resources):
            item = f"status.{field}[{name}]"
            errs += _check(item, name, naming.label_key)
            errs += _quantity(item, resources[name])[1]
    return errs


def _namespace(obj: Message) -> Errors:
    return _finalizers("spec.finalizers", cast(core_pb2.Namespace, obj).spec.finalizers)


def _lease(obj: Message) -> Errors:
    spec = cast(coordination_pb2.Lease, obj).spec
    errs: Errors = []
    if spec.HasField("lease_duration_seconds") and spec.lease_duration_seconds <= 0:
        errs.append(
            _invalid(
                "spec.leaseDurationSeconds", spec.lease_duration_seconds, "must be greater than 0"
            )
        )
    if spec.HasField("lease_transitions"):
        errs += _non_negative("spec.leaseTransitions", spec.lease_transitions)
    return errs


def _event(obj: Message) -> Errors:
    event = cast(core_pb2.Event, obj)
    errs: Errors = []
    ref = event.involved_object
    if not ref.name and not ref.kind:
        errs.append(_required("involvedObject", "must set the kind or the name of the object"))
    if event.type not in ("Normal", "Warning"):
        errs.append(_unsupported("type", event.type, ("Normal", "Warning")))
    errs += _non_negative("count", event.count)
    return errs


_VALIDATORS: dict[type[Message], Callable[[Message], Errors]] = {
    core_pb2.Pod: _pod,
    core_pb2.Service: _service,
    core_pb2.Node: _node,
    core_pb2.Namespace: _namespace,
    core_pb2.Event: _event,
    discovery_pb2.EndpointSlice: _endpoint_slice,
    apps_pb2.ReplicaSet: _replica_set,
    apps_pb2.Deployment: _deployment,
    apps_pb2.DaemonSet: _daemon_set,
    coordination_pb2.Lease: _lease,
}


def _check_kind(kind: Kind, *objs: Message) -> None:
    for obj in objs:
        if not isinstance(obj, kind.message):
            raise TypeError(f"expected a {kind.name}, got {type(obj).__name__}")


def validate(kind: Kind, obj: Message) -> list[FieldViolation]:
    """Every problem with a defaulted `kind` object; empty when it is valid."""
    _check_kind(kind, obj)
    errs = _object_meta(kind, obj.metadata)  # type: ignore[attr-defined]
    validator = _VALIDATORS.get(kind.message)
    if validator is not None:
        errs += validator(obj)
    return errs


# -------------------------------------------------------------------- update


def _immutable(path: str, new: object, old: object, shown: object = None) -> Errors:
    if new == old:
        return []
    return [_invalid(path, new if shown is None else shown, _IMMUTABLE)]


def _meta_update(new: meta_pb2.ObjectMeta, old: meta_pb2.ObjectMeta) -> Errors:
    errs = _immutable("metadata.name", new.name, old.name)
    errs += _immutable("metadata.namespace", new.namespace, old.namespace)
    errs += _immutable("metadata.uid", new.uid, old.uid)
    errs += _immutable(
        "metadata.creationTimestamp",
        new.creation_timestamp,
        old.creation_timestamp,
        new.creation_timestamp.ToJsonString(),
    )
    return errs


def _changed_fields(new: Message, old: Message) -> list[str]:
    """JSON names of the top-level fields that differ, to say what was refused."""
    return [
        field.json_name
        for field in new.DESCRIPTOR.fields
        if getattr(new, field.name) != getattr(old, field.name)
    ]


def _pod_update(new_obj: Message, old_obj: Message) -> Errors:
    new, old = cast(core_pb2.Pod, new_obj).spec, cast(core_pb2.Pod, old_obj).spec
    errs: Errors = []
    # Binding sets the node once; moving a running pod is not a thing.
    if old.node_name and new.node_name != old.node_name:
        errs.append(
            _forbidden("spec.nodeName", f"pod is already assigned to node {_show(old.node_name)}")
        )
    # Take the old spec, let through only what may change, and compare.
    allowed = core_pb2.PodSpec()
    allowed.CopyFrom(old)
    allowed.node_name = new.node_name
    for mine, theirs in (
        (allowed.containers, new.containers),
        (allowed.init_containers, new.init_containers),
    ):
        if len(mine) == len(theirs):
            for ctr, updated in zip(mine, theirs, strict=True):
                ctr.image = updated.image
    del allowed.tolerations[:]
    allowed.tolerations.extend(new.tolerations)
    if allowed != new:
        changed = ", ".join(f"spec.{name}" for name in _changed_fields(new, allowed))
        errs.append(
            _forbidden(
                "spec",
                "pod updates may not change fields other than "
                "`spec.containers[*].image`, `spec.initContainers[*].image`, "
                "`spec.tolerations` (only additions to existing tolerations), "
                f"`spec.nodeName` (only to bind the pod); changed: {changed}",
            )
        )
    # Removing a toleration could leave the pod running where it is not tolerated.
    for tol in old.tolerations:
        if not any(_same_toleration(tol, candidate) for candidate in new.tolerations):
            errs.append(
                _forbidden(
                    "spec.tolerations",
                    "existing toleration can not be modified except its tolerationSeconds",
                )
            )
            break
    return errs


def _same_toleration(old: core_pb2.Toleration, new: core_pb2.Toleration) -> bool:
    probe = core_pb2.Toleration()
    probe.CopyFrom(old)
    probe.ClearField("toleration_seconds")
    if new.HasField("toleration_seconds"):
        probe.toleration_seconds = new.toleration_seconds
    return probe == new


def _service_update(new_obj: Message, old_obj: Message) -> Errors:
    new, old = cast(core_pb2.Service, new_obj).spec, cast(core_pb2.Service, old_obj).spec
    # Clients and kube-proxy rules hold on to the IP; the type may change, the IP not.
    if old.cluster_ip:
        return _immutable("spec.clusterIP", new.cluster_ip, old.cluster_ip)
    return []


def _selector_update(new_obj: Message, old_obj: Message) -> Errors:
    new, old = new_obj.spec.selector, old_obj.spec.selector  # type: ignore[attr-defined]
    # Changing it would orphan the existing pods (or adopt foreign ones).
    return _immutable("spec.selector", new, old)


def _node_update(new_obj: Message, old_obj: Message) -> Errors:
    new, old = cast(core_pb2.Node, new_obj).spec, cast(core_pb2.Node, old_obj).spec
    errs: Errors = []
    # Pods already hold addresses from the node's range.
    detail = 'node updates may not change podCIDR except from "" to valid'
    if old.pod_cidr and new.pod_cidr != old.pod_cidr:
        errs.append(_forbidden("spec.podCIDR", detail))
    if old.pod_cidrs and list(new.pod_cidrs) != list(old.pod_cidrs):
        errs.append(_forbidden("spec.podCIDRs", detail))
    return errs


def _endpoint_slice_update(new_obj: Message, old_obj: Message) -> Errors:
    new = cast(discovery_pb2.EndpointSlice, new_obj)
    old = cast(discovery_pb2.EndpointSlice, old_obj)
    return _immutable("addressType", new.address_type, old.address_type)


_UPDATE_VALIDATORS: dict[type[Message], Callable[[Message, Message], Errors]] = {
    core_pb2.Pod: _pod_update,
    core_pb2.Service: _service_update,
    core_pb2.Node: _node_update,
    discovery_pb2.EndpointSlice: _endpoint_slice_update,
    apps_pb2.ReplicaSet: _selector_update,
    apps_pb2.Deployment: _selector_update,
    apps_pb2.DaemonSet: _selector_update,
}


def validate_update(kind: Kind, new: Message, old: Message) -> list[FieldViolation]:
    """What `new` may not change relative to the stored `old` (run `validate` too)."""
    _check_kind(kind, new, old)
    errs = _meta_update(new.metadata, old.metadata)  # type: ignore[attr-defined]
    validator = _UPDATE_VALIDATORS.get(kind.message)
    if validator is not None:
        errs += validator(new, old)
    return errs
