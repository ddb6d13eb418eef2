"""Validation of the core API group: Pods (and the pod spec that workloads
embed, with its volumes, mounts, env sources, security and DNS settings),
Services, Nodes, Namespaces, Events, ConfigMaps and Secrets."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from fractions import Fraction
from typing import cast

from google.protobuf import struct_pb2
from google.protobuf.message import Message

from kubeling.api import naming
from kubeling.api.errors import FieldViolation
from kubeling.api.quantity import QuantityError, parse_quantity
from kubeling.master.validation.common import (
    PROTOCOLS,
    Errors,
    UpdateValidator,
    Validator,
    check,
    duplicate,
    forbidden,
    immutable,
    int_value,
    invalid,
    ip_version,
    non_negative,
    one_of,
    port_number,
    required,
    show,
    unique_name,
    unsupported,
    validate_finalizers,
    validate_labels,
)
from kubeling.v1 import core_pb2

# The default --service-node-port-range; the node port allocator uses it too.
NODE_PORT_RANGE = (30000, 32767)
MAX_CLIENT_IP_TIMEOUT_SECONDS = 86400
_PULL_POLICIES = ("Always", "IfNotPresent", "Never")
RESTART_POLICIES = ("Always", "OnFailure", "Never")
_TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
_STANDARD_CONTAINER_RESOURCES = frozenset({"cpu", "memory", "ephemeral-storage"})
_QUANTITY_MESSAGE = (
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
)
# Deletion marks an object with now + its grace period as a Timestamp, which must
# stay a valid one (before year 10000): longer graces are refused.
MAX_GRACE_PERIOD_SECONDS = 100 * 365 * 24 * 3600
_GRACE_TOO_LONG = f"must be no more than {MAX_GRACE_PERIOD_SECONDS} (100 years)"
# A pod range wider than this would swallow other networks: kubelets route the
# node's pod CIDR, and 0.0.0.0/0 would replace their default route.
_MIN_POD_CIDR_PREFIX = {4: 8, 6: 48}
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")
# A ConfigMap's or Secret's data (keys and values) must fit in one etcd value.
MAX_DATA_SIZE = 1024 * 1024
_CONFIG_KEY_RE = re.compile("[-._a-zA-Z0-9]+")
_CONFIG_KEY_MSG = (
    "a valid config key must consist of alphanumeric characters, '-', '_' or '.' "
    "(e.g. 'key.name', or 'KEY_NAME', or 'key-name', regex used for validation is "
    "'[-._a-zA-Z0-9]+')"
)
_MODE_MSG = "must be a number between 0 and 0777 (octal), both inclusive"
_MAX_ID = 2147483647
_ID_MSG = f"must be between 0 and {_MAX_ID}, inclusive"
DNS_POLICIES = ("ClusterFirstWithHostNet", "ClusterFirst", "Default", "None")
MAX_DNS_NAMESERVERS = 3
MAX_DNS_SEARCH_PATHS = 32
MAX_DNS_SEARCH_LIST_CHARS = 2048
_HOST_PATH_TYPES = (
    "", "DirectoryOrCreate", "Directory", "FileOrCreate", "File", "Socket", "CharDevice",
    "BlockDevice",
)  # fmt: skip
_STORAGE_MEDIA = ("", "Memory")
# What the downward API exposes (Kubernetes' validEnvDownwardAPIFieldPathExpressions
# and validVolumeDownwardAPIFieldPathExpressions); labels/annotations by key too.
_ENV_FIELD_PATHS = (
    "metadata.name", "metadata.namespace", "metadata.uid", "spec.nodeName",
    "spec.serviceAccountName", "status.hostIP", "status.hostIPs", "status.podIP",
    "status.podIPs",
)  # fmt: skip
_VOLUME_FIELD_PATHS = (
    "metadata.name", "metadata.namespace", "metadata.uid", "metadata.labels",
    "metadata.annotations",
)  # fmt: skip
_SUBSCRIPTED_FIELD_RE = re.compile(r"metadata\.(labels|annotations)\['(.*)'\]")
_RESOURCE_FIELDS = (
    "limits.cpu", "limits.memory", "limits.ephemeral-storage",
    "requests.cpu", "requests.memory", "requests.ephemeral-storage",
)  # fmt: skip


# ------------------------------------------------------------------- Pod spec


def _port_num_or_name(path: str, value: struct_pb2.Value) -> Errors:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        number = int_value(value)
        if number is None:
            return [invalid(path, value, "must be an integer")]
        return port_number(path, number)
    if kind == "string_value":
        if not value.string_value:
            return [required(path)]
        return check(path, value.string_value, naming.port_name)
    if kind is None:
        return [required(path)]
    return [invalid(path, value, "must be a port number or a port name")]


def _quantity(path: str, text: str) -> tuple[Fraction | None, Errors]:
    try:
        value = parse_quantity(text)
    except QuantityError:
        return None, [invalid(path, text, _QUANTITY_MESSAGE)]
    if value < 0:
        return None, [invalid(path, text, "must be greater than or equal to 0")]
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
        name_errs = check(item, name, naming.label_key)
        if not name_errs and "/" not in name and name not in _STANDARD_CONTAINER_RESOURCES:
            name_errs.append(invalid(item, name, "must be a standard resource for containers"))
        errs += name_errs
        value, value_errs = _quantity(item, resources[name])
        errs += value_errs
        if value is not None:
            if _is_extended_resource(name) and value.denominator != 1:
                errs.append(invalid(item, resources[name], "must be an integer"))
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
                    required(
                        f"{path}.limits[{name}]",
                        "Limit must be set for non overcommitable resources",
                    )
                )
            elif limit is not None and request != limit:
                errs.append(
                    invalid(item, text, f"must be equal to {name} limit of {res.limits[name]}")
                )
        elif limit is not None and request > limit:
            errs.append(
                invalid(
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
        errs.append(required(path, "must specify a handler type"))
    errs += [
        forbidden(f"{path}.{name}", "may not specify more than 1 handler type")
        for name in handlers[1:]
    ]
    if probe.HasField("exec") and not probe.exec.command:
        errs.append(required(f"{path}.exec.command"))
    if probe.HasField("http_get"):
        http = probe.http_get
        if not http.path:
            errs.append(required(f"{path}.httpGet.path"))
        errs += _port_num_or_name(f"{path}.httpGet.port", http.port)
        if http.scheme not in ("HTTP", "HTTPS"):
            errs.append(unsupported(f"{path}.httpGet.scheme", http.scheme, ("HTTP", "HTTPS")))
        for i, header in enumerate(http.http_headers):
            if not header.name:
                errs.append(required(f"{path}.httpGet.httpHeaders[{i}].name"))
    if probe.HasField("tcp_socket"):
        errs += _port_num_or_name(f"{path}.tcpSocket.port", probe.tcp_socket.port)
    for field, value in (
        ("initialDelaySeconds", probe.initial_delay_seconds),
        ("timeoutSeconds", probe.timeout_seconds),
        ("periodSeconds", probe.period_seconds),
        ("successThreshold", probe.success_threshold),
        ("failureThreshold", probe.failure_threshold),
    ):
        errs += non_negative(f"{path}.{field}", value)
    if probe.HasField("termination_grace_period_seconds") and (
        probe.termination_grace_period_seconds <= 0
    ):
        errs.append(
            invalid(
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
            errs += unique_name(f"{item}.name", port.name, naming.port_name, names)
        if port.container_port == 0:
            errs.append(required(f"{item}.containerPort"))
        else:
            errs += port_number(f"{item}.containerPort", port.container_port)
        if port.host_port != 0:
            errs += port_number(f"{item}.hostPort", port.host_port)
        errs += one_of(f"{item}.protocol", port.protocol, PROTOCOLS)
        if port.host_ip and ip_version(port.host_ip) is None:
            errs.append(invalid(f"{item}.hostIP", port.host_ip, "must be a valid IP address"))
    return errs


def _env(path: str, env: Sequence[core_pb2.EnvVar]) -> Errors:
    errs: Errors = []
    for i, var in enumerate(env):
        item = f"{path}[{i}]"
        if not var.name:
            errs.append(required(f"{item}.name"))
        else:
            errs += check(f"{item}.name", var.name, naming.c_identifier)
        if var.HasField("value_from"):
            if var.value:
                errs.append(
                    invalid(
                        f"{item}.valueFrom", "", "may not be specified when `value` is not empty"
                    )
                )
            errs += _env_source(f"{item}.valueFrom", var.value_from)
    return errs


def _env_source(path: str, source: core_pb2.EnvVarSource) -> Errors:
    present = [
        name
        for name, field in (
            ("fieldRef", "field_ref"),
            ("resourceFieldRef", "resource_field_ref"),
            ("configMapKeyRef", "config_map_key_ref"),
            ("secretKeyRef", "secret_key_ref"),
        )
        if _has(source, field)
    ]
    if not present:
        return [
            required(
                path,
                "must specify one of: `fieldRef`, `resourceFieldRef`, `configMapKeyRef` "
                "or `secretKeyRef`",
            )
        ]
    if len(present) > 1:
        return [invalid(path, "", "may not have more than one field specified at a time")]
    if source.HasField("field_ref"):
        return _field_ref(f"{path}.fieldRef", source.field_ref, _ENV_FIELD_PATHS)
    if source.HasField("resource_field_ref"):
        return _resource_field_ref(f"{path}.resourceFieldRef", source.resource_field_ref, False)
    key_ref = (
        source.config_map_key_ref
        if source.HasField("config_map_key_ref")
        else source.secret_key_ref
    )
    errs: Errors = []
    ref_path = f"{path}.{present[0]}"
    if not key_ref.name:
        errs.append(required(f"{ref_path}.name"))
    else:
        errs += check(f"{ref_path}.name", key_ref.name, naming.dns1123_subdomain)
    if not key_ref.key:
        errs.append(required(f"{ref_path}.key"))
    else:
        errs += check(f"{ref_path}.key", key_ref.key, config_key)
    return errs


def _field_ref(path: str, ref: core_pb2.ObjectFieldSelector, supported: Sequence[str]) -> Errors:
    if ref.api_version not in ("", "v1"):
        return [unsupported(f"{path}.apiVersion", ref.api_version, ("v1",))]
    field_path = ref.field_path
    if not field_path:
        return [required(f"{path}.fieldPath")]
    subscripted = _SUBSCRIPTED_FIELD_RE.fullmatch(field_path)
    if subscripted is not None:
        key = subscripted.group(2)
        return check(f"{path}.fieldPath", key, naming.label_key)
    if field_path not in supported:
        return [unsupported(f"{path}.fieldPath", field_path, supported)]
    return []


def _resource_field_ref(
    path: str, ref: core_pb2.ResourceFieldSelector, container_required: bool
) -> Errors:
    errs: Errors = []
    if container_required and not ref.container_name:
        errs.append(required(f"{path}.containerName"))
    elif ref.container_name:
        errs += check(f"{path}.containerName", ref.container_name, naming.dns1123_label)
    errs += one_of(f"{path}.resource", ref.resource, _RESOURCE_FIELDS)
    if ref.divisor:
        divisor, divisor_errs = _quantity(f"{path}.divisor", ref.divisor)
        errs += divisor_errs
        if divisor is not None and divisor <= 0:
            errs.append(invalid(f"{path}.divisor", ref.divisor, "must be greater than 0"))
    return errs


def config_key(value: str) -> list[str]:
    """Kubernetes' IsConfigMapKey: a ConfigMap or Secret key (a file name when mounted)."""
    errs: list[str] = []
    if len(value) > naming.DNS1123_SUBDOMAIN_MAX_LENGTH:
        errs.append(naming.max_len_error(naming.DNS1123_SUBDOMAIN_MAX_LENGTH))
    if not _CONFIG_KEY_RE.fullmatch(value):
        errs.append(_CONFIG_KEY_MSG)
    if value == ".":
        errs.append("must not be '.'")
    elif value == "..":
        errs.append("must not be '..'")
    elif value.startswith(".."):
        errs.append("must not start with '..'")
    return errs


