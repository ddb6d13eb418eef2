"""How Services' addresses and endpoints read, for every reader of EndpointSlices
(kube-proxy, the cluster DNS)."""

from __future__ import annotations

import ipaddress

from kubeling.v1 import discovery_pb2


def is_ipv4(address: str) -> bool:
    """An IPv4 address (a ClusterIP of "None" or "", or an IPv6 one, is not)."""
    try:
        return isinstance(ipaddress.ip_address(address), ipaddress.IPv4Address)
    except ValueError:
        return False


def endpoint_ready(endpoint: discovery_pb2.Endpoint) -> bool:
    """Kubernetes: an unset ready condition means ready."""
    conditions = endpoint.conditions
    return not conditions.HasField("ready") or conditions.ready
