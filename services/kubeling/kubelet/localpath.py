"""Removing local-path volumes' directories: the kubelet's half of the local-path
provisioner (controllers/volumebinding.py has the design).

The master cannot touch a node's disk, so a provisioned local-path PV carries
the `kubeling.io/local-path-cleanup` finalizer. This loop watches the PVs whose
nodeAffinity names this node (field selector `spec.nodeName=NODE`, which is also
all the node authorizer lets a node list), and for each PV being deleted that
still holds the finalizer:

- waits while a pod of this node still has the directory mounted (a claim
  deleted under a running pod: the data goes once the pod is gone);
- removes the directory when it lies directly inside this kubelet's local-path
  directory (`ROOT/storage`), never anything else: a PV's path is data from the
  API, and a kubelet must not delete arbitrary host paths because of it; a path
  elsewhere is left on disk with a warning event;
- then removes the finalizer (an update the node authorizer allows only for
  PVs of this node, only dropping that finalizer), and the PV disappears.

A failed removal or update is retried after a delay; a kubelet that was down
finds the PVs still marked when its watch lists them again.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from pathlib import Path
from typing import Any

import grpc
import structlog

from kubeling.api import storage as st
from kubeling.api.objects import clone
from kubeling.client import Client
from kubeling.client.events import EventRecorder
from kubeling.client.informer import Informer
from kubeling.kubelet.volumes import VolumeManager
from kubeling.v1 import storage_pb2

log = structlog.get_logger(__name__)

RETRY = 5.0


class LocalPathCleaner:
    def __init__(
        self, api: Client, node_name: str, volumes: VolumeManager, recorder: EventRecorder
    ) -> None:
        self.api = api
        self.node_name = node_name
        self.volumes = volumes
        self.recorder = recorder
        self.informer: Informer[storage_pb2.PersistentVolume] = Informer(
            api.persistent_volumes, field_selector=f"spec.nodeName={node_name}"
        )
        self.informer.add_handler(self._on_volume)
        self.pending: asyncio.Queue[str] = asyncio.Queue()

    def _on_volume(self, kind: str, old: Any, new: Any) -> None:
        if kind != "DELETED" and self._due(new):
            self.pending.put_nowait(new.metadata.name)

    @staticmethod
    def _due(pv: storage_pb2.PersistentVolume) -> bool:
        return pv.metadata.HasField("deletion_timestamp") and (
            st.LOCAL_PATH_CLEANUP_FINALIZER in pv.metadata.finalizers
        )

    async def run(self) -> None:
        watch = asyncio.create_task(self.informer.run(), name="kubelet-local-path-watch")
        try:
            while True:
                name = await self.pending.get()
                pv = self.informer.get("", name)
                if pv is None or not self._due(pv):
                    continue
                try:
                    done = await self.clean(pv)
                except (OSError, grpc.aio.AioRpcError) as exc:
                    log.warning("local volume cleanup failed; retrying", volume=name,
                                error=str(exc))  # fmt: skip
                    done = False
                if not done:
                    asyncio.get_running_loop().call_later(RETRY, self.pending.put_nowait, name)
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watch

    async def clean(self, pv: storage_pb2.PersistentVolume) -> bool:
        """Remove the PV's directory and its finalizer; False: try again later."""
        path = Path(pv.spec.local.path or pv.spec.host_path.path)
        if self.volumes.in_use(path):
            log.info("local volume still mounted; cleanup waits", volume=pv.metadata.name)
            return False
        if self.volumes.owns_local_path(path):
            await asyncio.to_thread(shutil.rmtree, path, True)
            if await asyncio.to_thread(path.exists):
                return False
            log.info("local volume removed", volume=pv.metadata.name, path=str(path))
        else:
            self.recorder.record(
                pv, "Warning", "VolumeCleanupSkipped",
                f"{path} is not inside this node's local-path directory "
                f"{self.volumes.local_path_dir}: left on disk",
            )  # fmt: skip
        return await self._drop_finalizer(pv)

    async def _drop_finalizer(self, pv: storage_pb2.PersistentVolume) -> bool:
        for _ in range(3):
            updated = clone(pv)
            kept = [f for f in updated.metadata.finalizers if f != st.LOCAL_PATH_CLEANUP_FINALIZER]
            del updated.metadata.finalizers[:]
            updated.metadata.finalizers.extend(kept)
            try:
                await self.api.persistent_volumes.update(updated)
                return True
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    return True
                if exc.code() != grpc.StatusCode.ABORTED:
                    raise
            pv = await self.api.persistent_volumes.get(pv.metadata.name)
        return False
