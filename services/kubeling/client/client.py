"""A typed asyncio client: one `ResourceClient` per kind over one channel.

async with Client("localhost:6443") as api:
    pod = await api.pods.get("web", namespace="default")
    async for event in api.pods.watch(namespace="default"):
        print(event.type, event.object.metadata.name)

Several masters: `Client("10.0.0.1:6443,10.0.0.2:6443,10.0.0.3:6443")` is one
channel over all of them (common/targets.py, common/rpc.py): it uses one master
and moves to another when that one's connection breaks. A call that never reached
a master is retried by gRPC itself (transparent retry: nothing was applied). Reads
(Get, List, Watch) are also retried by gRPC's retry policy, with back-off, within
the call's deadline, when they fail UNAVAILABLE (a master killed: its connection
reset) or CANCELLED (what a gRPC server shutting down answers to the calls it had
received but not started). Writes are not: one cut off mid-way may have been
applied, so the caller sees the status and decides (a Create retried meets
AlreadyExists, an Update with a resourceVersion a Conflict). A watch
cut off ends with UNAVAILABLE; informers (client/informer.py) watch again from
their last resourceVersion, on whichever master the channel reaches, and list again
only when that master answers OUT_OF_RANGE (its history does not go back so far).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, TypeVar, cast

import grpc
from google.protobuf.message import Message

from kubeling.api import kinds
from kubeling.api.kinds import Kind
from kubeling.client.config import ConfigError, find_config
from kubeling.common.rpc import channel as make_channel
from kubeling.common.tls import Credentials
from kubeling.v1 import (
    apps_pb2,
    batch_pb2,
    coordination_pb2,
    core_pb2,
    discovery_pb2,
    meta_pb2,
    storage_pb2,
)

T = TypeVar("T", bound=Message)

# gRPC's retry policy for the idempotent calls of every kind (at most 5 attempts
# are honoured by gRPC; see the module's note for the codes); the deadline of the
# call still bounds them all. A call the client cancels itself is never retried.
READ_METHODS = ("Get", "List", "Watch")
READ_RETRY: dict[str, Any] = {
    "name": [{"service": k.service, "method": m} for k in kinds.ALL_KINDS for m in READ_METHODS],
    "retryPolicy": {
        "maxAttempts": 5,
        "initialBackoff": "0.1s",
        "maxBackoff": "2s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE", "CANCELLED"],
    },
}


@dataclass(frozen=True)
class WatchEvent(Generic[T]):
    type: str  # ADDED, MODIFIED, DELETED, BOOKMARK
    object: T

    @property
    def resource_version(self) -> str:
        return cast(str, self.object.metadata.resource_version)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class ListResult(Generic[T]):
    items: list[T]
    resource_version: str
    continue_token: str


class ResourceClient(Generic[T]):
    """Create/Get/List/Update/UpdateStatus/Delete/Watch for one kind."""

    def __init__(self, kind: Kind, channel: grpc.aio.Channel, timeout: float | None) -> None:
        self.kind = kind
        self._timeout = timeout
        self.connect(channel)

    def connect(self, channel: grpc.aio.Channel) -> None:
        """Send the calls from now on over `channel` (the client's credentials changed)."""
        kind = self.kind
        base = f"/{kind.service}/"

        def unary(method: str, response: type[Message]) -> Any:
            return channel.unary_unary(
                base + method,
                request_serializer=_serialize,
                response_deserializer=response.FromString,
            )

        self._create = unary("Create", kind.message)
        self._get = unary("Get", kind.message)
        self._list = unary("List", kind.list_message)
        self._update = unary("Update", kind.message)
        self._update_status = unary("UpdateStatus", kind.message)
        self._delete = unary("Delete", kind.message)
        self._watch = channel.unary_stream(
            base + "Watch",
            request_serializer=_serialize,
            response_deserializer=kind.watch_event.FromString,
        )

    def _wrap(self, obj: T) -> Message:
        return self.kind.create_request(**{self.kind.request_field: obj})

    async def create(self, obj: T) -> T:
        return cast(T, await self._create(self._wrap(obj), timeout=self._timeout))

    async def get(self, name: str, namespace: str = "") -> T:
        request = meta_pb2.GetRequest(namespace=namespace, name=name)
        return cast(T, await self._get(request, timeout=self._timeout))

    async def list_page(
        self,
        namespace: str = "",
        label_selector: str = "",
        field_selector: str = "",
        limit: int = 0,
        continue_token: str = "",
        resource_version: str = "",
    ) -> ListResult[T]:
        request = meta_pb2.ListRequest(
            namespace=namespace,
            label_selector=label_selector,
            field_selector=field_selector,
            limit=limit,
            resource_version=resource_version,
            continue_token=continue_token,
        )
        result: Any = await self._list(request, timeout=self._timeout)
        return ListResult(
            list(result.items), result.metadata.resource_version, result.metadata.continue_token
        )

    async def list(
        self,
        namespace: str = "",
        label_selector: str = "",
        field_selector: str = "",
        page_size: int = 0,
    ) -> ListResult[T]:
        """Every matching object (following continue tokens when paging)."""
        page = await self.list_page(namespace, label_selector, field_selector, page_size)
        items = list(page.items)
        while page.continue_token:
            page = await self.list_page(
                namespace, label_selector, field_selector, page_size, page.continue_token
            )
            items += page.items
        return ListResult(items, page.resource_version, "")

    async def update(self, obj: T) -> T:
        request = self.kind.update_request(**{self.kind.request_field: obj})
        return cast(T, await self._update(request, timeout=self._timeout))

    async def update_status(self, obj: T) -> T:
        request = self.kind.update_request(**{self.kind.request_field: obj})
        return cast(T, await self._update_status(request, timeout=self._timeout))

    async def delete(
        self,
        name: str,
        namespace: str = "",
        grace_period_seconds: int | None = None,
        uid: str = "",
        resource_version: str = "",
        propagation_policy: str = "",
    ) -> T:
        request = meta_pb2.DeleteRequest(
            namespace=namespace,
            name=name,
            preconditions=meta_pb2.Preconditions(uid=uid, resource_version=resource_version),
            propagation_policy=propagation_policy,
        )
        if grace_period_seconds is not None:
            request.grace_period_seconds = grace_period_seconds
        return cast(T, await self._delete(request, timeout=self._timeout))

    async def watch(
        self,
        namespace: str = "",
        label_selector: str = "",
        field_selector: str = "",
        resource_version: str = "",
    ) -> AsyncIterator[WatchEvent[T]]:
        """Changes after resource_version; with none, the current objects as ADDED,
        then a BOOKMARK, then changes. Raises grpc.aio.AioRpcError with OUT_OF_RANGE
        when the version is too old (list again)."""
        request = meta_pb2.WatchRequest(
            namespace=namespace,
            label_selector=label_selector,
            field_selector=field_selector,
            resource_version=resource_version,
        )
        call = self._watch(request)
        try:
            async for event in call:
                type_name = meta_pb2.WatchEventType.Name(event.type)
                yield WatchEvent(type_name, cast(T, event.object))
        finally:
            call.cancel()


class Client:
    def __init__(
        self,
        target: str,
        timeout: float | None = 30.0,
        credentials: Credentials | None = None,
    ) -> None:
        """`target`: HOST:PORT, or several masters HOST:PORT,HOST:PORT,... (see the
        module's note; TargetError for a list that cannot be used). `credentials`:
        TLS with the cluster CA and this client's certificate (client/config.py
        reads them from a config file: `Client.from_config()`); None talks
        plaintext, to a master run without TLS on loopback."""
        self.target = target
        self._timeout = timeout
        self.channel = _channel(target, credentials)
        self._closing: list[asyncio.TimerHandle] = []
        self._bind(timeout)

    @classmethod
    def from_config(cls, path: Path | None = None, timeout: float | None = 30.0) -> Client:
        """A client for the master and identity of a config file (client/config.py:
        the given path, $KUBELING_CONFIG, ~/.kubeling/config, a local master's admin)."""
        config = find_config(path)
        if not config.server:
            where = config.path or "any config file"
            raise ConfigError(f"no server in {where}")
        return cls(config.server, timeout, credentials=config.credentials)

    async def use_credentials(self, credentials: Credentials, grace: float = 30.0) -> None:
        """Switch to new credentials (a renewed certificate): new calls go over a new
        channel; the old one is closed after `grace` seconds for calls in flight
        (its watches end then, and informers start them again)."""
        old = self.channel
        self.channel = _channel(self.target, credentials)
        for resource in self._resources():
            resource.connect(self.channel)
        closing = asyncio.get_running_loop().call_later(
            grace, lambda: asyncio.ensure_future(old.close())
        )
        self._closing.append(closing)

    def _bind(self, timeout: float | None) -> None:
        self.namespaces: ResourceClient[core_pb2.Namespace] = self._make(kinds.NAMESPACE, timeout)
        self.nodes: ResourceClient[core_pb2.Node] = self._make(kinds.NODE, timeout)
        self.pods: ResourceClient[core_pb2.Pod] = self._make(kinds.POD, timeout)
        self.services: ResourceClient[core_pb2.Service] = self._make(kinds.SERVICE, timeout)
        self.events: ResourceClient[core_pb2.Event] = self._make(kinds.EVENT, timeout)
        self.endpoint_slices: ResourceClient[discovery_pb2.EndpointSlice] = self._make(
            kinds.ENDPOINT_SLICE, timeout
        )
        self.replica_sets: ResourceClient[apps_pb2.ReplicaSet] = self._make(
            kinds.REPLICA_SET, timeout
        )
        self.deployments: ResourceClient[apps_pb2.Deployment] = self._make(
            kinds.DEPLOYMENT, timeout
        )
        self.daemon_sets: ResourceClient[apps_pb2.DaemonSet] = self._make(kinds.DAEMON_SET, timeout)
        self.leases: ResourceClient[coordination_pb2.Lease] = self._make(kinds.LEASE, timeout)
        self.config_maps: ResourceClient[core_pb2.ConfigMap] = self._make(kinds.CONFIG_MAP, timeout)
        self.secrets: ResourceClient[core_pb2.Secret] = self._make(kinds.SECRET, timeout)
        self.jobs: ResourceClient[batch_pb2.Job] = self._make(kinds.JOB, timeout)
        self.cron_jobs: ResourceClient[batch_pb2.CronJob] = self._make(kinds.CRON_JOB, timeout)
        self.stateful_sets: ResourceClient[apps_pb2.StatefulSet] = self._make(
            kinds.STATEFUL_SET, timeout
        )
        self.persistent_volumes: ResourceClient[storage_pb2.PersistentVolume] = self._make(
            kinds.PERSISTENT_VOLUME, timeout
        )
        self.persistent_volume_claims: ResourceClient[storage_pb2.PersistentVolumeClaim] = (
            self._make(kinds.PERSISTENT_VOLUME_CLAIM, timeout)
        )
        self.storage_classes: ResourceClient[storage_pb2.StorageClass] = self._make(
            kinds.STORAGE_CLASS, timeout
        )
        self.controller_revisions: ResourceClient[apps_pb2.ControllerRevision] = self._make(
            kinds.CONTROLLER_REVISION, timeout
        )

    def _make(self, kind: Kind, timeout: float | None) -> Any:
        client: ResourceClient[Any] = ResourceClient(kind, self.channel, timeout)
        return client

    def _resources(self) -> list[ResourceClient[Any]]:
        return [value for value in vars(self).values() if isinstance(value, ResourceClient)]

    def resource(self, kind: Kind) -> ResourceClient[Any]:
        for value in self._resources():
            if value.kind is kind:
                return value
        raise KeyError(kind.name)

    async def close(self) -> None:
        for handle in self._closing:
            handle.cancel()
        await self.channel.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def _channel(target: str, credentials: Credentials | None) -> grpc.aio.Channel:
    return make_channel(target, credentials=credentials, method_config=[READ_RETRY])


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()
