"""Storage under mutual TLS with the node authorizer: a hollow kubelet holding a
node certificate (system:node:NAME) mounts a local-path claim of its pod, and
removes the volume's directory and the PV's cleanup finalizer after the claim is
deleted, with nothing but what the node authorizer grants it; another node's
certificate may not read that claim or volume, nor drop the finalizer."""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path

import pytest

from kubeling.api.objects import clone
from kubeling.v1 import core_pb2, storage_pb2
from tests.integration.test_tls_master import node_client, refused
from tests.support import hollow, waiting
from tests.support.hollow import hollow_node
from tests.support.inprocess import tls_master

NODE = "node-tls"
CIDR = "10.244.30.0/24"
eventually = functools.partial(
    waiting.eventually, within=30.0, interval=0.1, retry_on=waiting.TRANSIENT_ERRORS
)


def claim() -> storage_pb2.PersistentVolumeClaim:
    pvc = storage_pb2.PersistentVolumeClaim()
    pvc.metadata.name, pvc.metadata.namespace = "data", "default"
    pvc.spec.access_modes.append("ReadWriteOnce")
    pvc.spec.resources.requests["storage"] = "1Gi"
    return pvc


def pod() -> core_pb2.Pod:
    p = core_pb2.Pod()
    p.metadata.name, p.metadata.namespace = "db", "default"
    p.spec.termination_grace_period_seconds = 1
    container = p.spec.containers.add(name="db", image="busybox")
    container.volume_mounts.add(name="data", mount_path="/var/lib/db")
    p.spec.volumes.add(name="data").persistent_volume_claim.claim_name = "data"
    return p


@pytest.mark.asyncio
async def test_a_node_mounts_and_cleans_up_its_local_volume_under_tls(tmp_path: Path) -> None:
    controllers = {"scheduler", "persistentvolume-binder", "pvc-protection"}
    async with tls_master(tmp_path / "master", controllers=controllers) as (master, admin):
        node_api = node_client(master, NODE)
        other = node_client(master, "node-other")
        # The master's IPAM owns podCIDRs under TLS: the kubelet asks for none.
        config = hollow.kubelet_config(
            admin.target, tmp_path / "node", NODE, "", root_dir=tmp_path / "node" / "root"
        )
        try:
            async with hollow_node(config, node_api, CIDR):
                await admin.persistent_volume_claims.create(claim())
                await admin.pods.create(pod())

                async def running() -> bool:
                    return (await admin.pods.get("db", "default")).status.phase == "Running"

                await eventually(running)
                bound = await admin.persistent_volume_claims.get("data", "default")
                pv = await admin.persistent_volumes.get(bound.spec.volume_name)
                directory = Path(pv.spec.local.path)
                assert await asyncio.to_thread(directory.is_dir)
                # Another node: not its pod's claim, not its volume.
                await refused(other.persistent_volume_claims.get("data", "default"))
                await refused(other.persistent_volumes.get(pv.metadata.name))
                done = clone(pv)
                del done.metadata.finalizers[:]
                await refused(other.persistent_volumes.update(done))
                listing = other.persistent_volumes.list(field_selector=f"spec.nodeName={NODE}")
                await refused(listing)
                # Its own node may read both.
                assert (await node_api.persistent_volume_claims.get("data", "default")).spec
                assert (await node_api.persistent_volumes.get(pv.metadata.name)).spec

                await admin.pods.delete("db", "default")
                await admin.persistent_volume_claims.delete("data", "default")

                async def cleaned() -> bool:
                    names = [v.metadata.name for v in (await admin.persistent_volumes.list()).items]
                    assert pv.metadata.name not in names
                    return not await asyncio.to_thread(directory.exists)

                await eventually(cleaned)
        finally:
            await node_api.close()
            await other.close()
