"""Record Events about objects (what `kubeling describe` shows at the end).

As Kubernetes' event recorder (client-go tools/record, events_cache.go):
- a repeated Event (same source, object, type, reason and message) bumps `count` and
  `lastTimestamp` of the one stored Event (`firstTimestamp` stays) instead of making
  another;
- more than 10 Events of one source, object, type and reason with different messages
  within 10 minutes are folded into one "(combined from similar events): ..." Event;
- each source+object has a token bucket (burst 25, one more every 5 minutes): Events
  over it are dropped;
- `record()` never blocks or fails its caller: it puts the Event on a bounded queue
  (1,000 in all, as the broadcaster's); when the queue is full the Event is dropped.
  Every drop is counted in `kubeling_events_dropped_total{reason}`.

Unlike client-go's one writer, the queue is split into `lanes` (8) by involved
object, each emptied by its own writer task: a write waits for the store's
commit, so one writer at a time managed ~65 Events/s and a scheduler binding
several hundred pods a second dropped most of its Scheduled events. All Events
about one object go through one lane, in order, so counting and combining
(keyed by source and object) see each earlier write done.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import structlog
from google.protobuf import timestamp_pb2
from prometheus_client import Counter

from kubeling.api.objects import clone, now
from kubeling.client.client import Client
from kubeling.v1 import core_pb2, meta_pb2

log = structlog.get_logger(__name__)

EVENTS_DROPPED = Counter(
    "kubeling_events_dropped_total",
    "Events not recorded: queue_full (recorder queue at its bound), rate_limited (the "
    "source+object's token bucket was empty), error (the API refused the write)",
    ["reason"],
)

# client-go's defaults (tools/record/events_cache.go, event.go).
MAX_QUEUED_EVENTS = 1_000
# Writers at once, one per lane of objects (see the module docstring).
LANES = 8
CACHE_SIZE = 4_096
SIMILAR_MAX = 10
SIMILAR_WINDOW = 600.0
SPAM_BURST = 25
SPAM_REFILL_SECONDS = 300.0
COMBINED_PREFIX = "(combined from similar events): "

Key = tuple[str, ...]
V = TypeVar("V")


def _source_and_object(event: core_pb2.Event) -> Key:
    ref = event.involved_object
    return (event.source.component, event.source.host, ref.kind, ref.namespace, ref.name,
            ref.uid, ref.api_version)  # fmt: skip


def event_key(event: core_pb2.Event) -> Key:
    """What makes two Events the same one (counted, not repeated)."""
    return ("event", *_source_and_object(event), event.type, event.reason, event.message)


def similar_key(event: core_pb2.Event) -> Key:
    """What makes two Events similar: all but the message."""
    return ("similar", *_source_and_object(event), event.type, event.reason)


class TokenBucket:
    """`burst` tokens, one more every `refill_seconds`; `take` spends one if any."""

    def __init__(self, burst: int, refill_seconds: float, at: float) -> None:
        self.burst = burst
        self.refill_seconds = refill_seconds
        self.tokens = float(burst)
        self.at = at

    def take(self, at: float) -> bool:
        self.tokens = min(self.burst, self.tokens + max(at - self.at, 0.0) / self.refill_seconds)
        self.at = at
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class _Lru(OrderedDict[Key, V]):
    """At most `size` entries; the least recently used goes first."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def use(self, key: Key, value: V) -> V:
        self[key] = value
        self.move_to_end(key)
        if len(self) > self.size:
            self.popitem(last=False)
        return value


@dataclass
class _Similar:
    messages: dict[str, None] = field(default_factory=dict)  # ordered set
    last: float = 0.0


@dataclass(frozen=True)
class _Stored:
    """What the recorder last wrote under a key: enough to bump it."""

    name: str
    namespace: str
    count: int
    first_timestamp: timestamp_pb2.Timestamp


@dataclass(frozen=True)
class Correlation:
    """The Event to write, whether it bumps a stored one, and where to remember it."""

    event: core_pb2.Event
    key: Key
    bump: bool


