"""The DNS server fed by the cluster: informers on Services and EndpointSlices keep
the index (records.py) current, under one supervisor as kube-proxy's watches are
(a crashed watch is restarted; one that cannot recover makes the process exit).
A change reaches answers as soon as its watch event arrives: answers are read
from the index at question time, nothing is cached per name."""

from __future__ import annotations

from typing import Any

import structlog

from kubeling.client import Client
from kubeling.client.informer import Informer
from kubeling.common.supervisor import Supervisor
from kubeling.dns.records import DEFAULT_DOMAIN, DEFAULT_TTL, ClusterIndex
from kubeling.dns.server import DnsConfig, DnsServer
from kubeling.v1 import core_pb2, discovery_pb2

log = structlog.get_logger(__name__)


class ClusterDns:
    def __init__(
        self,
        api: Client,
        config: DnsConfig,
        domain: str = DEFAULT_DOMAIN,
        ttl: int = DEFAULT_TTL,
        supervisor: Supervisor | None = None,
    ) -> None:
        self.index = ClusterIndex(domain, ttl)
        self.services: Informer[core_pb2.Service] = Informer(api.services)
        self.slices: Informer[discovery_pb2.EndpointSlice] = Informer(api.endpoint_slices)
        self.services.add_handler(self.index.on_service)
        self.slices.add_handler(self.index.on_slice)
        self.watches: dict[str, Informer[Any]] = {
            "dns-services": self.services,
            "dns-endpointslices": self.slices,
        }
        self.supervisor = supervisor or Supervisor("kubeling-dns")
        self.server = DnsServer(self.index, config, ready=self.ready)

    def ready(self) -> bool:
        """Both caches filled: until then a NXDOMAIN could be false."""
        return all(i.synced.is_set() for i in self.watches.values())

    def healthy(self) -> bool:
        return not self.supervisor.failed.is_set()

    async def start(self) -> int:
        """Start the watches and listen; the DNS port (useful with port 0)."""
        for name, informer in self.watches.items():
            self.supervisor.start(name, informer.run)
        return await self.server.start()

    async def stop(self) -> None:
        await self.server.stop()
        await self.supervisor.stop()
