"""Request limits of the master's API, as kube-apiserver's `--max-requests-inflight`:

- at most `max_inflight` short requests (every unary call but Exec) are served at
  once, in total; one more is answered RESOURCE_EXHAUSTED "too many requests in
  flight, retry later" (Kubernetes' 429) instead of queueing without bound;
- at most `max_inflight_per_client` of them from one client, so that one caller
  (a runaway script, a hostile node) cannot take every slot from the others;
- at most `max_watches` Watch streams are open per client; the next one is refused
  the same way. Long-running calls (watches, log streams, exec) do not count as in
  flight, as in Kubernetes;
- at most `max_sessions` pod sessions (Logs, Exec, ExecStream, Attach, PortForward:
  each holds a call to a kubelet and its buffers) are open per client — beyond
  Kubernetes, which bounds them only by connection limits, so that one client
  cannot pile up kubelet streams without end.

A client is keyed by the identity in its certificate (`identity_key`) when the
master serves TLS, by its peer host (`peer_host`) when it does not. 0 disables a
limit. Everything runs on the server's one event loop, so plain counters suffice.
"""

from __future__ import annotations

import contextlib
import functools
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from kubeling.common import identity, peer

DEFAULT_MAX_REQUESTS_INFLIGHT = 400
DEFAULT_MAX_WATCHES_PER_CLIENT = 100
DEFAULT_MAX_REQUESTS_INFLIGHT_PER_CLIENT = 200
DEFAULT_MAX_SESSIONS_PER_CLIENT = 64

# Unary methods that may legitimately run for minutes.
LONG_RUNNING_UNARY = frozenset({"Exec"})
# The Pods service's calls that go on to a kubelet and stay open.
POD_SESSIONS = frozenset({"Logs", "Exec", "ExecStream", "Attach", "PortForward"})

ClientKey = Callable[[Any], str]
Slot = Callable[[Any], contextlib.AbstractAsyncContextManager[None]]


def peer_host(context: Any) -> str:
    """The host part of the caller's address: "ipv4:10.0.0.5:51000" -> "10.0.0.5",
    "ipv6:[::1]:51000" -> "::1"; a unix socket peer is keyed as a whole."""
    return peer.peer_host(str(context.peer() or ""))


def identity_key(context: Any) -> str:
    """The user of the caller's certificate (one key for all of a node's connections)."""
    return identity.identity_of(context).user


class RequestLimits:
    def __init__(
        self,
        max_inflight: int = DEFAULT_MAX_REQUESTS_INFLIGHT,
        max_watches: int = DEFAULT_MAX_WATCHES_PER_CLIENT,
        client_key: ClientKey = peer_host,
        max_inflight_per_client: int = 0,
        max_sessions: int = DEFAULT_MAX_SESSIONS_PER_CLIENT,
    ) -> None:
        self.max_inflight = max_inflight
        self.max_watches = max_watches
        self.client_key = client_key
        self.max_inflight_per_client = max_inflight_per_client
        self.inflight = 0
        self.inflight_by_client: Counter[str] = Counter()
        self.max_sessions = max_sessions
        self.watches: Counter[str] = Counter()
        self.sessions: Counter[str] = Counter()

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        """`handler` (gRPC method `method`) with the limit that applies to it."""
        if handler.unary_unary is not None and method not in LONG_RUNNING_UNARY:
            return grpc.unary_unary_rpc_method_handler(
                self._counted(handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None and method == "Watch":
            return grpc.unary_stream_rpc_method_handler(
                self._per_client(handler.unary_stream, self._watch_slot),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if method in POD_SESSIONS and self.max_sessions:
            if handler.unary_unary is not None:
                return grpc.unary_unary_rpc_method_handler(
                    self._one_session(handler.unary_unary),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                )
            if handler.unary_stream is not None:
                return grpc.unary_stream_rpc_method_handler(
                    self._per_client(handler.unary_stream, self._session_slot),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                )
            if handler.stream_stream is not None:
                return grpc.stream_stream_rpc_method_handler(
                    self._per_client(handler.stream_stream, self._session_slot),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                )
        return handler

    def _counted(
        self, fn: Callable[[Any, Any], Awaitable[Any]]
    ) -> Callable[[Any, Any], Awaitable[Any]]:
        @functools.wraps(fn)
        async def call(request: Any, context: Any) -> Any:
            if self.max_inflight and self.inflight >= self.max_inflight:
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED, "too many requests in flight, retry later"
                )
            key = self.client_key(context) if self.max_inflight_per_client else ""
            if key and self.inflight_by_client[key] >= self.max_inflight_per_client:
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"too many requests in flight from {key} (limit "
                    f"{self.max_inflight_per_client}), retry later",
                )
            self.inflight += 1
            if key:
                self.inflight_by_client[key] += 1
            try:
                return await fn(request, context)
            finally:
                self.inflight -= 1
                if key:
                    self.inflight_by_client[key] -= 1
                    if not self.inflight_by_client[key]:
                        del self.inflight_by_client[key]

        return call

    @contextlib.asynccontextmanager
    async def _watch_slot(self, context: Any) -> AsyncIterator[None]:
        async with self._slot(
            context, self.watches, self.max_watches, "watches", "close some and retry"
        ):
            yield

    @contextlib.asynccontextmanager
    async def _session_slot(self, context: Any) -> AsyncIterator[None]:
        async with self._slot(
            context, self.sessions, self.max_sessions, "pod sessions (logs, exec, "
            "attach, port-forward)", "end some and retry"
        ):  # fmt: skip
            yield

    @contextlib.asynccontextmanager
    async def _slot(
        self, context: Any, open_now: Counter[str], limit: int, what: str, advice: str
    ) -> AsyncIterator[None]:
        """One of `limit` slots of this client in `open_now`, held while the call runs."""
        key = self.client_key(context)
        if limit and open_now[key] >= limit:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"too many {what} open from {key} (limit {limit}); {advice}",
            )
        open_now[key] += 1
        try:
            yield
        finally:
            open_now[key] -= 1
            if not open_now[key]:
                del open_now[key]

    def _per_client(
        self, fn: Callable[[Any, Any], AsyncIterator[Any]], slot: Slot
    ) -> Callable[[Any, Any], AsyncIterator[Any]]:
        @functools.wraps(fn)
        async def call(request: Any, context: Any) -> AsyncIterator[Any]:
            async with slot(context):
                async for item in fn(request, context):
                    yield item

        return call

    def _one_session(
        self, fn: Callable[[Any, Any], Awaitable[Any]]
    ) -> Callable[[Any, Any], Awaitable[Any]]:
        @functools.wraps(fn)
        async def call(request: Any, context: Any) -> Any:
            async with self._session_slot(context):
                return await fn(request, context)

        return call
