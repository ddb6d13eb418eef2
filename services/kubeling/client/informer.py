"""Informers and work queues: the building blocks of controllers.

An `Informer` keeps a local copy of one kind (list-then-watch, re-listing when the
watch is too old or breaks) and tells handlers about every change. A `WorkQueue`
hands keys to workers with de-duplication (a key queued many times is synced once)
and per-key exponential back-off for retries, as client-go's workqueue does.

Both survive errors: an informer's watch loop that fails re-lists and watches again
after a back-off, and a sync that raises is retried later for its key. Inside
`supervised_informers(supervisor)` (the controller manager sets it), the informers
that `informers_running` starts run as supervised loops (common/supervisor.py), so
a crash that escapes them anyway is logged, counted and restarted.

Work queues report client-go's metrics (`workqueue_depth`, `workqueue_adds_total`,
`workqueue_queue_duration_seconds`, `workqueue_work_duration_seconds`,
`workqueue_retries_total`, labelled by the queue's name).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextvars import ContextVar
from typing import Any, Generic, TypeVar

import grpc
import structlog
from google.protobuf.message import Message
from prometheus_client import Counter, Gauge, Histogram

from kubeling.api.wellknown import INITIAL_EVENTS_END
from kubeling.client.client import ResourceClient
from kubeling.common.supervisor import Supervisor

log = structlog.get_logger(__name__)

T = TypeVar("T", bound=Message)
Handler = Callable[[str, Any, Any], None]  # (event type, old or None, new or None)

# client-go's workqueue metrics, under the same names.
_DURATION_BUCKETS = (1e-4, 1e-3, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60)
WORKQUEUE_DEPTH = Gauge("workqueue_depth", "Current depth of the workqueue", ["name"])
WORKQUEUE_ADDS = Counter("workqueue_adds", "Adds handled by the workqueue", ["name"])
WORKQUEUE_QUEUE_DURATION = Histogram(
    "workqueue_queue_duration_seconds",
    "How long an item stays in the workqueue before being taken",
    ["name"],
    buckets=_DURATION_BUCKETS,
)
WORKQUEUE_WORK_DURATION = Histogram(
    "workqueue_work_duration_seconds",
    "How long processing an item from the workqueue takes",
    ["name"],
    buckets=_DURATION_BUCKETS,
)
WORKQUEUE_RETRIES = Counter("workqueue_retries", "Retries handled by the workqueue", ["name"])

# The supervisor that informers started in this context run under (see module doc).
_SUPERVISOR: ContextVar[Supervisor | None] = ContextVar("informer_supervisor", default=None)


@contextlib.contextmanager
def supervised_informers(supervisor: Supervisor) -> Iterator[None]:
    """Tasks created inside this block run their informers under `supervisor`."""
    token = _SUPERVISOR.set(supervisor)
    try:
        yield
    finally:
        _SUPERVISOR.reset(token)


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
        """List and watch until cancelled. A watch that breaks is resumed from the
        last revision seen; one that fails in any other way (a bug, a bad object)
        starts over with a full re-list, after a back-off."""
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
                continue  # the server ended the stream: resume from where we are
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
            except Exception:
                # Whatever went wrong, a full re-list rebuilds a cache we can trust.
                log.exception("watch failed; listing again", kind=self.resource.kind.name)
                self.resource_version = ""
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


class WorkQueue:
    """`name` labels the queue's metrics; `run_workers` names a queue made without."""

    def __init__(self, base_delay: float = 0.05, max_delay: float = 30.0, name: str = "") -> None:
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        self._processing: set[str] = set()
        self._dirty: set[str] = set()  # added again while being processed
        self._failures: dict[str, int] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._base = base_delay
        self._max = max_delay
        # When each queued key was first added, and when each taken key was taken.
        self._added_at: dict[str, float] = {}
        self._taken_at: dict[str, float] = {}
        self._unnamed_adds = 0  # adds before the queue had a name
        self.name = ""
        if name:
            self.set_name(name)

    def set_name(self, name: str) -> None:
        """Label this queue's metrics `name` (once; later calls change nothing)."""
        if self.name:
            return
        self.name = name
        self._depth = WORKQUEUE_DEPTH.labels(name)
        self._adds = WORKQUEUE_ADDS.labels(name)
        self._queue_duration = WORKQUEUE_QUEUE_DURATION.labels(name)
        self._work_duration = WORKQUEUE_WORK_DURATION.labels(name)
        self._retries = WORKQUEUE_RETRIES.labels(name)
        self._adds.inc(self._unnamed_adds)
        self._unnamed_adds = 0
        self._depth.set(self._queue.qsize())

    def _counted_add(self) -> None:
        if self.name:
            self._adds.inc()
        else:
            self._unnamed_adds += 1

    def add(self, key: str) -> None:
        if key in self._processing:
            if key not in self._dirty:
                self._dirty.add(key)
                self._counted_add()
            return
        if key in self._queued:
            return
        self._counted_add()
        self._enqueue(key)

    def _enqueue(self, key: str) -> None:
        self._queued.add(key)
        self._added_at.setdefault(key, time.monotonic())
        self._queue.put_nowait(key)
        if self.name:
            self._depth.set(self._queue.qsize())

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
        """Add `key` again after its own exponential back-off (rate limited)."""
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        if self.name:
            self._retries.inc()
        self.add_after(key, min(self._max, self._base * 2**failures))

    def forget(self, key: str) -> None:
        self._failures.pop(key, None)

    async def get(self) -> str:
        key = await self._queue.get()
        self._queued.discard(key)
        self._processing.add(key)
        now = time.monotonic()
        added = self._added_at.pop(key, now)
        self._taken_at[key] = now
        if self.name:
            self._depth.set(self._queue.qsize())
            self._queue_duration.observe(now - added)
        return key

    def done(self, key: str) -> None:
        self._processing.discard(key)
        taken = self._taken_at.pop(key, None)
        if taken is not None and self.name:
            self._work_duration.observe(time.monotonic() - taken)
        if key in self._dirty:
            self._dirty.discard(key)
            self._enqueue(key)

    def __len__(self) -> int:
        return self._queue.qsize()


