"""The Deployment controller: roll a pod template out through ReplicaSets.

Each distinct template gets a ReplicaSet named `<deployment>-<hash>`, the hash
also being the `pod-template-hash` label on its selector, template and pods so
the ReplicaSets of one Deployment never fight over pods. RollingUpdate moves
replicas from the old ReplicaSets to the new one within maxSurge/maxUnavailable;
Recreate empties the old ones first. The newest RS holds the highest
`deployment.kubernetes.io/revision`, which `kubeling rollout undo` reads back.
"""

from __future__ import annotations

import hashlib
import math
import time
from typing import Any

import grpc
import structlog
from google.protobuf import struct_pb2

from kubeling.api.objects import clone, now
from kubeling.api.selectors import SelectorError
from kubeling.client.informer import Informer, WorkQueue, informers_running, key_of, run_workers
from kubeling.controllers import podutil
from kubeling.controllers.manager import ControllerContext, register
from kubeling.v1 import apps_pb2, core_pb2, meta_pb2

log = structlog.get_logger(__name__)

HASH_LABEL = "pod-template-hash"
REVISION = "deployment.kubernetes.io/revision"
CHANGE_CAUSE = "kubernetes.io/change-cause"
# Characters Kubernetes uses for generated names: no vowels (no words), no
# look-alikes (0/o, 1/l).
_SAFE = "bcdfghjklmnpqrstvwxz2456789"


def template_hash(template: core_pb2.PodTemplateSpec, collision_count: int = 0) -> str:
    """A stable short name for a template (without its hash label); the
    collision count changes it when another RS already has the name."""
    plain = strip_hash(template)
    digest = hashlib.sha256(plain.SerializeToString(deterministic=True))
    digest.update(str(collision_count).encode())
    number = int.from_bytes(digest.digest()[:8], "big")
    chars = []
    for _ in range(10):
        number, index = divmod(number, len(_SAFE))
        chars.append(_SAFE[index])
    return "".join(chars)


def strip_hash(template: core_pb2.PodTemplateSpec) -> core_pb2.PodTemplateSpec:
    plain = clone(template)
    plain.metadata.labels.pop(HASH_LABEL, None)
    return plain


def resolve(value: struct_pb2.Value, total: int, round_up: bool) -> int:
    """An IntOrString: a count, or a percentage of `total` rounded as asked."""
    if value.HasField("string_value"):
        text = value.string_value.strip()
        if text.endswith("%"):
            scaled = int(text[:-1]) * total / 100
            return math.ceil(scaled) if round_up else math.floor(scaled)
        return int(text)
    if value.HasField("number_value"):
        return int(value.number_value)
    return 0


def surge_and_unavailable(deployment: apps_pb2.Deployment) -> tuple[int, int]:
    """maxSurge rounds up, maxUnavailable down; both zero would stall the
    rollout, so unavailable becomes 1 then (as Kubernetes)."""
    replicas = deployment.spec.replicas
    if deployment.spec.strategy.type != "RollingUpdate":
        return 0, 0
    rolling = deployment.spec.strategy.rolling_update
    surge = resolve(rolling.max_surge, replicas, round_up=True)
    unavailable = resolve(rolling.max_unavailable, replicas, round_up=False)
    if surge == 0 and unavailable == 0:
        unavailable = 1
    return surge, min(unavailable, replicas)


def revision_of(rs: apps_pb2.ReplicaSet) -> int:
    try:
        return int(rs.metadata.annotations.get(REVISION, "0"))
    except ValueError:
        return 0


def _created(rs: apps_pb2.ReplicaSet) -> tuple[int, int, str]:
    stamp = rs.metadata.creation_timestamp
    return (stamp.seconds, stamp.nanos, rs.metadata.name)


def _available(rs: apps_pb2.ReplicaSet) -> int:
    """Available pods we can count on: an RS scaled down will delete unavailable
    pods first, so no more than spec.replicas of its available ones survive
    even if its status has not caught up with the scale-down yet."""
    return min(rs.status.available_replicas, rs.spec.replicas)


