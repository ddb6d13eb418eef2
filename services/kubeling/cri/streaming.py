"""A client of the CRI streaming server (containerd's exec, attach, port-forward URLs).

CRI answers Exec, Attach and PortForward with the URL of the runtime's streaming
server; the caller then speaks Kubernetes' streaming protocol to that URL. This is
the websocket flavour (RFC 6455, written here over asyncio streams so the socket
can be opened inside another network namespace) with the subprotocol
`v4.channel.k8s.io`: every binary message starts with a channel byte.

- exec/attach: 0 stdin, 1 stdout, 2 stderr, 3 error (a JSON metav1.Status when the
  process ended: Success, or NonZeroExitCode with the code in details.causes
  ExitCode), 4 resize (JSON {"Width": w, "Height": h}). The server sends an empty
  message on its lowest output channel once it is ready.
- port-forward (`?port=N` on the URL): channel 0 data, 1 errors; the first message
  on each carries the port (2 bytes, little endian) and is not data.

Limitation of v4 (containerd 1.6 predates v5's close channel): stdin cannot be
half-closed; closing the websocket ends the whole session, output included.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import hashlib
import json
import os
import socket
import struct
import threading
import urllib.parse
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CHANNEL_PROTOCOL",
    "ERROR",
    "RESIZE",
    "STDERR",
    "STDIN",
    "STDOUT",
    "StreamingError",
    "WebSocket",
    "connect",
    "exit_status",
    "resize_message",
]

CHANNEL_PROTOCOL = "v4.channel.k8s.io"
STDIN, STDOUT, STDERR, ERROR, RESIZE = range(5)
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# Bigger messages are refused: the streaming server sends at most 32 KiB at a time.
MAX_MESSAGE = 16 * 1024 * 1024
_OP_CONT, _OP_TEXT, _OP_BINARY, _OP_CLOSE, _OP_PING, _OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_CLONE_NEWNET = 0x40000000


class StreamingError(Exception):
    """The streaming server refused the session or broke the protocol."""


def _socket_in_netns(netns: str, host: str, port: int, timeout: float) -> socket.socket:
    """A TCP socket connected from inside the network namespace at path `netns`.

    setns(2) changes only the calling thread, so a short-lived thread enters the
    namespace, connects and exits; the socket stays in the namespace it was made in.
    """
    result: list[socket.socket | BaseException] = []

    def run() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        try:
            with open(netns, "rb") as ns:
                if libc.setns(ns.fileno(), _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns {netns}: {os.strerror(err)}")
            result.append(socket.create_connection((host, port), timeout=timeout))
        except BaseException as exc:  # handed to the caller's thread
            result.append(exc)

    thread = threading.Thread(target=run, name="netns-dial", daemon=True)
    thread.start()
    thread.join()
    found = result[0]
    if isinstance(found, BaseException):
        raise found
    found.settimeout(None)
    return found


def _mask(data: bytes, key: bytes) -> bytes:
    if not data:
        return data
    repeated = (key * (len(data) // 4 + 1))[: len(data)]
    return (int.from_bytes(data, "big") ^ int.from_bytes(repeated, "big")).to_bytes(
        len(data), "big"
    )


@dataclass
class WebSocket:
    """One client websocket: whole binary messages in and out."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    protocol: str
    closed: bool = False

    async def send(self, data: bytes, opcode: int = _OP_BINARY) -> None:
        if self.closed:
            raise StreamingError("the websocket is closed")
        length = len(data)
        if length < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
        elif length < 1 << 16:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
        key = os.urandom(4)  # clients mask every frame (RFC 6455 5.3)
        self.writer.write(header + key + _mask(data, key))
        await self.writer.drain()

    async def send_channel(self, channel: int, data: bytes) -> None:
        await self.send(bytes([channel]) + data)

    async def _frame(self) -> tuple[bool, int, bytes]:
        first, second = await self.reader.readexactly(2)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
        if length > MAX_MESSAGE:
            raise StreamingError(f"websocket frame of {length} bytes is too big")
        key = await self.reader.readexactly(4) if second & 0x80 else b""
        payload = await self.reader.readexactly(length)
        return bool(first & 0x80), first & 0x0F, _mask(payload, key) if key else payload

    async def receive(self) -> bytes | None:
        """The next data message, or None once the server closed the connection."""
        parts: list[bytes] = []
        while True:
            try:
                fin, opcode, payload = await self._frame()
            except (asyncio.IncompleteReadError, ConnectionError):
                self.closed = True
                return None
            if opcode == _OP_PING:
                with contextlib.suppress(ConnectionError, StreamingError):
                    await self.send(payload, _OP_PONG)
                continue
            if opcode == _OP_PONG:
                continue
            if opcode == _OP_CLOSE:
                with contextlib.suppress(ConnectionError, StreamingError):
                    await self.send(payload[:2], _OP_CLOSE)
                self.closed = True
                return None
            parts.append(payload)
            if sum(map(len, parts)) > MAX_MESSAGE:
                raise StreamingError("websocket message is too big")
            if fin:
                return b"".join(parts)

    async def receive_channel(self) -> tuple[int, bytes] | None:
        """(channel, data) of the next message; None at the end."""
        while True:
            message = await self.receive()
            if message is None:
                return None
            if message:  # an empty message carries no channel: skip it
                return message[0], message[1:]

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(ConnectionError, OSError, RuntimeError):
                self.writer.write(struct.pack("!BB", 0x80 | _OP_CLOSE, 0x80) + os.urandom(4))
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


