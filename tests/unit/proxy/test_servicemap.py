"""servicemap.service_ports: from a Service and its EndpointSlices to ServicePorts."""

from __future__ import annotations

import pytest

from kubeling.proxy import rules as r
from kubeling.proxy.nft import FakeNftables, NftError
from kubeling.proxy.proxier import Proxier
from kubeling.proxy.servicemap import (
    DEFAULT_AFFINITY_TIMEOUT,
    Endpoint,
    ServicePort,
    external_owners,
    service_ports,
    slice_service,
)
from tests.unit.proxy.builders import endpoint_slice, service


def only(ports: list[ServicePort]) -> ServicePort:
    assert len(ports) == 1, ports
    return ports[0]


def test_ready_and_unset_ready_endpoints_are_used_not_ready_ones_are_not() -> None:
    slices = [
        endpoint_slice(
            endpoints=[("10.244.0.9", True), ("10.244.0.2", None), ("10.244.0.3", False)]
        )
    ]
    port = only(service_ports(service(), slices))
    # Sorted, and an unset ready condition counts as ready (Kubernetes' rule).
    assert port.endpoints == (Endpoint("10.244.0.2", 8080), Endpoint("10.244.0.9", 8080))


def test_service_port_fields_and_service_name() -> None:
    port = only(service_ports(service(), [endpoint_slice()]))
    assert port == ServicePort(
        namespace="default",
        name="web",
        port_name="http",
        protocol="tcp",
        cluster_ip="10.96.0.10",
        port=80,
        node_port=0,
        affinity_timeout=0,
        endpoints=(Endpoint("10.244.0.5", 8080),),
    )
    assert port.service == "default/web:http"


def test_slice_ports_are_matched_by_name_and_protocol() -> None:
    svc = service(ports=[("http", "TCP", 80, 0), ("dns", "UDP", 53, 0), ("dns-tcp", "TCP", 53, 0)])
    slices = [
        endpoint_slice(
            endpoints=[("10.244.0.5", True)],
            ports=[("http", "TCP", 8080), ("dns", "UDP", 5353), ("dns-tcp", "TCP", 5354)],
        ),
        # Same name, wrong protocol: not a match for "dns" (UDP) nor for "http" (TCP).
        endpoint_slice(
            name="web-other",
            endpoints=[("10.244.0.6", True)],
            ports=[("dns", "TCP", 9999), ("http", "UDP", 9998)],
        ),
    ]
    by_name = {p.port_name: p for p in service_ports(svc, slices)}
    assert by_name["http"].protocol == "tcp"
    assert by_name["http"].endpoints == (Endpoint("10.244.0.5", 8080),)
    assert by_name["dns"].protocol == "udp"
    assert by_name["dns"].endpoints == (Endpoint("10.244.0.5", 5353),)
    assert by_name["dns-tcp"].endpoints == (Endpoint("10.244.0.5", 5354),)


def test_port_name_must_match_exactly() -> None:
    slices = [endpoint_slice(ports=[("https", "TCP", 8443)])]
    assert only(service_ports(service(), slices)).endpoints == ()


def test_unnamed_ports_and_default_protocol_match() -> None:
    svc = service(ports=[("", "", 80, 0)])
    slices = [endpoint_slice(ports=[("", "", 8080)])]
    port = only(service_ports(svc, slices))
    assert port.protocol == "tcp"
    assert port.port_name == ""
    assert port.endpoints == (Endpoint("10.244.0.5", 8080),)


def test_slice_port_without_number_or_out_of_range_is_ignored() -> None:
    for bad in (None, 0, 70000):
        slices = [endpoint_slice(ports=[("http", "TCP", bad)])]
        assert only(service_ports(service(), slices)).endpoints == (), bad


def test_endpoints_from_several_slices_are_merged_and_deduplicated() -> None:
    slices = [
        endpoint_slice(name="a", endpoints=[("10.244.0.7", True), ("10.244.0.5", True)]),
        endpoint_slice(name="b", endpoints=[("10.244.0.5", True), ("10.244.1.1", True)]),
    ]
    assert only(service_ports(service(), slices)).endpoints == (
        Endpoint("10.244.0.5", 8080),
        Endpoint("10.244.0.7", 8080),
        Endpoint("10.244.1.1", 8080),
    )


