"""ClusterIP and NodePort allocation for Services, correct with several masters.

The store is the arbiter, as Kubernetes' IPAddress objects are: each taken IP or
node port is an internal record (master/codec.py) under its own key,
`/serviceipallocations/10.96.0.12` or `/servicenodeportallocations/30007`, naming
the Service that holds it. Taking one is `store.create`, which only one writer can
win (SQLite's single writer; etcd's `mod_revision == 0` transaction): a master that
loses gets KeyExistsError and tries the next candidate. "Is it taken" is read from
the store's watch cache, which every master keeps current from the store's watch,
so there is no in-memory state to rebuild at start and nothing that two masters
could disagree on; a stale cache only costs a failed create. Releasing is a
conditional delete of a record the releasing Service owns.

A scan starts at a random offset (as Kubernetes does) so masters allocating at
once rarely race for the same candidate, and dynamic picks rarely land on the low
addresses people choose by hand (10.96.0.10 for DNS).

Records a master leaked (it died between taking an IP and writing the Service, or
between deleting a Service and its records) are found by the repair pass in
master/strategies.py (ServiceStrategy.repair).
"""

from __future__ import annotations

import contextlib
import ipaddress
import secrets
from collections.abc import Iterator

import structlog

from kubeling.api.errors import ApiError
from kubeling.api.objects import now
from kubeling.master.codec import (
    SERVICE_IP_ALLOCATIONS,
    SERVICE_NODE_PORT_ALLOCATIONS,
    internal_key,
    internal_prefix,
)
from kubeling.master.store.base import (
    ConflictError,
    Entry,
    KeyExistsError,
    KeyNotFoundError,
    Store,
    StoreError,
)
from kubeling.v1 import internal_pb2, meta_pb2

log = structlog.get_logger(__name__)


class AllocationError(Exception):
    pass


def owner_of(svc: object) -> meta_pb2.ObjectReference:
    """The reference an allocation record keeps to the Service holding it."""
    meta = svc.metadata  # type: ignore[attr-defined]
    return meta_pb2.ObjectReference(
        kind="Service", namespace=meta.namespace, name=meta.name, uid=meta.uid
    )


class _StoreAllocator:
    """One record per taken value of an integer range [first, last]."""

    prefix: str
    what: str  # "IP", "port": for messages

    def __init__(self, store: Store, first: int, last: int) -> None:
        self.store = store
        self._first, self._last = first, last

    # Subclasses: how a value is named in keys and messages.
    def _name(self, value: int) -> str:
        return str(value)

    def _range(self) -> str:
        raise NotImplementedError

    def key(self, value: int) -> str:
        return internal_key(self.prefix, self._name(value))

    def entry(self, value: int) -> Entry | None:
        return self.store.get(self.key(value))

    def records(self) -> list[Entry]:
        """Every record of this allocator, from the watch cache."""
        return self.store.list_prefix(internal_prefix(self.prefix))[0]

    def _candidates(self) -> Iterator[int]:
        size = self._last - self._first + 1
        start = secrets.randbelow(size)
        for step in range(size):
            yield self._first + (start + step) % size

    def _record(self, value: int, owner: meta_pb2.ObjectReference) -> internal_pb2.Allocation:
        record = internal_pb2.Allocation(owner=owner)
        record.metadata.name = self._name(value)
        record.metadata.creation_timestamp.CopyFrom(now())
        return record

    async def _take(self, value: int, owner: meta_pb2.ObjectReference) -> bool:
        """True if this call took `value` for `owner` (or `owner` already holds it)."""
        try:
            await self.store.create(self.key(value), self._record(value, owner))
            return True
        except KeyExistsError:
            entry = self.entry(value)
            return entry is not None and _same_owner(entry.value.owner, owner)

    async def adopt(self, value: int, owner: meta_pb2.ObjectReference) -> bool:
        """Record `value` for a Service that already holds it (written before
        records existed); True if this made the record."""
        if self.entry(value) is not None:
            return False
        try:
            await self.store.create(self.key(value), self._record(value, owner))
        except KeyExistsError:
            return False
        return True

    async def _allocate(self, owner: meta_pb2.ObjectReference) -> int:
        for value in self._candidates():
            if self.entry(value) is None and await self._take(value, owner):
                return value
        raise AllocationError(f"range is full: no free {self.what} in {self._range()}")

    async def _reserve(self, value: int, owner: meta_pb2.ObjectReference) -> None:
        if not self._first <= value <= self._last:
            raise AllocationError(self._outside())
        if not await self._take(value, owner):
            raise AllocationError(f"provided {self.what} is already allocated: {self._name(value)}")

    def _outside(self) -> str:
        raise NotImplementedError

    async def _release(self, value: int, owner: meta_pb2.ObjectReference) -> None:
        """Delete the record if `owner` holds it. A failure is logged, not raised:
        the Service write it follows already happened, and repair finds the leak."""
        entry = self.entry(value)
        if entry is None or not _same_owner(entry.value.owner, owner):
            return
        await self.delete_record(entry)

    async def delete_record(self, entry: Entry) -> bool:
        """Delete `entry` if it is still that version; False if it changed or failed."""
        try:
            await self.store.delete(entry.key, expected_rev=entry.mod_rev)
            return True
        except (ConflictError, KeyNotFoundError):
            return False
        except (StoreError, ApiError) as exc:
            log.warning("allocation not released; repair will", key=entry.key, error=str(exc))
            return False

    def holds(self, value: int) -> bool:
        """Whether some Service's record holds `value` (as this master sees it)."""
        return self.entry(value) is not None


