"""What every subcommand gets: the server, its credentials, streams and a client factory."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TextIO

import grpc

from kubeling.api.kinds import ALL_KINDS
from kubeling.cli.config import Target
from kubeling.client import Client, ResourceClient
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
        api = Client(self.server, timeout=self.timeout, credentials=self.target.credentials)
        # Every kind the API serves must be reachable through `api.resource`, also
        # one the client library does not bind as an attribute (yet): ConfigMaps,
        # Secrets. Set as attributes, they follow the client's reconnects.
        for kind in ALL_KINDS:
            try:
                api.resource(kind)
            except KeyError:
                setattr(api, f"cli_{kind.plural}", ResourceClient(kind, api.channel, self.timeout))
        return api

    def channel(self) -> grpc.aio.Channel:
        """A raw channel to the server with the CLI's credentials (services the
        Client does not wrap: Tokens, Certificates)."""
        return rpc.channel(self.server, credentials=self.target.credentials)

    def out(self, line: str) -> None:
        print(line, file=self.stdout, flush=True)

    def err(self, line: str) -> None:
        print(line, file=self.stderr, flush=True)
