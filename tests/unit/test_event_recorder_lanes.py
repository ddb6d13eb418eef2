"""The event recorder's writers: several at once (one per lane of objects), each
object's Events still in order, so repeats bump the Event their first write made;
and the queue bound over all lanes."""

from __future__ import annotations

import asyncio
from typing import Any

from kubeling.client.events import EventRecorder
from kubeling.v1 import core_pb2


def pod(name: str) -> core_pb2.Pod:
    obj = core_pb2.Pod(api_version="v1", kind="Pod")
    obj.metadata.name = name
    obj.metadata.namespace = "default"
    obj.metadata.uid = f"uid-{name}"
    return obj


class SlowEvents:
    """events.create/update that take a while (as a store commit does), counting
    how many are in flight at once and keeping what was stored by name."""

    def __init__(self, delay: float = 0.01) -> None:
        self.delay = delay
        self.in_flight = 0
        self.most_in_flight = 0
        self.stored: dict[str, core_pb2.Event] = {}
        self.creates = 0
        self.gate: asyncio.Event | None = None

    async def _hold(self) -> None:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.gate is not None:
                await self.gate.wait()
            await asyncio.sleep(self.delay)
        finally:
            self.in_flight -= 1

    async def create(self, event: core_pb2.Event) -> core_pb2.Event:
        await self._hold()
        assert event.metadata.name not in self.stored
        self.creates += 1
        self.stored[event.metadata.name] = event
        return event

    async def update(self, event: core_pb2.Event) -> core_pb2.Event:
        await self._hold()
        assert event.metadata.name in self.stored, "a bump before its Event was created"
        self.stored[event.metadata.name] = event
        return event


class Api:
    def __init__(self, events: SlowEvents) -> None:
        self.events = events


def recorder(events: SlowEvents, **kwargs: Any) -> EventRecorder:
    return EventRecorder(Api(events), "default-scheduler", **kwargs)  # type: ignore[arg-type]


async def test_events_about_different_objects_are_written_concurrently() -> None:
    events = SlowEvents()
    rec = recorder(events)
    for i in range(64):
        rec.record(pod(f"p-{i}"), "Normal", "Scheduled", f"assigned p-{i}")
    await rec.flush()
    assert events.creates == 64
    assert events.most_in_flight > 1  # one writer at a time would be 1
    assert rec.queued == 0


async def test_repeats_about_one_object_bump_one_event_in_order() -> None:
    events = SlowEvents(delay=0.002)
    rec = recorder(events)
    # Interleaved with other objects' Events, in every lane.
    for round_ in range(5):
        rec.record(pod("web"), "Warning", "BackOff", "Back-off restarting failed container")
        for i in range(20):
            rec.record(pod(f"other-{round_}-{i}"), "Normal", "Scheduled", "assigned")
    await rec.flush()
    web = [e for e in events.stored.values() if e.involved_object.name == "web"]
    assert len(web) == 1  # one Event, bumped: not five
    assert web[0].count == 5
    assert events.creates == 1 + 5 * 20


async def test_queue_bound_counts_all_lanes() -> None:
    events = SlowEvents()
    events.gate = asyncio.Event()  # nothing finishes until opened
    rec = recorder(events, queue_size=10)
    for i in range(30):
        rec.record(pod(f"p-{i}"), "Normal", "Scheduled", "assigned")
    # All recorded before any writer ran: the bound is over all lanes together.
    assert rec.queued == 10
    events.gate.set()
    await rec.flush()
    assert events.creates == 10  # the other 20 were dropped (queue full)


async def test_flush_returns_after_a_writer_was_cancelled() -> None:
    events = SlowEvents()
    events.gate = asyncio.Event()
    rec = recorder(events, lanes=1)
    rec.record(pod("a"), "Normal", "Scheduled", "assigned")
    rec.record(pod("b"), "Normal", "Scheduled", "assigned")
    await asyncio.sleep(0)
    for task in list(rec._writers.values()):
        task.cancel()
    await asyncio.sleep(0.01)
    events.gate.set()
    # The next Event starts a writer that also writes what the cancelled one left.
    rec.record(pod("c"), "Normal", "Scheduled", "assigned")
    await asyncio.wait_for(rec.flush(), 5)
    assert sorted(e.involved_object.name for e in events.stored.values()) == ["b", "c"]
