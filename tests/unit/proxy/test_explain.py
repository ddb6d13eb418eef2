"""Explain, read from the (fake) installed table; and the Explain RPC's validation."""

from __future__ import annotations

from dataclasses import replace

import grpc
import pytest

from kubeling.api.errors import ApiError
from kubeling.proxy import rules as r
from kubeling.proxy.explain import explain
from kubeling.proxy.nft import FakeNftables, Transaction
from kubeling.proxy.proxier import Proxier
from kubeling.proxy.server import ProxyService
from kubeling.proxy.servicemap import ServicePort
from kubeling.v1 import proxy_pb2
from tests.unit.proxy.builders import make_kube_proxy, sp

WEB = sp(endpoints=["10.244.0.5", "10.244.0.6"], node_port=30080)
DB = sp("db", "10.96.0.11", [], port=5432, node_port=30001)


def installed(*ports: ServicePort, cluster_cidr: str = "", lb_max: int = r.LB_MAX) -> FakeNftables:
    backend = FakeNftables()
    desired: dict[str, list[ServicePort]] = {}
    for port in ports:
        desired.setdefault(f"{port.namespace}/{port.name}", []).append(port)
    Proxier(backend, cluster_cidr, lb_max).sync_full(desired)
    return backend


def never_local(address: str) -> bool:
    raise AssertionError(f"is_local({address}) should not be asked")


def test_cluster_ip_lists_endpoints_service_and_rules() -> None:
    backend = installed(WEB, DB, lb_max=0)
    found = explain(backend, "10.96.0.10", 80, "TCP", is_local=never_local)
    assert found.verdict == "cluster-ip"
    assert found.service == "default/web:http"
    assert found.chain == r.service_chain(WEB)
    assert found.endpoints == [("10.244.0.5", 8080), ("10.244.0.6", 8080)]
    assert not found.session_affinity
    assert not found.masquerade
    assert found.rules[0] == f"service-ips: 10.96.0.10 . tcp . 80 : goto {found.chain}"
    installed_rules = backend.chain_rules(found.chain)
    assert installed_rules is not None
    assert found.rules[1:] == [f"{found.chain}: {rule}" for rule in installed_rules]


def test_cluster_ip_of_an_unnamed_port() -> None:
    port = sp("plain", "10.96.0.12", ["10.244.0.5"], port_name="")
    found = explain(installed(port), "10.96.0.12", 80, "tcp", is_local=never_local)
    assert found.service == "default/plain:" == port.service


def test_explain_reads_the_table_not_the_proxier() -> None:
    backend = installed(WEB)
    before = explain(backend, "10.96.0.10", 80, "tcp", is_local=never_local)
    Proxier(backend).sync_full({"default/web": [sp(endpoints=["10.244.0.9"])]})
    after = explain(backend, "10.96.0.10", 80, "tcp", is_local=never_local)
    assert before.endpoints != after.endpoints == [("10.244.0.9", 8080)]


def test_protocol_must_match() -> None:
    found = explain(installed(WEB), "10.96.0.10", 80, "UDP", is_local=lambda a: False)
    assert found.verdict == "none"
    assert found.endpoints == [] and found.rules == []


def test_empty_protocol_means_tcp() -> None:
    assert explain(installed(WEB), "10.96.0.10", 80, "", is_local=never_local).verdict == (
        "cluster-ip"
    )


def test_no_endpoints_for_cluster_ip() -> None:
    found = explain(installed(WEB, DB), "10.96.0.11", 5432, "tcp", is_local=never_local)
    assert found.verdict == "no-endpoints"
    assert found.endpoints == [] and found.chain == ""
    assert found.rules == ["no-endpoint-services: 10.96.0.11 . tcp . 5432 : goto reject-chain"]


def test_node_port_goes_through_the_external_chain() -> None:
    found = explain(
        installed(WEB, DB, lb_max=0), "192.168.1.10", 30080, "tcp", is_local=lambda a: True
    )
    assert found.verdict == "node-port"
    assert found.service == "default/web:http"
    assert found.chain == r.service_chain(WEB)
    assert found.endpoints == [("10.244.0.5", 8080), ("10.244.0.6", 8080)]
    assert found.masquerade
    ext = r.external_chain(WEB)
    assert found.rules[:3] == [
        f"service-nodeports: tcp . 30080 : goto {ext}",
        f"{ext}: jump mark-for-masquerade",
        f"{ext}: goto {found.chain}",
    ]