async def connect(
    url: str,
    protocols: tuple[str, ...] = (CHANNEL_PROTOCOL,),
    netns: str | None = None,
    timeout: float = 10.0,  # noqa: ASYNC109 - per step (dial, handshake), not overall
) -> WebSocket:
    """Open a websocket to `url` (http://HOST:PORT/PATH from the runtime), from the
    network namespace at path `netns` when given (the runtime's own)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "ws"):
        raise StreamingError(f"unsupported streaming URL scheme {parts.scheme!r} in {url}")
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    if netns:
        sock = await asyncio.to_thread(_socket_in_netns, netns, host, port, timeout)
        opened = asyncio.open_connection(sock=sock)
    else:
        opened = asyncio.open_connection(host, port)
    reader, writer = await asyncio.wait_for(opened, timeout)
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        request = (
            f"GET {target} HTTP/1.1\r\nHost: {netloc}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Protocol: {', '.join(protocols)}\r\nOrigin: http://{netloc}\r\n\r\n"
        )
        writer.write(request.encode())
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        fields = status_line.split(" ", 2)
        if len(fields) < 2 or fields[1] != "101":
            body = b""
            with contextlib.suppress(Exception):
                size = min(int(headers.get("content-length", "0")), 4096)
                body = await asyncio.wait_for(reader.readexactly(size), timeout)
            text = body.decode("utf-8", "replace").strip()
            raise StreamingError(f"streaming server answered {status_line.strip()}: {text}")
        expected = base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()
        if headers.get("sec-websocket-accept") != expected:
            raise StreamingError("streaming server sent a wrong Sec-WebSocket-Accept")
        return WebSocket(reader, writer, headers.get("sec-websocket-protocol", ""))
    except BaseException:
        writer.close()
        raise


def resize_message(width: int, height: int) -> bytes:
    return json.dumps({"Width": width, "Height": height}).encode()


def exit_status(data: bytes) -> tuple[int, str]:
    """(exit code, message) from the error channel's metav1.Status; a status that
    is not a process's exit (the runtime failed) is exit code 1 with its message."""
    try:
        status: Any = json.loads(data)
    except ValueError:
        return 1, data.decode("utf-8", "replace")
    if not isinstance(status, dict):
        return 1, str(status)
    if status.get("status") == "Success":
        return 0, ""
    message = str(status.get("message") or "")
    if status.get("reason") == "NonZeroExitCode":
        for cause in (status.get("details") or {}).get("causes") or []:
            if cause.get("reason") == "ExitCode":
                with contextlib.suppress(ValueError, TypeError):
                    return int(cause.get("message")), ""
    return 1, message or "the command failed"
