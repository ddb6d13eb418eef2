"""What every subcommand gets: the server address, streams and a client factory."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TextIO

from kubeling.client import Client

DEFAULT_TIMEOUT = 30.0


@dataclass
class Context:
    server: str
    timeout: float = DEFAULT_TIMEOUT
    stdin: TextIO = field(default_factory=lambda: sys.stdin)
    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)

    def client(self) -> Client:
        return Client(self.server, timeout=self.timeout)

    def out(self, line: str) -> None:
        print(line, file=self.stdout, flush=True)

    def err(self, line: str) -> None:
        print(line, file=self.stderr, flush=True)
