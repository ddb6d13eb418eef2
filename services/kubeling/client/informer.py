"""Informers and work queues: the building blocks of controllers.

An `Informer` keeps a local copy of one kind (list-then-watch, re-listing when the
watch is too old or breaks) and tells handlers about every change. A `WorkQueue`
hands keys to workers with de-duplication (a key queued many times is synced once)
and per-key exponential back-off for retries, as client-go's workqueue does.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, Generic, TypeVar

import grpc
import structlog
from google.protobuf.message import Message

from kubeling.api.wellknown import INITIAL_EVENTS_END
from kubeling.client.client import ResourceClient

log = structlog.get_logger(__name__)

T = TypeVar("T", bound=Message)
Handler = Callable[[str, Any, Any], None]  # (event type, old or None, new or None)


def key_of(obj: Any) -> str:
    meta = obj.metadata
    return f"{meta.namespace}/{meta.name}" if meta.namespace else meta.name


class Informer(Generic[T]):
    def __init__(
        self,
        resource: ResourceClient[T],
        namespace: str = "",
        label_selector: str = "",
        field_selector: str = "",
    ) -> None:
        self.resource = resource
        self.namespace = namespace
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.store: dict[str, T] = {}
        self.synced = asyncio.Event()
        self._handlers: list[Handler] = []
        self.resource_version = ""

    def add_handler(self, handler: Handler) -> None:
        self._handlers.append(handler)

    def get(self, namespace: str, name: str) -> T | None:
        return self.store.get(f"{namespace}/{name}" if namespace else name)

    def list(self, namespace: str = "") -> list[T]:
        if not namespace:
            return list(self.store.values())
        prefix = f"{namespace}/"
        return [obj for key, obj in self.store.items() if key.startswith(prefix)]

    def _emit(self, kind: str, old: T | None, new: T | None) -> None:
        for handler in self._handlers:
            try:
                handler(kind, old, new)
            except Exception:
                log.exception("informer handler failed", kind=kind)

    async def run(self) -> None:
        delay = 0.1
        while True:
            seen: set[str] | None = set() if not self.resource_version else None
            try:
                async for event in self.resource.watch(
                    self.namespace,
                    self.label_selector,
                    self.field_selector,
                    self.resource_version,
                ):
                    delay = 0.1
                    obj = event.object
                    self.resource_version = event.resource_version
                    if event.type == "BOOKMARK":
                        annotations = obj.metadata.annotations  # type: ignore[attr-defined]
                        if seen is not None and annotations.get(INITIAL_EVENTS_END):
                            # After a re-list: drop what disappeared meanwhile.
                            for key in set(self.store) - seen:
                                self._emit("DELETED", self.store.pop(key), None)
                            seen = None
                            self.synced.set()
                        continue
                    key = key_of(obj)
                    old = self.store.get(key)
                    if event.type == "DELETED":
                        self.store.pop(key, None)
                        self._emit("DELETED", old, obj)
                        continue
                    if seen is not None:
                        seen.add(key)
                    self.store[key] = obj
                    self._emit("ADDED" if old is None else "MODIFIED", old, obj)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.OUT_OF_RANGE:
                    self.resource_version = ""
                    continue
                if exc.code() == grpc.StatusCode.CANCELLED:
                    raise
                log.info(
                    "watch ended; re-watching",
                    kind=self.resource.kind.name,
                    error=exc.details(),
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)


class WorkQueue:
    def __init__(self, base_delay: float = 0.05, max_delay: float = 30.0) -> None:
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        self._processing: set[str] = set()
        self._dirty: set[str] = set()  # added again while being processed
        self._failures: dict[str, int] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._base = base_delay
        self._max = max_delay

    def add(self, key: str) -> None:
        if key in self._processing:
            self._dirty.add(key)
            return
        if key in self._queued:
            return
        self._queued.add(key)
        self._queue.put_nowait(key)

    def add_after(self, key: str, delay: float) -> None:
        if delay <= 0:
            self.add(key)
            return
        timer = self._timers.get(key)
        loop = asyncio.get_running_loop()
        when = loop.time() + delay
        if timer is not None and timer.when() <= when:
            return  # an earlier wake-up is already planned
        if timer is not None:
            timer.cancel()
        self._timers[key] = loop.call_at(when, self._fire, key)

    def _fire(self, key: str) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def retry(self, key: str) -> None:
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        self.add_after(key, min(self._max, self._base * 2**failures))

    def forget(self, key: str) -> None:
        self._failures.pop(key, None)

    async def get(self) -> str:
        key = await self._queue.get()
        self._queued.discard(key)
        self._processing.add(key)
        return key

    def done(self, key: str) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self._dirty.discard(key)
            self.add(key)

    def __len__(self) -> int:
        return self._queue.qsize()


async def run_workers(
    queue: WorkQueue, sync: Callable[[str], Awaitable[None]], workers: int, name: str
) -> None:
    """Run `workers` loops taking keys from the queue; a failing sync is retried
    with back-off, a successful one resets the key's back-off."""

    async def worker() -> None:
        while True:
            key = await queue.get()
            try:
                await sync(key)
                queue.forget(key)
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                log.info("sync failed; retrying", controller=name, key=key, error=exc.details())
                queue.retry(key)
            except Exception:
                log.exception("sync failed; retrying", controller=name, key=key)
                queue.retry(key)
            finally:
                queue.done(key)

    tasks = [asyncio.create_task(worker(), name=f"{name}-worker-{i}") for i in range(workers)]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


@contextlib.asynccontextmanager
async def informers_running(informers: Iterable[Informer[Any]], name: str) -> AsyncIterator[None]:
    """Run the informers in the background; the block starts once every cache is
    filled (a controller must not judge from a half-filled cache) and the informers
    stop when it ends."""
    started = list(informers)
    tasks = [asyncio.create_task(i.run(), name=f"{name}-informer") for i in started]
    try:
        await asyncio.gather(*(i.synced.wait() for i in started))
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