def test_only_the_first_address_of_an_endpoint_is_used() -> None:
    s = endpoint_slice(endpoints=[])
    s.endpoints.add(addresses=["10.244.0.5", "10.244.0.6"])
    assert only(service_ports(service(), [s])).endpoints == (Endpoint("10.244.0.5", 8080),)


def test_headless_services_are_skipped() -> None:
    for cluster_ip in ("None", ""):
        assert service_ports(service(cluster_ip=cluster_ip), [endpoint_slice()]) == []


def test_ipv6_service_is_skipped_and_ipv6_slices_are_ignored() -> None:
    assert service_ports(service(cluster_ip="fd00::10"), [endpoint_slice()]) == []
    v6 = endpoint_slice(name="v6", endpoints=[("fd00::5", True)], address_type="IPv6")
    v4 = endpoint_slice(name="v4", endpoints=[("10.244.0.5", True)])
    assert only(service_ports(service(), [v6, v4])).endpoints == (Endpoint("10.244.0.5", 8080),)
    # An IPv6 address in a slice that claims IPv4 is not used either.
    bogus = endpoint_slice(name="bogus", endpoints=[("fd00::6", True)])
    assert only(service_ports(service(), [bogus])).endpoints == ()


def test_slice_without_address_type_counts_as_ipv4() -> None:
    s = endpoint_slice(address_type="")
    assert only(service_ports(service(), [s])).endpoints == (Endpoint("10.244.0.5", 8080),)


def test_node_port_only_for_node_port_services() -> None:
    ports = [("http", "TCP", 80, 30080)]
    assert only(service_ports(service(ports=ports), [])).node_port == 0
    assert only(service_ports(service(ports=ports, type_="ClusterIP"), [])).node_port == 0
    assert only(service_ports(service(ports=ports, type_="NodePort"), [])).node_port == 30080


def test_no_slices_gives_ports_without_endpoints() -> None:
    svc = service(ports=[("http", "TCP", 80, 0), ("https", "TCP", 443, 0)])
    ports = service_ports(svc, [])
    assert [(p.port_name, p.port, p.endpoints) for p in ports] == [
        ("http", 80, ()),
        ("https", 443, ()),
    ]


def test_client_ip_affinity_default_and_explicit_timeout() -> None:
    assert only(service_ports(service(), [])).affinity_timeout == 0
    default = only(service_ports(service(affinity="ClientIP"), []))
    assert default.affinity_timeout == DEFAULT_AFFINITY_TIMEOUT == 10800
    explicit = only(service_ports(service(affinity="ClientIP", affinity_timeout=60), []))
    assert explicit.affinity_timeout == 60
    # A timeout without ClientIP affinity means nothing.
    none = only(service_ports(service(affinity="None", affinity_timeout=60), []))
    assert none.affinity_timeout == 0


def test_slice_service_uses_the_service_name_label() -> None:
    assert slice_service(endpoint_slice(service_name="db", namespace="prod")) == "prod/db"
    unlabelled = endpoint_slice()
    unlabelled.metadata.labels.clear()
    assert slice_service(unlabelled) is None


def test_external_ips_and_load_balancer_ingress_are_external_addresses() -> None:
    svc = service(type_="LoadBalancer", ports=[("http", "TCP", 80, 30080)])
    svc.spec.external_ips.extend(["203.0.113.9", "10.96.0.10", "2001:db8::1", "203.0.113.9"])
    svc.status.load_balancer.ingress.add(ip="192.168.1.20")
    svc.status.load_balancer.ingress.add(ip="192.168.1.10")
    svc.status.load_balancer.ingress.add(hostname="lb.example")
    port = only(service_ports(svc, []))
    # IPv4 only, deduplicated, sorted, and never the ClusterIP itself.
    assert port.external_ips == ("192.168.1.10", "192.168.1.20", "203.0.113.9")
    assert port.node_port == 30080


