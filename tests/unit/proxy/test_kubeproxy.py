"""KubeProxy: change tracking from informer events, sync_once on the fake nftables,
health, without a master (the informers are fed by hand)."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime

from kubeling.api.wellknown import TRIGGER_TIME_ANNOTATION
from kubeling.proxy import rules as r
from kubeling.proxy.conntrack import RecordingConntrack
from kubeling.proxy.kubeproxy import KubeProxy
from kubeling.proxy.nft import FakeNftables, Transaction
from kubeling.proxy.proxier import StaleFlow
from kubeling.proxy.servicemap import service_ports
from kubeling.v1 import core_pb2, discovery_pb2
from tests.unit.proxy.builders import (
    endpoint_slice,
    full_dump,
    make_kube_proxy,
    service,
    with_leftover_table,
)

KEY = "default/web"


def add_service(proxy: KubeProxy, svc: core_pb2.Service) -> None:
    key = f"{svc.metadata.namespace}/{svc.metadata.name}"
    old = proxy.services.store.get(key)
    proxy.services.store[key] = svc
    proxy._on_service("ADDED" if old is None else "MODIFIED", old, svc)


def delete_service(proxy: KubeProxy, svc: core_pb2.Service) -> None:
    old = proxy.services.store.pop(f"{svc.metadata.namespace}/{svc.metadata.name}")
    proxy._on_service("DELETED", old, svc)


def add_slice(
    proxy: KubeProxy,
    new: discovery_pb2.EndpointSlice,
    old: discovery_pb2.EndpointSlice | None = None,
) -> None:
    proxy._on_slice("ADDED" if old is None else "MODIFIED", old, new)


def expected(*pairs: tuple[core_pb2.Service, list[discovery_pb2.EndpointSlice]]) -> str:
    return full_dump(
        {f"{s.metadata.namespace}/{s.metadata.name}": service_ports(s, sl) for s, sl in pairs}
    )


# -- health ------------------------------------------------------------------------


def test_healthy_without_queued_changes() -> None:
    proxy = make_kube_proxy(sync_period=30.0)
    assert proxy.state.queued_since is None
    assert proxy.healthy(now=0.0)
    assert proxy.healthy(now=1e9)


def test_unhealthy_when_a_change_waited_more_than_twice_the_sync_period() -> None:
    proxy = make_kube_proxy(sync_period=30.0)
    proxy.state.queued_since = 100.0
    assert proxy.healthy(now=100.0)
    assert proxy.healthy(now=160.0)  # exactly 2 x sync period: still fine
    assert not proxy.healthy(now=160.5)
    proxy.state.queued_since = None
    assert proxy.healthy(now=160.5)


def test_queueing_keeps_the_oldest_change_time() -> None:
    proxy = make_kube_proxy()
    proxy.state.queued_since = 5.0
    add_service(proxy, service())
    assert proxy.state.queued_since == 5.0
    assert KEY in proxy._dirty


def test_queueing_starts_the_health_clock() -> None:
    proxy = make_kube_proxy(sync_period=30.0)
    before = time.monotonic()
    add_service(proxy, service())
    assert proxy.state.queued_since is not None
    assert before <= proxy.state.queued_since <= time.monotonic()
    assert not proxy.healthy(now=proxy.state.queued_since + 61)


# -- change tracking ---------------------------------------------------------------


def test_slice_events_are_tracked_per_service() -> None:
    proxy = make_kube_proxy()
    add_service(proxy, service())
    a = endpoint_slice(name="web-a", endpoints=[("10.244.0.5", True)])
    b = endpoint_slice(name="web-b", endpoints=[("10.244.0.6", True)])
    add_slice(proxy, a)
    add_slice(proxy, b)
    assert [ep.ip for ep in proxy.desired(KEY)[0].endpoints] == ["10.244.0.5", "10.244.0.6"]
    proxy._on_slice("DELETED", a, a)
    assert [ep.ip for ep in proxy.desired(KEY)[0].endpoints] == ["10.244.0.6"]
    # An informer may report a deletion of an object it never had (old None).
    proxy._on_slice("DELETED", None, b)
    assert proxy.desired(KEY)[0].endpoints == ()


def test_slice_moving_to_another_service_queues_both() -> None:
    proxy = make_kube_proxy()
    add_service(proxy, service())
    add_service(proxy, service("api", cluster_ip="10.96.0.20"))
    old = endpoint_slice(name="s1")
    add_slice(proxy, old)
    proxy._dirty.clear()
    new = endpoint_slice("api", name="s1")
    add_slice(proxy, new, old)
    assert set(proxy._dirty) == {KEY, "default/api"}
    assert proxy.desired(KEY)[0].endpoints == ()
    assert len(proxy.desired("default/api")[0].endpoints) == 1


def test_slice_without_service_label_is_ignored() -> None:
    proxy = make_kube_proxy()
    s = endpoint_slice()
    s.metadata.labels.clear()
    add_slice(proxy, s)
    assert proxy._dirty == {}


def stamp(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).isoformat().replace("+00:00", "Z")


def test_slice_trigger_time_is_the_change_time() -> None:
    proxy = make_kube_proxy()
    changed = time.time() + 0.5  # after the proxy started
    s = endpoint_slice(annotations={TRIGGER_TIME_ANNOTATION: stamp(changed)})
    add_slice(proxy, s)
    assert abs(proxy._dirty[KEY] - changed) < 1e-3
    bad = endpoint_slice(name="other", annotations={TRIGGER_TIME_ANNOTATION: "yesterday"})
    before = time.time()
    proxy._dirty.clear()
    add_slice(proxy, bad)
    assert before <= proxy._dirty[KEY] <= time.time()


def test_stale_trigger_times_do_not_count_as_latency() -> None:
    proxy = make_kube_proxy()
    # Older than the proxy (seen at start-up or on a re-list): the time it was seen.
    old = endpoint_slice(annotations={TRIGGER_TIME_ANNOTATION: "2024-05-01T10:00:00Z"})
    before = time.time()
    add_slice(proxy, old)
    assert proxy._dirty[KEY] >= before
    # An update that keeps the annotation carries no new change time either.
    recent = endpoint_slice(annotations={TRIGGER_TIME_ANNOTATION: stamp(time.time() + 0.5)})
    again = endpoint_slice(annotations=dict(recent.metadata.annotations))
    again.metadata.labels["x"] = "y"
    proxy._dirty.clear()
    before = time.time()
    add_slice(proxy, again, old=recent)
    assert before <= proxy._dirty[KEY] <= time.time()


def test_desired_of_a_missing_service_is_empty() -> None:
    proxy = make_kube_proxy()
    add_slice(proxy, endpoint_slice())
    assert proxy.desired(KEY) == []


def test_node_pod_cidr_becomes_the_cluster_cidr_and_forces_a_full_sync() -> None:
    proxy = make_kube_proxy()
    proxy._needs_full = False
    node = core_pb2.Node()
    node.metadata.name = "node-1"
    node.spec.pod_cidr = "10.244.1.0/24"
    proxy._on_node("ADDED", None, node)
    assert proxy.proxier.cluster_cidr == "10.244.1.0/24"
    assert proxy._needs_full
    # An explicit cluster CIDR wins over the node's.
    fixed = make_kube_proxy(cluster_cidr="10.0.0.0/8")
    fixed._on_node("ADDED", None, node)
    assert fixed.proxier.cluster_cidr == "10.0.0.0/8"


# -- syncing -----------------------------------------------------------------------


async def test_service_and_slice_end_up_in_the_table() -> None:
    backend = FakeNftables()
    proxy = make_kube_proxy(backend)
    svc = service(ports=[("http", "TCP", 80, 30080)], type_="NodePort")
    first = endpoint_slice(endpoints=[("10.244.0.5", True), ("10.244.0.6", True)])
    add_service(proxy, svc)
    add_slice(proxy, first)
    assert await proxy.sync_once(full=True)
    assert backend.dump() == expected((svc, [first]))
    assert "10.96.0.10 . tcp . 80 . 1 : 10.244.0.6 . 8080" in backend.dump()
    assert 'tcp . 30080 comment "default/web:http" : goto nodeport-lb-2' in backend.dump()
    assert proxy.state.syncs == 1 and proxy.state.last_result is not None
    assert proxy.state.last_result.full
    assert proxy.state.queued_since is None and proxy._dirty == {}
    assert proxy.synced.is_set()
    assert proxy.healthy(now=time.monotonic() + 1e6)
    # An endpoint goes: a partial sync of that service.
    second = endpoint_slice(endpoints=[("10.244.0.6", True), ("10.244.0.5", False)])
    add_slice(proxy, second, first)
    assert await proxy.sync_once(full=False)
    assert not proxy.state.last_result.full
    assert proxy.state.last_result.services == [KEY]
    assert backend.dump() == expected((svc, [second]))
    assert "10.244.0.5" not in backend.dump()
    assert len(proxy.state.latencies) == 2
    # The service goes.
    delete_service(proxy, svc)
    assert await proxy.sync_once(full=False)
    assert "svc-" not in backend.dump()
    assert backend.dump() == expected()


async def test_full_sync_drops_services_gone_from_the_informer() -> None:
    backend = FakeNftables()
    proxy = make_kube_proxy(backend)
    web, api = service(), service("api", cluster_ip="10.96.0.20")
    add_service(proxy, web)
    add_service(proxy, api)
    add_slice(proxy, endpoint_slice())
    assert await proxy.sync_once(full=True)
    # Missed deletion (e.g. across a re-list): the next full sync still removes it.
    proxy.services.store.pop("default/api")
    proxy._dirty.clear()
    assert await proxy.sync_once(full=True)
    assert backend.dump() == expected((web, [endpoint_slice()]))


async def test_failed_sync_requeues_and_the_next_sync_is_full() -> None:
    backend = FakeNftables()
    proxy = make_kube_proxy(backend)
    svc = service()
    add_service(proxy, svc)
    assert await proxy.sync_once(full=True)
    failures = proxy.state.failures
    s = endpoint_slice()
    add_slice(proxy, s)
    queued = proxy.state.queued_since
    backend.fail_next = "boom"
    before = backend.dump()
    assert not await proxy.sync_once(full=False)
    assert backend.dump() == before
    assert proxy.state.failures == failures + 1
    assert proxy.state.last_error == "boom"
    assert KEY in proxy._dirty
    assert proxy.state.queued_since == queued
    assert proxy._needs_full
    assert proxy.state.syncs == 1
    # The run loop's choice: full after a failure.
    assert await proxy.sync_once(full=proxy._needs_full)
    assert proxy.state.last_result is not None and proxy.state.last_result.full
    assert not proxy._needs_full
    assert proxy.state.last_error == ""
    assert proxy._dirty == {} and proxy.state.queued_since is None
    assert backend.dump() == expected((svc, [s]))


async def test_failed_sync_keeps_the_health_clock_running() -> None:
    backend = FakeNftables()
    proxy = make_kube_proxy(backend, sync_period=30.0)
    add_service(proxy, service())
    queued = proxy.state.queued_since
    assert queued is not None
    backend.fail_next = "boom"
    assert not await proxy.sync_once(full=True)
    assert not proxy.healthy(now=queued + 61)


async def test_first_full_sync_replaces_a_leftover_table() -> None:
    backend = with_leftover_table("svc-leftover")
    proxy = make_kube_proxy(backend)
    add_service(proxy, service())
    assert await proxy.sync_once(full=True)
    assert "leftover" not in backend.dump()
    assert backend.chain_rules(r.REJECT_CHAIN) == ["reject"]


async def test_stale_udp_flows_are_cleared_after_a_sync() -> None:
    backend = FakeNftables()
    proxy = make_kube_proxy(backend)
    conntrack = proxy.conntrack
    assert isinstance(conntrack, RecordingConntrack)
    svc = service("dns", cluster_ip="10.96.0.10", ports=[("dns", "UDP", 53, 0)])
    first = endpoint_slice(
        "dns",
        endpoints=[("10.244.0.5", True), ("10.244.0.6", True)],
        ports=[("dns", "UDP", 5353)],
    )
    add_service(proxy, svc)
    add_slice(proxy, first)
    assert await proxy.sync_once(full=True)
    second = endpoint_slice("dns", endpoints=[("10.244.0.6", True)], ports=[("dns", "UDP", 5353)])
    add_slice(proxy, second, first)
    assert await proxy.sync_once(full=False)
    await asyncio.gather(*proxy._background)
    assert conntrack.cleared == [
        StaleFlow("udp", "10.96.0.10", 53, None),  # first sync: newly active service
        StaleFlow("udp", "10.96.0.10", 53, "10.244.0.5"),
    ]


class GatedNftables(FakeNftables):
    """Holds apply() until released, so a test can act while a sync is under way."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def apply(self, tx: Transaction) -> None:
        self.entered.set()
        self.release.wait(5)
        super().apply(tx)


