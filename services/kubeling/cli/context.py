"""What every subcommand gets: the server, its credentials, streams and a client factory."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TextIO

import grpc

from kubeling.cli.config import Target
from kubeling.client import Client
from kubeling.common import rpc

DEFAULT_TIMEOUT = 30.0


@dataclass
class Context:
    target: Target
    timeout: float = DEFAULT_TIMEOUT
    stdin: TextIO = field(default_factory=lambda: sys.stdin)
    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)

    @property
    def server(self) -> str:
        return self.target.server

    def client(self) -> Client:
        return Client(self.server, timeout=self.timeout, credentials=self.target.credentials)

    def channel(self) -> grpc.aio.Channel:
        """A raw channel to the server with the CLI's credentials (services the
        Client does not wrap: Tokens, Certificates)."""
        return rpc.channel(self.server, credentials=self.target.credentials)

    def out(self, line: str) -> None:
        print(line, file=self.stdout, flush=True)

    def err(self, line: str) -> None:
        print(line, file=self.stderr, flush=True)
