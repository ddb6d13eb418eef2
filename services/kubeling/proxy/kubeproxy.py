"""The kube-proxy process: watches Services, EndpointSlices and its own Node, batches
changes, and has the proxier apply them, one nftables transaction per sync.

Syncing follows upstream's bounded-frequency runner: a change wakes the loop, but
two syncs start at least `min_sync_interval` apart; every `sync_period` (and at
start, and after a failed sync) the whole table is rewritten.

The watches (services, endpointslices, the node) and the sync loop run under one
supervisor (common/supervisor.py): a crash is logged, counted and restarted; a
restarted sync loop begins with a full sync; a loop that cannot recover turns
health unhealthy and `kubeling-proxy` exits non-zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
from prometheus_client import Counter, Gauge, Histogram

from kubeling.api.wellknown import TRIGGER_TIME_ANNOTATION, parse_trigger_time
from kubeling.client import Client
from kubeling.client.informer import Informer
from kubeling.common.supervisor import Supervisor
from kubeling.proxy.conntrack import Conntrack
from kubeling.proxy.nft import NftBackend
from kubeling.proxy.proxier import Proxier, SyncResult
from kubeling.proxy.servicemap import (
    Claim,
    ServicePort,
    external_addresses,
    external_owners,
    service_key,
    service_ports,
    slice_service,
)
from kubeling.v1 import core_pb2, discovery_pb2

log = structlog.get_logger(__name__)

_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60)
# Kubernetes' metric names, so dashboards for kube-proxy carry over.
SYNC_FULL = Histogram(
    "kubeproxy_sync_full_proxy_rules_duration_seconds",
    "Time to rewrite the whole nftables table",
    buckets=_BUCKETS,
)
SYNC_PARTIAL = Histogram(
    "kubeproxy_sync_partial_proxy_rules_duration_seconds",
    "Time to apply the rules of the services that changed",
    buckets=_BUCKETS,
)
PROGRAMMING = Histogram(
    "kubeproxy_network_programming_duration_seconds",
    "From an endpoint change (the slice's last-change-trigger-time, or when the proxy "
    "saw it) to its rules in the kernel",
    buckets=_BUCKETS,
)
SYNC_FAILURES = Counter(
    "kubeproxy_sync_proxy_rules_nftables_sync_failures_total", "nftables syncs that failed"
)
LAST_SYNC = Gauge(
    "kubeproxy_sync_proxy_rules_last_timestamp_seconds", "When the rules were last synced"
)
LAST_QUEUED = Gauge(
    "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
    "When a change was last queued for syncing",
)
SERVICES = Gauge("kubeproxy_sync_proxy_rules_services", "Service ports programmed")
ENDPOINTS = Gauge("kubeproxy_sync_proxy_rules_endpoints", "Ready endpoints programmed")


@dataclass
class ProxyConfig:
    node_name: str
    cluster_cidr: str = ""  # pod network; empty: the node's podCIDR, when it has one
    min_sync_interval: float = 1.0
    sync_period: float = 30.0


@dataclass
class SyncState:
    """What /healthz and the Status call report."""

    syncs: int = 0
    failures: int = 0
    last_error: str = ""
    last_sync_wall: float = 0.0  # time.time() of the last successful sync
    last_result: SyncResult | None = None
    queued_since: float | None = None  # monotonic; oldest change not yet applied
    # Recent programming latencies (seconds), for benchmarks and debugging.
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))


def _trigger_time(endpoint_slice: discovery_pb2.EndpointSlice) -> float | None:
    return parse_trigger_time(endpoint_slice.metadata.annotations.get(TRIGGER_TIME_ANNOTATION, ""))


class KubeProxy:
    def __init__(
        self,
        config: ProxyConfig,
        api: Client,
        backend: NftBackend,
        conntrack: Conntrack,
        supervisor: Supervisor | None = None,
    ) -> None:
        self.config = config
        self.api = api
        self.backend = backend
        self.conntrack = conntrack
        self.proxier = Proxier(backend, config.cluster_cidr)
        self.services: Informer[core_pb2.Service] = Informer(api.services)
        self.slices: Informer[discovery_pb2.EndpointSlice] = Informer(api.endpoint_slices)
        self.node: Informer[core_pb2.Node] = Informer(
            api.nodes, field_selector=f"metadata.name={config.node_name}"
        )
        self.supervisor = supervisor or Supervisor("kubeling-proxy")
        # Supervised loop name -> informer (the sync loop is "proxy-sync").
        self.watches: dict[str, Informer[Any]] = {
            "proxy-services": self.services,
            "proxy-endpointslices": self.slices,
            "proxy-node": self.node,
        }
        self.state = SyncState()
        self._slices_by_service: dict[str, dict[str, discovery_pb2.EndpointSlice]] = {}
        self._dirty: dict[str, float] = {}  # service key -> change time (wall clock)
        self._needs_full = True
        self._wake = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()
        self.synced = asyncio.Event()  # set after the first successful sync
        self._started = time.time()
        self.services.add_handler(self._on_service)
        self.slices.add_handler(self._on_slice)
        self.node.add_handler(self._on_node)

    # -- change tracking ---------------------------------------------------------

    def _mark_dirty(self, key: str, when: float) -> None:
        """Remember that `key` changed, keeping its oldest unapplied change time."""
        self._dirty[key] = min(self._dirty.get(key, when), when)

    @property
    def pending_changes(self) -> int:
        return len(self._dirty)

    def _queue(self, key: str, when: float | None = None) -> None:
        self._mark_dirty(key, when or time.time())
        if self.state.queued_since is None:
            self.state.queued_since = time.monotonic()
        LAST_QUEUED.set(time.time())
        self._wake.set()

    def _on_service(self, kind: str, old: core_pb2.Service | None, new: core_pb2.Service) -> None:
        obj = new if new is not None else old
        assert obj is not None
        self._queue(service_key(obj.metadata.namespace, obj.metadata.name))
        # External addresses are not allocated: a change may hand one to, or take
        # it from, another service (servicemap.external_owners), so resync all.
        before = external_addresses(old) if old is not None else ()
        after = external_addresses(new) if new is not None and kind != "DELETED" else ()
        if before != after:
            self._needs_full = True

    def _on_slice(
        self,
        kind: str,
        old: discovery_pb2.EndpointSlice | None,
        new: discovery_pb2.EndpointSlice,
    ) -> None:
        for gone in (old, new if kind == "DELETED" else None):
            key = slice_service(gone) if gone is not None else None
            if key is not None:
                self._slices_by_service.get(key, {}).pop(gone.metadata.name, None)  # type: ignore[union-attr]
                self._queue(key)
        key = slice_service(new) if kind != "DELETED" else None
        if key is not None:
            self._slices_by_service.setdefault(key, {})[new.metadata.name] = new
            self._queue(key, self._new_trigger(old, new))

    def _new_trigger(
        self, old: discovery_pb2.EndpointSlice | None, new: discovery_pb2.EndpointSlice
    ) -> float | None:
        """The slice's trigger time when it names a change this proxy has to apply:
        set or changed by this update, and not older than the proxy (as upstream)."""
        when = _trigger_time(new)
        if when is None or when < self._started or (old is not None and _trigger_time(old) == when):
            return None
        return when

    def _on_node(self, kind: str, old: core_pb2.Node | None, new: core_pb2.Node) -> None:
        pod_cidr = new.spec.pod_cidr if kind != "DELETED" and new is not None else ""
        if not self.config.cluster_cidr and pod_cidr != self.proxier.cluster_cidr:
            # Local traffic is told apart by the node's pod CIDR: every rule changes.
            self.proxier.cluster_cidr = pod_cidr
            self._needs_full = True
            self._wake.set()

    def desired(self, key: str, owners: Mapping[Claim, str] | None = None) -> list[ServicePort]:
        namespace, _, name = key.partition("/")
        service = self.services.get(namespace, name)
        if service is None:
            return []
        if owners is None:
            owners = external_owners(self.services.list())
        return service_ports(service, self._slices_by_service.get(key, {}).values(), owners)

    def healthy(self, now: float | None = None) -> bool:
        """Kubernetes' rule: unhealthy when a queued change has waited longer than
        twice the sync period without being applied; and for good once a supervised
        loop gave up (the process is about to exit)."""
        if self.supervisor.failed.is_set():
            return False
        now = time.monotonic() if now is None else now
        queued = self.state.queued_since
        return queued is None or now - queued <= 2 * self.config.sync_period

    def node_deleting(self) -> bool:
        node = self.node.get("", self.config.node_name)
        return node is not None and node.metadata.HasField("deletion_timestamp")

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        self.state.queued_since = time.monotonic()
        for name, informer in self.watches.items():
            self.supervisor.start(name, informer.run)
        self.supervisor.start("proxy-sync", self._sync_forever)

    async def stop(self) -> None:
        """Stops syncing; the rules stay in the kernel (services keep working while
        the proxy restarts; `kubeling-proxy --cleanup` removes them)."""
        await self.supervisor.stop()
        for task in list(self._background):
            task.cancel()

    async def _sync_forever(self) -> None:
        """The sync loop as supervised: once every cache is filled (rules are never
        judged from a half-filled cache), a full sync, then syncs on changes. A
        restart after a crash also begins with a full sync, which rewrites whatever
        the crashed run left half-done."""
        await asyncio.gather(*(i.synced.wait() for i in self.watches.values()))
        log.info("caches synced; syncing rules", node=self.config.node_name)
        self._needs_full = True
        await self._sync_loop()

    async def _sync_loop(self) -> None:
        last_start = float("-inf")
        last_full = float("-inf")
        while True:
            now = time.monotonic()
            next_full = last_full + self.config.sync_period
            if not self._dirty and not self._needs_full and now < next_full:
                self._wake.clear()
                # asyncio.timeout, not wait_for: 3.11's wait_for swallows a
                # cancellation (stop, an injected crash) that meets a wake-up.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(next_full - now):
                        await self._wake.wait()
            wait = last_start + self.config.min_sync_interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            last_start = time.monotonic()
            full = self._needs_full or last_start >= next_full
            if await self.sync_once(full):
                if full:
                    last_full = last_start
            else:
                # Back off a little so a kernel that keeps refusing is not hammered.
                await asyncio.sleep(max(self.config.min_sync_interval, 1.0))

    async def sync_once(self, full: bool) -> bool:
        """One sync of what is queued (or, `full`, of everything). True on success."""
        dirty, self._dirty = self._dirty, {}
        queued_since, self.state.queued_since = self.state.queued_since, None
        # Taken now: a request made during the sync (a new pod CIDR) stays set.
        self._needs_full = False
        try:
            owners = external_owners(self.services.list())
            if full:
                keys = {
                    service_key(s.metadata.namespace, s.metadata.name) for s in self.services.list()
                }
                desired = {key: self.desired(key, owners) for key in keys}
                result = await _in_thread(self.proxier.sync_full, desired)
            else:
                desired = {key: self.desired(key, owners) for key in dirty}
                result = await _in_thread(self.proxier.sync_partial, desired)
        except asyncio.CancelledError:
            # Stopped, or the loop crashed: what was taken stays queued.
            self._requeue(dirty, queued_since)
            raise
        except Exception as exc:
            SYNC_FAILURES.inc()
            self.state.failures += 1
            self.state.last_error = str(exc)
            log.error("sync failed; a full sync follows", error=str(exc), full=full)
            self._requeue(dirty, queued_since)
            return False
        applied = time.time()
        (SYNC_FULL if full else SYNC_PARTIAL).observe(result.seconds)
        LAST_SYNC.set(applied)
        SERVICES.set(self.proxier.service_ports)
        ENDPOINTS.set(self.proxier.endpoints)
        for when in dirty.values():
            latency = max(0.0, applied - when)
            PROGRAMMING.observe(latency)
            self.state.latencies.append(latency)
        if self._dirty:
            self.state.queued_since = time.monotonic()
        self.state.syncs += 1
        self.state.last_error = ""
        self.state.last_sync_wall = applied
        self.state.last_result = result
        self.synced.set()
        log.debug(
            "synced", full=full, seconds=round(result.seconds, 4), operations=result.operations
        )
        if result.stale_flows:
            task = asyncio.create_task(self._clear_flows(result))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        return True

    def _requeue(self, dirty: Mapping[str, float], queued_since: float | None) -> None:
        """Put back what a sync took but did not apply; a full sync follows."""
        for key, when in dirty.items():
            self._mark_dirty(key, when)
        # The oldest of what was taken and what was queued during the sync.
        stamps = [t for t in (queued_since, self.state.queued_since) if t is not None]
        self.state.queued_since = min(stamps) if stamps else None
        self._needs_full = True

    async def _clear_flows(self, result: SyncResult) -> None:
        for flow in result.stale_flows:
            await self.conntrack.clear(flow)


async def _in_thread(
    sync: Callable[[Mapping[str, list[ServicePort]]], SyncResult],
    desired: Mapping[str, list[ServicePort]],
) -> SyncResult:
    """Run a proxier sync in a thread. A thread cannot be stopped: when the caller is
    cancelled (stop, or a crash of the sync loop), wait for the transaction to end
    before returning, so that a restarted loop never runs two syncs at once."""
    work = asyncio.ensure_future(asyncio.to_thread(sync, desired))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        await asyncio.wait([work])
        if not work.cancelled():
            work.exception()  # retrieved: a failure here is followed by a full sync
        raise
