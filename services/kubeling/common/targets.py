"""Master addresses: one, or a comma-separated list of masters serving one cluster.

Every client of the master (the Python client, the CLI, the kubelet, kube-proxy,
node bootstrap, hollow nodes) takes `HOST:PORT` or `HOST:PORT,HOST:PORT,...`.
A list becomes ONE gRPC channel over all the addresses rather than a loop of our
own: gRPC's `ipv4:`/`ipv6:` targets take several addresses, and its `pick_first`
policy connects to one of them and, when that connection breaks, to the next that
answers. `shuffleAddressList` makes each client start at a random master, so
clients spread over masters that are all active.

gRPC checks a server certificate against ONE name per channel, while each master's
certificate names its own addresses. So every master's serving certificate also
carries Kubernetes' in-cluster names (`MASTER_NAMES`, master/cluster_ca.py), and a
channel over a list checks `MASTER_SERVER_NAME` (TLS stays verified: the
certificate must come from the cluster CA and carry that name).

Hostnames in a list are resolved when the channel is made (gRPC's address-list
targets take IPs only); a later DNS change needs a new client. A name that does not
resolve is left out as long as another address remains. One address is passed to
gRPC as it is (its own DNS resolver, `unix:PATH`, ...), as before.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

log = structlog.get_logger(__name__)

# Kubernetes' own names for its API server, in every master's serving certificate.
MASTER_NAMES = (
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
# The name a channel over a list of masters checks their certificates against.
MASTER_SERVER_NAME = MASTER_NAMES[0]
_SCHEMES = ("ipv4:", "ipv6:")


class TargetError(ValueError):
    """An address or list of addresses that cannot be used (the message says why)."""


@dataclass(frozen=True)
class Endpoint:
    host: str  # without brackets
    port: int

    @property
    def family(self) -> int | None:
        """4 or 6 for an IP literal, None for a hostname."""
        return _family(self.host)

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def is_list(target: str) -> bool:
    """Whether `target` names several addresses (a comma-separated list)."""
    return "," in target and not target.strip().startswith("unix:")


def split_items(text: str) -> list[str]:
    """The comma-separated items, stripped; TargetError for an empty one."""
    items = [item.strip() for item in text.split(",")]
    if not text.strip():
        raise TargetError("the master address is empty; expected HOST:PORT[,HOST:PORT...]")
    for index, item in enumerate(items):
        if not item:
            raise TargetError(
                f'"{text}": item {index + 1} of the list is empty; expected '
                "HOST:PORT,HOST:PORT,... without empty items"
            )
    return items


def parse_endpoint(item: str, default_port: int | None = None) -> Endpoint:
    """HOST:PORT, [IPV6]:PORT, or HOST alone with `default_port`; TargetError otherwise."""
    text = item.strip()
    if text.startswith("unix:"):
        raise TargetError(f'"{text}": a unix socket cannot be part of a list of masters')
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise TargetError(f'"{text}": "[" without "]"; write IPv6 as [ADDRESS]:PORT')
        host, rest = text[1:close], text[close + 1 :]
        if rest and not rest.startswith(":"):
            raise TargetError(f'"{text}": expected [IPV6]:PORT')
        port_text = rest[1:] if rest else ""
        if _family(host) != 6:
            raise TargetError(f'"{text}": [{host}] is not an IPv6 address')
    elif text.count(":") > 1:
        raise TargetError(f'"{text}": write an IPv6 address in brackets, [ADDRESS]:PORT')
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise TargetError(f'"{text}": no host; expected HOST:PORT')
    if not port_text:
        if default_port is None:
            raise TargetError(f'"{text}": no port; expected HOST:PORT (the master listens on 6443)')
        return Endpoint(host, default_port)
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise TargetError(f'"{text}": the port must be a number from 1 to 65535')
    return Endpoint(host, int(port_text))


def parse_list(text: str, default_port: int | None = None) -> list[Endpoint]:
    """The endpoints of HOST:PORT[,HOST:PORT...] (a leading `ipv4:`/`ipv6:` is
    gRPC's own spelling and accepted); TargetError for an empty item, a missing
    port, a repeated address, or IPv4 and IPv6 literals mixed (a gRPC address list
    holds one family)."""
    body = text.strip()
    for scheme in _SCHEMES:
        body = body.removeprefix(scheme)
    endpoints = [parse_endpoint(item, default_port) for item in split_items(body)]
    seen: set[Endpoint] = set()
    for endpoint in endpoints:
        if endpoint in seen:
            raise TargetError(f'"{text}": {endpoint} is listed twice')
        seen.add(endpoint)
    families = {e.family for e in endpoints if e.family is not None}
    if len(families) > 1:
        raise TargetError(
            f'"{text}" mixes IPv4 and IPv6 addresses; a list of masters takes one family '
            "(give every master's IPv4 address, or every one's IPv6 address)"
        )
    return endpoints


def _family(host: str) -> int | None:
    try:
        return ipaddress.ip_address(host).version
    except ValueError:
        return None


def _resolve(host: str) -> list[tuple[int, str]]:
    """(family, address) of `host`, in the resolver's order, without repeats."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise TargetError(f"cannot resolve {host}: {exc}") from None
    found: list[tuple[int, str]] = []
    for family, _, _, _, sockaddr in infos:
        version = 4 if family == socket.AF_INET else 6 if family == socket.AF_INET6 else 0
        item = (version, str(sockaddr[0]))
        if version and item not in found:
            found.append(item)
    return found


def resolve_list(target: str) -> list[Endpoint]:
    """The IP endpoints of a list (hostnames resolved now, to the family of the
    list's IP literals, else IPv4 when every name has an IPv4 address); names
    that do not resolve are left out (logged) while another address remains."""
    endpoints = parse_list(target)
    literal = {e.family for e in endpoints if e.family is not None}
    names = {e.host: _resolve_or_none(e.host) for e in endpoints if e.family is None}
    if literal:
        family = literal.pop()
    elif all(any(v == 4 for v, _ in found) for found in names.values() if found):
        family = 4
    else:
        family = 6
    out: list[Endpoint] = []
    failed: list[str] = []
    for endpoint in endpoints:
        if endpoint.family is not None:
            candidates = [endpoint]
        else:
            found = names[endpoint.host] or []
            candidates = [Endpoint(a, endpoint.port) for v, a in found if v == family]
            if not candidates:
                failed.append(endpoint.host)
        for candidate in candidates:
            if candidate not in out:
                out.append(candidate)
    if not out:
        raise TargetError(
            f'"{target}": no address of any master could be resolved '
            f"(IPv{family}: {', '.join(failed)})"
        )
    if failed:
        log.warning("masters left out: no address", hosts=failed, family=f"IPv{family}")
    return out


def _resolve_or_none(host: str) -> list[tuple[int, str]] | None:
    try:
        return _resolve(host)
    except TargetError:
        return None


@dataclass(frozen=True)
class GrpcTarget:
    """What a channel is made with: gRPC's target string, the name a server's
    certificate is checked against ("" for the target's own host) and the
    load-balancing config ({} for gRPC's default)."""

    target: str
    server_name: str = ""
    load_balancing: Mapping[str, Any] | None = None


def grpc_target(target: str) -> GrpcTarget:
    """One address as it is; a list as an `ipv4:`/`ipv6:` target over every
    master, shuffled pick_first, checked against MASTER_SERVER_NAME."""
    if not is_list(target):
        return GrpcTarget(target.strip())
    endpoints = resolve_list(target)
    scheme = "ipv6:" if endpoints[0].family == 6 else "ipv4:"
    return GrpcTarget(
        scheme + ",".join(str(e) for e in endpoints),
        MASTER_SERVER_NAME,
        {"pick_first": {"shuffleAddressList": True}},
    )


def service_config(
    load_balancing: Mapping[str, Any] | None, method_config: Sequence[Mapping[str, Any]] = ()
) -> str:
    """gRPC's service config as the JSON of the channel option `grpc.service_config`."""
    config: dict[str, Any] = {}
    if load_balancing:
        config["loadBalancingConfig"] = [dict(load_balancing)]
    if method_config:
        config["methodConfig"] = [dict(m) for m in method_config]
    return json.dumps(config) if config else ""
