"""The ReplicaSet controller: keep `spec.replicas` pods matching the selector.

As kube-controller-manager's: pods are created from the template with a
generated name and a controller ownerReference, matching orphans are adopted,
owned pods that stop matching are released, and extras are deleted least
useful first. Expectations stop a sync from acting again on a cache that has
not yet seen its previous creations and deletions.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from kubeling.api.objects import clone
from kubeling.api.selectors import SelectorError
from kubeling.client.informer import Informer, WorkQueue, informers_running, key_of, run_workers
from kubeling.controllers import podutil
from kubeling.controllers.manager import ControllerContext, register
from kubeling.v1 import apps_pb2, core_pb2

log = structlog.get_logger(__name__)

# At most this many creations or deletions per sync, as Kubernetes' burst limit.
_BURST = 500


@register("replicaset")
class ReplicaSetController:
    def __init__(self, context: ControllerContext) -> None:
        self.api = context.api
        self.recorder = context.recorder
        self.workers = context.settings.workers
        self.replica_sets: Informer[apps_pb2.ReplicaSet] = Informer(self.api.replica_sets)
        self.pods: Informer[core_pb2.Pod] = Informer(self.api.pods)
        self.queue = WorkQueue()
        self.expectations = podutil.Expectations()
        self.replica_sets.add_handler(self._on_replica_set)
        self.pods.add_handler(self._on_pod)

    async def run(self) -> None:
        informers: list[Informer[Any]] = [self.replica_sets, self.pods]
        async with informers_running(informers, "replicaset"):
            await run_workers(self.queue, self.sync, self.workers, "replicaset")

    # ------------------------------------------------------------ event handlers

    def _on_replica_set(self, kind: str, old: Any, new: Any) -> None:
        key = key_of(new if new is not None else old)
        if kind == "DELETED":
            self.expectations.forget(key)
        self.queue.add(key)

    def _owner_key(self, pod: core_pb2.Pod) -> str | None:
        ref = podutil.controller_of(pod)
        if ref is None or ref.kind != "ReplicaSet":
            return None
        return f"{pod.metadata.namespace}/{ref.name}"

    def _on_pod(self, kind: str, old: Any, new: Any) -> None:
        pod: core_pb2.Pod = new if new is not None else old
        key = self._owner_key(pod)
        if key is not None:
            if kind == "ADDED":
                self.expectations.observed_add(key)
            if kind == "DELETED" or pod.metadata.HasField("deletion_timestamp"):
                self.expectations.observed_delete(key, pod.metadata.uid)
            self.queue.add(key)
        if kind == "MODIFIED":
            # A changed owner or labels: the previous owner recounts, and any
            # ReplicaSet that may now adopt the pod looks at it.
            old_key = self._owner_key(old)
            if old_key is not None and old_key != key:
                self.queue.add(old_key)
            if key is None or old.metadata.labels != new.metadata.labels:
                self._enqueue_matching(new)
        elif kind == "ADDED" and key is None:
            self._enqueue_matching(pod)

    def _enqueue_matching(self, pod: core_pb2.Pod) -> None:
        for rs in self.replica_sets.list(pod.metadata.namespace):
            try:
                selector = podutil.selector_of(rs.spec.selector)
            except SelectorError:
                continue
            if not selector.empty and selector.matches(pod.metadata.labels):
                self.queue.add(key_of(rs))

    # ---------------------------------------------------------------------- sync

    async def sync(self, key: str) -> None:
        namespace, _, name = key.partition("/")
        rs = self.replica_sets.get(namespace, name)
        if rs is None:
            self.expectations.forget(key)
            return
        try:
            selector = podutil.selector_of(rs.spec.selector)
        except SelectorError as exc:
            self.recorder.record(rs, "Warning", "InvalidSelector", str(exc))
            return
        pods = await podutil.claim_pods(self.api, rs, selector, self.pods.list(namespace))
        active = [p for p in pods if podutil.is_pod_active(p)]
        if self.expectations.satisfied(key) and not rs.metadata.HasField("deletion_timestamp"):
            await self._manage(key, rs, active)
        await self._update_status(key, rs, active)

    async def _manage(self, key: str, rs: apps_pb2.ReplicaSet, active: list[core_pb2.Pod]) -> None:
        diff = len(active) - rs.spec.replicas
        if diff < 0:
            await self._create(key, rs, min(-diff, _BURST))
        elif diff > 0:
            victims = sorted(active, key=podutil.deletion_order_key)[: min(diff, _BURST)]
            self.expectations.expect(key, delete_uids=[p.metadata.uid for p in victims])
            results = await asyncio.gather(
                *(podutil.delete_pod(self.api, self.recorder, rs, p) for p in victims),
                return_exceptions=True,
            )
            for pod, result in zip(victims, results, strict=True):
                if result is not True:  # gone already or failed: no event will come
                    self.expectations.observed_delete(key, pod.metadata.uid)
            _raise_first(results)

    async def _create(self, key: str, rs: apps_pb2.ReplicaSet, count: int) -> None:
        """Create in doubling batches (1, 2, 4, ...), stopping at the first
        failure, so a broken template costs one error rather than hundreds."""
        self.expectations.expect(key, adds=count)
        remaining, batch = count, 1
        while remaining > 0:
            size = min(batch, remaining)
            results = await asyncio.gather(
                *(self._create_one(rs) for _ in range(size)), return_exceptions=True
            )
            remaining -= size
            failed = [r for r in results if isinstance(r, BaseException)]
            for _ in failed:
                self.expectations.observed_add(key)
            if failed:
                for _ in range(remaining):  # never attempted: never observed
                    self.expectations.observed_add(key)
                _raise_first(results)
            batch *= 2

    async def _create_one(self, rs: apps_pb2.ReplicaSet) -> None:
        pod = podutil.pod_from_template(rs.spec.template, rs, f"{rs.metadata.name}-")
        await podutil.create_pod(self.api, self.recorder, rs, pod)

    async def _update_status(
        self, key: str, rs: apps_pb2.ReplicaSet, active: list[core_pb2.Pod]
    ) -> None:
        template_labels = dict(rs.spec.template.metadata.labels)
        status = apps_pb2.ReplicaSetStatus()
        status.CopyFrom(rs.status)
        status.replicas = len(active)
        status.fully_labeled_replicas = sum(
            1 for p in active if _has_labels(p.metadata.labels, template_labels)
        )
        status.ready_replicas = sum(1 for p in active if podutil.is_pod_ready(p))
        waits = [podutil.seconds_until_available(p, rs.spec.min_ready_seconds) for p in active]
        status.available_replicas = sum(1 for w in waits if w == 0.0)
        status.observed_generation = rs.metadata.generation
        pending = [w for w in waits if w is not None and w > 0.0]
        if pending:
            # Ready but not yet for minReadySeconds: look again when it will be.
            self.queue.add_after(key, min(pending) + 0.05)
        if status == rs.status:
            return
        updated = clone(rs)
        updated.status.CopyFrom(status)
        await self.api.replica_sets.update_status(updated)


def _has_labels(labels: Any, wanted: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in wanted.items())


def _raise_first(results: list[Any]) -> None:
    for result in results:
        if isinstance(result, BaseException):
            raise result
