"""The one place where gRPC servers and channels are made.

Every process (master, kubelet, proxy) and every client goes through here. A
server serves TLS and requires a client certificate from the cluster CA
(common/tls.py) unless it is built without TLS, which is allowed only on loopback
addresses and unix sockets. Servers always carry server reflection (grpcurl needs
it) and grpc.health.v1.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from kubeling.common import targets
from kubeling.common.peer import is_loopback_address
from kubeling.common.tls import CredentialDir, Credentials, channel_credentials, server_credentials

# Big enough for a list of thousands of pods; keepalives so dead peers are noticed
# and long-lived watch streams survive idle periods behind middleboxes.
_MAX_MESSAGE = 256 * 1024 * 1024
_CHANNEL_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.max_receive_message_length", _MAX_MESSAGE),
    ("grpc.max_send_message_length", _MAX_MESSAGE),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]
_SERVER_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.max_send_message_length", _MAX_MESSAGE),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_concurrent_streams", 10_000),
]


@dataclass(frozen=True)
class ServerTls:
    """A server's TLS: its certificate (a directory is re-read after renewal) and,
    for the master's join port, addresses served without asking for a client
    certificate (what a caller may do there is the authorizer's business)."""

    source: CredentialDir | Credentials
    without_client_cert: str = ""


class PlaintextRefused(ValueError):
    """A server without TLS asked to listen beyond loopback."""


class Server:
    """A grpc.aio server with reflection and health for the given services."""

    def __init__(
        self,
        listen: str,
        handlers: Iterable[grpc.GenericRpcHandler],
        services: Iterable[str],
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        tls: ServerTls | None = None,
    ) -> None:
        self._server = grpc.aio.server(options=_SERVER_OPTIONS, interceptors=list(interceptors))
        self._server.add_generic_rpc_handlers(tuple(handlers))
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        names = list(services)
        reflection.enable_server_reflection(
            [*names, health.SERVICE_NAME, reflection.SERVICE_NAME], self._server
        )
        self._services = names
        # Several addresses, comma-separated: e.g. a TCP port and a local unix socket.
        addresses = [a.strip() for a in listen.split(",") if a.strip()]
        if tls is None:
            wide = [a for a in addresses if not a.startswith("unix:") and not _loopback(a)]
            if wide:
                raise PlaintextRefused(
                    f"without TLS a server listens only on loopback or a unix socket, "
                    f"not {', '.join(wide)}"
                )
        # One credentials object per port: gRPC cannot bind a second port with a
        # reloading credentials object already in use.
        ports = [
            self._add_port(
                address,
                None if tls is None else server_credentials(tls.source, require_client_cert=True),
            )
            for address in addresses
        ]
        self.port = ports[0]  # of the first address (a unix socket counts as 1)
        self.join_port = 0
        if tls is not None and tls.without_client_cert:
            joins = [a.strip() for a in tls.without_client_cert.split(",") if a.strip()]
            join_ports = [
                self._add_port(a, server_credentials(tls.source, require_client_cert=False))
                for a in joins
            ]
            self.join_port = join_ports[0]

    def _add_port(self, address: str, creds: grpc.ServerCredentials | None) -> int:
        if creds is None:
            port = self._server.add_insecure_port(address)
        else:
            port = self._server.add_secure_port(address, creds)
        if port == 0:
            raise OSError(f"cannot listen on {address}")
        return int(port)

    @property
    def raw(self) -> grpc.aio.Server:
        return self._server

    async def start(self) -> None:
        await self._server.start()
        for name in ["", *self._services]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float = 2.0) -> None:
        for name in ["", *self._services]:
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self._server.stop(grace)

    async def wait(self) -> None:
        await self._server.wait_for_termination()


def _loopback(address: str) -> bool:
    return is_loopback_address(address.rpartition(":")[0].strip("[]"))


def channel(
    target: str,
    options: Sequence[tuple[str, int | str]] = (),
    credentials: Credentials | None = None,
    method_config: Sequence[Mapping[str, Any]] = (),
) -> grpc.aio.Channel:
    """An asyncio channel to a kubeling server (master, kubelet or proxy) or to a
    local runtime socket (unix://...); `options` override the defaults. With `credentials`
    the channel is TLS, trusting only their CA and presenting their certificate;
    without, plaintext (a local runtime socket, or a server run without TLS).

    `target` may list several masters, HOST:PORT,HOST:PORT,... (common/targets.py):
    one channel over all of them that moves to another master when its connection
    breaks, checking their certificates against the masters' common name (unless
    the credentials name one); TargetError for a list that cannot be used.
    `method_config`: gRPC service-config method entries (retry policies)."""
    where = targets.grpc_target(target)
    merged = dict(_CHANNEL_OPTIONS)
    config = targets.service_config(where.load_balancing, method_config)
    if config:
        merged["grpc.service_config"] = config
    if where.server_name:
        # The :authority a list of masters is called by (else gRPC sends the list).
        merged["grpc.default_authority"] = where.server_name
    merged.update(dict(options))
    if credentials is None:
        return grpc.aio.insecure_channel(where.target, options=list(merged.items()))
    server_name = credentials.server_name or where.server_name
    if server_name:
        merged["grpc.ssl_target_name_override"] = server_name
    return grpc.aio.secure_channel(
        where.target,
        channel_credentials(credentials),
        options=list(merged.items()),
    )
