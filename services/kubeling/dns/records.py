"""Names of the cluster domain, answered from Services and EndpointSlices.

Kubernetes' DNS specification for service discovery, under the cluster domain
(`cluster.local` by default):

- `SVC.NS.svc.DOMAIN` A: the ClusterIP; of a headless Service (clusterIP None), one
  A per ready endpoint address (every address with publishNotReadyAddresses); of
  an ExternalName Service, a CNAME to spec.externalName (whatever the type asked).
- `_PORT._PROTO.SVC.NS.svc.DOMAIN` SRV, for each named port: the Service's name and
  port; of a headless Service, one SRV per ready endpoint, naming
  `HOST.SVC.NS.svc.DOMAIN` (HOST: the endpoint's hostname, else its address with
  dashes) and the endpoint's port; the targets' A records go in the additional
  section.
- `HOST.SVC.NS.svc.DOMAIN` A: that endpoint of a headless Service.
- `A-B-C-D.NS.pod.DOMAIN` A: A.B.C.D (CoreDNS' "pods insecure", kubeadm's default).
- `D.C.B.A.in-addr.arpa` PTR: the Service name of a ClusterIP, the endpoint name
  of a headless Service's address. An address that is neither is not ours: it is
  forwarded (as CoreDNS' `fallthrough in-addr.arpa`).
- Any other name of the domain: NXDOMAIN; a name that exists without the type
  asked: NOERROR without answers (NODATA); both with the zone's SOA in the
  authority section, whose minimum is the negative TTL (RFC 2308).

`resolve` returns None for a name that is not ours (the server forwards it).

The index holds references to the informers' objects (no copies) and a reverse
map for PTR, rebuilt on the first PTR question after a change; nothing is kept
per question, so memory follows the size of the cluster, not the query load.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from dnslib import CNAME, NS, PTR, QTYPE, RCODE, RR, SOA, SRV, A, DNSLabel

from kubeling.api.endpoints import endpoint_ready, is_ipv4
from kubeling.api.wellknown import SERVICE_NAME_LABEL
from kubeling.v1 import core_pb2, discovery_pb2

DEFAULT_DOMAIN = "cluster.local"
DEFAULT_TTL = 30
NEGATIVE_TTL = 5
_REVERSE_V4 = "in-addr.arpa"
_PROTOCOLS = {"_tcp": "TCP", "_udp": "UDP", "_sctp": "SCTP"}


@dataclass
class Answer:
    """What the server puts in a reply: rcode and its three sections."""

    rcode: int = RCODE.NOERROR
    answers: list[RR] = field(default_factory=list)
    authority: list[RR] = field(default_factory=list)
    additional: list[RR] = field(default_factory=list)


def _dashed(address: str) -> str:
    return address.replace(".", "-")


def _key(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


def headless(service: core_pb2.Service) -> bool:
    return service.spec.cluster_ip == "None"


@dataclass(frozen=True)
class _Endpoint:
    host: str  # the label under the service name
    address: str
    port: int  # of the slice port asked about; 0 when none is


class ClusterIndex:
    """Services and their EndpointSlices by namespace/name, fed by informer events
    (`on_service`, `on_slice`) or directly (`put_service`, `put_slice`: tests)."""

    def __init__(self, domain: str = DEFAULT_DOMAIN, ttl: int = DEFAULT_TTL) -> None:
        self.domain = domain.strip(".").lower()
        self.ttl = ttl
        self.negative_ttl = min(NEGATIVE_TTL, ttl)
        self.services: dict[str, core_pb2.Service] = {}
        self.slices: dict[str, dict[str, discovery_pb2.EndpointSlice]] = {}
        self._namespaces: dict[str, int] = {}  # namespace -> how many services
        self._reverse: dict[str, str] | None = None  # address -> name; None: stale
        self.serial = int(time.time())  # the SOA serial: changes with the data

    # -- feeding -------------------------------------------------------------------

    def _changed(self) -> None:
        self._reverse = None
        self.serial = max(self.serial + 1, int(time.time()))

    def put_service(self, service: core_pb2.Service) -> None:
        key = _key(service.metadata.namespace, service.metadata.name)
        if key not in self.services:
            ns = service.metadata.namespace
            self._namespaces[ns] = self._namespaces.get(ns, 0) + 1
        self.services[key] = service
        self._changed()

    def delete_service(self, namespace: str, name: str) -> None:
        if self.services.pop(_key(namespace, name), None) is not None:
            left = self._namespaces.get(namespace, 1) - 1
            if left > 0:
                self._namespaces[namespace] = left
            else:
                self._namespaces.pop(namespace, None)
            self._changed()

    def put_slice(self, endpoint_slice: discovery_pb2.EndpointSlice) -> None:
        key = self._slice_key(endpoint_slice)
        if key is not None:
            self.slices.setdefault(key, {})[endpoint_slice.metadata.name] = endpoint_slice
            self._changed()

    def delete_slice(self, endpoint_slice: discovery_pb2.EndpointSlice) -> None:
        key = self._slice_key(endpoint_slice)
        if key is None:
            return
        by_name = self.slices.get(key, {})
        by_name.pop(endpoint_slice.metadata.name, None)
        if not by_name:
            self.slices.pop(key, None)
        self._changed()

    @staticmethod
    def _slice_key(endpoint_slice: discovery_pb2.EndpointSlice) -> str | None:
        name = endpoint_slice.metadata.labels.get(SERVICE_NAME_LABEL)
        return _key(endpoint_slice.metadata.namespace, name) if name else None

    def on_service(
        self, kind: str, old: core_pb2.Service | None, new: core_pb2.Service | None
    ) -> None:
        obj = new if new is not None else old
        if obj is None:
            return
        if kind == "DELETED":
            self.delete_service(obj.metadata.namespace, obj.metadata.name)
        else:
            self.put_service(obj)

    def on_slice(
        self,
        kind: str,
        old: discovery_pb2.EndpointSlice | None,
        new: discovery_pb2.EndpointSlice | None,
    ) -> None:
        # A slice whose service-name label changed leaves its old service.
        if old is not None:
            self.delete_slice(old)
        if new is not None:
            if kind == "DELETED":
                self.delete_slice(new)
            else:
                self.put_slice(new)

    # -- reading -------------------------------------------------------------------

    def endpoints(
        self, service: core_pb2.Service, port_name: str = "", protocol: str = ""
    ) -> list[_Endpoint]:
        """The service's endpoints DNS publishes (ready ones, or all with
        publishNotReadyAddresses), IPv4, sorted; with `protocol`, only those of
        slices that have the named port, with its number."""
        key = _key(service.metadata.namespace, service.metadata.name)
        everyone = service.spec.publish_not_ready_addresses
        seen: dict[str, _Endpoint] = {}
        for endpoint_slice in self.slices.get(key, {}).values():
            if (endpoint_slice.address_type or "IPv4") != "IPv4":
                continue
            port = 0
            if protocol:
                for slice_port in endpoint_slice.ports:
                    if (
                        slice_port.name == port_name
                        and (slice_port.protocol or "TCP").upper() == protocol
                        and slice_port.HasField("port")
                    ):
                        port = slice_port.port
                if not 0 < port < 65536:
                    continue
            for endpoint in endpoint_slice.endpoints:
                if not (everyone or endpoint_ready(endpoint)):
                    continue
                for address in endpoint.addresses[:1]:  # the first is the one used
                    if is_ipv4(address) and address not in seen:
                        host = endpoint.hostname.lower() or _dashed(address)
                        seen[address] = _Endpoint(host, address, port)
        return sorted(seen.values(), key=lambda e: (e.host, e.address))

    def service_name(self, service: core_pb2.Service) -> str:
        return f"{service.metadata.name}.{service.metadata.namespace}.svc.{self.domain}"

    def reverse(self, address: str) -> str | None:
        if self._reverse is None:
            self._reverse = dict(self._reverse_entries())
        return self._reverse.get(address)

    def _reverse_entries(self) -> Iterator[tuple[str, str]]:
        for service in self.services.values():
            if service.spec.type == "ExternalName":
                continue
            name = self.service_name(service)
            if headless(service):
                for endpoint in self.endpoints(service):
                    yield endpoint.address, f"{endpoint.host}.{name}"
            elif is_ipv4(service.spec.cluster_ip):
                yield service.spec.cluster_ip, name

    # -- answering -----------------------------------------------------------------

    def in_zone(self, name: str) -> bool:
        name = name.rstrip(".").lower()
        return name == self.domain or name.endswith("." + self.domain)

    def soa(self) -> RR:
        origin = self.domain + "."
        return RR(
            origin,
            QTYPE.SOA,
            ttl=self.negative_ttl,
            rdata=SOA(
                f"ns.dns.{origin}",
                f"hostmaster.{origin}",
                # serial, refresh, retry, expire, minimum (the negative TTL)
                (self.serial % 2**32, 7200, 1800, 86400, self.negative_ttl),
            ),
        )

    def resolve(self, qname: DNSLabel | str, qtype: int) -> Answer | None:
        """The answer to `qname`/`qtype`, or None when the name is not ours."""
        name = str(qname).rstrip(".").lower()
        if name.endswith("." + _REVERSE_V4):
            return self._resolve_reverse(qname, name, qtype)
        if not self.in_zone(name):
            return None
        labels = name[: -len(self.domain)].rstrip(".").split(".") if name != self.domain else []
        answer = self._resolve_zone(qname, labels, qtype)
        if not answer.answers and answer.rcode in (RCODE.NOERROR, RCODE.NXDOMAIN):
            answer.authority.append(self.soa())
        return answer

    def _resolve_reverse(self, qname: DNSLabel | str, name: str, qtype: int) -> Answer | None:
        octets = name[: -len(_REVERSE_V4) - 1].split(".")
        address = ".".join(reversed(octets))
        if len(octets) != 4 or not is_ipv4(address):
            return None
        target = self.reverse(address)
        if target is None:
            return None
        if qtype not in (QTYPE.PTR, QTYPE.ANY):
            return Answer()  # NODATA (no SOA: the reverse zone is not the cluster zone)
        return Answer(answers=[RR(qname, QTYPE.PTR, ttl=self.ttl, rdata=PTR(target + "."))])

    def _resolve_zone(self, qname: DNSLabel | str, labels: list[str], qtype: int) -> Answer:
        if not labels:  # the apex
            if qtype == QTYPE.SOA:
                return Answer(answers=[self.soa()])
            if qtype == QTYPE.NS:
                target = f"ns.dns.{self.domain}."
                return Answer(answers=[RR(qname, QTYPE.NS, ttl=self.ttl, rdata=NS(target))])
            return Answer()
        if labels[-1] == "svc":
            return self._resolve_svc(qname, labels[:-1], qtype)
        if labels[-1] == "pod" and len(labels) == 3:
            address = labels[0].replace("-", ".")
            if labels[0].count("-") == 3 and is_ipv4(address):
                if qtype in (QTYPE.A, QTYPE.ANY):
                    return Answer(answers=[self._a(qname, address)])
                return Answer()
        if labels == ["pod"]:
            return Answer()
        return Answer(rcode=RCODE.NXDOMAIN)

    def _a(self, name: DNSLabel | str, address: str) -> RR:
        return RR(name, QTYPE.A, ttl=self.ttl, rdata=A(address))

    def _resolve_svc(self, qname: DNSLabel | str, labels: list[str], qtype: int) -> Answer:
        if not labels:
            return Answer()  # svc.DOMAIN exists: it has names below it
        if len(labels) == 1:
            exists = labels[0] in self._namespaces
            return Answer() if exists else Answer(rcode=RCODE.NXDOMAIN)
        service = self.services.get(_key(labels[-1], labels[-2]))
        if service is None:
            return Answer(rcode=RCODE.NXDOMAIN)
        if len(labels) == 2:
            return self._service(qname, service, qtype)
        if len(labels) == 3:
            return self._endpoint(qname, service, labels[0], qtype)
        if len(labels) == 4 and labels[0].startswith("_") and labels[1] in _PROTOCOLS:
            return self._srv(qname, service, labels[0][1:], _PROTOCOLS[labels[1]], qtype)
        return Answer(rcode=RCODE.NXDOMAIN)

    def _service(self, qname: DNSLabel | str, service: core_pb2.Service, qtype: int) -> Answer:
        spec = service.spec
        if spec.type == "ExternalName":
            if not spec.external_name:
                return Answer()
            target = spec.external_name.rstrip(".") + "."
            return Answer(answers=[RR(qname, QTYPE.CNAME, ttl=self.ttl, rdata=CNAME(target))])
        if qtype not in (QTYPE.A, QTYPE.ANY):
            return Answer()
        if headless(service):
            return Answer(answers=[self._a(qname, e.address) for e in self.endpoints(service)])
        if is_ipv4(spec.cluster_ip):
            return Answer(answers=[self._a(qname, spec.cluster_ip)])
        return Answer()

    def _endpoint(
        self, qname: DNSLabel | str, service: core_pb2.Service, host: str, qtype: int
    ) -> Answer:
        if not headless(service):
            return Answer(rcode=RCODE.NXDOMAIN)
        found = [e for e in self.endpoints(service) if e.host == host]
        if not found:
            return Answer(rcode=RCODE.NXDOMAIN)
        if qtype not in (QTYPE.A, QTYPE.ANY):
            return Answer()
        return Answer(answers=[self._a(qname, e.address) for e in found])

    def _srv(
        self,
        qname: DNSLabel | str,
        service: core_pb2.Service,
        port_name: str,
        protocol: str,
        qtype: int,
    ) -> Answer:
        name = self.service_name(service)
        if headless(service):
            found = self.endpoints(service, port_name, protocol)
            if not found:
                return Answer(rcode=RCODE.NXDOMAIN)
            if qtype not in (QTYPE.SRV, QTYPE.ANY):
                return Answer()
            weight = max(1, 100 // len(found))
            answer = Answer()
            for endpoint in found:
                target = f"{endpoint.host}.{name}."
                rdata = SRV(priority=0, weight=weight, port=endpoint.port, target=target)
                answer.answers.append(RR(qname, QTYPE.SRV, ttl=self.ttl, rdata=rdata))
                answer.additional.append(self._a(target, endpoint.address))
            return answer
        ports = [
            p
            for p in service.spec.ports
            if p.name == port_name and (p.protocol or "TCP").upper() == protocol
        ]
        if not ports or service.spec.type == "ExternalName":
            return Answer(rcode=RCODE.NXDOMAIN)
        if qtype not in (QTYPE.SRV, QTYPE.ANY):
            return Answer()
        answer = Answer()
        rdata = SRV(priority=0, weight=100, port=ports[0].port, target=name + ".")
        answer.answers.append(RR(qname, QTYPE.SRV, ttl=self.ttl, rdata=rdata))
        if is_ipv4(service.spec.cluster_ip):
            answer.additional.append(self._a(name + ".", service.spec.cluster_ip))
        return answer
