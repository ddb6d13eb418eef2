"""A fake of the runtime's streaming server, so exec/attach/port-forward sessions
run end to end without containerd (tests, hollow nodes).

It speaks the server side of what kubeling.cri.streaming speaks as a client:
websocket `v4.channel.k8s.io` on http://127.0.0.1:PORT/{exec,attach,portforward}/TOKEN,
each TOKEN good for one session, as containerd's are.

Programs an exec knows (enough to drive the protocol, not a shell):
- `echo ARGS...`: prints them; `false`: exits 1; `cat`: echoes stdin until ^D.
- `sh` (with a tty): echoes what is typed; on Enter runs `stty size`,
  `echo ARGS` or `exit N`; ^D exits 0.
- anything else (and `cat`, `sh`): exits with the container's FAKE_EXEC_EXIT_CODE
  (default 0) unless `exit N` says otherwise.
Attach echoes stdin to stdout; port-forward echoes the connection's bytes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web

__all__ = ["FakeStreamingServer", "Session"]

_PROTOCOL = "v4.channel.k8s.io"
_STDIN, _STDOUT, _STDERR, _ERROR, _RESIZE = range(5)
Writer = Callable[[bytes], Awaitable[None]]


@dataclass
class Session:
    kind: str  # exec, attach, portforward
    cmd: list[str] = field(default_factory=list)
    tty: bool = False
    stdin: bool = False
    exit_code: int = 0
    port: int = 0


def _status(code: int) -> bytes:
    if code == 0:
        return json.dumps({"metadata": {}, "status": "Success"}).encode()
    return json.dumps({
        "metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
        "message": f"command terminated with non-zero exit code: exit status {code}",
        "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
    }).encode()  # fmt: skip


class FakeStreamingServer:
    def __init__(self) -> None:
        self._pending: dict[str, Session] = {}
        self._runner: web.AppRunner | None = None
        self._port = 0
        self._lock = asyncio.Lock()
        self.open_sessions = 0  # websockets being served now (tests watch it drop)

    async def url(self, session: Session) -> str:
        """A one-time URL for `session` (the server starts on first use)."""
        async with self._lock:
            if self._runner is None:
                app = web.Application()
                app.router.add_get("/{kind}/{token}", self._serve)
                runner = web.AppRunner(app)
                await runner.setup()
                site = web.TCPSite(runner, "127.0.0.1", 0)
                await site.start()
                server = site._server
                assert server is not None
                self._port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
                self._runner = runner
        token = secrets.token_urlsafe(12)
        self._pending[token] = session
        return f"http://127.0.0.1:{self._port}/{session.kind}/{token}"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        session = self._pending.pop(request.match_info["token"], None)
        if session is None or session.kind != request.match_info["kind"]:
            raise web.HTTPNotFound(text="unknown or used token")
        ws = web.WebSocketResponse(protocols=(_PROTOCOL,))
        await ws.prepare(request)
        self.open_sessions += 1
        try:
            if session.kind == "portforward":
                port = int(request.query.get("port", "0"))
                await self._port_forward(ws, port)
            else:
                await self._exec(ws, session)
        finally:
            self.open_sessions -= 1
            await ws.close()
        return ws

    async def _port_forward(self, ws: web.WebSocketResponse, port: int) -> None:
        prefix = struct.pack("<H", port)
        await ws.send_bytes(bytes([0]) + prefix)
        await ws.send_bytes(bytes([1]) + prefix)
        async for message in ws:
            if message.type != WSMsgType.BINARY:
                break
            data: bytes = message.data
            if data and data[0] == 0 and len(data) > 1:
                await ws.send_bytes(data)

    async def _exec(self, ws: web.WebSocketResponse, session: Session) -> None:
        await ws.send_bytes(bytes([_STDOUT]))  # ready, as the real server says
        out = _STDOUT

        async def write(text: bytes) -> None:
            await ws.send_bytes(bytes([out]) + text)

        program = session.cmd[0].rsplit("/", 1)[-1] if session.cmd else ""
        code = session.exit_code
        if session.kind == "exec" and program == "echo":
            await write((" ".join(session.cmd[1:]) + "\n").encode())
            code = 0
        elif session.kind == "exec" and program == "false":
            code = 1
        elif session.kind == "attach" or program in ("cat", "sh"):
            code = await self._interact(ws, session, program == "sh" and session.tty, write)
        await ws.send_bytes(bytes([_ERROR]) + _status(code))

    async def _interact(
        self, ws: web.WebSocketResponse, session: Session, shell: bool, emit: Writer
    ) -> int:
        size = (0, 0)
        line = b""
        async for message in ws:
            if message.type != WSMsgType.BINARY or not message.data:
                break
            channel, data = message.data[0], message.data[1:]
            if channel == _RESIZE:
                resize = json.loads(data)
                size = (int(resize["Width"]), int(resize["Height"]))
                continue
            if channel != _STDIN:
                continue
            if not shell:
                if session.tty and b"\x04" in data:
                    return 0
                await emit(data)
                continue
            for byte in data:
                char = bytes([byte])
                if char == b"\x04":
                    return 0
                if char in (b"\r", b"\n"):
                    await emit(b"\r\n")
                    words, line = line.decode().split(), b""
                    if words[:2] == ["stty", "size"]:
                        await emit(f"{size[1]} {size[0]}\r\n".encode())
                    elif words[:1] == ["echo"]:
                        await emit((" ".join(words[1:]) + "\r\n").encode())
                    elif words[:1] == ["exit"]:
                        with contextlib.suppress(ValueError, IndexError):
                            return int(words[1])
                        return 0
                    await emit(b"$ ")
                else:
                    line += char
                    await emit(char)
        return 0
