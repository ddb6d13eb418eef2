"""Helpers shared by controllers that own pods (ReplicaSet, DaemonSet, ...).

Small API:

- `selector_of(proto_selector)` -> `LabelSelector` (matchLabels + matchExpressions).
- `owner_ref(owner)` -> the controller `OwnerReference` pointing at `owner`.
- `controller_of(obj)` -> the controller ownerReference of `obj`, or None.
- `is_pod_active(pod)`, `is_pod_ready(pod)`, `is_pod_available(pod, min_ready, now)`,
  `seconds_until_available(pod, min_ready, now)` (for re-queueing).
- `pod_from_template(template, owner, generate_name)` -> a new Pod to create.
- `create_pod(api, recorder, owner, pod)`: create and record SuccessfulCreate/FailedCreate.
- `delete_pod(api, recorder, owner, pod)`: delete and record SuccessfulDelete/FailedDelete.
- `claim_pods(api, owner, selector, pods)`: adopt matching orphans, release owned pods
  that stopped matching; returns the pods `owner` controls afterwards
  (`claim_objects(resource, ...)` does the same for any kind).
- `deletion_order_key(pod)`: sort key, pods to delete first come first.
- `Expectations`: creations/deletions a controller made but has not yet seen in its
  informer, so a sync does not act twice on a stale cache.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from kubeling.api.objects import clone
from kubeling.api.selectors import LabelSelector, selector_from_match
from kubeling.client.client import Client, ResourceClient
from kubeling.client.events import EventRecorder
from kubeling.v1 import core_pb2, meta_pb2

M = TypeVar("M", bound=Message)

# Phases after which a pod never runs again.
_TERMINAL = ("Succeeded", "Failed")


def selector_of(selector: meta_pb2.LabelSelector) -> LabelSelector:
    """The proto selector as a matcher (raises SelectorError when invalid)."""
    expressions = [(e.key, e.operator, list(e.values)) for e in selector.match_expressions]
    return selector_from_match(dict(selector.match_labels), expressions)


def owner_ref(owner: Any) -> meta_pb2.OwnerReference:
    """The reference a controller puts on what it owns; blockOwnerDeletion lets
    foreground deletion of the owner wait for its dependents."""
    return meta_pb2.OwnerReference(
        api_version=owner.api_version,
        kind=owner.kind,
        name=owner.metadata.name,
        uid=owner.metadata.uid,
        controller=True,
        block_owner_deletion=True,
    )


def controller_of(obj: Any) -> meta_pb2.OwnerReference | None:
    for ref in obj.metadata.owner_references:
        if ref.HasField("controller") and ref.controller:
            return ref  # type: ignore[no-any-return]
    return None


def is_controlled_by(obj: Any, owner: Any) -> bool:
    ref = controller_of(obj)
    return ref is not None and ref.uid == owner.metadata.uid


def is_pod_active(pod: core_pb2.Pod) -> bool:
    """Counts toward replicas: not finished and not being deleted."""
    return pod.status.phase not in _TERMINAL and not pod.metadata.HasField("deletion_timestamp")


def _ready_condition(pod: core_pb2.Pod) -> meta_pb2.Condition | None:
    for condition in pod.status.conditions:
        if condition.type == "Ready":
            return condition
    return None


def is_pod_ready(pod: core_pb2.Pod) -> bool:
    condition = _ready_condition(pod)
    return condition is not None and condition.status == "True"


def seconds_until_available(
    pod: core_pb2.Pod, min_ready_seconds: int, now: float | None = None
) -> float | None:
    """0 when the pod is available, the wait left when it is ready but not yet for
    minReadySeconds, None when it is not ready at all."""
    condition = _ready_condition(pod)
    if condition is None or condition.status != "True":
        return None
    if min_ready_seconds <= 0:
        return 0.0
    since = condition.last_transition_time
    if not since.seconds and not since.nanos:
        return 0.0  # no transition time recorded: trust the Ready status
    now = time.time() if now is None else now
    left = since.seconds + since.nanos / 1e9 + min_ready_seconds - now
    return max(0.0, left)


def is_pod_available(pod: core_pb2.Pod, min_ready_seconds: int, now: float | None = None) -> bool:
    return seconds_until_available(pod, min_ready_seconds, now) == 0.0


def pod_from_template(
    template: core_pb2.PodTemplateSpec, owner: Any, generate_name: str = ""
) -> core_pb2.Pod:
    """A pod to create for `owner`: the template's labels, annotations and spec,
    a generated name (default "<owner>-") and the controller ownerReference."""
    pod = core_pb2.Pod(api_version="v1", kind="Pod")
    pod.metadata.generate_name = generate_name or f"{owner.metadata.name}-"
    pod.metadata.namespace = owner.metadata.namespace
    pod.metadata.labels.update(template.metadata.labels)
    pod.metadata.annotations.update(template.metadata.annotations)
    pod.metadata.finalizers.extend(template.metadata.finalizers)
    pod.metadata.owner_references.append(owner_ref(owner))
    pod.spec.CopyFrom(template.spec)
    return pod


async def create_pod(
    api: Client, recorder: EventRecorder, owner: Any, pod: core_pb2.Pod
) -> core_pb2.Pod:
    """Create `pod`, recording an Event on `owner`; API errors propagate."""
    try:
        created = await api.pods.create(pod)
    except grpc.aio.AioRpcError as exc:
        recorder.record(owner, "Warning", "FailedCreate", f"Error creating: {exc.details()}")
        raise
    recorder.record(owner, "Normal", "SuccessfulCreate", f"Created pod: {created.metadata.name}")
    return created


async def delete_pod(api: Client, recorder: EventRecorder, owner: Any, pod: core_pb2.Pod) -> bool:
    """Delete `pod` (this exact one, by uid); False when it was already gone."""
    meta = pod.metadata
    try:
        await api.pods.delete(meta.name, meta.namespace, uid=meta.uid)
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return False
        recorder.record(owner, "Warning", "FailedDelete", f"Error deleting: {exc.details()}")
        raise
    recorder.record(owner, "Normal", "SuccessfulDelete", f"Deleted pod: {meta.name}")
    return True


async def claim_pods(
    api: Client, owner: Any, selector: LabelSelector, pods: list[core_pb2.Pod]
) -> list[core_pb2.Pod]:
    """Kubernetes' ControllerRefManager for pods: of `pods` (same namespace as
    `owner`), return those `owner` controls after adopting matching orphans and
    releasing owned pods whose labels no longer match."""
    return await claim_objects(api.pods, owner, selector, pods)


async def claim_objects(
    resource: ResourceClient[M], owner: Any, selector: LabelSelector, objs: list[M]
) -> list[M]:
    """`claim_pods` for any kind (the Deployment controller claims ReplicaSets).
    An owner being deleted adopts nothing (it would only hand objects to the
    garbage collector), and an empty selector adopts nothing (it matches all)."""
    claimed: list[M] = []
    owner_deleting = owner.metadata.HasField("deletion_timestamp")
    for obj in objs:
        meta: Any = obj.metadata  # type: ignore[attr-defined]
        ref = controller_of(obj)
        matches = selector.matches(meta.labels)
        deleting = meta.HasField("deletion_timestamp")
        if ref is not None:
            if ref.uid != owner.metadata.uid:
                continue  # another controller's
            if matches:
                claimed.append(obj)
            elif not deleting:
                await _set_owner(resource, obj, owner, adopt=False)
            continue
        if matches and not owner_deleting and not selector.empty and not deleting:
            adopted = await _set_owner(resource, obj, owner, adopt=True)
            if adopted is not None:
                claimed.append(adopted)
    return claimed


async def _set_owner(resource: ResourceClient[M], obj: M, owner: Any, adopt: bool) -> M | None:
    """Add or drop `owner`'s reference with an optimistic update (the object's
    resourceVersion guards against a concurrent claim); None when it is gone."""
    updated = clone(obj)
    meta: Any = updated.metadata  # type: ignore[attr-defined]
    refs = [r for r in meta.owner_references if r.uid != owner.metadata.uid]
    del meta.owner_references[:]
    meta.owner_references.extend(refs)
    if adopt:
        meta.owner_references.append(owner_ref(owner))
    try:
        return await resource.update(updated)
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise


def deletion_order_key(pod: core_pb2.Pod) -> tuple[int, int, int, float, int, float]:
    """Sort ascending to get the pods to delete first, as Kubernetes ranks them:
    unscheduled, then Pending/Unknown before Running, then not ready, then ready
    for less time, then more restarts, then newest."""
    scheduled = 1 if pod.spec.node_name else 0
    phase_rank = {"Pending": 0, "Unknown": 1, "Running": 2}.get(pod.status.phase, 0)
    ready = 1 if is_pod_ready(pod) else 0
    ready_since = 0.0
    condition = _ready_condition(pod)
    if ready and condition is not None:
        stamp = condition.last_transition_time
        # Later readiness first: negate so that the newest comes first.
        ready_since = -(stamp.seconds + stamp.nanos / 1e9)
    restarts = sum(s.restart_count for s in pod.status.container_statuses)
    created = pod.metadata.creation_timestamp
    return (
        scheduled,
        phase_rank,
        ready,
        ready_since,
        -restarts,
        -(created.seconds + created.nanos / 1e9),
    )


@dataclass
class _Expected:
    adds: int
    deletes: set[str]
    deadline: float


class Expectations:
    """What a controller asked for and has not yet seen in its informer, per
    owner key. Until satisfied (or expired, for lost watch events), a sync must
    not act on counts again: the cache would make it create or delete twice.
    Deletions are tracked by pod uid, so seeing the same deletion twice (marked,
    then removed) counts once."""

    def __init__(self, ttl: float = 300.0) -> None:
        self._ttl = ttl
        self._items: dict[str, _Expected] = {}

    def expect(self, key: str, adds: int = 0, delete_uids: Iterable[str] = ()) -> None:
        self._items[key] = _Expected(adds, set(delete_uids), time.monotonic() + self._ttl)

    def observed_add(self, key: str) -> None:
        """A creation was seen (or failed, so it never will be)."""
        item = self._items.get(key)
        if item is not None:
            item.adds -= 1

    def observed_delete(self, key: str, uid: str) -> None:
        item = self._items.get(key)
        if item is not None:
            item.deletes.discard(uid)

    def satisfied(self, key: str) -> bool:
        item = self._items.get(key)
        if item is None:
            return True
        done = item.adds <= 0 and not item.deletes
        return done or time.monotonic() > item.deadline

    def forget(self, key: str) -> None:
        self._items.pop(key, None)
