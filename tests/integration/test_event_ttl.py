"""Events against a real (in-process) master: the recorder aggregates, rate limits
and drops when its queue is full, counting every drop; the master expires Events
--event-ttl after their last write, including those written before it started."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from kubeling.client import Client, WatchEvent
from kubeling.client.events import EventRecorder
from kubeling.master.event_ttl import EventExpiry
from kubeling.master.main import parse_args
from kubeling.master.server import Master, MasterConfig
from kubeling.v1 import core_pb2
from tests.support.inprocess import in_process_master, serving
from tests.support.processes import running_master
from tests.support.waiting import eventually


def dropped(reason: str) -> float:
    value = REGISTRY.get_sample_value("kubeling_events_dropped_total", {"reason": reason})
    return value or 0.0


def expired() -> float:
    return REGISTRY.get_sample_value("kubeling_events_expired_total") or 0.0


def pod(name: str, uid: str = "") -> core_pb2.Pod:
    obj = core_pb2.Pod(api_version="v1", kind="Pod")
    obj.metadata.name = name
    obj.metadata.namespace = "default"
    obj.metadata.uid = uid or f"uid-{name}"
    return obj


def new_event(name: str) -> core_pb2.Event:
    event = core_pb2.Event(reason="Tested", message=name, type="Normal", count=1)
    event.metadata.name = name
    event.metadata.namespace = "default"
    event.involved_object.kind = "Pod"
    event.involved_object.name = name
    return event


async def events_about(api: Client, name: str) -> list[core_pb2.Event]:
    return list(
        (await api.events.list("default", field_selector=f"involvedObject.name={name}")).items
    )


async def next_deleted(watch: AsyncIterator[WatchEvent[core_pb2.Event]]) -> core_pb2.Event:
    async for event in watch:
        if event.type == "DELETED":
            return event.object
    raise AssertionError("the watch ended")


async def test_a_repeated_event_is_one_object_whose_count_grows(tmp_path: Path) -> None:
    async with in_process_master(tmp_path) as api:
        recorder = EventRecorder(api, "tester", "host-1")
        recorder.record(pod("web"), "Warning", "BackOff", "Back-off restarting failed container")
        await recorder.flush()
        [first] = await events_about(api, "web")
        assert first.count == 1
        for _ in range(4):
            recorder.record(
                pod("web"), "Warning", "BackOff", "Back-off restarting failed container"
            )
            await recorder.flush()
        [event] = await events_about(api, "web")
        assert event.metadata.name == first.metadata.name
        assert event.count == 5
        assert event.first_timestamp == first.first_timestamp
        assert event.last_timestamp.ToNanoseconds() > first.last_timestamp.ToNanoseconds()
        assert (event.source.component, event.source.host) == ("tester", "host-1")


async def test_similar_events_are_combined_into_one(tmp_path: Path) -> None:
    async with in_process_master(tmp_path) as api:
        recorder = EventRecorder(api, "tester")
        for i in range(15):
            recorder.record(pod("db"), "Warning", "Failed", f"attempt {i} failed")
        await recorder.flush()
        events = await events_about(api, "db")
        # Nine on their own, then one combined Event counting the other six.
        assert len(events) == 10
        [combined] = [e for e in events if e.message.startswith("(combined from similar events): ")]
        assert combined.count == 6
        assert combined.message == "(combined from similar events): attempt 14 failed"


async def test_events_over_the_rate_limit_are_dropped_and_counted(tmp_path: Path) -> None:
    async with in_process_master(tmp_path) as api:
        recorder = EventRecorder(api, "tester")
        before = dropped("rate_limited")
        for i in range(30):
            recorder.record(pod("noisy"), "Normal", f"Reason{i}", "something happened")
        recorder.record(pod("quiet"), "Normal", "Reason0", "something happened")
        await recorder.flush()
        assert len(await events_about(api, "noisy")) == 25
        assert len(await events_about(api, "quiet")) == 1
        assert dropped("rate_limited") - before == 5


async def test_a_full_recorder_queue_drops_and_counts(tmp_path: Path) -> None:
    async with in_process_master(tmp_path) as api:
        recorder = EventRecorder(api, "tester", queue_size=5)
        before = dropped("queue_full")
        # record() never waits: all eight arrive before the writer runs once.
        for i in range(8):
            recorder.record(pod(f"burst{i}"), "Normal", "Created", "created")
        assert recorder.queued == 5
        assert dropped("queue_full") - before == 3
        await recorder.flush()
        assert recorder.queued == 0
        names = {e.involved_object.name for e in (await api.events.list("default")).items}
        assert names == {f"burst{i}" for i in range(5)}
        # Once drained it takes Events again, with one writer (none while idle).
        recorder.record(pod("later"), "Normal", "Created", "created")
        await recorder.flush()
        assert len(await events_about(api, "later")) == 1


async def test_events_expire_after_the_ttl_and_a_write_renews_it(tmp_path: Path) -> None:
    ttl = 3.0
    async with in_process_master(tmp_path, event_ttl=ttl) as api:
        listed = await api.events.list("default")
        watch = api.events.watch("default", resource_version=listed.resource_version)
        start = time.monotonic()
        await api.events.create(new_event("short"))
        renewed = await api.events.create(new_event("renewed"))
        await asyncio.sleep(ttl / 2)
        renewed.count = 2
        await api.events.update(renewed)
        # The explicit signal: the store's own DELETED event for "short".
        deleted = await asyncio.wait_for(next_deleted(watch), ttl + 10)
        elapsed = time.monotonic() - start
        assert deleted.metadata.name == "short"
        assert ttl - 0.5 <= elapsed < ttl + 5
        # "renewed" was written again half a TTL later: it is still there.
        assert (await api.events.get("renewed", "default")).count == 2
        deleted = await asyncio.wait_for(next_deleted(watch), ttl + 10)
        assert deleted.metadata.name == "renewed"
        assert time.monotonic() - start >= ttl * 1.5 - 0.5
        await watch.aclose()
        assert (await api.events.list("default")).items == []


async def test_events_older_than_the_ttl_go_when_a_master_starts(tmp_path: Path) -> None:
    async with in_process_master(tmp_path) as api:
        old = new_event("old")
        old.last_timestamp.FromSeconds(int(time.time()) - 7200)
        await api.events.create(old)
        await api.events.create(new_event("recent"))
    # Created just now, but last written two hours ago by its own account: a master
    # with a one-hour TTL deletes it at once and keeps the recent one.
    before = expired()
    async with in_process_master(tmp_path, event_ttl=3600.0) as api:

        async def only_recent() -> bool:
            return [e.metadata.name for e in (await api.events.list("default")).items] == ["recent"]

        await eventually(only_recent)
        # Counted once the expiry's delete returns, which can be just after a
        # reader already sees the event gone.
        await eventually(lambda: expired() - before == 1)
        await asyncio.sleep(0.2)
        assert expired() - before == 1


async def test_expiry_tracks_every_event_and_only_events(tmp_path: Path) -> None:
    master = Master(
        MasterConfig(listen="127.0.0.1:0", tls=False, data_dir=tmp_path, controllers=set())
    )
    async with serving(master) as api:
        for i in range(3):
            await api.events.create(new_event(f"e{i}"))
        not_an_event = core_pb2.Pod()
        not_an_event.metadata.name = "web"
        not_an_event.spec.containers.add(name="c", image="busybox")
        await api.pods.create(not_an_event)
        # A second expiry on the master's store: one List, then it follows the watch.
        expiry = EventExpiry(master.store, ttl=3600.0)
        task = asyncio.create_task(expiry.run())
        try:
            await eventually(lambda: expiry.tracked == 3)
            await api.events.delete("e0", "default")
            await api.events.create(new_event("e3"))
            await api.events.create(new_event("e4"))
            await eventually(lambda: expiry.tracked == 4)
            deadline = expiry.next_deadline()
            assert deadline is not None and 3500 < deadline - time.time() <= 3600
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def test_event_ttl_flag_takes_seconds_or_a_duration() -> None:
    assert parse_args([]).event_ttl == 3600.0
    assert parse_args(["--event-ttl", "90"]).event_ttl == 90.0
    assert parse_args(["--event-ttl", "1h30m"]).event_ttl == 5400.0
    for bad in ("0", "-5", "an hour"):
        with pytest.raises(SystemExit):
            parse_args(["--event-ttl", bad])


async def test_a_master_process_expires_events_by_its_flag(tmp_path: Path) -> None:
    with running_master(tmp_path, "--controllers=", "--event-ttl", "1s") as master:
        async with Client(master.address, timeout=10) as api:
            listed = await api.events.list("default")
            watch = api.events.watch("default", resource_version=listed.resource_version)
            await api.events.create(new_event("flagged"))
            deleted = await asyncio.wait_for(next_deleted(watch), 15)
            assert deleted.metadata.name == "flagged"
            await watch.aclose()


async def test_the_expiry_loop_recovers_from_a_crash(tmp_path: Path) -> None:
    master = Master(
        MasterConfig(
            listen="127.0.0.1:0", tls=False, data_dir=tmp_path, controllers=set(), event_ttl=1.0
        )
    )
    async with serving(master) as api:

        def crash() -> bool:
            master.supervisor.inject_crash("event-ttl")  # LookupError until it runs
            return True

        await eventually(crash, retry_on=(LookupError,))
        await eventually(lambda: master.supervisor.restarts("event-ttl") == 1)
        listed = await api.events.list("default")
        watch = api.events.watch("default", resource_version=listed.resource_version)
        await api.events.create(new_event("after-crash"))
        deleted = await asyncio.wait_for(next_deleted(watch), 15)
        assert deleted.metadata.name == "after-crash"
        await watch.aclose()
