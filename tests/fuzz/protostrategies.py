"""Hypothesis strategies for any protobuf message, built from its Descriptor.

`messages(descriptor)` draws messages of that type with every field optional,
scalars biased towards edge values and strings towards ones the servers treat
specially (names that exist, CIDRs, addresses, selectors), nested messages to a
bounded depth and repeated fields to a bounded length. `payloads(descriptor)`
mixes such messages (serialised, sometimes truncated) with raw random bytes: what
a hostile client can put on the wire for one RPC.
"""

from __future__ import annotations

import functools
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

MAX_DEPTH = 5
MAX_REPEATED = 2

# Strings that reach past "not found": objects the fuzz cluster holds, and values
# with meaning (CIDRs, addresses, selectors, enum-like words, extremes).
INTERESTING_STRINGS = [
    "", "default", "kube-system", "web", "app", "node-1", "kubeling",
    "10.244.1.0/24", "0.0.0.0/0", "::/0", "10.96.0.10", "127.0.0.1", "0.0.0.0", "::",
    "224.0.0.1", "fe80::1", "999.1.1.1", "10.244.0.0/33",
    "TCP", "UDP", "SCTP", "tcp", "ClusterIP", "NodePort", "LoadBalancer", "None",
    "InternalIP", "ExternalIP", "Hostname", "Always", "Never", "OnFailure",
    "Running", "Pending", "Foreground", "Background", "Orphan",
    "app=web", "app!=web", "app in (a,b)", "!app", "=", "spec.nodeName=node-1",
    "metadata.name=web", "x==", "1", "-1", "0", "9999999999999999999999", "1h", "10s",
    "a" * 300, "a/b", "..", "/", "\x00", "é", "\ud7ff",
]  # fmt: skip

_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


def _integers(low: int, high: int) -> st.SearchStrategy[int]:
    edges = sorted({v for v in (0, 1, -1, 2, 30, 65535, 65536, low, high) if low <= v <= high})
    small = st.integers(max(low, -100), min(high, 100))
    return st.one_of(st.sampled_from(edges), small, st.integers(low, high))


def _strings() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(INTERESTING_STRINGS), st.text(max_size=24))


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    t = field.type
    if t in _INT_RANGES:
        return _integers(*_INT_RANGES[t])
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t == FieldDescriptor.TYPE_DOUBLE:
        return st.floats(allow_nan=True, allow_infinity=True)
    if t == FieldDescriptor.TYPE_FLOAT:
        return st.floats(width=32, allow_nan=True, allow_infinity=True)
    if t == FieldDescriptor.TYPE_STRING:
        return _strings()
    if t == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=32)
    if t == FieldDescriptor.TYPE_ENUM:
        # proto3 enums are open: numbers the schema does not name arrive too.
        assert field.enum_type is not None
        known = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(known), st.integers(-5, 1000))
    raise TypeError(f"no strategy for field {field.full_name} of type {t}")


def _message_type(field: FieldDescriptor) -> Descriptor:
    assert field.message_type is not None
    return field.message_type


def _value(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any] | None:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return messages(_message_type(field), depth - 1) if depth > 0 else None
    return _scalar(field)


def _is_map(field: FieldDescriptor) -> bool:
    if field.type != FieldDescriptor.TYPE_MESSAGE:
        return False
    return bool(_message_type(field).GetOptions().map_entry)


def _field_values(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any] | None:
    """Values for `field` as a whole (a list, a dict, a message or a scalar)."""
    if _is_map(field):
        entry = _message_type(field)
        key = _scalar(entry.fields_by_name["key"])
        value = _value(entry.fields_by_name["value"], depth)
        return None if value is None else st.dictionaries(key, value, max_size=MAX_REPEATED)
    value = _value(field, depth)
    if value is not None and field.is_repeated:
        return st.lists(value, max_size=MAX_REPEATED)
    return value


def _assign(message: Message, field: FieldDescriptor, value: Any) -> None:
    target = getattr(message, field.name)
    if _is_map(field):
        for k, v in value.items():
            if isinstance(v, Message):
                target[k].CopyFrom(v)
            else:
                target[k] = v
    elif field.is_repeated:
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            for item in value:
                target.add().CopyFrom(item)
        else:
            target.extend(value)
    elif field.type == FieldDescriptor.TYPE_MESSAGE:
        target.CopyFrom(value)
    else:
        setattr(message, field.name, value)


@functools.cache
def messages(descriptor: Descriptor, depth: int = MAX_DEPTH) -> st.SearchStrategy[Message]:
    """Messages of `descriptor`'s type, nested at most `depth` levels."""
    cls = GetMessageClass(descriptor)
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        values = _field_values(field, depth)
        if values is not None:
            optional[field.name] = values
    fields_of = {f.name: f for f in descriptor.fields}

    def build(values: dict[str, Any]) -> Message:
        message = cls()
        for name, value in values.items():
            _assign(message, fields_of[name], value)
        return message

    return st.fixed_dictionaries({}, optional=optional).map(build)


def payloads(descriptor: Descriptor, seed: Message | None = None) -> st.SearchStrategy[bytes]:
    """Wire bytes for an RPC taking `descriptor`: well-typed random messages, the
    same cut short, raw random bytes and, given a valid `seed` request, that seed
    with a few fields changed."""
    encoded = messages(descriptor).map(lambda m: m.SerializeToString())
    truncated = st.tuples(encoded.filter(len), st.integers(1, 64)).map(
        lambda pair: pair[0][: max(0, len(pair[0]) - pair[1])]
    )
    mixes = [encoded, truncated, st.binary(max_size=96)]
    if seed is not None:
        near_valid = mutated(seed).map(lambda m: m.SerializeToString())
        mixes = [near_valid, near_valid, st.just(seed.SerializeToString()), *mixes]
    return st.one_of(*mixes)


@st.composite
def mutated(draw: st.DrawFn, seed: Message, max_mutations: int = 3) -> Message:
    """`seed` (a valid message) with one to `max_mutations` fields somewhere in it
    replaced by random values: requests that pass most checks and probe the rest."""
    message = type(seed)()
    message.CopyFrom(seed)
    for _ in range(draw(st.integers(1, max_mutations))):
        _mutate(draw, message, depth=MAX_DEPTH)
    return message


def _mutate(draw: st.DrawFn, message: Message, depth: int) -> None:
    fields: list[FieldDescriptor] = [*message.DESCRIPTOR.fields]
    if not fields:
        return
    field: FieldDescriptor = draw(st.sampled_from(fields))
    target = getattr(message, field.name)
    nested = field.type == FieldDescriptor.TYPE_MESSAGE and not _is_map(field)
    if nested and depth > 1 and draw(st.booleans()):
        if not field.is_repeated:
            _mutate(draw, target, depth - 1)
            return
        if len(target) and draw(st.booleans()):
            _mutate(draw, target[draw(st.integers(0, len(target) - 1))], depth - 1)
            return
    # Replace the field's value with a random one of its type (or clear it).
    message.ClearField(field.name)
    values = _field_values(field, min(depth, 3))
    if values is not None:
        _assign(message, field, draw(values))
