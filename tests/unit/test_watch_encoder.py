"""The watch encoder: an event sent to a thousand watchers is serialised once, and
every watcher gets the bytes of its own event type (selectors make one stored
change ADDED for one watcher, MODIFIED for another)."""

from __future__ import annotations

from typing import Any

from kubeling.master.api_service import _EventEncoder
from kubeling.master.registry import WatchItem
from kubeling.v1 import core_pb2, meta_pb2


class CountingEvent:
    """Stands for core_pb2.PodWatchEvent, counting the events made."""

    made = 0

    def __new__(cls, **fields: Any) -> core_pb2.PodWatchEvent:  # type: ignore[misc]
        CountingEvent.made += 1
        return core_pb2.PodWatchEvent(**fields)


def pod(name: str) -> core_pb2.Pod:
    obj = core_pb2.Pod()
    obj.metadata.name = name
    return obj


def test_one_stored_change_is_encoded_once_for_every_watcher() -> None:
    CountingEvent.made = 0
    stored = pod("web")
    encoders = [_EventEncoder(CountingEvent) for _ in range(1000)]  # type: ignore[arg-type]
    sent = [encode(WatchItem("ADDED", stored)) for encode in encoders]
    assert CountingEvent.made == 1
    assert all(data is sent[0] for data in sent)
    event = core_pb2.PodWatchEvent.FromString(sent[0])
    assert meta_pb2.WatchEventType.Name(event.type) == "ADDED"
    assert event.object.metadata.name == "web"


def test_each_event_type_and_object_has_its_own_bytes() -> None:
    CountingEvent.made = 0
    encode = _EventEncoder(CountingEvent)  # type: ignore[arg-type]
    first, second = pod("a"), pod("b")
    added = encode(WatchItem("ADDED", first))
    modified = encode(WatchItem("MODIFIED", first))
    other = encode(WatchItem("ADDED", second))
    assert len({added, modified, other}) == 3
    assert core_pb2.PodWatchEvent.FromString(other).object.metadata.name == "b"
    # Bookmarks are made per watcher (each carries its own revision): never shared.
    mark = pod("")
    mark.metadata.resource_version = "7"
    encode(WatchItem("BOOKMARK", mark))
    encode(WatchItem("BOOKMARK", mark))
    assert CountingEvent.made == 5
