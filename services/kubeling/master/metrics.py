"""The master's own Prometheus series, under Kubernetes' names where they exist.

- `apiserver_request_total{verb,resource,subresource,code}` and
  `apiserver_request_duration_seconds{verb,resource,subresource}`: every API call,
  with the verb as Kubernetes says it (create, get, list, update, delete, watch;
  UpdateStatus is `update` of subresource `status`, Bind `create` of `binding`)
  and `code` the gRPC status name (OK, NOT_FOUND, ...) where Kubernetes has the
  HTTP code. Long-running calls (watch, log streams) are counted when they end
  and shown while open in `apiserver_longrunning_requests`.
- `kubeling_storage_commit_duration_seconds` and `kubeling_storage_commit_group_size`:
  each SQLite group commit (one transaction, one fsync) and how many writes it held.

The controllers', scheduler's and leader election's series are defined beside their
code (client/informer.py, scheduler/scheduler.py, controllers/leaderelection.py);
one process, one registry, so /metrics shows them all.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import Counter, Gauge, Histogram

# kube-apiserver's buckets for apiserver_request_duration_seconds.
_REQUEST_BUCKETS = (
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2, 3, 4, 5, 6, 8, 10,
    15, 20, 30, 45, 60,
)  # fmt: skip

REQUESTS = Counter(
    "apiserver_request",
    "API requests by verb, resource, subresource and gRPC status code",
    ["verb", "resource", "subresource", "code"],
)
REQUEST_DURATION = Histogram(
    "apiserver_request_duration_seconds",
    "API request latency (not for long-running requests such as watch)",
    ["verb", "resource", "subresource"],
    buckets=_REQUEST_BUCKETS,
)
LONGRUNNING = Gauge(
    "apiserver_longrunning_requests",
    "Long-running API requests (watches, log streams) now open",
    ["verb", "resource", "subresource"],
)
STORAGE_COMMIT_DURATION = Histogram(
    "kubeling_storage_commit_duration_seconds",
    "Time to commit one group of writes to the store (one transaction and fsync)",
    buckets=(0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1, 2),
)
STORAGE_DECODE_ERRORS = Counter(
    "kubeling_storage_decode_errors_total",
    "Stored values this master could not decode (damaged, or a Secret under a key it "
    "does not hold): left out of its cache and logged with their key",
)
STORAGE_GROUP_SIZE = Histogram(
    "kubeling_storage_commit_group_size",
    "Writes committed together in one group",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)

# gRPC method -> (Kubernetes verb, subresource).
METHOD_VERBS: dict[str, tuple[str, str]] = {
    "Create": ("create", ""),
    "Get": ("get", ""),
    "List": ("list", ""),
    "Update": ("update", ""),
    "UpdateStatus": ("update", "status"),
    "Delete": ("delete", ""),
    "Watch": ("watch", ""),
    "Bind": ("create", "binding"),
    "Logs": ("get", "log"),
    "Exec": ("create", "exec"),
    "ExecStream": ("create", "exec"),
    "Attach": ("create", "attach"),
    "PortForward": ("create", "portforward"),
    "Top": ("get", "metrics"),
}


def _code(context: Any, error: BaseException | None) -> str:
    """The status a call ended with: what the handler set or aborted with, else OK
    (or CANCELLED / UNKNOWN when it ended by an exception that set nothing)."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    if isinstance(code, int):
        for status in grpc.StatusCode:
            if status.value[0] == code:
                return str(status.name)
    if error is None:
        return "OK"
    return "CANCELLED" if isinstance(error, asyncio.CancelledError) else "UNKNOWN"


def instrument(handler: grpc.RpcMethodHandler, method: str, resource: str) -> grpc.RpcMethodHandler:
    """`handler` (unary, server- or bidi-streaming) with its calls counted and timed as
    `method` (a gRPC method name, see METHOD_VERBS) on `resource` (a plural kind)."""
    verb, subresource = METHOD_VERBS.get(method, (method.lower(), ""))
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            _timed_unary(handler.unary_unary, verb, resource, subresource),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            _counted_stream(handler.unary_stream, verb, resource, subresource),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.stream_stream is not None:  # exec -it, attach, port-forward sessions
        return grpc.stream_stream_rpc_method_handler(
            _counted_stream(handler.stream_stream, verb, resource, subresource),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return handler


def _timed_unary(
    fn: Callable[[Any, Any], Awaitable[Any]], verb: str, resource: str, subresource: str
) -> Callable[[Any, Any], Awaitable[Any]]:
    duration = REQUEST_DURATION.labels(verb, resource, subresource)
    # The counter of each status code, looked up once (labels() is a locked lookup).
    by_code: dict[str, Any] = {}

    @functools.wraps(fn)
    async def call(request: Any, context: Any) -> Any:
        started = time.perf_counter()
        error: BaseException | None = None
        try:
            return await fn(request, context)
        except BaseException as exc:  # an abort is an exception too: record, re-raise
            error = exc
            raise
        finally:
            duration.observe(time.perf_counter() - started)
            code = _code(context, error)
            counter = by_code.get(code)
            if counter is None:
                counter = by_code[code] = REQUESTS.labels(verb, resource, subresource, code)
            counter.inc()

    return call


def _counted_stream(
    fn: Callable[[Any, Any], AsyncIterator[Any]], verb: str, resource: str, subresource: str
) -> Callable[[Any, Any], AsyncIterator[Any]]:
    open_now = LONGRUNNING.labels(verb, resource, subresource)

    @functools.wraps(fn)
    async def call(request: Any, context: Any) -> AsyncIterator[Any]:
        open_now.inc()
        error: BaseException | None = None
        try:
            async for item in fn(request, context):
                yield item
        except BaseException as exc:
            error = exc
            raise
        finally:
            open_now.dec()
            REQUESTS.labels(verb, resource, subresource, _code(context, error)).inc()

    return call
