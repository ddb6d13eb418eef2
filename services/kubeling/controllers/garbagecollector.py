"""Garbage collector: dependents go when their owners are gone.

An object whose every ownerReference names a uid that no longer exists is
deleted (background propagation: the owner is already gone when its dependents
go). One that still has a live owner but also dangling references loses only
the dangling ones, as Kubernetes' garbage collector does.

"Does the owner exist" is first answered from the informers' caches and, when
the uid is not cached, confirmed with a live GET by name (a just-created owner
may not be cached yet; a recreated one has a different uid).

Owners being deleted with a finalizer are handled too:
- `orphan`: remove the owner's reference from every dependent, then the finalizer;
- `foregroundDeletion`: delete the dependents, then remove the finalizer once
  none is left.
The registry does not add these finalizers yet (DeleteRequest.propagation_policy
is only validated): "Orphan"/"Foreground" deletes need the master's delete to add
them, as kube-apiserver does. Until then every delete behaves as Background.

Events and Leases are not tracked, as in Kubernetes: Events have no owners and
expire --event-ttl after their last write (master/event_ttl.py); Leases belong to
nodes, which the lifecycle controller handles.
"""

from __future__ import annotations

import contextlib
from typing import Any

import grpc
import structlog

from kubeling.api.kinds import ALL_KINDS, EVENT, LEASE, Kind
from kubeling.api.objects import clone
from kubeling.client.client import ResourceClient
from kubeling.client.informer import Informer, WorkQueue, informers_running, run_workers
from kubeling.controllers.manager import ControllerContext, register
from kubeling.v1 import meta_pb2

log = structlog.get_logger(__name__)

ORPHAN_FINALIZER = "orphan"
FOREGROUND_FINALIZER = "foregroundDeletion"
TRACKED_KINDS: tuple[Kind, ...] = tuple(k for k in ALL_KINDS if k not in (EVENT, LEASE))
_KINDS_BY_NAME = {k.name: k for k in ALL_KINDS}

Ref = tuple[str, str, str]  # kind name, namespace, name


def _item(role: str, ref: Ref) -> str:
    return "|".join((role, *ref))


def _ref_of(kind: Kind, obj: Any) -> Ref:
    return kind.name, obj.metadata.namespace, obj.metadata.name


