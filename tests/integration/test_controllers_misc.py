"""DaemonSet, EndpointSlice, node lifecycle and garbage collector controllers
against an in-process master; kubelets are simulated through the client (nodes,
leases, pod status)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

from kubeling.api.objects import clone, now
from kubeling.api.wellknown import TRIGGER_TIME_ANNOTATION
from kubeling.client import Client
from kubeling.controllers.manager import ControllerSettings
from kubeling.v1 import apps_pb2, coordination_pb2, core_pb2, discovery_pb2, meta_pb2
from tests.support import waiting
from tests.support.inprocess import in_process_master

pytestmark = pytest.mark.asyncio(loop_scope="session")

NS = "default"

eventually = functools.partial(waiting.eventually, within=15.0, interval=0.1)


def cluster(tmp_path: Path, *controllers: str) -> contextlib.AbstractAsyncContextManager[Client]:
    settings = ControllerSettings(
        node_monitor_grace_period=2, node_monitor_period=0.5, pod_eviction_timeout=1
    )
    return in_process_master(tmp_path, controllers, settings, bookmark_interval=1.0)


def make_node(
    name: str, labels: dict[str, str] | None = None, ready: str = "True"
) -> core_pb2.Node:
    node = core_pb2.Node()
    node.metadata.name = name
    node.metadata.labels.update(labels or {})
    node.status.conditions.add(
        type="Ready",
        status=ready,
        reason="KubeletReady",
        last_heartbeat_time=now(),
        last_transition_time=now(),
    )
    return node


def make_pod(name: str, labels: dict[str, str], node: str = "") -> core_pb2.Pod:
    pod = core_pb2.Pod()
    pod.metadata.name = name
    pod.metadata.namespace = NS
    pod.metadata.labels.update(labels)
    container = pod.spec.containers.add(name="main", image="busybox:1.36")
    container.ports.add(name="http", container_port=8080)
    pod.spec.node_name = node
    return pod


async def renew_lease(api: Client, node: str) -> None:
    try:
        lease = await api.leases.get(node, "kube-node-lease")
    except grpc.aio.AioRpcError:
        lease = coordination_pb2.Lease()
        lease.metadata.name = node
        lease.metadata.namespace = "kube-node-lease"
        lease.spec.holder_identity = node
        lease.spec.lease_duration_seconds = 40
        lease.spec.renew_time.CopyFrom(now())
        await api.leases.create(lease)
        return
    lease.spec.renew_time.CopyFrom(now())
    await api.leases.update(lease)


async def set_pod_status(
    api: Client, name: str, ready: bool, ip: str = "", phase: str = "Running"
) -> core_pb2.Pod:
    pod = await api.pods.get(name, NS)
    pod.status.phase = phase
    if ip:
        pod.status.pod_ip = ip
    del pod.status.conditions[:]
    pod.status.conditions.add(
        type="Ready", status="True" if ready else "False", last_transition_time=now()
    )
    return await api.pods.update_status(pod)


@contextlib.asynccontextmanager
async def fake_kubelets(api: Client) -> AsyncIterator[None]:
    """Every pod bound to a node gets Running+Ready and an IP; pods being deleted
    are finished off (what a kubelet does once its containers stopped)."""

    async def loop() -> None:
        addresses: dict[str, str] = {}
        while True:
            for pod in (await api.pods.list(NS)).items:
                meta = pod.metadata
                if not pod.spec.node_name:
                    continue
                with contextlib.suppress(grpc.aio.AioRpcError):
                    if meta.HasField("deletion_timestamp"):
                        await api.pods.delete(meta.name, NS, grace_period_seconds=0, uid=meta.uid)
                    elif pod.status.phase != "Running":
                        ip = addresses.setdefault(meta.uid, f"10.244.0.{len(addresses) + 2}")
                        await set_pod_status(api, meta.name, True, ip)
            await asyncio.sleep(0.1)

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def make_daemon_set(name: str, image: str = "busybox:1.36") -> apps_pb2.DaemonSet:
    ds = apps_pb2.DaemonSet()
    ds.metadata.name = name
    ds.metadata.namespace = NS
    ds.spec.selector.match_labels["app"] = name
    ds.spec.template.metadata.labels["app"] = name
    ds.spec.template.spec.node_selector["role"] = "worker"
    ds.spec.template.spec.containers.add(name="main", image=image)
    return ds


async def ds_pods(api: Client, name: str) -> dict[str, core_pb2.Pod]:
    """Live daemon pods by node."""
    pods = (await api.pods.list(NS, label_selector=f"app={name}")).items
    return {p.spec.node_name: p for p in pods if not p.metadata.HasField("deletion_timestamp")}


# ---------------------------------------------------------------- DaemonSet


async def test_daemonset_follows_nodes_joining_and_leaving(tmp_path: Path) -> None:
    async with cluster(tmp_path, "daemonset") as api:
        await api.nodes.create(make_node("n1", {"role": "worker"}))
        await api.nodes.create(make_node("n3", {"role": "other"}))
        ds = await api.daemon_sets.create(make_daemon_set("agent"))

        pods = await eventually(lambda: ds_pods(api, "agent"))
        assert set(pods) == {"n1"}  # n3 does not match the nodeSelector
        pod = pods["n1"]
        assert pod.metadata.owner_references[0].uid == ds.metadata.uid
        tolerated = {(t.key, t.effect) for t in pod.spec.tolerations}
        assert ("node.kubernetes.io/unreachable", "NoExecute") in tolerated
        assert ("node.kubernetes.io/unschedulable", "NoSchedule") in tolerated

        # A node joining gets its pod, even when cordoned.
        joining = make_node("n2", {"role": "worker"})
        joining.spec.unschedulable = True
        await api.nodes.create(joining)

        async def on_both() -> bool:
            return set(await ds_pods(api, "agent")) == {"n1", "n2"}

        await eventually(on_both)

        async def status_says(**expected: int) -> bool:
            status = (await api.daemon_sets.get("agent", NS)).status
            return all(getattr(status, k) == v for k, v in expected.items())

        await eventually(
            lambda: status_says(
                desired_number_scheduled=2,
                current_number_scheduled=2,
                updated_number_scheduled=2,
                number_ready=0,
                number_misscheduled=0,
                observed_generation=1,
            )
        )

        # A node leaving takes its daemon pod with it (no kubelet to wait for).
        await api.nodes.delete("n2")

        async def n2_pod_gone() -> bool:
            pods = (await api.pods.list(NS, label_selector="app=agent")).items
            return {p.spec.node_name for p in pods} == {"n1"}

        await eventually(n2_pod_gone)
        await eventually(
            lambda: status_says(desired_number_scheduled=1, current_number_scheduled=1)
        )

        # A node whose labels stop matching: its pod is misscheduled and removed.
        n1 = await api.nodes.get("n1")
        n1.metadata.labels["role"] = "other"
        await api.nodes.update(n1)

        async def none_left() -> bool:
            return not await ds_pods(api, "agent")

        await eventually(none_left)
        await eventually(lambda: status_says(desired_number_scheduled=0))


async def test_daemonset_rolls_out_a_new_template(tmp_path: Path) -> None:
    async with cluster(tmp_path, "daemonset") as api, fake_kubelets(api):
        for name in ("n1", "n2", "n3"):
            await api.nodes.create(make_node(name, {"role": "worker"}))
        await api.daemon_sets.create(make_daemon_set("roll"))

        async def ready(expected_image: str) -> bool:
            status = (await api.daemon_sets.get("roll", NS)).status
            pods = await ds_pods(api, "roll")
            return (
                status.number_ready == 3
                and status.updated_number_scheduled == 3
                and len(pods) == 3
                and all(p.spec.containers[0].image == expected_image for p in pods.values())
            )

        await eventually(lambda: ready("busybox:1.36"))
        old_uids = {p.metadata.uid for p in (await ds_pods(api, "roll")).values()}

        ds = await api.daemon_sets.get("roll", NS)
        ds.spec.template.spec.containers[0].image = "busybox:1.37"
        await api.daemon_sets.update(ds)

        # maxUnavailable 1: never more than one node without a ready pod.
        worst = 0

        async def rolled() -> bool:
            nonlocal worst
            pods = await ds_pods(api, "roll")
            ready_pods = [
                p for p in pods.values() if any(c.type == "Ready" and c.status == "True"
                                                for c in p.status.conditions)
            ]  # fmt: skip
            worst = max(worst, 3 - len(ready_pods))
            return await ready("busybox:1.37")

        await eventually(rolled, within=30)
        assert worst <= 1
        new_uids = {p.metadata.uid for p in (await ds_pods(api, "roll")).values()}
        assert not new_uids & old_uids
        assert (await api.daemon_sets.get("roll", NS)).status.observed_generation == 2


# ---------------------------------------------------------------- EndpointSlice


async def service_slices(api: Client, service: str) -> list[discovery_pb2.EndpointSlice]:
    listed = await api.endpoint_slices.list(
        NS, label_selector=f"kubernetes.io/service-name={service}"
    )
    return listed.items


def endpoint_view(slices: list[discovery_pb2.EndpointSlice]) -> dict[str, tuple[str, bool, bool]]:
    """pod name -> (address, ready, terminating)."""
    return {
        e.target_ref.name: (e.addresses[0], e.conditions.ready, e.conditions.terminating)
        for s in slices
        for e in s.endpoints
    }


async def test_endpointslice_lists_ready_pods_and_follows_changes(tmp_path: Path) -> None:
    async with cluster(tmp_path, "endpointslice") as api:
        svc = core_pb2.Service()
        svc.metadata.name = "web"
        svc.metadata.namespace = NS
        svc.spec.selector["app"] = "web"
        svc.spec.ports.add(name="http", port=80, target_port=struct_pb2.Value(string_value="http"))
        svc = await api.services.create(svc)
        await api.pods.create(make_pod("web-1", {"app": "web"}, node="n1"))
        await api.pods.create(make_pod("web-2", {"app": "web"}, node="n1"))
        await api.pods.create(make_pod("other", {"app": "other"}, node="n1"))
        await set_pod_status(api, "web-1", True, "10.244.0.11")
        await set_pod_status(api, "web-2", False, "10.244.0.12")
        await set_pod_status(api, "other", True, "10.244.0.13")

        async def view_is(expected: dict[str, tuple[str, bool, bool]]) -> bool:
            return endpoint_view(await service_slices(api, "web")) == expected

        await eventually(
            lambda: view_is(
                {"web-1": ("10.244.0.11", True, False), "web-2": ("10.244.0.12", False, False)}
            )
        )
        (piece,) = await service_slices(api, "web")
        assert piece.address_type == "IPv4"
        assert [(p.name, p.port, p.protocol) for p in piece.ports] == [("http", 8080, "TCP")]
        assert piece.metadata.owner_references[0].uid == svc.metadata.uid
        assert piece.endpoints[0].node_name == "n1"
        assert piece.endpoints[0].target_ref.kind == "Pod"
        version = piece.metadata.resource_version

        first_trigger = piece.metadata.annotations[TRIGGER_TIME_ANNOTATION]

        # Readiness flips are reflected.
        flipped = datetime.now(UTC)
        await set_pod_status(api, "web-2", True, "10.244.0.12")
        await eventually(
            lambda: view_is(
                {"web-1": ("10.244.0.11", True, False), "web-2": ("10.244.0.12", True, False)}
            )
        )
        # The slice says when the change was seen, for proxies' programming latency.
        (piece,) = await service_slices(api, "web")
        trigger = datetime.fromisoformat(piece.metadata.annotations[TRIGGER_TIME_ANNOTATION])
        assert trigger != datetime.fromisoformat(first_trigger)
        assert flipped - timedelta(seconds=1) <= trigger <= datetime.now(UTC)
        assert piece.metadata.resource_version != version  # (it changed for web-2)
        version = piece.metadata.resource_version
        # Unrelated changes do not rewrite the slice. The barrier: once a sentinel
        # Service's slice shows the unrelated pod's new state, the controller has
        # handled that change.
        await set_pod_status(api, "other", False, "10.244.0.13")
        sentinel = core_pb2.Service()
        sentinel.metadata.name = "sentinel"
        sentinel.metadata.namespace = NS
        sentinel.spec.selector["app"] = "other"
        sentinel.spec.ports.add(name="http", port=80)
        await api.services.create(sentinel)

        async def sentinel_sees_change() -> bool:
            view = endpoint_view(await service_slices(api, "sentinel"))
            return view == {"other": ("10.244.0.13", False, False)}

        await eventually(sentinel_sees_change)
        (piece,) = await service_slices(api, "web")
        assert piece.metadata.resource_version == version

        # A terminating pod stays, marked terminating and not ready.
        await api.pods.delete("web-1", NS)
        await eventually(
            lambda: view_is(
                {"web-1": ("10.244.0.11", False, True), "web-2": ("10.244.0.12", True, False)}
            )
        )

        # The service's slices go with it.
        await api.services.delete("web", NS)

        async def no_slices() -> bool:
            return not await service_slices(api, "web")

        await eventually(no_slices)


async def test_endpointslice_splits_at_100_endpoints(tmp_path: Path) -> None:
    async with cluster(tmp_path, "endpointslice") as api:
        svc = core_pb2.Service()
        svc.metadata.name = "big"
        svc.metadata.namespace = NS
        svc.spec.selector["app"] = "big"
        svc.spec.ports.add(port=80, target_port=struct_pb2.Value(number_value=8080))
        await api.services.create(svc)

        async def make(i: int) -> None:
            await api.pods.create(make_pod(f"big-{i:03d}", {"app": "big"}, node="n1"))
            await set_pod_status(api, f"big-{i:03d}", True, f"10.244.1.{i + 1}")

        await asyncio.gather(*(make(i) for i in range(130)))

        async def split() -> list[discovery_pb2.EndpointSlice] | None:
            slices = await service_slices(api, "big")
            return slices if len(endpoint_view(slices)) == 130 else None

        slices = await eventually(split, within=30)
        assert sorted(len(s.endpoints) for s in slices) == [30, 100]
        assert all(s.ports[0].port == 8080 for s in slices)


# ---------------------------------------------------------------- node lifecycle


def condition(obj: Any, type_: str) -> meta_pb2.Condition | None:
    for c in obj.status.conditions:
        if c.type == type_:
            return c  # type: ignore[no-any-return]
    return None


async def test_silent_node_becomes_unknown_tainted_and_its_pods_are_evicted(
    tmp_path: Path,
) -> None:
    async with cluster(tmp_path, "nodelifecycle") as api:
        await api.nodes.create(make_node("quiet"))
        await renew_lease(api, "quiet")
        await api.pods.create(make_pod("victim", {"app": "x"}, node="quiet"))
        patient = make_pod("patient", {"app": "x"}, node="quiet")
        # Tolerates unreachable for ever: never evicted.
        patient.spec.tolerations.add(
            key="node.kubernetes.io/unreachable", operator="Exists", effect="NoExecute"
        )
        await api.pods.create(patient)
        await set_pod_status(api, "patient", True, "10.244.0.5")
        started = time.monotonic()

        async def unknown() -> core_pb2.Node | None:
            node = await api.nodes.get("quiet")
            ready = condition(node, "Ready")
            return node if ready is not None and ready.status == "Unknown" else None

        node = await eventually(unknown)
        assert time.monotonic() - started >= 1.5  # not before the grace period
        ready = condition(node, "Ready")
        assert ready is not None
        assert ready.reason == "NodeStatusUnknown"
        assert ready.message == "Kubelet stopped posting node status."

        async def tainted() -> bool:
            node = await api.nodes.get("quiet")
            return any(
                t.key == "node.kubernetes.io/unreachable" and t.effect == "NoExecute"
                for t in node.spec.taints
            )

        await eventually(tainted)

        async def evicted() -> bool:
            pod = await api.pods.get("victim", NS)
            return pod.metadata.HasField("deletion_timestamp")

        await eventually(evicted)
        patient_now = await api.pods.get("patient", NS)
        assert not patient_now.metadata.HasField("deletion_timestamp")
        # Pods on a silent node are not ready any more.
        ready = condition(patient_now, "Ready")
        assert ready is not None and ready.status == "False"

        async def events() -> set[str]:
            return {e.reason for e in (await api.events.list("")).items}

        await eventually(lambda: _has(events, {"NodeNotReady", "TaintManagerEviction"}))

        # The kubelet comes back: lease renewed and Ready posted; the taint goes.
        node = await api.nodes.get("quiet")
        ready = condition(node, "Ready")
        assert ready is not None
        ready.status, ready.reason, ready.message = "True", "KubeletReady", ""
        ready.last_heartbeat_time.CopyFrom(now())
        await renew_lease(api, "quiet")
        await api.nodes.update_status(node)

        async def untainted() -> bool:
            node = await api.nodes.get("quiet")
            return not node.spec.taints

        await eventually(untainted)
        ready = condition(await api.nodes.get("quiet"), "Ready")
        assert ready is not None and ready.status == "True"


async def _has(source: Callable[[], Awaitable[set[str]]], wanted: set[str]) -> bool:
    return wanted <= await source()


async def test_node_reporting_not_ready_gets_the_not_ready_taint(tmp_path: Path) -> None:
    async with cluster(tmp_path, "nodelifecycle") as api:
        await api.nodes.create(make_node("sick", ready="False"))
        await renew_lease(api, "sick")
        pod = make_pod("tolerant", {"app": "x"}, node="sick")
        pod.spec.tolerations.add(
            key="node.kubernetes.io/not-ready",
            operator="Exists",
            effect="NoExecute",
            toleration_seconds=3600,
        )
        await api.pods.create(pod)

        async def keep_alive() -> None:
            while True:
                await renew_lease(api, "sick")
                await asyncio.sleep(0.3)

        alive = asyncio.create_task(keep_alive())
        try:

            async def taints() -> set[str]:
                node = await api.nodes.get("sick")
                return {t.key for t in node.spec.taints if t.effect == "NoExecute"}

            async def not_ready_tainted() -> bool:
                return await taints() == {"node.kubernetes.io/not-ready"}

            await eventually(not_ready_tainted)
            await asyncio.sleep(3)  # past the grace period: the lease keeps it known
            assert await taints() == {"node.kubernetes.io/not-ready"}
            node = await api.nodes.get("sick")
            ready = condition(node, "Ready")
            assert ready is not None and ready.status == "False"
            # tolerationSeconds 3600: the pod stays.
            assert not (await api.pods.get("tolerant", NS)).metadata.HasField("deletion_timestamp")
        finally:
            alive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await alive


# ---------------------------------------------------------------- garbage collector


def make_replica_set(name: str, finalizers: tuple[str, ...] = ()) -> apps_pb2.ReplicaSet:
    rs = apps_pb2.ReplicaSet()
    rs.metadata.name = name
    rs.metadata.namespace = NS
    rs.metadata.finalizers.extend(finalizers)
    rs.spec.replicas = 1
    rs.spec.selector.match_labels["app"] = name
    rs.spec.template.metadata.labels["app"] = name
    rs.spec.template.spec.containers.add(name="main", image="busybox:1.36")
    return rs


def owned_pod(name: str, *owners: Any) -> core_pb2.Pod:
    pod = make_pod(name, {"app": "gc"})
    for i, owner in enumerate(owners):
        ref = pod.metadata.owner_references.add(
            api_version=owner.api_version,
            kind=owner.kind,
            name=owner.metadata.name,
            uid=owner.metadata.uid,
        )
        if i == 0:
            ref.controller = True
    return pod


async def gone(api: Client, name: str) -> bool:
    try:
        await api.pods.get(name, NS)
    except grpc.aio.AioRpcError as exc:
        return bool(exc.code() == grpc.StatusCode.NOT_FOUND)
    return False


async def test_deleting_an_owner_deletes_its_dependents(tmp_path: Path) -> None:
    async with cluster(tmp_path, "garbagecollector") as api:
        rs = await api.replica_sets.create(make_replica_set("owner"))
        other = await api.replica_sets.create(make_replica_set("other"))
        await api.pods.create(owned_pod("child", rs))
        await api.pods.create(owned_pod("shared", rs, other))
        # The barrier: a pod created after them whose owner never existed is collected,
        # so the collector has looked at the earlier ones too.
        ghost = make_replica_set("ghost")
        ghost.api_version, ghost.kind = "apps/v1", "ReplicaSet"
        ghost.metadata.uid = "00000000-0000-0000-0000-00000000dead"
        await api.pods.create(owned_pod("orphaned", ghost))
        await eventually(lambda: gone(api, "orphaned"))
        assert not await gone(api, "child")  # owner alive: untouched

        await api.replica_sets.delete("owner", NS)
        await eventually(lambda: gone(api, "child"))

        # Still owned by "other": only the dangling reference goes.
        async def only_other() -> bool:
            pod = await api.pods.get("shared", NS)
            return [r.uid for r in pod.metadata.owner_references] == [other.metadata.uid]

        await eventually(only_other)

        # An object created pointing at an owner that never existed is collected too.
        ghost = clone(rs)
        ghost.metadata.uid = "00000000-0000-0000-0000-000000000000"
        await api.pods.create(owned_pod("stray", ghost))
        await eventually(lambda: gone(api, "stray"))


async def test_orphan_finalizer_keeps_dependents(tmp_path: Path) -> None:
    async with cluster(tmp_path, "garbagecollector") as api:
        # The registry does not add "orphan" on propagationPolicy=Orphan yet; an
        # owner carrying it already is what such a delete will produce.
        rs = await api.replica_sets.create(make_replica_set("keeper", ("orphan",)))
        await api.pods.create(owned_pod("kept", rs))
        await api.replica_sets.delete("keeper", NS, propagation_policy="Orphan")

        async def owner_gone() -> bool:
            try:
                await api.replica_sets.get("keeper", NS)
            except grpc.aio.AioRpcError as exc:
                return bool(exc.code() == grpc.StatusCode.NOT_FOUND)
            return False

        await eventually(owner_gone)
        await asyncio.sleep(0.5)
        pod = await api.pods.get("kept", NS)
        assert not pod.metadata.owner_references
        assert not pod.metadata.HasField("deletion_timestamp")