async def run_workers(
    queue: WorkQueue, sync: Callable[[str], Awaitable[None]], workers: int, name: str
) -> None:
    """Run `workers` loops taking keys from the queue; a failing sync is retried
    with back-off (never fatal to the worker), a successful one resets the key's
    back-off. The queue's metrics are labelled `name` unless it has a name."""
    queue.set_name(name)

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


def _informer_loop_names(informers: list[Informer[Any]], name: str) -> list[str]:
    """`name.kind` per informer (`replicaset.pods`), numbered when a kind repeats."""
    names: list[str] = []
    for informer in informers:
        base = f"{name}.{informer.resource.kind.plural}"
        loop, n = base, 1
        while loop in names:
            n += 1
            loop = f"{base}-{n}"
        names.append(loop)
    return names


def start_informer(informer: Informer[Any], loop_name: str) -> asyncio.Task[None]:
    """Run `informer` in a task of its own, supervised as `loop_name` when a
    supervisor is in context (see `supervised_informers`)."""
    supervisor = _SUPERVISOR.get()
    if supervisor is None:
        return asyncio.create_task(informer.run(), name=loop_name)
    return asyncio.create_task(supervisor.supervise(loop_name, informer.run), name=loop_name)


@contextlib.asynccontextmanager
async def informers_running(informers: Iterable[Informer[Any]], name: str) -> AsyncIterator[None]:
    """Run the informers in the background; the block starts once every cache is
    filled (a controller must not judge from a half-filled cache) and the informers
    stop when it ends."""
    started = list(informers)
    loops = _informer_loop_names(started, name)
    tasks = [start_informer(i, loop) for i, loop in zip(started, loops, strict=True)]
    try:
        await asyncio.gather(*(i.synced.wait() for i in started))
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await task
