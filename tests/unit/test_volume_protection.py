"""The PVC protection controller in an in-process master: a claim a pod uses gets
the kubernetes.io/pvc-protection finalizer, is only marked when deleted while the
pod lives, and goes once the pod is gone; a claim no pod uses goes at once."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kubeling.client import Client
from kubeling.controllers.volumeprotection import PVC_PROTECTION_FINALIZER
from kubeling.v1 import core_pb2, storage_pb2
from tests.support import waiting
from tests.support.inprocess import in_process_master

NS = "default"
eventually = functools.partial(
    waiting.eventually, within=15.0, interval=0.05, retry_on=waiting.TRANSIENT_ERRORS
)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Client]:
    async with in_process_master(tmp_path, {"pvc-protection"}) as client:
        yield client


def claim(name: str) -> storage_pb2.PersistentVolumeClaim:
    pvc = storage_pb2.PersistentVolumeClaim()
    pvc.metadata.name, pvc.metadata.namespace = name, NS
    pvc.spec.access_modes.append("ReadWriteOnce")
    pvc.spec.resources.requests["storage"] = "1Gi"
    return pvc


def pod(name: str, claim_name: str) -> core_pb2.Pod:
    p = core_pb2.Pod()
    p.metadata.name, p.metadata.namespace = name, NS
    p.spec.containers.add(name="c", image="busybox")
    p.spec.volumes.add(name="data").persistent_volume_claim.claim_name = claim_name
    return p


async def claim_names(api: Client) -> list[str]:
    return sorted(c.metadata.name for c in (await api.persistent_volume_claims.list(NS)).items)


async def test_claim_in_use_waits_for_its_pod(api: Client) -> None:
    await api.persistent_volume_claims.create(claim("data"))
    await api.pods.create(pod("db", "data"))

    async def protected() -> bool:
        got = await api.persistent_volume_claims.get("data", NS)
        return PVC_PROTECTION_FINALIZER in got.metadata.finalizers

    await eventually(protected)
    await api.persistent_volume_claims.delete("data", NS)
    marked = await api.persistent_volume_claims.get("data", NS)
    assert marked.metadata.HasField("deletion_timestamp")
    await asyncio.sleep(0.5)  # the controller had its chance: the pod still runs
    assert await claim_names(api) == ["data"]
    # A finished pod does not hold the claim.
    finished = await api.pods.get("db", NS)
    finished.status.phase = "Succeeded"
    await api.pods.update_status(finished)

    async def gone() -> bool:
        return await claim_names(api) == []

    await eventually(gone)


async def test_unused_claim_goes_at_once(api: Client) -> None:
    await api.persistent_volume_claims.create(claim("spare"))
    await api.pods.create(pod("other", "elsewhere"))
    await api.persistent_volume_claims.delete("spare", NS)
    assert await claim_names(api) == []
