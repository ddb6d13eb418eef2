"""EndpointSlice controller: the addresses behind every Service with a selector.

For each such Service it keeps EndpointSlices (IPv4, labelled
`kubernetes.io/service-name`, owned by the Service) listing the pods that match
the selector and have an IP, with the conditions kube-proxy reads:
ready (Ready and not terminating), serving (Ready) and terminating (being
deleted; such endpoints are kept so connections can drain). Ports come from the
Service's targetPort, a number or a container port name looked up per pod; pods
that resolve the ports differently go into different slices, as in Kubernetes.
A slice holds at most 100 endpoints. Slices are written only when their content
changes, and deleted with their Service (the garbage collector would too).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

import grpc
import structlog

from kubeling.api.objects import clone
from kubeling.api.wellknown import (
    SERVICE_NAME_LABEL,
    TRIGGER_TIME_ANNOTATION,
    format_trigger_time,
)
from kubeling.client.informer import Informer, WorkQueue, informers_running, key_of, run_workers
from kubeling.controllers import podutil
from kubeling.controllers.manager import ControllerContext, register
from kubeling.v1 import core_pb2, discovery_pb2, meta_pb2

log = structlog.get_logger(__name__)

MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
MANAGED_BY = "endpointslice-controller.k8s.io"
MAX_ENDPOINTS_PER_SLICE = 100

PortKey = tuple[tuple[str, str, int], ...]  # (name, protocol, port) per Service port


def _selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def resolve_port(port: core_pb2.ServicePort, pod: core_pb2.Pod) -> int | None:
    """The pod's port for a Service port (Kubernetes' FindPort); None when a named
    targetPort is not among the pod's container ports."""
    target = port.target_port
    kind = target.WhichOneof("kind")
    if kind == "number_value":
        return int(target.number_value)
    if kind != "string_value":
        return port.port
    name = target.string_value
    if name.isdigit():
        return int(name)
    protocol = port.protocol or "TCP"
    for container in pod.spec.containers:
        for cport in container.ports:
            if cport.name == name and (cport.protocol or "TCP") == protocol:
                return cport.container_port
    return None


def pod_ports(svc: core_pb2.Service, pod: core_pb2.Pod) -> PortKey:
    result = []
    for port in svc.spec.ports:
        number = resolve_port(port, pod)
        if number is not None:  # Kubernetes leaves out what it cannot resolve
            result.append((port.name, port.protocol or "TCP", number))
    return tuple(result)


def endpoint_for(svc: core_pb2.Service, pod: core_pb2.Pod) -> discovery_pb2.Endpoint | None:
    """The pod as an endpoint, or None when it has no place in the Service."""
    ip = pod.status.pod_ip
    if not ip or ":" in ip or pod.status.phase in ("Succeeded", "Failed"):
        return None
    terminating = pod.metadata.HasField("deletion_timestamp")
    serving = svc.spec.publish_not_ready_addresses or podutil.is_pod_ready(pod)
    endpoint = discovery_pb2.Endpoint(
        addresses=[ip],
        node_name=pod.spec.node_name,
        target_ref=meta_pb2.ObjectReference(
            kind="Pod",
            namespace=pod.metadata.namespace,
            name=pod.metadata.name,
            uid=pod.metadata.uid,
        ),
    )
    # As Kubernetes: a pod whose subdomain is this Service publishes its hostname,
    # so DNS answers HOSTNAME.SERVICE.NS.svc (a StatefulSet's stable pod names).
    if pod.spec.hostname and pod.spec.subdomain == svc.metadata.name:
        endpoint.hostname = pod.spec.hostname
    endpoint.conditions.ready = serving and not terminating
    endpoint.conditions.serving = serving
    endpoint.conditions.terminating = terminating
    return endpoint


def desired_slices(
    svc: core_pb2.Service, pods: list[core_pb2.Pod]
) -> list[discovery_pb2.EndpointSlice]:
    """Slices (without names) for the Service: one group per port mapping, split
    into chunks of MAX_ENDPOINTS_PER_SLICE; one empty slice when nothing matches."""
    groups: dict[PortKey, list[discovery_pb2.Endpoint]] = {}
    for pod in sorted(pods, key=lambda p: p.metadata.name):
        endpoint = endpoint_for(svc, pod)
        if endpoint is not None:
            groups.setdefault(pod_ports(svc, pod), []).append(endpoint)
    if not groups:
        groups[()] = []  # a placeholder, as Kubernetes keeps
    result = []
    for ports, endpoints in sorted(groups.items()):
        for start in range(0, max(1, len(endpoints)), MAX_ENDPOINTS_PER_SLICE):
            piece = _new_slice(svc)
            piece.endpoints.extend(endpoints[start : start + MAX_ENDPOINTS_PER_SLICE])
            for name, protocol, number in ports:
                piece.ports.add(name=name, protocol=protocol, port=number)
            result.append(piece)
    return result


def _new_slice(svc: core_pb2.Service) -> discovery_pb2.EndpointSlice:
    piece = discovery_pb2.EndpointSlice(address_type="IPv4")
    meta = piece.metadata
    meta.generate_name = f"{svc.metadata.name}-"
    meta.namespace = svc.metadata.namespace
    meta.labels.update(svc.metadata.labels)
    meta.labels[SERVICE_NAME_LABEL] = svc.metadata.name
    meta.labels[MANAGED_BY_LABEL] = MANAGED_BY
    meta.owner_references.append(podutil.owner_ref(svc))
    return piece


