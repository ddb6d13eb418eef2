"""The Pods service's Logs and Exec: found on the master, answered by the kubelet.

The master looks up the pod and its node, then forwards the call to that node's
kubeling.v1.Kubelet API (as the Kubernetes API server proxies to port 10250).
Messages pass through as bytes; the kubelet's errors reach the caller unchanged.
With TLS the master presents its own client certificate (`kubeling:master`, the
only identity a kubelet's API accepts) and checks that the kubelet's certificate
names the node (`system:node:NAME` certificates carry NAME as a DNS SAN): a Node
whose addresses point elsewhere gets no call through. Without TLS (a master on
loopback, --insecure) the kubelet is dialled in plaintext.
Channels to kubelets are kept for reuse in a bounded cache (`ChannelCache`), keyed
by (address, node name, credentials): the
least recently used idle one is closed beyond `max_size`, and any left idle for
`idle_timeout` is closed at the next call, so nodes that come and go leave nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Hashable
from dataclasses import dataclass
from typing import Any, cast

import grpc
import structlog

from kubeling.api.errors import ApiError
from kubeling.common import handlers, rpc
from kubeling.common.handlers import Context
from kubeling.common.tls import Credentials
from kubeling.master.registry import Registry
from kubeling.v1 import core_pb2, kubelet_pb2

__all__ = [
    "DEFAULT_KUBELET_PORT",
    "ChannelCache",
    "PodProxy",
    "kubelet_address",
]

log = structlog.get_logger(__name__)

DEFAULT_KUBELET_PORT = 10250
_KUBELET = "/" + kubelet_pb2.DESCRIPTOR.services_by_name["Kubelet"].full_name + "/"
_CODE = grpc.StatusCode
_NO_DEADLINE = 365 * 24 * 3600.0
# Carries the rich status (e.g. BadRequest field violations) of a kubelet error.
_STATUS_DETAILS = "grpc-status-details-bin"


# Seconds between the two stats samples CPU usage is computed from.
TOP_WINDOW = 1.0


def kubelet_address(node: core_pb2.Node) -> str:
    """HOST:PORT of a node's kubelet API, from the addresses its kubelet reported."""
    by_type = {a.type: a.address for a in node.status.addresses if a.address}
    host = by_type.get("InternalIP") or by_type.get("Hostname")
    if not host:
        raise ApiError(
            _CODE.UNAVAILABLE,
            f'node "{node.metadata.name}" reports no InternalIP or Hostname address '
            "for its kubelet",
        )
    port = node.status.daemon_endpoints.kubelet_endpoint.port or DEFAULT_KUBELET_PORT
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass
class _Cached:
    channel: grpc.aio.Channel
    last_used: float
    in_use: int = 0


# What a channel is kept under: an address, or (address, node name) with TLS.
CacheKey = Hashable