def test_node_port_without_endpoints() -> None:
    found = explain(installed(WEB, DB), "192.168.1.10", 30001, "tcp", is_local=lambda a: True)
    assert found.verdict == "no-endpoints"
    assert found.rules == ["no-endpoint-nodeports: tcp . 30001 : goto reject-chain"]


def test_node_port_needs_a_local_address_and_not_loopback() -> None:
    backend = installed(WEB)
    assert explain(backend, "192.168.1.10", 30080, "tcp", is_local=lambda a: False).verdict == (
        "none"
    )
    # Node ports are not served on 127.0.0.0/8 (the rules say `ip daddr != 127.0.0.0/8`).
    assert explain(backend, "127.0.0.1", 30080, "tcp", is_local=lambda a: True).verdict == "none"


def test_nothing_there() -> None:
    found = explain(installed(WEB), "10.96.0.99", 80, "tcp", is_local=lambda a: False)
    assert found.verdict == "none"
    assert (found.service, found.chain, found.endpoints, found.rules) == ("", "", [], [])
    assert explain(FakeNftables(), "10.96.0.10", 80, "tcp", is_local=lambda a: True).verdict == (
        "none"
    )


def test_session_affinity_is_flagged_and_endpoints_listed_once() -> None:
    port = sp("sticky", "10.96.0.13", ["10.244.0.5", "10.244.0.6"], affinity_timeout=60)
    found = explain(installed(port), "10.96.0.13", 80, "tcp", is_local=never_local)
    assert found.session_affinity
    assert found.endpoints == [("10.244.0.5", 8080), ("10.244.0.6", 8080)]
    assert not explain(installed(WEB), "10.96.0.10", 80, "tcp", never_local).session_affinity


def test_cluster_cidr_rule_is_shown() -> None:
    backend = installed(WEB, cluster_cidr="10.244.0.0/16")
    found = explain(backend, "10.96.0.10", 80, "tcp", is_local=never_local)
    assert any("ip saddr != 10.244.0.0/16 jump mark-for-masquerade" in rule for rule in found.rules)
    assert found.endpoints == [("10.244.0.5", 8080), ("10.244.0.6", 8080)]


@pytest.mark.parametrize("address", ["", "nope", "10.96.0", "fd00::10", "10.96.0.10:80"])
def test_invalid_address_raises_value_error(address: str) -> None:
    with pytest.raises(ValueError):
        explain(installed(WEB), address, 80, "tcp", is_local=lambda a: True)


def test_node_port_of_an_unnamed_port_names_the_service_like_cluster_ip() -> None:
    port = sp("plain", "10.96.0.12", ["10.244.0.5"], port_name="", node_port=30090)
    backend = installed(port)
    via_cluster_ip = explain(backend, "10.96.0.12", 80, "tcp", is_local=never_local)
    via_node_port = explain(backend, "192.168.1.10", 30090, "tcp", is_local=lambda a: True)
    assert via_node_port.verdict == "node-port"
    assert via_node_port.service == via_cluster_ip.service == "default/plain:"


# -- the Explain RPC ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (proxy_pb2.ExplainRequest(address="nope", port=80), "address"),
        (proxy_pb2.ExplainRequest(address="fd00::1", port=80), "address"),
        (proxy_pb2.ExplainRequest(address="10.96.0.10", port=0), "port"),
        (proxy_pb2.ExplainRequest(address="10.96.0.10", port=65536), "port"),
        (proxy_pb2.ExplainRequest(address="10.96.0.10", port=80, protocol="icmp"), "protocol"),
    ],
)
async def test_explain_rpc_rejects_bad_requests(
    request_: proxy_pb2.ExplainRequest, message: str
) -> None:
    service = ProxyService(make_kube_proxy(installed(WEB)))
    with pytest.raises(ApiError) as caught:
        await service.explain(request_, None)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert str(caught.value).startswith(f"{message}:")


async def test_explain_rpc_answers_from_the_backend() -> None:
    service = ProxyService(make_kube_proxy(installed(WEB)))
    reply = await service.explain(
        proxy_pb2.ExplainRequest(address="10.96.0.10", port=80, protocol="tcp"), None
    )
    assert reply.verdict == "cluster-ip"
    assert reply.service == "default/web:http"
    assert [(e.address, e.port) for e in reply.endpoints] == [
        ("10.244.0.5", 8080),
        ("10.244.0.6", 8080),
    ]
    # Protocol defaults to TCP.
    default = await service.explain(proxy_pb2.ExplainRequest(address="10.96.0.10", port=80), None)
    assert default.verdict == "cluster-ip"


