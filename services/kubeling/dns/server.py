"""DNS over UDP and TCP (RFC 1035, RFC 7766) on one address and port, with dnslib.

A question about the cluster domain (or the PTR of a cluster address) is answered
from the index (records.py) at once, authoritatively; any other is forwarded, as
sent, to the upstream resolvers in order (each within `forward_timeout`) over the
transport it came on, and the upstream's reply is relayed. Without upstreams
such a question is REFUSED at once; when every upstream fails it is SERVFAIL.
Before the caches are filled, cluster questions get SERVFAIL (the client retries)
rather than a false NXDOMAIN.

A UDP reply longer than 512 bytes (or than the EDNS0 size the client offered, up
to 4096) is cut to its header and question with the TC bit, so the client asks
again over TCP. Work in flight is bounded (`max_inflight` UDP questions,
`max_tcp` connections, each closed after `tcp_idle` seconds of silence): a flood
costs dropped questions, not memory.

Metrics: `kubeling_dns_requests_total{type,rcode}` (the type among the common
ones, else "other", so labels stay few), `kubeling_dns_request_duration_seconds
{source=cluster|forward}`, `kubeling_dns_truncated_total`,
`kubeling_dns_forward_failures_total{upstream}`, `kubeling_dns_dropped_total`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import structlog
from dnslib import EDNS0, OPCODE, QTYPE, RCODE, DNSHeader, DNSRecord
from prometheus_client import Counter, Histogram

from kubeling.common.httpserve import split_bind
from kubeling.dns.records import Answer, ClusterIndex

log = structlog.get_logger(__name__)

DEFAULT_PORT = 53
UDP_MIN = 512  # RFC 1035's limit without EDNS0
UDP_MAX = 4096  # what we accept from an EDNS0 offer
EDNS_SIZE = 1232  # what we offer back (the DNS flag day's advice)
_TYPES = frozenset({"A", "AAAA", "SRV", "PTR", "CNAME", "SOA", "NS", "TXT", "MX", "ANY"})

REQUESTS = Counter(
    "kubeling_dns_requests", "DNS requests answered, by question type and rcode", ["type", "rcode"]
)
DURATION = Histogram(
    "kubeling_dns_request_duration_seconds",
    "Time to answer a DNS request",
    ["source"],
    buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2, 5),
)
TRUNCATED = Counter("kubeling_dns_truncated", "UDP replies cut short with the TC bit")
FORWARD_FAILURES = Counter(
    "kubeling_dns_forward_failures", "Forwarded questions an upstream did not answer", ["upstream"]
)
DROPPED = Counter("kubeling_dns_dropped", "Questions dropped: too many in flight, or not a query")

Upstream = tuple[str, int]


@dataclass(frozen=True)
class DnsConfig:
    listen: str = f"0.0.0.0:{DEFAULT_PORT}"
    upstreams: tuple[Upstream, ...] = ()
    forward_timeout: float = 2.0  # per upstream
    max_inflight: int = 1000  # UDP questions being answered at once
    max_tcp: int = 256  # open TCP connections
    tcp_idle: float = 10.0  # seconds a TCP connection may stay silent


def parse_upstreams(value: str) -> tuple[Upstream, ...]:
    """`IP[:PORT],...` (an IPv6 address in brackets when it has a port)."""
    result = []
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        if item.startswith("["):
            host, _, port = item[1:].partition("]")
            result.append((host, int(port.lstrip(":") or DEFAULT_PORT)))
        elif item.count(":") == 1:
            host, _, port = item.partition(":")
            result.append((host, int(port)))
        else:
            result.append((item, DEFAULT_PORT))
    return tuple(result)


def _type_label(qtype: int) -> str:
    name = QTYPE.get(qtype, "other")
    return name if name in _TYPES else "other"


def udp_limit(request: DNSRecord) -> int:
    for rr in request.ar:
        if rr.rtype == QTYPE.OPT:
            return max(UDP_MIN, min(int(rr.rclass), UDP_MAX))
    return UDP_MIN


def _has_edns(request: DNSRecord) -> bool:
    return any(rr.rtype == QTYPE.OPT for rr in request.ar)


def _bare_reply(request: DNSRecord, rcode: int, **flags: int) -> DNSRecord:
    reply = request.reply(ra=1, aa=0)
    reply.header.rcode = rcode
    for flag, value in flags.items():
        setattr(reply.header, flag, value)
    if _has_edns(request):
        reply.add_ar(EDNS0(udp_len=EDNS_SIZE))
    return reply


def _format_error(data: bytes) -> bytes | None:
    """FORMERR for a message that does not parse, when it has a header to answer."""
    if len(data) < 12 or data[2] & 0x80:  # too short, or itself a response
        return None
    header = DNSHeader(id=int.from_bytes(data[:2], "big"), qr=1, rcode=RCODE.FORMERR)
    return bytes(DNSRecord(header).pack())


class DnsServer:
    def __init__(
        self,
        index: ClusterIndex,
        config: DnsConfig,
        ready: Callable[[], bool] = lambda: True,
    ) -> None:
        self.index = index
        self.config = config
        self.ready = ready
        self.port = 0
        self._udp: asyncio.DatagramTransport | None = None
        self._udp_protocol: _UdpProtocol | None = None
        self._tcp: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._connections: set[asyncio.StreamWriter] = set()

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> int:
        """Listen on UDP and TCP, on one port (with port 0: a free one for both)."""
        host, port = split_bind(self.config.listen, DEFAULT_PORT)
        loop = asyncio.get_running_loop()
        for attempt in range(20):
            transport, protocol = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self), local_addr=(host, port)
            )
            bound = int(transport.get_extra_info("sockname")[1])
            try:
                self._tcp = await asyncio.start_server(self._on_tcp, host, bound)
            except OSError:
                transport.close()
                if port != 0 or attempt == 19:
                    raise
                continue  # the free UDP port was taken for TCP: try another
            self._udp = transport  # type: ignore[assignment]
            self._udp_protocol = protocol
            self.port = bound
            log.info("dns listening", host=host, port=bound, udp=True, tcp=True)
            return bound
        raise AssertionError("unreachable")

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
        for writer in list(self._connections):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._tcp is not None:
            await self._tcp.wait_closed()
        if self._udp_protocol is not None:
            await self._udp_protocol.closed  # the socket is closed: the port is free

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> bool:
        if len(self._tasks) >= self.config.max_inflight:
            DROPPED.inc()
            coro.close()
            return False
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    # -- transports ----------------------------------------------------------------

    def on_datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        self._spawn(self._answer_udp(data, addr))

    async def _answer_udp(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = await self.handle(data, tcp=False)
        if reply is not None and self._udp is not None and not self._udp.is_closing():
            self._udp.sendto(reply, addr)

    async def _on_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._connections) >= self.config.max_tcp:
            DROPPED.inc()
            writer.close()
            return
        self._connections.add(writer)
        try:
            while True:
                async with asyncio.timeout(self.config.tcp_idle):
                    size = int.from_bytes(await reader.readexactly(2), "big")
                    data = await reader.readexactly(size)
                reply = await self.handle(data, tcp=True)
                if reply is None:
                    break
                writer.write(len(reply).to_bytes(2, "big") + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        finally:
            self._connections.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    # -- answering -----------------------------------------------------------------

    async def handle(self, data: bytes, tcp: bool) -> bytes | None:
        """The reply to one DNS message (None: no reply is due)."""
        started = time.monotonic()
        try:
            request = DNSRecord.parse(data)
        except Exception:
            reply = _format_error(data)
            if reply is not None:
                REQUESTS.labels("other", "FORMERR").inc()
            return reply
        if request.header.qr:
            DROPPED.inc()
            return None  # a response sent to us: never answer one (loops)
        type_label = _type_label(request.q.qtype) if request.questions else "other"
        try:
            reply_bytes, source = await self._answer(data, request, tcp)
        except Exception:
            # A bug must cost this question a SERVFAIL, not the client a timeout
            # (UDP) or its connection (TCP).
            log.exception("dns question failed", question=str(request.q.qname))
            reply_bytes, source = self._pack(_bare_reply(request, RCODE.SERVFAIL), request, tcp), ""
        rcode = RCODE.get(reply_bytes[3] & 0x0F, "other") if len(reply_bytes) > 3 else "other"
        REQUESTS.labels(type_label, rcode).inc()
        if source:
            DURATION.labels(source).observe(time.monotonic() - started)
        return reply_bytes

    async def _answer(self, data: bytes, request: DNSRecord, tcp: bool) -> tuple[bytes, str]:
        """The reply to a parsed query, and where it came from (cluster, forward)."""
        pack = self._pack
        if request.header.opcode != OPCODE.QUERY:
            return pack(_bare_reply(request, RCODE.NOTIMP), request, tcp), "cluster"
        if len(request.questions) != 1:
            return pack(_bare_reply(request, RCODE.FORMERR), request, tcp), "cluster"
        if request.q.qtype in (QTYPE.AXFR, QTYPE.IXFR):
            # Zone transfers are not served: the zone is the API's, read it there.
            return pack(_bare_reply(request, RCODE.REFUSED), request, tcp), "cluster"
        question = request.q
        answer = self.index.resolve(question.qname, question.qtype)
        if answer is not None:
            if self.ready():
                return pack(self._reply(request, answer), request, tcp), "cluster"
            return pack(_bare_reply(request, RCODE.SERVFAIL), request, tcp), "cluster"
        if self.index.in_zone(str(question.qname)) and not self.ready():
            return pack(_bare_reply(request, RCODE.SERVFAIL), request, tcp), "cluster"
        return await self._forwarded(data, request, tcp), "forward"

    def _reply(self, request: DNSRecord, answer: Answer) -> DNSRecord:
        reply = request.reply(ra=1, aa=1)
        reply.header.rcode = answer.rcode
        for rr in answer.answers:
            reply.add_answer(rr)
        for rr in answer.authority:
            reply.add_auth(rr)
        for rr in answer.additional:
            reply.add_ar(rr)
        if _has_edns(request):
            reply.add_ar(EDNS0(udp_len=EDNS_SIZE))
        return reply

    @staticmethod
    def _pack(reply: DNSRecord, request: DNSRecord, tcp: bool) -> bytes:
        data = bytes(reply.pack())
        if tcp or len(data) <= udp_limit(request):
            return data
        TRUNCATED.inc()
        cut = _bare_reply(request, reply.header.rcode, tc=1, aa=reply.header.aa)
        return bytes(cut.pack())

    async def _forwarded(self, data: bytes, request: DNSRecord, tcp: bool) -> bytes:
        if not self.config.upstreams:
            return self._pack(_bare_reply(request, RCODE.REFUSED), request, tcp)
        for upstream in self.config.upstreams:
            try:
                async with asyncio.timeout(self.config.forward_timeout):
                    if tcp:
                        reply = await _ask_tcp(data, upstream)
                    else:
                        reply = await _ask_udp(data, upstream)
            except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
                FORWARD_FAILURES.labels(f"{upstream[0]}:{upstream[1]}").inc()
                log.debug("upstream failed", upstream=upstream, error=repr(exc))
                continue
            if not tcp and len(reply) > udp_limit(request):
                TRUNCATED.inc()
                return bytes(_bare_reply(request, RCODE.NOERROR, tc=1).pack())
            return reply
        return self._pack(_bare_reply(request, RCODE.SERVFAIL), request, tcp)


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.closed = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.server.on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        # An ICMP error about an earlier reply: nothing to do, the client retries.
        log.debug("udp error", error=str(exc))


class _UpstreamProtocol(asyncio.DatagramProtocol):
    """Takes the first reply with the question's ID from the upstream it asked."""

    def __init__(self, query_id: bytes, reply: asyncio.Future[bytes]) -> None:
        self.query_id = query_id
        self.reply = reply

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if data[:2] == self.query_id and len(data) >= 12 and not self.reply.done():
            self.reply.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.reply.done():
            self.reply.set_exception(exc)