async def test_change_during_a_successful_sync_stays_queued() -> None:
    backend = GatedNftables()
    proxy = make_kube_proxy(backend)
    task = asyncio.create_task(proxy.sync_once(full=True))
    assert await asyncio.to_thread(backend.entered.wait, 5)
    add_service(proxy, service())  # the informer reports a change meanwhile
    backend.release.set()
    assert await task
    assert KEY in proxy._dirty
    assert proxy.state.queued_since is not None


async def test_change_during_a_failed_sync_keeps_the_health_clock_running() -> None:
    """A periodic full sync with nothing queued fails while a change comes in: the
    change is pending and no sync applies it, so /healthz must eventually say so."""
    backend = GatedNftables()
    proxy = make_kube_proxy(backend, sync_period=30.0)
    backend.release.set()
    assert await proxy.sync_once(full=True)  # nothing queued afterwards
    assert proxy.state.queued_since is None
    backend.release.clear()
    backend.entered.clear()
    task = asyncio.create_task(proxy.sync_once(full=True))
    assert await asyncio.to_thread(backend.entered.wait, 5)
    add_service(proxy, service())
    queued = proxy.state.queued_since
    assert queued is not None
    backend.fail_next = "boom"
    backend.release.set()
    assert not await task
    assert KEY in proxy._dirty
    assert proxy.state.queued_since is not None
    assert not proxy.healthy(now=queued + 61)


