"""Record Events about objects (what `kubeling describe` shows at the end).

Like Kubernetes' event recorder: the same reason and message for the same object
within a short window bumps the count of one Event instead of creating another.
Recording never blocks or fails the caller; errors are logged.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

import grpc
import structlog

from kubeling.api.objects import now
from kubeling.client.client import Client
from kubeling.v1 import core_pb2, meta_pb2

log = structlog.get_logger(__name__)

_AGGREGATE_WINDOW = 600.0


class EventRecorder:
    def __init__(self, api: Client, component: str, host: str = "") -> None:
        self._api = api
        self._component = component
        self._host = host
        self._recent: dict[tuple[str, ...], tuple[float, core_pb2.Event]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def record(self, obj: Any, type_: str, reason: str, message: str) -> None:
        """Queue an Event for `obj` (any API object); returns at once."""
        task = asyncio.get_running_loop().create_task(self._write(obj, type_, reason, message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write(self, obj: Any, type_: str, reason: str, message: str) -> None:
        meta = obj.metadata
        namespace = meta.namespace or "default"
        key = (obj.kind, namespace, meta.name, meta.uid, type_, reason, message)
        stamp = now()
        try:
            previous = self._recent.get(key)
            if previous is not None and time.monotonic() - previous[0] < _AGGREGATE_WINDOW:
                event = core_pb2.Event()
                event.CopyFrom(previous[1])
                event.count += 1
                event.last_timestamp.CopyFrom(stamp)
                try:
                    event = await self._api.events.update(event)
                    self._recent[key] = (time.monotonic(), event)
                    return
                except grpc.aio.AioRpcError:
                    pass  # deleted or changed meanwhile: write a new one
            event = core_pb2.Event(
                involved_object=meta_pb2.ObjectReference(
                    kind=obj.kind,
                    namespace=meta.namespace,
                    name=meta.name,
                    uid=meta.uid,
                    api_version=obj.api_version,
                    resource_version=meta.resource_version,
                ),
                reason=reason,
                message=message,
                type=type_,
                count=1,
                source=core_pb2.EventSource(component=self._component, host=self._host),
                reporting_component=self._component,
                reporting_instance=self._host,
            )
            event.metadata.name = f"{meta.name}.{secrets.token_hex(8)}"
            event.metadata.namespace = namespace
            event.first_timestamp.CopyFrom(stamp)
            event.last_timestamp.CopyFrom(stamp)
            event = await self._api.events.create(event)
            self._recent[key] = (time.monotonic(), event)
            if len(self._recent) > 4096:
                oldest = sorted(self._recent.items(), key=lambda item: item[1][0])[:1024]
                for old_key, _ in oldest:
                    self._recent.pop(old_key, None)
        except grpc.aio.AioRpcError as exc:
            log.warning("event not recorded", reason=reason, error=exc.details())
        except Exception:
            log.exception("event not recorded", reason=reason)

    async def flush(self) -> None:
        """Wait for the events queued so far (used at shutdown and in tests)."""
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
