"""gRPC handlers: one service per kind (kubeling.v1.Pods, ...), all served by the
same generic code over the kind's Registry.

Errors leave as gRPC statuses (ApiError carries the code and the BadRequest field
violations); a write the store could not make (its writer failed or is restarting)
is UNAVAILABLE with the store's reason; anything unexpected is logged and returned
as INTERNAL, and the server carries on. Every method is counted and timed
(master/metrics.py).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import structlog
from google.protobuf.message import Message

from kubeling.api.errors import ApiError
from kubeling.common import handlers
from kubeling.common.handlers import Context
from kubeling.master.authz import Authorizer
from kubeling.master.limits import RequestLimits
from kubeling.master.metrics import instrument
from kubeling.master.registry import Registry, WatchItem
from kubeling.master.store.base import (
    WatchClosedError,
)
from kubeling.v1 import meta_pb2

log = structlog.get_logger(__name__)


class ResourceService:
    """Create/Get/List/Update/UpdateStatus/Delete/Watch for one kind."""

    def __init__(
        self,
        registry: Registry,
        limits: RequestLimits | None = None,
        authz: Authorizer | None = None,
    ) -> None:
        self.registry = registry
        self.kind = registry.kind
        self.limits = limits
        self.authz = authz

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
            name: handlers.unary(fn, request, "master") for name, (fn, request) in unary.items()
        }
        methods["Watch"] = grpc.unary_stream_rpc_method_handler(
            self.watch,
            request_deserializer=handlers.parser(meta_pb2.WatchRequest),
            response_serializer=handlers.serialize,
        )
        methods.update(extra or {})
        if self.authz is not None:  # innermost: its refusals are limited and counted too
            methods = self.authz.wrap_kind(kind, methods)
        if self.limits is not None:  # inside instrument: refusals are counted too
            methods = {name: self.limits.wrap(h, name) for name, h in methods.items()}
        counted = {name: instrument(h, name, kind.plural) for name, h in methods.items()}
        return grpc.method_handlers_generic_handler(kind.service, counted)

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

    async def _catch_up(self, resource_version: str = "", continue_token: str = "") -> None:
        """Before a read: with several masters on one store, make this master's cache
        hold every write acknowledged anywhere before the call (a consistent read,
        as Kubernetes' Get/List without resourceVersion are), or at least the asked
        revision. resourceVersion "0" means any state will do."""
        store = self.registry.store
        if continue_token:
            return  # a continued list reads at the revision of its first page
        if resource_version == "0":
            return
        if resource_version.isdigit() and int(resource_version) <= store.revision:
            return
        await store.wait_consistent()

    async def get(self, request: meta_pb2.GetRequest, context: Context) -> Message:
        await self._catch_up()
        return self.registry.get(request.namespace, request.name)

    async def list(self, request: meta_pb2.ListRequest, context: Context) -> Message:
        await self._catch_up(request.resource_version, request.continue_token)
        items, rev, token = self.registry.list_objects(
            request.namespace,
            request.label_selector,
            request.field_selector,
            request.limit,
            request.continue_token,
            request.resource_version,
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
        self, request: meta_pb2.WatchRequest | handlers.Malformed, context: Context
    ) -> AsyncIterator[bytes | Message]:
        try:
            if isinstance(request, handlers.Malformed):
                raise request.to_error()
            await self._catch_up(request.resource_version)
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

    # (event type, watch event kind, id(object)) -> (object, bytes). The object is
    # kept so its id() is not reused while the entry lives; oldest entries go first.
    _cache: OrderedDict[tuple[Callable[..., Message], str, int], tuple[Message, bytes]] = (
        OrderedDict()
    )
    _LIMIT = 4096

    def __init__(self, event_type: type[Message]) -> None:
        # Each kind's WatchEvent has `type` and `object` fields; the base Message's
        # constructor stub knows no fields, so keep the constructor loosely typed.
        self._event_type: Callable[..., Message] = event_type

    def __call__(self, item: WatchItem) -> bytes:
        if item.type == "BOOKMARK":  # made per watcher, never shared
            return self._event_type(type=item.type, object=item.object).SerializeToString()
        key = (self._event_type, item.type, id(item.object))
        cached = self._cache.get(key)
        if cached is not None:
            return cached[1]
        data = self._event_type(type=item.type, object=item.object).SerializeToString()
        self._cache[key] = (item.object, data)
        if len(self._cache) > self._LIMIT:
            self._cache.popitem(last=False)
        return data
