"""The proxy's own gRPC API, kubeling.v1.Proxy: Status and Explain.

Served over TLS with the proxy's certificate (`CN=system:kube-proxy:NODE`) from
its credential directory; callers need a certificate from the cluster CA and a
role that may read (admin, which includes the master, edit or view): anyone else
gets PERMISSION_DENIED naming them. Without TLS (`--insecure`, loopback or a unix
socket only) every caller is the local admin.

Explain reads the kernel's rules, which takes a while on a big table. It must
never hold up rule programming: it reads through its own libnftables context
(nft.py), not the one the sync lock guards, on a thread of its own rather than
the default executor the syncs run on, one at a time, with at most
`MAX_EXPLAIN_WAITING` calls waiting (RESOURCE_EXHAUSTED beyond).
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from kubeling.api.errors import ApiError
from kubeling.common import handlers, identity, rpc
from kubeling.common.handlers import Context
from kubeling.common.tls import CredentialDir
from kubeling.proxy import nft
from kubeling.proxy.explain import explain
from kubeling.proxy.kubeproxy import KubeProxy
from kubeling.v1 import proxy_pb2

SERVICE_NAME: str = proxy_pb2.DESCRIPTOR.services_by_name["Proxy"].full_name
# kube-proxy's own port number (its metrics port upstream).
DEFAULT_PORT = 10249
_PROTOCOLS = ("TCP", "UDP", "SCTP")
# Who may ask the proxy what it programmed: every role that may read the cluster.
READERS = frozenset({identity.ADMIN, identity.EDIT, identity.VIEW})
MAX_EXPLAIN_WAITING = 16


def may_read(caller: identity.Identity, method: str) -> None:
    """PERMISSION_DENIED unless `caller` is an admin (the master too), edit or view."""
    if caller.role in READERS:
        return
    raise ApiError(
        grpc.StatusCode.PERMISSION_DENIED,
        f"{caller} may not call kubeling.v1.Proxy/{method}: it needs the admin, edit or view role",
    )


class ProxyService:
    """kubeling.v1.Proxy for `proxy`; with `authenticated` (TLS with client
    certificates) only readers of the cluster may call."""

    def __init__(self, proxy: KubeProxy, authenticated: bool = False) -> None:
        self.proxy = proxy
        self.authenticated = authenticated
        self._explainer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="proxy-explain")
        self._explain_slot = asyncio.Semaphore(1)
        self._explain_waiting = 0

    def close(self) -> None:
        self._explainer.shutdown(wait=False, cancel_futures=True)

    def _check(self, context: Context, method: str) -> None:
        if self.authenticated:
            may_read(identity.identity_of(context), method)

    def _unary(
        self,
        method: str,
        fn: Callable[[Any, Context], Awaitable[Any]],
        request: type[Message],
    ) -> grpc.RpcMethodHandler:
        return handlers.unary(fn, request, "proxy", lambda context: self._check(context, method))

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                "Status": self._unary("Status", self.status, proxy_pb2.ProxyStatusRequest),
                "Explain": self._unary("Explain", self.explain, proxy_pb2.ExplainRequest),
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
        if self._explain_waiting >= MAX_EXPLAIN_WAITING:
            raise ApiError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self._explain_waiting} Explain calls are waiting already; try again later",
            )
        self._explain_waiting += 1
        try:
            async with self._explain_slot:
                loop = asyncio.get_running_loop()
                found = await loop.run_in_executor(
                    self._explainer,
                    explain,
                    self.proxy.backend,
                    request.address,
                    request.port,
                    protocol,
                )
        finally:
            self._explain_waiting -= 1
        return proxy_pb2.ExplainResponse(
            verdict=found.verdict,
            service=found.service,
            chain=found.chain,
            endpoints=[proxy_pb2.ExplainEndpoint(address=a, port=p) for a, p in found.endpoints],
            session_affinity=found.session_affinity,
            masquerade=found.masquerade,
            rules=found.rules,
        )


async def serve_proxy_api(
    listen: str, proxy: KubeProxy, credentials: CredentialDir | None = None
) -> rpc.Server:
    """Serve kubeling.v1.Proxy on `listen`: TLS from `credentials` (re-read after
    renewal) to readers of the cluster; without, plaintext (loopback only)."""
    service = ProxyService(proxy, authenticated=credentials is not None)
    tls = rpc.ServerTls(credentials) if credentials is not None else None
    server = rpc.Server(listen, [service.handler()], [SERVICE_NAME], tls=tls)
    await server.start()
    return server
