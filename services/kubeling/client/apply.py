"""Create-or-update of one object, as `kubeling apply` does it: shared by the CLI
and the lab (which applies deploy/addons/).

An update carries the live object's resourceVersion and keeps what controllers own
and manifests leave out (ownerReferences, finalizers, system annotations, a pod's
binding); a conflict is read again and retried a few times.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from google.protobuf.message import Message

from kubeling.api.objects import clone
from kubeling.client.client import ResourceClient
from kubeling.v1 import core_pb2

# Conflicts mean someone (usually a controller) wrote in between: read and try again.
_ATTEMPTS = 5
_RETRY_DELAY = 0.1
# Annotations written by controllers rather than users ("deployment.kubernetes.io/revision").
# A manifest never carries them, so an update keeps them instead of wiping them each time.
_SYSTEM_ANNOTATION_DOMAINS = ("kubernetes.io/", "k8s.io/", "kubeling.io/")


async def apply_object(client: ResourceClient[Any], obj: Message) -> str:
    """ "created", "configured" or "unchanged"."""
    meta = obj.metadata  # type: ignore[attr-defined]
    error: grpc.aio.AioRpcError | None = None
    for attempt in range(_ATTEMPTS):
        if attempt:
            await asyncio.sleep(_RETRY_DELAY * attempt)
        try:
            live = await client.get(meta.name, meta.namespace)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
            try:
                await client.create(obj)
                return "created"
            except grpc.aio.AioRpcError as create_error:
                if create_error.code() != grpc.StatusCode.ALREADY_EXISTS:
                    raise
                error = create_error  # created meanwhile: update it instead
                continue
        desired = desired_update(obj, live)
        try:
            updated = await client.update(desired)
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in (grpc.StatusCode.ABORTED, grpc.StatusCode.NOT_FOUND):
                raise
            error = exc
            continue
        changed = updated.metadata.resource_version != live.metadata.resource_version
        return "configured" if changed else "unchanged"
    assert error is not None
    raise error


def desired_update(obj: Message, live: Any) -> Message:
    """The manifest as an update of `live`: its resourceVersion, plus the metadata
    that controllers own and manifests leave out."""
    desired = clone(obj)
    meta = desired.metadata  # type: ignore[attr-defined]
    meta.resource_version = live.metadata.resource_version
    if not meta.owner_references:
        meta.owner_references.extend(live.metadata.owner_references)
    if not meta.finalizers:
        meta.finalizers.extend(live.metadata.finalizers)
    for key, value in live.metadata.annotations.items():
        if key not in meta.annotations and _is_system_key(key):
            meta.annotations[key] = value
    if isinstance(desired, core_pb2.Pod) and not desired.spec.node_name:
        # The scheduler's binding is not the manifest's to undo (and may not be changed).
        desired.spec.node_name = live.spec.node_name
    return desired


def _is_system_key(key: str) -> bool:
    prefix, slash, _ = key.partition("/")
    return bool(slash) and any(f"{prefix}/".endswith(d) for d in _SYSTEM_ANNOTATION_DOMAINS)
