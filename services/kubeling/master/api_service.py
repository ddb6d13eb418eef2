"""gRPC handlers: one service per kind (kubeling.v1.Pods, ...), all served by the
same generic code over the kind's Registry.

Errors leave as gRPC statuses (ApiError carries the code and the BadRequest field
violations); anything unexpected is logged and returned as INTERNAL, and the
server carries on.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import structlog
from google.protobuf.message import DecodeError, Message

from kubeling.api.errors import ApiError
from kubeling.master.registry import Registry, WatchItem
from kubeling.master.store.base import WatchClosedError
from kubeling.v1 import meta_pb2

log = structlog.get_logger(__name__)

# grpc ships no type information: the servicer context is typed loosely.
Context = Any


@dataclass(frozen=True)
class _Malformed:
    """A request whose bytes did not parse; answered with INVALID_ARGUMENT."""

    message_name: str
    error: str

    def to_error(self) -> ApiError:
        return ApiError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"request is not a valid {self.message_name}: {self.error}",
        )


def _deserializer(message: type[Message]) -> Callable[[bytes], Message | _Malformed]:
    def parse(data: bytes) -> Message | _Malformed:
        try:
            return message.FromString(data)
        except DecodeError as exc:
            return _Malformed(message.DESCRIPTOR.full_name, str(exc))

    return parse


def _unary(
    fn: Callable[[Any, Context], Awaitable[Message]],
) -> Callable[[Any, Context], Awaitable[Message]]:
    @functools.wraps(fn)
    async def handler(request: Any, context: Context) -> Message:
        try:
            if isinstance(request, _Malformed):
                raise request.to_error()
            return await fn(request, context)
        except ApiError as exc:
            await context.abort_with_status(exc.to_status())
        except Exception:
            log.exception("request failed", method=fn.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the master log")
        raise AssertionError("unreachable")

    return handler


class ResourceService:
    """Create/Get/List/Update/UpdateStatus/Delete/Watch for one kind."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.kind = registry.kind

    def handler(self, extra: dict[str, Any] | None = None) -> grpc.GenericRpcHandler:
        """The kind's service; `extra` adds methods beyond CRUD and Watch (e.g. the
        Pods service's Logs and Exec, which go to a kubelet)."""
        kind = self.kind
        unary: dict[str, tuple[Callable[[Any, Context], Awaitable[Message]], type[Message]]] = {
            "Create": (self.create, kind.create_request),
            "Get": (self.get, meta_pb2.GetRequest),
            "List": (self.list, meta_pb2.ListRequest),
            "Update": (self.update, kind.update_request),
            "Delete": (self.delete, meta_pb2.DeleteRequest),
        }
        if kind.has_status:
            unary["UpdateStatus"] = (self.update_status, kind.update_request)
        methods: dict[str, grpc.RpcMethodHandler] = {
            name: grpc.unary_unary_rpc_method_handler(
                _unary(fn),
                request_deserializer=_deserializer(request),
                response_serializer=_serialize,
            )
            for name, (fn, request) in unary.items()
        }
        methods["Watch"] = grpc.unary_stream_rpc_method_handler(
            self.watch,
            request_deserializer=_deserializer(meta_pb2.WatchRequest),
            response_serializer=_serialize,
        )
        methods.update(extra or {})
        return grpc.method_handlers_generic_handler(kind.service, methods)

    def _object(self, request: Any) -> Message:
        field = self.kind.request_field
        if not request.HasField(field):
            raise ApiError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{field}: Required value: the request carries no {self.kind.name}",
            )
        return getattr(request, field)  # type: ignore[no-any-return]

    async def create(self, request: Any, context: Context) -> Message:
        return await self.registry.create(self._object(request))

    async def get(self, request: meta_pb2.GetRequest, context: Context) -> Message:
        return self.registry.get(request.namespace, request.name)

    async def list(self, request: meta_pb2.ListRequest, context: Context) -> Message:
        items, rev, token = self.registry.list_objects(
            request.namespace,
            request.label_selector,
            request.field_selector,
            request.limit,
            request.continue_token,
        )
        result = self.kind.list_message()
        result.metadata.resource_version = rev  # type: ignore[attr-defined]
        result.metadata.continue_token = token  # type: ignore[attr-defined]
        result.items.extend(items)  # type: ignore[attr-defined]
        return result

    async def update(self, request: Any, context: Context) -> Message:
        return await self.registry.update(self._object(request))

    async def update_status(self, request: Any, context: Context) -> Message:
        return await self.registry.update_status(self._object(request))

    async def delete(self, request: meta_pb2.DeleteRequest, context: Context) -> Message:
        return await self.registry.delete(
            request.namespace,
            request.name,
            request.grace_period_seconds if request.HasField("grace_period_seconds") else None,
            request.preconditions.uid,
            request.preconditions.resource_version,
            request.propagation_policy,
        )

    async def watch(
        self, request: meta_pb2.WatchRequest | _Malformed, context: Context
    ) -> AsyncIterator[bytes | Message]:
        try:
            if isinstance(request, _Malformed):
                raise request.to_error()
            stream = await self.registry.watch(
                request.namespace,
                request.label_selector,
                request.field_selector,
                request.resource_version,
            )
        except ApiError as exc:
            await context.abort_with_status(exc.to_status())
            return
        encode = _EventEncoder(self.kind.watch_event)
        try:
            async for item in stream:
                yield encode(item)
        except WatchClosedError as exc:
            await context.abort(grpc.StatusCode.ABORTED, f"watch closed: {exc}")


class _EventEncoder:
    """Serialises watch events once per object and type, shared by all watchers
    (the same stored object is sent to every watcher that selects it)."""

    _cache: dict[tuple[type[Message], str, int], bytes] = {}
    _order: list[tuple[type[Message], str, int]] = []
    _LIMIT = 4096

    def __init__(self, event_type: type[Message]) -> None:
        self._event_type = event_type

    def __call__(self, item: WatchItem) -> bytes:
        key = (self._event_type, item.type, id(item.object))
        data = self._cache.get(key) if item.type != "BOOKMARK" else None
        if data is None:
            event = self._event_type(type=item.type, object=item.object)
            data = event.SerializeToString()
            if item.type != "BOOKMARK":
                self._remember(key, data, item.object)
        return data

    def _remember(self, key: tuple[type[Message], str, int], data: bytes, obj: Message) -> None:
        # id() is only unique while the object lives: keep a reference with it.
        self._cache[key] = data
        _alive[key] = obj
        self._order.append(key)
        if len(self._order) > self._LIMIT:
            old = self._order.pop(0)
            self._cache.pop(old, None)
            _alive.pop(old, None)


_alive: dict[tuple[type[Message], str, int], Message] = {}


def _serialize(message: bytes | Message) -> bytes:
    return message if isinstance(message, bytes) else message.SerializeToString()
