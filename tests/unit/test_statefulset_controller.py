"""The StatefulSet controller against an in-process master (with the garbage
collector). No kubelet runs: the test plays it, marking pods Running and Ready
through UpdateStatus. Pods stay unscheduled, so a deleted one goes at once."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from kubeling.api.objects import clone
from kubeling.client import Client
from kubeling.client.events import EventRecorder
from kubeling.controllers.manager import ControllerContext, ControllerSettings
from kubeling.controllers.statefulset import POD_INDEX_LABEL, POD_NAME_LABEL, StatefulSetController
from kubeling.v1 import apps_pb2, core_pb2
from tests.support import waiting
from tests.support.inprocess import in_process_master

NS = "default"
eventually = functools.partial(
    waiting.eventually, within=20.0, interval=0.05, retry_on=waiting.TRANSIENT_ERRORS
)


@dataclass
class Env:
    api: Client

    async def names(self) -> list[str]:
        pods = (await self.api.pods.list(NS, "app=db")).items
        return sorted(
            p.metadata.name for p in pods if not p.metadata.HasField("deletion_timestamp")
        )

    async def pod(self, name: str) -> core_pb2.Pod:
        return await self.api.pods.get(name, NS)

    async def ready(self, name: str) -> None:
        """Play the kubelet: the pod runs and is Ready."""
        for _ in range(10):
            pod = clone(await self.pod(name))
            pod.status.phase = "Running"
            del pod.status.conditions[:]
            pod.status.conditions.add(type="Ready", status="True")
            try:
                await self.api.pods.update_status(pod)
                return
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.ABORTED:
                    raise
        raise AssertionError("could not mark the pod ready")

    async def sts(self) -> apps_pb2.StatefulSet:
        return await self.api.stateful_sets.get("db", NS)

    async def change(self, **fields: object) -> None:
        for _ in range(10):
            sts = await self.sts()
            for path, value in fields.items():
                target: object = sts.spec
                *parents, last = path.split(".")
                for part in parents:
                    target = getattr(target, part)
                setattr(target, last, value)
            try:
                await self.api.stateful_sets.update(sts)
                return
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.ABORTED:
                    raise
        raise AssertionError("could not update the StatefulSet")

    async def set_image(self, image: str) -> None:
        for _ in range(10):
            sts = await self.sts()
            sts.spec.template.spec.containers[0].image = image
            try:
                await self.api.stateful_sets.update(sts)
                return
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.ABORTED:
                    raise

    async def claims(self) -> list[str]:
        return sorted(
            c.metadata.name for c in (await self.api.persistent_volume_claims.list(NS)).items
        )


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with in_process_master(tmp_path, {"garbagecollector"}, bookmark_interval=1.0) as api:
        recorder = EventRecorder(api, "test-statefulset")
        controller = StatefulSetController(
            ControllerContext(api, recorder, ControllerSettings(workers=2))
        )
        task = asyncio.create_task(controller.run())
        try:
            yield Env(api)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await recorder.flush()


def stateful_set(
    replicas: int = 3, policy: str = "OrderedReady", **spec: object
) -> apps_pb2.StatefulSet:
    sts = apps_pb2.StatefulSet(api_version="apps/v1", kind="StatefulSet")
    sts.metadata.name = "db"
    sts.metadata.namespace = NS
    sts.spec.replicas = replicas
    sts.spec.service_name = "db-headless"
    sts.spec.pod_management_policy = policy
    sts.spec.selector.match_labels["app"] = "db"
    sts.spec.template.metadata.labels["app"] = "db"
    sts.spec.template.spec.containers.add(name="db", image="postgres:15")
    claim = sts.spec.volume_claim_templates.add()
    claim.metadata.name = "data"
    claim.metadata.labels["tier"] = "storage"
    claim.spec.access_modes.append("ReadWriteOnce")
    claim.spec.resources.requests["storage"] = "1Gi"
    for key, value in spec.items():
        setattr(sts.spec, key, value)
    return sts


async def start_all(env: Env, count: int) -> None:
    for i in range(count):
        await eventually(lambda i=i: _exists(env, f"db-{i}"))
        await env.ready(f"db-{i}")


async def _exists(env: Env, name: str) -> bool:
    return name in await env.names()


async def test_ordered_start_names_claims_and_dns_fields(env: Env) -> None:
    await env.api.stateful_sets.create(stateful_set())
    await eventually(lambda: _exists(env, "db-0"))
    await asyncio.sleep(0.4)
    # db-1 waits until db-0 is Running and Ready.
    assert await env.names() == ["db-0"]
    pod = await env.pod("db-0")
    assert pod.spec.hostname == "db-0"
    assert pod.spec.subdomain == "db-headless"
    assert pod.metadata.labels[POD_NAME_LABEL] == "db-0"
    assert pod.metadata.labels[POD_INDEX_LABEL] == "0"
    assert pod.metadata.labels["controller-revision-hash"]
    [volume] = [v for v in pod.spec.volumes if v.name == "data"]
    assert volume.persistent_volume_claim.claim_name == "data-db-0"
    claim = await env.api.persistent_volume_claims.get("data-db-0", NS)
    assert claim.metadata.labels["tier"] == "storage"
    assert claim.metadata.labels["app"] == "db"
    assert claim.spec.storage_class_name == "local-path"  # the default class
    assert not claim.metadata.owner_references  # Retain: nobody owns it
    await env.ready("db-0")
    await eventually(lambda: _exists(env, "db-1"))
    await asyncio.sleep(0.3)
    assert await env.names() == ["db-0", "db-1"]
    await env.ready("db-1")
    await eventually(lambda: _exists(env, "db-2"))
    await env.ready("db-2")

    async def status_done() -> bool:
        sts = await env.sts()
        assert (sts.status.replicas, sts.status.ready_replicas) == (3, 3)
        assert sts.status.available_replicas == 3
        assert sts.status.current_revision == sts.status.update_revision
        assert sts.status.observed_generation == sts.metadata.generation
        return True

    await eventually(status_done)
    assert await env.claims() == ["data-db-0", "data-db-1", "data-db-2"]


async def test_scale_down_from_the_highest_ordinal_keeps_claims(env: Env) -> None:
    await env.api.stateful_sets.create(stateful_set())
    await start_all(env, 3)
    version = (await env.api.pods.list(NS)).resource_version
    deleted: list[str] = []

    async def watch_deletions() -> None:
        async for event in env.api.pods.watch(NS, resource_version=version):
            if event.type == "DELETED":
                deleted.append(event.object.metadata.name)

    watcher = asyncio.create_task(watch_deletions())
    try:
        await env.change(replicas=1)
        await eventually(lambda: _only(env, ["db-0"]))
        await eventually(lambda: len(deleted) == 2)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    assert deleted == ["db-2", "db-1"]
    # Retain: the claims of the removed pods stay for when it scales up again.
    assert await env.claims() == ["data-db-0", "data-db-1", "data-db-2"]


async def _only(env: Env, names: list[str]) -> bool:
    return await env.names() == names


async def test_deleted_pod_comes_back_with_its_name_and_claim(env: Env) -> None:
    await env.api.stateful_sets.create(stateful_set(replicas=2))
    await start_all(env, 2)
    old = await env.pod("db-0")
    await env.api.pods.delete("db-0", NS)

    async def back() -> core_pb2.Pod:
        pod = await env.pod("db-0")
        assert pod.metadata.uid != old.metadata.uid
        return pod

    pod = await eventually(back)
    [volume] = [v for v in pod.spec.volumes if v.name == "data"]
    assert volume.persistent_volume_claim.claim_name == "data-db-0"
    assert await env.claims() == ["data-db-0", "data-db-1"]


async def test_rolling_update_respects_the_partition(env: Env) -> None:
    await env.api.stateful_sets.create(stateful_set())
    await start_all(env, 3)
    before = {n: (await env.pod(n)).metadata.uid for n in ("db-0", "db-1", "db-2")}
    first_revision = (await env.pod("db-0")).metadata.labels["controller-revision-hash"]
    await env.change(**{"update_strategy.rolling_update.partition": 1})
    await env.set_image("postgres:16")

    async def replaced(name: str) -> bool:
        pod = await env.pod(name)
        assert pod.metadata.uid != before[name]
        assert pod.spec.containers[0].image == "postgres:16"
        return True

    await eventually(lambda: replaced("db-2"))
    await asyncio.sleep(0.3)
    # db-1 waits for the new db-2 to be Ready.
    assert (await env.pod("db-1")).metadata.uid == before["db-1"]
    await env.ready("db-2")
    await eventually(lambda: replaced("db-1"))
    await env.ready("db-1")

    async def settled() -> bool:
        sts = await env.sts()
        assert sts.status.updated_replicas == 2
        assert sts.status.current_revision == first_revision
        assert sts.status.update_revision != first_revision
        return True

    await eventually(settled)
    # Below the partition: untouched.
    pod0 = await env.pod("db-0")
    assert pod0.metadata.uid == before["db-0"]
    assert pod0.spec.containers[0].image == "postgres:15"
    # Deleted there, it comes back from the current revision's template.
    await env.api.pods.delete("db-0", NS)

    async def back_as_it_was() -> core_pb2.Pod:
        pod = await env.pod("db-0")
        assert pod.metadata.uid != before["db-0"]
        return pod

    pod0 = await eventually(back_as_it_was)
    assert pod0.spec.containers[0].image == "postgres:15"
    assert pod0.metadata.labels["controller-revision-hash"] == first_revision
    before["db-0"] = pod0.metadata.uid
    await env.ready("db-0")
    # Partition 0 finishes the rollout.
    await env.change(**{"update_strategy.rolling_update.partition": 0})
    await eventually(lambda: replaced("db-0"))
    await env.ready("db-0")

    async def complete() -> bool:
        sts = await env.sts()
        assert sts.status.updated_replicas == 3
        assert sts.status.current_revision == sts.status.update_revision
        return True

    await eventually(complete)


async def test_on_delete_waits_for_the_user(env: Env) -> None:
    sts = stateful_set(replicas=2)
    sts.spec.update_strategy.type = "OnDelete"
    await env.api.stateful_sets.create(sts)
    await start_all(env, 2)
    before = (await env.pod("db-1")).metadata.uid
    await env.set_image("postgres:16")
    await asyncio.sleep(0.5)
    assert (await env.pod("db-1")).metadata.uid == before
    await env.api.pods.delete("db-1", NS)

    async def new_image() -> bool:
        return (await env.pod("db-1")).spec.containers[0].image == "postgres:16"

    await eventually(new_image)


async def test_parallel_creates_all_at_once(env: Env) -> None:
    await env.api.stateful_sets.create(stateful_set(replicas=3, policy="Parallel"))
    await eventually(lambda: _only(env, ["db-0", "db-1", "db-2"]))


async def test_when_scaled_delete_removes_the_claims_of_removed_pods(env: Env) -> None:
    sts = stateful_set(replicas=2, policy="Parallel")
    sts.spec.persistent_volume_claim_retention_policy.when_scaled = "Delete"
    await env.api.stateful_sets.create(sts)
    await eventually(lambda: _only(env, ["db-0", "db-1"]))
    await env.change(replicas=1)
    await eventually(lambda: _only(env, ["db-0"]))

    async def claims_left() -> bool:
        return await env.claims() == ["data-db-0"]

    await eventually(claims_left)


async def test_when_deleted_delete_makes_the_set_own_its_claims(env: Env) -> None:
    sts = stateful_set(replicas=1)
    sts.spec.persistent_volume_claim_retention_policy.when_deleted = "Delete"
    created = await env.api.stateful_sets.create(sts)
    await eventually(lambda: _exists(env, "db-0"))
    claim = await env.api.persistent_volume_claims.get("data-db-0", NS)
    assert [r.uid for r in claim.metadata.owner_references] == [created.metadata.uid]
    await env.api.stateful_sets.delete("db", NS)

    async def nothing_left() -> bool:
        return not await env.claims() and not await env.names()

    await eventually(nothing_left)


async def test_max_unavailable_replaces_that_many_at_once(env: Env) -> None:
    sts = stateful_set(replicas=4)
    sts.spec.update_strategy.rolling_update.max_unavailable.number_value = 2
    await env.api.stateful_sets.create(sts)
    await start_all(env, 4)
    before = {f"db-{i}": (await env.pod(f"db-{i}")).metadata.uid for i in range(4)}
    version = (await env.api.pods.list(NS)).resource_version
    deleted: list[str] = []

    async def watch_deletions() -> None:
        async for event in env.api.pods.watch(NS, resource_version=version):
            if event.type == "DELETED":
                deleted.append(event.object.metadata.name)

    watcher = asyncio.create_task(watch_deletions())
    try:
        await env.set_image("postgres:16")
        # The two highest ordinals go together, before any new pod is Ready.
        await eventually(lambda: sorted(deleted) == ["db-2", "db-3"])
        await asyncio.sleep(0.3)
        assert sorted(deleted) == ["db-2", "db-3"]
        assert (await env.pod("db-1")).metadata.uid == before["db-1"]
        # OrderedReady still recreates them in order; then the next two go.
        for name in ("db-2", "db-3"):
            await eventually(lambda name=name: _exists(env, name))
            await env.ready(name)
        await eventually(lambda: sorted(deleted) == ["db-0", "db-1", "db-2", "db-3"])
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


async def test_revisions_are_kept_as_controller_revisions(env: Env) -> None:
    sts = stateful_set(replicas=1)
    sts.spec.revision_history_limit = 0
    created = await env.api.stateful_sets.create(sts)
    await start_all(env, 1)

    async def revisions() -> list[tuple[str, int]]:
        listed = (await env.api.controller_revisions.list(NS)).items
        return sorted((r.metadata.name, r.revision) for r in listed)

    [(first, number)] = await revisions()
    assert first.startswith("db-") and number == 1
    owner = (await env.api.controller_revisions.get(first, NS)).metadata.owner_references[0]
    assert (owner.kind, owner.uid, owner.controller) == ("StatefulSet", created.metadata.uid, True)
    assert (await env.pod("db-0")).metadata.labels["controller-revision-hash"] == first
    await env.set_image("postgres:16")

    async def rolled() -> bool:
        pod = await env.pod("db-0")
        assert pod.spec.containers[0].image == "postgres:16"
        return True

    await eventually(rolled)
    await env.ready("db-0")

    async def only_the_new_one_left() -> bool:
        names = await revisions()
        assert len(names) == 1 and names[0][0] != first and names[0][1] == 2
        sts = await env.sts()
        assert sts.status.current_revision == sts.status.update_revision == names[0][0]
        return True

    # revisionHistoryLimit 0: the old revision goes once no pod uses it.
    await eventually(only_the_new_one_left)
