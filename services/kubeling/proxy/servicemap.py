"""From Services and EndpointSlices to what the proxy programs: one `ServicePort` per
port of a service, with the ready endpoints behind it. Pure functions over the API
objects, so the rule generation can be tested without a master or a kernel.

A service's external addresses (`spec.externalIPs`, and for type LoadBalancer the
IPs in `status.loadBalancer.ingress`, which the servicelb controller sets to node
addresses) are handled like its ClusterIP: `ServicePort.external_ips` lists them
(IPv4 only, sorted, without the ClusterIP itself) and rules.py maps each to the
service's external chain.

Unlike ClusterIPs, external addresses are not allocated: two Services may name the
same `ip . protocol . port`, or one may name another's ClusterIP. nftables refuses a
map element added twice with different verdicts, which would fail the whole sync,
so `external_owners` decides who answers (ClusterIPs first, then the oldest
Service) and `service_ports(..., owners=...)` leaves out what a Service does not
own."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from kubeling.api.endpoints import endpoint_ready, is_ipv4
from kubeling.api.wellknown import SERVICE_NAME_LABEL
from kubeling.v1 import core_pb2, discovery_pb2

DEFAULT_AFFINITY_TIMEOUT = 10800  # Kubernetes' default for ClientIP affinity (3 h)


# slots: the proxy keeps one per endpoint of every service (~100 bytes less each).
@dataclass(frozen=True, order=True, slots=True)
class Endpoint:
    ip: str
    port: int


@dataclass(frozen=True, slots=True)
class ServicePort:
    namespace: str
    name: str
    port_name: str
    protocol: str  # tcp | udp | sctp (nft spelling)
    cluster_ip: str
    port: int
    node_port: int = 0
    affinity_timeout: int = 0  # seconds of ClientIP affinity; 0 = none
    endpoints: tuple[Endpoint, ...] = ()  # ready endpoints, sorted
    external_ips: tuple[str, ...] = ()  # externalIPs and LB ingress IPs, sorted

    @property
    def service(self) -> str:
        """namespace/name:port-name, as Explain and logs say it."""
        return f"{self.namespace}/{self.name}:{self.port_name}"


def service_key(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


def slice_service(endpoint_slice: discovery_pb2.EndpointSlice) -> str | None:
    """The key of the service a slice belongs to (by its service-name label)."""
    name = endpoint_slice.metadata.labels.get(SERVICE_NAME_LABEL)
    return service_key(endpoint_slice.metadata.namespace, name) if name else None


Claim = tuple[str, str, int]  # (ip, protocol in nft spelling, port)


def _protocol(port: core_pb2.ServicePort) -> str:
    return (port.protocol or "TCP").lower()


def external_owners(services: Iterable[core_pb2.Service]) -> Mapping[Claim, str]:
    """Which service (by key) answers on each external address, protocol and port: a
    ClusterIP's own service first, then the oldest Service naming it (creation time,
    then namespace/name), so the answer does not depend on order.

    Only claims on addresses that some Service names as external are listed (they
    are all that `service_ports` asks about). The proxy asks at every sync, over every
    service, and mostly for services without external addresses, which never look:
    the answer is worked out on its first read (a few field reads per service)."""
    return _LazyOwners(list(services))


class _LazyOwners(Mapping[Claim, str]):
    def __init__(self, services: list[core_pb2.Service]) -> None:
        self._services = services
        self._owners: dict[Claim, str] | None = None

    def _get(self) -> dict[Claim, str]:
        if self._owners is None:
            self._owners = _external_owners(self._services)
        return self._owners

    def __getitem__(self, claim: Claim) -> str:
        return self._get()[claim]

    def __iter__(self) -> Iterator[Claim]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())


def _external_owners(services: list[core_pb2.Service]) -> dict[Claim, str]:
    named = [s for s in services if _names_external(s.spec) and is_ipv4(s.spec.cluster_ip)]
    if not named:
        return {}
    addresses = {ip for svc in named for ip in external_addresses(svc)}
    owners: dict[Claim, str] = {}
    for svc in services:
        if svc.spec.cluster_ip in addresses:
            key = service_key(svc.metadata.namespace, svc.metadata.name)
            for port in svc.spec.ports:
                owners[(svc.spec.cluster_ip, _protocol(port), port.port)] = key
    named.sort(
        key=lambda s: (
            s.metadata.creation_timestamp.seconds,
            s.metadata.creation_timestamp.nanos,
            s.metadata.namespace,
            s.metadata.name,
        ),
    )
    for svc in named:
        key = service_key(svc.metadata.namespace, svc.metadata.name)
        for ip in external_addresses(svc):
            for port in svc.spec.ports:
                owners.setdefault((ip, _protocol(port), port.port), key)
    return owners


def _names_external(spec: core_pb2.ServiceSpec) -> bool:
    """Whether a service may have addresses besides its ClusterIP (a cheap test,
    before `external_addresses`)."""
    return bool(spec.external_ips) or spec.type == "LoadBalancer"


def external_addresses(service: core_pb2.Service) -> tuple[str, ...]:
    """The IPv4 addresses besides the ClusterIP that reach the service: its
    externalIPs, and its load balancer ingress IPs when it is a LoadBalancer (a
    status left over from an earlier type is ignored)."""
    spec = service.spec
    addresses = set(spec.external_ips)
    if spec.type == "LoadBalancer":
        addresses.update(i.ip for i in service.status.load_balancer.ingress)
    addresses.discard(spec.cluster_ip)
    return tuple(sorted(a for a in addresses if is_ipv4(a)))


def service_ports(
    service: core_pb2.Service,
    slices: Iterable[discovery_pb2.EndpointSlice],
    owners: Mapping[Claim, str] | None = None,
) -> list[ServicePort]:
    """The ports of a service the proxy handles, each with its ready endpoints.
    Headless services (no cluster IP) and non-IPv4 addresses are not proxied.
    `owners` (from `external_owners` over every service): external addresses the
    service does not own are left out; None keeps them all."""
    spec = service.spec
    if not is_ipv4(spec.cluster_ip):
        return []
    affinity = 0
    if spec.session_affinity == "ClientIP":
        config = spec.session_affinity_config.client_ip
        affinity = (
            config.timeout_seconds if config.HasField("timeout_seconds") else 0
        ) or DEFAULT_AFFINITY_TIMEOUT
    slices = [s for s in slices if (s.address_type or "IPv4") == "IPv4"]
    external = external_addresses(service)
    result = []
    for port in spec.ports:
        protocol = (port.protocol or "TCP").lower()
        endpoints: set[Endpoint] = set()
        for endpoint_slice in slices:
            for slice_port in endpoint_slice.ports:
                if slice_port.name != port.name or (slice_port.protocol or "TCP").lower() != (
                    protocol
                ):
                    continue
                if not slice_port.HasField("port") or not 0 < slice_port.port < 65536:
                    continue
                for endpoint in endpoint_slice.endpoints:
                    if not endpoint_ready(endpoint):
                        continue
                    for address in endpoint.addresses[:1]:  # the first is the one used
                        if is_ipv4(address):
                            endpoints.add(Endpoint(address, slice_port.port))
        node_port = port.node_port if spec.type in ("NodePort", "LoadBalancer") else 0
        mine = external
        if owners is not None:
            me = service_key(service.metadata.namespace, service.metadata.name)
            mine = tuple(ip for ip in external if owners.get((ip, protocol, port.port)) == me)
        result.append(
            ServicePort(
                namespace=service.metadata.namespace,
                name=service.metadata.name,
                port_name=port.name,
                protocol=protocol,
                cluster_ip=spec.cluster_ip,
                port=port.port,
                node_port=node_port,
                affinity_timeout=affinity,
                endpoints=tuple(sorted(endpoints)),
                external_ips=mine,
            )
        )
    return result
