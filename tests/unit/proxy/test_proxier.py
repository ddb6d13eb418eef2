"""Rule generation and the proxier's full and partial syncs, on the fake nftables, in
the layout with a chain per service port (`lb_max=0`): what services with ClientIP
affinity or more than rules.LB_MAX endpoints get. The shared `lb-N` chains, the
default for the others, are tested in test_lb_layout.py."""

from __future__ import annotations

from dataclasses import replace

import pytest

from kubeling.proxy import rules as r
from kubeling.proxy.nft import FakeNftables, NftError, Transaction
from kubeling.proxy.proxier import Proxier
from kubeling.proxy.servicemap import ServicePort
from tests.unit.proxy.builders import CapturingNftables, full_dump, sp, with_leftover_table

WEB = "default/web"
DB = "default/db"


def hairpin_ips(backend: FakeNftables) -> set[str]:
    assert backend.table is not None
    keys = backend.table.sets[r.HAIRPIN].elements
    ips = {key.split(" . ")[0] for key in keys}
    assert keys.keys() == {r.hairpin_key(ip) for ip in ips}
    return ips


def test_full_sync_programs_service_chain_map_element_and_node_port() -> None:
    backend = FakeNftables()
    web = sp(endpoints=["10.244.0.5", "10.244.0.6", "10.244.1.7"], node_port=30080)
    result = Proxier(backend, lb_max=0).sync_full({WEB: [web]})
    assert result.full and result.services == [WEB] and result.operations > 0
    svc, ext = r.service_chain(web), r.external_chain(web)
    assert svc.startswith("svc-") and svc.endswith("-default/web/tcp/http")
    assert ext == "ext-" + svc.removeprefix("svc-")
    # One rule per endpoint, K counting down; the last takes what is left.
    assert backend.chain_rules(svc) == [
        "numgen random mod 3 0 meta l4proto tcp dnat to 10.244.0.5:8080",
        "numgen random mod 2 0 meta l4proto tcp dnat to 10.244.0.6:8080",
        "meta l4proto tcp dnat to 10.244.1.7:8080",
    ]
    assert backend.chain_rules(ext) == ["jump mark-for-masquerade", f"goto {svc}"]
    assert backend.map_value(r.SERVICE_IPS, "10.96.0.10 . tcp . 80") == f"goto {svc}"
    assert backend.map_value(r.SERVICE_NODEPORTS, "tcp . 30080") == f"goto {ext}"
    assert backend.map_value(r.NO_ENDPOINT_SERVICES, "10.96.0.10 . tcp . 80") is None
    dump = backend.dump()
    assert f"10.96.0.10 . tcp . 80 : goto {svc}" in dump
    assert f"tcp . 30080 : goto {ext}" in dump
    assert f"\tchain {svc} {{\n" in dump
    # The skeleton is there: hooks into nat and filter.
    assert "type nat hook prerouting priority dstnat; policy accept;" in dump
    assert backend.chain_rules("services") == [
        "ip daddr . meta l4proto . th dport vmap @service-ips",
        "fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap "
        "@service-nodeports",
    ]
    assert hairpin_ips(backend) == {"10.244.0.5", "10.244.0.6", "10.244.1.7"}


def test_single_endpoint_has_no_numgen() -> None:
    backend = FakeNftables()
    web = sp(endpoints=["10.244.0.5"], protocol="udp", port=53, target_port=5353)
    Proxier(backend, lb_max=0).sync_full({WEB: [web]})
    assert backend.chain_rules(r.service_chain(web)) == ["meta l4proto udp dnat to 10.244.0.5:5353"]
    assert backend.map_value(r.SERVICE_IPS, "10.96.0.10 . udp . 53") is not None


def test_numgen_rules_for_many_endpoints() -> None:
    ips = [f"10.244.0.{i}" for i in range(1, 8)]
    chain_rules = r.service_rules(sp(endpoints=ips), lb_max=0).chains
    (rules,) = chain_rules.values()
    for index, (rule, ip) in enumerate(zip(rules, ips, strict=True)):
        prefix = f"numgen random mod {len(ips) - index} 0 " if index < len(ips) - 1 else ""
        assert rule == f"{prefix}meta l4proto tcp dnat to {ip}:8080"