def _same_owner(a: meta_pb2.ObjectReference, b: meta_pb2.ObjectReference) -> bool:
    return (a.namespace, a.name, a.uid) == (b.namespace, b.name, b.uid)


class IPAllocator(_StoreAllocator):
    prefix = SERVICE_IP_ALLOCATIONS
    what = "IP"

    def __init__(self, store: Store, cidr: str) -> None:
        self.network = ipaddress.IPv4Network(cidr)
        # Skip the network address and the first host (kept for the API service,
        # as Kubernetes does) and the broadcast address.
        super().__init__(
            store,
            int(self.network.network_address) + 2,
            int(self.network.broadcast_address) - 1,
        )

    def _name(self, value: int) -> str:
        return str(ipaddress.IPv4Address(value))

    def _range(self) -> str:
        return str(self.network)

    def _outside(self) -> str:
        return f"provided IP is not in the valid range ({self.network})"

    @staticmethod
    def parse(address: str) -> int:
        try:
            return int(ipaddress.IPv4Address(address))
        except ValueError:
            raise AllocationError(f"{address!r} is not a valid IPv4 address") from None

    def in_range(self, address: str) -> bool:
        with contextlib.suppress(AllocationError):
            return self._first <= self.parse(address) <= self._last
        return False

    async def allocate(self, owner: meta_pb2.ObjectReference) -> str:
        return self._name(await self._allocate(owner))

    async def reserve(self, address: str, owner: meta_pb2.ObjectReference) -> None:
        await self._reserve(self.parse(address), owner)

    async def release(self, address: str, owner: meta_pb2.ObjectReference) -> None:
        with contextlib.suppress(AllocationError):
            await self._release(self.parse(address), owner)

    def __contains__(self, address: str) -> bool:
        try:
            return self.holds(self.parse(address))
        except AllocationError:
            return False


class PortAllocator(_StoreAllocator):
    prefix = SERVICE_NODE_PORT_ALLOCATIONS
    what = "port"

    def __init__(self, store: Store, first: int, last: int) -> None:
        super().__init__(store, first, last)
        self.first, self.last = first, last

    def _range(self) -> str:
        return f"{self.first}-{self.last}"

    def _outside(self) -> str:
        return (
            f"provided port is not in the valid range. The range of valid ports is "
            f"{self.first}-{self.last}"
        )

    def in_range(self, port: int) -> bool:
        return self.first <= port <= self.last

    async def allocate(self, owner: meta_pb2.ObjectReference) -> int:
        return await self._allocate(owner)

    async def reserve(self, port: int, owner: meta_pb2.ObjectReference) -> None:
        await self._reserve(port, owner)

    async def release(self, port: int, owner: meta_pb2.ObjectReference) -> None:
        await self._release(port, owner)

    def __contains__(self, port: int) -> bool:
        return self.holds(port)
