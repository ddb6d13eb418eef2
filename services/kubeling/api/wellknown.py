"""Well-known labels and annotations that more than one component reads or writes."""

from __future__ import annotations

from datetime import UTC, datetime

# On an EndpointSlice: the Service it belongs to (written by the endpointslice
# controller, read by every kube-proxy).
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
# On an EndpointSlice: when the change it carries was first seen (RFC 3339); the
# proxy measures network programming latency from it.
TRIGGER_TIME_ANNOTATION = "endpoints.kubernetes.io/last-change-trigger-time"
# On the BOOKMARK that ends a watch's initial events (sendInitialEvents): the
# master writes it, informers and the kubelet know their list is complete.
INITIAL_EVENTS_END = "k8s.io/initial-events-end"


def format_trigger_time(seconds: float) -> str:
    """A wall-clock time as the trigger-time annotation's RFC 3339 (UTC, "Z")."""
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def parse_trigger_time(value: str) -> float | None:
    """The annotation's time in seconds since the epoch; None when absent or invalid."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