def test_service_without_endpoints_rejects_and_has_no_chain() -> None:
    backend = FakeNftables()
    db = sp("db", "10.96.0.11", [], port=5432, node_port=30001)
    Proxier(backend, lb_max=0).sync_full({DB: [db]})
    assert backend.map_value(r.NO_ENDPOINT_SERVICES, "10.96.0.11 . tcp . 5432") == (
        "goto reject-chain"
    )
    assert backend.map_value(r.NO_ENDPOINT_NODEPORTS, "tcp . 30001") == "goto reject-chain"
    assert backend.map_value(r.SERVICE_IPS, "10.96.0.11 . tcp . 5432") is None
    assert backend.map_value(r.SERVICE_NODEPORTS, "tcp . 30001") is None
    assert backend.chain_rules(r.service_chain(db)) is None
    assert backend.chain_rules(r.external_chain(db)) is None
    assert "svc-" not in backend.dump() and "ext-" not in backend.dump()
    assert hairpin_ips(backend) == set()


def test_cluster_ip_service_without_endpoints_has_no_node_port_reject() -> None:
    backend = FakeNftables()
    Proxier(backend, lb_max=0).sync_full({DB: [sp("db", "10.96.0.11", [])]})
    assert backend.table is not None
    assert backend.table.sets[r.NO_ENDPOINT_NODEPORTS].elements == {}


def test_cluster_cidr_marks_traffic_from_outside_for_masquerade() -> None:
    backend = FakeNftables()
    web = sp(endpoints=["10.244.0.5"])
    Proxier(backend, cluster_cidr="10.244.0.0/16", lb_max=0).sync_full({WEB: [web]})
    assert backend.chain_rules(r.service_chain(web)) == [
        "ip daddr 10.96.0.10 ip saddr != 10.244.0.0/16 jump mark-for-masquerade",
        "meta l4proto tcp dnat to 10.244.0.5:8080",
    ]


def test_client_ip_affinity_sets_and_rules() -> None:
    backend = FakeNftables()
    web = sp(endpoints=["10.244.0.5", "10.244.0.6"], affinity_timeout=60)
    Proxier(backend, lb_max=0).sync_full({WEB: [web]})
    a5, a6 = (r.affinity_set(web, ep) for ep in web.endpoints)
    assert a5 != a6
    assert backend.chain_rules(r.service_chain(web)) == [
        f"ip saddr @{a5} update @{a5} {{ ip saddr }} meta l4proto tcp dnat to 10.244.0.5:8080",
        f"ip saddr @{a6} update @{a6} {{ ip saddr }} meta l4proto tcp dnat to 10.244.0.6:8080",
        f"numgen random mod 2 0 update @{a5} {{ ip saddr }} meta l4proto tcp dnat to "
        "10.244.0.5:8080",
        f"update @{a6} {{ ip saddr }} meta l4proto tcp dnat to 10.244.0.6:8080",
    ]
    assert backend.table is not None
    assert (
        backend.table.sets[a5].declaration == "type ipv4_addr ; flags dynamic,timeout ; timeout 60s"
    )


def test_multi_port_service_gets_a_chain_per_port() -> None:
    backend = FakeNftables()
    http = sp(endpoints=["10.244.0.5"])
    dns = sp(endpoints=["10.244.0.5"], port_name="dns", protocol="udp", port=53, target_port=53)
    Proxier(backend, lb_max=0).sync_full({WEB: [http, dns]})
    assert r.service_chain(http) != r.service_chain(dns)
    assert backend.chain_rules(r.service_chain(dns)) == ["meta l4proto udp dnat to 10.244.0.5:53"]
    assert backend.map_value(r.SERVICE_IPS, "10.96.0.10 . udp . 53") is not None
    assert backend.map_value(r.SERVICE_IPS, "10.96.0.10 . tcp . 80") is not None


# -- partial syncs -----------------------------------------------------------------


def two_services() -> dict[str, list[ServicePort]]:
    return {
        WEB: [sp(endpoints=["10.244.0.5", "10.244.0.6"], node_port=30080)],
        DB: [sp("db", "10.96.0.11", ["10.244.1.5"], port=5432, target_port=5432)],
    }


