"""kubeling-dns against an in-process master (plaintext on loopback): Services and
EndpointSlices made through the API are answered over UDP and TCP, changes show
within a second, other names go to a fake upstream on 127.0.0.1, long answers
are truncated over UDP and whole over TCP; and the `kubeling-dns` process itself
serves, with /healthz, /readyz and /metrics."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from dnslib import QTYPE, RCODE

from kubeling.client import Client
from kubeling.dns.clusterdns import ClusterDns
from kubeling.dns.server import DnsConfig, Upstream
from kubeling.v1 import core_pb2, discovery_pb2
from tests.support.inprocess import in_process_master
from tests.support.processes import free_port
from tests.support.waiting import eventually
from tests.unit.test_dns_server import UPSTREAM_ADDRESS, ask, fake_upstream

NS = "default"
SUFFIX = f"{NS}.svc.cluster.local"


def make_service(
    name: str, cluster_ip: str = "", ports: tuple[tuple[str, str, int], ...] = ()
) -> core_pb2.Service:
    svc = core_pb2.Service()
    svc.metadata.name = name
    svc.metadata.namespace = NS
    svc.spec.selector["app"] = name
    svc.spec.cluster_ip = cluster_ip
    for port_name, protocol, port in ports or (("", "TCP", 80),):
        svc.spec.ports.add(name=port_name, protocol=protocol, port=port)
    return svc


def make_slice(service: str, addresses: list[str], name: str = "") -> discovery_pb2.EndpointSlice:
    eps = discovery_pb2.EndpointSlice()
    eps.metadata.name = name or f"{service}-abc"
    eps.metadata.namespace = NS
    eps.metadata.labels["kubernetes.io/service-name"] = service
    eps.address_type = "IPv4"
    for address in addresses:
        endpoint = eps.endpoints.add(addresses=[address])
        endpoint.conditions.ready = True
    eps.ports.add(name="pg", protocol="TCP", port=5432)
    return eps


@contextlib.asynccontextmanager
async def cluster_dns(api: Client, upstreams: tuple[Upstream, ...] = ()) -> AsyncIterator[int]:
    dns = ClusterDns(api, DnsConfig(listen="127.0.0.1:0", upstreams=upstreams))
    port = await dns.start()
    try:
        await eventually(dns.ready, 10)
        yield port
    finally:
        await dns.stop()


async def addresses(port: int, name: str, tcp: bool = False) -> list[str]:
    reply = await ask(port, name, tcp=tcp)
    return sorted(str(rr.rdata) for rr in reply.rr if rr.rtype == QTYPE.A)


async def test_services_and_slices_are_answered_and_follow_changes(tmp_path: Path) -> None:
    async with in_process_master(tmp_path) as api:
        web = await api.services.create(make_service("web", ports=(("http", "TCP", 80),)))
        await api.services.create(make_service("db", "None", (("pg", "TCP", 5432),)))
        await api.endpoint_slices.create(make_slice("db", ["10.244.1.5", "10.244.2.6"]))
        async with (
            fake_upstream() as upstream,
            cluster_dns(api, (("127.0.0.1", upstream.port),)) as port,
        ):
            ip = web.spec.cluster_ip
            for tcp in (False, True):
                assert await addresses(port, f"web.{SUFFIX}", tcp) == [ip]
                assert await addresses(port, f"db.{SUFFIX}", tcp) == [
                    "10.244.1.5",
                    "10.244.2.6",
                ]
            srv = await ask(port, f"_http._tcp.web.{SUFFIX}", "SRV")
            assert [(rr.rdata.port, str(rr.rdata.target)) for rr in srv.rr] == [
                (80, f"web.{SUFFIX}.")
            ]
            headless_srv = await ask(port, f"_pg._tcp.db.{SUFFIX}", "SRV")
            assert sorted(str(rr.rdata.target) for rr in headless_srv.rr) == [
                f"10-244-1-5.db.{SUFFIX}.",
                f"10-244-2-6.db.{SUFFIX}.",
            ]
            reverse = ".".join(reversed(ip.split("."))) + ".in-addr.arpa"
            ptr = await ask(port, reverse, "PTR")
            assert [str(rr.rdata) for rr in ptr.rr] == [f"web.{SUFFIX}."]
            pod_ptr = await ask(port, "6.2.244.10.in-addr.arpa", "PTR")
            assert [str(rr.rdata) for rr in pod_ptr.rr] == [f"10-244-2-6.db.{SUFFIX}."]
            missing = await ask(port, f"nope.{SUFFIX}")
            assert missing.header.rcode == RCODE.NXDOMAIN and missing.auth

            # Other names: to the upstream, over UDP and TCP.
            for tcp in (False, True):
                assert await addresses(port, "www.example.org", tcp) == [UPSTREAM_ADDRESS]
            assert upstream.questions == ["www.example.org."] * 2

            # Changes are answered within a second of being made.
            eps = await api.endpoint_slices.get("db-abc", NS)
            del eps.endpoints[0]
            eps.endpoints.add(addresses=["10.244.3.7"]).conditions.ready = True
            await api.endpoint_slices.update(eps)
            started = time.monotonic()
            await eventually(lambda: _has(port, f"db.{SUFFIX}", ["10.244.2.6", "10.244.3.7"]), 1.0)
            await api.services.create(make_service("late"))
            await eventually(lambda: _resolves(port, f"late.{SUFFIX}"), 1.0)
            await api.services.delete("web", NS)
            await eventually(lambda: _nxdomain(port, f"web.{SUFFIX}"), 1.0)
            assert time.monotonic() - started < 3.0


async def _has(port: int, name: str, expected: list[str]) -> bool:
    return await addresses(port, name) == expected


async def _resolves(port: int, name: str) -> bool:
    return bool(await addresses(port, name))


async def _nxdomain(port: int, name: str) -> bool:
    return bool((await ask(port, name)).header.rcode == RCODE.NXDOMAIN)


async def test_many_endpoints_truncate_over_udp_and_come_whole_over_tcp(tmp_path: Path) -> None:
    async with in_process_master(tmp_path) as api:
        await api.services.create(make_service("many", "None", (("pg", "TCP", 5432),)))
        ips = [f"10.244.0.{i}" for i in range(1, 51)]
        await api.endpoint_slices.create(make_slice("many", ips))
        async with cluster_dns(api) as port:
            cut = await ask(port, f"many.{SUFFIX}")
            assert cut.header.tc == 1 and not cut.rr
            assert sorted(await addresses(port, f"many.{SUFFIX}", tcp=True)) == sorted(ips)


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


@pytest.mark.slow
async def test_the_kubeling_dns_process(tmp_path: Path) -> None:
    async with in_process_master(tmp_path) as api:
        web = await api.services.create(make_service("web"))
        dns_port, health_port = free_port(), free_port()
        proc = await asyncio.create_subprocess_exec(
            *[
                sys.executable,
                "-m",
                "kubeling.dns.main",
                "--master",
                api.target,
                "--insecure",
                "--listen",
                f"127.0.0.1:{dns_port}",
                "--health-bind-address",
                f"127.0.0.1:{health_port}",
                "--upstream",
                "",
            ],
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            base = f"http://127.0.0.1:{health_port}"

            async def ready() -> bool:
                return (await asyncio.to_thread(_get, f"{base}/readyz"))[0] == 200

            await eventually(ready, 20, retry_on=(OSError,))
            assert (await asyncio.to_thread(_get, f"{base}/healthz"))[0] == 200
            assert await addresses(dns_port, f"web.{SUFFIX}") == [web.spec.cluster_ip]
            refused = await ask(dns_port, "www.example.org", tcp=True)
            assert refused.header.rcode == RCODE.REFUSED
            _, metrics = await asyncio.to_thread(_get, f"{base}/metrics")
            assert 'kubeling_dns_requests_total{rcode="NOERROR",type="A"}' in metrics
            assert 'kubeling_dns_requests_total{rcode="REFUSED",type="A"}' in metrics
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(10):
                assert await proc.wait() == 0
        finally:
            if proc.returncode is None:
                os.kill(proc.pid, signal.SIGKILL)
                await proc.wait()


def test_flags_refuse_plaintext_beyond_loopback_and_no_credentials() -> None:
    from kubeling.dns.main import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--insecure", "--master", "10.0.0.1:6443"])
    with pytest.raises(SystemExit):
        parse_args([])  # neither --config nor --insecure
    args = parse_args(["--insecure", "--master", "127.0.0.1:6443", "--upstream", "10.0.0.2"])
    assert args.upstreams == (("10.0.0.2", 53),)


async def test_external_name_service_is_a_cname(tmp_path: Path) -> None:
    async with in_process_master(tmp_path) as api:
        svc = core_pb2.Service()
        svc.metadata.name = "ext"
        svc.metadata.namespace = NS
        svc.spec.type = "ExternalName"
        svc.spec.external_name = "db.example.org"
        await api.services.create(svc)
        async with cluster_dns(api) as port:
            reply = await ask(port, f"ext.{SUFFIX}")
            assert [(rr.rtype, str(rr.rdata)) for rr in reply.rr] == [
                (QTYPE.CNAME, "db.example.org.")
            ]


async def test_with_a_view_credential_from_a_config_file(tmp_path: Path) -> None:
    """Over mutual TLS, with a config file (as --config reads it) holding a
    kubeling:view user: the least role that may list and watch what DNS needs."""
    from kubeling.client.config import ClientConfig
    from kubeling.common import identity
    from tests.integration.test_tls_master import credentials
    from tests.support.inprocess import tls_master

    async with tls_master(tmp_path / "master") as (master, admin):
        web = await admin.services.create(make_service("web"))
        config_path = tmp_path / "dns.conf"
        creds = credentials(master, "kube-dns", identity.GROUP_VIEW)
        ClientConfig(admin.target, creds).save(config_path)
        async with Client.from_config(config_path, timeout=10) as api, cluster_dns(api) as port:
            assert await addresses(port, f"web.{SUFFIX}") == [web.spec.cluster_ip]
