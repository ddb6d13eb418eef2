"""The DNS server's wire side (dns/server.py) on loopback: UDP and TCP, truncation
and EDNS0, forwarding to a fake upstream the test runs on 127.0.0.1, refusal
without upstreams, SERVFAIL before the caches are filled, malformed messages,
metrics. No packet leaves loopback."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from dnslib import EDNS0, QTYPE, RCODE, RR, TXT, A, DNSRecord
from prometheus_client import REGISTRY

from kubeling.dns.records import ClusterIndex
from kubeling.dns.server import (
    DnsConfig,
    DnsServer,
    parse_upstreams,
    resolv_conf_upstreams,
)
from tests.unit.test_dns_records import endpoint_slice, service

UPSTREAM_ADDRESS = "192.0.2.53"  # TEST-NET-1: what the fake upstream answers


class FakeUpstream:
    """A resolver on 127.0.0.1 (UDP and TCP, one port) answering every A question
    with UPSTREAM_ADDRESS, and `big.example.` with TXT records too long for 512
    bytes. It counts the questions it got."""

    def __init__(self) -> None:
        self.questions: list[str] = []
        self.port = 0
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None

    def answer(self, data: bytes) -> bytes:
        request = DNSRecord.parse(data)
        name = str(request.q.qname)
        self.questions.append(name)
        reply = request.reply(aa=0)
        if name == "big.example.":
            for i in range(8):
                reply.add_answer(RR(name, QTYPE.TXT, ttl=60, rdata=TXT(f"{i}" * 200)))
        else:
            reply.add_answer(RR(name, QTYPE.A, ttl=60, rdata=A(UPSTREAM_ADDRESS)))
        return bytes(reply.pack())

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        upstream = self

        class Udp(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport

            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                self.transport.sendto(upstream.answer(data), addr)  # type: ignore[attr-defined]

        async def tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                size = int.from_bytes(await reader.readexactly(2), "big")
                reply = self.answer(await reader.readexactly(size))
                writer.write(len(reply).to_bytes(2, "big") + reply)
                await writer.drain()
            writer.close()

        for _ in range(20):
            transport, _ = await loop.create_datagram_endpoint(Udp, local_addr=("127.0.0.1", 0))
            port = transport.get_extra_info("sockname")[1]
            try:
                self._tcp = await asyncio.start_server(tcp, "127.0.0.1", port)
            except OSError:
                transport.close()
                continue
            self._udp = transport  # type: ignore[assignment]
            self.port = port
            return port
        raise RuntimeError("no free port for the fake upstream")

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()


@contextlib.asynccontextmanager
async def fake_upstream() -> AsyncIterator[FakeUpstream]:
    upstream = FakeUpstream()
    await upstream.start()
    try:
        yield upstream
    finally:
        await upstream.stop()


@contextlib.asynccontextmanager
async def dns_server(index: ClusterIndex, **config: object) -> AsyncIterator[DnsServer]:
    server = DnsServer(index, DnsConfig(listen="127.0.0.1:0", **config))  # type: ignore[arg-type]
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def ask(
    port: int, name: str, qtype: str = "A", *, tcp: bool = False, edns: int = 0
) -> DNSRecord:
    """Ask 127.0.0.1:`port` in a thread (dnslib's client blocks) and parse the reply."""
    question = DNSRecord.question(name, qtype)
    if edns:
        question.add_ar(EDNS0(udp_len=edns))
    raw = await asyncio.to_thread(question.send, "127.0.0.1", port, tcp=tcp, timeout=5)
    reply = DNSRecord.parse(raw)
    assert reply.header.id == question.header.id
    return reply


def big_index() -> ClusterIndex:
    index = ClusterIndex()
    index.put_service(service("web"))
    index.put_service(service("many", cluster_ip="None", ports=()))
    addresses = [(f"10.244.0.{i}", True, "") for i in range(1, 61)]
    index.put_slice(endpoint_slice("many", addresses))
    return index


def counter(rtype: str, rcode: str) -> float:
    value = REGISTRY.get_sample_value(
        "kubeling_dns_requests_total", {"type": rtype, "rcode": rcode}
    )
    return value or 0.0


async def test_cluster_names_over_udp_and_tcp() -> None:
    async with dns_server(big_index()) as server:
        for tcp in (False, True):
            reply = await ask(server.port, "web.demo.svc.cluster.local", tcp=tcp)
            assert reply.header.rcode == RCODE.NOERROR and reply.header.aa == 1
            assert [str(rr.rdata) for rr in reply.rr] == ["10.96.0.20"]
        before = counter("A", "NXDOMAIN")
        missing = await ask(server.port, "nope.demo.svc.cluster.local")
        assert missing.header.rcode == RCODE.NXDOMAIN
        assert missing.auth[0].rtype == QTYPE.SOA
        assert counter("A", "NXDOMAIN") == before + 1


async def test_udp_reply_too_long_is_truncated_then_whole_over_tcp() -> None:
    async with dns_server(big_index()) as server:
        name = "many.demo.svc.cluster.local"
        cut = await ask(server.port, name)
        assert cut.header.tc == 1 and not cut.rr
        assert str(cut.q.qname) == name + "."  # the question stays, as resolvers expect
        whole = await ask(server.port, name, tcp=True)
        assert whole.header.tc == 0 and len(whole.rr) == 60
        # An EDNS0 offer of 4096 bytes takes it over UDP, and is answered with EDNS0.
        offered = await ask(server.port, name, edns=4096)
        assert offered.header.tc == 0 and len(offered.rr) == 60
        assert any(rr.rtype == QTYPE.OPT for rr in offered.ar)


async def test_other_names_go_to_the_upstream_over_the_same_transport() -> None:
    async with fake_upstream() as upstream:
        upstreams = (("127.0.0.1", upstream.port),)
        async with dns_server(big_index(), upstreams=upstreams) as server:
            for tcp in (False, True):
                reply = await ask(server.port, "www.example.org", tcp=tcp)
                assert reply.header.rcode == RCODE.NOERROR
                assert [str(rr.rdata) for rr in reply.rr] == [UPSTREAM_ADDRESS]
            assert upstream.questions == ["www.example.org."] * 2
            # A PTR of an address that is not the cluster's goes upstream too.
            await ask(server.port, "8.8.8.8.in-addr.arpa", "PTR")
            assert upstream.questions[-1] == "8.8.8.8.in-addr.arpa."
            # Cluster names never do.
            await ask(server.port, "nope.demo.svc.cluster.local")
            assert len(upstream.questions) == 3
            # A long upstream answer is cut over UDP and whole over TCP.
            cut = await ask(server.port, "big.example")
            assert cut.header.tc == 1 and not cut.rr
            whole = await ask(server.port, "big.example", tcp=True)
            assert len(whole.rr) == 8


async def test_without_upstreams_other_names_are_refused_at_once() -> None:
    async with dns_server(big_index()) as server:
        started = time.monotonic()
        reply = await ask(server.port, "www.example.org")
        assert reply.header.rcode == RCODE.REFUSED
        assert time.monotonic() - started < 1.0


async def test_a_silent_upstream_gives_servfail_after_the_timeout() -> None:
    # A UDP port bound and never read: questions to it get no answer.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        upstreams = (silent.getsockname(),)
        async with dns_server(big_index(), upstreams=upstreams, forward_timeout=0.3) as server:
            started = time.monotonic()
            reply = await ask(server.port, "www.example.org")
            assert reply.header.rcode == RCODE.SERVFAIL
            assert 0.25 < time.monotonic() - started < 2.0


async def test_not_ready_answers_servfail_for_cluster_names_only() -> None:
    server = DnsServer(big_index(), DnsConfig(listen="127.0.0.1:0"), ready=lambda: False)
    await server.start()
    try:
        reply = await ask(server.port, "web.demo.svc.cluster.local")
        assert reply.header.rcode == RCODE.SERVFAIL and not reply.rr
        nxdomain_would_be = await ask(server.port, "nope.demo.svc.cluster.local")
        assert nxdomain_would_be.header.rcode == RCODE.SERVFAIL
        outside = await ask(server.port, "www.example.org")
        assert outside.header.rcode == RCODE.REFUSED
    finally:
        await server.stop()


async def test_malformed_messages() -> None:
    async with dns_server(big_index()) as server:
        garbage = b"\x12\x34" + b"\x01\x00" + b"\x00\x01" + b"\xff" * 10
        formerr = await server.handle(garbage, tcp=False)
        assert formerr is not None
        parsed = DNSRecord.parse(formerr)
        assert (parsed.header.id, parsed.header.rcode) == (0x1234, RCODE.FORMERR)
        # A response is never answered (no loops between servers), nor a scrap.
        response = DNSRecord.question("web.demo.svc.cluster.local").reply()
        assert await server.handle(bytes(response.pack()), tcp=False) is None
        assert await server.handle(b"\x00\x01", tcp=False) is None
        # Zone transfers are refused.
        axfr = await ask(server.port, "cluster.local", "AXFR", tcp=True)
        assert axfr.header.rcode == RCODE.REFUSED and not axfr.rr
        # The server still answers after them.
        reply = await ask(server.port, "web.demo.svc.cluster.local", tcp=True)
        assert reply.header.rcode == RCODE.NOERROR


class _BrokenIndex(ClusterIndex):
    def resolve(self, qname: object, qtype: int) -> None:
        raise RuntimeError("a bug")


async def test_a_failure_answering_is_servfail_and_the_connection_stays() -> None:
    async with dns_server(_BrokenIndex()) as server:
        assert (await ask(server.port, "web.demo.svc.cluster.local")).header.rcode == (
            RCODE.SERVFAIL
        )
        question = DNSRecord.question("web.demo.svc.cluster.local")
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            for _ in range(2):  # the same TCP connection answers again
                packed = question.pack()
                writer.write(len(packed).to_bytes(2, "big") + packed)
                size = int.from_bytes(await reader.readexactly(2), "big")
                reply = DNSRecord.parse(await reader.readexactly(size))
                assert reply.header.rcode == RCODE.SERVFAIL
        finally:
            writer.close()
            await writer.wait_closed()


async def test_stop_frees_the_port() -> None:
    async with dns_server(big_index()) as server:
        port = server.port
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", port))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind(("127.0.0.1", port))


def test_parse_upstreams() -> None:
    assert parse_upstreams("10.0.0.2, 10.0.0.3:5353,[fd00::1]:54,fd00::2") == (
        ("10.0.0.2", 53),
        ("10.0.0.3", 5353),
        ("fd00::1", 54),
        ("fd00::2", 53),
    )
    assert parse_upstreams("") == ()
    with pytest.raises(ValueError):
        parse_upstreams("10.0.0.2:dns")


def test_resolv_conf_upstreams_skip_loopback(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text(
        "# comment\nnameserver 127.0.0.53\nnameserver 10.0.0.2\nsearch x\n"
        "nameserver ::1\nnameserver fe80::1%eth0\nnameserver bogus\n"
    )
    assert resolv_conf_upstreams(str(conf)) == (("10.0.0.2", 53), ("fe80::1", 53))
    assert resolv_conf_upstreams(str(tmp_path / "missing")) == ()
