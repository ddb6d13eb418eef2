"""The shared `lb-N` chains (rules.py): services with 1..LB_MAX endpoints and no
session affinity own no chain, only map elements; a change of endpoints is a change
of elements. On the fake nftables."""

from __future__ import annotations

from dataclasses import replace

from kubeling.proxy import rules as r
from kubeling.proxy.nft import ELEMENTS_PER_COMMAND, FakeNftables, Transaction
from kubeling.proxy.proxier import Proxier
from kubeling.proxy.servicemap import ServicePort
from tests.unit.proxy.builders import CapturingNftables, full_dump, sp

WEB = "default/web"
DB = "default/db"
CIDR = "10.244.0.0/16"


def elements(backend: FakeNftables, map_name: str) -> dict[str, str]:
    assert backend.table is not None
    return dict(backend.table.sets[map_name].elements)


def web(*ips: str, **changes: object) -> ServicePort:
    return replace(sp(endpoints=list(ips)), **changes)  # type: ignore[arg-type]


def test_service_is_map_elements_and_a_goto_to_the_shared_chain() -> None:
    backend = FakeNftables()
    port = web("10.244.0.6", "10.244.0.5", "10.244.1.7")
    Proxier(backend, CIDR).sync_full({WEB: [port]})
    assert backend.map_element(r.SERVICE_IPS, "10.96.0.10 . tcp . 80") == (
        "goto lb-3",
        "default/web:http",
    )
    # Endpoints in sorted order, one element each; no chain of the service's own.
    assert elements(backend, r.ENDPOINTS) == {
        "10.96.0.10 . tcp . 80 . 0": "10.244.0.5 . 8080",
        "10.96.0.10 . tcp . 80 . 1": "10.244.0.6 . 8080",
        "10.96.0.10 . tcp . 80 . 2": "10.244.1.7 . 8080",
    }
    assert "svc-" not in backend.dump()
    assert backend.chain_rules("lb-3") == [
        f"ip saddr != {CIDR} jump mark-for-masquerade",
        "dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 3 "
        "map @service-endpoints",
    ]
    assert backend.chain_rules("ext-lb-3") == ["jump mark-for-masquerade", "goto lb-3"]
    assert backend.chain_rules("nodeport-lb-3") == [
        "jump mark-for-masquerade",
        "dnat ip to meta l4proto . th dport . numgen random mod 3 map @nodeport-endpoints",
    ]
    dump = backend.dump()
    assert '10.96.0.10 . tcp . 80 comment "default/web:http" : goto lb-3' in dump
    assert (
        "typeof ip daddr . meta l4proto . th dport . numgen random mod 64 : ip daddr . th dport"
        in dump
    )


def test_the_number_of_chains_does_not_grow_with_services() -> None:
    one = Proxier(FakeNftables())
    one.sync_full({WEB: [web("10.244.0.5")]})
    many = Proxier(FakeNftables())
    many.sync_full(
        {
            f"default/s{i}": [sp(f"s{i}", f"10.96.1.{i}", [f"10.244.2.{i}", "10.244.3.1"])]
            for i in range(100)
        }
    )
    assert one.chains == many.chains == len(r.fixed_chains()) == 3 * r.LB_MAX + 12
    assert one.rules == many.rules
    assert many.endpoints == 200


def test_node_port_and_external_addresses() -> None:
    backend = FakeNftables()
    port = web("10.244.0.5", "10.244.0.6", node_port=30080, external_ips=("203.0.113.9",))
    Proxier(backend).sync_full({WEB: [port]})
    assert backend.map_element(r.SERVICE_NODEPORTS, "tcp . 30080") == (
        "goto nodeport-lb-2",
        "default/web:http",
    )
    assert elements(backend, r.NODEPORT_ENDPOINTS) == {
        "tcp . 30080 . 0": "10.244.0.5 . 8080",
        "tcp . 30080 . 1": "10.244.0.6 . 8080",
    }
    assert backend.map_value(r.SERVICE_IPS, "203.0.113.9 . tcp . 80") == "goto ext-lb-2"
    assert backend.map_value(r.ENDPOINTS, "203.0.113.9 . tcp . 80 . 1") == "10.244.0.6 . 8080"
    assert backend.map_value(r.ENDPOINTS, "10.96.0.10 . tcp . 80 . 1") == "10.244.0.6 . 8080"


def test_replacing_an_endpoint_changes_only_endpoint_elements() -> None:
    backend = CapturingNftables()
    proxier = Proxier(backend, CIDR)
    before = web("10.244.0.5", "10.244.0.6", "10.244.0.7")
    proxier.sync_full({WEB: [before], DB: [sp("db", "10.96.0.11", ["10.244.1.5"], port=5432)]})
    after = web("10.244.0.5", "10.244.0.8", "10.244.0.7")
    result = proxier.sync_partial({WEB: [after]})
    tx = backend.seen[-1]
    # The changed index only (sorted: .5 .7 .8, so indexes 1 and 2 move), and the
    # hairpin set: no chain, no verdict-map element.
    assert {(op.verb, op.kind, op.name) for op in tx.ops} == {
        ("delete", "elements", r.ENDPOINTS),
        ("add", "elements", r.ENDPOINTS),
        ("delete", "elements", r.HAIRPIN),
        ("add", "elements", r.HAIRPIN),
    }
    assert result.operations == 2 + 2 + 1 + 1
    assert backend.map_value(r.ENDPOINTS, "10.96.0.10 . tcp . 80 . 2") == "10.244.0.8 . 8080"
    desired = {WEB: [after], DB: [sp("db", "10.96.0.11", ["10.244.1.5"], port=5432)]}
    assert backend.dump() == full_dump(desired, CIDR)


