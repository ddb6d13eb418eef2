"""Kind-independent API semantics on top of the store.

`Registry` implements Create/Get/List/Update/UpdateStatus/Delete/Watch for one kind
as Kubernetes users expect them: uids and timestamps, generation, optimistic
concurrency on resourceVersion, selectors, pagination, graceful deletion and
finalizers. What differs per kind lives in a `Strategy` (defaults, validation,
allocation, deletion rules).
"""

from __future__ import annotations

import base64
import bisect
import itertools
import json
import secrets
import string
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import Message

from kubeling.api import errors
from kubeling.api.errors import ApiError, FieldViolation
from kubeling.api.kinds import ALL_KINDS, NAMESPACE, Kind
from kubeling.api.objects import clone, now
from kubeling.api.selectors import (
    FieldSelector,
    LabelSelector,
    SelectorError,
    parse_field_selector,
    parse_label_selector,
)
from kubeling.api.wellknown import INITIAL_EVENTS_END
from kubeling.master import defaults, validation
from kubeling.master.store.base import (
    ConflictError,
    Entry,
    Event,
    EventType,
    KeyExistsError,
    KeyNotFoundError,
    Store,
    TooOldError,
    Watch,
)
from kubeling.master.validation.core import MAX_GRACE_PERIOD_SECONDS

_PROPAGATION_FINALIZERS = {"Orphan": "orphan", "Foreground": "foregroundDeletion"}

# Fields whose exact-value watches are indexed (kind name -> field -> getter).
INDEXED_FIELDS: dict[str, dict[str, Callable[[Any], str]]] = {
    "Pod": {"spec.nodeName": lambda pod: str(pod.spec.node_name)},
    # Every kubelet watches its own Node: without the index each Node write
    # would go to every kubelet's watch (5,000 nodes: 5,000 deliveries a write).
    "Node": {"metadata.name": lambda node: str(node.metadata.name)},
}


def register_indexes(store: Store) -> None:
    """Tell the store's watch cache about the indexed fields."""
    for kind_name, fields in INDEXED_FIELDS.items():
        kind = next(k for k in ALL_KINDS if k.name == kind_name)
        for field, getter in fields.items():
            store.add_index(f"{kind.plural}:{field}", kind.prefix(), getter)


_MAX_LIST_LIMIT = 100_000
_NAME_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # as Kubernetes: no vowels, no 0/1/3


@dataclass(frozen=True)
class WatchItem:
    """One event sent to a watcher: ADDED/MODIFIED/DELETED/BOOKMARK and its object."""

    type: str
    object: Message


class Strategy:
    """Per-kind rules. The defaults suit most kinds; subclasses override hooks."""

    def __init__(self, kind: Kind) -> None:
        self.kind = kind

    # Most kinds start with an empty status that controllers fill in; a Node's
    # kubelet registers it with its status (capacity, addresses) already set.
    keeps_status_on_create = False

    def prepare_create(self, obj: Message) -> None:
        """Reset what a client may not set on create."""
        if self.kind.has_status and not self.keeps_status_on_create:
            obj.ClearField("status")

    def prepare_update(self, new: Message, old: Message) -> None:
        """A spec update keeps the stored status."""
        if not self.kind.has_status:
            return
        # Copying an absent status would mark it present and make an unchanged
        # object look changed (a write and an event for nothing).
        if old.HasField("status"):
            new.status.CopyFrom(old.status)  # type: ignore[attr-defined]
        else:
            new.ClearField("status")

    def default(self, obj: Message) -> None:
        defaults.apply_defaults(self.kind, obj)

    def validate(self, obj: Message) -> list[FieldViolation]:
        return validation.validate(self.kind, obj)

    def validate_update(self, new: Message, old: Message) -> list[FieldViolation]:
        return validation.validate_update(self.kind, new, old)

    def attach(self, store: Store) -> None:
        """The store the registry writes to (allocations keep records in it)."""

    async def before_create(self, obj: Message) -> Callable[[], Awaitable[None]]:
        """Reserve what the object needs (IPs, ports); returns how to undo it."""
        return _nothing

    async def before_update(self, new: Message, old: Message) -> Callable[[], Awaitable[None]]:
        return _nothing

    async def after_delete(self, obj: Message) -> None:
        """Release what the object held."""

    def deletion_grace(self, obj: Message, requested: int | None) -> int:
        """Seconds the object stays (marked) before it is removed; 0 removes now."""
        return 0

    def on_delete_marked(self, obj: Message) -> None:
        """Called when deletion is deferred (finalizers or grace): mark the object."""

    def held(self, obj: Message) -> bool:
        """Whether something beyond metadata.finalizers keeps a marked object."""
        return False

    async def after_update(self, new: Message, old: Message) -> None:
        """Release what the old version held and the new one does not."""


