"""A pod's resolv.conf by its dnsPolicy, as the CRI sandbox's DNSConfig.

The kubelet's rules (upstream pkg/kubelet/network/dns):
- ClusterFirst (the default): the cluster DNS (--cluster-dns), search
  `NS.svc.DOMAIN svc.DOMAIN DOMAIN` then the node's search domains, `ndots:5`.
  Without --cluster-dns the pod falls back to Default.
- hostNetwork pods with ClusterFirst get Default (their resolver is the node's);
  ClusterFirstWithHostNet gives them the cluster DNS anyway.
- Default: the node's resolv.conf (--resolv-conf), loopback nameservers dropped
  (a resolver on the node's 127.0.0.x is unreachable from a pod's namespace; a
  hostNetwork pod keeps them: it shares the node's loopback).
- None: only the pod's dnsConfig.
dnsConfig is merged on top: nameservers and searches appended (duplicates dropped),
options override by name. Then the limits: 3 nameservers and 32 search domains
(MaxDNSSearchPaths); what is cut is reported so the caller can warn with an event.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from kubeling.cri.api import pb
from kubeling.v1 import core_pb2

MAX_NAMESERVERS = 3
MAX_SEARCHES = 32
CLUSTER_NDOTS = "ndots:5"


@dataclass(frozen=True)
class HostResolv:
    """What the node's resolv.conf says (comments and unknown lines ignored)."""

    nameservers: list[str] = field(default_factory=list)
    searches: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)


def parse_resolv_conf(text: str) -> HostResolv:
    servers: list[str] = []
    searches: list[str] = []
    options: list[str] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].split(";", 1)[0].split()
        if not line:
            continue
        keyword, values = line[0], line[1:]
        if keyword == "nameserver" and values:
            servers.append(values[0])
        elif keyword in ("search", "domain"):
            searches = list(values)  # the last search/domain line wins, as in glibc
        elif keyword == "options":
            options.extend(values)
    return HostResolv(servers, searches, options)


def read_host_resolv(path: Path | None) -> HostResolv:
    """The node's resolver config; an unreadable or absent file gives an empty one."""
    if path is None:
        return HostResolv()
    try:
        return parse_resolv_conf(path.read_text())
    except OSError:
        return HostResolv()


def _not_loopback(server: str) -> bool:
    try:
        return not ipaddress.ip_address(server).is_loopback
    except ValueError:
        return True  # not an address: leave it for the resolver to reject


@dataclass(frozen=True)
class DNSSettings:
    """The node's DNS flags: --cluster-dns, --cluster-domain, --resolv-conf."""

    cluster_dns: list[str] = field(default_factory=list)
    cluster_domain: str = "cluster.local"
    resolv_conf: Path | None = Path("/etc/resolv.conf")


@dataclass
class PodDNS:
    servers: list[str]
    searches: list[str]
    options: list[str]
    # Why entries were dropped (an event message each), empty when none were.
    warnings: list[str] = field(default_factory=list)

    def to_cri(self) -> pb.DNSConfig:
        return pb.DNSConfig(servers=self.servers, searches=self.searches, options=self.options)


def effective_policy(pod: core_pb2.Pod, settings: DNSSettings) -> str:
    """Which of Default, ClusterFirst or None applies to the pod."""
    policy = pod.spec.dns_policy or "ClusterFirst"
    if policy == "ClusterFirstWithHostNet":
        policy = "ClusterFirst"
    elif policy == "ClusterFirst" and pod.spec.host_network:
        policy = "Default"
    if policy == "ClusterFirst" and not settings.cluster_dns:
        policy = "Default"  # no cluster DNS configured: the node's resolver
    return policy


def pod_dns(pod: core_pb2.Pod, settings: DNSSettings, host: HostResolv) -> PodDNS:
    policy = effective_policy(pod, settings)
    # A resolver on the node's loopback is out of reach from a pod's network
    # namespace, but not from a hostNetwork pod's.
    host_servers = [s for s in host.nameservers if pod.spec.host_network or _not_loopback(s)]
    servers: list[str]
    searches: list[str]
    options: list[str]
    if policy == "None":
        servers, searches, options = [], [], []
    elif policy == "ClusterFirst":
        domain = settings.cluster_domain
        namespace = pod.metadata.namespace or "default"
        servers = list(settings.cluster_dns)
        searches = [f"{namespace}.svc.{domain}", f"svc.{domain}", domain, *host.searches]
        options = [CLUSTER_NDOTS]
    else:  # Default
        servers, searches, options = host_servers, list(host.searches), list(host.options)
    if pod.spec.HasField("dns_config"):
        extra = pod.spec.dns_config
        servers = servers + list(extra.nameservers)
        searches = searches + list(extra.searches)
        options = _merge_options(options, extra.options)
    return _limit(_dedupe(servers), _dedupe(searches), options)


def _dedupe(values: list[str]) -> list[str]:
    return list(dict.fromkeys(v for v in values if v))


def _merge_options(base: list[str], extra: Iterable[core_pb2.PodDNSConfigOption]) -> list[str]:
    """Options as `name` or `name:value`; the pod's override the base's by name."""
    merged: dict[str, str] = {}
    for option in base:
        name, _, _ = option.partition(":")
        merged[name] = option
    for item in extra:
        merged[item.name] = f"{item.name}:{item.value}" if item.HasField("value") else item.name
    return list(merged.values())


def _limit(servers: list[str], searches: list[str], options: list[str]) -> PodDNS:
    warnings: list[str] = []
    if len(servers) > MAX_NAMESERVERS:
        warnings.append(
            f"Nameserver limits were exceeded, some nameservers have been omitted, the "
            f"applied nameserver line is: {' '.join(servers[:MAX_NAMESERVERS])}"
        )
        servers = servers[:MAX_NAMESERVERS]
    if len(searches) > MAX_SEARCHES:
        warnings.append(
            f"Search Line limits were exceeded, some search paths have been omitted "
            f"({len(searches) - MAX_SEARCHES} of {len(searches)} dropped)"
        )
        searches = searches[:MAX_SEARCHES]
    return PodDNS(servers, searches, options, warnings)
