"""`kubeling port-forward` as a user runs it, against the in-process master and the
fake kubelet of test_pod_sessions_fake.py (whose fake pod echoes port 8080): Ctrl-C
while a forwarded connection is still open ends the CLI with 0, quietly, and
closes that connection."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from pathlib import Path

import pytest

from kubeling.client import Client
from tests.integration.test_kubelet_api import FakeNode, make_pod
from tests.integration.test_pod_sessions_fake import cluster

__all__ = ["cluster"]  # the fixture, shared

KUBELING = Path(sys.executable).parent / "kubeling"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_ctrl_c_with_an_open_connection_exits_quietly(
    cluster: tuple[Client, FakeNode],
) -> None:
    api, _ = cluster
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        str(KUBELING), "--server", api.target, "port-forward", "pod/box", f"{port}:8080",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    writer = None
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert f"127.0.0.1:{port} -> 8080".encode() in line, line
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"ping")
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(4), 10) == b"ping"
        # Ctrl-C while the connection is open (its relay task in the middle of a read).
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
        err = (await proc.stderr.read()).decode()
        assert "Traceback" not in err and "Exception" not in err, err
        # The local end of the connection was closed.
        assert await asyncio.wait_for(reader.read(), 10) == b""
    finally:
        if writer is not None:
            writer.close()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_forwarding_ends_when_the_pod_is_deleted(cluster: tuple[Client, FakeNode]) -> None:
    api, node = cluster
    pod = make_pod("short-lived", "main")
    pod.spec.node_name = "node-1"
    await node.run_pod(await api.pods.create(pod))
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        str(KUBELING), "--server", api.target, "port-forward", "pod/short-lived", f"{port}:8080",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert f"127.0.0.1:{port} -> 8080".encode() in line, line
        await asyncio.sleep(0.3)  # the CLI's pod watch is open
        assert proc.returncode is None
        await api.pods.delete("short-lived", "default", 0)
        assert await asyncio.wait_for(proc.wait(), 20) == 1
        err = (await proc.stderr.read()).decode()
        assert err.strip() == "error: lost connection to pod short-lived: it was deleted", err
        with pytest.raises(OSError):  # nothing listens any more
            await asyncio.open_connection("127.0.0.1", port)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
