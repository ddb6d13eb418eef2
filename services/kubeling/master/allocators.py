"""ClusterIP and NodePort allocation for Services.

The allocators hold what is taken in memory (rebuilt from the stored Services at
start) and are only touched from the event loop, so reserve/release need no locks.
"""

from __future__ import annotations

import contextlib
import ipaddress


class AllocationError(Exception):
    pass


class IPAllocator:
    def __init__(self, cidr: str) -> None:
        self.network = ipaddress.IPv4Network(cidr)
        # Skip the network address and the first host (kept for the API service,
        # as Kubernetes does) and the broadcast address.
        self._first = int(self.network.network_address) + 2
        self._last = int(self.network.broadcast_address) - 1
        self._used: set[int] = set()
        self._cursor = self._first

    def reserve(self, address: str) -> None:
        try:
            ip = ipaddress.IPv4Address(address)
        except ValueError:
            raise AllocationError(f"{address!r} is not a valid IPv4 address") from None
        if ip not in self.network:
            raise AllocationError(f"provided IP is not in the valid range ({self.network})")
        value = int(ip)
        if value in self._used:
            raise AllocationError(f"provided IP is already allocated: {address}")
        self._used.add(value)

    def allocate(self) -> str:
        size = self._last - self._first + 1
        for step in range(size):
            value = self._first + (self._cursor - self._first + step) % size
            if value not in self._used:
                self._used.add(value)
                self._cursor = value + 1 if value < self._last else self._first
                return str(ipaddress.IPv4Address(value))
        raise AllocationError(f"range is full: no free IP in {self.network}")

    def release(self, address: str) -> None:
        with contextlib.suppress(ValueError):
            self._used.discard(int(ipaddress.IPv4Address(address)))

    def __contains__(self, address: str) -> bool:
        try:
            return int(ipaddress.IPv4Address(address)) in self._used
        except ValueError:
            return False


class PortAllocator:
    def __init__(self, first: int, last: int) -> None:
        self.first, self.last = first, last
        self._used: set[int] = set()
        self._cursor = first

    def reserve(self, port: int) -> None:
        if not self.first <= port <= self.last:
            raise AllocationError(
                f"provided port is not in the valid range. The range of valid ports is "
                f"{self.first}-{self.last}"
            )
        if port in self._used:
            raise AllocationError(f"provided port is already allocated: {port}")
        self._used.add(port)

    def allocate(self) -> int:
        size = self.last - self.first + 1
        for step in range(size):
            port = self.first + (self._cursor - self.first + step) % size
            if port not in self._used:
                self._used.add(port)
                self._cursor = port + 1 if port < self.last else self.first
                return port
        raise AllocationError(f"range is full: no free port in {self.first}-{self.last}")

    def release(self, port: int) -> None:
        self._used.discard(port)

    def __contains__(self, port: int) -> bool:
        return port in self._used
