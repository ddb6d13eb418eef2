"""Deletes what is in a Terminating namespace, then lets the namespace go.

Runs inside the master next to the API: it deletes every namespaced object of a
Terminating namespace through the registries (so pods still get their graceful
deletion), and once nothing is left it clears spec.finalizers, which removes the
namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import cast

import structlog

from kubeling.api.errors import ApiError
from kubeling.api.kinds import NAMESPACE
from kubeling.api.objects import clone
from kubeling.master.registry import Registry
from kubeling.master.store.base import WatchClosedError
from kubeling.v1 import core_pb2

log = structlog.get_logger(__name__)


class NamespaceController:
    def __init__(self, registries: dict[str, Registry], interval: float = 1.0) -> None:
        self._namespaces = registries[NAMESPACE.name]
        self._content = [r for r in registries.values() if r.kind.namespaced]
        self._interval = interval

    async def run(self) -> None:
        """Sync on every namespace change and every `interval`. Anything but a
        closed watch escapes to the master's supervisor, which logs, counts and
        restarts this loop with back-off."""
        store = self._namespaces.store
        while True:
            _, _, watch = store.list_and_watch(NAMESPACE.prefix())
            try:
                while True:
                    await self.sync_all()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(watch.next_batch(), self._interval)
            except WatchClosedError:
                continue  # too slow a reader: watch again
            finally:
                watch.close()

    async def sync_all(self) -> None:
        items, _, _ = self._namespaces.list_objects("")
        for obj in items:
            namespace = cast(core_pb2.Namespace, obj)
            if namespace.metadata.HasField("deletion_timestamp"):
                await self.finalize(namespace)

    async def finalize(self, namespace: core_pb2.Namespace) -> None:
        name = namespace.metadata.name
        remaining = 0
        for registry in self._content:
            items, _, _ = registry.list_objects(name)
            remaining += len(items)
            for obj in items:
                meta = obj.metadata  # type: ignore[attr-defined]
                if meta.HasField("deletion_timestamp"):
                    continue
                with contextlib.suppress(ApiError):
                    await registry.delete(name, meta.name)
        if remaining:
            return
        done = clone(namespace)
        del done.spec.finalizers[:]
        try:
            await self._namespaces.update(done)
            log.info("namespace deleted", namespace=name)
        except ApiError as exc:
            log.info("namespace not finalized yet", namespace=name, reason=str(exc))