def test_partial_sync_touches_only_the_changed_service() -> None:
    backend = CapturingNftables()
    proxier = Proxier(backend, lb_max=0)
    desired = two_services()
    full = proxier.sync_full(desired)
    desired[WEB] = [sp(endpoints=["10.244.0.5", "10.244.0.7"], node_port=30080)]
    result = proxier.sync_partial({WEB: desired[WEB]})
    assert not result.full and result.services == [WEB]
    tx = backend.seen[-1]
    script = tx.script()
    assert "db" not in script and "10.244.1.5" not in script and "5432" not in script
    assert r.service_chain(desired[WEB][0]) in script
    # Only the web chain is rewritten, and the hairpin set gets one in, one out.
    assert {op.name for op in tx.ops if op.kind == "chain"} == {r.service_chain(desired[WEB][0])}
    assert ("delete", "elements", r.HAIRPIN) in {(op.verb, op.kind, op.name) for op in tx.ops}
    assert result.operations == len(tx) < full.operations / 5
    assert backend.dump() == full_dump(desired, lb_max=0)


def test_partial_sync_of_an_unchanged_service_sends_nothing() -> None:
    backend = CapturingNftables()
    proxier = Proxier(backend, lb_max=0)
    desired = two_services()
    proxier.sync_full(desired)
    result = proxier.sync_partial({WEB: desired[WEB]})
    assert result.operations == 0
    assert backend.seen[-1].ops == []


def test_partial_sync_adds_a_new_service() -> None:
    backend = FakeNftables()
    proxier = Proxier(backend, lb_max=0)
    desired = two_services()
    proxier.sync_full({WEB: desired[WEB]})
    proxier.sync_partial({DB: desired[DB]})
    assert backend.dump() == full_dump(desired, lb_max=0)
    assert proxier.applied_ports(DB) == desired[DB]


def test_deleting_a_service_removes_its_chains_sets_and_elements() -> None:
    backend = FakeNftables()
    proxier = Proxier(backend, lb_max=0)
    web = sp(endpoints=["10.244.0.5", "10.244.0.6"], node_port=30080, affinity_timeout=60)
    desired = {WEB: [web], DB: two_services()[DB]}
    proxier.sync_full(desired)
    affinity = [r.affinity_set(web, ep) for ep in web.endpoints]
    assert all(name in backend.dump() for name in affinity)
    proxier.sync_partial({WEB: []})
    dump = backend.dump()
    for gone in [r.service_chain(web), r.external_chain(web), *affinity, "30080", "10.96.0.10"]:
        assert gone not in dump
    assert hairpin_ips(backend) == {"10.244.1.5"}
    assert proxier.applied_ports(WEB) == []
    assert dump == full_dump({DB: desired[DB]}, lb_max=0)


def test_last_endpoint_gone_moves_service_to_no_endpoint_maps_and_back() -> None:
    backend = FakeNftables()
    proxier = Proxier(backend, lb_max=0)
    web = sp(endpoints=["10.244.0.5"], node_port=30080)
    proxier.sync_full({WEB: [web]})
    empty = sp(endpoints=[], node_port=30080)
    proxier.sync_partial({WEB: [empty]})
    assert backend.map_value(r.NO_ENDPOINT_SERVICES, "10.96.0.10 . tcp . 80") == "goto reject-chain"
    assert backend.map_value(r.NO_ENDPOINT_NODEPORTS, "tcp . 30080") == "goto reject-chain"
    assert backend.chain_rules(r.service_chain(web)) is None
    assert backend.dump() == full_dump({WEB: [empty]}, lb_max=0)
    proxier.sync_partial({WEB: [web]})
    assert backend.map_value(r.NO_ENDPOINT_SERVICES, "10.96.0.10 . tcp . 80") is None
    assert backend.dump() == full_dump({WEB: [web]}, lb_max=0)