async def _nothing() -> None:
    return None


class Registry:
    def __init__(
        self,
        kind: Kind,
        store: Store,
        strategy: Strategy | None = None,
        namespace_check: Callable[[str], Awaitable[None]] | None = None,
        bookmark_interval: float = 10.0,
    ) -> None:
        self.kind = kind
        self.store = store
        self.strategy = strategy or Strategy(kind)
        self.strategy.attach(store)
        self._namespace_check = namespace_check
        self._bookmark_interval = bookmark_interval
        self._allowed_fields = kind.field_names

    # ------------------------------------------------------------------ helpers

    def _what(self, namespace: str, name: str) -> str:
        if self.kind.namespaced:
            return f'{self.kind.plural} "{name}" in namespace "{namespace}"'
        return f'{self.kind.plural} "{name}"'

    def _scope(self, namespace: str) -> str:
        if not self.kind.namespaced:
            return ""
        return namespace or "default"

    def _check_type(self, obj: Message) -> None:
        if not isinstance(obj, self.kind.message):
            raise errors.bad_request(self.kind.request_field, f"expected a {self.kind.name}")
        wanted = (("apiVersion", obj.api_version, self.kind.api_version),  # type: ignore[attr-defined]
                  ("kind", obj.kind, self.kind.name))  # type: ignore[attr-defined]  # fmt: skip
        for field, given, expected in wanted:
            if given and given != expected:
                raise errors.bad_request(field, f'must be "{expected}", not "{given}"')

    def _stamp_type(self, obj: Message) -> None:
        obj.api_version = self.kind.api_version  # type: ignore[attr-defined]
        obj.kind = self.kind.name  # type: ignore[attr-defined]

    def _finish_validation(self, obj: Message, violations: list[FieldViolation]) -> None:
        if violations:
            raise errors.invalid(self.kind.name, obj.metadata.name, violations)  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ reads

    def get(self, namespace: str, name: str) -> Message:
        namespace = self._scope(namespace)
        entry = self.store.get(self.kind.key(namespace, name))
        if entry is None:
            raise errors.not_found(self._what(namespace, name))
        return entry.value  # type: ignore[no-any-return]

    def selectors(self, label_text: str, field_text: str) -> tuple[LabelSelector, FieldSelector]:
        try:
            labels = parse_label_selector(label_text)
        except SelectorError as exc:
            raise errors.bad_request("label_selector", str(exc)) from None
        try:
            fields = parse_field_selector(field_text, self._allowed_fields)
        except SelectorError as exc:
            raise errors.bad_request("field_selector", str(exc)) from None
        return labels, fields

    def _matcher(self, labels: LabelSelector, fields: FieldSelector) -> Callable[[Any], bool]:
        if labels.empty and not fields.terms:
            return lambda obj: True
        fields_of = self.kind.fields_of

        def matches(obj: Any) -> bool:
            return labels.matches(obj.metadata.labels) and (
                not fields.terms or fields.matches(fields_of(obj))
            )

        return matches

    def list_objects(
        self,
        namespace: str,
        label_selector: str = "",
        field_selector: str = "",
        limit: int = 0,
        continue_token: str = "",
        resource_version: str = "",
    ) -> tuple[list[Message], str, str]:
        """Items, the list's resourceVersion and the continue token (empty when done).
        A `resource_version` asks for a state at least that new: the current one
        always is, unless the revision is in the future."""
        labels, fields = self.selectors(label_selector, field_selector)
        if limit < 0 or limit > _MAX_LIST_LIMIT:
            raise errors.bad_request("limit", f"must be between 0 and {_MAX_LIST_LIMIT}")
        if resource_version not in ("", "0"):
            self._check_not_future(_parse_revision(resource_version))
        at_rev: int | None = None
        start_after = ""
        if continue_token:
            at_rev, start_after = _decode_continue(continue_token)
            self._check_not_future(at_rev)
        prefix = self.kind.prefix(namespace)
        try:
            entries, rev = self.store.list_prefix(prefix, at_rev)
        except TooOldError:
            raise ApiError(
                grpc.StatusCode.OUT_OF_RANGE,
                "the provided continue token has expired (too old resource version); "
                "list again without it",
            ) from None
        matches = self._matcher(labels, fields)
        items: list[Message] = []
        next_token = ""
        last_key = ""
        first = bisect.bisect_right(entries, start_after, key=_entry_key) if start_after else 0
        for entry in itertools.islice(entries, first, None):
            if not matches(entry.value):
                continue
            if limit and len(items) == limit:
                next_token = _encode_continue(rev, last_key)
                break
            items.append(entry.value)
            last_key = entry.key
        return items, str(rev), next_token

    # ------------------------------------------------------------------ writes

    async def create(self, obj: Message) -> Message:
        self._check_type(obj)
        obj = clone(obj)
        meta = obj.metadata  # type: ignore[attr-defined]
        if self.kind.namespaced:
            meta.namespace = meta.namespace or "default"
            if self._namespace_check is not None:
                await self._namespace_check(meta.namespace)
        else:
            meta.namespace = ""
        if not meta.name and meta.generate_name:
            meta.name = meta.generate_name + "".join(
                secrets.choice(_NAME_SUFFIX_ALPHABET) for _ in range(5)
            )
        meta.uid = str(uuid.uuid4())
        meta.resource_version = ""
        meta.generation = 1
        meta.creation_timestamp.CopyFrom(now())
        meta.ClearField("deletion_timestamp")
        meta.ClearField("deletion_grace_period_seconds")
        self._stamp_type(obj)
        self.strategy.prepare_create(obj)
        self.strategy.default(obj)
        self._finish_validation(obj, self.strategy.validate(obj))
        key = self.kind.key(meta.namespace, meta.name)
        if self.store.get(key) is not None:
            raise errors.already_exists(self._what(meta.namespace, meta.name))
        undo = await self.strategy.before_create(obj)
        try:
            await self.store.create(key, obj)
        except KeyExistsError:
            await undo()
            raise errors.already_exists(self._what(meta.namespace, meta.name)) from None
        except BaseException:
            await undo()
            raise
        return obj

    def _current_for_write(self, obj: Message) -> tuple[str, Message, int]:
        meta = obj.metadata  # type: ignore[attr-defined]
        namespace = self._scope(meta.namespace)
        key = self.kind.key(namespace, meta.name)
        if not meta.name:
            raise errors.bad_request("metadata.name", "Required value")
        entry = self.store.get(key)
        if entry is None:
            raise errors.not_found(self._what(namespace, meta.name))
        old = entry.value
        if meta.resource_version and meta.resource_version != old.metadata.resource_version:
            raise errors.conflict(
                f"Operation cannot be fulfilled on {self._what(namespace, meta.name)}: the "
                "object has been modified; please apply your changes to the latest version "
                f"(resourceVersion {meta.resource_version} is stale, current is "
                f"{old.metadata.resource_version})"
            )
        if meta.uid and meta.uid != old.metadata.uid:
            raise errors.conflict(
                f"Precondition failed: UID in object meta: {meta.uid}, stored: {old.metadata.uid}"
            )
        return key, old, entry.mod_rev

    async def update(self, obj: Message) -> Message:
        self._check_type(obj)
        key, old, rev = self._current_for_write(obj)
        new = clone(obj)
        self._keep_system_metadata(new, old)
        self._stamp_type(new)
        self.strategy.prepare_update(new, old)
        self.strategy.default(new)
        violations = self.strategy.validate(new) + self.strategy.validate_update(new, old)
        self._finish_validation(new, violations)
        if _spec_of(new) != _spec_of(old):
            new.metadata.generation = old.metadata.generation + 1  # type: ignore[attr-defined]
        return await self._write_update(key, new, old, rev)

    async def update_status(self, obj: Message) -> Message:
        if not self.kind.has_status:
            raise ApiError(grpc.StatusCode.UNIMPLEMENTED, f"{self.kind.name} has no status")
        self._check_type(obj)
        key, old, rev = self._current_for_write(obj)
        new = clone(old)
        if obj.HasField("status"):
            new.status.CopyFrom(obj.status)  # type: ignore[attr-defined]
        else:
            new.ClearField("status")
        self._finish_validation(new, self.strategy.validate(new))
        return await self._write_update(key, new, old, rev)

    async def write_as_is(self, new: Message, old: Message) -> Message:
        """Write a server-made change (spec and status together, e.g. a binding)
        if `old` is still the stored version; ABORTED otherwise."""
        key = self.kind.key(old.metadata.namespace, old.metadata.name)  # type: ignore[attr-defined]
        rev = int(old.metadata.resource_version)  # type: ignore[attr-defined]
        return await self._write_update(key, new, old, rev)

    def _keep_system_metadata(self, new: Message, old: Message) -> None:
        """Fields only the server sets are carried over from the stored object."""
        meta, old_meta = new.metadata, old.metadata  # type: ignore[attr-defined]
        meta.namespace = old_meta.namespace
        meta.uid = old_meta.uid
        meta.generation = old_meta.generation
        meta.creation_timestamp.CopyFrom(old_meta.creation_timestamp)
        meta.generate_name = old_meta.generate_name
        meta.ClearField("deletion_timestamp")
        meta.ClearField("deletion_grace_period_seconds")
        if old_meta.HasField("deletion_timestamp"):
            meta.deletion_timestamp.CopyFrom(old_meta.deletion_timestamp)
        if old_meta.HasField("deletion_grace_period_seconds"):
            meta.deletion_grace_period_seconds = old_meta.deletion_grace_period_seconds

    async def _write_update(self, key: str, new: Message, old: Message, rev: int) -> Message:
        new.metadata.resource_version = old.metadata.resource_version  # type: ignore[attr-defined]
        if new == old:
            return old  # nothing changed: no write, no event, same resourceVersion
        meta = new.metadata  # type: ignore[attr-defined]
        if meta.HasField("deletion_timestamp") and self._can_remove(new):
            await self._remove(key, new, rev)
            return new
        undo = await self.strategy.before_update(new, old)
        try:
            await self.store.update(key, new, expected_rev=rev)
        except ConflictError as exc:
            await undo()
            raise errors.conflict(f"Operation cannot be fulfilled: {exc}") from None
        except KeyNotFoundError:
            await undo()
            raise errors.not_found(self._what(meta.namespace, meta.name)) from None
        except BaseException:
            await undo()
            raise
        await self.strategy.after_update(new, old)
        return new

    def _can_remove(self, obj: Message) -> bool:
        """A marked object goes once no finalizer holds it and its grace has run out
        (a pod's grace ends when its kubelet deletes it with grace 0)."""
        meta = obj.metadata  # type: ignore[attr-defined]
        return (
            not meta.finalizers
            and meta.deletion_grace_period_seconds == 0
            and not self.strategy.held(obj)
        )

    async def _remove(self, key: str, obj: Message, rev: int) -> None:
        try:
            await self.store.delete(key, expected_rev=rev)
        except ConflictError as exc:
            raise errors.conflict(f"Operation cannot be fulfilled: {exc}") from None
        except KeyNotFoundError:
            meta = obj.metadata  # type: ignore[attr-defined]
            raise errors.not_found(self._what(meta.namespace, meta.name)) from None
        await self.strategy.after_delete(obj)

    async def delete(
        self,
        namespace: str,
        name: str,
        grace_period_seconds: int | None = None,
        precondition_uid: str = "",
        precondition_rv: str = "",
        propagation_policy: str = "",
    ) -> Message:
        if propagation_policy not in ("", "Background", "Foreground", "Orphan"):
            raise errors.bad_request(
                "propagation_policy",
                f'Unsupported value: "{propagation_policy}": supported values: '
                '"Background", "Foreground", "Orphan"',
            )
        if grace_period_seconds is not None and grace_period_seconds < 0:
            raise errors.bad_request("grace_period_seconds", "must be greater than or equal to 0")
        if grace_period_seconds is not None and grace_period_seconds > MAX_GRACE_PERIOD_SECONDS:
            raise errors.bad_request(
                "grace_period_seconds", f"must be no more than {MAX_GRACE_PERIOD_SECONDS}"
            )
        # Retry on our own conflicts: deletion must not fail because a status
        # update landed between our read and our write.
        for _ in range(10):
            namespace = self._scope(namespace)
            key = self.kind.key(namespace, name)
            entry = self.store.get(key)
            if entry is None:
                raise errors.not_found(self._what(namespace, name))
            old = entry.value
            if precondition_uid and precondition_uid != old.metadata.uid:
                raise errors.conflict(
                    f"Precondition failed: UID in precondition: {precondition_uid}, "
                    f"UID in object meta: {old.metadata.uid}"
                )
            if precondition_rv and precondition_rv != old.metadata.resource_version:
                raise errors.conflict(
                    f"Precondition failed: ResourceVersion in precondition: {precondition_rv}, "
                    f"ResourceVersion in object meta: {old.metadata.resource_version}"
                )
            try:
                return await self._delete_once(
                    key, old, entry.mod_rev, grace_period_seconds, propagation_policy
                )
            except ApiError as exc:
                if exc.code != grpc.StatusCode.ABORTED or precondition_rv:
                    raise
        raise errors.conflict(f"{self._what(namespace, name)} keeps changing; try again")

    async def _delete_once(
        self,
        key: str,
        old: Message,
        rev: int,
        grace_period_seconds: int | None,
        propagation_policy: str = "",
    ) -> Message:
        grace = self.strategy.deletion_grace(old, grace_period_seconds)
        new = clone(old)
        meta = new.metadata  # type: ignore[attr-defined]
        # Orphan/Foreground: the garbage collector finishes the deletion (it
        # unlinks or deletes the dependents, then drops the finalizer).
        finalizer = _PROPAGATION_FINALIZERS.get(propagation_policy)
        if finalizer and finalizer not in meta.finalizers:
            meta.finalizers.append(finalizer)
        marked = meta.HasField("deletion_timestamp")
        if marked and meta.deletion_grace_period_seconds <= grace and new == old:
            return old  # already being deleted; only a shorter grace changes anything
        if not marked or meta.deletion_grace_period_seconds > grace:
            deadline = now()
            deadline.seconds += grace
            meta.deletion_timestamp.CopyFrom(deadline)
            meta.deletion_grace_period_seconds = grace
        self.strategy.on_delete_marked(new)
        if self._can_remove(new):
            await self._remove(key, old, rev)
            return old
        try:
            await self.store.update(key, new, expected_rev=rev)
        except ConflictError as exc:
            raise errors.conflict(str(exc)) from None
        except KeyNotFoundError:
            raise errors.not_found(self._what(meta.namespace, meta.name)) from None
        return new

    # ------------------------------------------------------------------ watch

    async def watch(
        self,
        namespace: str,
        label_selector: str = "",
        field_selector: str = "",
        resource_version: str = "",
    ) -> AsyncIterator[WatchItem]:
        """Events as Kubernetes sends them, with periodic BOOKMARKs."""
        labels, fields = self.selectors(label_selector, field_selector)
        matches = self._matcher(labels, fields)
        prefix = self.kind.prefix(namespace)
        trigger = self._trigger(fields)
        watch: Watch
        initial: list[Message] = []
        if resource_version in ("", "0"):
            entries, start_rev, watch = self.store.list_and_watch(prefix, trigger)
            initial = [e.value for e in entries if matches(e.value)]
        else:
            start_rev = _parse_revision(resource_version)
            self._check_not_future(start_rev)
            try:
                watch = self.store.watch(prefix, start_rev, trigger)
            except TooOldError as exc:
                raise ApiError(grpc.StatusCode.OUT_OF_RANGE, str(exc)) from None
        return self._stream(watch, matches, initial, start_rev, bool(resource_version in ("", "0")))

    def _check_not_future(self, rev: int) -> None:
        """A revision the store has not reached is refused, as Kubernetes does
        ("Too large resource version"); same code as "too old": the client lists
        again. Kubernetes first waits up to 3 s for a lagging watch cache; here the
        cache is the store's own and never behind an acknowledged write."""
        current = self.store.revision
        if rev > current:
            raise ApiError(
                grpc.StatusCode.OUT_OF_RANGE,
                f"Too large resource version: {rev}, current: {current}",
            )

    def _trigger(self, fields: FieldSelector) -> tuple[str, str] | None:
        """A watch pinned to one value of an indexed field (a kubelet's
        spec.nodeName=NODE) only hears about objects with that value."""
        for field in INDEXED_FIELDS.get(self.kind.name, {}):
            value = fields.exact_value(field)
            if value is not None:
                return (f"{self.kind.plural}:{field}", value)
        return None

    async def _stream(
        self,
        watch: Watch,
        matches: Callable[[Any], bool],
        initial: list[Message],
        start_rev: int,
        list_first: bool,
    ) -> AsyncIterator[WatchItem]:
        try:
            for obj in initial:
                yield WatchItem("ADDED", obj)
            if list_first:
                yield WatchItem("BOOKMARK", self._bookmark(start_rev, initial_end=True))
            while True:
                # An idle watch answers [] (one cache timer for every idle watch,
                # not a timer armed and cancelled per watch per event).
                batch = await watch.next_batch(idle=self._bookmark_interval)
                if not batch:
                    # Nothing pending for us: every event up to now was delivered.
                    yield WatchItem("BOOKMARK", self._bookmark(self.store.revision))
                    continue
                for event in batch:
                    item = _translate(event, matches)
                    if item is not None:
                        yield item
        finally:
            watch.close()

    def _bookmark(self, rev: int, initial_end: bool = False) -> Message:
        obj = self.kind.message()
        self._stamp_type(obj)
        obj.metadata.resource_version = str(rev)  # type: ignore[attr-defined]
        if initial_end:
            obj.metadata.annotations[INITIAL_EVENTS_END] = "true"  # type: ignore[attr-defined]
        return obj


