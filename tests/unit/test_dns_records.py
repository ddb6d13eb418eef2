"""Cluster DNS names answered from plain Service and EndpointSlice objects
(dns/records.py): Kubernetes' DNS spec, name by name."""

from __future__ import annotations

import pytest
from dnslib import QTYPE, RCODE

from kubeling.api.wellknown import SERVICE_NAME_LABEL
from kubeling.dns.records import ClusterIndex
from kubeling.v1 import core_pb2, discovery_pb2, meta_pb2

D = "svc.cluster.local"


def service(
    name: str,
    ns: str = "demo",
    cluster_ip: str = "10.96.0.20",
    ports: tuple[tuple[str, str, int], ...] = (("http", "TCP", 80),),
    **spec: object,
) -> core_pb2.Service:
    return core_pb2.Service(
        metadata=meta_pb2.ObjectMeta(name=name, namespace=ns),
        spec=core_pb2.ServiceSpec(
            cluster_ip=cluster_ip,
            ports=[core_pb2.ServicePort(name=n, protocol=p, port=port) for n, p, port in ports],
            **spec,  # type: ignore[arg-type]
        ),
    )


def endpoint_slice(
    service_name: str,
    endpoints: list[tuple[str, bool | None, str]],
    ns: str = "demo",
    name: str = "",
    ports: tuple[tuple[str, str, int], ...] = (("http", "TCP", 8080),),
) -> discovery_pb2.EndpointSlice:
    """`endpoints`: (address, ready or None for unset, hostname)."""
    items = []
    for address, ready, hostname in endpoints:
        conditions = discovery_pb2.EndpointConditions()
        if ready is not None:
            conditions.ready = ready
        items.append(
            discovery_pb2.Endpoint(addresses=[address], conditions=conditions, hostname=hostname)
        )
    return discovery_pb2.EndpointSlice(
        metadata=meta_pb2.ObjectMeta(
            name=name or f"{service_name}-abc",
            namespace=ns,
            labels={SERVICE_NAME_LABEL: service_name},
        ),
        address_type="IPv4",
        endpoints=items,
        ports=[discovery_pb2.EndpointPort(name=n, protocol=p, port=port) for n, p, port in ports],
    )


@pytest.fixture
def index() -> ClusterIndex:
    idx = ClusterIndex()
    idx.put_service(service("web", ports=(("http", "TCP", 80), ("dns", "UDP", 53))))
    idx.put_service(service("db", cluster_ip="None", ports=(("pg", "TCP", 5432),)))
    idx.put_slice(
        endpoint_slice(
            "db",
            [("10.244.1.5", True, "db-0"), ("10.244.2.6", None, ""), ("10.244.3.7", False, "")],
            ports=(("pg", "TCP", 5432),),
        )
    )
    return idx


def rdata(answer_rrs: list[object]) -> list[str]:
    return sorted(str(rr.rdata) for rr in answer_rrs)  # type: ignore[attr-defined]


def test_service_a_is_its_cluster_ip(index: ClusterIndex) -> None:
    answer = index.resolve(f"web.demo.{D}.", QTYPE.A)
    assert answer is not None and answer.rcode == RCODE.NOERROR
    assert rdata(answer.answers) == ["10.96.0.20"]
    assert answer.answers[0].ttl == 30
    # Case does not matter, and the owner name is the one asked.
    upper = index.resolve(f"WEB.Demo.{D}", QTYPE.A)
    assert upper is not None and rdata(upper.answers) == ["10.96.0.20"]
    assert str(upper.answers[0].rname) == f"WEB.Demo.{D}."


def test_headless_a_lists_ready_endpoints_only(index: ClusterIndex) -> None:
    answer = index.resolve(f"db.demo.{D}", QTYPE.A)
    assert answer is not None
    assert rdata(answer.answers) == ["10.244.1.5", "10.244.2.6"]  # unset ready counts


def test_publish_not_ready_addresses_lists_every_endpoint(index: ClusterIndex) -> None:
    index.put_service(service("db", cluster_ip="None", ports=(), publish_not_ready_addresses=True))
    answer = index.resolve(f"db.demo.{D}", QTYPE.A)
    assert answer is not None
    assert rdata(answer.answers) == ["10.244.1.5", "10.244.2.6", "10.244.3.7"]


def test_headless_endpoint_by_hostname_or_dashed_address(index: ClusterIndex) -> None:
    named = index.resolve(f"db-0.db.demo.{D}", QTYPE.A)
    assert named is not None and rdata(named.answers) == ["10.244.1.5"]
    dashed = index.resolve(f"10-244-2-6.db.demo.{D}", QTYPE.A)
    assert dashed is not None and rdata(dashed.answers) == ["10.244.2.6"]
    not_ready = index.resolve(f"10-244-3-7.db.demo.{D}", QTYPE.A)
    assert not_ready is not None and not_ready.rcode == RCODE.NXDOMAIN
    # A ClusterIP service has no endpoint names.
    assert index.resolve(f"x.web.demo.{D}", QTYPE.A).rcode == RCODE.NXDOMAIN  # type: ignore[union-attr]


def test_srv_of_a_named_port(index: ClusterIndex) -> None:
    answer = index.resolve(f"_http._tcp.web.demo.{D}", QTYPE.SRV)
    assert answer is not None and len(answer.answers) == 1
    srv = answer.answers[0].rdata
    assert (srv.port, str(srv.target)) == (80, f"web.demo.{D}.")
    assert rdata(answer.additional) == ["10.96.0.20"]
    udp = index.resolve(f"_dns._udp.web.demo.{D}", QTYPE.SRV)
    assert udp is not None and udp.answers[0].rdata.port == 53
    # The protocol must match too.
    wrong = index.resolve(f"_dns._tcp.web.demo.{D}", QTYPE.SRV)
    assert wrong is not None and wrong.rcode == RCODE.NXDOMAIN