def _env_from(path: str, sources: Sequence[core_pb2.EnvFromSource]) -> Errors:
    errs: Errors = []
    for i, source in enumerate(sources):
        item = f"{path}[{i}]"
        if source.prefix:
            errs += check(f"{item}.prefix", source.prefix, naming.c_identifier)
        refs = [
            (name, ref)
            for name, field, ref in (
                ("configMapRef", "config_map_ref", source.config_map_ref),
                ("secretRef", "secret_ref", source.secret_ref),
            )
            if _has(source, field)
        ]
        if not refs:
            errs.append(required(item, "must specify one of: `configMapRef` or `secretRef`"))
        elif len(refs) > 1:
            errs.append(invalid(item, "", "may not have more than one field specified at a time"))
        else:
            name, ref = refs[0]
            if not ref.name:
                errs.append(required(f"{item}.{name}.name"))
            else:
                errs += check(f"{item}.{name}.name", ref.name, naming.dns1123_subdomain)
    return errs


def _local_path(path: str, value: str) -> Errors:
    """Kubernetes' validateLocalDescendingPath: relative, never climbing out."""
    errs: Errors = []
    if value.startswith("/"):
        errs.append(invalid(path, value, "must be a relative path"))
    if ".." in value.split("/"):
        errs.append(invalid(path, value, "must not contain '..'"))
    return errs