class EventCorrelator:
    """Aggregation, de-duplication and rate limiting of Events, without I/O: the
    writer calls `correlate` for each new Event and `written` after storing it."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        *,
        similar_max: int = SIMILAR_MAX,
        similar_window: float = SIMILAR_WINDOW,
        burst: int = SPAM_BURST,
        refill_seconds: float = SPAM_REFILL_SECONDS,
        cache_size: int = CACHE_SIZE,
    ) -> None:
        self._clock = clock
        self._similar_max = similar_max
        self._similar_window = similar_window
        self._burst = burst
        self._refill_seconds = refill_seconds
        self._similar: _Lru[_Similar] = _Lru(cache_size)
        self._stored: _Lru[_Stored] = _Lru(cache_size)
        self._buckets: _Lru[TokenBucket] = _Lru(cache_size)

    def correlate(self, event: core_pb2.Event) -> Correlation | None:
        """The write to make for `event` (a new Event), or None when rate limited."""
        at = self._clock()
        event, key = self._aggregate(event, at)
        event = clone(event)
        stored = self._stored.get(key)
        bump = stored is not None
        if stored is not None:
            event.metadata.name = stored.name
            event.metadata.namespace = stored.namespace
            event.count = stored.count + 1
            event.first_timestamp.CopyFrom(stored.first_timestamp)
        spam = _source_and_object(event)
        bucket = self._buckets.get(spam) or TokenBucket(self._burst, self._refill_seconds, at)
        self._buckets.use(spam, bucket)
        if not bucket.take(at):
            return None
        return Correlation(event, key, bump)

    def _aggregate(self, event: core_pb2.Event, at: float) -> tuple[core_pb2.Event, Key]:
        similar_to = similar_key(event)
        record = self._similar.get(similar_to)
        if record is None or at - record.last > self._similar_window:
            record = _Similar()
        record.last = at
        record.messages[event.message] = None
        self._similar.use(similar_to, record)
        if len(record.messages) < self._similar_max:
            return event, event_key(event)
        # Over the threshold: keep the set bounded, and write (or bump) one Event
        # that stands for all the similar ones.
        del record.messages[next(iter(record.messages))]
        combined = clone(event)
        combined.message = COMBINED_PREFIX + event.message
        combined.metadata.name = f"{event.involved_object.name}.{time.time_ns():x}"
        return combined, similar_to

    def written(self, key: Key, event: core_pb2.Event) -> None:
        """Remember the Event as stored, so the next same one bumps it."""
        meta = event.metadata
        first = timestamp_pb2.Timestamp()
        first.CopyFrom(event.first_timestamp)
        self._stored.use(key, _Stored(meta.name, meta.namespace, event.count, first))

    def forget(self, key: Key) -> None:
        self._stored.pop(key, None)


def new_event(
    obj: Any, type_: str, reason: str, message: str, component: str, host: str
) -> core_pb2.Event:
    """A fresh Event (count 1, both timestamps now) about `obj`, any API object."""
    meta = obj.metadata
    stamp = now()
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
        source=core_pb2.EventSource(component=component, host=host),
        reporting_component=component,
        reporting_instance=host,
        first_timestamp=stamp,
        last_timestamp=stamp,
    )
    # Events about cluster-scoped objects (Nodes) live in "default", as in Kubernetes.
    event.metadata.namespace = meta.namespace or "default"
    event.metadata.name = f"{meta.name}.{time.time_ns():x}"
    return event


def meta_name(obj: Any) -> str:
    meta = obj.metadata
    return "/".join(part for part in (obj.kind, meta.namespace, meta.name) if part)


class EventRecorder:
    def __init__(
        self,
        api: Client,
        component: str,
        host: str = "",
        *,
        queue_size: int = MAX_QUEUED_EVENTS,
        correlator: EventCorrelator | None = None,
        lanes: int = LANES,
    ) -> None:
        self._api = api
        self._component = component
        self._host = host
        self._queue_size = queue_size
        self._queued = 0  # over all lanes
        self._lanes: list[deque[core_pb2.Event]] = [deque() for _ in range(max(1, lanes))]
        self._correlator = correlator or EventCorrelator()
        # One writer per lane at a time, started when an Event arrives and ending
        # when its lane is empty (so an idle recorder holds no task).
        self._writers: dict[int, asyncio.Task[None]] = {}

    def record(self, obj: Any, type_: str, reason: str, message: str) -> None:
        """Queue an Event about `obj` (any API object); returns at once."""
        if self._queued >= self._queue_size:
            EVENTS_DROPPED.labels("queue_full").inc()
            log.debug("event dropped: recorder queue full", reason=reason, object=meta_name(obj))
            return
        event = new_event(obj, type_, reason, message, self._component, self._host)
        ref = event.involved_object
        lane = hash((ref.kind, ref.namespace, ref.name)) % len(self._lanes)
        self._lanes[lane].append(event)
        self._queued += 1
        writer = self._writers.get(lane)
        if writer is None or writer.done():  # done: cancelled before it ever ran
            self._writers[lane] = asyncio.get_running_loop().create_task(
                self._drain(lane), name=f"events-{self._component}-{lane}"
            )

    async def _drain(self, lane: int) -> None:
        queue = self._lanes[lane]
        try:
            while queue:
                event = queue.popleft()
                self._queued -= 1
                await self._write(event)
        finally:
            # No await between the last empty check and here: a record() racing
            # with the end of this task always finds it gone and starts another
            # (which also writes what a cancelled one left).
            self._writers.pop(lane, None)

    async def _write(self, event: core_pb2.Event) -> None:
        correlation = self._correlator.correlate(event)
        if correlation is None:
            EVENTS_DROPPED.labels("rate_limited").inc()
            return
        event = correlation.event
        try:
            stored: core_pb2.Event | None = None
            if correlation.bump:
                # As upstream's PATCH: no resourceVersion precondition, last count wins.
                event.metadata.resource_version = ""
                try:
                    stored = await self._api.events.update(event)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.NOT_FOUND:
                        raise
                    # Expired or deleted meanwhile: write it anew.
            if stored is None:
                stored = await self._api.events.create(event)
            self._correlator.written(correlation.key, stored)
        except grpc.aio.AioRpcError as exc:
            self._correlator.forget(correlation.key)
            EVENTS_DROPPED.labels("error").inc()
            log.warning("event not recorded", reason=event.reason, error=exc.details())
        except Exception:
            self._correlator.forget(correlation.key)
            EVENTS_DROPPED.labels("error").inc()
            log.exception("event not recorded", reason=event.reason)

    @property
    def queued(self) -> int:
        return self._queued

    async def flush(self) -> None:
        """Wait until every Event queued so far is written (at shutdown, in tests)."""
        while True:
            running = {task for task in self._writers.values() if not task.done()}
            if not running:
                return
            await asyncio.wait(running)
