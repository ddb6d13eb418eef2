"""The StatefulSet controller: pods with stable names, storage and DNS names.

As kube-controller-manager's StatefulSet controller:

- Pod `i` (ordinals from `spec.ordinals.start`, default 0) is named `NAME-i`, with
  hostname `NAME-i` and subdomain `spec.serviceName`, so a headless Service of that
  name gives it the DNS name `NAME-i.SERVICE.NS.svc.cluster.local` (the EndpointSlice
  controller publishes the hostname). It carries the labels
  `statefulset.kubernetes.io/pod-name`, `apps.kubernetes.io/pod-index` and
  `controller-revision-hash`.
- Each volumeClaimTemplate gives pod `i` a claim `TEMPLATE-NAME-i`, created before
  the pod (with the template's labels and the StatefulSet's selector labels) and
  mounted as the template's volume name. Claims outlive their pods: a pod that is
  deleted, evicted or rescheduled gets the same claims, so the same data, back.
  `persistentVolumeClaimRetentionPolicy`: `whenDeleted: Delete` makes the
  StatefulSet an owner of its claims (the garbage collector removes them with it);
  `whenScaled: Delete` makes a condemned pod (ordinal beyond `replicas`) the owner
  of its claims before it is deleted, so they go with it. Retain (the default)
  keeps them.
- `podManagementPolicy: OrderedReady` (default): pods are created one at a time
  in ordinal order, the next only when every lower one is Running and Ready;
  scaling down deletes the highest ordinal first, one at a time, each only once it
  is the only change in flight and the others are Running and Ready. `Parallel`
  creates and deletes all at once.
- Failed (or Succeeded) pods are deleted and recreated under the same name.
- Updates: each distinct pod template is kept as a ControllerRevision
  `NAME-HASH` (owned by the StatefulSet, numbered 1, 2, ...; a template going
  back to an earlier one renumbers that revision), and a pod's
  `controller-revision-hash` label names its revision, as Kubernetes does.
  `RollingUpdate` deletes, from the highest ordinal down to `partition`, pods
  whose revision is not the update revision, waiting for every pod to be Running
  and Ready before the next (the recreated pod gets the new template);
  `maxUnavailable` (Kubernetes' MaxUnavailableStatefulSet) lets that many be
  replaced at once. A pod below the partition that is deleted comes back from the
  current revision's template. `OnDelete` changes nothing itself: pods deleted
  by a user come back at the update revision. Revisions no pod uses, beyond
  `revisionHistoryLimit`, are deleted oldest first.
- Status: replicas, readyReplicas, availableReplicas (minReadySeconds),
  currentReplicas, updatedReplicas, currentRevision (becomes the update revision
  once every pod runs it), updateRevision, observedGeneration.

Pods are listed live from the API (not the cache) at each sync, as the DaemonSet
controller does, so a pod created a moment ago is never created twice; a create
that still races is answered ALREADY_EXISTS and ignored.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import grpc
import structlog
from google.protobuf import json_format

from kubeling.api.objects import clone
from kubeling.api.selectors import SelectorError
from kubeling.client.informer import Informer, WorkQueue, informers_running, key_of, run_workers
from kubeling.controllers import podutil
from kubeling.controllers.daemonset import REVISION_LABEL, template_hash
from kubeling.controllers.manager import ControllerContext, register
from kubeling.v1 import apps_pb2, core_pb2, storage_pb2

log = structlog.get_logger(__name__)

POD_NAME_LABEL = "statefulset.kubernetes.io/pod-name"
POD_INDEX_LABEL = "apps.kubernetes.io/pod-index"
_ORDINAL = re.compile(r"^(.*)-([0-9]+)$")


def pod_name(sts: apps_pb2.StatefulSet, ordinal: int) -> str:
    return f"{sts.metadata.name}-{ordinal}"


def claim_name(
    template: storage_pb2.PersistentVolumeClaim, sts: apps_pb2.StatefulSet, ordinal: int
) -> str:
    return f"{template.metadata.name}-{sts.metadata.name}-{ordinal}"


def ordinal_of(sts: apps_pb2.StatefulSet, pod: core_pb2.Pod) -> int | None:
    """The pod's ordinal when its name is NAME-i of this StatefulSet, else None."""
    match = _ORDINAL.match(pod.metadata.name)
    if match is None or match.group(1) != sts.metadata.name:
        return None
    return int(match.group(2))