def _same_content(a: discovery_pb2.EndpointSlice, b: discovery_pb2.EndpointSlice) -> bool:
    return (
        a.address_type == b.address_type
        and list(a.endpoints) == list(b.endpoints)
        and list(a.ports) == list(b.ports)
        and dict(a.metadata.labels) == dict(b.metadata.labels)
        and list(a.metadata.owner_references) == list(b.metadata.owner_references)
    )


@register("endpointslice")
class EndpointSliceController:
    def __init__(self, context: ControllerContext) -> None:
        self.api = context.api
        self.recorder = context.recorder
        self.workers = context.settings.workers
        self.services = Informer(self.api.services)
        self.pods = Informer(self.api.pods)
        self.slices = Informer(
            self.api.endpoint_slices, label_selector=f"{MANAGED_BY_LABEL}={MANAGED_BY}"
        )
        self.queue = WorkQueue()
        # When the oldest unsynced change to a service's endpoints was seen: written to
        # the slices so proxies can measure network programming latency.
        self._triggered: dict[str, float] = {}
        self.services.add_handler(self._on_service)
        self.pods.add_handler(self._on_pod)
        self.slices.add_handler(self._on_slice)

    def _enqueue(self, key: str) -> None:
        self._triggered.setdefault(key, time.time())
        self.queue.add(key)

    def _on_service(self, kind: str, old: Any, new: Any) -> None:
        self._enqueue(key_of(new if new is not None else old))

    def _on_pod(self, kind: str, old: Any, new: Any) -> None:
        pod = new if new is not None else old
        label_sets = [p.metadata.labels for p in (old, new) if p is not None]
        for svc in self.services.list(pod.metadata.namespace):
            selector = svc.spec.selector
            if selector and any(_selects(selector, labels) for labels in label_sets):
                self._enqueue(key_of(svc))

    def _on_slice(self, kind: str, old: Any, new: Any) -> None:
        # Someone else changed or deleted one of ours: put it right.
        piece = new if new is not None else old
        service = piece.metadata.labels.get(SERVICE_NAME_LABEL)
        if service:
            self.queue.add(f"{piece.metadata.namespace}/{service}")

    async def run(self) -> None:
        informers: list[Informer[Any]] = [self.services, self.pods, self.slices]
        async with informers_running(informers, "endpointslice"):
            await run_workers(self.queue, self.sync, self.workers, "endpointslice")

    async def sync(self, key: str) -> None:
        namespace, name = key.split("/", 1)
        triggered = self._triggered.pop(key, None)
        # Live: slices created by the previous sync may not be cached yet.
        listed = await self.api.endpoint_slices.list(
            namespace,
            label_selector=f"{SERVICE_NAME_LABEL}={name},{MANAGED_BY_LABEL}={MANAGED_BY}",
        )
        existing = sorted(listed.items, key=lambda s: s.metadata.name)
        svc = self.services.get(namespace, name)
        if svc is None or not svc.spec.selector:
            # Gone, or its endpoints are managed by hand: ours have no purpose.
            await asyncio.gather(*(self._delete(s) for s in existing))
            return
        if svc.metadata.HasField("deletion_timestamp"):
            return
        pods = [
            p for p in self.pods.list(namespace) if _selects(svc.spec.selector, p.metadata.labels)
        ]
        wanted = desired_slices(svc, pods)

        # Keep slices that already say the right thing, rewrite the others, then
        # create or delete the difference.
        unmatched = list(existing)
        todo: list[discovery_pb2.EndpointSlice] = []
        for piece in wanted:
            same = next((s for s in unmatched if _same_content(s, piece)), None)
            if same is not None:
                unmatched.remove(same)
            else:
                todo.append(piece)
        jobs: list[Any] = []
        if triggered is not None:
            stamp = format_trigger_time(triggered)
            for piece in todo:
                piece.metadata.annotations[TRIGGER_TIME_ANNOTATION] = stamp
        for piece in todo:
            if unmatched:
                old = unmatched.pop(0)
                jobs.append(self._rewrite(old, piece))
            else:
                jobs.append(self.api.endpoint_slices.create(piece))
        jobs += [self._delete(s) for s in unmatched]
        results = await asyncio.gather(*jobs, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]  # retried with back-off by the work queue
        if jobs:
            log.debug("endpoint slices written", service=key, writes=len(jobs))

    async def _rewrite(
        self, old: discovery_pb2.EndpointSlice, piece: discovery_pb2.EndpointSlice
    ) -> None:
        updated = clone(old)
        updated.address_type = piece.address_type
        del updated.endpoints[:]
        updated.endpoints.extend(piece.endpoints)
        del updated.ports[:]
        updated.ports.extend(piece.ports)
        updated.metadata.labels.clear()
        updated.metadata.labels.update(piece.metadata.labels)
        updated.metadata.annotations.update(piece.metadata.annotations)
        del updated.metadata.owner_references[:]
        updated.metadata.owner_references.extend(piece.metadata.owner_references)
        if updated.address_type != old.address_type:
            # addressType is immutable: replace the slice.
            await self._delete(old)
            await self.api.endpoint_slices.create(piece)
            return
        await self.api.endpoint_slices.update(updated)

    async def _delete(self, piece: discovery_pb2.EndpointSlice) -> None:
        meta = piece.metadata
        try:
            await self.api.endpoint_slices.delete(meta.name, meta.namespace, uid=meta.uid)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
