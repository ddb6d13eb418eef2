"""Stale UDP conntrack flows the proxier reports, and the conntrack commands for them."""

from __future__ import annotations

import pytest

from kubeling.proxy.conntrack import RecordingConntrack, conntrack_args
from kubeling.proxy.nft import FakeNftables
from kubeling.proxy.proxier import Proxier, StaleFlow
from kubeling.proxy.servicemap import ServicePort
from tests.unit.proxy.builders import sp

DNS = "kube-system/dns"


def dns(endpoints: list[str], node_port: int = 0, protocol: str = "udp") -> ServicePort:
    return sp(
        "dns",
        "10.96.0.10",
        endpoints,
        namespace="kube-system",
        port_name="dns",
        protocol=protocol,
        port=53,
        target_port=5353,
        node_port=node_port,
    )


def synced(*ports: ServicePort) -> Proxier:
    proxier = Proxier(FakeNftables())
    proxier.sync_full({DNS: list(ports)})
    return proxier


def test_removing_a_udp_endpoint_yields_flows_for_cluster_ip_and_node_port() -> None:
    proxier = synced(dns(["10.244.0.5", "10.244.0.6"], node_port=30053))
    result = proxier.sync_partial({DNS: [dns(["10.244.0.6"], node_port=30053)]})
    assert sorted(result.stale_flows, key=repr) == sorted(
        [
            StaleFlow("udp", "10.96.0.10", 53, "10.244.0.5"),
            StaleFlow("udp", "", 30053, "10.244.0.5", node_port=True),
        ],
        key=repr,
    )


def test_removing_a_udp_endpoint_of_a_cluster_ip_service() -> None:
    proxier = synced(dns(["10.244.0.5", "10.244.0.6"]))
    result = proxier.sync_partial({DNS: [dns(["10.244.0.5"])]})
    assert result.stale_flows == [StaleFlow("udp", "10.96.0.10", 53, "10.244.0.6")]


def test_deleting_a_udp_service_yields_a_flow_per_endpoint() -> None:
    proxier = synced(dns(["10.244.0.5", "10.244.0.6"]))
    result = proxier.sync_partial({DNS: []})
    assert sorted(result.stale_flows, key=repr) == [
        StaleFlow("udp", "10.96.0.10", 53, "10.244.0.5"),
        StaleFlow("udp", "10.96.0.10", 53, "10.244.0.6"),
    ]


def test_udp_service_getting_its_first_endpoints_yields_a_flow_without_endpoint() -> None:
    proxier = synced(dns([]))
    result = proxier.sync_partial({DNS: [dns(["10.244.0.5", "10.244.0.6"])]})
    assert result.stale_flows == [StaleFlow("udp", "10.96.0.10", 53, None)]
    # More endpoints later: nothing to clear.
    assert proxier.sync_partial({DNS: [dns(["10.244.0.5"])]}).stale_flows == [
        StaleFlow("udp", "10.96.0.10", 53, "10.244.0.6")
    ]
    assert proxier.sync_partial({DNS: [dns(["10.244.0.5", "10.244.0.7"])]}).stale_flows == []


def test_new_udp_service_with_endpoints_yields_a_flow_without_endpoint() -> None:
    proxier = Proxier(FakeNftables())
    proxier.sync_full({})
    result = proxier.sync_partial({DNS: [dns(["10.244.0.5"])]})
    assert result.stale_flows == [StaleFlow("udp", "10.96.0.10", 53, None)]


def test_full_sync_reports_stale_flows_too() -> None:
    proxier = synced(dns(["10.244.0.5", "10.244.0.6"]))
    assert proxier.sync_full({DNS: [dns(["10.244.0.5", "10.244.0.6"])]}).stale_flows == []
    result = proxier.sync_full({})
    assert len(result.stale_flows) == 2
    assert {f.endpoint for f in result.stale_flows} == {"10.244.0.5", "10.244.0.6"}


def test_tcp_yields_no_stale_flows() -> None:
    proxier = synced(dns([], protocol="tcp"))
    assert proxier.sync_partial({DNS: [dns(["10.244.0.5"], protocol="tcp")]}).stale_flows == []
    assert proxier.sync_partial({DNS: [dns([], node_port=30053, protocol="tcp")]}).stale_flows == []
    assert proxier.sync_partial({DNS: []}).stale_flows == []


def test_failed_sync_reports_nothing_and_the_retry_reports_the_flows() -> None:
    backend = FakeNftables()
    proxier = Proxier(backend)
    proxier.sync_full({DNS: [dns(["10.244.0.5", "10.244.0.6"])]})
    backend.fail_next = "boom"
    with pytest.raises(Exception, match="boom"):
        proxier.sync_partial({DNS: [dns(["10.244.0.6"])]})
    result = proxier.sync_partial({DNS: [dns(["10.244.0.6"])]})
    assert result.stale_flows == [StaleFlow("udp", "10.96.0.10", 53, "10.244.0.5")]


def test_udp_node_port_service_getting_its_first_endpoints_clears_the_node_port() -> None:
    proxier = synced(dns([], node_port=30053))
    result = proxier.sync_partial({DNS: [dns(["10.244.0.5"], node_port=30053)]})
    assert StaleFlow("udp", "", 30053, None, node_port=True) in result.stale_flows


def test_conntrack_args() -> None:
    assert conntrack_args(StaleFlow("udp", "10.96.0.10", 53, "10.244.0.5")) == [
        "-D", "-p", "udp", "--orig-dst", "10.96.0.10", "--orig-port-dst", "53",
        "--dst-nat", "10.244.0.5",
    ]  # fmt: skip
    assert conntrack_args(StaleFlow("udp", "", 30053, "10.244.0.5", node_port=True)) == [
        "-D", "-p", "udp", "--orig-port-dst", "30053", "--dst-nat", "10.244.0.5",
    ]  # fmt: skip
    assert conntrack_args(StaleFlow("udp", "10.96.0.10", 53, None)) == [
        "-D", "-p", "udp", "--orig-dst", "10.96.0.10", "--orig-port-dst", "53",
    ]  # fmt: skip


async def test_recording_conntrack_remembers_flows() -> None:
    recorder = RecordingConntrack()
    flow = StaleFlow("udp", "10.96.0.10", 53, None)
    await recorder.clear(flow)
    assert recorder.cleared == [flow]
