"""The downward API: a pod's own fields and its containers' resources as text, for
env vars (fieldRef, resourceFieldRef) and downwardAPI volume files.

Values are formatted as the kubelet does: labels and annotations as sorted
`key="value"` lines (Go's %q quoting), CPU rounded up to whole divisors
(millicores with divisor 1m), memory rounded up to whole divisors. A resource
limit the container does not set is the node's capacity (the kubelet uses the
node's allocatable).
"""

from __future__ import annotations

import json
import math
import os
from fractions import Fraction

from kubeling.api.quantity import parse_quantity
from kubeling.common import machine
from kubeling.v1 import core_pb2


class DownwardError(ValueError):
    """A field or resource the downward API does not expose."""


def _quoted(value: str) -> str:
    # JSON string escaping matches Go's %q for the text labels hold.
    return json.dumps(value, ensure_ascii=False)


def _map_lines(values: dict[str, str]) -> str:
    return "\n".join(f"{key}={_quoted(values[key])}" for key in sorted(values))


def field_value(pod: core_pb2.Pod, path: str, pod_ip: str = "", host_ip: str = "") -> str:
    meta = pod.metadata
    simple = {
        "metadata.name": meta.name,
        "metadata.namespace": meta.namespace,
        "metadata.uid": meta.uid,
        "spec.nodeName": pod.spec.node_name,
        "spec.serviceAccountName": "",
        "status.podIP": pod_ip or pod.status.pod_ip,
        "status.hostIP": host_ip or pod.status.host_ip,
        "metadata.labels": _map_lines(dict(meta.labels)),
        "metadata.annotations": _map_lines(dict(meta.annotations)),
    }
    if path in simple:
        return simple[path]
    for prefix, values in (
        ("metadata.labels", meta.labels),
        ("metadata.annotations", meta.annotations),
    ):
        if path.startswith(prefix + "[") and path.endswith("]"):
            key = path[len(prefix) + 1 : -1].strip("'\"")
            return values.get(key, "")
    raise DownwardError(f"unsupported fieldRef fieldPath {path!r}")


def _node_capacity(resource: str) -> Fraction:
    if resource == "cpu":
        return Fraction(os.cpu_count() or 1)
    if resource == "memory":
        return Fraction(machine.memory_kib() * 1024)
    return Fraction(0)


def resource_value(pod: core_pb2.Pod, container_name: str, resource: str, divisor: str = "") -> str:
    """`limits.cpu`, `requests.memory`, ... of the named container, in `divisor` units."""
    container = next(
        (c for c in [*pod.spec.containers, *pod.spec.init_containers] if c.name == container_name),
        None,
    )
    if container is None:
        raise DownwardError(f"resourceFieldRef: no container {container_name!r} in the pod")
    kind, _, name = resource.partition(".")
    if kind not in ("limits", "requests") or not name:
        raise DownwardError(f"unsupported resourceFieldRef resource {resource!r}")
    values = container.resources.limits if kind == "limits" else container.resources.requests
    text = values.get(name, "")
    if not text and kind == "requests":
        text = container.resources.limits.get(name, "")  # a request defaults to the limit
    amount = parse_quantity(text) if text else (_node_capacity(name) if kind == "limits" else 0)
    unit = parse_quantity(divisor) if divisor else Fraction(1)
    if unit <= 0:
        raise DownwardError(f"resourceFieldRef divisor {divisor!r} must be positive")
    if name == "cpu":
        return str(max(1, math.ceil(amount / unit)) if amount else 0)
    return str(math.ceil(amount / unit))
