"""ReplicaSet and Deployment controllers against an in-process master.

There are no kubelets: a small fake kubelet task marks every pod Running and
Ready, which is all the controllers look at (pods stay unscheduled, so deleting
one removes it at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from kubeling.api.objects import clone, now
from kubeling.client import Client
from kubeling.v1 import apps_pb2, core_pb2
from tests.support import waiting
from tests.support.inprocess import in_process_master

KUBELING = Path(sys.executable).parent / "kubeling"
NS = "default"

eventually = functools.partial(waiting.eventually, within=20.0, interval=0.1)


class Cluster:
    def __init__(self, api: Client, address: str) -> None:
        self.api = api
        self.address = address
        self.ready = True  # the fake kubelet marks new pods ready while True

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(KUBELING), "--server", self.address, *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    async def acli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(self.cli, *args)

    async def pods(self, selector: str = "") -> list[core_pb2.Pod]:
        items = (await self.api.pods.list(NS, selector)).items
        return [p for p in items if not p.metadata.HasField("deletion_timestamp")]


async def _fake_kubelet(cluster: Cluster) -> None:
    """Mark pods Running and Ready (as a kubelet would once containers start)."""
    api = cluster.api
    while True:
        try:
            async for event in api.pods.watch(NS):
                pod = event.object
                if event.type not in ("ADDED", "MODIFIED") or not cluster.ready:
                    continue
                if pod.status.phase == "Running":
                    continue
                update = clone(pod)
                update.status.phase = "Running"
                update.status.conditions.add(
                    type="Ready", status="True", last_transition_time=now()
                )
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await api.pods.update_status(update)
        except grpc.aio.AioRpcError:
            await asyncio.sleep(0.1)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    controllers = {"replicaset", "deployment"}
    async with in_process_master(tmp_path, controllers, bookmark_interval=1.0) as api:
        state = Cluster(api, api.target)
        kubelet = asyncio.create_task(_fake_kubelet(state))
        try:
            yield state
        finally:
            kubelet.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await kubelet


def template(labels: dict[str, str], image: str = "nginx:1.25") -> core_pb2.PodTemplateSpec:
    spec = core_pb2.PodTemplateSpec()
    spec.metadata.labels.update(labels)
    spec.spec.containers.add(name="app", image=image)
    return spec


def replica_set(name: str, replicas: int) -> apps_pb2.ReplicaSet:
    rs = apps_pb2.ReplicaSet(api_version="apps/v1", kind="ReplicaSet")
    rs.metadata.name = name
    rs.metadata.namespace = NS
    rs.spec.replicas = replicas
    rs.spec.selector.match_labels["app"] = name
    rs.spec.template.CopyFrom(template({"app": name}))
    return rs


def deployment(
    name: str, replicas: int, image: str = "nginx:1.25", strategy: str = "RollingUpdate"
) -> apps_pb2.Deployment:
    d = apps_pb2.Deployment(api_version="apps/v1", kind="Deployment")
    d.metadata.name = name
    d.metadata.namespace = NS
    d.spec.replicas = replicas
    d.spec.selector.match_labels["app"] = name
    d.spec.template.CopyFrom(template({"app": name}, image))
    d.spec.strategy.type = strategy
    return d


async def set_image(api: Client, name: str, image: str) -> None:
    for _ in range(10):
        d = await api.deployments.get(name, NS)
        d.spec.template.spec.containers[0].image = image
        try:
            await api.deployments.update(d)
            return
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.ABORTED:
                raise
    raise AssertionError("could not update the deployment")


def is_ready(pod: core_pb2.Pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions)


async def rolled_out(api: Client, name: str) -> bool:
    d = await api.deployments.get(name, NS)
    s = d.status
    return (
        s.observed_generation >= d.metadata.generation
        and s.updated_replicas == s.replicas == s.available_replicas == d.spec.replicas
    )


# ----------------------------------------------------------------- ReplicaSet


async def test_replicaset_keeps_replicas(cluster: Cluster) -> None:
    api = cluster.api
    await api.replica_sets.create(replica_set("web", 3))
    pods = await eventually(lambda: _count(cluster, "app=web", 3))
    for pod in pods:
        assert pod.metadata.name.startswith("web-")
        ref = pod.metadata.owner_references[0]
        assert (ref.kind, ref.name, ref.controller, ref.block_owner_deletion) == (
            "ReplicaSet", "web", True, True,
        )  # fmt: skip

    # A deleted pod is replaced.
    await api.pods.delete(pods[0].metadata.name, NS)
    replaced = await eventually(lambda: _count(cluster, "app=web", 3))
    assert pods[0].metadata.name not in {p.metadata.name for p in replaced}

    # Status catches up, including readiness from the fake kubelet.
    async def status_ok() -> bool:
        rs = await api.replica_sets.get("web", NS)
        s = rs.status
        return (s.replicas, s.ready_replicas, s.available_replicas, s.fully_labeled_replicas) == (
            3, 3, 3, 3,
        ) and s.observed_generation == rs.metadata.generation  # fmt: skip

    await eventually(status_ok)

    # Scaling down deletes the extras, and no more.
    result = await cluster.acli("scale", "replicaset", "web", "--replicas", "1")
    assert result.returncode == 0, result.stderr
    assert "replicaset.apps/web scaled" in result.stdout
    await eventually(lambda: _count(cluster, "app=web", 1))

    # The barrier: the controller has observed the new generation and counted one
    # replica, so any extra deletion would already have been issued.
    async def settled() -> bool:
        rs = await api.replica_sets.get("web", NS)
        return rs.status.observed_generation == rs.metadata.generation and (rs.status.replicas == 1)

    await eventually(settled)
    assert len(await cluster.pods("app=web")) == 1
    events = (await api.events.list(NS)).items
    reasons = {e.reason for e in events if e.involved_object.name == "web"}
    assert {"SuccessfulCreate", "SuccessfulDelete"} <= reasons


async def test_replicaset_adopts_orphan_and_releases(cluster: Cluster) -> None:
    api = cluster.api
    orphan = core_pb2.Pod(api_version="v1", kind="Pod")
    orphan.metadata.name = "orphan"
    orphan.metadata.namespace = NS
    orphan.metadata.labels["app"] = "cache"
    orphan.spec.containers.add(name="app", image="redis")
    await api.pods.create(orphan)
    await api.replica_sets.create(replica_set("cache", 2))

    async def adopted() -> bool:
        pod = await api.pods.get("orphan", NS)
        refs = [r for r in pod.metadata.owner_references if r.controller]
        return bool(refs) and refs[0].name == "cache"

    await eventually(adopted)
    pods = await eventually(lambda: _count(cluster, "app=cache", 2))
    assert "orphan" in {p.metadata.name for p in pods}  # one created, not two

    # Relabelled: released (no owner) and replaced.
    pod = await api.pods.get("orphan", NS)
    pod.metadata.labels["app"] = "other"
    await api.pods.update(pod)

    async def released() -> bool:
        pod = await api.pods.get("orphan", NS)
        return not pod.metadata.owner_references

    await eventually(released)
    await eventually(lambda: _count(cluster, "app=cache", 2))


async def _count(cluster: Cluster, selector: str, n: int) -> list[core_pb2.Pod] | None:
    pods = await cluster.pods(selector)
    return pods if len(pods) == n else None


# ----------------------------------------------------------------- Deployment


async def test_deployment_rolling_update_history_undo(cluster: Cluster) -> None:
    api = cluster.api
    d = deployment("web", 4)
    d.metadata.annotations["kubernetes.io/change-cause"] = "first"
    await api.deployments.create(d)
    await eventually(lambda: rolled_out(api, "web"))
    rs_list = (await api.replica_sets.list(NS)).items
    assert len(rs_list) == 1
    first = rs_list[0]
    hash_ = first.metadata.labels["pod-template-hash"]
    assert first.metadata.name == f"web-{hash_}"
    assert first.spec.selector.match_labels["pod-template-hash"] == hash_
    assert first.metadata.annotations["deployment.kubernetes.io/revision"] == "1"
    for pod in await cluster.pods("app=web"):
        assert pod.metadata.labels["pod-template-hash"] == hash_

    # Roll out a new image while sampling readiness: 25% of 4 rounds down to 1
    # unavailable, so at least 3 ready pods at all times.
    min_ready = 4
    sampling = True

    async def sample() -> None:
        nonlocal min_ready
        while sampling:
            pods = await cluster.pods("app=web")
            min_ready = min(min_ready, sum(1 for p in pods if is_ready(p)))
            await asyncio.sleep(0.02)

    sampler = asyncio.create_task(sample())
    await set_image(api, "web", "nginx:1.26")
    status = await cluster.acli("rollout", "status", "deployment/web", "--timeout", "30s")
    sampling = False
    await sampler
    assert status.returncode == 0, status.stderr
    assert 'deployment "web" successfully rolled out' in status.stdout
    assert min_ready >= 3
    pods = await cluster.pods("app=web")
    assert len(pods) == 4
    assert {p.spec.containers[0].image for p in pods} == {"nginx:1.26"}

    d = await api.deployments.get("web", NS)
    conditions = {c.type: (c.status, c.reason) for c in d.status.conditions}
    assert conditions["Available"] == ("True", "MinimumReplicasAvailable")
    assert conditions["Progressing"] == ("True", "NewReplicaSetAvailable")
    assert d.status.unavailable_replicas == 0

    history = await cluster.acli("rollout", "history", "deployment/web")
    assert history.returncode == 0, history.stderr
    lines = history.stdout.splitlines()
    assert lines[1].split() == ["REVISION", "CHANGE-CAUSE"]
    assert [line.split()[0] for line in lines[2:]] == ["1", "2"]
    assert lines[2].split()[1] == "first"

    undo = await cluster.acli("rollout", "undo", "deployment/web")
    assert undo.returncode == 0, undo.stderr
    assert "deployment.apps/web rolled back" in undo.stdout
    d = await api.deployments.get("web", NS)
    assert d.spec.template.spec.containers[0].image == "nginx:1.25"
    assert "pod-template-hash" not in d.spec.template.metadata.labels
    await eventually(lambda: rolled_out(api, "web"))

    async def back_on_first() -> bool:
        rs = await api.replica_sets.get(first.metadata.name, NS)
        pods = await cluster.pods("app=web")
        return (
            rs.spec.replicas == 4
            and rs.metadata.annotations["deployment.kubernetes.io/revision"] == "3"
            and {p.spec.containers[0].image for p in pods} == {"nginx:1.25"}
            and len(pods) == 4
        )

    await eventually(back_on_first)
    assert len((await api.replica_sets.list(NS)).items) == 2  # the template's RS is reused

    undo = await cluster.acli("rollout", "undo", "deployment/web", "--to-revision", "9")
    assert undo.returncode != 0
    assert "unable to find specified revision 9" in undo.stderr


async def test_deployment_scale(cluster: Cluster) -> None:
    api = cluster.api
    await api.deployments.create(deployment("api", 2))
    await eventually(lambda: rolled_out(api, "api"))
    result = await cluster.acli("scale", "deployment", "api", "--replicas", "5")
    assert result.returncode == 0, result.stderr
    assert "deployment.apps/api scaled" in result.stdout
    await eventually(lambda: _count(cluster, "app=api", 5))
    await eventually(lambda: rolled_out(api, "api"))
    result = await cluster.acli("scale", "deploy/api", "--replicas", "1")
    assert result.returncode == 0, result.stderr
    await eventually(lambda: _count(cluster, "app=api", 1))
    rs_list = (await api.replica_sets.list(NS)).items
    assert [rs.spec.replicas for rs in rs_list] == [1]


async def test_deployment_recreate(cluster: Cluster) -> None:
    api = cluster.api
    await api.deployments.create(deployment("db", 3, strategy="Recreate"))
    await eventually(lambda: rolled_out(api, "db"))
    old_names = {p.metadata.name for p in await cluster.pods("app=db")}

    mixed = False
    watching = True

    async def watch_images() -> None:
        # Recreate never runs old and new pods side by side.
        nonlocal mixed
        while watching:
            images = {p.spec.containers[0].image for p in await cluster.pods("app=db")}
            mixed |= len(images) > 1
            await asyncio.sleep(0.02)

    watcher = asyncio.create_task(watch_images())
    await set_image(api, "db", "postgres:16")
    await eventually(lambda: rolled_out(api, "db"))
    pods = await eventually(lambda: _count(cluster, "app=db", 3))
    watching = False
    await watcher
    assert not mixed
    assert {p.spec.containers[0].image for p in pods} == {"postgres:16"}
    assert not old_names & {p.metadata.name for p in pods}


async def test_revision_history_limit(cluster: Cluster) -> None:
    api = cluster.api
    d = deployment("hist", 1)
    d.spec.revision_history_limit = 1
    await api.deployments.create(d)
    for image in ("a:1", "a:2", "a:3"):
        await eventually(lambda: rolled_out(api, "hist"))
        await set_image(api, "hist", image)
    await eventually(lambda: rolled_out(api, "hist"))

    async def trimmed() -> list[str] | None:
        items = (await api.replica_sets.list(NS)).items
        revisions = sorted(rs.metadata.annotations["deployment.kubernetes.io/revision"]
                           for rs in items)  # fmt: skip
        return revisions if revisions == ["3", "4"] else None

    await eventually(trimmed)


async def test_deployment_delete(cluster: Cluster) -> None:
    api = cluster.api
    await api.deployments.create(deployment("gone", 1))
    await eventually(lambda: rolled_out(api, "gone"))
    result = await cluster.acli("delete", "deployment", "gone")
    assert result.returncode == 0, result.stderr

    async def deleted() -> bool:
        try:
            await api.deployments.get("gone", NS)
        except grpc.aio.AioRpcError as exc:
            return bool(exc.code() == grpc.StatusCode.NOT_FOUND)
        return False

    await eventually(deleted)
    # Cascading to the RS is the garbage collector's job (not running here); the
    # controllers must just not fail on the missing owner.
    rs_list = (await api.replica_sets.list(NS)).items
    assert len(rs_list) == 1
