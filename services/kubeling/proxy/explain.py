"""Explain: where a new connection to address:port/protocol goes, read from the rules
installed in the kernel (through the backend), not from the proxier's memory, so it
shows what packets actually meet.

A service on the shared `lb-N` chains (rules.py) is named by the comment of its
`service-ips` / `service-nodeports` element, and its endpoints are the N elements
`KEY . 0` .. `KEY . N-1` of the endpoint map that its chain looks up; a service with a
chain of its own is named by the chain, and its endpoints are the chain's DNATs."""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from kubeling.proxy import rules as r
from kubeling.proxy.nft import NftBackend

_DNAT = re.compile(r"dnat to (\d+\.\d+\.\d+\.\d+):(\d+)")
_GOTO = re.compile(r"^goto (\S+)$")
_CHAIN_NAME = re.compile(r"^(?:svc|ext)-[0-9a-f]{8}-([^/]+)/([^/]+)/[^/]+/(.+)$")
_LB_CHAIN = re.compile(r"^(lb|ext-lb|nodeport-lb)-(\d+)$")
_ENDPOINT = re.compile(r"^(\d+\.\d+\.\d+\.\d+) \. (\d+)$")


@dataclass
class Explanation:
    verdict: str  # cluster-ip | external-ip | node-port | no-endpoints | none
    service: str = ""
    chain: str = ""
    endpoints: list[tuple[str, int]] = field(default_factory=list)
    session_affinity: bool = False
    masquerade: bool = False
    rules: list[str] = field(default_factory=list)


def is_local_address(address: str) -> bool:
    """Whether `address` is one of this network namespace's own addresses: only
    those can be bound without IP_FREEBIND."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((address, 0))
        except OSError:
            return False
    return True


def _service_name(chain: str) -> str:
    match = _CHAIN_NAME.match(chain)
    if not match:
        return ""
    namespace, name, port_name = match.groups()
    # An unnamed port shows as its number in the chain name; port names always
    # contain a letter (IANA_SVC_NAME).
    return f"{namespace}/{name}:{'' if port_name.isdigit() else port_name}"


def _target(value: str | None) -> str | None:
    match = _GOTO.match(value or "")
    return match.group(1) if match else None


def _lookup(backend: NftBackend, map_name: str, key: str) -> tuple[str | None, str]:
    """The chain an element of a verdict map goes to, and the element's comment."""
    element = backend.map_element(map_name, key)
    return (_target(element[0]), element[1]) if element else (None, "")


def _follow_external(backend: NftBackend, external: str, out: Explanation) -> str | None:
    """Record an external chain's rules in `out`; the chain it goes to."""
    ext_rules = backend.chain_rules(external) or []
    out.rules.extend(f"{external}: {rule}" for rule in ext_rules)
    out.masquerade = f"jump {r.MARK_FOR_MASQUERADE}" in ext_rules
    out.service = out.service or _service_name(external)
    return next((t for t in map(_target, ext_rules) if t), None)


def _shared_endpoints(
    backend: NftBackend, chain: str, count: int, key: str, out: Explanation
) -> None:
    """The endpoints of a service on a shared chain: elements `key . 0` .. `key .
    count-1` of the endpoint map that the chain looks up."""
    chain_rules = backend.chain_rules(chain) or []
    out.rules.extend(f"{chain}: {rule}" for rule in chain_rules)
    if f"jump {r.MARK_FOR_MASQUERADE}" in chain_rules:
        out.masquerade = True
    map_name = r.NODEPORT_ENDPOINTS if chain.startswith("nodeport-") else r.ENDPOINTS
    for index in range(count):
        value = backend.map_value(map_name, f"{key} . {index}")
        out.rules.append(f"{map_name}: {key} . {index} : {value or '(missing)'}")
        match = _ENDPOINT.match(value or "")
        if match:
            endpoint = (match.group(1), int(match.group(2)))
            if endpoint not in out.endpoints:
                out.endpoints.append(endpoint)


def explain(
    backend: NftBackend,
    address: str,
    port: int,
    protocol: str,
    is_local: Callable[[str], bool] = is_local_address,
) -> Explanation:
    """`address` must be an IPv4 address (ValueError otherwise)."""
    ipaddress.IPv4Address(address)
    proto = protocol.lower() or "tcp"
    service_key = f"{address} . {proto} . {port}"
    nodeport_key = f"{proto} . {port}"
    out = Explanation("none")
    lookup_key = service_key
    chain, out.service = _lookup(backend, r.SERVICE_IPS, service_key)
    if chain and chain.startswith("ext-"):
        # An externalIP or LoadBalancer ingress IP: through an external chain.
        out.verdict = "external-ip"
        out.rules.append(f"{r.SERVICE_IPS}: {service_key} : goto {chain}")
    elif chain:
        out.verdict = "cluster-ip"
        out.rules.append(f"{r.SERVICE_IPS}: {service_key} : goto {chain}")
    elif backend.map_value(r.NO_ENDPOINT_SERVICES, service_key):
        out.verdict = "no-endpoints"
        out.rules.append(f"{r.NO_ENDPOINT_SERVICES}: {service_key} : goto {r.REJECT_CHAIN}")
        return out
    elif is_local(address) and not address.startswith("127."):
        chain, out.service = _lookup(backend, r.SERVICE_NODEPORTS, nodeport_key)
        if chain:
            out.verdict = "node-port"
            out.rules.append(f"{r.SERVICE_NODEPORTS}: {nodeport_key} : goto {chain}")
            lookup_key = nodeport_key
        elif backend.map_value(r.NO_ENDPOINT_NODEPORTS, nodeport_key):
            out.verdict = "no-endpoints"
            out.rules.append(f"{r.NO_ENDPOINT_NODEPORTS}: {nodeport_key} : goto {r.REJECT_CHAIN}")
            return out
    if not chain:
        return out
    shared = _LB_CHAIN.match(chain)
    if shared:
        kind, count = shared.group(1), int(shared.group(2))
        if kind == "ext-lb":
            chain = _follow_external(backend, chain, out) or r.lb_chain(count)
        out.chain = chain
        _shared_endpoints(backend, chain, count, lookup_key, out)
        return out
    if chain.startswith("ext-"):
        chain = _follow_external(backend, chain, out)
        if not chain:
            return out
    out.chain = chain
    svc_rules = backend.chain_rules(chain) or []
    out.rules.extend(f"{chain}: {rule}" for rule in svc_rules)
    out.service = out.service or _service_name(chain)
    seen: set[tuple[str, int]] = set()
    for rule in svc_rules:
        match = _DNAT.search(rule)
        if match:
            endpoint = (match.group(1), int(match.group(2)))
            if endpoint not in seen:
                seen.add(endpoint)
                out.endpoints.append(endpoint)
        if rule.startswith("ip saddr @") or "update @" in rule:
            out.session_affinity = True
        if rule == f"jump {r.MARK_FOR_MASQUERADE}":
            out.masquerade = True
    return out
