"""The kubelet's Prometheus series, under Kubernetes' names, served on the kubelet's
HTTP port (/metrics, with /healthz) by common/httpserve.py."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Mapping
from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram

from kubeling.cri.api import pb

if TYPE_CHECKING:  # runtime_state reports its relists here
    from kubeling.kubelet.runtime_state import RuntimePod

# Kubernetes' buckets for pod start-up (seconds).
_START_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 3, 4, 5, 6, 8, 10, 20, 30, 45, 60, 120, 300)
_OP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

POD_START_DURATION = Histogram(
    "kubelet_pod_start_duration_seconds",
    "From the kubelet first seeing a pod to all its containers running",
    buckets=_START_BUCKETS,
)
RUNNING_PODS = Gauge("kubelet_running_pods", "Pods with a running sandbox")
RUNNING_CONTAINERS = Gauge("kubelet_running_containers", "Containers by state", ["container_state"])
RELIST_DURATION = Histogram(
    "kubelet_pleg_relist_duration_seconds",
    "Duration of one relist of the runtime (PLEG)",
    buckets=_OP_BUCKETS,
)
RUNTIME_OPERATIONS_DURATION = Histogram(
    "kubelet_runtime_operations_duration_seconds",
    "CRI operation duration by operation type",
    ["operation_type"],
    buckets=_OP_BUCKETS,
)
RUNTIME_OPERATIONS_ERRORS = Counter(
    "kubelet_runtime_operations_errors_total",
    "CRI operation errors by operation type",
    ["operation_type"],
)

# Upstream's container_state values (kubecontainer.State).
_STATES: dict[int, str] = {
    pb.CONTAINER_CREATED: "created",
    pb.CONTAINER_RUNNING: "running",
    pb.CONTAINER_EXITED: "exited",
}


def observe_runtime_operation(operation_type: str, seconds: float, failed: bool) -> None:
    """One CRI call (cri.client.RuntimeClient's `observe`)."""
    RUNTIME_OPERATIONS_DURATION.labels(operation_type).observe(seconds)
    if failed:
        RUNTIME_OPERATIONS_ERRORS.labels(operation_type).inc()


def observe_relist(pods: Mapping[str, RuntimePod], seconds: float) -> None:
    """A full relist of the runtime: its duration, and the running pods and
    containers it found (every state is set, so one that emptied shows 0)."""
    RELIST_DURATION.observe(seconds)
    RUNNING_PODS.set(sum(1 for pod in pods.values() if any(s.ready for s in pod.sandboxes)))
    containers = (c for pod in pods.values() for c in pod.containers)
    states = Tally(_STATES.get(int(c.state), "unknown") for c in containers)
    for state in (*_STATES.values(), "unknown"):
        RUNNING_CONTAINERS.labels(state).set(states[state])