async def test_a_shared_external_ip_goes_to_the_older_service_and_moves_when_it_goes() -> None:
    proxy = make_kube_proxy()
    old = service("old", cluster_ip="10.96.0.20")
    old.metadata.creation_timestamp.seconds = 1
    old.spec.external_ips.append("203.0.113.9")
    new = service("new", cluster_ip="10.96.0.21")
    new.metadata.creation_timestamp.seconds = 2
    new.spec.external_ips.append("203.0.113.9")
    for svc in (old, new):
        add_service(proxy, svc)
        add_slice(proxy, endpoint_slice(svc.metadata.name))
    assert await proxy.sync_once(full=True)
    backend = proxy.proxier.backend
    key = "203.0.113.9 . tcp . 80"
    # (Both have one endpoint: the same chain, ext-lb-1; the comment names the owner.)
    owner = ("goto ext-lb-1", "default/old:http")
    assert backend.map_element(r.SERVICE_IPS, key) == owner  # type: ignore[attr-defined]
    delete_service(proxy, old)
    assert proxy._needs_full
    assert await proxy.sync_once(full=proxy._needs_full)
    owner = ("goto ext-lb-1", "default/new:http")
    assert backend.map_element(r.SERVICE_IPS, key) == owner  # type: ignore[attr-defined]
