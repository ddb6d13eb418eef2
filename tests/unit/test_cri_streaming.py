"""The streaming client's websocket and channel protocol (kubeling/cri/streaming.py)
against a hand-written server on loopback: the handshake and its refusals, frames
of every length encoding, fragments, pings, masking, close; and the exit status
the error channel carries."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from kubeling.cri import streaming

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


async def _serve(handler: Handler) -> AsyncIterator[str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/exec/TOKEN?x=1"
    finally:
        server.close()
        await server.wait_closed()


async def handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> dict[str, str]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode()
    lines = head.split("\r\n")
    assert lines[0] == "GET /exec/TOKEN?x=1 HTTP/1.1"
    headers = {
        k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)
    }
    accept = base64.b64encode(hashlib.sha1(headers["sec-websocket-key"].encode() + GUID).digest())
    writer.write(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: "
        + accept
        + b"\r\nSec-WebSocket-Protocol: v4.channel.k8s.io\r\n\r\n"
    )
    await writer.drain()
    return headers


def frame(payload: bytes, opcode: int = 2, fin: bool = True) -> bytes:
    """A server frame (unmasked), with the length encoding its size needs."""
    first = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        return struct.pack("!BB", first, n) + payload
    if n < 1 << 16:
        return struct.pack("!BBH", first, 126, n) + payload
    return struct.pack("!BBQ", first, 127, n) + payload


async def read_client_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    first, second = await reader.readexactly(2)
    assert second & 0x80, "client frames must be masked"
    n = second & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", await reader.readexactly(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", await reader.readexactly(8))
    key = await reader.readexactly(4)
    data = await reader.readexactly(n)
    return first & 0x0F, bytes(b ^ key[i % 4] for i, b in enumerate(data))


async def test_channels_fragments_pings_and_lengths() -> None:
    got: list[tuple[int, bytes]] = []
    served = asyncio.Event()

    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        headers = await handshake(reader, writer)
        assert headers["sec-websocket-protocol"] == "v4.channel.k8s.io"
        big = bytes([1]) + b"x" * 70_000  # 64-bit length
        mid = bytes([2]) + b"y" * 300  # 16-bit length
        writer.write(frame(b"") + frame(big) + frame(mid))
        writer.write(frame(b"\x01hel", fin=False) + frame(b"ping!", 9) + frame(b"lo", 0))
        writer.write(frame(b"\x03" + json.dumps({"status": "Success"}).encode()))
        await writer.drain()
        got.append(await read_client_frame(reader))  # the pong
        got.append(await read_client_frame(reader))  # stdin from the client
        writer.write(frame(b"\x03\xe8", 8))
        await writer.drain()
        got.append(await read_client_frame(reader))  # the close echoed
        writer.close()
        served.set()

    async for url in _serve(server):
        ws = await streaming.connect(url)
        assert ws.protocol == "v4.channel.k8s.io"
        assert await ws.receive_channel() == (1, b"x" * 70_000)  # the empty one is skipped
        assert await ws.receive_channel() == (2, b"y" * 300)
        assert await ws.receive_channel() == (1, b"hello")  # reassembled around a ping
        channel, status = await ws.receive_channel() or (0, b"")
        assert (channel, streaming.exit_status(status)) == (3, (0, ""))
        await ws.send_channel(streaming.STDIN, b"z" * 200)
        assert await ws.receive_channel() is None
        await ws.close()
        await asyncio.wait_for(served.wait(), 5)
    assert got == [(0xA, b"ping!"), (2, b"\x00" + b"z" * 200), (8, b"\x03\xe8")]


async def test_refusals_name_what_the_server_said() -> None:
    async def not_found(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 13\r\n\r\nunknown token")
        await writer.drain()
        writer.close()

    async for url in _serve(not_found):
        with pytest.raises(streaming.StreamingError, match="404 Not Found: unknown token"):
            await streaming.connect(url)

    async def bad_accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: nope\r\n\r\n")
        await writer.drain()

    async for url in _serve(bad_accept):
        with pytest.raises(streaming.StreamingError, match="Sec-WebSocket-Accept"):
            await streaming.connect(url)
    with pytest.raises(streaming.StreamingError, match="scheme"):
        await streaming.connect("https://127.0.0.1:1/exec/x")


def test_exit_status() -> None:
    failure = {
        "status": "Failure", "reason": "NonZeroExitCode", "message": "exit status 7",
        "details": {"causes": [{"reason": "ExitCode", "message": "7"}]},
    }  # fmt: skip
    assert streaming.exit_status(json.dumps(failure).encode()) == (7, "")
    other = {"status": "Failure", "message": "container not running"}
    assert streaming.exit_status(json.dumps(other).encode()) == (1, "container not running")
    assert streaming.exit_status(b"not json") == (1, "not json")
    assert json.loads(streaming.resize_message(80, 24)) == {"Width": 80, "Height": 24}
