"""The watch cache's key index: a List finds its keys by kind and namespace, never by
looking at every object, and answers exactly what a full scan would."""

from __future__ import annotations

import random
from typing import Any

import pytest

from kubeling.master.store.base import Entry, Event, EventType
from kubeling.master.store.cache import KeyIndex, WatchCache


class NoScan(dict[str, Entry]):
    """A state map that fails the test when anything iterates over it (lookups by
    key are what an indexed List may do)."""

    def _scan(self, *_: Any) -> Any:
        raise AssertionError("the whole state was scanned")

    __iter__ = items = values = keys = _scan  # type: ignore[assignment]


class Writer:
    """Feeds a WatchCache the events a store would, with values (rev, key)."""

    def __init__(self) -> None:
        self.cache = WatchCache(history=1_000, revision_of=lambda value: value[0])
        self.rev = 0

    def put(self, key: str) -> None:
        self.rev += 1
        old = self.cache.get(key)
        kind = EventType.MODIFIED if old is not None else EventType.ADDED
        prev = old.value if old is not None else None
        self.cache.apply([Event(kind, key, self.rev, (self.rev, key), prev)])

    def delete(self, key: str) -> None:
        old = self.cache.get(key)
        assert old is not None
        self.rev += 1
        self.cache.apply([Event(EventType.DELETED, key, self.rev, old.value, old.value)])


def scan(state: dict[str, Entry], prefix: str) -> list[str]:
    return sorted(k for k in state if k.startswith(prefix))


def test_directories_of_a_key() -> None:
    assert KeyIndex.dirs_of("/pods/default/web") == ["/pods/", "/pods/default/"]
    assert KeyIndex.dirs_of("/nodes/n1") == ["/nodes/"]


@pytest.mark.parametrize("seed", range(5))
def test_index_answers_what_a_full_scan_answers(seed: int) -> None:
    rng = random.Random(seed)
    writer = Writer()
    kinds = ["pods", "events", "nodes"]
    live: set[str] = set()
    prefixes = ["/", "/pods/", "/pods/ns1/", "/pods/ns1/p1", "/pods/n", "/nodes/", "/nodes/n1",
                "/events/ns2/", "/leases/", "/leases/ns1/", "/pods/ns9/"]  # fmt: skip
    for step in range(600):
        if live and rng.random() < 0.3:
            key = rng.choice(sorted(live))
            writer.delete(key)
            live.discard(key)
        else:
            kind = rng.choice(kinds)
            name = f"p{rng.randrange(40)}"
            key = f"/{kind}/{name}" if kind == "nodes" else f"/{kind}/ns{rng.randrange(3)}/{name}"
            writer.put(key)
            live.add(key)
        if step % 50 == 0:
            for prefix in prefixes:
                items, rev = writer.cache.list_prefix(prefix)
                assert [e.key for e in items] == scan(writer.cache.state, prefix), prefix
                assert rev == writer.rev
    # Reloading builds the same index as the writes did.
    reloaded = WatchCache(history=10, revision_of=lambda value: value[0])
    reloaded.load(writer.cache.state.values(), writer.rev, [])
    for prefix in prefixes:
        assert reloaded.list_prefix(prefix) == writer.cache.list_prefix(prefix)


def test_listing_one_namespace_does_not_scan_the_store() -> None:
    writer = Writer()
    for i in range(2_000):
        writer.put(f"/pods/big/p{i:05}")
        writer.put(f"/events/big/e{i:05}")
    writer.put("/pods/small/b")
    writer.put("/pods/small/a")
    writer.cache.state = NoScan(writer.cache.state)
    items, _ = writer.cache.list_prefix("/pods/small/")
    assert [e.key for e in items] == ["/pods/small/a", "/pods/small/b"]
    items, _ = writer.cache.list_prefix("/pods/")
    assert len(items) == 2_002 and items[0].key == "/pods/big/p00000"
    assert writer.cache.list_prefix("/pods/nothing/")[0] == []
    assert writer.cache.list_prefix("/services/")[0] == []
    # Only a List of the whole key space has to look at everything.
    with pytest.raises(AssertionError, match="scanned"):
        writer.cache.list_prefix("/")


def test_a_snapshot_list_undoes_only_its_namespace() -> None:
    writer = Writer()
    for name in ("a", "b", "c"):
        writer.put(f"/pods/one/{name}")
        writer.put(f"/pods/two/{name}")
    at = writer.rev
    writer.delete("/pods/one/a")
    writer.put("/pods/one/d")
    writer.put("/pods/one/b")
    writer.delete("/pods/two/c")
    items, rev = writer.cache.list_prefix("/pods/one/", at_rev=at)
    assert rev == at
    assert [(e.key, e.mod_rev) for e in items] == [
        ("/pods/one/a", 1), ("/pods/one/b", 3), ("/pods/one/c", 5),
    ]  # fmt: skip
    now, _ = writer.cache.list_prefix("/pods/one/")
    assert [e.key for e in now] == ["/pods/one/b", "/pods/one/c", "/pods/one/d"]


def test_a_deleted_namespace_leaves_no_directory_behind() -> None:
    writer = Writer()
    writer.put("/pods/gone/a")
    writer.put("/pods/kept/a")
    directories = len(writer.cache.keys)
    writer.delete("/pods/gone/a")
    assert len(writer.cache.keys) == directories - 1
    assert writer.cache.list_prefix("/pods/gone/")[0] == []


def test_watch_backlog_after_a_revision() -> None:
    writer = Writer()
    for i in range(10):
        writer.put(f"/pods/ns/p{i}")
        writer.put(f"/nodes/n{i}")
    backlog = writer.cache.events_after("/pods/", 16)
    assert [e.rev for e in backlog] == [17, 19]
    assert writer.cache.events_after("/pods/", writer.rev) == []
