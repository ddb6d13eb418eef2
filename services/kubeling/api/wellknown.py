"""Well-known labels and annotations that more than one component reads or writes."""

from __future__ import annotations

# On an EndpointSlice: the Service it belongs to (written by the endpointslice
# controller, read by every kube-proxy).
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
# On an EndpointSlice: when the change it carries was first seen (RFC 3339); the
# proxy measures network programming latency from it.
TRIGGER_TIME_ANNOTATION = "endpoints.kubernetes.io/last-change-trigger-time"
