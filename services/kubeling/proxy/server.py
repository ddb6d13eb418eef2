"""The proxy's own gRPC API, kubeling.v1.Proxy: Status and Explain."""

from __future__ import annotations

import asyncio
import ipaddress

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from kubeling.api.errors import ApiError
from kubeling.common import handlers, rpc
from kubeling.common.handlers import Context
from kubeling.proxy import nft
from kubeling.proxy.explain import explain
from kubeling.proxy.kubeproxy import KubeProxy
from kubeling.v1 import proxy_pb2

SERVICE_NAME: str = proxy_pb2.DESCRIPTOR.services_by_name["Proxy"].full_name
# kube-proxy's own port number (its metrics port upstream).
DEFAULT_PORT = 10249
_PROTOCOLS = ("TCP", "UDP", "SCTP")


class ProxyService:
    def __init__(self, proxy: KubeProxy) -> None:
        self.proxy = proxy

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                "Status": handlers.unary(self.status, proxy_pb2.ProxyStatusRequest, "proxy"),
                "Explain": handlers.unary(self.explain, proxy_pb2.ExplainRequest, "proxy"),
            },
        )

    async def status(
        self, request: proxy_pb2.ProxyStatusRequest, context: Context
    ) -> proxy_pb2.ProxyStatus:
        state = self.proxy.state
        proxier = self.proxy.proxier
        out = proxy_pb2.ProxyStatus(
            node_name=self.proxy.config.node_name,
            mode="nftables",
            table=f"{nft.FAMILY} {nft.TABLE}",
            syncs=state.syncs,
            sync_failures=state.failures,
            last_error=state.last_error,
            services=proxier.service_ports,
            endpoints=proxier.endpoints,
            chains=proxier.chains,
            rules=proxier.rules,
            pending_changes=self.proxy.pending_changes,
            healthy=self.proxy.healthy(),
        )
        if state.last_result is not None:
            stamp = Timestamp()
            stamp.FromNanoseconds(int(state.last_sync_wall * 1e9))
            out.last_sync_time.CopyFrom(stamp)
            out.last_sync_seconds = state.last_result.seconds
            out.last_sync_full = state.last_result.full
        return out

    async def explain(
        self, request: proxy_pb2.ExplainRequest, context: Context
    ) -> proxy_pb2.ExplainResponse:
        try:
            ipaddress.IPv4Address(request.address)
        except ValueError:
            raise ApiError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"address: {request.address!r} is not an IPv4 address",
            ) from None
        if not 0 < request.port < 65536:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "port: must be in 1-65535")
        protocol = (request.protocol or "TCP").upper()
        if protocol not in _PROTOCOLS:
            raise ApiError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"protocol: {request.protocol!r} is not one of TCP, UDP, SCTP",
            )
        found = await asyncio.to_thread(
            explain, self.proxy.backend, request.address, request.port, protocol
        )
        return proxy_pb2.ExplainResponse(
            verdict=found.verdict,
            service=found.service,
            chain=found.chain,
            endpoints=[proxy_pb2.ExplainEndpoint(address=a, port=p) for a, p in found.endpoints],
            session_affinity=found.session_affinity,
            masquerade=found.masquerade,
            rules=found.rules,
        )


async def serve_proxy_api(listen: str, proxy: KubeProxy) -> rpc.Server:
    server = rpc.Server(listen, [ProxyService(proxy).handler()], [SERVICE_NAME])
    await server.start()
    return server