async def _ask_udp(data: bytes, upstream: Upstream) -> bytes:
    loop = asyncio.get_running_loop()
    reply: asyncio.Future[bytes] = loop.create_future()
    # A socket per question: a fresh random source port, and no state to keep.
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _UpstreamProtocol(data[:2], reply), remote_addr=upstream
    )
    try:
        transport.sendto(data)
        return await reply
    finally:
        transport.close()


async def _ask_tcp(data: bytes, upstream: Upstream) -> bytes:
    reader, writer = await asyncio.open_connection(*upstream)
    try:
        writer.write(len(data).to_bytes(2, "big") + data)
        await writer.drain()
        size = int.from_bytes(await reader.readexactly(2), "big")
        return await reader.readexactly(size)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def resolv_conf_upstreams(path: str = "/etc/resolv.conf") -> tuple[Upstream, ...]:
    """The nameservers of `path` that are not loopback (a local stub resolver would
    be ourselves, or unreachable from a pod); empty when none or unreadable."""
    found: list[Upstream] = []
    try:
        with open(path, encoding="utf-8") as file:
            lines = file.read().splitlines()
    except OSError:
        return ()
    for line in lines:
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            try:
                address = ipaddress.ip_address(fields[1].split("%")[0])
            except ValueError:
                continue
            if not address.is_loopback and not address.is_unspecified:
                found.append((str(address), DEFAULT_PORT))
    return tuple(found)
