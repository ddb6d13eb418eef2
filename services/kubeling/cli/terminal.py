"""The user's side of an interactive session (`exec -i/-t`, `attach`).

Three things run at once: the local stdin is read by a thread (blocking reads
work on ttys, pipes and files alike) into a small queue that the stream writer
drains, so a fast producer waits for the network; SIGWINCH sends the terminal's
new size; the session's output is written as it comes. With a tty the local
terminal is put in raw mode (keys, ^C and ^D included, go to the remote side
as bytes) and restored however the session ends. The session's exit code
becomes the command's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import termios
import threading
import tty as ttymod
from collections.abc import Iterator
from typing import IO, Any

import grpc

from kubeling.cli.context import Context
from kubeling.v1 import core_pb2

__all__ = ["call_status", "raw_terminal", "run_session", "stdin_is_terminal", "terminal_size"]

_READ = 32 * 1024


def _fileno(stream: IO[Any]) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None


def terminal_size(stream: IO[Any]) -> tuple[int, int] | None:
    """(width, height) of the terminal `stream` is, or None."""
    fd = _fileno(stream)
    if fd is None or not os.isatty(fd):
        return None
    size = os.get_terminal_size(fd)
    return size.columns, size.lines


@contextlib.contextmanager
def raw_terminal(stream: IO[Any]) -> Iterator[None]:
    """Raw mode on `stream`'s terminal for the block (nothing if it is not one)."""
    fd = _fileno(stream)
    if fd is None or not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    # TCSANOW, not the default TCSAFLUSH: keys typed ahead are kept, not dropped.
    ttymod.setraw(fd, termios.TCSANOW)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _write(stream: IO[Any], data: bytes) -> None:
    buffer = getattr(stream, "buffer", None)
    if buffer is not None:
        buffer.write(data)
        buffer.flush()
    else:
        stream.write(data.decode("utf-8", "replace"))
        stream.flush()


def _reader(stream: IO[Any], loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[bytes]) -> None:
    """Thread: stdin into `queue`; b"" at the end. Waits while the queue is full."""
    fd = _fileno(stream)
    while True:
        try:
            data = os.read(fd, _READ) if fd is not None else stream.read(_READ).encode()
        except OSError:
            data = b""
        try:
            asyncio.run_coroutine_threadsafe(queue.put(data), loop).result()
        except RuntimeError:
            return  # the loop is gone
        if not data:
            return


async def run_session(call: Any, ctx: Context, stdin: bool, tty: bool) -> int:
    """Drive an ExecStream/Attach call until the process ends; its exit code."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=4)
    resizes: asyncio.Queue[tuple[int, int]] = asyncio.Queue()

    async def send_input() -> None:
        # The terminal's size, then keystrokes/bytes, then the end of stdin.
        while True:
            getter = asyncio.ensure_future(queue.get())
            resized = asyncio.ensure_future(resizes.get())
            done, _ = await asyncio.wait({getter, resized}, return_when=asyncio.FIRST_COMPLETED)
            for pending in (getter, resized):
                if pending not in done:
                    pending.cancel()
            if resized in done:
                width, height = resized.result()
                size = core_pb2.TerminalSize(width=width, height=height)
                await call.write(core_pb2.ExecStreamRequest(resize=size))
            if getter in done:
                data = getter.result()
                if not data:
                    await call.write(core_pb2.ExecStreamRequest(stdin_close=True))
                    return
                await call.write(core_pb2.ExecStreamRequest(stdin=data))

    def on_winch() -> None:
        size = terminal_size(ctx.stdin)
        if size is not None:
            resizes.put_nowait(size)

    # Input only once the session is open: a write racing a refusal would turn
    # the refusal (NOT_FOUND, PERMISSION_DENIED) into gRPC's INTERNAL.
    await call.initial_metadata()
    if stdin:
        threading.Thread(target=_reader, args=(ctx.stdin, loop, queue), daemon=True).start()
    winch = tty and terminal_size(ctx.stdin) is not None
    if winch:
        loop.add_signal_handler(signal.SIGWINCH, on_winch)
    pump = asyncio.create_task(send_input()) if stdin or winch else None
    exit_code = 0
    try:
        with raw_terminal(ctx.stdin) if tty else contextlib.nullcontext():
            async for response in call:
                kind = response.WhichOneof("kind")
                if kind == "stdout":
                    _write(ctx.stdout, response.stdout)
                elif kind == "stderr":
                    _write(ctx.stderr, response.stderr)
                elif kind == "exit":
                    exit_code = response.exit.exit_code
                    if response.exit.message:
                        ctx.err(f"error: {response.exit.message}")
    except grpc.aio.AioRpcError as exc:
        raise await call_status(call, exc) from None
    finally:
        if winch:
            loop.remove_signal_handler(signal.SIGWINCH)
        if pump is not None:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError, Exception):
                await pump
        call.cancel()
    return exit_code


async def call_status(call: Any, error: grpc.aio.AioRpcError) -> grpc.aio.AioRpcError:
    """The call's own final status when a read failed for a racing write (gRPC
    then reports INTERNAL "Internal error from Core" rather than the server's
    answer, such as NOT_FOUND)."""
    if error.code() != grpc.StatusCode.INTERNAL:
        return error
    with contextlib.suppress(Exception):
        code = await call.code()
        if code is not None and code != grpc.StatusCode.INTERNAL:
            return grpc.aio.AioRpcError(
                code,
                await call.initial_metadata(),
                await call.trailing_metadata(),
                details=await call.details(),
            )
    return error


def stdin_is_terminal(ctx: Context) -> bool:
    fd = _fileno(ctx.stdin)
    return fd is not None and os.isatty(fd) and sys.platform != "win32"