def test_ingress_of_a_service_that_is_no_longer_a_load_balancer_is_ignored() -> None:
    svc = service(type_="NodePort", ports=[("http", "TCP", 80, 30080)])
    svc.status.load_balancer.ingress.add(ip="192.168.1.10")
    assert only(service_ports(svc, [])).external_ips == ()
    svc.spec.external_ips.append("203.0.113.9")
    assert only(service_ports(svc, [])).external_ips == ("203.0.113.9",)


def test_external_owners_cluster_ips_first_then_the_oldest_service() -> None:
    old = service("old", cluster_ip="10.96.0.20")
    old.metadata.creation_timestamp.seconds = 100
    old.spec.external_ips.extend(["203.0.113.9", "10.96.0.30"])
    new = service("new", cluster_ip="10.96.0.30")
    new.metadata.creation_timestamp.seconds = 200
    new.spec.external_ips.extend(["203.0.113.9", "203.0.113.10"])
    udp = service("udp", cluster_ip="10.96.0.40", ports=[("http", "UDP", 80, 0)])
    udp.metadata.creation_timestamp.seconds = 300
    udp.spec.external_ips.append("203.0.113.9")
    headless = service("headless", cluster_ip="None")
    headless.spec.external_ips.append("203.0.113.11")
    owners = external_owners([udp, new, headless, old])
    assert owners[("203.0.113.9", "tcp", 80)] == "default/old"
    assert owners[("10.96.0.30", "tcp", 80)] == "default/new"  # a ClusterIP is its own
    assert owners[("203.0.113.9", "udp", 80)] == "default/udp"
    assert ("203.0.113.11", "tcp", 80) not in owners  # headless: not proxied
    assert only(service_ports(old, [], owners)).external_ips == ("203.0.113.9",)
    assert only(service_ports(new, [], owners)).external_ips == ("203.0.113.10",)
    assert only(service_ports(udp, [], owners)).external_ips == ("203.0.113.9",)
    # Without owners everything named is kept.
    assert only(service_ports(new, [])).external_ips == ("203.0.113.10", "203.0.113.9")


def test_services_kept_apart_by_owners_sync_without_a_clash() -> None:
    a = service("a", cluster_ip="10.96.0.20")
    a.spec.external_ips.append("203.0.113.9")
    b = service("b", cluster_ip="10.96.0.21")
    b.metadata.creation_timestamp.seconds = 1
    b.spec.external_ips.append("203.0.113.9")
    slices = {n: [endpoint_slice(n)] for n in ("a", "b")}
    clashing = {
        f"default/{s.metadata.name}": service_ports(s, slices[s.metadata.name]) for s in (a, b)
    }
    # (In the chain-per-service layout the two external chains differ: nft refuses
    # the second element. With shared chains the values may be equal, and the
    # table would silently keep either.)
    with pytest.raises(NftError):
        Proxier(FakeNftables(), lb_max=0).sync_full(clashing)
    owners = external_owners([a, b])
    apart = {
        f"default/{s.metadata.name}": service_ports(s, slices[s.metadata.name], owners)
        for s in (a, b)
    }
    backend = FakeNftables()
    Proxier(backend).sync_full(apart)
    assert backend.map_element(r.SERVICE_IPS, "203.0.113.9 . tcp . 80") == (
        "goto ext-lb-1",
        "default/a:http",
    )


def test_external_owners_lists_only_claims_on_external_addresses() -> None:
    """service_ports asks owners only about external addresses; the common services
    without any make an empty answer (it is computed at every sync)."""
    plain = [service(f"s{i}", cluster_ip=f"10.96.1.{i}") for i in range(50)]
    assert external_owners(plain) == {}
    lb = service("lb", cluster_ip="10.96.2.1", type_="LoadBalancer")
    lb.status.load_balancer.ingress.add(ip="10.96.1.7")  # another service's ClusterIP
    lb.status.load_balancer.ingress.add(ip="192.168.1.10")
    owners = external_owners([*plain, lb])
    assert owners == {
        ("10.96.1.7", "tcp", 80): "default/s7",
        ("192.168.1.10", "tcp", 80): "default/lb",
    }
    assert only(service_ports(lb, [], owners)).external_ips == ("192.168.1.10",)
