"""Which pods a workload reference means: `pod/NAME`, `svc/NAME`, `deploy/NAME`,
`rs/NAME`, `sts/NAME`, `job/NAME` (as kubectl's port-forward, attach and logs take
them). A workload's pods are those its selector matches; a Service's are those
its selector matches too (the pods its endpoints come from)."""

from __future__ import annotations

from typing import Any

from kubeling.api.kinds import DEPLOYMENT, JOB, POD, REPLICA_SET, SERVICE, STATEFUL_SET
from kubeling.cli.errors import CliError
from kubeling.cli.resources import resolve_kind
from kubeling.cli.tables import selector_text
from kubeling.client import Client
from kubeling.v1 import core_pb2

__all__ = ["is_ready", "pick_pod", "split_reference", "workload_selector"]

_WORKLOADS = (DEPLOYMENT, REPLICA_SET, STATEFUL_SET, JOB)


def split_reference(text: str) -> tuple[Any, str]:
    """(kind, name) of "KIND/NAME"; a bare NAME is a pod."""
    kind_text, slash, name = text.partition("/")
    if not slash:
        return POD, text
    if not name:
        raise CliError(f"error: {text!r}: expected TYPE/NAME")
    try:
        kind = resolve_kind(kind_text)
    except Exception:
        raise CliError(f'error: the server doesn\'t have a resource type "{kind_text}"') from None
    if kind is not POD and kind is not SERVICE and kind not in _WORKLOADS:
        raise CliError(f"error: {text!r}: expected a pod, service or workload")
    return kind, name


async def workload_selector(api: Client, kind: Any, name: str, namespace: str) -> str:
    """The label selector (text) of a Service or workload."""
    obj = await api.resource(kind).get(name, namespace)
    if kind is SERVICE:
        selector = dict(obj.spec.selector)
        if not selector:
            raise CliError(f'error: service "{name}" has no selector: it selects no pods')
        return ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
    text = selector_text(obj.spec.selector)
    if not text:
        raise CliError(f'error: {kind.name.lower()} "{name}" has no selector')
    return text


def is_ready(pod: core_pb2.Pod) -> bool:
    return pod.status.phase == "Running" and any(
        c.type == "Ready" and c.status == "True" for c in pod.status.conditions
    )


async def pick_pod(api: Client, reference: str, namespace: str) -> core_pb2.Pod:
    """The pod a reference means: the named pod, or a ready (else running) pod of
    the Service or workload, the oldest first as kubectl picks."""
    kind, name = split_reference(reference)
    if kind is POD:
        pod: core_pb2.Pod = await api.pods.get(name, namespace)
        return pod
    selector = await workload_selector(api, kind, name, namespace)
    pods = [
        p
        for p in (await api.pods.list(namespace, label_selector=selector)).items
        if not p.metadata.HasField("deletion_timestamp")
    ]
    for choose in (is_ready, lambda p: p.status.phase == "Running"):
        chosen = [p for p in pods if choose(p)]
        if chosen:
            return min(chosen, key=lambda p: p.metadata.creation_timestamp.ToNanoseconds())
    raise CliError(f"error: no running pod found for {reference}")