def _translate(event: Event, matches: Callable[[Any], bool]) -> WatchItem | None:
    """Selector-aware event type: an object entering or leaving the selection is
    ADDED or DELETED for this watcher, as Kubernetes does."""
    if event.type is EventType.ADDED:
        return WatchItem("ADDED", event.value) if matches(event.value) else None
    if event.type is EventType.DELETED:
        return WatchItem("DELETED", event.value) if matches(event.value) else None
    now_matches = matches(event.value)
    was_matching = event.prev is not None and matches(event.prev)
    if now_matches:
        return WatchItem("MODIFIED" if was_matching else "ADDED", event.value)
    if was_matching:
        return WatchItem("DELETED", event.value)
    return None


def _entry_key(entry: Entry) -> str:
    return entry.key


def _spec_of(obj: Message) -> Any:
    if obj.DESCRIPTOR.fields_by_name.get("spec") is not None:
        return obj.spec  # type: ignore[attr-defined]
    rest = clone(obj)
    rest.ClearField("metadata")
    return rest


def _encode_continue(rev: int, last_key: str) -> str:
    raw = json.dumps({"rv": rev, "start": last_key}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_continue(token: str) -> tuple[int, str]:
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
        rev, start = int(data["rv"]), str(data["start"])
        if rev < 0 or not set(start) <= set(string.printable):
            raise ValueError(token)
    except (ValueError, KeyError, TypeError, json.JSONDecodeError):
        raise errors.bad_request("continue", "invalid continue token") from None
    return rev, start


def namespace_checker(store: Store) -> Callable[[str], Awaitable[None]]:
    """Objects may only be created in a namespace that exists and is not terminating."""

    async def check(namespace: str) -> None:
        entry = store.get(NAMESPACE.key("", namespace))
        if entry is None:
            raise errors.not_found(f'namespaces "{namespace}"')
        if entry.value.status.phase == "Terminating":
            raise ApiError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"unable to create new content in namespace {namespace} because it is "
                "being terminated",
            )

    return check


def _parse_revision(resource_version: str) -> int:
    """A request's resourceVersion as a revision; INVALID_ARGUMENT naming the field."""
    try:
        rev = int(resource_version)
    except ValueError:
        raise errors.bad_request(
            "resource_version", f'"{resource_version}" is not a valid resource version'
        ) from None
    if rev < 0:
        raise errors.bad_request("resource_version", "must not be negative")
    return rev