def test_hairpin_set_holds_a_shared_endpoint_once_until_its_last_user_goes() -> None:
    backend = FakeNftables()
    proxier = Proxier(backend, lb_max=0)
    shared = "10.244.0.5"
    a = sp("a", "10.96.0.20", [shared, "10.244.0.6"])
    b = sp("b", "10.96.0.21", [shared])
    proxier.sync_full({"default/a": [a], "default/b": [b]})
    assert backend.table is not None
    assert list(backend.table.sets[r.HAIRPIN].elements).count(r.hairpin_key(shared)) == 1
    assert hairpin_ips(backend) == {shared, "10.244.0.6"}
    # The first user goes: the shared IP stays, the other one goes.
    proxier.sync_partial({"default/a": []})
    assert hairpin_ips(backend) == {shared}
    # The last user drops it.
    proxier.sync_partial({"default/b": [sp("b", "10.96.0.21", ["10.244.0.9"])]})
    assert hairpin_ips(backend) == {"10.244.0.9"}


def test_hairpin_shared_between_two_ports_of_one_service() -> None:
    backend = FakeNftables()
    proxier = Proxier(backend, lb_max=0)
    http = sp(endpoints=["10.244.0.5"])
    https = sp(endpoints=["10.244.0.5"], port_name="https", port=443, target_port=8443)
    proxier.sync_full({WEB: [http, https]})
    proxier.sync_partial({WEB: [http]})
    assert hairpin_ips(backend) == {"10.244.0.5"}
    proxier.sync_partial({WEB: [sp(endpoints=[])]})
    assert hairpin_ips(backend) == set()


def test_hairpin_changes_in_one_partial_sync_of_two_services() -> None:
    """One service drops an IP while another takes it up, in the same sync."""
    backend = FakeNftables()
    proxier = Proxier(backend, lb_max=0)
    desired = {"default/a": [sp("a", "10.96.0.20", ["10.244.0.5"])]}
    proxier.sync_full(desired)
    desired = {
        "default/a": [sp("a", "10.96.0.20", ["10.244.0.6"])],
        "default/b": [sp("b", "10.96.0.21", ["10.244.0.5"])],
    }
    proxier.sync_partial(desired)
    assert hairpin_ips(backend) == {"10.244.0.5", "10.244.0.6"}
    assert backend.dump() == full_dump(desired, lb_max=0)


# -- full syncs over an existing table ----------------------------------------------


def test_first_full_sync_replaces_a_preexisting_table() -> None:
    backend = FakeNftables()
    junk = Transaction()
    junk.add_table()
    junk.add_chain("svc-junk")
    junk.add_rule("svc-junk", "meta l4proto tcp dnat to 10.1.1.1:1")
    junk.add_map(r.SERVICE_IPS, "type ipv4_addr . inet_proto . inet_service : verdict")
    junk.add_element(r.SERVICE_IPS, "10.96.0.99 . tcp . 80", "goto svc-junk")
    junk.add_set("affinity-junk", "type ipv4_addr")
    junk.add_set(r.HAIRPIN, "type ipv4_addr . ipv4_addr")
    junk.add_element(r.HAIRPIN, "10.1.1.1 . 10.1.1.1")
    backend.apply(junk)
    desired = two_services()
    Proxier(backend, lb_max=0).sync_full(desired)
    dump = backend.dump()
    assert "junk" not in dump and "10.96.0.99" not in dump and "10.1.1.1" not in dump
    assert dump == full_dump(desired, lb_max=0)


def test_restarted_proxier_replaces_the_table_of_its_predecessor() -> None:
    backend = FakeNftables()
    desired = two_services()
    Proxier(backend, lb_max=0).sync_full(desired)
    # The service web was deleted while no proxy ran.
    del desired[WEB]
    Proxier(backend, lb_max=0).sync_full(desired)
    assert backend.dump() == full_dump(desired, lb_max=0)


def test_later_full_sync_updates_in_place_and_removes_stale_objects() -> None:
    backend = CapturingNftables()
    proxier = Proxier(backend, lb_max=0)
    desired = two_services()
    desired[WEB] = [sp(endpoints=["10.244.0.5"], node_port=30080, affinity_timeout=60)]
    proxier.sync_full(desired)
    desired[WEB] = [sp(endpoints=["10.244.0.6"])]
    desired[DB] = [sp("db", "10.96.0.11", [], port=5432)]
    proxier.sync_full(desired)
    tx = backend.seen[-1]
    assert ("delete", "table") not in {(op.verb, op.kind) for op in tx.ops}
    assert backend.dump() == full_dump(desired, lb_max=0)
    # And once more with nothing changed: same table.
    proxier.sync_full(desired)
    assert backend.dump() == full_dump(desired, lb_max=0)


