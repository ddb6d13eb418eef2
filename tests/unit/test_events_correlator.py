"""The event correlator (client-go's events_cache.go): counting repeats, folding
similar Events into one, and the per source+object token bucket."""

from __future__ import annotations

from kubeling.client.events import (
    COMBINED_PREFIX,
    Correlation,
    EventCorrelator,
    TokenBucket,
    new_event,
)
from kubeling.v1 import core_pb2


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def pod(name: str = "web", uid: str = "u1") -> core_pb2.Pod:
    obj = core_pb2.Pod(api_version="v1", kind="Pod")
    obj.metadata.name = name
    obj.metadata.namespace = "default"
    obj.metadata.uid = uid
    return obj


def event(
    message: str = "pulled", reason: str = "Pulled", obj: core_pb2.Pod | None = None
) -> core_pb2.Event:
    return new_event(obj or pod(), "Normal", reason, message, "kubelet", "node-1")


def store(correlator: EventCorrelator, correlation: Correlation | None) -> core_pb2.Event:
    """What the API would answer to the write (the same object, as stored)."""
    assert correlation is not None
    correlator.written(correlation.key, correlation.event)
    return correlation.event


def test_a_repeated_event_bumps_the_stored_one() -> None:
    clock = Clock()
    correlator = EventCorrelator(clock)
    first = store(correlator, correlator.correlate(event()))
    assert first.count == 1
    for count in range(2, 6):
        clock.now += 1
        later = event()
        correlation = correlator.correlate(later)
        assert correlation is not None and correlation.bump
        bumped = correlation.event
        assert bumped.metadata.name == first.metadata.name
        assert bumped.count == count
        assert bumped.first_timestamp == first.first_timestamp
        assert bumped.last_timestamp == later.last_timestamp
        store(correlator, correlation)
    # Another message, reason or object is another Event.
    for other in (event("pull failed"), event(reason="Failed"), event(obj=pod("db", "u2"))):
        correlation = correlator.correlate(other)
        assert correlation is not None and not correlation.bump and correlation.event.count == 1


def test_similar_events_are_combined_past_ten_messages() -> None:
    clock = Clock()
    correlator = EventCorrelator(clock)
    for i in range(9):
        correlation = correlator.correlate(event(f"message {i}"))
        assert correlation is not None and correlation.event.message == f"message {i}"
        store(correlator, correlation)
    tenth = correlator.correlate(event("message 9"))
    assert tenth is not None and not tenth.bump
    assert tenth.event.message == COMBINED_PREFIX + "message 9"
    combined = store(correlator, tenth)
    eleventh = correlator.correlate(event("message 10"))
    assert eleventh is not None and eleventh.bump
    assert eleventh.event.metadata.name == combined.metadata.name
    assert eleventh.event.count == 2
    assert eleventh.event.message == COMBINED_PREFIX + "message 10"
    # Ten minutes of quiet: messages count from zero again.
    clock.now += 601
    fresh = correlator.correlate(event("message 11"))
    assert fresh is not None and fresh.event.message == "message 11"


def test_each_source_and_object_has_a_token_bucket() -> None:
    clock = Clock()
    correlator = EventCorrelator(clock)
    passed = [correlator.correlate(event(reason=f"R{i}")) for i in range(30)]
    assert sum(c is not None for c in passed) == 25
    assert passed[25:] == [None] * 5
    # Repeats of one Event spend tokens too.
    assert correlator.correlate(event(reason="R0")) is None
    # Another object is not limited by this one's bucket.
    assert correlator.correlate(event(obj=pod("other", "u9"))) is not None
    # One token comes back every five minutes.
    clock.now += 300
    assert correlator.correlate(event(reason="late")) is not None
    assert correlator.correlate(event(reason="later")) is None


def test_token_bucket_refills_up_to_its_burst() -> None:
    bucket = TokenBucket(burst=2, refill_seconds=10, at=0)
    assert [bucket.take(0), bucket.take(0), bucket.take(0)] == [True, True, False]
    assert bucket.take(5) is False
    assert bucket.take(10) is True  # 5 + 5 s make one token
    assert [bucket.take(1_000), bucket.take(1_000), bucket.take(1_000)] == [True, True, False]


def test_caches_are_bounded() -> None:
    correlator = EventCorrelator(Clock(), cache_size=3)
    first = event(obj=pod("p0", "u0"))
    store(correlator, correlator.correlate(first))
    for i in range(1, 4):
        store(correlator, correlator.correlate(event(obj=pod(f"p{i}", f"u{i}"))))
    # p0's stored Event was the least recently used: it is forgotten, so a repeat
    # of it makes a new Event rather than bumping one.
    again = correlator.correlate(event(obj=pod("p0", "u0")))
    assert again is not None and not again.bump
