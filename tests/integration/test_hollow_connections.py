"""Hollow nodes spread over connections of their own: gRPC gives channels with the
same target and options one shared TCP connection, and 5,000 hollow nodes' 10,000
watches on it reached the master's max_concurrent_streams, after which every call
of every node waited for a stream and failed with DEADLINE_EXCEEDED."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kubeling.client import Client
from kubeling.kubelet.hollow import own_connection
from tests.support.inprocess import in_process_master

pytestmark = pytest.mark.asyncio(loop_scope="session")


def connections_to(port: int) -> int:
    """Established TCP connections this process opened to `port` on loopback."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if fields[3] == "01" and remote_port == port and fields[9] in inodes:
                count += 1
    return count


async def test_each_hollow_client_has_a_connection_of_its_own(tmp_path: Path) -> None:
    async with in_process_master(tmp_path) as api:
        port = int(api.target.rsplit(":", 1)[1])
        await api.namespaces.list()
        before = connections_to(port)

        shared = [Client(api.target) for _ in range(2)]
        for client in shared:
            await client.namespaces.list()
        # What the hollow nodes had: more channels, no more connections (they share
        # the one the first client opened).
        shared_count = connections_to(port)
        assert shared_count - before <= 1

        own = [await own_connection(Client(api.target)) for _ in range(3)]
        for client in own:
            await client.namespaces.list()
        assert connections_to(port) - shared_count == 3
        for client in [*shared, *own]:
            await client.close()