def max_unavailable(sts: apps_pb2.StatefulSet) -> int:
    """rollingUpdate.maxUnavailable: a count or a percentage of replicas (rounded
    down, at least 1); 1 when unset, as Kubernetes."""
    value = sts.spec.update_strategy.rolling_update.max_unavailable
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        return max(1, int(value.number_value))
    if kind == "string_value" and value.string_value.endswith("%"):
        try:
            percent = int(value.string_value[:-1])
        except ValueError:
            return 1
        return max(1, sts.spec.replicas * percent // 100)
    return 1


def running_and_ready(pod: core_pb2.Pod) -> bool:
    return pod.status.phase == "Running" and podutil.is_pod_ready(pod)


def _terminating(pod: core_pb2.Pod) -> bool:
    return pod.metadata.HasField("deletion_timestamp")


def _finished(pod: core_pb2.Pod) -> bool:
    return pod.status.phase in ("Failed", "Succeeded")


def revision_name(sts: apps_pb2.StatefulSet, template: core_pb2.PodTemplateSpec) -> str:
    """The ControllerRevision (and pod label) naming a template: NAME-HASH."""
    return f"{sts.metadata.name}-{template_hash(template)}"


def revision_data(template: core_pb2.PodTemplateSpec) -> dict[str, Any]:
    """What a StatefulSet's ControllerRevision holds, as Kubernetes' patch."""
    return {"spec": {"template": json_format.MessageToDict(template)}}


def revision_template(revision: apps_pb2.ControllerRevision) -> core_pb2.PodTemplateSpec:
    data = json_format.MessageToDict(revision.data)
    template = core_pb2.PodTemplateSpec()
    json_format.ParseDict(data.get("spec", {}).get("template", {}), template)
    return template


def new_pod(
    sts: apps_pb2.StatefulSet,
    revision: str,
    ordinal: int,
    template: core_pb2.PodTemplateSpec | None = None,
) -> core_pb2.Pod:
    """Pod `ordinal` of `sts` at `revision` (from `template`, default the current
    spec's): name, DNS fields, labels, claim volumes."""
    pod = podutil.pod_from_template(template or sts.spec.template, sts)
    name = pod_name(sts, ordinal)
    pod.metadata.name = name
    pod.metadata.generate_name = ""
    pod.metadata.labels[POD_NAME_LABEL] = name
    pod.metadata.labels[POD_INDEX_LABEL] = str(ordinal)
    pod.metadata.labels[REVISION_LABEL] = revision
    pod.spec.hostname = name
    pod.spec.subdomain = sts.spec.service_name
    # The claim templates replace template volumes of the same name.
    claims = {t.metadata.name: claim_name(t, sts, ordinal) for t in sts.spec.volume_claim_templates}
    kept = [v for v in pod.spec.volumes if v.name not in claims]
    del pod.spec.volumes[:]
    pod.spec.volumes.extend(kept)
    for volume_name, claim in claims.items():
        volume = pod.spec.volumes.add(name=volume_name)
        volume.persistent_volume_claim.claim_name = claim
    return pod


@register("statefulset")
class StatefulSetController:
    def __init__(self, context: ControllerContext) -> None:
        self.api = context.api
        self.recorder = context.recorder
        self.workers = context.settings.workers
        self.sets: Informer[apps_pb2.StatefulSet] = Informer(self.api.stateful_sets)
        self.pods: Informer[core_pb2.Pod] = Informer(self.api.pods)
        self.revisions: Informer[apps_pb2.ControllerRevision] = Informer(
            self.api.controller_revisions
        )
        self.queue = WorkQueue(name="statefulset")
        self.sets.add_handler(self._on_set)
        self.pods.add_handler(self._on_pod)

    async def run(self) -> None:
        informers: list[Informer[Any]] = [self.sets, self.pods, self.revisions]
        async with informers_running(informers, "statefulset"):
            await run_workers(self.queue, self.sync, self.workers, "statefulset")

    def _on_set(self, kind: str, old: Any, new: Any) -> None:
        self.queue.add(key_of(new if new is not None else old))

    def _on_pod(self, kind: str, old: Any, new: Any) -> None:
        for pod in (old, new):
            if pod is None:
                continue
            ref = podutil.controller_of(pod)
            if ref is not None and ref.kind == "StatefulSet":
                self.queue.add(f"{pod.metadata.namespace}/{ref.name}")

    # ---------------------------------------------------------------------- sync

    async def sync(self, key: str) -> None:
        namespace, _, name = key.partition("/")
        sts = self.sets.get(namespace, name)
        if sts is None or sts.metadata.HasField("deletion_timestamp"):
            return  # the garbage collector removes its pods (and claims it owns)
        try:
            selector = podutil.selector_of(sts.spec.selector)
        except SelectorError as exc:
            self.recorder.record(sts, "Warning", "SelectorError", str(exc))
            return
        listed = await self.api.pods.list(namespace, label_selector=str(selector))
        pods = await podutil.claim_pods(self.api, sts, selector, listed.items)
        revisions = await self._revisions(sts)
        revision = revision_name(sts, sts.spec.template)
        start = sts.spec.ordinals.start
        replicas = sts.spec.replicas
        slots: dict[int, core_pb2.Pod] = {}
        condemned: list[tuple[int, core_pb2.Pod]] = []
        for pod in pods:
            ordinal = ordinal_of(sts, pod)
            if ordinal is None:
                continue  # not one of ours by name: leave it
            if start <= ordinal < start + replicas:
                slots[ordinal] = pod
            else:
                condemned.append((ordinal, pod))
        condemned.sort(key=lambda item: -item[0])
        current = revisions.get(sts.status.current_revision)
        await self._reconcile(sts, revision, current, slots, condemned)
        everyone = [*slots.values(), *(p for _, p in condemned)]
        await self._update_status(sts, revision, everyone)
        await self._truncate_history(sts, revisions, everyone)

    # ----------------------------------------------------------------- revisions

    def _owned_revisions(self, sts: apps_pb2.StatefulSet) -> dict[str, apps_pb2.ControllerRevision]:
        return {
            r.metadata.name: r
            for r in self.revisions.list(sts.metadata.namespace)
            if podutil.is_controlled_by(r, sts)
        }

    async def _revisions(self, sts: apps_pb2.StatefulSet) -> dict[str, apps_pb2.ControllerRevision]:
        """The StatefulSet's revisions by name, the current template's made (or
        renumbered to the newest, when the template went back to it)."""
        owned = self._owned_revisions(sts)
        name = revision_name(sts, sts.spec.template)
        newest = max((r.revision for r in owned.values()), default=0)
        found = owned.get(name)
        if found is None:
            revision = apps_pb2.ControllerRevision(api_version="apps/v1", kind="ControllerRevision")
            revision.metadata.name = name
            revision.metadata.namespace = sts.metadata.namespace
            revision.metadata.labels.update(sts.spec.template.metadata.labels)
            revision.metadata.owner_references.append(podutil.owner_ref(sts))
            json_format.ParseDict(revision_data(sts.spec.template), revision.data)
            revision.revision = newest + 1
            try:
                found = await self.api.controller_revisions.create(revision)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                    raise
                found = await self.api.controller_revisions.get(name, sts.metadata.namespace)
        elif found.revision < newest:
            renumbered = clone(found)
            renumbered.revision = newest + 1
            found = await self.api.controller_revisions.update(renumbered)
        owned[name] = found
        return owned

    async def _truncate_history(
        self,
        sts: apps_pb2.StatefulSet,
        revisions: dict[str, apps_pb2.ControllerRevision],
        pods: list[core_pb2.Pod],
    ) -> None:
        live = {p.metadata.labels.get(REVISION_LABEL, "") for p in pods}
        live |= {sts.status.current_revision, sts.status.update_revision}
        live.add(revision_name(sts, sts.spec.template))
        history = sorted(
            (r for name, r in revisions.items() if name not in live), key=lambda r: r.revision
        )
        limit = (
            sts.spec.revision_history_limit if sts.spec.HasField("revision_history_limit") else 10
        )
        for old in history[: max(0, len(history) - limit)]:
            try:
                await self.api.controller_revisions.delete(
                    old.metadata.name, old.metadata.namespace, uid=old.metadata.uid
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise

    async def _reconcile(
        self,
        sts: apps_pb2.StatefulSet,
        revision: str,
        current: apps_pb2.ControllerRevision | None,
        slots: dict[int, core_pb2.Pod],
        condemned: list[tuple[int, core_pb2.Pod]],
    ) -> None:
        ordered = sts.spec.pod_management_policy != "Parallel"
        start, replicas = sts.spec.ordinals.start, sts.spec.replicas
        jobs: list[Any] = []
        # Replicas first: create the missing, replace the finished, in ordinal order.
        for ordinal in range(start, start + replicas):
            pod = slots.get(ordinal)
            if pod is None:
                jobs.append(self._create(sts, revision, current, ordinal))
                if ordered:
                    return await self._run(jobs)
                continue
            if _finished(pod) and not _terminating(pod):
                jobs.append(podutil.delete_pod(self.api, self.recorder, sts, pod))
                if ordered:
                    return await self._run(jobs)
                continue
            if ordered and (_terminating(pod) or not running_and_ready(pod)):
                # Kubernetes: wait for it to be Running and Ready before going on.
                return await self._run(jobs)
        if jobs:
            return await self._run(jobs)
        # Then scale down, from the highest ordinal.
        for _, pod in condemned:
            if _terminating(pod):
                if ordered:
                    return None
                continue
            jobs.append(self._condemn(sts, pod))
            if ordered:
                return await self._run(jobs)
        if jobs:
            return await self._run(jobs)
        # Then roll out the template, highest ordinal first, down to the partition.
        if sts.spec.update_strategy.type == "OnDelete":
            return None
        # maxUnavailable (default 1) pods may be down at once; those down for any
        # reason count, so with 1 the last replaced pod must be back and Ready.
        unavailable = sum(1 for p in slots.values() if _terminating(p) or not running_and_ready(p))
        budget = max_unavailable(sts) - unavailable
        partition = sts.spec.update_strategy.rolling_update.partition
        for ordinal in sorted(slots, reverse=True):
            if budget <= 0 or ordinal < partition:
                break
            pod = slots[ordinal]
            if pod.metadata.labels.get(REVISION_LABEL) != revision and not _terminating(pod):
                jobs.append(podutil.delete_pod(self.api, self.recorder, sts, pod))
                budget -= 1
        return await self._run(jobs)

    @staticmethod
    async def _run(jobs: list[Any]) -> None:
        results = await asyncio.gather(*jobs, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]  # the work queue retries with back-off

    # --------------------------------------------------------------- pods/claims

    async def _create(
        self,
        sts: apps_pb2.StatefulSet,
        revision: str,
        current: apps_pb2.ControllerRevision | None,
        ordinal: int,
    ) -> None:
        for template in sts.spec.volume_claim_templates:
            await self._ensure_claim(sts, template, ordinal)
        strategy = sts.spec.update_strategy
        below_partition = (
            strategy.type == "RollingUpdate"
            and ordinal < sts.spec.ordinals.start + strategy.rolling_update.partition
        )
        if below_partition and current is not None and current.metadata.name != revision:
            # Kubernetes: a pod the rollout has not reached comes back as it was.
            pod = new_pod(sts, current.metadata.name, ordinal, revision_template(current))
        else:
            pod = new_pod(sts, revision, ordinal)
        try:
            created = await self.api.pods.create(pod)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.ALREADY_EXISTS:
                return  # the cache was behind, or the old one is still going
            self.recorder.record(
                sts, "Warning", "FailedCreate",
                f"create Pod {pod.metadata.name} in StatefulSet {sts.metadata.name} failed "
                f"error: {exc.details()}",
            )  # fmt: skip
            raise
        self.recorder.record(
            sts, "Normal", "SuccessfulCreate",
            f"create Pod {created.metadata.name} in StatefulSet {sts.metadata.name} successful",
        )  # fmt: skip

    async def _ensure_claim(
        self, sts: apps_pb2.StatefulSet, template: storage_pb2.PersistentVolumeClaim, ordinal: int
    ) -> None:
        name = claim_name(template, sts, ordinal)
        namespace = sts.metadata.namespace
        try:
            existing = await self.api.persistent_volume_claims.get(name, namespace)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
        else:
            await self._claim_owners(sts, existing)
            return
        pvc = storage_pb2.PersistentVolumeClaim(api_version="v1", kind="PersistentVolumeClaim")
        pvc.metadata.name = name
        pvc.metadata.namespace = namespace
        pvc.metadata.labels.update(template.metadata.labels)
        pvc.metadata.labels.update(sts.spec.selector.match_labels)
        pvc.metadata.annotations.update(template.metadata.annotations)
        pvc.spec.CopyFrom(template.spec)
        if sts.spec.persistent_volume_claim_retention_policy.when_deleted == "Delete":
            ref = podutil.owner_ref(sts)
            ref.controller = False
            pvc.metadata.owner_references.append(ref)
        try:
            await self.api.persistent_volume_claims.create(pvc)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.ALREADY_EXISTS:
                return
            self.recorder.record(
                sts, "Warning", "FailedCreate",
                f"create Claim {name} for Pod {pod_name(sts, ordinal)} in StatefulSet "
                f"{sts.metadata.name} failed error: {exc.details()}",
            )  # fmt: skip
            raise
        self.recorder.record(
            sts, "Normal", "SuccessfulCreate",
            f"create Claim {name} Pod {pod_name(sts, ordinal)} in StatefulSet "
            f"{sts.metadata.name} success",
        )  # fmt: skip

    async def _claim_owners(
        self, sts: apps_pb2.StatefulSet, pvc: storage_pb2.PersistentVolumeClaim
    ) -> None:
        """An existing claim follows the current whenDeleted policy: owned by the
        StatefulSet for Delete, not for Retain."""
        want = sts.spec.persistent_volume_claim_retention_policy.when_deleted == "Delete"
        uid = sts.metadata.uid
        has = any(r.uid == uid for r in pvc.metadata.owner_references)
        if want == has:
            return
        updated = clone(pvc)
        refs = [r for r in updated.metadata.owner_references if r.uid != uid]
        del updated.metadata.owner_references[:]
        updated.metadata.owner_references.extend(refs)
        if want:
            ref = podutil.owner_ref(sts)
            ref.controller = False
            updated.metadata.owner_references.append(ref)
        await self.api.persistent_volume_claims.update(updated)

    async def _condemn(self, sts: apps_pb2.StatefulSet, pod: core_pb2.Pod) -> None:
        """Scale-down of one pod; with whenScaled: Delete its claims go with it."""
        if sts.spec.persistent_volume_claim_retention_policy.when_scaled == "Delete":
            ordinal = ordinal_of(sts, pod)
            for template in sts.spec.volume_claim_templates:
                if ordinal is None:
                    break
                name = claim_name(template, sts, ordinal)
                try:
                    pvc = await self.api.persistent_volume_claims.get(name, sts.metadata.namespace)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() == grpc.StatusCode.NOT_FOUND:
                        continue
                    raise
                if any(r.uid == pod.metadata.uid for r in pvc.metadata.owner_references):
                    continue
                updated = clone(pvc)
                ref = podutil.owner_ref(pod)
                ref.controller = False
                updated.metadata.owner_references.append(ref)
                await self.api.persistent_volume_claims.update(updated)
        await podutil.delete_pod(self.api, self.recorder, sts, pod)

    # -------------------------------------------------------------------- status

    async def _update_status(
        self, sts: apps_pb2.StatefulSet, revision: str, pods: list[core_pb2.Pod]
    ) -> None:
        status = clone(sts.status)
        current_revision = status.current_revision or revision
        live = [p for p in pods if not _terminating(p)]
        ready = available = current = updated = 0
        wait: float | None = None
        for pod in live:
            pod_revision = pod.metadata.labels.get(REVISION_LABEL, "")
            if pod_revision == current_revision:
                current += 1
            if pod_revision == revision:
                updated += 1
            if running_and_ready(pod):
                ready += 1
                left = podutil.seconds_until_available(pod, sts.spec.min_ready_seconds)
                if left == 0.0:
                    available += 1
                elif left is not None:
                    wait = left if wait is None else min(wait, left)
        status.replicas = len(live)
        status.ready_replicas = ready
        status.available_replicas = available
        status.updated_replicas = updated
        status.update_revision = revision
        # The rollout is complete: every wanted pod runs the update revision.
        if updated == sts.spec.replicas and len(live) == sts.spec.replicas:
            current_revision, current = revision, updated
        status.current_revision = current_revision
        status.current_replicas = current
        status.observed_generation = sts.metadata.generation
        if wait is not None:
            self.queue.add_after(key_of(sts), wait + 0.05)
        if status == sts.status:
            return
        new = clone(sts)
        new.status.CopyFrom(status)
        try:
            await self.api.stateful_sets.update_status(new)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.ABORTED:
                raise
            latest = await self.api.stateful_sets.get(sts.metadata.name, sts.metadata.namespace)
            if latest.metadata.generation != sts.metadata.generation:
                raise  # the spec changed: sync again from scratch
            latest.status.CopyFrom(status)
            await self.api.stateful_sets.update_status(latest)