def _mode(path: str, has: bool, mode: int) -> Errors:
    if has and not 0 <= mode <= 0o777:
        return [invalid(path, mode, _MODE_MSG)]
    return []


def _volume_mounts(
    path: str, mounts: Sequence[core_pb2.VolumeMount], volumes: Mapping[str, core_pb2.Volume]
) -> Errors:
    errs: Errors = []
    mount_paths: set[str] = set()
    for i, mount in enumerate(mounts):
        item = f"{path}[{i}]"
        if not mount.name:
            errs.append(required(f"{item}.name"))
        elif mount.name not in volumes:
            errs.append(FieldViolation(f"{item}.name", f"Not found: {show(mount.name)}"))
        if not mount.mount_path:
            errs.append(required(f"{item}.mountPath"))
        else:
            if not mount.mount_path.startswith("/"):
                errs.append(
                    invalid(f"{item}.mountPath", mount.mount_path, "must be an absolute path")
                )
            if mount.mount_path in mount_paths:
                errs.append(invalid(f"{item}.mountPath", mount.mount_path, "must be unique"))
            mount_paths.add(mount.mount_path)
        if mount.sub_path:
            errs += _local_path(f"{item}.subPath", mount.sub_path)
    return errs


def _security_context(path: str, ctx: core_pb2.SecurityContext) -> Errors:
    errs: Errors = []
    for name, field in (("runAsUser", "run_as_user"), ("runAsGroup", "run_as_group")):
        if _has(ctx, field) and not 0 <= getattr(ctx, field) <= _MAX_ID:
            errs.append(invalid(f"{path}.{name}", getattr(ctx, field), _ID_MSG))
    if (
        ctx.HasField("allow_privilege_escalation")
        and not ctx.allow_privilege_escalation
        and ctx.privileged
    ):
        errs.append(
            invalid(
                path,
                ctx,
                "cannot set `allowPrivilegeEscalation` to false and `privileged` to true",
            )
        )
    for which in ("add", "drop"):
        for j, cap in enumerate(getattr(ctx.capabilities, which)):
            if not cap or any(ch.isspace() for ch in cap):
                errs.append(
                    invalid(f"{path}.capabilities.{which}[{j}]", cap, "must be a capability name")
                )
    return errs


def _container(
    path: str,
    ctr: core_pb2.Container,
    names: set[str],
    volumes: Mapping[str, core_pb2.Volume],
    *,
    init: bool,
) -> Errors:
    errs: Errors = []
    if not ctr.name:
        errs.append(required(f"{path}.name"))
    else:
        errs += unique_name(f"{path}.name", ctr.name, naming.dns1123_label, names)
    if not ctr.image:
        errs.append(required(f"{path}.image"))
    elif any(char.isspace() for char in ctr.image):
        errs.append(invalid(f"{path}.image", ctr.image, "must not contain whitespace"))
    errs += one_of(f"{path}.imagePullPolicy", ctr.image_pull_policy, _PULL_POLICIES)
    errs += _container_ports(f"{path}.ports", ctr.ports)
    errs += _env(f"{path}.env", ctr.env)
    errs += _env_from(f"{path}.envFrom", ctr.env_from)
    errs += _resources(f"{path}.resources", ctr.resources)
    errs += _volume_mounts(f"{path}.volumeMounts", ctr.volume_mounts, volumes)
    if ctr.HasField("security_context"):
        errs += _security_context(f"{path}.securityContext", ctr.security_context)
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
            errs.append(forbidden(f"{path}.{field}", "may not be set for init containers"))
            continue
        errs += _probe(f"{path}.{field}", probe)
        # A liveness or startup probe acts on the first success; more would
        # only delay a restart decision without meaning anything.
        if field != "readinessProbe" and probe.success_threshold != 1:
            errs.append(
                invalid(f"{path}.{field}.successThreshold", probe.success_threshold, "must be 1")
            )
    return errs


def _node_selector_requirement(path: str, req: core_pb2.NodeSelectorRequirement) -> Errors:
    errs = check(f"{path}.key", req.key, naming.label_key)
    values = f"{path}.values"
    if req.operator in ("In", "NotIn"):
        if not req.values:
            errs.append(required(values, "must be specified when `operator` is 'In' or 'NotIn'"))
    elif req.operator in ("Exists", "DoesNotExist"):
        if req.values:
            errs.append(
                forbidden(
                    values, "may not be specified when `operator` is 'Exists' or 'DoesNotExist'"
                )
            )
    elif req.operator in ("Gt", "Lt"):
        if len(req.values) != 1:
            errs.append(
                required(values, "must be specified single value when `operator` is 'Lt' or 'Gt'")
            )
        elif not re.fullmatch("[-+]?[0-9]+", req.values[0]):
            errs.append(invalid(f"{values}[0]", req.values[0], "must be an integer"))
    else:
        errs.append(invalid(f"{path}.operator", req.operator, "not a valid selector operator"))
    return errs


