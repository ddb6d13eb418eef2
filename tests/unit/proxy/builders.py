"""Builders shared by the kube-proxy unit tests: API objects, service ports, and a
fake nftables backend that keeps the transactions it applied."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import SimpleNamespace

from kubeling.api.wellknown import SERVICE_NAME_LABEL
from kubeling.proxy import rules as r
from kubeling.proxy.conntrack import RecordingConntrack
from kubeling.proxy.kubeproxy import KubeProxy, ProxyConfig
from kubeling.proxy.nft import FakeNftables, Transaction
from kubeling.proxy.proxier import Proxier
from kubeling.proxy.servicemap import Endpoint, ServicePort
from kubeling.v1 import core_pb2, discovery_pb2


def service(
    name: str = "web",
    namespace: str = "default",
    cluster_ip: str = "10.96.0.10",
    ports: Sequence[tuple[str, str, int, int]] = (("http", "TCP", 80, 0),),
    type_: str = "",
    affinity: str = "",
    affinity_timeout: int | None = None,
) -> core_pb2.Service:
    """`ports`: (name, protocol, port, node_port)."""
    svc = core_pb2.Service()
    svc.metadata.name = name
    svc.metadata.namespace = namespace
    svc.spec.cluster_ip = cluster_ip
    if type_:
        svc.spec.type = type_
    if affinity:
        svc.spec.session_affinity = affinity
    if affinity_timeout is not None:
        svc.spec.session_affinity_config.client_ip.timeout_seconds = affinity_timeout
    for port_name, protocol, port, node_port in ports:
        svc.spec.ports.add(name=port_name, protocol=protocol, port=port, node_port=node_port)
    return svc


def endpoint_slice(
    service_name: str = "web",
    name: str = "",
    namespace: str = "default",
    endpoints: Sequence[tuple[str, bool | None]] = (("10.244.0.5", True),),
    ports: Sequence[tuple[str, str, int | None]] = (("http", "TCP", 8080),),
    address_type: str = "IPv4",
    annotations: Mapping[str, str] | None = None,
) -> discovery_pb2.EndpointSlice:
    """`endpoints`: (address, ready) with ready None = condition unset;
    `ports`: (name, protocol, port) with port None = unset."""
    out = discovery_pb2.EndpointSlice()
    out.metadata.name = name or f"{service_name}-abc"
    out.metadata.namespace = namespace
    out.metadata.labels[SERVICE_NAME_LABEL] = service_name
    out.metadata.annotations.update(annotations or {})
    out.address_type = address_type
    for address, ready in endpoints:
        ep = out.endpoints.add(addresses=[address])
        if ready is not None:
            ep.conditions.ready = ready
    for port_name, protocol, port in ports:
        slice_port = out.ports.add(name=port_name, protocol=protocol)
        if port is not None:
            slice_port.port = port
    return out


def sp(
    name: str = "web",
    cluster_ip: str = "10.96.0.10",
    endpoints: Sequence[str] = ("10.244.0.5",),
    *,
    namespace: str = "default",
    port_name: str = "http",
    protocol: str = "tcp",
    port: int = 80,
    target_port: int = 8080,
    node_port: int = 0,
    affinity_timeout: int = 0,
) -> ServicePort:
    """A ServicePort as service_ports() makes it (endpoints sorted)."""
    return ServicePort(
        namespace=namespace,
        name=name,
        port_name=port_name,
        protocol=protocol,
        cluster_ip=cluster_ip,
        port=port,
        node_port=node_port,
        affinity_timeout=affinity_timeout,
        endpoints=tuple(sorted(Endpoint(ip, target_port) for ip in endpoints)),
    )


class CapturingNftables(FakeNftables):
    """The fake, remembering every transaction it was given (applied or not)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Transaction] = []

    def apply(self, tx: Transaction) -> None:
        self.seen.append(tx)
        super().apply(tx)


def full_dump(
    desired: Mapping[str, list[ServicePort]], cluster_cidr: str = "", lb_max: int = r.LB_MAX
) -> str:
    """The table a brand-new proxier writes for `desired`."""
    backend = FakeNftables()
    Proxier(backend, cluster_cidr, lb_max).sync_full(desired)
    return backend.dump()


def make_kube_proxy(
    backend: FakeNftables | None = None,
    sync_period: float = 30.0,
    cluster_cidr: str = "",
) -> KubeProxy:
    """A KubeProxy over a dummy API (informers only keep the resource clients; nothing
    here starts them), the fake nftables and a recording conntrack."""
    api = SimpleNamespace(services=object(), endpoint_slices=object(), nodes=object())
    config = ProxyConfig(
        node_name="node-1",
        cluster_cidr=cluster_cidr,
        min_sync_interval=0.0,
        sync_period=sync_period,
    )
    return KubeProxy(config, api, backend or FakeNftables(), RecordingConntrack())  # type: ignore[arg-type]


def with_leftover_table(chain: str) -> FakeNftables:
    """A fake backend holding our table as an earlier run left it: one empty `chain`."""
    backend = FakeNftables()
    junk = Transaction()
    junk.add_table()
    junk.add_chain(chain)
    backend.apply(junk)
    return backend