@register("garbagecollector")
class GarbageCollector:
    def __init__(self, context: ControllerContext) -> None:
        self.api = context.api
        self.recorder = context.recorder
        self.workers = context.settings.workers
        self.queue = WorkQueue()
        self.informers: dict[str, Informer[Any]] = {}
        self.resources: dict[str, ResourceClient[Any]] = {}
        # uid -> the object with it, and owner uid -> its dependents.
        self.by_uid: dict[str, Ref] = {}
        self.dependents: dict[str, set[Ref]] = {}
        for kind in TRACKED_KINDS:
            resource = self.api.resource(kind)
            informer: Informer[Any] = Informer(resource)
            informer.add_handler(self._handler(kind))
            self.informers[kind.name] = informer
            self.resources[kind.name] = resource

    # ------------------------------------------------------------ graph

    def _handler(self, kind: Kind) -> Any:
        def handle(event: str, old: Any, new: Any) -> None:
            if old is not None:
                self._forget(kind, old)
            if event == "DELETED":
                gone = new if new is not None else old
                self._forget(kind, gone)
                # Its dependents may be orphans now; a foreground owner may be done.
                for dep in self.dependents.get(gone.metadata.uid, set()):
                    self.queue.add(_item("dependent", dep))
                for ref in gone.metadata.owner_references:
                    owner = self.by_uid.get(ref.uid)
                    if owner is not None:
                        self.queue.add(_item("owner", owner))
                return
            self._remember(kind, new)
            if new.metadata.owner_references:
                self.queue.add(_item("dependent", _ref_of(kind, new)))
            finalizers = new.metadata.finalizers
            if new.metadata.HasField("deletion_timestamp") and (
                ORPHAN_FINALIZER in finalizers or FOREGROUND_FINALIZER in finalizers
            ):
                self.queue.add(_item("owner", _ref_of(kind, new)))

        return handle

    def _remember(self, kind: Kind, obj: Any) -> None:
        ref = _ref_of(kind, obj)
        self.by_uid[obj.metadata.uid] = ref
        for owner in obj.metadata.owner_references:
            self.dependents.setdefault(owner.uid, set()).add(ref)

    def _forget(self, kind: Kind, obj: Any) -> None:
        ref = _ref_of(kind, obj)
        if self.by_uid.get(obj.metadata.uid) == ref:
            del self.by_uid[obj.metadata.uid]
        for owner in obj.metadata.owner_references:
            deps = self.dependents.get(owner.uid)
            if deps is not None:
                deps.discard(ref)
                if not deps:
                    del self.dependents[owner.uid]

    def _cached(self, ref: Ref) -> Any:
        kind_name, namespace, name = ref
        return self.informers[kind_name].get(namespace, name)

    # ------------------------------------------------------------ run

    async def run(self) -> None:
        # Nothing is judged before every cache is filled: an owner not yet seen
        # would look deleted.
        async with informers_running(self.informers.values(), "garbagecollector"):
            await run_workers(self.queue, self.sync, self.workers, "garbagecollector")

    async def sync(self, item: str) -> None:
        role, kind_name, namespace, name = item.split("|", 3)
        ref = (kind_name, namespace, name)
        obj = self._cached(ref)
        if obj is None:
            return
        if role == "owner":
            await self._finish_owner(ref, obj)
        else:
            await self._check_dependent(ref, obj)

    async def _owner_exists(self, owner: meta_pb2.OwnerReference, namespace: str) -> bool:
        if owner.uid in self.by_uid:
            return True
        kind = _KINDS_BY_NAME.get(owner.kind)
        if kind is None:
            return True  # a kind we cannot look up: never guess it is gone
        try:
            found = await self.api.resource(kind).get(
                owner.name, namespace if kind.namespaced else ""
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return False
            raise
        return bool(found.metadata.uid == owner.uid)

    async def _check_dependent(self, ref: Ref, obj: Any) -> None:
        meta = obj.metadata
        if meta.HasField("deletion_timestamp") or not meta.owner_references:
            return
        absent = [
            o.uid for o in meta.owner_references if not await self._owner_exists(o, meta.namespace)
        ]
        if not absent:
            return
        resource = self.resources[ref[0]]
        # The cache may be behind (an orphaning just removed the reference):
        # decide on the stored object.
        try:
            obj = await resource.get(meta.name, meta.namespace)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return
            raise
        if obj.metadata.uid != meta.uid or obj.metadata.HasField("deletion_timestamp"):
            return
        meta = obj.metadata
        gone = set(absent)
        absent = [o.uid for o in meta.owner_references if o.uid in gone]
        if not absent:
            return
        if len(absent) == len(meta.owner_references):
            log.info("deleting dependent of a deleted owner", kind=ref[0], object=key_text(ref))
            try:
                await resource.delete(
                    meta.name, meta.namespace, uid=meta.uid, propagation_policy="Background"
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise
            return
        await self._drop_owner_refs(resource, obj, set(absent))

    async def _drop_owner_refs(
        self, resource: ResourceClient[Any], obj: Any, uids: set[str]
    ) -> None:
        updated = clone(obj)
        refs = [r for r in updated.metadata.owner_references if r.uid not in uids]
        del updated.metadata.owner_references[:]
        updated.metadata.owner_references.extend(refs)
        try:
            await resource.update(updated)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise  # a conflict: retried with the fresh object

    async def _finish_owner(self, ref: Ref, owner: Any) -> None:
        meta = owner.metadata
        if not meta.HasField("deletion_timestamp"):
            return
        uid = meta.uid
        dependents = [d for d in self.dependents.get(uid, set()) if self._cached(d) is not None]
        if ORPHAN_FINALIZER in meta.finalizers:
            for dep in dependents:
                await self._drop_owner_refs(self.resources[dep[0]], self._cached(dep), {uid})
            await self._remove_finalizer(ref, owner, ORPHAN_FINALIZER)
            return
        if FOREGROUND_FINALIZER in meta.finalizers:
            for dep in dependents:
                obj = self._cached(dep)
                if obj.metadata.HasField("deletion_timestamp"):
                    continue
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await self.resources[dep[0]].delete(
                        obj.metadata.name, obj.metadata.namespace, uid=obj.metadata.uid
                    )
            if dependents:
                return  # each dependent's DELETED event queues the owner again
            await self._remove_finalizer(ref, owner, FOREGROUND_FINALIZER)

    async def _remove_finalizer(self, ref: Ref, owner: Any, finalizer: str) -> None:
        updated = clone(owner)
        kept = [f for f in updated.metadata.finalizers if f != finalizer]
        del updated.metadata.finalizers[:]
        updated.metadata.finalizers.extend(kept)
        try:
            await self.resources[ref[0]].update(updated)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise


def key_text(ref: Ref) -> str:
    _, namespace, name = ref
    return f"{namespace}/{name}" if namespace else name