class ChannelCache:
    """Channels by key (an address, or an address and the name its certificate must
    carry), reused while in use and recently used; a channel with a call in flight
    (a followed log) is never closed under it."""

    def __init__(
        self,
        make: Callable[[Any], grpc.aio.Channel] = rpc.channel,
        max_size: int = 64,
        idle_timeout: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._make = make
        self.max_size = max_size
        self.idle_timeout = idle_timeout
        self._clock = clock
        self._cached: OrderedDict[CacheKey, _Cached] = OrderedDict()  # least recently used first

    def __len__(self) -> int:
        return len(self._cached)

    def __contains__(self, address: object) -> bool:
        return address in self._cached

    @contextlib.asynccontextmanager
    async def use(self, address: CacheKey) -> AsyncIterator[grpc.aio.Channel]:
        """The channel for `address` (a cache key), held for the block."""
        await self._evict(keep=address)
        cached = self._cached.get(address)
        if cached is None:
            cached = self._cached[address] = _Cached(self._make(address), self._clock())
        self._cached.move_to_end(address)
        cached.in_use += 1
        try:
            yield cached.channel
        finally:
            cached.in_use -= 1
            cached.last_used = self._clock()

    async def _evict(self, keep: CacheKey) -> None:
        now = self._clock()
        excess = len(self._cached) + (keep not in self._cached) - self.max_size
        idle = [(a, c) for a, c in self._cached.items() if not c.in_use and a != keep]
        doomed = [a for a, c in idle if now - c.last_used >= self.idle_timeout]
        for address, _ in idle:
            if len(doomed) >= excess:
                break
            if address not in doomed:
                doomed.append(address)
        for address in doomed:
            await self._cached.pop(address).channel.close()

    async def close(self) -> None:
        cached, self._cached = self._cached, OrderedDict()
        for entry in cached.values():
            await entry.channel.close()


class PodProxy:
    """`methods()` are added to the Pods service (Master.extra_methods["Pod"])."""

    def __init__(
        self, pods: Registry, nodes: Registry, credentials: Credentials | None = None
    ) -> None:
        """`credentials`: the master's client identity and the cluster CA (None:
        plaintext, for a master without TLS)."""
        self.pods = pods
        self.nodes = nodes
        self.credentials = credentials
        # One channel per kubelet and credentials, reused by the calls to it.
        self.channels = ChannelCache(self._dial)

    def use_credentials(self, credentials: Credentials) -> None:
        """Dial with renewed credentials from now on; channels made with the old
        ones are left to their calls and closed once idle."""
        self.credentials = credentials

    def _key(self, address: str, node: str) -> CacheKey:
        return (address, node, self.credentials)

    @staticmethod
    def _dial(key: CacheKey) -> grpc.aio.Channel:
        address, node, credentials = cast(tuple[str, str, Credentials | None], key)
        if credentials is None:
            return rpc.channel(address)
        # The kubelet's certificate must name its node, whatever address it has.
        return rpc.channel(address, credentials=credentials.with_server_name(node))

    def methods(self) -> dict[str, grpc.RpcMethodHandler]:
        return {
            "Logs": grpc.unary_stream_rpc_method_handler(
                self.logs,
                request_deserializer=handlers.parser(core_pb2.PodLogsRequest),
                response_serializer=None,  # the kubelet's bytes, passed on as they are
            ),
            "Exec": grpc.unary_unary_rpc_method_handler(
                self.exec,
                request_deserializer=handlers.parser(core_pb2.PodExecRequest),
                response_serializer=None,
            ),
            "ExecStream": grpc.stream_stream_rpc_method_handler(
                self.exec_stream,
                request_deserializer=handlers.parser(core_pb2.ExecStreamRequest),
                response_serializer=None,
            ),
            "Attach": grpc.stream_stream_rpc_method_handler(
                self.attach,
                request_deserializer=handlers.parser(core_pb2.ExecStreamRequest),
                response_serializer=None,
            ),
            "PortForward": grpc.stream_stream_rpc_method_handler(
                self.port_forward,
                request_deserializer=handlers.parser(core_pb2.PortForwardRequest),
                response_serializer=None,
            ),
            "Top": grpc.unary_unary_rpc_method_handler(
                self.top,
                request_deserializer=handlers.parser(core_pb2.PodTopRequest),
                response_serializer=handlers.serialize,
            ),
        }

    async def close(self) -> None:
        await self.channels.close()

    def _target(self, namespace: str, name: str) -> tuple[str, str]:
        """(node name, kubelet address) of the pod, or the error to answer with."""
        pod = cast(core_pb2.Pod, self.pods.get(namespace, name))
        node_name = pod.spec.node_name
        if not node_name:
            raise ApiError(
                _CODE.FAILED_PRECONDITION, f'pod "{name}" is not scheduled yet (no node assigned)'
            )
        node = cast(core_pb2.Node, self.nodes.get("", node_name))
        return node_name, kubelet_address(node)

    async def logs(
        self, request: core_pb2.PodLogsRequest | handlers.Malformed, context: Context
    ) -> AsyncIterator[bytes]:
        try:
            if isinstance(request, handlers.Malformed):
                raise request.to_error()
            request.namespace = request.namespace or "default"
            node, address = self._target(request.namespace, request.name)
        except ApiError as exc:
            await context.abort_with_status(exc.to_status())
            return
        async with self.channels.use(self._key(address, node)) as channel:
            call = channel.unary_stream(
                _KUBELET + "Logs", request_serializer=handlers.serialize, response_deserializer=None
            )(request)
            try:
                async for data in call:
                    yield data
            except grpc.aio.AioRpcError as exc:
                await self._abort(context, exc, node, address)
            finally:
                # The caller went away (or we are done): stop the kubelet's stream too.
                call.cancel()

    async def exec(
        self, request: core_pb2.PodExecRequest | handlers.Malformed, context: Context
    ) -> bytes:
        try:
            if isinstance(request, handlers.Malformed):
                raise request.to_error()
            request.namespace = request.namespace or "default"
            node, address = self._target(request.namespace, request.name)
        except ApiError as exc:
            await context.abort_with_status(exc.to_status())
            raise AssertionError("unreachable") from None
        remaining = context.time_remaining()
        # The caller's deadline, if any, bounds the kubelet call too (no deadline
        # shows as None or as a practically infinite time).
        timeout = remaining if remaining is not None and remaining < _NO_DEADLINE else None
        async with self.channels.use(self._key(address, node)) as channel:
            call = channel.unary_unary(
                _KUBELET + "Exec", request_serializer=handlers.serialize, response_deserializer=None
            )
            try:
                return cast(bytes, await call(request, timeout=timeout))
            except grpc.aio.AioRpcError as exc:
                await self._abort(context, exc, node, address)
                raise AssertionError("unreachable") from None

    async def exec_stream(
        self, requests: AsyncIterator[Any], context: Context
    ) -> AsyncIterator[bytes]:
        # An async generator function, as gRPC requires of a streaming handler.
        async for data in self._relay("ExecStream", requests, context):
            yield data

    async def attach(self, requests: AsyncIterator[Any], context: Context) -> AsyncIterator[bytes]:
        # An async generator function, as gRPC requires of a streaming handler.
        async for data in self._relay("Attach", requests, context):
            yield data

    async def port_forward(
        self, requests: AsyncIterator[Any], context: Context
    ) -> AsyncIterator[bytes]:
        # An async generator function, as gRPC requires of a streaming handler.
        async for data in self._relay("PortForward", requests, context):
            yield data

    async def _relay(
        self, method: str, requests: AsyncIterator[Any], context: Context
    ) -> AsyncIterator[bytes]:
        """Relay a bidirectional session to the kubelet of the pod `start` names."""
        try:
            first = await handlers.start_message(requests)
            start = first.start
            start.namespace = start.namespace or "default"
            node, address = self._target(start.namespace, start.name)
        except ApiError as exc:
            await context.abort_with_status(exc.to_status())
            return
        async with self.channels.use(self._key(address, node)) as channel:
            call = channel.stream_stream(
                _KUBELET + method, request_serializer=handlers.serialize, response_deserializer=None
            )()

            async def forward() -> None:
                await call.write(first)
                async for request in requests:
                    if isinstance(request, handlers.Malformed):
                        continue  # nothing sensible to pass on
                    await call.write(request)
                await call.done_writing()

            pump = asyncio.create_task(forward())
            try:
                # The kubelet's headers say its session is open: pass that on, so the
                # caller starts writing only then (a write racing a refusal would
                # hide the refusal's status behind gRPC's "Internal error from Core").
                await call.initial_metadata()
                if not call.done():
                    await context.send_initial_metadata(())
                async for data in call:
                    yield data
            except grpc.aio.AioRpcError as exc:
                await self._abort(context, exc, node, address)
            finally:
                # Whichever side ended (or the caller went), the other ends too.
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pump
                call.cancel()

    async def top(
        self, request: core_pb2.PodTopRequest | handlers.Malformed, context: Context
    ) -> core_pb2.PodTopResponse:
        try:
            if isinstance(request, handlers.Malformed):
                raise request.to_error()
            field = f"metadata.name={request.name}" if request.name else ""
            pods, _, _ = self.pods.list_objects(request.namespace, request.label_selector, field)
            by_node: dict[str, set[tuple[str, str]]] = {}
            for pod in cast(list[core_pb2.Pod], pods):
                if pod.spec.node_name and pod.status.phase == "Running":
                    by_node.setdefault(pod.spec.node_name, set()).add(
                        (pod.metadata.namespace, pod.metadata.name)
                    )
            if request.name and not pods:
                raise ApiError(_CODE.NOT_FOUND, f'pods "{request.name}" not found')
        except ApiError as exc:
            await context.abort_with_status(exc.to_status())
            raise AssertionError("unreachable") from None
        stats_request = kubelet_pb2.StatsRequest(namespace=request.namespace, name=request.name)
        results = await asyncio.gather(
            *(self._node_usage(node, stats_request, wanted) for node, wanted in by_node.items())
        )
        reply = core_pb2.PodTopResponse()
        for node, usage in zip(by_node, results, strict=True):
            if usage is None:
                reply.unreachable_nodes.append(node)
            else:
                reply.containers.extend(usage)
        return reply

    async def _node_usage(
        self, node: str, request: kubelet_pb2.StatsRequest, wanted: set[tuple[str, str]]
    ) -> list[core_pb2.ContainerUsage] | None:
        """The usage of `wanted` pods' containers on `node`; None if unreachable."""
        try:
            address = kubelet_address(cast(core_pb2.Node, self.nodes.get("", node)))
        except ApiError:
            return None
        try:
            async with self.channels.use(self._key(address, node)) as channel:
                stats = channel.unary_unary(
                    _KUBELET + "Stats",
                    request_serializer=handlers.serialize,
                    response_deserializer=kubelet_pb2.StatsResponse.FromString,
                )
                first = await stats(request, timeout=10)
                second = first
                if any(not e.cpu_usage_nano_cores for e in first.containers):
                    await asyncio.sleep(TOP_WINDOW)
                    second = await stats(request, timeout=10)
        except grpc.aio.AioRpcError as exc:
            log.warning("kubelet stats failed", node=node, error=exc.details())
            return None
        before = {e.container_id: e for e in first.containers}
        usage = []
        for entry in second.containers:
            if (entry.namespace, entry.pod) not in wanted:
                continue
            cpu = entry.cpu_usage_nano_cores / 1e6
            earlier = before.get(entry.container_id)
            if not entry.cpu_usage_nano_cores and earlier is not None:
                elapsed = entry.timestamp.ToNanoseconds() - earlier.timestamp.ToNanoseconds()
                used = entry.cpu_usage_core_nano_seconds - earlier.cpu_usage_core_nano_seconds
                cpu = used / elapsed * 1000 if elapsed > 0 and used >= 0 else 0.0
            usage.append(
                core_pb2.ContainerUsage(
                    namespace=entry.namespace,
                    pod=entry.pod,
                    container=entry.container,
                    node_name=node,
                    cpu_millicores=round(cpu),
                    memory_working_set_bytes=entry.memory_working_set_bytes,
                )
            )
        return usage

    async def _abort(
        self, context: Context, exc: grpc.aio.AioRpcError, node: str, address: str
    ) -> None:
        if exc.code() == _CODE.UNAVAILABLE:
            log.warning("kubelet unreachable", node=node, address=address, error=exc.details())
            await context.abort(
                _CODE.UNAVAILABLE,
                f'cannot reach the kubelet of node "{node}" at {address}: {exc.details()}',
            )
        # Anything the kubelet said (NOT_FOUND, INVALID_ARGUMENT, ...) goes back as is.
        details = tuple((k, v) for k, v in exc.trailing_metadata() or () if k == _STATUS_DETAILS)
        await context.abort(exc.code(), exc.details() or "", details)
