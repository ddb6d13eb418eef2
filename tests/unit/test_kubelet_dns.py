"""Pods' resolv.conf by dnsPolicy (kubelet/dns.py), the sandbox step passing it
to the runtime, and the kubelet's DNS flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubeling.kubelet.dns import (
    DNSSettings,
    HostResolv,
    parse_resolv_conf,
    pod_dns,
    read_host_resolv,
)
from kubeling.kubelet.main import config_from, parse_args
from kubeling.kubelet.steps.sandbox import EnsureSandbox
from kubeling.v1 import core_pb2
from tests.kubelet.step_support import context, events, fake, make_pod, node_services

HOST = HostResolv(["127.0.0.53", "192.0.2.1"], ["corp.example"], ["edns0"])
CLUSTER = DNSSettings(cluster_dns=["10.96.0.10"], cluster_domain="cluster.local")


def demo_pod(**spec: object) -> core_pb2.Pod:
    pod = make_pod(**spec)
    pod.metadata.namespace = "demo"
    return pod


def test_parse_resolv_conf_reads_servers_the_last_search_and_options() -> None:
    text = (
        "# generated\nnameserver 127.0.0.53\nnameserver 192.0.2.1 ; trailing\n"
        "domain old.example\nsearch a.example b.example\noptions edns0 trust-ad\n"
    )
    host = parse_resolv_conf(text)
    assert host.nameservers == ["127.0.0.53", "192.0.2.1"]
    assert host.searches == ["a.example", "b.example"]
    assert host.options == ["edns0", "trust-ad"]


def test_a_missing_resolv_conf_is_empty(tmp_path: Path) -> None:
    assert read_host_resolv(tmp_path / "absent") == HostResolv()
    assert read_host_resolv(None) == HostResolv()


def test_cluster_first_uses_the_cluster_dns_and_the_namespace_search_path() -> None:
    dns = pod_dns(demo_pod(), CLUSTER, HOST)
    assert dns.servers == ["10.96.0.10"]
    assert dns.searches == [
        "demo.svc.cluster.local",
        "svc.cluster.local",
        "cluster.local",
        "corp.example",
    ]
    assert dns.options == ["ndots:5"]
    assert dns.warnings == []


def test_cluster_first_without_a_cluster_dns_falls_back_to_the_node() -> None:
    dns = pod_dns(demo_pod(), DNSSettings(), HOST)
    assert dns.servers == ["192.0.2.1"]  # the loopback resolver is dropped
    assert dns.searches == ["corp.example"]
    assert dns.options == ["edns0"]


def test_default_is_the_node_resolver_without_loopback_servers() -> None:
    dns = pod_dns(demo_pod(dns_policy="Default"), CLUSTER, HOST)
    assert (dns.servers, dns.searches, dns.options) == (["192.0.2.1"], ["corp.example"], ["edns0"])


def test_host_network_pods_get_the_node_resolver_unless_with_host_net() -> None:
    plain = pod_dns(demo_pod(host_network=True), CLUSTER, HOST)
    assert plain.servers == ["127.0.0.53", "192.0.2.1"]  # it shares the node's loopback
    with_host_net = pod_dns(
        demo_pod(host_network=True, dns_policy="ClusterFirstWithHostNet"), CLUSTER, HOST
    )
    assert with_host_net.servers == ["10.96.0.10"]
    assert with_host_net.searches[0] == "demo.svc.cluster.local"


def test_none_takes_only_the_dns_config() -> None:
    pod = demo_pod(dns_policy="None")
    pod.spec.dns_config.nameservers.append("192.0.2.53")
    pod.spec.dns_config.searches.append("only.example")
    pod.spec.dns_config.options.add(name="ndots", value="2")
    dns = pod_dns(pod, CLUSTER, HOST)
    assert (dns.servers, dns.searches, dns.options) == (
        ["192.0.2.53"],
        ["only.example"],
        ["ndots:2"],
    )


def test_dns_config_is_appended_and_its_options_override_by_name() -> None:
    pod = demo_pod()
    pod.spec.dns_config.nameservers.extend(["192.0.2.53", "10.96.0.10"])
    pod.spec.dns_config.searches.append("extra.example")
    pod.spec.dns_config.options.add(name="ndots", value="1")
    pod.spec.dns_config.options.add(name="edns0")
    dns = pod_dns(pod, CLUSTER, HOST)
    assert dns.servers == ["10.96.0.10", "192.0.2.53"]  # the duplicate is dropped
    assert dns.searches[-1] == "extra.example"
    assert dns.options == ["ndots:1", "edns0"]


def test_over_the_limits_entries_are_dropped_with_warnings() -> None:
    pod = demo_pod(dns_policy="None")
    pod.spec.dns_config.nameservers.extend(f"192.0.2.{i}" for i in range(1, 6))
    pod.spec.dns_config.searches.extend(f"s{i}.example" for i in range(40))
    dns = pod_dns(pod, CLUSTER, HOST)
    assert dns.servers == ["192.0.2.1", "192.0.2.2", "192.0.2.3"]
    assert len(dns.searches) == 32 and dns.searches[-1] == "s31.example"
    assert len(dns.warnings) == 2
    assert "192.0.2.1 192.0.2.2 192.0.2.3" in dns.warnings[0]


async def test_the_sandbox_gets_the_pods_dns_config(tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 192.0.2.1\nsearch corp.example\n")
    node = node_services(tmp_path)
    node.dns = DNSSettings(["10.96.0.10"], "cluster.local", resolv)
    pod = demo_pod()
    ctx = await context(node, pod)
    assert await EnsureSandbox(node).run(ctx) is None
    stored = fake(node)._sandboxes[ctx.sandbox_id].config.dns_config
    assert list(stored.servers) == ["10.96.0.10"]
    assert list(stored.searches) == [
        "demo.svc.cluster.local",
        "svc.cluster.local",
        "cluster.local",
        "corp.example",
    ]
    assert list(stored.options) == ["ndots:5"]
    assert events(node).reasons() == []


async def test_dropped_search_paths_are_a_warning_event(tmp_path: Path) -> None:
    node = node_services(tmp_path)
    node.dns = DNSSettings(["10.96.0.10"], "cluster.local", None)
    pod = demo_pod()
    pod.spec.dns_config.searches.extend(f"s{i}.example" for i in range(40))
    ctx = await context(node, pod)
    assert await EnsureSandbox(node).run(ctx) is None
    assert "DNSConfigForming" in events(node).reasons()


def test_the_dns_flags() -> None:
    args = parse_args(
        ["--insecure", "--master", "127.0.0.1:6443", "--cluster-dns", "10.96.0.10, 10.96.0.11",
         "--cluster-domain", "example.internal.", "--resolv-conf", ""]
    )  # fmt: skip
    settings = config_from(args).dns
    assert settings.cluster_dns == ["10.96.0.10", "10.96.0.11"]
    assert settings.cluster_domain == "example.internal"
    assert settings.resolv_conf is None
    defaults = config_from(parse_args(["--insecure", "--master", "127.0.0.1:6443"])).dns
    assert defaults == DNSSettings()
    with pytest.raises(SystemExit):
        config_from(parse_args(["--insecure", "--master", "x:1", "--cluster-dns", "dns.example"]))