def test_srv_of_a_headless_service_names_each_endpoint(index: ClusterIndex) -> None:
    answer = index.resolve(f"_pg._tcp.db.demo.{D}", QTYPE.SRV)
    assert answer is not None
    targets = sorted((str(rr.rdata.target), rr.rdata.port) for rr in answer.answers)
    assert targets == [
        (f"10-244-2-6.db.demo.{D}.", 5432),
        (f"db-0.db.demo.{D}.", 5432),
    ]
    assert rdata(answer.additional) == ["10.244.1.5", "10.244.2.6"]


def test_external_name_is_a_cname(index: ClusterIndex) -> None:
    index.put_service(
        service("ext", cluster_ip="", ports=(), type="ExternalName", external_name="example.org")
    )
    for qtype in (QTYPE.A, QTYPE.AAAA, QTYPE.CNAME):
        answer = index.resolve(f"ext.demo.{D}", qtype)
        assert answer is not None and len(answer.answers) == 1
        assert answer.answers[0].rtype == QTYPE.CNAME
        assert str(answer.answers[0].rdata) == "example.org."


def test_unknown_names_are_nxdomain_with_soa(index: ClusterIndex) -> None:
    for name in (f"nope.demo.{D}", f"web.other.{D}", "x.cluster.local", f"a.b.c.d.e.{D}"):
        answer = index.resolve(name, QTYPE.A)
        assert answer is not None and answer.rcode == RCODE.NXDOMAIN, name
        assert not answer.answers
        assert [rr.rtype for rr in answer.authority] == [QTYPE.SOA]
        assert answer.authority[0].ttl == 5
        assert answer.authority[0].rdata.times[-1] == 5  # the negative TTL


def test_existing_name_without_the_type_is_nodata(index: ClusterIndex) -> None:
    for name, qtype in (
        (f"web.demo.{D}", QTYPE.AAAA),
        (f"web.demo.{D}", QTYPE.MX),
        ("demo.svc.cluster.local", QTYPE.A),  # a namespace with services
        ("cluster.local", QTYPE.A),
    ):
        answer = index.resolve(name, qtype)
        assert answer is not None and answer.rcode == RCODE.NOERROR, name
        assert not answer.answers and answer.authority[0].rtype == QTYPE.SOA


def test_apex_soa(index: ClusterIndex) -> None:
    answer = index.resolve("cluster.local.", QTYPE.SOA)
    assert answer is not None and answer.answers[0].rtype == QTYPE.SOA


def test_pod_names(index: ClusterIndex) -> None:
    answer = index.resolve("10-244-1-9.demo.pod.cluster.local", QTYPE.A)
    assert answer is not None and rdata(answer.answers) == ["10.244.1.9"]
    bad = index.resolve("10-244-1.demo.pod.cluster.local", QTYPE.A)
    assert bad is not None and bad.rcode == RCODE.NXDOMAIN


def test_ptr_of_cluster_ip_and_headless_endpoint(index: ClusterIndex) -> None:
    answer = index.resolve("20.0.96.10.in-addr.arpa.", QTYPE.PTR)
    assert answer is not None and rdata(answer.answers) == [f"web.demo.{D}."]
    pod = index.resolve("5.1.244.10.in-addr.arpa", QTYPE.PTR)
    assert pod is not None and rdata(pod.answers) == [f"db-0.db.demo.{D}."]
    # An address that is not the cluster's is not ours: forwarded.
    assert index.resolve("8.8.8.8.in-addr.arpa", QTYPE.PTR) is None


def test_names_outside_the_domain_are_not_ours(index: ClusterIndex) -> None:
    assert index.resolve("example.org.", QTYPE.A) is None
    assert index.resolve("notcluster.local", QTYPE.A) is None


def test_changes_are_seen_at_once(index: ClusterIndex) -> None:
    index.put_service(service("web", cluster_ip="10.96.0.99"))
    assert rdata(index.resolve(f"web.demo.{D}", QTYPE.A).answers) == ["10.96.0.99"]  # type: ignore[union-attr]
    assert index.resolve("20.0.96.10.in-addr.arpa", QTYPE.PTR) is None
    assert index.resolve("99.0.96.10.in-addr.arpa", QTYPE.PTR) is not None
    index.on_slice("DELETED", None, endpoint_slice("db", []))
    assert index.resolve(f"db.demo.{D}", QTYPE.A).answers == []  # type: ignore[union-attr]
    index.on_service("DELETED", None, service("web"))
    assert index.resolve(f"web.demo.{D}", QTYPE.A).rcode == RCODE.NXDOMAIN  # type: ignore[union-attr]


def test_a_slice_moving_to_another_service_leaves_the_old_one(index: ClusterIndex) -> None:
    old = endpoint_slice("db", [("10.244.1.5", True, "")], name="s1")
    new = endpoint_slice("web", [("10.244.1.5", True, "")], name="s1")
    index.on_slice("ADDED", None, old)
    index.on_slice("MODIFIED", old, new)
    assert "demo/db" not in index.slices or "s1" not in index.slices["demo/db"]
    assert "s1" in index.slices["demo/web"]


def test_other_cluster_domain() -> None:
    idx = ClusterIndex(domain="corp.example.", ttl=10)
    idx.put_service(service("web"))
    answer = idx.resolve("web.demo.svc.corp.example", QTYPE.A)
    assert answer is not None and answer.answers[0].ttl == 10
    assert idx.resolve(f"web.demo.{D}", QTYPE.A) is None