def test_external_ip_goes_through_the_external_chain_without_being_local() -> None:
    lb = replace(WEB, external_ips=("192.168.1.10", "203.0.113.9"))
    found = explain(installed(lb, DB, lb_max=0), "203.0.113.9", 80, "tcp", is_local=never_local)
    assert found.verdict == "external-ip"
    assert found.service == "default/web:http"
    assert found.chain == r.service_chain(lb)
    assert found.endpoints == [("10.244.0.5", 8080), ("10.244.0.6", 8080)]
    assert found.masquerade
    ext = r.external_chain(lb)
    assert found.rules[:3] == [
        f"service-ips: 203.0.113.9 . tcp . 80 : goto {ext}",
        f"{ext}: jump mark-for-masquerade",
        f"{ext}: goto {found.chain}",
    ]
    # Another port on that address is nothing of the service's.
    assert explain(installed(lb), "203.0.113.9", 81, "tcp", is_local=lambda a: False).verdict == (
        "none"
    )


def test_external_ip_without_endpoints() -> None:
    db = replace(DB, external_ips=("203.0.113.9",))
    found = explain(installed(db), "203.0.113.9", 5432, "tcp", is_local=never_local)
    assert found.verdict == "no-endpoints"
    assert found.rules == ["no-endpoint-services: 203.0.113.9 . tcp . 5432 : goto reject-chain"]


# -- the shared lb-N chains ----------------------------------------------------------


def test_shared_chain_cluster_ip_reads_the_endpoint_elements() -> None:
    backend = installed(WEB, DB, cluster_cidr="10.244.0.0/16")
    found = explain(backend, "10.96.0.10", 80, "tcp", is_local=never_local)
    assert found.verdict == "cluster-ip"
    assert found.service == "default/web:http"  # from the element's comment
    assert found.chain == "lb-2"
    assert found.endpoints == [("10.244.0.5", 8080), ("10.244.0.6", 8080)]
    assert not found.masquerade and not found.session_affinity
    assert found.rules == [
        "service-ips: 10.96.0.10 . tcp . 80 : goto lb-2",
        "lb-2: ip saddr != 10.244.0.0/16 jump mark-for-masquerade",
        "lb-2: dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 2 "
        "map @service-endpoints",
        "service-endpoints: 10.96.0.10 . tcp . 80 . 0 : 10.244.0.5 . 8080",
        "service-endpoints: 10.96.0.10 . tcp . 80 . 1 : 10.244.0.6 . 8080",
    ]


def test_shared_chain_node_port_uses_the_node_port_map() -> None:
    found = explain(installed(WEB, DB), "192.168.1.10", 30080, "tcp", is_local=lambda a: True)
    assert found.verdict == "node-port"
    assert found.service == "default/web:http"
    assert found.chain == "nodeport-lb-2"
    assert found.masquerade
    assert found.endpoints == [("10.244.0.5", 8080), ("10.244.0.6", 8080)]
    assert found.rules[0] == "service-nodeports: tcp . 30080 : goto nodeport-lb-2"
    assert found.rules[-1] == "nodeport-endpoints: tcp . 30080 . 1 : 10.244.0.6 . 8080"


def test_shared_chain_external_ip_goes_through_ext_lb() -> None:
    lb = replace(WEB, external_ips=("203.0.113.9",))
    found = explain(installed(lb), "203.0.113.9", 80, "tcp", is_local=never_local)
    assert found.verdict == "external-ip"
    assert found.service == "default/web:http"
    assert found.chain == "lb-2"
    assert found.masquerade
    assert found.endpoints == [("10.244.0.5", 8080), ("10.244.0.6", 8080)]
    assert found.rules[:3] == [
        "service-ips: 203.0.113.9 . tcp . 80 : goto ext-lb-2",
        "ext-lb-2: jump mark-for-masquerade",
        "ext-lb-2: goto lb-2",
    ]
    assert "service-endpoints: 203.0.113.9 . tcp . 80 . 1 : 10.244.0.6 . 8080" in found.rules


def test_shared_chain_with_a_missing_endpoint_element_says_so() -> None:
    """What the kernel holds is shown, also when it is broken (an element deleted
    behind the proxy's back)."""
    backend = installed(WEB)
    tx = Transaction()
    tx.delete_element(r.ENDPOINTS, "10.96.0.10 . tcp . 80 . 1")
    backend.apply(tx)
    found = explain(backend, "10.96.0.10", 80, "tcp", is_local=never_local)
    assert found.endpoints == [("10.244.0.5", 8080)]
    assert found.rules[-1] == "service-endpoints: 10.96.0.10 . tcp . 80 . 1 : (missing)"