def test_full_sync_after_cluster_cidr_change_rewrites_every_chain() -> None:
    backend = FakeNftables()
    proxier = Proxier(backend, lb_max=0)
    desired = two_services()
    proxier.sync_full(desired)
    proxier.cluster_cidr = "10.244.0.0/16"
    proxier.sync_full(desired)
    assert backend.dump() == full_dump(desired, cluster_cidr="10.244.0.0/16", lb_max=0)
    assert "ip saddr != 10.244.0.0/16 jump mark-for-masquerade" in backend.dump()


def test_counters_of_what_is_programmed() -> None:
    proxier = Proxier(FakeNftables(), lb_max=0)
    desired = two_services()
    desired["default/empty"] = [sp("empty", "10.96.0.12", [])]
    proxier.sync_full(desired)
    assert proxier.service_ports == 3
    assert proxier.endpoints == 3
    fixed = len(r.fixed_chains(lb_max=0))
    assert proxier.chains == fixed + 3  # web: svc + ext, db: svc
    assert proxier.rules == sum(len(c.rules) for c in r.fixed_chains(lb_max=0)) + 2 + 2 + 1


# -- failures ----------------------------------------------------------------------


def test_failed_partial_sync_leaves_table_and_memory_as_before() -> None:
    backend = FakeNftables()
    proxier = Proxier(backend, lb_max=0)
    desired = two_services()
    proxier.sync_full(desired)
    before = backend.dump()
    applied = proxier.applied_ports(WEB)
    changed = [sp(endpoints=["10.244.0.6", "10.244.0.7"], node_port=30080)]
    backend.fail_next = "boom"
    with pytest.raises(NftError, match="boom"):
        proxier.sync_partial({WEB: changed})
    assert backend.dump() == before
    assert proxier.applied_ports(WEB) == applied
    # The same change again, and another one: the proxier's memory still matches
    # the table, so the diffs are right.
    proxier.sync_partial({WEB: changed})
    desired[WEB] = changed
    assert backend.dump() == full_dump(desired, lb_max=0)
    proxier.sync_partial({WEB: []})
    del desired[WEB]
    assert backend.dump() == full_dump(desired, lb_max=0)


def test_failed_partial_sync_then_a_different_change() -> None:
    backend = FakeNftables()
    proxier = Proxier(backend, lb_max=0)
    desired = two_services()
    proxier.sync_full(desired)
    backend.fail_next = "boom"
    with pytest.raises(NftError):
        proxier.sync_partial({WEB: []})
    desired[WEB] = [sp(endpoints=["10.244.0.5"], node_port=30081)]
    proxier.sync_partial({WEB: desired[WEB]})
    assert backend.dump() == full_dump(desired, lb_max=0)
    assert hairpin_ips(backend) == {"10.244.0.5", "10.244.1.5"}


def test_failed_full_sync_leaves_table_and_memory_as_before() -> None:
    backend = FakeNftables()
    proxier = Proxier(backend, lb_max=0)
    desired = two_services()
    proxier.sync_full(desired)
    before = backend.dump()
    wanted = {WEB: [sp(endpoints=["10.244.0.9"])]}
    backend.fail_next = "boom"
    with pytest.raises(NftError, match="boom"):
        proxier.sync_full(wanted)
    assert backend.dump() == before
    assert proxier.applied_ports(DB) == desired[DB]
    proxier.sync_partial({DB: []})
    del desired[DB]
    assert backend.dump() == full_dump(desired, lb_max=0)


def test_failed_first_full_sync_still_replaces_the_table_next_time() -> None:
    backend = with_leftover_table("junk")
    proxier = Proxier(backend, lb_max=0)
    backend.fail_next = "boom"
    with pytest.raises(NftError):
        proxier.sync_full(two_services())
    assert backend.chain_rules("junk") == []
    proxier.sync_full(two_services())
    assert backend.dump() == full_dump(two_services(), lb_max=0)


# -- known bugs --------------------------------------------------------------------


