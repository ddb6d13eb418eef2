"""The one place where gRPC servers and channels are made.

Every process (master, kubelet, proxy) and every client goes through here, so that
TLS and authentication can be added in one spot later. Servers always carry server
reflection (grpcurl needs it) and grpc.health.v1.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from kubeling.common.token import client_interceptors

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


class Server:
    """A grpc.aio server with reflection and health for the given services."""

    def __init__(
        self,
        listen: str,
        handlers: Iterable[grpc.GenericRpcHandler],
        services: Iterable[str],
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
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
        ports = []
        for address in (a.strip() for a in listen.split(",")):
            port = self._server.add_insecure_port(address)
            if port == 0:
                raise OSError(f"cannot listen on {address}")
            ports.append(port)
        self.port = ports[0]  # of the first address (a unix socket counts as 1)

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


def channel(
    target: str, options: Sequence[tuple[str, int | str]] = (), token: str = ""
) -> grpc.aio.Channel:
    """An asyncio channel to a kubeling server (master, kubelet or proxy) or to a
    local runtime socket (unix://...); `options` override the defaults; `token`, the
    join token, is sent with every call (see common/token.py)."""
    merged = dict(_CHANNEL_OPTIONS)
    merged.update(dict(options))
    return grpc.aio.insecure_channel(
        target, options=list(merged.items()), interceptors=client_interceptors(token)
    )