@register("deployment")
class DeploymentController:
    def __init__(self, context: ControllerContext) -> None:
        self.api = context.api
        self.recorder = context.recorder
        self.workers = context.settings.workers
        self.deployments: Informer[apps_pb2.Deployment] = Informer(self.api.deployments)
        self.replica_sets: Informer[apps_pb2.ReplicaSet] = Informer(self.api.replica_sets)
        # Pods only matter to Recreate, which waits for the old ones to be gone.
        self.pods: Informer[core_pb2.Pod] = Informer(self.api.pods)
        self.queue = WorkQueue()
        self.deployments.add_handler(self._on_deployment)
        self.replica_sets.add_handler(self._on_replica_set)
        self.pods.add_handler(self._on_pod)

    async def run(self) -> None:
        informers: list[Informer[Any]] = [self.deployments, self.replica_sets, self.pods]
        async with informers_running(informers, "deployment"):
            await run_workers(self.queue, self.sync, self.workers, "deployment")

    # ------------------------------------------------------------ event handlers

    def _on_deployment(self, kind: str, old: Any, new: Any) -> None:
        self.queue.add(key_of(new if new is not None else old))

    def _on_replica_set(self, kind: str, old: Any, new: Any) -> None:
        rs: apps_pb2.ReplicaSet = new if new is not None else old
        ref = podutil.controller_of(rs)
        if ref is not None and ref.kind == "Deployment":
            self.queue.add(f"{rs.metadata.namespace}/{ref.name}")
        elif kind != "DELETED":
            self._enqueue_matching(rs)  # an orphan someone may adopt
        if kind == "MODIFIED":
            old_ref = podutil.controller_of(old)
            if old_ref is not None and old_ref.kind == "Deployment" and old_ref != ref:
                self.queue.add(f"{rs.metadata.namespace}/{old_ref.name}")

    def _enqueue_matching(self, rs: apps_pb2.ReplicaSet) -> None:
        for deployment in self.deployments.list(rs.metadata.namespace):
            try:
                selector = podutil.selector_of(deployment.spec.selector)
            except SelectorError:
                continue
            if not selector.empty and selector.matches(rs.metadata.labels):
                self.queue.add(key_of(deployment))

    def _on_pod(self, kind: str, old: Any, new: Any) -> None:
        if kind != "DELETED":
            return  # Recreate waits only for old pods to disappear
        pod: core_pb2.Pod = old if old is not None else new
        ref = podutil.controller_of(pod)
        if ref is None or ref.kind != "ReplicaSet":
            return
        rs = self.replica_sets.get(pod.metadata.namespace, ref.name)
        if rs is None:
            return
        owner = podutil.controller_of(rs)
        if owner is not None and owner.kind == "Deployment":
            self.queue.add(f"{rs.metadata.namespace}/{owner.name}")

    # ---------------------------------------------------------------------- sync

    async def sync(self, key: str) -> None:
        namespace, _, name = key.partition("/")
        deployment = self.deployments.get(namespace, name)
        if deployment is None:
            return
        try:
            selector = podutil.selector_of(deployment.spec.selector)
        except SelectorError as exc:
            self.recorder.record(deployment, "Warning", "InvalidSelector", str(exc))
            return
        if selector.empty:
            # Kubernetes refuses to act on a selector that would match every pod.
            self.recorder.record(
                deployment, "Warning", "SelectingAll", "This deployment is selecting all pods"
            )
            return
        owned = await podutil.claim_objects(
            self.api.replica_sets, deployment, selector, self.replica_sets.list(namespace)
        )
        owned = [rs for rs in owned if not rs.metadata.HasField("deletion_timestamp")]
        if deployment.metadata.HasField("deletion_timestamp"):
            await self._sync_status(key, deployment, owned, self._find_new(deployment, owned))
            return
        new_rs = self._find_new(deployment, owned)
        old = [rs for rs in owned if new_rs is None or rs.metadata.uid != new_rs.metadata.uid]
        if deployment.spec.paused:
            # Paused: keep the scale right but start no rollout.
            if new_rs is not None:
                await self._scale(new_rs, deployment.spec.replicas, deployment)
        elif deployment.spec.strategy.type == "Recreate":
            new_rs = await self._recreate(deployment, new_rs, old)
        else:
            new_rs = await self._rolling(deployment, new_rs, old)
        owned = [self._latest(rs) for rs in owned]
        if new_rs is not None and all(rs.metadata.uid != new_rs.metadata.uid for rs in owned):
            owned.append(new_rs)
        old = [rs for rs in owned if new_rs is None or rs.metadata.uid != new_rs.metadata.uid]
        if new_rs is not None and self._complete(deployment, new_rs, old):
            await self._cleanup(deployment, old)
        await self._sync_status(key, deployment, owned, new_rs)

    def _latest(self, rs: apps_pb2.ReplicaSet) -> apps_pb2.ReplicaSet:
        cached = self.replica_sets.get(rs.metadata.namespace, rs.metadata.name)
        return cached if cached is not None else rs

    def _find_new(
        self, deployment: apps_pb2.Deployment, owned: list[apps_pb2.ReplicaSet]
    ) -> apps_pb2.ReplicaSet | None:
        """The oldest RS whose template is the Deployment's (ignoring the hash
        label); oldest so that duplicates resolve the same way every time."""
        for rs in sorted(owned, key=_created):
            if strip_hash(rs.spec.template) == strip_hash(deployment.spec.template):
                return rs
        return None

    # ------------------------------------------------------------- new ReplicaSet

    async def _ensure_new(
        self,
        deployment: apps_pb2.Deployment,
        new_rs: apps_pb2.ReplicaSet | None,
        old: list[apps_pb2.ReplicaSet],
        replicas: int,
    ) -> apps_pb2.ReplicaSet:
        """The new RS with its revision (above every old one) and minReadySeconds
        up to date, created with `replicas` if it does not exist yet."""
        newest_old = max((revision_of(rs) for rs in old), default=0)
        revision = str(newest_old + 1)
        cause = deployment.metadata.annotations.get(CHANGE_CAUSE)
        if new_rs is not None:
            # A template rolled back to becomes the newest revision again.
            if revision_of(new_rs) > newest_old:
                revision = new_rs.metadata.annotations[REVISION]
            if (
                new_rs.metadata.annotations.get(REVISION) == revision
                and new_rs.spec.min_ready_seconds == deployment.spec.min_ready_seconds
                and (cause is None or new_rs.metadata.annotations.get(CHANGE_CAUSE) == cause)
            ):
                return new_rs
            updated = clone(new_rs)
            updated.metadata.annotations[REVISION] = revision
            if cause is not None:
                updated.metadata.annotations[CHANGE_CAUSE] = cause
            updated.spec.min_ready_seconds = deployment.spec.min_ready_seconds
            return await self._write(updated)
        template_hash_value = template_hash(
            deployment.spec.template, deployment.status.collision_count
        )
        rs = apps_pb2.ReplicaSet(api_version="apps/v1", kind="ReplicaSet")
        rs.metadata.name = f"{deployment.metadata.name}-{template_hash_value}"
        rs.metadata.namespace = deployment.metadata.namespace
        rs.metadata.labels.update(deployment.spec.template.metadata.labels)
        rs.metadata.labels[HASH_LABEL] = template_hash_value
        rs.metadata.annotations[REVISION] = revision
        if cause is not None:
            rs.metadata.annotations[CHANGE_CAUSE] = cause
        rs.metadata.owner_references.append(podutil.owner_ref(deployment))
        rs.spec.replicas = replicas
        rs.spec.min_ready_seconds = deployment.spec.min_ready_seconds
        rs.spec.selector.CopyFrom(deployment.spec.selector)
        rs.spec.selector.match_labels[HASH_LABEL] = template_hash_value
        rs.spec.template.CopyFrom(deployment.spec.template)
        rs.spec.template.metadata.labels[HASH_LABEL] = template_hash_value
        try:
            created = await self.api.replica_sets.create(rs)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise
            existing = await self.api.replica_sets.get(rs.metadata.name, rs.metadata.namespace)
            if podutil.is_controlled_by(existing, deployment) and strip_hash(
                existing.spec.template
            ) == strip_hash(deployment.spec.template):
                return existing  # ours, just not in the cache yet
            # A different object has the name: change the hash and try again.
            bumped = clone(deployment)
            bumped.status.collision_count += 1
            await self.api.deployments.update_status(bumped)
            raise
        self.recorder.record(
            deployment,
            "Normal",
            "ScalingReplicaSet",
            f"Scaled up replica set {created.metadata.name} to {replicas}",
        )
        self._remember(created)
        return created

    # ----------------------------------------------------------------- strategies

    async def _rolling(
        self,
        deployment: apps_pb2.Deployment,
        new_rs: apps_pb2.ReplicaSet | None,
        old: list[apps_pb2.ReplicaSet],
    ) -> apps_pb2.ReplicaSet:
        replicas = deployment.spec.replicas
        surge, unavailable = surge_and_unavailable(deployment)
        old_total = sum(rs.spec.replicas for rs in old)
        if new_rs is None:
            # Start within the surge budget (everything at once with no old pods).
            first = (
                replicas if old_total == 0 else max(0, min(replicas, replicas + surge - old_total))
            )
            new_rs = await self._ensure_new(deployment, None, old, first)
        else:
            new_rs = await self._ensure_new(deployment, new_rs, old, 0)
            target = new_rs.spec.replicas
            if new_rs.spec.replicas > replicas:
                target = replicas
            elif new_rs.spec.replicas < replicas:
                total = old_total + new_rs.spec.replicas
                room = replicas + surge - total
                target = new_rs.spec.replicas + max(0, min(room, replicas - new_rs.spec.replicas))
                if old_total == 0:
                    target = replicas
            new_rs = await self._scale(new_rs, target, deployment)
        await self._scale_down_old(deployment, new_rs, old, unavailable)
        return new_rs

    async def _scale_down_old(
        self,
        deployment: apps_pb2.Deployment,
        new_rs: apps_pb2.ReplicaSet,
        old: list[apps_pb2.ReplicaSet],
        max_unavailable: int,
    ) -> None:
        old = [rs for rs in old if rs.spec.replicas > 0]
        if not old:
            return
        min_available = deployment.spec.replicas - max_unavailable
        all_total = sum(rs.spec.replicas for rs in old) + new_rs.spec.replicas
        new_unavailable = new_rs.spec.replicas - _available(new_rs)
        budget = all_total - min_available - new_unavailable
        if budget <= 0:
            return
        # First drop old pods that are not available anyway: that costs nothing.
        for rs in sorted(old, key=_created):
            if budget <= 0:
                break
            unhealthy = rs.spec.replicas - _available(rs)
            if unhealthy <= 0:
                continue
            cut = min(unhealthy, budget)
            scaled = await self._scale(rs, rs.spec.replicas - cut, deployment)
            old[old.index(rs)] = scaled
            budget -= cut
        # Then available ones, as long as enough stay available overall.
        available = sum(_available(rs) for rs in old) + _available(new_rs)
        spare = available - min_available
        for rs in sorted(old, key=_created):
            if spare <= 0:
                break
            cut = min(rs.spec.replicas, spare)
            if cut <= 0:
                continue
            await self._scale(rs, rs.spec.replicas - cut, deployment)
            spare -= cut

    async def _recreate(
        self,
        deployment: apps_pb2.Deployment,
        new_rs: apps_pb2.ReplicaSet | None,
        old: list[apps_pb2.ReplicaSet],
    ) -> apps_pb2.ReplicaSet | None:
        scaled_down = False
        for rs in old:
            if rs.spec.replicas > 0:
                await self._scale(rs, 0, deployment)
                scaled_down = True
        if scaled_down:
            return new_rs  # wait for the RS controller to delete their pods
        old_uids = {rs.metadata.uid for rs in old}
        for pod in self.pods.list(deployment.metadata.namespace):
            ref = podutil.controller_of(pod)
            if (
                ref is not None
                and ref.uid in old_uids
                and pod.status.phase not in ("Succeeded", "Failed")
            ):
                return new_rs  # an old pod still exists (maybe terminating): wait
        new_rs = await self._ensure_new(deployment, new_rs, old, deployment.spec.replicas)
        return await self._scale(new_rs, deployment.spec.replicas, deployment)

    # ------------------------------------------------------------------- helpers

    async def _scale(
        self, rs: apps_pb2.ReplicaSet, replicas: int, deployment: apps_pb2.Deployment
    ) -> apps_pb2.ReplicaSet:
        if rs.spec.replicas == replicas:
            return rs
        updated = clone(rs)
        updated.spec.replicas = replicas
        written = await self._write(updated)
        direction = "up" if replicas > rs.spec.replicas else "down"
        self.recorder.record(
            deployment,
            "Normal",
            "ScalingReplicaSet",
            f"Scaled {direction} replica set {rs.metadata.name} to {replicas}",
        )
        return written

    async def _write(self, rs: apps_pb2.ReplicaSet) -> apps_pb2.ReplicaSet:
        written = await self.api.replica_sets.update(rs)
        self._remember(written)
        return written

    def _remember(self, rs: apps_pb2.ReplicaSet) -> None:
        """Put our own write into the cache at once: a sync starting before its
        watch event would otherwise scale from stale numbers (twice)."""
        key = key_of(rs)
        cached = self.replica_sets.store.get(key)
        if cached is None or int(cached.metadata.resource_version or 0) < int(
            rs.metadata.resource_version or 0
        ):
            self.replica_sets.store[key] = rs

    def _complete(
        self,
        deployment: apps_pb2.Deployment,
        new_rs: apps_pb2.ReplicaSet,
        old: list[apps_pb2.ReplicaSet],
    ) -> bool:
        replicas = deployment.spec.replicas
        return (
            new_rs.spec.replicas == replicas
            and new_rs.status.replicas == replicas
            and new_rs.status.available_replicas >= replicas
            and all(rs.spec.replicas == 0 and rs.status.replicas == 0 for rs in old)
        )

    async def _cleanup(
        self, deployment: apps_pb2.Deployment, old: list[apps_pb2.ReplicaSet]
    ) -> None:
        """Keep at most revisionHistoryLimit empty old ReplicaSets (the newest)."""
        limit = deployment.spec.revision_history_limit
        empty = [rs for rs in old if rs.spec.replicas == 0 and rs.status.replicas == 0]
        extra = len(empty) - limit
        if extra <= 0:
            return
        for rs in sorted(empty, key=lambda r: (revision_of(r), _created(r)))[:extra]:
            try:
                await self.api.replica_sets.delete(
                    rs.metadata.name, rs.metadata.namespace, uid=rs.metadata.uid
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise

    async def _sync_status(
        self,
        key: str,
        deployment: apps_pb2.Deployment,
        owned: list[apps_pb2.ReplicaSet],
        new_rs: apps_pb2.ReplicaSet | None,
    ) -> None:
        replicas = deployment.spec.replicas
        _, max_unavailable = surge_and_unavailable(deployment)
        status = apps_pb2.DeploymentStatus()
        status.CopyFrom(deployment.status)
        status.observed_generation = deployment.metadata.generation
        status.replicas = sum(rs.status.replicas for rs in owned)
        status.updated_replicas = new_rs.status.replicas if new_rs is not None else 0
        status.ready_replicas = sum(rs.status.ready_replicas for rs in owned)
        status.available_replicas = sum(rs.status.available_replicas for rs in owned)
        status.unavailable_replicas = max(0, replicas - status.available_replicas)
        if status.available_replicas >= replicas - max_unavailable:
            _set_condition(status, "Available", "True", "MinimumReplicasAvailable",
                           "Deployment has minimum availability.")  # fmt: skip
        else:
            _set_condition(status, "Available", "False", "MinimumReplicasUnavailable",
                           "Deployment does not have minimum availability.")  # fmt: skip
        old = [rs for rs in owned if new_rs is None or rs.metadata.uid != new_rs.metadata.uid]
        name = new_rs.metadata.name if new_rs is not None else ""
        deadline = deployment.spec.progress_deadline_seconds
        progressing = _get_condition(status, "Progressing")
        if new_rs is not None and self._complete(deployment, new_rs, old):
            _set_condition(status, "Progressing", "True", "NewReplicaSetAvailable",
                           f'ReplicaSet "{name}" has successfully progressed.')  # fmt: skip
        elif status != deployment.status or progressing is None:
            # Something moved: the rollout is progressing; the deadline restarts.
            _set_condition(status, "Progressing", "True", "ReplicaSetUpdated",
                           f'ReplicaSet "{name}" is progressing.', touch=True)  # fmt: skip
            self.queue.add_after(key, deadline + 1)
        elif (
            progressing.reason == "ReplicaSetUpdated"
            and time.time() - progressing.last_update_time.seconds > deadline
        ):
            _set_condition(status, "Progressing", "False", "ProgressDeadlineExceeded",
                           f'ReplicaSet "{name}" has timed out progressing.')  # fmt: skip
        if status == deployment.status:
            return
        updated = clone(deployment)
        updated.status.CopyFrom(status)
        await self.api.deployments.update_status(updated)


def _get_condition(status: apps_pb2.DeploymentStatus, type_: str) -> meta_pb2.Condition | None:
    for condition in status.conditions:
        if condition.type == type_:
            return condition
    return None


def _set_condition(
    status: apps_pb2.DeploymentStatus,
    type_: str,
    value: str,
    reason: str,
    message: str,
    touch: bool = False,
) -> None:
    """Set a condition; the transition time moves only when the status flips
    and the update time when something changed (or `touch`)."""
    condition = _get_condition(status, type_)
    stamp = now()
    if condition is None:
        condition = status.conditions.add(type=type_)
        condition.last_transition_time.CopyFrom(stamp)
    elif condition.status != value:
        condition.last_transition_time.CopyFrom(stamp)
    if condition.status != value or condition.reason != reason or touch:
        condition.last_update_time.CopyFrom(stamp)
    condition.status = value
    condition.reason = reason
    condition.message = message