def test_partial_sync_applies_a_changed_affinity_timeout() -> None:
    backend = FakeNftables()
    proxier = Proxier(backend, lb_max=0)
    proxier.sync_full({WEB: [sp(affinity_timeout=10800)]})
    changed = {WEB: [sp(affinity_timeout=60)]}
    proxier.sync_partial(changed)
    assert "timeout 60s" in backend.dump()
    assert backend.dump() == full_dump(changed, lb_max=0)


def test_full_sync_applies_a_changed_affinity_timeout() -> None:
    backend = FakeNftables()
    proxier = Proxier(backend, lb_max=0)
    proxier.sync_full({WEB: [sp(affinity_timeout=10800)]})
    changed = {WEB: [sp(affinity_timeout=60)]}
    proxier.sync_full(changed)
    assert backend.dump() == full_dump(changed, lb_max=0)


def test_external_addresses_are_service_ips_elements_to_the_external_chain() -> None:
    backend = FakeNftables()
    web = replace(sp(endpoints=["10.244.0.5"]), external_ips=("192.168.1.10", "203.0.113.9"))
    Proxier(backend, "10.244.0.0/16", lb_max=0).sync_full({WEB: [web]})
    svc, ext = r.service_chain(web), r.external_chain(web)
    assert backend.map_value(r.SERVICE_IPS, "10.96.0.10 . tcp . 80") == f"goto {svc}"
    for ip in web.external_ips:
        assert backend.map_value(r.SERVICE_IPS, f"{ip} . tcp . 80") == f"goto {ext}"
    assert backend.chain_rules(ext) == ["jump mark-for-masquerade", f"goto {svc}"]
    # No rule of their own: the service chain is the ClusterIP's, unchanged.
    plain = FakeNftables()
    Proxier(plain, "10.244.0.0/16", lb_max=0).sync_full({WEB: [sp(endpoints=["10.244.0.5"])]})
    assert backend.chain_rules(svc) == plain.chain_rules(svc)


def test_external_addresses_without_endpoints_are_rejected() -> None:
    backend = FakeNftables()
    web = replace(sp(endpoints=[]), external_ips=("203.0.113.9",))
    Proxier(backend, lb_max=0).sync_full({WEB: [web]})
    assert backend.map_value(r.NO_ENDPOINT_SERVICES, "203.0.113.9 . tcp . 80") == (
        "goto reject-chain"
    )
    assert backend.map_value(r.SERVICE_IPS, "203.0.113.9 . tcp . 80") is None


def test_partial_sync_of_an_added_load_balancer_ip_adds_one_element() -> None:
    backend = CapturingNftables()
    proxier = Proxier(backend, lb_max=0)
    desired = two_services()
    web = replace(desired[WEB][0], external_ips=("192.168.1.10",))
    proxier.sync_full({**desired, WEB: [web]})
    grown = replace(web, external_ips=("192.168.1.10", "192.168.1.20"))
    proxier.sync_partial({WEB: [grown]})
    ops = [(op.verb, op.kind, op.name) for op in backend.seen[-1].ops]
    assert ops == [("add", "elements", r.SERVICE_IPS)]
    assert backend.dump() == full_dump({**desired, WEB: [grown]}, lb_max=0)
    # Gone again (the type changed): the elements go, and the external chain stays
    # only because of the node port.
    bare = replace(web, external_ips=())
    proxier.sync_partial({WEB: [bare]})
    assert backend.map_value(r.SERVICE_IPS, "192.168.1.10 . tcp . 80") is None
    assert backend.dump() == full_dump({**desired, WEB: [bare]}, lb_max=0)


def test_external_chain_goes_with_the_last_external_address_of_a_cluster_ip_service() -> None:
    backend = FakeNftables()
    proxier = Proxier(backend, lb_max=0)
    web = replace(sp(endpoints=["10.244.0.5"]), external_ips=("203.0.113.9",))
    proxier.sync_full({WEB: [web]})
    assert backend.chain_rules(r.external_chain(web)) is not None
    proxier.sync_partial({WEB: [replace(web, external_ips=())]})
    assert backend.chain_rules(r.external_chain(web)) is None
    assert backend.dump() == full_dump({WEB: [replace(web, external_ips=())]}, lb_max=0)