def test_a_new_endpoint_count_moves_the_service_to_another_shared_chain() -> None:
    backend = CapturingNftables()
    proxier = Proxier(backend)
    proxier.sync_full({WEB: [web("10.244.0.5", "10.244.0.6", node_port=30080)]})
    grown = web("10.244.0.5", "10.244.0.6", "10.244.0.9", node_port=30080)
    proxier.sync_partial({WEB: [grown]})
    assert backend.map_value(r.SERVICE_IPS, "10.96.0.10 . tcp . 80") == "goto lb-3"
    assert backend.map_value(r.SERVICE_NODEPORTS, "tcp . 30080") == "goto nodeport-lb-3"
    added = {
        key for op in backend.seen[-1].ops if op.verb == "add" and op.name == r.ENDPOINTS
        for key, _ in op.items
    }  # fmt: skip
    assert added == {"10.96.0.10 . tcp . 80 . 2"}
    assert backend.dump() == full_dump({WEB: [grown]})
    shrunk = web("10.244.0.6", node_port=30080)
    proxier.sync_partial({WEB: [shrunk]})
    assert backend.dump() == full_dump({WEB: [shrunk]})
    assert elements(backend, r.ENDPOINTS) == {"10.96.0.10 . tcp . 80 . 0": "10.244.0.6 . 8080"}


def test_affinity_or_too_many_endpoints_get_a_chain_of_their_own() -> None:
    many = [f"10.244.0.{i}" for i in range(1, r.LB_MAX + 2)]
    assert not r.uses_lb_chains(web(*many))
    assert r.uses_lb_chains(web(*many[:-1]))
    assert not r.uses_lb_chains(web("10.244.0.5", affinity_timeout=60))
    assert not r.uses_lb_chains(web())  # no endpoints: the reject maps
    backend = FakeNftables()
    proxier = Proxier(backend)
    big = web(*many)
    proxier.sync_full({WEB: [big]})
    chain = r.service_chain(big)
    assert backend.map_value(r.SERVICE_IPS, "10.96.0.10 . tcp . 80") == f"goto {chain}"
    assert len(backend.chain_rules(chain) or []) == r.LB_MAX + 1
    assert elements(backend, r.ENDPOINTS) == {}
    # One endpoint fewer: onto lb-64, and the own chain goes.
    fewer = web(*many[:-1])
    proxier.sync_partial({WEB: [fewer]})
    assert backend.chain_rules(chain) is None
    assert backend.map_value(r.SERVICE_IPS, "10.96.0.10 . tcp . 80") == f"goto lb-{r.LB_MAX}"
    assert backend.dump() == full_dump({WEB: [fewer]})


def test_a_renamed_port_gets_its_new_name_in_the_comment() -> None:
    backend = FakeNftables()
    proxier = Proxier(backend)
    proxier.sync_full({WEB: [web("10.244.0.5")]})
    renamed = web("10.244.0.5", port_name="www")
    proxier.sync_partial({WEB: [renamed]})
    assert backend.map_element(r.SERVICE_IPS, "10.96.0.10 . tcp . 80") == (
        "goto lb-1",
        "default/web:www",
    )
    assert backend.dump() == full_dump({WEB: [renamed]})


def test_later_full_sync_leaves_the_shared_chains_alone() -> None:
    """nft 1.0.6 cannot add a rule that looks up an endpoint map already in the
    kernel, so only a sync that (re)creates the table writes the shared chains."""
    backend = CapturingNftables()
    proxier = Proxier(backend, CIDR)
    desired = {WEB: [web("10.244.0.5", "10.244.0.6")]}
    proxier.sync_full(desired)
    first = backend.seen[-1].script()
    assert "delete table" in first and "map @service-endpoints" in first
    proxier.sync_full(desired)
    again = backend.seen[-1].script()
    assert "delete table" not in again
    assert "map @service-endpoints" not in again and "map @nodeport-endpoints" not in again
    assert "flush chain ip kubeling lb-" not in again
    assert backend.dump() == full_dump(desired, CIDR)
    # A new cluster CIDR changes their rules: the table is replaced, in one transaction.
    proxier.cluster_cidr = "10.245.0.0/16"
    proxier.sync_full(desired)
    replaced = backend.seen[-1].script()
    assert replaced.startswith("add table ip kubeling\ndelete table ip kubeling\n")
    assert backend.chain_rules("lb-2") == [
        "ip saddr != 10.245.0.0/16 jump mark-for-masquerade",
        "dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 2 "
        "map @service-endpoints",
    ]
    assert backend.dump() == full_dump(desired, "10.245.0.0/16")


def test_many_elements_are_sent_in_chunks_of_one_transaction() -> None:
    tx = Transaction()
    count = 2 * ELEMENTS_PER_COMMAND + 5
    tx.add_elements(
        r.ENDPOINTS, ((f"10.96.0.1 . tcp . {i} . 0", "10.244.0.5 . 80") for i in range(count))
    )
    lines = tx.script().splitlines()
    assert len(lines) == 3 and all(line.startswith("add element ip kubeling") for line in lines)
    assert len(tx) == count
    backend = FakeNftables()
    setup = Transaction()
    r.add_skeleton(setup)
    backend.apply(setup)
    backend.apply(tx)
    assert len(elements(backend, r.ENDPOINTS)) == count
