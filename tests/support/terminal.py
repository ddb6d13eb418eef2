"""A command run on a pseudo-terminal of its own, as a user's shell would run it:
the tests of `kubeling exec -it` / `attach -it` type into it and read what it shows."""

from __future__ import annotations

import asyncio
import fcntl
import os
import select
import struct
import subprocess
import termios
import time
from typing import Any


def set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class Pty:
    def __init__(
        self, argv: list[str], env: dict[str, str] | None = None, rows: int = 24, cols: int = 80
    ) -> None:
        self.master_fd, slave = os.openpty()
        set_size(slave, rows, cols)
        # Its own session, the terminal as stdin/stdout/stderr; resizes are
        # signalled by hand (SIGWINCH), as a terminal emulator would.
        self.proc = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True
        )
        # Its modes (cooked: echo, line editing), to see them restored at the end.
        self.slave_path = os.ttyname(slave)
        self.modes = termios.tcgetattr(slave)
        os.close(slave)
        self.output = b""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def write(self, data: bytes) -> None:
        os.write(self.master_fd, data)

    async def read_until(self, wanted: bytes, within: float = 60.0) -> bytes:
        deadline = time.monotonic() + within
        while wanted not in self.output:
            if time.monotonic() > deadline:
                raise AssertionError(f"{wanted!r} not seen; output so far: {self.output!r}")
            chunk = await asyncio.to_thread(self._read_some)
            if chunk is None:
                continue
            if not chunk:
                raise AssertionError(f"{wanted!r} not seen before EOF: {self.output!r}")
            self.output += chunk
        return self.output

    def _read_some(self) -> bytes | None:
        """Some output; None if none came within half a second; b"" at the end."""
        ready, _, _ = select.select([self.master_fd], [], [], 0.5)
        if not ready:
            return None
        try:
            return os.read(self.master_fd, 4096)
        except OSError:  # EIO: the command closed the terminal
            return b""

    async def wait(self, within: float = 30.0) -> int:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                return code
            # Keep draining: a full terminal buffer would block the command's writes.
            chunk = await asyncio.to_thread(self._read_some)
            if chunk:
                self.output += chunk
        raise AssertionError(f"the command did not exit; output: {self.output!r}")

    def modes_now(self) -> list[Any]:
        fd = os.open(self.slave_path, os.O_RDWR | os.O_NOCTTY)
        try:
            return termios.tcgetattr(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        """Kill the command (by its PID) if it still runs, and close the terminal."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        os.close(self.master_fd)
