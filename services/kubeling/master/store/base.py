"""The store interface: a revisioned key-value map with watch, as etcd offers.

Keys are strings ("/pods/default/web"), values are decoded API objects. Every write
gets the next value of one global revision; the revision is also stamped into the
value (metadata.resourceVersion) by the codec. Backends (SQLite, etcd)
implement `Store`; the in-memory `WatchCache` serves reads, watches and the history
window for all of them.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from kubeling.api.errors import ApiError


class StoreError(Exception):
    """Base of the store's errors; the API layer maps each to a gRPC status."""


class StoreUnavailableError(ApiError, StoreError):
    """The store takes no writes now (its writer failed the group, or is restarting
    or stopped). An ApiError too, so every RPC that writes, CRUD or not (Bind), answers
    UNAVAILABLE with the reason instead of a bare INTERNAL."""

    def __init__(self, reason: str) -> None:
        super().__init__(grpc.StatusCode.UNAVAILABLE, f"storage: {reason}")


class KeyExistsError(StoreError):
    pass


class KeyNotFoundError(StoreError):
    pass


class ConflictError(StoreError):
    """The caller's expected revision is not the stored one (optimistic concurrency)."""


class TooOldError(StoreError):
    """The asked revision is older than the kept history window (clients relist)."""


class WatchClosedError(StoreError):
    """The watch was closed by the store (too slow a reader, or shutdown)."""


class EventType(enum.IntEnum):
    ADDED = 1
    MODIFIED = 2
    DELETED = 3


@dataclass(frozen=True, slots=True)
class Entry:
    key: str
    value: Any  # shared with other readers: never mutate, copy first
    mod_rev: int


@dataclass(frozen=True, slots=True)
class Event:
    type: EventType
    key: str
    rev: int
    value: Any  # the new value; for DELETED the last value the object had
    prev: Any | None  # the value before this event (None for ADDED)


class Codec(Protocol):
    """How a backend turns values into bytes and back."""

    def encode(self, value: Any) -> bytes: ...

    def decode(self, key: str, data: bytes) -> Any: ...

    def stamp(self, value: Any, rev: int) -> None:
        """Record the revision a write got inside the value (takes ownership)."""

    def revision_of(self, value: Any) -> int: ...


class Watch(Protocol):
    """A stream of events after a revision; ends with WatchClosedError."""

    async def next_batch(self, idle: float | None = None) -> list[Event]:
        """The next events; [] after `idle` seconds without any (if given)."""
        ...

    def close(self) -> None: ...


class Store(Protocol):
    @property
    def revision(self) -> int: ...

    async def open(self) -> None:
        """Load the state (and history) and start serving reads and writes."""

    async def create(self, key: str, value: Any) -> int: ...

    async def update(self, key: str, value: Any, expected_rev: int | None = None) -> int: ...

    async def delete(self, key: str, expected_rev: int | None = None) -> tuple[int, Any]: ...

    def get(self, key: str) -> Entry | None: ...

    def list_prefix(self, prefix: str, at_rev: int | None = None) -> tuple[list[Entry], int]: ...

    def watch(
        self, prefix: str, after_rev: int, trigger: tuple[str, str] | None = None
    ) -> Watch: ...

    def list_and_watch(
        self, prefix: str, trigger: tuple[str, str] | None = None
    ) -> tuple[list[Entry], int, Watch]: ...

    def add_index(self, name: str, prefix: str, index: Callable[[Any], str]) -> None:
        """Let watchers with trigger (name, value) receive only the events under
        `prefix` whose old or new value has that index value."""

    def healthy(self) -> bool:
        """Whether the store can serve fresh reads and take writes now."""

    async def wait_consistent(self) -> None:
        """Until reads show every write committed before this call, through any
        master (a no-op where this master is the only writer)."""

    async def close(self) -> None: ...