def _node_field_requirement(path: str, req: core_pb2.NodeSelectorRequirement) -> Errors:
    # Node fields can only be selected by name, and only one name per requirement.
    errs: Errors = []
    if req.key != "metadata.name":
        errs.append(unsupported(f"{path}.key", req.key, ("metadata.name",)))
    if req.operator not in ("In", "NotIn"):
        errs.append(invalid(f"{path}.operator", req.operator, "not a valid selector operator"))
    elif len(req.values) != 1:
        errs.append(
            required(
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
        return [required(terms_path, "must have at least one node selector term")]
    errs: Errors = []
    for i, term in enumerate(terms):
        for j, req in enumerate(term.match_expressions):
            errs += _node_selector_requirement(f"{terms_path}[{i}].matchExpressions[{j}]", req)
        for j, req in enumerate(term.match_fields):
            errs += _node_field_requirement(f"{terms_path}[{i}].matchFields[{j}]", req)
    return errs


def _tolerations(path: str, tolerations: Sequence[core_pb2.Toleration]) -> Errors:
    errs: Errors = []
    for i, tol in enumerate(tolerations):
        item = f"{path}[{i}]"
        if tol.key:
            errs += check(f"{item}.key", tol.key, naming.label_key)
        elif tol.operator != "Exists":
            # An empty key only makes sense as "tolerate everything".
            errs.append(
                invalid(
                    f"{item}.operator",
                    tol.operator,
                    "operator must be Exists when "
                    '`key` is empty, which means "match all values and all keys"',
                )
            )
        if tol.HasField("toleration_seconds") and tol.effect != "NoExecute":
            # Only NoExecute evicts, so only it has a time to tolerate.
            errs.append(
                invalid(
                    f"{item}.effect",
                    tol.effect,
                    "effect must be 'NoExecute' when `tolerationSeconds` is set",
                )
            )
        if tol.operator in ("Equal", ""):
            errs += check(f"{item}.value", tol.value, naming.label_value)
        elif tol.operator == "Exists":
            if tol.value:
                errs.append(
                    invalid(
                        f"{item}.operator",
                        tol.operator,
                        "value must be empty when `operator` is 'Exists'",
                    )
                )
        else:
            errs.append(unsupported(f"{item}.operator", tol.operator, ("Equal", "Exists")))
        if tol.effect:  # empty tolerates every effect
            errs += one_of(f"{item}.effect", tol.effect, _TAINT_EFFECTS)
    return errs


_VOLUME_SOURCES = (
    ("emptyDir", "empty_dir"),
    ("hostPath", "host_path"),
    ("configMap", "config_map"),
    ("secret", "secret"),
    ("downwardAPI", "downward_api"),
    ("projected", "projected"),
    ("persistentVolumeClaim", "persistent_volume_claim"),
)


def _key_to_paths(path: str, items: Sequence[core_pb2.KeyToPath]) -> Errors:
    errs: Errors = []
    for i, item in enumerate(items):
        at = f"{path}[{i}]"
        if not item.key:
            errs.append(required(f"{at}.key"))
        else:
            errs += check(f"{at}.key", item.key, config_key)
        errs += _item_path(f"{at}.path", item.path)
        errs += _mode(f"{at}.mode", item.HasField("mode"), item.mode)
    return errs


def _item_path(path: str, value: str) -> Errors:
    if not value:
        return [required(path)]
    errs = _local_path(path, value)
    if value.startswith(".."):
        errs.append(invalid(path, value, "must not start with '..'"))
    return errs


def _downward_files(path: str, items: Sequence[core_pb2.DownwardAPIVolumeFile]) -> Errors:
    errs: Errors = []
    for i, item in enumerate(items):
        at = f"{path}[{i}]"
        errs += _item_path(f"{at}.path", item.path)
        errs += _mode(f"{at}.mode", item.HasField("mode"), item.mode)
        has_field, has_resource = item.HasField("field_ref"), item.HasField("resource_field_ref")
        if has_field and has_resource:
            errs.append(
                invalid(at, "", "fieldRef and resourceFieldRef can not be specified simultaneously")
            )
        elif has_field:
            errs += _field_ref(f"{at}.fieldRef", item.field_ref, _VOLUME_FIELD_PATHS)
        elif has_resource:
            errs += _resource_field_ref(f"{at}.resourceFieldRef", item.resource_field_ref, True)
        else:
            errs.append(required(at, "one of fieldRef and resourceFieldRef is required"))
    return errs


def _projected(path: str, source: core_pb2.ProjectedVolumeSource) -> Errors:
    errs = _mode(f"{path}.defaultMode", source.HasField("default_mode"), source.default_mode)
    paths: set[str] = set()
    for i, projection in enumerate(source.sources):
        at = f"{path}.sources[{i}]"
        kinds = [
            name
            for name, field in (
                ("configMap", "config_map"),
                ("secret", "secret"),
                ("downwardAPI", "downward_api"),
            )
            if _has(projection, field)
        ]
        if not kinds:
            errs.append(required(at, "must specify exactly 1 projection type"))
            continue
        errs += [
            forbidden(f"{at}.{k}", "may not specify more than 1 volume type") for k in kinds[1:]
        ]
        item_paths: list[str]
        if projection.HasField("downward_api"):
            at = f"{at}.downwardAPI"
            errs += _downward_files(f"{at}.items", projection.downward_api.items)
            item_paths = [item.path for item in projection.downward_api.items]
        else:
            ref: core_pb2.ConfigMapProjection | core_pb2.SecretProjection
            if projection.HasField("config_map"):
                ref, at = projection.config_map, f"{at}.configMap"
            else:
                ref, at = projection.secret, f"{at}.secret"
            if not ref.name:
                errs.append(required(f"{at}.name"))
            else:
                errs += check(f"{at}.name", ref.name, naming.dns1123_subdomain)
            errs += _key_to_paths(f"{at}.items", ref.items)
            item_paths = [item.path for item in ref.items]
        # Every source writes into the same directory: two may not claim one file.
        for j, item_path in enumerate(item_paths):
            if item_path in paths:
                errs.append(
                    invalid(f"{at}.items[{j}].path", item_path, "conflicting duplicate paths")
                )
            paths.add(item_path)
    return errs


def _has(message: Message, field: str) -> bool:
    """HasField by a field name held in a variable (the stubs want literals)."""
    return message.HasField(field)


def _volume(path: str, volume: core_pb2.Volume) -> Errors:
    present = [(name, field) for name, field in _VOLUME_SOURCES if _has(volume, field)]
    if not present:
        return [required(path, "must specify a volume type")]
    errs = [
        forbidden(f"{path}.{name}", "may not specify more than 1 volume type")
        for name, _ in present[1:]
    ]
    name, _ = present[0]
    at = f"{path}.{name}"
    if volume.HasField("empty_dir"):
        source = volume.empty_dir
        if source.medium not in _STORAGE_MEDIA:
            errs.append(unsupported(f"{at}.medium", source.medium, _STORAGE_MEDIA))
        if source.size_limit:
            errs += _quantity(f"{at}.sizeLimit", source.size_limit)[1]
    elif volume.HasField("host_path"):
        host = volume.host_path
        if not host.path:
            errs.append(required(f"{at}.path"))
        elif ".." in host.path.split("/"):
            errs.append(invalid(f"{at}.path", host.path, "must not contain '..'"))
        if host.type not in _HOST_PATH_TYPES:
            errs.append(unsupported(f"{at}.type", host.type, _HOST_PATH_TYPES))
    elif volume.HasField("config_map") or volume.HasField("secret"):
        ref: core_pb2.ConfigMapVolumeSource | core_pb2.SecretVolumeSource
        if volume.HasField("config_map"):
            ref, ref_name, name_field = volume.config_map, volume.config_map.name, "name"
        else:
            ref, ref_name, name_field = volume.secret, volume.secret.secret_name, "secretName"
        if not ref_name:
            errs.append(required(f"{at}.{name_field}"))
        else:
            errs += check(f"{at}.{name_field}", ref_name, naming.dns1123_subdomain)
        errs += _key_to_paths(f"{at}.items", ref.items)
        errs += _mode(f"{at}.defaultMode", ref.HasField("default_mode"), ref.default_mode)
    elif volume.HasField("downward_api"):
        downward = volume.downward_api
        errs += _downward_files(f"{at}.items", downward.items)
        errs += _mode(f"{at}.defaultMode", downward.HasField("default_mode"), downward.default_mode)
    elif volume.HasField("persistent_volume_claim"):
        claim = volume.persistent_volume_claim.claim_name
        if not claim:
            errs.append(required(f"{at}.claimName"))
        else:
            errs += check(f"{at}.claimName", claim, naming.dns1123_subdomain)
    else:
        errs += _projected(at, volume.projected)
    return errs


def _volumes(
    path: str, volumes: Sequence[core_pb2.Volume]
) -> tuple[dict[str, core_pb2.Volume], Errors]:
    errs: Errors = []
    names: set[str] = set()
    by_name: dict[str, core_pb2.Volume] = {}
    for i, volume in enumerate(volumes):
        item = f"{path}[{i}]"
        if not volume.name:
            errs.append(required(f"{item}.name"))
        else:
            errs += unique_name(f"{item}.name", volume.name, naming.dns1123_label, names)
            by_name.setdefault(volume.name, volume)
        errs += _volume(item, volume)
    return by_name, errs


def _pod_security_context(path: str, ctx: core_pb2.PodSecurityContext) -> Errors:
    errs: Errors = []
    for name, field in (
        ("runAsUser", "run_as_user"),
        ("runAsGroup", "run_as_group"),
        ("fsGroup", "fs_group"),
    ):
        if _has(ctx, field) and not 0 <= getattr(ctx, field) <= _MAX_ID:
            errs.append(invalid(f"{path}.{name}", getattr(ctx, field), _ID_MSG))
    for i, gid in enumerate(ctx.supplemental_groups):
        if not 0 <= gid <= _MAX_ID:
            errs.append(invalid(f"{path}.supplementalGroups[{i}]", gid, _ID_MSG))
    return errs


def _dns(path: str, spec: core_pb2.PodSpec) -> Errors:
    errs: Errors = []
    # Empty in pod templates, which are not defaulted (master/defaults.py): ClusterFirst.
    if spec.dns_policy and spec.dns_policy not in DNS_POLICIES:
        errs.append(unsupported(f"{path}.dnsPolicy", spec.dns_policy, DNS_POLICIES))
    config_path = f"{path}.dnsConfig"
    config = spec.dns_config
    if spec.dns_policy == "None":
        if not spec.HasField("dns_config"):
            errs.append(required(config_path, "must provide `dnsConfig` when `dnsPolicy` is None"))
            return errs
        if not config.nameservers:
            errs.append(
                required(
                    f"{config_path}.nameservers",
                    "must provide at least one DNS nameserver when `dnsPolicy` is None",
                )
            )
    if len(config.nameservers) > MAX_DNS_NAMESERVERS:
        errs.append(
            invalid(
                f"{config_path}.nameservers",
                ",".join(config.nameservers),
                f"must not have more than {MAX_DNS_NAMESERVERS} nameservers",
            )
        )
    for i, server in enumerate(config.nameservers):
        if ip_version(server) is None:
            errs.append(
                invalid(f"{config_path}.nameservers[{i}]", server, "must be valid IP address")
            )
    if len(config.searches) > MAX_DNS_SEARCH_PATHS:
        errs.append(
            invalid(
                f"{config_path}.searches",
                ",".join(config.searches),
                f"must not have more than {MAX_DNS_SEARCH_PATHS} search paths",
            )
        )
    if len(" ".join(config.searches)) > MAX_DNS_SEARCH_LIST_CHARS:
        errs.append(
            invalid(
                f"{config_path}.searches",
                ",".join(config.searches),
                f"must not have more than {MAX_DNS_SEARCH_LIST_CHARS} characters "
                "(including spaces) in the search list",
            )
        )
    for i, search in enumerate(config.searches):
        # A trailing dot (fully qualified) is allowed, as in resolv.conf.
        errs += check(
            f"{config_path}.searches[{i}]", search.removesuffix("."), naming.dns1123_subdomain
        )
    for i, option in enumerate(config.options):
        if not option.name:
            errs.append(required(f"{config_path}.options[{i}].name"))
    return errs


def pod_spec(path: str, spec: core_pb2.PodSpec) -> Errors:
    errs: Errors = []
    names: set[str] = set()
    volumes, errs = _volumes(f"{path}.volumes", spec.volumes)
    for i, ctr in enumerate(spec.init_containers):
        errs += _container(f"{path}.initContainers[{i}]", ctr, names, volumes, init=True)
    if not spec.containers:
        errs.append(required(f"{path}.containers"))
    for i, ctr in enumerate(spec.containers):
        errs += _container(f"{path}.containers[{i}]", ctr, names, volumes, init=False)
    if spec.HasField("security_context"):
        errs += _pod_security_context(f"{path}.securityContext", spec.security_context)
    errs += _dns(path, spec)
    if spec.subdomain:
        errs += check(f"{path}.subdomain", spec.subdomain, naming.dns1123_label)
    if spec.host_network:
        # With the host's network namespace the container binds the host port itself.
        for i, ctr in enumerate(spec.containers):
            for j, port in enumerate(ctr.ports):
                if port.host_port not in (0, port.container_port):
                    errs.append(
                        invalid(
                            f"{path}.containers[{i}].ports[{j}].containerPort",
                            port.container_port,
                            "must match `hostPort` when `hostNetwork` is true",
                        )
                    )
    errs += one_of(f"{path}.restartPolicy", spec.restart_policy, RESTART_POLICIES)
    errs += validate_labels(f"{path}.nodeSelector", spec.node_selector)
    errs += _affinity(f"{path}.affinity", spec.affinity)
    errs += _tolerations(f"{path}.tolerations", spec.tolerations)
    if spec.HasField("termination_grace_period_seconds"):
        grace = spec.termination_grace_period_seconds
        errs += non_negative(f"{path}.terminationGracePeriodSeconds", grace)
        if grace > MAX_GRACE_PERIOD_SECONDS:
            errs.append(invalid(f"{path}.terminationGracePeriodSeconds", grace, _GRACE_TOO_LONG))
    if spec.node_name:
        errs += check(f"{path}.nodeName", spec.node_name, naming.dns1123_subdomain)
    if spec.scheduler_name:
        errs += check(f"{path}.schedulerName", spec.scheduler_name, naming.dns1123_subdomain)
    if spec.hostname:
        errs += check(f"{path}.hostname", spec.hostname, naming.dns1123_label)
    return errs


def _pod(obj: Message) -> Errors:
    return pod_spec("spec", cast(core_pb2.Pod, obj).spec)


# -------------------------------------------------------------------- Service


def _service(obj: Message) -> Errors:
    spec = cast(core_pb2.Service, obj).spec
    errs: Errors = []
    if spec.type not in SERVICE_TYPES:
        errs.append(unsupported("spec.type", spec.type, SERVICE_TYPES))
    external_name = spec.type == "ExternalName"
    if external_name:
        if not spec.external_name:
            errs.append(required("spec.externalName"))
        else:
            # A fully qualified name may end with a dot, as in DNS.
            errs += check(
                "spec.externalName", spec.external_name.removesuffix("."), naming.dns1123_subdomain
            )
        if spec.cluster_ip:
            errs.append(forbidden("spec.clusterIP", "may not be set for ExternalName services"))
        if spec.cluster_ips:
            errs.append(forbidden("spec.clusterIPs", "may not be set for ExternalName services"))
    elif spec.external_name:
        errs.append(forbidden("spec.externalName", f"may not be set when `type` is '{spec.type}'"))
    for i, ip in enumerate(spec.external_ips):
        if ip_version(ip) is None:
            errs.append(invalid(f"spec.externalIPs[{i}]", ip, "must be a valid IP address"))
    if spec.load_balancer_ip and spec.type != "LoadBalancer":
        errs.append(
            forbidden("spec.loadBalancerIP", f"may not be used when `type` is '{spec.type}'")
        )
    elif spec.load_balancer_ip and ip_version(spec.load_balancer_ip) is None:
        errs.append(
            invalid("spec.loadBalancerIP", spec.load_balancer_ip, "must be a valid IP address")
        )
    headless = spec.cluster_ip == "None"
    if spec.cluster_ip not in ("", "None") and ip_version(spec.cluster_ip) != 4:
        errs.append(invalid("spec.clusterIP", spec.cluster_ip, "must be a valid IPv4 address"))
    if headless and spec.type in ("NodePort", "LoadBalancer"):
        errs.append(
            invalid(
                "spec.clusterIP",
                spec.cluster_ip,
                f"may not be set to 'None' for {spec.type} services",
            )
        )
    for i, ip in enumerate(spec.cluster_ips):
        if ip != "None" and ip_version(ip) != 4:
            errs.append(invalid(f"spec.clusterIPs[{i}]", ip, "must be a valid IPv4 address"))
    if spec.cluster_ip and spec.cluster_ips and spec.cluster_ips[0] != spec.cluster_ip:
        errs.append(
            invalid("spec.clusterIPs[0]", spec.cluster_ips[0], "must be the same as `clusterIP`")
        )

    if not spec.ports and not headless and not external_name:
        errs.append(required("spec.ports"))
    names: set[str] = set()
    seen_ports: set[tuple[int, str]] = set()
    seen_node_ports: set[tuple[int, str]] = set()
    low, high = NODE_PORT_RANGE
    for i, port in enumerate(spec.ports):
        item = f"spec.ports[{i}]"
        if not port.name:
            if len(spec.ports) > 1:
                # Endpoints name their ports after these, so several must be told apart.
                errs.append(required(f"{item}.name"))
        else:
            errs += unique_name(f"{item}.name", port.name, naming.dns1123_label, names)
        errs += port_number(f"{item}.port", port.port)
        errs += one_of(f"{item}.protocol", port.protocol, PROTOCOLS)
        errs += _port_num_or_name(f"{item}.targetPort", port.target_port)
        if (port.port, port.protocol) in seen_ports:
            errs.append(duplicate(item, f"{port.port}/{port.protocol}"))
        seen_ports.add((port.port, port.protocol))
        if port.node_port:
            node_port = f"{item}.nodePort"
            if spec.type not in ("NodePort", "LoadBalancer"):
                errs.append(forbidden(node_port, f"may not be used when `type` is '{spec.type}'"))
            elif not low <= port.node_port <= high:
                errs.append(
                    invalid(
                        node_port,
                        port.node_port,
                        "provided port is not in the "
                        f"valid range. The range of valid ports is {low}-{high}",
                    )
                )
            elif (port.node_port, port.protocol) in seen_node_ports:
                errs.append(duplicate(node_port, port.node_port))
            seen_node_ports.add((port.node_port, port.protocol))

    if spec.session_affinity not in ("ClientIP", "None"):
        errs.append(
            unsupported("spec.sessionAffinity", spec.session_affinity, ("ClientIP", "None"))
        )
    client_ip = spec.session_affinity_config.client_ip
    if spec.session_affinity == "ClientIP":
        timeout = client_ip.timeout_seconds
        if not 0 < timeout <= MAX_CLIENT_IP_TIMEOUT_SECONDS:
            errs.append(
                invalid(
                    "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                    timeout,
                    f"must be between 1 and {MAX_CLIENT_IP_TIMEOUT_SECONDS}, inclusive",
                )
            )
    elif spec.HasField("session_affinity_config") and client_ip.HasField("timeout_seconds"):
        errs.append(
            invalid(
                "spec.sessionAffinityConfig",
                spec.session_affinity_config,
                "must not be set when session affinity is None",
            )
        )
    errs += validate_labels("spec.selector", spec.selector)
    for field, value in (
        ("internalTrafficPolicy", spec.internal_traffic_policy),
        ("externalTrafficPolicy", spec.external_traffic_policy),
    ):
        if value and value not in ("Cluster", "Local"):
            errs.append(unsupported(f"spec.{field}", value, ("Cluster", "Local")))
    return errs


# ----------------------------------------------------- Node, Namespace, Event


def _parse_cidr(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    # Like Go's net.ParseCIDR: the prefix length is required, host bits may be set.
    if "/" not in text:
        return None
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def _pod_cidr(path: str, text: str) -> Errors:
    network = _parse_cidr(text)
    if network is None:
        return [invalid(path, text, "must be a valid CIDR")]
    if network.network_address != ipaddress.ip_interface(text).ip:
        # Routes and bridges are built from the range, so it must name it exactly.
        detail = f"must be a network address with no host bits set (did you mean {network}?)"
        return [invalid(path, text, detail)]
    minimum = _MIN_POD_CIDR_PREFIX[network.version]
    if network.prefixlen < minimum:
        return [
            invalid(
                path,
                text,
                f"must have a prefix length of at least {minimum} for IPv{network.version}: "
                "a pod range this wide would cover the node's other routes",
            )
        ]
    return []


# Node addresses: the master dials them (Exec, Logs) and kubelets route pod ranges
# through them, so an address that means "this machine" or "everyone" is refused.
NODE_IP_ADDRESS_TYPES = ("InternalIP", "ExternalIP")
NODE_DNS_ADDRESS_TYPES = ("Hostname", "InternalDNS", "ExternalDNS")
_LOOPBACK = "may not be in the loopback range (127.0.0.0/8, ::1/128)"


def _special_ip(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """Why `ip` cannot be a node's address ("" if it can), as Kubernetes words it;
    loopback is judged separately (node_loopback_addresses)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return _special_ip(ip.ipv4_mapped)
    if ip.is_unspecified:
        return "may not be unspecified (0.0.0.0, ::)"
    if ip in _LINK_LOCAL_MULTICAST[ip.version]:
        return "may not be in the link-local multicast range (224.0.0.0/24, ff02::/16)"
    if ip.is_multicast:
        return "may not be a multicast address (224.0.0.0/4, ff00::/8)"
    return ""


_LINK_LOCAL_MULTICAST = {
    4: ipaddress.ip_network("224.0.0.0/24"),
    6: ipaddress.ip_network("ff02::/16"),
}


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if "%" in text:  # a zone ("fe80::1%eth0") names an interface of the reader's machine
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def node_addresses(addresses: Sequence[core_pb2.NodeAddress]) -> Errors:
    errs: Errors = []
    for i, entry in enumerate(addresses):
        path = f"status.addresses[{i}].address"
        if entry.type in NODE_IP_ADDRESS_TYPES:
            ip = _parse_ip(entry.address)
            if ip is None:
                errs.append(invalid(path, entry.address, "must be a valid IP address"))
            elif reason := _special_ip(ip):
                errs.append(invalid(path, entry.address, reason))
        elif entry.type in NODE_DNS_ADDRESS_TYPES:
            errs += check(path, entry.address, naming.dns1123_subdomain)
    return errs


def node_loopback_addresses(addresses: Sequence[core_pb2.NodeAddress]) -> Errors:
    """Loopback IP addresses among `addresses`: refused by a master that other
    machines can reach (NodeStrategy), allowed by one serving only on loopback."""
    errs: Errors = []
    for i, entry in enumerate(addresses):
        ip = _parse_ip(entry.address) if entry.type in NODE_IP_ADDRESS_TYPES else None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if ip is not None and ip.is_loopback:
            errs.append(invalid(f"status.addresses[{i}].address", entry.address, _LOOPBACK))
    return errs


def _node(obj: Message) -> Errors:
    node = cast(core_pb2.Node, obj)
    spec = node.spec
    errs: Errors = []
    if spec.pod_cidr:
        errs += _pod_cidr("spec.podCIDR", spec.pod_cidr)
    seen_cidrs: set[str] = set()
    for i, cidr in enumerate(spec.pod_cidrs):
        cidr_errs = _pod_cidr(f"spec.podCIDRs[{i}]", cidr)
        if not cidr_errs and cidr in seen_cidrs:
            cidr_errs.append(duplicate(f"spec.podCIDRs[{i}]", cidr))
        errs += cidr_errs
        seen_cidrs.add(cidr)
    taints: set[tuple[str, str]] = set()
    for i, taint in enumerate(spec.taints):
        item = f"spec.taints[{i}]"
        if not taint.key:
            errs.append(required(f"{item}.key"))
        else:
            errs += check(f"{item}.key", taint.key, naming.label_key)
        errs += check(f"{item}.value", taint.value, naming.label_value)
        errs += one_of(f"{item}.effect", taint.effect, _TAINT_EFFECTS)
        if (taint.key, taint.effect) in taints:
            errs.append(
                FieldViolation(
                    item,
                    f"Duplicate value: {show(taint)}: taints must be unique by key and effect pair",
                )
            )
        taints.add((taint.key, taint.effect))
    for field, resources in (
        ("capacity", node.status.capacity),
        ("allocatable", node.status.allocatable),
    ):
        for name in sorted(resources):
            item = f"status.{field}[{name}]"
            errs += check(item, name, naming.label_key)
            errs += _quantity(item, resources[name])[1]
    errs += node_addresses(node.status.addresses)
    return errs


def _namespace(obj: Message) -> Errors:
    return validate_finalizers("spec.finalizers", cast(core_pb2.Namespace, obj).spec.finalizers)


def _event(obj: Message) -> Errors:
    event = cast(core_pb2.Event, obj)
    errs: Errors = []
    ref = event.involved_object
    if not ref.name and not ref.kind:
        errs.append(required("involvedObject", "must set the kind or the name of the object"))
    if event.type not in ("Normal", "Warning"):
        errs.append(unsupported("type", event.type, ("Normal", "Warning")))
    errs += non_negative("count", event.count)
    return errs


# --------------------------------------------------------- ConfigMap, Secret


def _data_keys(path: str, keys: Iterable[str]) -> Errors:
    errs: Errors = []
    for key in sorted(keys):
        errs += check(f"{path}[{key}]", key, config_key)
    return errs


def _too_big(path: str, size: int) -> Errors:
    if size > MAX_DATA_SIZE:
        return [FieldViolation(path, f"Too long: must have at most {MAX_DATA_SIZE} bytes")]
    return []


def _config_map(obj: Message) -> Errors:
    cm = cast(core_pb2.ConfigMap, obj)
    errs = _data_keys("data", cm.data) + _data_keys("binaryData", cm.binary_data)
    for key in sorted(set(cm.data) & set(cm.binary_data)):
        errs.append(invalid(f"data[{key}]", key, "duplicate of key present in binaryData"))
    size = sum(len(k.encode()) + len(v.encode()) for k, v in cm.data.items())
    size += sum(len(k.encode()) + len(v) for k, v in cm.binary_data.items())
    return errs + _too_big("data", size)


SECRET_TYPES_REQUIRED_KEYS: dict[str, tuple[str, ...]] = {
    "kubernetes.io/tls": ("tls.crt", "tls.key"),
    "kubernetes.io/dockerconfigjson": (".dockerconfigjson",),
    "kubernetes.io/dockercfg": (".dockercfg",),
    "kubernetes.io/ssh-auth": ("ssh-privatekey",),
}


def _secret(obj: Message) -> Errors:
    secret = cast(core_pb2.Secret, obj)
    # stringData was merged into data by defaulting; any left is checked the same.
    errs = _data_keys("data", secret.data) + _data_keys("stringData", secret.string_data)
    size = sum(len(k.encode()) + len(v) for k, v in secret.data.items())
    errs += _too_big("data", size)
    if not secret.type:
        errs.append(required("type"))
    elif len(secret.type) > naming.DNS1123_SUBDOMAIN_MAX_LENGTH:
        errs.append(
            invalid("type", secret.type, naming.max_len_error(naming.DNS1123_SUBDOMAIN_MAX_LENGTH))
        )
    for key in SECRET_TYPES_REQUIRED_KEYS.get(secret.type, ()):
        if key not in secret.data:
            errs.append(required(f"data[{key}]"))
    if secret.type == "kubernetes.io/basic-auth" and not (
        "username" in secret.data or "password" in secret.data
    ):
        errs.append(
            required(
                "data[username]",
                "must specify at least one of `username` or `password` for basic-auth secrets",
            )
        )
    return errs


_IMMUTABLE_DATA = "field is immutable when `immutable` is set"


def _immutable_data(new: Message, old: Message, fields: Sequence[tuple[str, str]]) -> Errors:
    """Once `immutable` is true the data and the flag itself are frozen."""
    if not (old.HasField("immutable") and old.immutable):  # type: ignore[attr-defined]
        return []
    errs: Errors = []
    if not new.immutable:  # type: ignore[attr-defined]
        errs.append(forbidden("immutable", _IMMUTABLE_DATA))
    for json_name, field in fields:
        if dict(getattr(new, field)) != dict(getattr(old, field)):
            errs.append(forbidden(json_name, _IMMUTABLE_DATA))
    return errs


def _config_map_update(new: Message, old: Message) -> Errors:
    return _immutable_data(new, old, (("data", "data"), ("binaryData", "binary_data")))


def _secret_update(new_obj: Message, old_obj: Message) -> Errors:
    new, old = cast(core_pb2.Secret, new_obj), cast(core_pb2.Secret, old_obj)
    errs = _immutable_data(new, old, (("data", "data"),))
    return errs + immutable("type", new.type, old.type)


# --------------------------------------------------------------------- update


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
            forbidden("spec.nodeName", f"pod is already assigned to node {show(old.node_name)}")
        )
    # Take the old spec, let through only what may change, and compare.
    allowed = core_pb2.PodSpec()
    allowed.CopyFrom(old)
    allowed.node_name = new.node_name
    if not old.dns_policy and new.dns_policy == "ClusterFirst":
        # Stored before dnsPolicy existed: "" meant what the default now says.
        allowed.dns_policy = new.dns_policy
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
            forbidden(
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
                forbidden(
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
    # An ExternalName Service has no cluster IP; kubeling does not allocate or free
    # one on a type change, so such a change is a delete and a create.
    if (new.type == "ExternalName") != (old.type == "ExternalName"):
        return [
            forbidden(
                "spec.type",
                f"may not change from {old.type} to {new.type}: delete the Service "
                "and create it again",
            )
        ]
    # Clients and kube-proxy rules hold on to the IP; the type may change, the IP not.
    if old.cluster_ip:
        return immutable("spec.clusterIP", new.cluster_ip, old.cluster_ip)
    return []


def _node_update(new_obj: Message, old_obj: Message) -> Errors:
    new, old = cast(core_pb2.Node, new_obj).spec, cast(core_pb2.Node, old_obj).spec
    errs: Errors = []
    # Pods already hold addresses from the node's range.
    detail = 'node updates may not change podCIDR except from "" to valid'
    if old.pod_cidr and new.pod_cidr != old.pod_cidr:
        errs.append(forbidden("spec.podCIDR", detail))
    if old.pod_cidrs and list(new.pod_cidrs) != list(old.pod_cidrs):
        errs.append(forbidden("spec.podCIDRs", detail))
    return errs


VALIDATORS: dict[type[Message], Validator] = {
    core_pb2.Pod: _pod,
    core_pb2.Service: _service,
    core_pb2.Node: _node,
    core_pb2.Namespace: _namespace,
    core_pb2.Event: _event,
    core_pb2.ConfigMap: _config_map,
    core_pb2.Secret: _secret,
}
UPDATE_VALIDATORS: dict[type[Message], UpdateValidator] = {
    core_pb2.Pod: _pod_update,
    core_pb2.Service: _service_update,
    core_pb2.Node: _node_update,
    core_pb2.ConfigMap: _config_map_update,
    core_pb2.Secret: _secret_update,
}
